//! The extraction guard: notices keys (and groups of linked keys) that harvest the served model
//! to distil it, and answers with flag → throttle → revoke.
//!
//! Every admitted request is observed ([`Guard::observe`]): what it extracts is measured (tokens
//! it has the model write, distributions it reads, prompt positions it has scored) and its
//! text fingerprinted ([`text`]) into the key's window ([`window`]); keys that look like one
//! client — near-duplicate prompts, or the same network and request settings, at the same
//! time — are linked ([`link`]); every few requests the key's signals are evaluated against the
//! rules below. A decision is returned to the caller, which writes it to the audit table and
//! applies it; the guard itself never blocks a request on the database.
//!
//! Rules (thresholds in [`GuardConfig`]):
//! - **probe**: `probe_requests` requests in the window read the next-token distribution after a
//!   short context and have (almost) nothing written — many alternatives (graded: one step
//!   below the cap counts), or a `logit_bias` map new to the key. Fires at any volume.
//! - **prompt scoring**: the key (or group) scored more than `prompt_mass` prompt positions in a
//!   day through `prompt_logprobs`, weighted by the alternatives read: teacher forcing.
//! - **harvest**: the tokens the key (or group) had written in the last hour or day exceed what
//!   the population (for a new key) or its own history (for a key older than a day) make
//!   normal, *and* its requests have a harvest's shape: one-off requests for long answers over
//!   broad topics, reasoning elicitation over broad topics, many alternatives per generated
//!   token over broad topics, or a prompt distribution unlike benign traffic (the calibrated
//!   test). An application serving its subject, a conversation, an evaluation repeating its
//!   prompts, a classifier or a summariser (short answers to long prompts) have none.
//!
//! A first firing flags the key, or throttles it when two rules or patterns fire at once (or a
//! probe count is twice the threshold); a flagged key that keeps firing for `escalate_after`
//! more requests is throttled, a throttled one revoked, never beyond `max_action`. A key an admin
//! cleared has the volume it was sending accepted; one whose use was declared is never acted on.

mod config;
pub mod distribution;
pub mod link;
pub mod replay;
pub mod text;
pub mod window;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use serde::Serialize;

pub use config::{GuardConfig, Level, Standing, DECLARED};
pub use text::TextFeatures;
pub use window::{KeyWindow, Observation, Reference, Signals, Volume};

use crate::wire::GenerationRequest;

/// A change of a key's level, with what caused it: written to the audit table as it is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub key_id: String,
    pub previous: Level,
    pub level: Level,
    pub risk: f64,
    pub reasons: Vec<String>,
    pub signals: Signals,
    /// Other keys in its group.
    pub linked: Vec<String>,
    /// The key's requests observed so far, this one included.
    pub requests: u64,
    /// When the request that led to it arrived (unix seconds).
    pub at: f64,
}

/// A key as the guard sees it now, for `/v1/admin/guard`.
#[derive(Debug, Clone, Serialize)]
pub struct KeyReport {
    pub key_id: String,
    pub level: Level,
    pub risk: f64,
    pub reasons: Vec<String>,
    pub signals: Signals,
    pub requests: u64,
}

struct KeyState {
    id: String,
    window: KeyWindow,
    level: Level,
    /// `window.total` when the level last changed.
    level_at: u64,
    since_eval: usize,
    /// The last admin clear seen (unix seconds), to notice clears made by another process.
    cleared: i64,
    /// Tokens per hour an admin has accepted as normal for this key (by clearing it, or
    /// [`DECLARED`] by declaring its use).
    allowance: f64,
    /// Its history was loaded from the database (or there was none to load).
    seeded: bool,
    risk: f64,
    reasons: Vec<String>,
    signals: Signals,
}

#[derive(Default)]
struct State {
    ids: HashMap<String, u32>,
    keys: Vec<KeyState>,
    linker: link::Linker,
    /// Tokens per hour and per day a key may have written by the population's standard;
    /// refreshed periodically.
    population_hourly: f64,
    population_daily: f64,
    since_population: usize,
}

pub struct Guard {
    config: GuardConfig,
    state: Mutex<State>,
}

impl Guard {
    pub fn new(config: GuardConfig) -> Self {
        Self { config, state: Mutex::new(State::default()) }
    }

    pub fn config(&self) -> &GuardConfig {
        &self.config
    }

