//! One key's recent requests and the signals read from them: what it extracts (tokens it has
//! the model write, distributions it reads, prompts it has scored), how its requests relate to
//! each other (templated, repeated, broad, one-off or conversational, reasoning asked for, the
//! distribution test), and its volume over the last hour and day against its own history.

use std::collections::{HashMap, VecDeque};

use serde::Serialize;

use super::config::GuardConfig;
pub use super::distribution::Reference;
use super::text::{TextFeatures, BANDS, MINHASH};

/// Clock hours of history a key keeps for its own baseline: a week.
const HISTORY_HOURS: i64 = 7 * 24;

/// What the guard keeps of one request.
#[derive(Debug, Clone)]
pub struct Observation {
    /// Seconds since the epoch (fractional): the request's arrival.
    pub at: f64,
    pub text: TextFeatures,
    /// `top_logprobs` (chat) or `logprobs` (legacy) asked for.
    pub logprobs: Option<usize>,
    /// vLLM's `prompt_logprobs`: alternatives read at every prompt position.
    pub prompt_logprobs: Option<usize>,
    /// A hash of the `logit_bias` map, when one was sent.
    pub logit_bias: Option<u64>,
    pub max_tokens: Option<usize>,
    /// Completions asked for (`n`).
    pub n: usize,
    /// Prompt tokens: counted by the server, estimated from the text in a replay.
    pub prompt_tokens: usize,
    /// A hash of the client's network (IPv4 /24, IPv6 /48), when known.
    pub origin: Option<u64>,
    /// A hash of the request's settings (endpoint, max_tokens, temperature, logprobs, n): one
    /// client driving many keys sends them alike.
    pub shape: u64,
}

impl Observation {
    /// An observation of `text` with default settings (tests and tools).
    pub fn of_text(at: f64, text: &str) -> Self {
        let text = TextFeatures::of_text(text, text);
        let prompt_tokens = text.estimated_tokens();
        Self {
            at,
            text,
            logprobs: None,
            prompt_logprobs: None,
            logit_bias: None,
            max_tokens: None,
            n: 1,
            prompt_tokens,
            origin: None,
            shape: 0,
        }
    }

    /// Tokens the request has the model write: `n` × `max_tokens` (the guard's assumption
    /// when unset), capped as the guard counts them.
    pub fn sampled_tokens(&self, c: &GuardConfig) -> u64 {
        let each = self.max_tokens.unwrap_or(c.assumed_max_tokens).min(c.counted_max_tokens);
        (self.n.max(1) * each) as u64
    }

    /// The share of the distribution `k` alternatives per position read, beyond the one token
    /// a scorer or a sampler needs: 0 for k ≤ 1, 1 at the cap. Graded, so one step below the
    /// cap reads almost as much as the cap.
    pub fn alternatives_share(k: usize, cap: usize) -> f64 {
        if k <= 1 || cap <= 1 {
            return 0.0;
        }
        ((k - 1) as f64 / (cap - 1) as f64).min(1.0)
    }

    /// Prompt positions whose distribution the request reads (`prompt_logprobs`), weighted by
    /// [`Observation::alternatives_share`]: teacher forcing through the prompt.
    pub fn prompt_mass(&self, c: &GuardConfig) -> f64 {
        self.prompt_logprobs.map_or(0.0, |k| self.prompt_tokens as f64 * Self::alternatives_share(k, c.logprobs_cap))
    }

    /// A request that reads the next-token distribution after a short context and has the
    /// model write (almost) nothing: many alternatives, or a `logit_bias` probe (whether the
    /// map is new to the key is for the window to say).
    pub fn reads_distribution(&self, c: &GuardConfig) -> bool {
        self.short(c)
            && self.logprobs.is_some_and(|k| Self::alternatives_share(k, c.logprobs_cap) >= c.probe_alternatives)
    }

