//! The extraction guard: notices keys (and groups of linked keys) that harvest the served model
//! to distil it, and answers with flag → throttle → revoke.
//!
//! Every admitted request is observed ([`Guard::observe`]): its text is fingerprinted
//! ([`text`]) into the key's window ([`window`]), keys sending near-duplicates of each other's
//! prompts are linked ([`link`]), and every few requests the key's signals are evaluated against
//! the rules below. A decision is returned to the caller, which writes it to the audit table and
//! applies it; the guard itself never blocks a request on the database.
//!
//! Rules (thresholds in [`GuardConfig`]):
//! - **sweep**: `sweep_requests` requests in the window read one or two tokens with the most
//!   logprobs the server gives, or send a `logit_bias` map new to the key — reading the
//!   distribution, not using answers. Fires at any volume.
//! - **harvest**: the key's (or group's) requests in the last hour exceed what the population
//!   (for a new key) or its own history (for a key older than a day) make normal, *and* the
//!   window shows a harvesting pattern: a template over broad topics, reasoning elicitation over
//!   broad topics, very broad coverage by itself, the maximum `top_logprobs`, or a distribution
//!   of prompts unlike benign traffic (the calibrated test).
//!
//! A first firing flags the key, or throttles it when two patterns fire at once (or a sweep is
//! twice the threshold); a flagged key that keeps firing for `escalate_after` more requests is
//! throttled, a throttled one revoked, never beyond `max_action`.

mod config;
pub mod link;
pub mod replay;
pub mod text;
pub mod window;

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;

