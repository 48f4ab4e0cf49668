//! One key's recent requests and the signals read from them: how templated, how broad, how
//! much reasoning is asked for, how much of the distribution is harvested, how its requests
//! relate to each other (the distribution test) and how many it sends an hour.

use std::collections::{HashMap, VecDeque};

use serde::Serialize;

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
    /// A hash of the `logit_bias` map, when one was sent.
    pub logit_bias: Option<u64>,
    pub max_tokens: Option<usize>,
}

impl Observation {
    /// One or two tokens with as many alternatives as the server gives: reading the model's
    /// distribution rather than using its answers.
    pub fn reads_distribution(&self, logprobs_cap: usize) -> bool {
        self.logprobs.is_some_and(|k| k >= logprobs_cap) && self.max_tokens.is_some_and(|m| m <= 2)
    }

    /// Might make a sweep: [`Observation::reads_distribution`], or any logit_bias (a sweep when
    /// the map is new to the key; a fixed map, such as banning a word, is not).
    pub fn may_sweep(&self, logprobs_cap: usize) -> bool {
        self.logit_bias.is_some() || self.reads_distribution(logprobs_cap)
    }
}

struct Entry {
    minhash: [u64; MINHASH],
    bands: [u64; BANDS],
    logit_bias: Option<u64>,
    content: Vec<u64>,
    templated: bool,
    chain_of_thought: bool,
    logprobs_at_cap: bool,
    sweep: bool,
    /// 1 − the highest similarity to an earlier request in the window; `None` for the first.
    novelty: Option<f64>,
}

/// The signals of one key (volume: of its group of linked keys) at one moment. Shares are over
/// the window of recent requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Signals {
    /// Requests in the window.
    pub window: usize,
    /// Requests in the last hour, by the key or, when linked, by its whole group.
    pub hour_requests: u64,
    /// Keys in the group whose volume was counted (1: not linked).
    pub group_keys: usize,
    /// `hour_requests` over the most a key may send before it counts as heavy: above 1 is heavy.
    pub volume: f64,
    /// Share of requests that are near-duplicates of an earlier one (same template).
    pub template_share: f64,
    /// 1 − mean cosine similarity of the requests' content words, template words excluded:
    /// near 1 when every request is about something else.
    pub breadth: f64,
    /// Share of requests that ask for a chain of thought.
    pub reasoning_share: f64,
    /// Share asking for as many alternatives per token as the server gives.
    pub logprobs_at_cap_share: f64,
    /// Requests in the window that sweep the distribution: ≤ 2 tokens with the most logprobs the
    /// server gives, or a logit_bias map the key had not sent before.
    pub sweeps: usize,
    /// The distribution test's statistic over its calibrated threshold (> 1: unlike benign
    /// traffic); `None` when uncalibrated or the window is short.
    pub distribution: Option<f64>,
}

/// A key's sliding window of requests and hourly counts.
pub struct KeyWindow {
    capacity: usize,
    entries: VecDeque<Entry>,
    band_counts: HashMap<u64, u32>,
    bias_counts: HashMap<u64, u32>,
    templated: usize,
    reasoning: usize,
    at_cap: usize,
    sweeps: usize,
    /// (minute, requests) for the last hour.
    minutes: VecDeque<(i64, u64)>,
    /// (clock hour, requests) for the last week: the key's own history.
    hours: VecDeque<(i64, u64)>,
    pub first_seen: f64,
    pub total: u64,
}

impl KeyWindow {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(2),
            entries: VecDeque::new(),
            band_counts: HashMap::new(),
            bias_counts: HashMap::new(),
            templated: 0,
            reasoning: 0,
            at_cap: 0,
            sweeps: 0,
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
    pub fn push(&mut self, obs: &Observation, logprobs_cap: usize) -> bool {
        if self.first_seen.is_nan() || obs.at < self.first_seen {
            self.first_seen = obs.at;
        }
        self.total += 1;
        let minute = (obs.at / 60.0).floor() as i64;
        match self.minutes.back_mut() {
            Some((m, n)) if *m == minute => *n += 1,
            _ => self.minutes.push_back((minute, 1)),
        }
        self.expire_minutes(minute);
        let hour = minute.div_euclid(60);
        match self.hours.back_mut() {
            Some((h, n)) if *h == hour => *n += 1,
            _ => self.hours.push_back((hour, 1)),
        }
        while self.hours.front().is_some_and(|(h, _)| hour - h >= HISTORY_HOURS) {
            self.hours.pop_front();
        }

        let templated = obs.text.bands.iter().any(|b| self.band_counts.contains_key(b));
        let novelty = self
            .entries
            .iter()
            .map(|e| {
                let same = e.minhash.iter().zip(&obs.text.minhash).filter(|(a, b)| a == b).count();
                same as f64 / MINHASH as f64
            })
            .reduce(f64::max)
            .map(|s| 1.0 - s);
        let entry = Entry {
            minhash: obs.text.minhash,
            bands: obs.text.bands,
            content: obs.text.content.clone(),
            templated,
            chain_of_thought: obs.text.chain_of_thought,
            logprobs_at_cap: obs.logprobs.is_some_and(|k| k >= logprobs_cap),
            sweep: obs.reads_distribution(logprobs_cap)
                || obs.logit_bias.is_some_and(|b| !self.bias_counts.contains_key(&b)),
            logit_bias: obs.logit_bias,
            novelty,
        };
        for b in entry.bands {
            *self.band_counts.entry(b).or_insert(0) += 1;
        }
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
        add(&mut self.reasoning, e.chain_of_thought);
        add(&mut self.at_cap, e.logprobs_at_cap);
        add(&mut self.sweeps, e.sweep);
    }