    /// A short context and (almost) nothing written: the shape of a probe.
    fn short(&self, c: &GuardConfig) -> bool {
        self.sampled_tokens(c) <= c.probe_max_tokens as u64 && self.prompt_tokens <= c.probe_max_prompt
    }

    /// Might make a probe: [`Observation::reads_distribution`] or a short request with a
    /// logit_bias (a probe when the map is new to the key; a fixed map, such as banning a word,
    /// is not).
    pub fn may_probe(&self, c: &GuardConfig) -> bool {
        self.reads_distribution(c) || (self.logit_bias.is_some() && self.short(c))
    }
}

struct Entry {
    minhash: [u64; MINHASH],
    bands: [u64; BANDS],
    exact: u64,
    logit_bias: Option<u64>,
    content: Vec<u64>,
    templated: bool,
    repeat: bool,
    chain_of_thought: bool,
    one_off: bool,
    generative: bool,
    logprobs_read: bool,
    probe: bool,
    /// 1 − the highest similarity to an earlier request in the window; `None` for the first.
    novelty: Option<f64>,
}

/// The signals of one key (volume: of its group of linked keys) at one moment. Shares are over
/// the window of recent requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Signals {
    /// Requests in the window.
    pub window: usize,
    /// Requests in the last hour, by the key or, when linked, by its whole group.
    pub hour_requests: u64,
    /// Tokens asked to be written in the last hour and the last 24 hours (key or group).
    pub hour_tokens: u64,
    pub day_tokens: u64,
    /// Keys in the group whose volume was counted (1: not linked).
    pub group_keys: usize,
    /// Those tokens over the most the key may have written (the larger of the hour's and the
    /// day's ratio): above 1 is heavy.
    pub volume: f64,
    /// Share of requests that are near-duplicates of an earlier one (same template).
    pub template_share: f64,
    /// Share of requests that repeat an earlier one exactly, and of the generative ones (an
    /// evaluation sampling its prompts again).
    pub repeat_share: f64,
    pub generative_repeat_share: f64,
    /// 1 − mean cosine similarity of the requests' content words, frequent words excluded:
    /// near 1 when every request is about something else.
    pub breadth: f64,
    /// Share of requests that ask for a chain of thought.
    pub reasoning_share: f64,
    /// Share of requests that are not part of a conversation the key had (no earlier turn it
    /// sent in the window).
    pub one_off_share: f64,
    /// Share that ask for far more text than they give (`generative_ratio` × the prompt).
    pub generative_share: f64,
    /// Share of generations that read many alternatives per token (`probe_alternatives` of the
    /// cap or more).
    pub logprobs_share: f64,
    /// Requests in the window that probe the distribution: a short context, (almost) no
    /// output, and many alternatives or a logit_bias map new to the key.
    pub probes: usize,
    /// Prompt positions scored through `prompt_logprobs` in the last 24 hours, weighted by the
    /// share of alternatives read (key or group).
    pub prompt_mass: f64,
    /// The distribution test's statistic over its calibrated threshold (> 1: unlike benign
    /// traffic); `None` when uncalibrated or the window is short.
    pub distribution: Option<f64>,
}

/// Requests, tokens written and prompt positions scored in one stretch of time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Volume {
    pub requests: u64,
    pub tokens: u64,
    pub prompt_mass: f64,
}

impl Volume {
    pub fn add(&mut self, other: Volume) {
        self.requests += other.requests;
        self.tokens += other.tokens;
        self.prompt_mass += other.prompt_mass;
    }
}

/// A key's sliding window of requests and its volume by minute (last hour) and hour (last week).
pub struct KeyWindow {
    capacity: usize,
    entries: VecDeque<Entry>,
    band_counts: HashMap<u64, u32>,
    exact_counts: HashMap<u64, u32>,
    bias_counts: HashMap<u64, u32>,
    templated: usize,
    repeats: usize,
    generative_repeats: usize,
    reasoning: usize,
    one_off: usize,
    generative: usize,
    logprobs_read: usize,
    probes: usize,
    minutes: VecDeque<(i64, Volume)>,
    hours: VecDeque<(i64, Volume)>,
    pub first_seen: f64,
    pub total: u64,
}