pub use config::{GuardConfig, Level, Standing};
pub use text::TextFeatures;
pub use window::{KeyWindow, Observation, Reference, Signals};

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
    /// Requests per hour an admin has accepted as normal for this key (by clearing it).
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
    /// Requests per hour a key may send by the population's standard; refreshed periodically.
    population_allowed: f64,
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
    /// a token-id prompt (the guard reads text; a replay without a tokenizer passes `None`).
    pub fn observation(req: &GenerationRequest, at: f64, decoded: Option<&str>) -> Observation {
        Observation {
            at,
            text: match decoded {
                Some(text) => TextFeatures::of_text(text, text),
                None => TextFeatures::of_request(req),
            },
            logprobs: req.logprobs,
            logit_bias: (!req.logit_bias.is_empty()).then(|| {
                req.logit_bias.iter().fold(text::mix(0), |h, (id, bias)| {
                    text::mix(h ^ text::mix(*id as u64 ^ ((bias.to_bits() as u64) << 32)))
                })
            }),
            max_tokens: req.max_tokens,
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
        let mut state = self.lock();
        let idx = state.index(key_id, self.config.window);
        let key = &mut state.keys[idx as usize];
        let templated = key.window.push(obs, self.config.logprobs_cap);
        key.since_eval += 1;
        let due = key.since_eval >= self.config.eval_every
            || (obs.may_sweep(self.config.logprobs_cap) && key.level == Level::None);
        if templated {
            let c = &self.config;
            let candidates =
                state.linker.observe(idx, &obs.text.bands, obs.at, c.link_within_secs, c.link_shared_buckets);
            // One client spreading over keys drives them alike; a person sharing a popular
            // template with a busy application does not make them one client.
            // Keys sending a few requests an hour add nothing worth linking for.
            let mine = state.keys[idx as usize].window.hour_requests(obs.at) as f64;
            for other in candidates {
                let theirs = state.keys[other as usize].window.hour_requests(obs.at) as f64;
                let alike = mine.max(theirs) <= c.link_volume_ratio * mine.min(theirs);
                let busy = mine.min(theirs) >= c.link_min_hourly;
                let size = state.linker.group(idx).len() + state.linker.group(other).len();
                if alike && busy && size <= c.link_max_group {
                    state.linker.link(idx, other);
                }
            }
        }
        state.since_population += 1;
        if state.since_population >= 256 || state.population_allowed == 0.0 {
            state.refresh_population(&self.config, obs.at);
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
        let hour_requests: u64 = group.iter().map(|k| state.keys[*k as usize].window.hour_requests(at)).sum();
        let key = &state.keys[idx as usize];
        // A key with a history is judged against it (an application that always sent this
        // much is not harvesting; a quiet key that suddenly sends thousands may be); a new key
        // against the population.
        let allowed = match key.window.own_hourly_peak(at, c.own_history_hours, c.own_recent_hours) {
            Some(peak) => c.hourly_floor.max(c.own_factor * peak as f64),
            None => c.hourly_floor.max(state.population_allowed),
        }
        .max(key.allowance);
        let mut s = key.window.signals();
        s.hour_requests = hour_requests;
        s.group_keys = group.len();
        s.volume = hour_requests as f64 / allowed;
        let enough = key.window.len() >= c.min_requests;
        if let (Some(r), true) = (&c.reference, enough) {
            s.distribution = Some(Reference::ks_distance(&r.quantiles, key.window.novelties()) / r.threshold);
        }

        let mut patterns: Vec<(f64, String)> = Vec::new();
        if enough {
            let broad = s.breadth >= c.breadth;
            if broad && s.template_share >= c.template_share {
                patterns.push((
                    s.template_share / c.template_share,
                    format!(
                        "{:.0}% templated prompts over broad topics (breadth {:.2})",
                        100.0 * s.template_share,
                        s.breadth
                    ),
                ));
            }
            if broad && s.reasoning_share >= c.reasoning_share {
                patterns.push((
                    s.reasoning_share / c.reasoning_share,
                    format!("{:.0}% ask for step-by-step reasoning over broad topics", 100.0 * s.reasoning_share),
                ));
            }
            if s.breadth >= c.coverage {
                patterns.push((
                    s.breadth / c.coverage,
                    format!("prompts cover very broad topics (breadth {:.3})", s.breadth),
                ));
            }
            if s.logprobs_at_cap_share >= c.logprobs_at_cap_share {
                patterns.push((
                    s.logprobs_at_cap_share / c.logprobs_at_cap_share,
                    format!("{:.0}% ask for the maximum top_logprobs", 100.0 * s.logprobs_at_cap_share),
                ));
            }
            if let Some(d) = s.distribution.filter(|d| *d >= 1.0) {
                patterns
                    .push((d, format!("prompt distribution unlike benign traffic ({d:.2}× the calibrated threshold)")));
            }
        }
        let sweep_share = s.sweeps as f64 / s.window.max(1) as f64;
        let sweep_ratio = (s.sweeps as f64 / c.sweep_requests as f64).min(sweep_share / c.sweep_share);
        let content = patterns.iter().map(|p| p.0).fold(0.0, f64::max);
        let risk = sweep_ratio.max(s.volume.min(4.0) * content);
        let mut reasons = Vec::new();
        if sweep_ratio >= 1.0 {
            reasons.push(format!(
                "{} of the last {} requests sweep the distribution (≤ 2 tokens with top_logprobs at the cap, or a new logit_bias)",
                s.sweeps, s.window
            ));
        }
        let harvest = s.volume >= 1.0 && !patterns.is_empty();
        if harvest {
            let who = if group.len() > 1 { format!("{} linked keys", group.len()) } else { "the key".to_string() };
            reasons.push(format!(
                "{hour_requests} requests in the last hour by {who}, {:.1}× the normal most ({allowed:.0})",
                s.volume
            ));
            reasons.extend(patterns.iter().map(|p| p.1.clone()));
        }
        let fired = !reasons.is_empty();
        let strong = sweep_ratio >= 2.0 || (harvest && patterns.len() >= 2);
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

    /// Gives a key its request history (per clock hour, as the usage table has it), so that a
    /// restarted server judges old keys against their own past instead of as new ones.
    pub fn seed_history(&self, key_id: &str, hours: &[(i64, u64)]) {
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

    /// An admin cleared the key: its requests so far are forgotten and the volume it was
    /// sending becomes normal for it (`own_factor` × its last hour), so an application that
    /// was flagged for its volume is not flagged again for the same volume. Its volume history
    /// is kept.
    fn reset(&mut self, idx: u32, own_factor: f64, cleared: i64) {
        let key = &mut self.keys[idx as usize];
        key.allowance = key.allowance.max(own_factor * key.window.hour_requests(cleared as f64) as f64);
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

    /// Refreshes what the population makes normal: a multiple of a high quantile of the hourly
    /// requests of keys active in the last hour. Keys the guard already acts on are left out, so
    /// harvesters do not raise the bar for each other.
    fn refresh_population(&mut self, c: &GuardConfig, at: f64) {
        self.since_population = 0;
        let mut hourly: Vec<u64> = self
            .keys
            .iter()
            .filter(|k| k.level == Level::None)
            .map(|k| k.window.hour_requests(at))
            .filter(|n| *n > 0)
            .collect();
        if hourly.len() < c.min_population {
            self.population_allowed = c.hourly_floor;
            return;
        }
        hourly.sort_unstable();
        let q = hourly[((hourly.len() - 1) as f64 * c.population_quantile).round() as usize];
        self.population_allowed = c.hourly_floor.max(c.population_factor * q as f64);
    }
}

#[cfg(test)]
mod tests;