    fn expire_minutes(&mut self, now_minute: i64) {
        while self.minutes.front().is_some_and(|(m, _)| now_minute - m >= 60) {
            self.minutes.pop_front();
        }
    }

    /// Adds hours of history (clock hour, requests) from before this process saw the key.
    pub fn seed_hours(&mut self, history: &[(i64, u64)]) {
        let mut hours: Vec<(i64, u64)> = history.iter().copied().chain(self.hours.drain(..)).collect();
        hours.sort_unstable();
        for (hour, n) in hours {
            match self.hours.back_mut() {
                Some((h, total)) if *h == hour => *total += n,
                _ => self.hours.push_back((hour, n)),
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
        self.bias_counts.clear();
        (self.templated, self.reasoning, self.at_cap, self.sweeps) = (0, 0, 0, 0);
    }

    /// Requests in the hour up to `at`.
    pub fn hour_requests(&self, at: f64) -> u64 {
        let now_minute = (at / 60.0).floor() as i64;
        self.minutes.iter().filter(|(m, _)| now_minute - m < 60).map(|(_, n)| n).sum()
    }

    /// The most requests the key sent in one clock hour of the last week, leaving out the
    /// last `recent_hours` (so a key cannot make its own baseline by harvesting); `None` until
    /// the key is `history_hours` old.
    pub fn own_hourly_peak(&self, at: f64, history_hours: f64, recent_hours: f64) -> Option<u64> {
        let age_hours = (at - self.first_seen) / 3600.0;
        if age_hours.is_nan() || age_hours < history_hours {
            return None;
        }
        let before = (at / 3600.0 - recent_hours).floor() as i64;
        Some(self.hours.iter().filter(|(h, _)| *h < before).map(|(_, n)| *n).max().unwrap_or(0))
    }

    /// The content signals of the window (volume is filled in by the caller, who knows the group).
    pub fn signals(&self) -> Signals {
        let n = self.entries.len().max(1) as f64;
        Signals {
            window: self.entries.len(),
            template_share: self.templated as f64 / n,
            breadth: self.breadth(),
            reasoning_share: self.reasoning as f64 / n,
            logprobs_at_cap_share: self.at_cap as f64 / n,
            sweeps: self.sweeps,
            ..Signals::default()
        }
    }

    /// 1 − mean pairwise cosine similarity of the requests' content words, after dropping words
    /// in more than a fifth of the window (a template's fixed words), computed in one pass from
    /// the sum of the normalised word vectors. Sorted vectors rather than hash maps: this runs
    /// on the request path every few requests.
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

fn release(counts: &mut HashMap<u64, u32>, key: u64) {
    if let Some(c) = counts.get_mut(&key) {
        *c -= 1;
        if *c == 0 {
            counts.remove(&key);
        }
    }
}

/// The benign distribution of [`KeyWindow::novelties`], as quantiles, and the test threshold:
/// a PRADA-style test (Juuti et al., 2019) that asks whether the distances between a key's
/// successive requests look like those of benign users. A templated harvester's are all small,
/// a harvester walking a prompt set's are all large; people mix follow-ups and new questions.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Reference {
    /// Ascending quantiles of benign nearest-neighbour distances.
    pub quantiles: Vec<f64>,
    /// Kolmogorov–Smirnov distances above this are unlike benign traffic: the chosen quantile of
    /// the largest distance each benign calibration key reached.
    pub threshold: f64,
    /// Benign keys and distances the reference was made from.
    pub keys: usize,
    pub samples: usize,
}

impl Reference {
    /// Quantiles (101 points) of benign distances.
    pub fn quantiles_of(mut samples: Vec<f64>) -> Vec<f64> {
        samples.sort_by(f64::total_cmp);
        if samples.is_empty() {
            return Vec::new();
        }
        (0..=100).map(|q| samples[(q * (samples.len() - 1)) / 100]).collect()
    }

    /// The Kolmogorov–Smirnov distance between `sample`'s empirical distribution and the
    /// reference's.
    pub fn ks_distance(quantiles: &[f64], sample: impl Iterator<Item = f64>) -> f64 {
        let mut xs: Vec<f64> = sample.collect();
        if xs.is_empty() || quantiles.is_empty() {
            return 0.0;
        }
        xs.sort_by(f64::total_cmp);
        let reference_cdf = |x: f64| quantiles.partition_point(|q| *q <= x) as f64 / quantiles.len() as f64;
        let sample_cdf = |x: f64| xs.partition_point(|v| *v <= x) as f64 / xs.len() as f64;
        xs.iter()
            .chain(quantiles)
            .map(|&x| {
                // Both CDFs just below and at x: the supremum of a step-function gap is at a step.
                let below = x - 1e-12;
                (sample_cdf(x) - reference_cdf(x)).abs().max((sample_cdf(below) - reference_cdf(below)).abs())
            })
            .fold(0.0, f64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(at: f64, text: &str) -> Observation {
        Observation { at, text: TextFeatures::of_text(text, text), logprobs: None, logit_bias: None, max_tokens: None }
    }

    #[test]
    fn a_template_fills_the_window_with_near_duplicates() {
        let topics = ["volcanoes", "the french revolution", "tax law", "protein folding", "jazz", "glaciers"];
        let mut w = KeyWindow::new(50);
        for (i, t) in topics.iter().cycle().take(30).enumerate() {
            w.push(
                &obs(i as f64, &format!("Write a detailed, comprehensive essay about {t} for a curious reader.")),
                20,
            );
        }
        let s = w.signals();
        assert!(s.template_share > 0.9, "{s:?}");
        // The fixed words are dropped, so the slot's topics decide the breadth.
        assert!(s.breadth > 0.5, "{s:?}");
    }

    #[test]
    fn the_window_forgets_old_requests_and_the_hour_counts_only_the_last_hour() {
        let mut w = KeyWindow::new(4);
        for i in 0..10 {
            w.push(&obs(i as f64 * 600.0, &format!("Question {i}: how does a heat pump work in winter?")), 20);
        }
        assert_eq!(w.len(), 4);
        assert_eq!(w.signals().window, 4);
        // Requests at 5400 s (minute 90) and 4800 s (80) fall within the hour before 5400 s.
        assert_eq!(w.hour_requests(5400.0), 6);
        assert_eq!(w.hour_requests(8700.0), 1);
        assert_eq!(w.total, 10);
        assert_eq!(w.own_hourly_peak(5400.0, 24.0, 12.0), None, "too young for a baseline");
        // A day later, the first hour (6 requests in minutes 0-50) is its history.
        assert_eq!(w.own_hourly_peak(5400.0 + 86400.0, 24.0, 12.0), Some(6));
    }

    #[test]
    fn sweeps_and_capped_logprobs_are_counted() {
        let mut w = KeyWindow::new(10);
        let mut o = obs(0.0, "The capital of France is");
        o.logprobs = Some(20);
        o.max_tokens = Some(1);
        w.push(&o, 20);
        o.max_tokens = Some(100);
        w.push(&o, 20);
        o.logprobs = Some(5);
        o.max_tokens = Some(1);
        w.push(&o, 20); // a classifier reading five alternatives does not sweep
        o.logit_bias = Some(7);
        w.push(&o, 20);
        w.push(&o, 20); // the same map again: banning a word, not a sweep
        o.logit_bias = Some(8);
        w.push(&o, 20);
        let s = w.signals();
        assert_eq!(s.sweeps, 3);
        assert_eq!(s.logprobs_at_cap_share, 2.0 / 6.0);
    }

    #[test]
    fn ks_distance_is_zero_for_the_same_distribution_and_one_for_disjoint_ones() {
        let samples: Vec<f64> = (0..1000).map(|i| i as f64 / 1000.0).collect();
        let q = Reference::quantiles_of(samples.clone());
        assert!(Reference::ks_distance(&q, samples.iter().copied()) < 0.02);
        assert!(Reference::ks_distance(&q, std::iter::repeat_n(2.0, 50)) > 0.99);
        let low = Reference::ks_distance(&q, (0..100).map(|i| i as f64 / 400.0));
        assert!((low - 0.75).abs() < 0.03, "{low}");
    }
}