impl KeyWindow {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(2),
            entries: VecDeque::new(),
            band_counts: HashMap::new(),
            exact_counts: HashMap::new(),
            bias_counts: HashMap::new(),
            templated: 0,
            repeats: 0,
            generative_repeats: 0,
            reasoning: 0,
            one_off: 0,
            generative: 0,
            logprobs_read: 0,
            probes: 0,
            minutes: VecDeque::new(),
            hours: VecDeque::new(),
            first_seen: f64::NAN,
            total: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds a request; returns whether it repeats a template already in the window.
    pub fn push(&mut self, obs: &Observation, c: &GuardConfig) -> bool {
        if self.first_seen.is_nan() || obs.at < self.first_seen {
            self.first_seen = obs.at;
        }
        self.total += 1;
        let sampled = obs.sampled_tokens(c);
        let volume = Volume { requests: 1, tokens: sampled, prompt_mass: obs.prompt_mass(c) };
        let minute = (obs.at / 60.0).floor() as i64;
        match self.minutes.back_mut() {
            Some((m, v)) if *m == minute => v.add(volume),
            _ => self.minutes.push_back((minute, volume)),
        }
        while self.minutes.front().is_some_and(|(m, _)| minute - m >= 60) {
            self.minutes.pop_front();
        }
        let hour = minute.div_euclid(60);
        match self.hours.back_mut() {
            Some((h, v)) if *h == hour => v.add(volume),
            _ => self.hours.push_back((hour, volume)),
        }
        while self.hours.front().is_some_and(|(h, _)| hour - h >= HISTORY_HOURS) {
            self.hours.pop_front();
        }

        let templated = obs.text.bands.iter().any(|b| self.band_counts.contains_key(b));
        let novelty =
            self.entries.iter().map(|e| similarity(&e.minhash, &obs.text.minhash)).reduce(f64::max).map(|s| 1.0 - s);
        let short_output = sampled <= c.probe_max_tokens as u64;
        let new_bias = obs.logit_bias.is_some_and(|b| !self.bias_counts.contains_key(&b));
        let entry = Entry {
            minhash: obs.text.minhash,
            bands: obs.text.bands,
            exact: obs.text.exact,
            content: obs.text.content.clone(),
            templated,
            repeat: self.exact_counts.contains_key(&obs.text.exact),
            chain_of_thought: obs.text.chain_of_thought,
            one_off: !obs.text.previous.is_some_and(|p| self.exact_counts.contains_key(&p)),
            generative: sampled as f64 >= c.generative_ratio * obs.prompt_tokens.max(1) as f64,
            logprobs_read: !short_output
                && obs
                    .logprobs
                    .is_some_and(|k| Observation::alternatives_share(k, c.logprobs_cap) >= c.probe_alternatives),
            probe: obs.reads_distribution(c) || (obs.short(c) && new_bias),
            logit_bias: obs.logit_bias,
            novelty,
        };
        for b in entry.bands {
            *self.band_counts.entry(b).or_insert(0) += 1;
        }
        *self.exact_counts.entry(entry.exact).or_insert(0) += 1;
        if let Some(b) = entry.logit_bias {
            *self.bias_counts.entry(b).or_insert(0) += 1;
        }
        self.count(&entry, 1);
        self.entries.push_back(entry);
        if self.entries.len() > self.capacity {
            if let Some(old) = self.entries.pop_front() {
                for b in old.bands {
                    release(&mut self.band_counts, b);
                }
                release(&mut self.exact_counts, old.exact);
                if let Some(b) = old.logit_bias {
                    release(&mut self.bias_counts, b);
                }
                self.count(&old, -1);
            }
        }
        templated
    }