    /// The guard's view of a request, as [`Guard::observe`] takes it. `decoded` is the text of
    /// a token-id prompt (the guard reads text; a replay without a tokenizer passes `None`);
    /// `prompt_tokens` the server's count (a replay estimates it from the text); `client` the
    /// address the request came from, when known.
    pub fn observation(
        req: &GenerationRequest,
        at: f64,
        decoded: Option<&str>,
        prompt_tokens: Option<usize>,
        client: Option<IpAddr>,
    ) -> Observation {
        let text = match decoded {
            Some(text) => TextFeatures::of_text(text, text),
            None => TextFeatures::of_request(req),
        };
        let prompt_tokens = prompt_tokens.unwrap_or_else(|| text.estimated_tokens());
        let temperature = req.sampling.temperature.to_bits();
        let shape = [
            req.endpoint as u64,
            req.max_tokens.map_or(u64::MAX, |m| m as u64),
            temperature,
            req.logprobs.map_or(u64::MAX, |k| k as u64),
            req.n as u64,
            req.prompt_logprobs.map_or(u64::MAX, |k| k as u64),
        ]
        .iter()
        .fold(text::mix(7), |h, v| text::mix(h ^ v));
        Observation {
            at,
            text,
            logprobs: req.logprobs,
            prompt_logprobs: req.prompt_logprobs,
            logit_bias: (!req.logit_bias.is_empty()).then(|| {
                req.logit_bias.iter().fold(text::mix(0), |h, (id, bias)| {
                    text::mix(h ^ text::mix(*id as u64 ^ ((bias.to_bits() as u64) << 32)))
                })
            }),
            max_tokens: req.max_tokens,
            n: req.n,
            prompt_tokens,
            origin: client.map(network_of),
            shape,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records one admitted request of `key_id`; returns a decision when the key's level rises.
    pub fn observe(&self, key_id: &str, obs: &Observation) -> Option<Decision> {
        if !self.config.enabled() {
            return None;
        }
        let c = &self.config;
        let mut state = self.lock();
        let idx = state.index(key_id, c.window);
        let key = &mut state.keys[idx as usize];
        let templated = key.window.push(obs, c);
        key.since_eval += 1;
        let due = key.since_eval >= c.eval_every
            || (key.level == Level::None && (obs.may_probe(c) || obs.prompt_logprobs.is_some()));
        // Evidence that two keys are one client: near-duplicate prompts, or the same network
        // and settings, used by both within minutes.
        let mut evidence: Vec<u64> = Vec::new();
        if templated {
            evidence.extend_from_slice(&obs.text.user_bands);
        }
        if let Some(origin) = obs.origin.filter(|_| c.link_by_network) {
            let slot = (obs.at / c.link_slot_secs).floor() as i64 as u64;
            evidence.push(text::mix(origin ^ text::mix(obs.shape ^ text::mix(slot))));
        }
        if !evidence.is_empty() {
            let candidates = state.linker.observe(
                idx,
                &evidence,
                obs.at,
                c.link_within_secs,
                c.link_shared_buckets,
                c.link_period_secs,
            );
            // One client spreading over keys drives them alike, and much of what they send is
            // evidence; a person sharing a popular prompt (or an office network) with a busy
            // application does not make them one client, nor do two busy applications whose
            // users now and then type the same thing. Keys sending a few requests an hour add
            // nothing worth linking for.
            let window = &state.keys[idx as usize].window;
            let (mine, my_day) = (window.hour_requests(obs.at) as f64, window.last_day(obs.at).requests as f64);
            for (other, shared) in candidates {
                let window = &state.keys[other as usize].window;
                let (theirs, their_day) = (window.hour_requests(obs.at) as f64, window.last_day(obs.at).requests);
                let alike = mine.max(theirs) <= c.link_volume_ratio * mine.min(theirs);
                let busy = mine.min(theirs) >= c.link_min_hourly;
                let much = shared as f64 >= c.link_share * my_day.min(their_day as f64);
                let size = state.linker.group(idx).len() + state.linker.group(other).len();
                if alike && busy && much && size <= c.link_max_group {
                    state.linker.link(idx, other);
                }
            }
        }
        state.since_population += 1;
        if state.since_population >= 256 || state.population_hourly == 0.0 {
            state.refresh_population(c, obs.at);
        }
        if !due {
            return None;
        }
        state.keys[idx as usize].since_eval = 0;
        self.evaluate(&mut state, idx, obs.at)
    }

    fn evaluate(&self, state: &mut State, idx: u32, at: f64) -> Option<Decision> {
        let c = &self.config;
        let group = state.linker.group(idx);
        let (mut hour, mut day, mut own_mass) = (Volume::default(), Volume::default(), 0.0);
        for k in &group {
            let w = &state.keys[*k as usize].window;
            let d = w.last_day(at);
            if *k == idx {
                own_mass = d.prompt_mass;
            }
            hour.add(w.last_hour(at));
            day.add(d);
        }
        let key = &state.keys[idx as usize];
        // A key with a history is judged against it (an application that always had this much
        // written is not harvesting; a quiet key that suddenly asks for millions of tokens may
        // be); a new key against the population.
        let (hourly, daily) = match key.window.own_peaks(at, c.own_history_hours, c.own_recent_hours) {
            Some((h, d)) => (c.own_factor * h as f64, c.own_factor * d as f64),
            None => (state.population_hourly, state.population_daily),
        };
        let allowed_hour = c.hourly_floor_tokens.max(hourly).max(key.allowance);
        let allowed_day = c.daily_floor_tokens.max(daily).max(24.0 * key.allowance);
        let mut s = key.window.signals();
        s.hour_requests = hour.requests;
        s.hour_tokens = hour.tokens;
        s.day_tokens = day.tokens;
        s.prompt_mass = day.prompt_mass;
        s.group_keys = group.len();
        s.volume = (hour.tokens as f64 / allowed_hour).max(day.tokens as f64 / allowed_day);
        let enough = key.window.len() >= c.min_requests;
        if let (Some(r), true) = (&c.reference, enough) {
            s.distribution = Some(Reference::ks_distance(&r.quantiles, key.window.novelties()) / r.threshold);
        }
        let declared = key.allowance >= config::DECLARED;

        let mut patterns: Vec<(f64, String)> = Vec::new();
        if enough && s.breadth >= c.breadth {
            let broad = format!("over broad topics (breadth {:.2})", s.breadth);
            if s.one_off_share >= c.one_off_share
                && s.generative_share >= c.generative_share
                && s.generative_repeat_share <= c.repeat_share
            {
                patterns.push((
                    (s.one_off_share / c.one_off_share).min(s.generative_share / c.generative_share),
                    format!(
                        "{:.0}% one-off requests, {:.0}% asking for {}× their prompt or more, {broad}",
                        100.0 * s.one_off_share,
                        100.0 * s.generative_share,
                        c.generative_ratio
                    ),
                ));
            }
            if s.reasoning_share >= c.reasoning_share {
                patterns.push((
                    s.reasoning_share / c.reasoning_share,
                    format!("{:.0}% ask for step-by-step reasoning {broad}", 100.0 * s.reasoning_share),
                ));
            }
            if s.logprobs_share >= c.logprobs_share {
                patterns.push((
                    s.logprobs_share / c.logprobs_share,
                    format!(
                        "{:.0}% of generations read most of the distribution per token {broad}",
                        100.0 * s.logprobs_share
                    ),
                ));
            }
        }
        // Repeating prompts (an evaluation's samples) makes nearest-neighbour distances unlike
        // people's without harvesting anything.
        if let Some(d) = s.distribution.filter(|d| *d >= 1.0 && s.generative_repeat_share <= c.repeat_share) {
            patterns.push((d, format!("prompt distribution unlike benign traffic ({d:.2}× the calibrated threshold)")));
        }
        let probe_share = s.probes as f64 / s.window.max(1) as f64;
        let probe_ratio = (s.probes as f64 / c.probe_requests as f64).min(probe_share / c.probe_share);
        // A group's scoring is held against the keys that took part in it.
        let mass_ratio = if own_mass > 0.0 { s.prompt_mass / c.prompt_mass } else { 0.0 };
        let content = patterns.iter().map(|p| p.0).fold(0.0, f64::max);
        let risk = probe_ratio.max(mass_ratio).max(s.volume.min(4.0) * content);
        let who = if group.len() > 1 { format!("{} linked keys", group.len()) } else { "the key".to_string() };
        let mut reasons = Vec::new();
        if probe_ratio >= 1.0 {
            reasons.push(format!(
                "{} of the last {} requests probe the distribution (a short context, ≤ {} tokens written, most alternatives or a new logit_bias)",
                s.probes, s.window, c.probe_max_tokens
            ));
        }
        if mass_ratio >= 1.0 {
            reasons.push(format!(
                "{:.0} prompt positions scored through prompt_logprobs in a day by {who} ({:.1}× the most, {:.0})",
                s.prompt_mass, mass_ratio, c.prompt_mass
            ));
        }
        let harvest = !declared && s.volume >= 1.0 && !patterns.is_empty();
        if harvest {
            reasons.push(format!(
                "{} tokens asked for in the last hour and {} in the last day by {who}, {:.1}× the normal most ({allowed_hour:.0} an hour, {allowed_day:.0} a day)",
                hour.tokens, day.tokens, s.volume
            ));
            reasons.extend(patterns.iter().map(|p| p.1.clone()));
        }
        if declared {
            // A declared use is watched, never acted on.
            reasons.clear();
        }
        let fired = !reasons.is_empty();
        let rules = [probe_ratio >= 1.0, mass_ratio >= 1.0, harvest].iter().filter(|f| **f).count();
        let strong = probe_ratio >= 2.0 || mass_ratio >= 2.0 || rules >= 2 || (harvest && patterns.len() >= 2);
        let linked: Vec<String> =
            group.iter().filter(|k| **k != idx).map(|k| state.keys[*k as usize].id.clone()).collect();

        let key = &mut state.keys[idx as usize];
        key.signals = s.clone();
        key.risk = risk;
        if fired {
            key.reasons = reasons.clone();
        }
        let since_level = key.window.total - key.level_at;
        let target = match key.level {
            _ if !fired => key.level,
            Level::None if strong => Level::Throttle,
            Level::None => Level::Flag,
            Level::Flag if strong || since_level >= c.escalate_after => Level::Throttle,
            Level::Throttle if since_level >= c.escalate_after => Level::Revoke,
            level => level,
        }
        .min(c.max_action);
        if target <= key.level {
            return None;
        }
        let previous = key.level;
        key.level = target;
        key.level_at = key.window.total;
        Some(Decision {
            key_id: key.id.clone(),
            previous,
            level: target,
            risk,
            reasons,
            signals: s,
            linked,
            requests: key.window.total,
            at,
        })
    }

    /// The key's level as the guard knows it.
    pub fn level(&self, key_id: &str) -> Level {
        let state = self.lock();
        state.ids.get(key_id).map_or(Level::None, |i| state.keys[*i as usize].level)
    }

    /// Reconciles with the key's standing in the database, which an admin (or another server
    /// on the same database) may have changed: a newer clear resets the key, a higher stored
    /// level and allowance are adopted. Returns the level to apply and, when a clear was just
    /// applied, the allowance it set, for the caller to store.
    pub fn sync(&self, key_id: &str, stored: &Standing) -> (Level, Option<f64>) {
        if !self.config.enabled() {
            return (Level::None, None);
        }
        let mut state = self.lock();
        let known = state.ids.get(key_id).copied();
        if known.is_none() && *stored == Standing::default() {
            return (Level::None, None);
        }
        let idx = match known {
            Some(idx) => idx,
            None => state.index(key_id, self.config.window),
        };
        let mut allowance = None;
        if let Some(cleared) = stored.cleared.filter(|c| *c > state.keys[idx as usize].cleared) {
            state.reset(idx, self.config.own_factor, cleared);
            allowance = Some(state.keys[idx as usize].allowance);
        }
        let key = &mut state.keys[idx as usize];
        key.allowance = key.allowance.max(stored.allowance.unwrap_or(0.0));
        if stored.level > key.level {
            key.level = stored.level;
            key.level_at = key.window.total;
        }
        (key.level, allowance.filter(|a| *a > stored.allowance.unwrap_or(0.0)))
    }

    /// Whether the guard (when on) has yet to see the key in this process (see
    /// [`Guard::seed_history`]).
    pub fn needs_history(&self, key_id: &str) -> bool {
        if !self.config.enabled() {
            return false;
        }
        let state = self.lock();
        state.ids.get(key_id).is_none_or(|i| !state.keys[*i as usize].seeded)
    }

    /// Gives a key its history (clock hour, requests, tokens written, as the usage table has
    /// them), so that a restarted server judges old keys against their own past instead of as
    /// new ones.
    pub fn seed_history(&self, key_id: &str, hours: &[(i64, u64, u64)]) {
        let mut state = self.lock();
        let idx = state.index(key_id, self.config.window);
        let key = &mut state.keys[idx as usize];
        if !key.seeded {
            key.seeded = true;
            key.window.seed_hours(hours);
        }
    }

    /// The limits to apply to a key at `level`: its own, lowered when throttled.
    pub fn limits(&self, level: Level, rpm: Option<u64>, tpm: Option<u64>) -> (Option<u64>, Option<u64>) {
        if level < Level::Throttle {
            return (rpm, tpm);
        }
        let lower = |own: Option<u64>, cap: u64| Some(own.map_or(cap, |v| v.min(cap)));
        (lower(rpm, self.config.throttle_rpm), lower(tpm, self.config.throttle_tpm))
    }

    /// Every key the guard has seen, riskiest first.
    pub fn report(&self) -> Vec<KeyReport> {
        let state = self.lock();
        let mut out: Vec<KeyReport> = state
            .keys
            .iter()
            .map(|k| KeyReport {
                key_id: k.id.clone(),
                level: k.level,
                risk: k.risk,
                reasons: k.reasons.clone(),
                signals: k.signals.clone(),
                requests: k.window.total,
            })
            .collect();
        out.sort_by(|a, b| b.level.cmp(&a.level).then(b.risk.total_cmp(&a.risk)));
        out
    }
}

impl State {
    fn index(&mut self, key_id: &str, window: usize) -> u32 {
        if let Some(i) = self.ids.get(key_id) {
            return *i;
        }
        let i = self.keys.len() as u32;
        self.ids.insert(key_id.to_string(), i);
        self.keys.push(KeyState {
            id: key_id.to_string(),
            window: KeyWindow::new(window),
            level: Level::None,
            level_at: 0,
            since_eval: 0,
            cleared: 0,
            allowance: 0.0,
            seeded: false,
            risk: 0.0,
            reasons: Vec::new(),
            signals: Signals::default(),
        });
        i
    }

    /// An admin cleared the key: its requests so far are forgotten and the tokens it was
    /// having written become normal for it (`own_factor` × its last hour), so an application
    /// that was flagged for its volume is not flagged again for the same volume. Its volume
    /// history is kept.
    fn reset(&mut self, idx: u32, own_factor: f64, cleared: i64) {
        let key = &mut self.keys[idx as usize];
        key.allowance = key.allowance.max(own_factor * key.window.last_hour(cleared as f64).tokens as f64);
        key.window.forget_requests();
        key.level = Level::None;
        key.level_at = key.window.total;
        key.since_eval = 0;
        key.cleared = cleared;
        key.risk = 0.0;
        key.reasons.clear();
        key.signals = Signals::default();
        self.linker.forget(idx);
    }

    /// Refreshes what the population makes normal: a multiple of a high quantile of the tokens
    /// written per hour (per day) by keys active in the last hour (day). Keys the guard already
    /// acts on, and declared ones, are left out, so harvesters do not raise the bar for each
    /// other.
    fn refresh_population(&mut self, c: &GuardConfig, at: f64) {
        self.since_population = 0;
        let counted = self.keys.iter().filter(|k| k.level == Level::None && k.allowance < DECLARED);
        let (mut hourly, mut daily): (Vec<u64>, Vec<u64>) =
            counted.map(|k| (k.window.last_hour(at).tokens, k.window.last_day(at).tokens)).unzip();
        hourly.retain(|n| *n > 0);
        daily.retain(|n| *n > 0);
        let quantile = |mut v: Vec<u64>, floor: f64| {
            if v.len() < c.min_population {
                return floor;
            }
            v.sort_unstable();
            floor.max(c.population_factor * v[((v.len() - 1) as f64 * c.population_quantile).round() as usize] as f64)
        };
        self.population_hourly = quantile(hourly, c.hourly_floor_tokens);
        self.population_daily = quantile(daily, c.daily_floor_tokens);
    }
}

/// A hash of the network an address belongs to: its /24 (IPv4) or /48 (IPv6), the block one
/// operator's machines or one office's clients share.
pub fn network_of(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => text::mix(4 ^ ((u32::from(v4) >> 8) as u64)),
        IpAddr::V6(v6) => text::mix(6 ^ (u128::from(v6) >> 80) as u64),
    }
}

#[cfg(test)]
mod tests;