    fn count(&mut self, e: &Entry, sign: isize) {
        let add = |n: &mut usize, yes: bool| {
            if yes {
                *n = n.wrapping_add_signed(sign);
            }
        };
        add(&mut self.templated, e.templated);
        add(&mut self.repeats, e.repeat);
        add(&mut self.generative_repeats, e.repeat && e.generative);
        add(&mut self.reasoning, e.chain_of_thought);
        add(&mut self.one_off, e.one_off);
        add(&mut self.generative, e.generative);
        add(&mut self.logprobs_read, e.logprobs_read);
        add(&mut self.probes, e.probe);
    }

    /// Adds hours of history (clock hour, requests, tokens written) from before this process
    /// saw the key.
    pub fn seed_hours(&mut self, history: &[(i64, u64, u64)]) {
        let seeded = history.iter().map(|(h, r, t)| (*h, Volume { requests: *r, tokens: *t, prompt_mass: 0.0 }));
        let mut hours: Vec<(i64, Volume)> = seeded.chain(self.hours.drain(..)).collect();
        hours.sort_unstable_by_key(|(h, _)| *h);
        for (hour, v) in hours {
            match self.hours.back_mut() {
                Some((h, total)) if *h == hour => total.add(v),
                _ => self.hours.push_back((hour, v)),
            }
            let start = hour as f64 * 3600.0;
            if self.first_seen.is_nan() || start < self.first_seen {
                self.first_seen = start;
            }
        }
        let newest = self.hours.back().map_or(0, |(h, _)| *h);
        while self.hours.front().is_some_and(|(h, _)| newest - h >= HISTORY_HOURS) {
            self.hours.pop_front();
        }
    }

    /// Forgets the requests in the window (what the signals are read from), keeping the
    /// volume history.
    pub fn forget_requests(&mut self) {
        self.entries.clear();
        self.band_counts.clear();
        self.exact_counts.clear();
        self.bias_counts.clear();
        (self.templated, self.repeats, self.generative_repeats, self.reasoning, self.one_off) = (0, 0, 0, 0, 0);
        (self.generative, self.logprobs_read, self.probes) = (0, 0, 0);
    }

    /// Volume in the hour up to `at`.
    pub fn last_hour(&self, at: f64) -> Volume {
        let now_minute = (at / 60.0).floor() as i64;
        let mut v = Volume::default();
        self.minutes.iter().filter(|(m, _)| now_minute - m < 60).for_each(|(_, x)| v.add(*x));
        v
    }

    /// Volume in the 24 clock hours up to `at`, this one included.
    pub fn last_day(&self, at: f64) -> Volume {
        let now_hour = (at / 3600.0).floor() as i64;
        let mut v = Volume::default();
        self.hours.iter().rev().take_while(|(h, _)| now_hour - h < 24).for_each(|(_, x)| v.add(*x));
        v
    }

    pub fn hour_requests(&self, at: f64) -> u64 {
        self.last_hour(at).requests
    }

    /// The most tokens the key had written in one clock hour, and in one clock day, of the last
    /// week, leaving out the last `recent_hours` (so a key cannot make its own baseline by
    /// harvesting); `None` until the key is `history_hours` old.
    pub fn own_peaks(&self, at: f64, history_hours: f64, recent_hours: f64) -> Option<(u64, u64)> {
        let age_hours = (at - self.first_seen) / 3600.0;
        if age_hours.is_nan() || age_hours < history_hours {
            return None;
        }
        let before = (at / 3600.0 - recent_hours).floor() as i64;
        let hour = self.hours.iter().filter(|(h, _)| *h < before).map(|(_, v)| v.tokens).max().unwrap_or(0);
        let mut days: Vec<(i64, u64)> = Vec::new();
        for (h, v) in self.hours.iter().filter(|(h, _)| *h < before) {
            match days.last_mut() {
                Some((d, n)) if *d == h.div_euclid(24) => *n += v.tokens,
                _ => days.push((h.div_euclid(24), v.tokens)),
            }
        }
        Some((hour, days.iter().map(|(_, n)| *n).max().unwrap_or(0)))
    }

    /// The content signals of the window (volume is filled in by the caller, who knows the group).
    pub fn signals(&self) -> Signals {
        let n = self.entries.len().max(1) as f64;
        let generations = (self.entries.len() - self.probes).max(1) as f64;
        Signals {
            window: self.entries.len(),
            template_share: self.templated as f64 / n,
            repeat_share: self.repeats as f64 / n,
            generative_repeat_share: self.generative_repeats as f64 / self.generative.max(1) as f64,
            breadth: self.breadth(),
            reasoning_share: self.reasoning as f64 / n,
            one_off_share: self.one_off as f64 / n,
            generative_share: self.generative as f64 / n,
            logprobs_share: self.logprobs_read as f64 / generations,
            probes: self.probes,
            ..Signals::default()
        }
    }

    /// 1 − mean pairwise cosine similarity of the requests' content words, after dropping words
    /// in more than a fifth of the window (a template's or a system prompt's fixed words),
    /// computed in one pass from the sum of the normalised word vectors. Sorted vectors rather
    /// than hash maps: this runs on the request path every few requests.
    fn breadth(&self) -> f64 {
        let n = self.entries.len();
        if n < 2 {
            return 0.0;
        }
        // Content words are distinct within a request, so a word's run length is its
        // document frequency.
        let mut all: Vec<u64> = self.entries.iter().flat_map(|e| e.content.iter().copied()).collect();
        all.sort_unstable();
        let common_df = (n as f64 * 0.2).max(3.0) as usize;
        let common: Vec<u64> =
            all.chunk_by(|a, b| a == b).filter(|run| run.len() > common_df).map(|run| run[0]).collect();
        let mut weighted: Vec<(u64, f64)> = Vec::with_capacity(all.len());
        let mut docs = 0usize;
        for e in &self.entries {
            let start = weighted.len();
            weighted.extend(e.content.iter().filter(|w| common.binary_search(w).is_err()).map(|w| (*w, 0.0)));
            let kept = weighted.len() - start;
            if kept == 0 {
                continue;
            }
            docs += 1;
            let weight = 1.0 / (kept as f64).sqrt();
            weighted[start..].iter_mut().for_each(|p| p.1 = weight);
        }
        if docs < 2 {
            return 0.0;
        }
        weighted.sort_unstable_by_key(|p| p.0);
        let norm2: f64 =
            weighted.chunk_by(|a, b| a.0 == b.0).map(|run| run.iter().map(|p| p.1).sum::<f64>().powi(2)).sum();
        let mean_cos = (norm2 - docs as f64) / (docs as f64 * (docs as f64 - 1.0));
        (1.0 - mean_cos).clamp(0.0, 1.0)
    }

    /// Each request's distance to its nearest earlier request in the window.
    pub fn novelties(&self) -> impl Iterator<Item = f64> + '_ {
        self.entries.iter().filter_map(|e| e.novelty)
    }
}

fn similarity(a: &[u64; MINHASH], b: &[u64; MINHASH]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / MINHASH as f64
}

fn release(counts: &mut HashMap<u64, u32>, key: u64) {
    if let Some(c) = counts.get_mut(&key) {
        *c -= 1;
        if *c == 0 {
            counts.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(at: f64, text: &str) -> Observation {
        Observation::of_text(at, text)
    }

    #[test]
    fn a_template_fills_the_window_with_near_duplicates() {
        let topics = ["volcanoes", "the french revolution", "tax law", "protein folding", "jazz", "glaciers"];
        let c = GuardConfig::default();
        let mut w = KeyWindow::new(50);
        for (i, t) in topics.iter().cycle().take(30).enumerate() {
            w.push(
                &obs(i as f64, &format!("Write a detailed, comprehensive essay about {t} for a curious reader.")),
                &c,
            );
        }
        let s = w.signals();
        assert!(s.template_share > 0.7, "{s:?}");
        // The fixed words are dropped, so the slot's topics decide the breadth; the same six
        // prompts come back, so most requests repeat one exactly.
        assert!(s.breadth > 0.5, "{s:?}");
        assert_eq!(s.repeat_share, 24.0 / 30.0);
        assert_eq!(s.one_off_share, 1.0);
    }

    #[test]
    fn the_window_forgets_old_requests_and_counts_tokens_by_hour_and_day() {
        let c = GuardConfig::default();
        let mut w = KeyWindow::new(4);
        for i in 0..10 {
            let o = Observation {
                max_tokens: Some(100),
                n: 2,
                ..obs(i as f64 * 600.0, &format!("Question {i}: heat pumps?"))
            };
            w.push(&o, &c);
        }
        assert_eq!(w.len(), 4);
        assert_eq!(w.signals().window, 4);
        // Requests at 5400 s (minute 90) back to 2400 s (minute 40) fall within the hour before 5400 s.
        assert_eq!(w.last_hour(5400.0), Volume { requests: 6, tokens: 1200, prompt_mass: 0.0 });
        assert_eq!(w.hour_requests(8700.0), 1);
        assert_eq!(w.last_day(5400.0).tokens, 2000);
        assert_eq!(w.total, 10);
        assert_eq!(w.own_peaks(5400.0, 24.0, 12.0), None, "too young for a baseline");
        // A day later, the first hour (6 requests in minutes 0-50) and day are its history.
        assert_eq!(w.own_peaks(5400.0 + 86400.0, 24.0, 12.0), Some((1200, 2000)));
        // Without max_tokens a request counts as the assumed 1,024, and at most 4,096.
        let mut w = KeyWindow::new(4);
        w.push(&obs(0.0, "hello"), &c);
        w.push(&Observation { max_tokens: Some(100_000), ..obs(1.0, "hello") }, &c);
        assert_eq!(w.last_hour(1.0).tokens, 1024 + 4096);
    }

    #[test]
    fn probes_generations_with_logprobs_and_prompt_scoring_are_told_apart() {
        let c = GuardConfig::default();
        let mut w = KeyWindow::new(10);
        let mut o = obs(0.0, "The capital of France is");
        o.logprobs = Some(19);
        o.max_tokens = Some(1);
        w.push(&o, &c); // a probe one step below the cap
        o.max_tokens = Some(100);
        w.push(&o, &c); // a generation reading most alternatives
        o.logprobs = Some(5);
        o.max_tokens = Some(1);
        w.push(&o, &c); // a classifier reading five alternatives does not probe
        o.logit_bias = Some(7);
        w.push(&o, &c); // a new logit_bias map probes…
        w.push(&o, &c); // …the same map again (banning a word) does not
        o.logit_bias = Some(8);
        o.prompt_tokens = 1000;
        w.push(&o, &c); // after a long prompt, nor does a new one
        let s = w.signals();
        assert_eq!(s.probes, 2);
        assert_eq!(s.logprobs_share, 1.0 / 4.0);
        assert!((Observation::alternatives_share(19, 20) - 18.0 / 19.0).abs() < 1e-12);
        assert_eq!(Observation::alternatives_share(1, 20), 0.0);
        let scored = Observation { prompt_logprobs: Some(20), prompt_tokens: 300, ..obs(0.0, "x") };
        assert_eq!(scored.prompt_mass(&c), 300.0);
    }

    #[test]
    fn a_conversation_continues_only_from_a_turn_the_key_sent() {
        let c = GuardConfig::default();
        let mut w = KeyWindow::new(10);
        let first = obs(0.0, "How do I repot an orchid?");
        w.push(&first, &c);
        let mut next = obs(1.0, "And how often should I water it?");
        next.text.previous = Some(first.text.exact);
        w.push(&next, &c);
        next.text.previous = Some(12345); // a history the key never sent
        w.push(&next, &c);
        assert_eq!(w.signals().one_off_share, 2.0 / 3.0);
    }
}
