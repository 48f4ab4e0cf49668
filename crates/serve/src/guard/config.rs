//! The guard's levels, a key's stored standing, and its settings (`--guard-config` TOML).

use serde::{Deserialize, Serialize};

use super::window::Reference;

/// How far the guard has gone with a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    #[default]
    None,
    /// Recorded for an admin to look at; the key is served as before.
    Flag,
    /// The key's limits are lowered to `throttle_rpm` / `throttle_tpm`.
    Throttle,
    /// The key is revoked.
    Revoke,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "none",
            Level::Flag => "flag",
            Level::Throttle => "throttle",
            Level::Revoke => "revoke",
        }
    }

    pub fn from_i64(v: i64) -> Self {
        match v {
            1 => Level::Flag,
            2 => Level::Throttle,
            v if v >= 3 => Level::Revoke,
            _ => Level::None,
        }
    }

    pub fn as_i64(self) -> i64 {
        self as i64
    }
}

impl std::str::FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" | "off" => Ok(Level::None),
            "flag" => Ok(Level::Flag),
            "throttle" => Ok(Level::Throttle),
            "revoke" => Ok(Level::Revoke),
            other => Err(format!("`{other}` is not a guard action; use flag, throttle, revoke or off")),
        }
    }
}

/// A key's guard state as stored with it in the database.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Standing {
    pub level: Level,
    /// When an admin last cleared the key (unix seconds).
    pub cleared: Option<i64>,
    /// Tokens per hour an admin accepted as normal for the key, by clearing it or by declaring
    /// its use ([`DECLARED`]: any volume).
    pub allowance: Option<f64>,
}

/// The allowance of a key whose use an admin declared (`distill guard allow`): the guard keeps
/// watching it and reporting its signals but takes no action on volume.
pub const DECLARED: f64 = 1e15;

/// The guard's settings: the TOML file given to `distill serve --guard-config`, every field
/// optional. The defaults come from the replay benchmark (`bench/guard_replay.sh`). The guard
/// only flags by default: an operator should choose to have keys throttled or revoked without a
/// look.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuardConfig {
    /// The strongest response the guard takes by itself: `flag` only records, `throttle` lowers
    /// limits, `revoke` also revokes keys that keep going; `none` turns the guard off.
    pub max_action: Level,
    /// Recent requests per key the signals are read from.
    pub window: usize,
    /// Requests a key needs in its window before pattern signals count (probes count at once).
    pub min_requests: usize,
    /// Signals are evaluated every this many requests of a key.
    pub eval_every: usize,
    /// The most `top_logprobs` the server gives.
    pub logprobs_cap: usize,
    /// Tokens a request without `max_tokens` is counted as asking for, and the most one
    /// completion is counted for.
    pub assumed_max_tokens: usize,
    pub counted_max_tokens: usize,
    /// Tokens written per hour and per day that a key may always ask for without counting as
    /// heavy.
    pub hourly_floor_tokens: f64,
    pub daily_floor_tokens: f64,
    /// A key is heavy above `population_factor` × the population's `population_quantile` of
    /// tokens per hour (and per day), among keys active then, once there are `min_population`.
    pub population_factor: f64,
    pub population_quantile: f64,
    pub min_population: usize,
    /// A key older than `own_history_hours` is heavy above `own_factor` × the most it had
    /// written in one hour (one day) of the last week, the last `own_recent_hours` left out.
    pub own_factor: f64,
    pub own_history_hours: f64,
    pub own_recent_hours: f64,
    /// Topic breadth (1 − mean cosine of content words, frequent words excluded) that makes the
    /// patterns below count: a harvest covers everything, an application serves its subject.
    pub breadth: f64,
    /// One-off generation: at least `one_off_share` of requests outside a conversation, at
    /// least `generative_share` asking for `generative_ratio` × their prompt in tokens or more,
    /// and at most `repeat_share` exact repeats (an evaluation samples the same prompts again).
    pub one_off_share: f64,
    pub generative_ratio: f64,
    pub generative_share: f64,
    pub repeat_share: f64,
    /// Share of requests asking for a chain of thought that counts as reasoning elicitation.
    pub reasoning_share: f64,
    /// Share of generations reading `probe_alternatives` of the distribution per token or more
    /// that counts as logprob harvesting.
    pub logprobs_share: f64,
    /// A probe: at most `probe_max_tokens` written after at most `probe_max_prompt` prompt
    /// tokens, reading at least `probe_alternatives` of the alternatives the cap allows (0.4:
    /// 8 of 20), or with a logit_bias map new to the key. `probe_requests` probes in the
    /// window, when also `probe_share` of it, fire the probe rule at any volume.
    pub probe_max_tokens: usize,
    pub probe_max_prompt: usize,
    pub probe_alternatives: f64,
    pub probe_requests: usize,
    pub probe_share: f64,
    /// Prompt positions a key (or group) may have scored through `prompt_logprobs` in a day,
    /// weighted by the share of alternatives read (k = 1, a perplexity, weighs nothing).
    pub prompt_mass: f64,
    /// Further requests a flagged (throttled) key may make while still firing before it is
    /// throttled (revoked).
    pub escalate_after: u64,
    /// Limits of a throttled key (its own, when lower, still apply).
    pub throttle_rpm: u64,
    pub throttle_tpm: u64,
    /// Distinct shared evidence two keys need, each within `link_within_secs` of the other's,
    /// to be linked into one group: a near-duplicate prompt bucket, or the same network and
    /// request settings in the same `link_slot_secs` stretch of time.
    /// The evidence is counted over `link_period_secs` and must be at least `link_share` of
    /// the requests either key sent in the last day.
    pub link_shared_buckets: usize,
    pub link_within_secs: f64,
    pub link_slot_secs: f64,
    pub link_period_secs: f64,
    pub link_share: f64,
    /// Whether the client's network counts as evidence. Behind a reverse proxy every request
    /// comes from the proxy's address: set it to false there.
    pub link_by_network: bool,
    /// …whose requests in the last hour are within this ratio of each other and each at least
    /// `link_min_hourly`, into groups of at most `link_max_group` keys (a larger spread makes
    /// several groups, each judged by its volume).
    pub link_volume_ratio: f64,
    pub link_min_hourly: f64,
    pub link_max_group: usize,
    /// The distribution test's benign reference (`distill guard calibrate`); without it the
    /// test is off.
    pub reference: Option<Reference>,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            max_action: Level::Flag,
            window: 200,
            min_requests: 50,
            eval_every: 8,
            logprobs_cap: 20,
            assumed_max_tokens: 1024,
            counted_max_tokens: 4096,
            hourly_floor_tokens: 100_000.0,
            daily_floor_tokens: 400_000.0,
            population_factor: 2.0,
            population_quantile: 0.95,
            min_population: 20,
            own_factor: 2.0,
            own_history_hours: 24.0,
            own_recent_hours: 12.0,
            breadth: 0.9,
            one_off_share: 0.8,
            generative_ratio: 1.0,
            generative_share: 0.5,
            repeat_share: 0.5,
            reasoning_share: 0.5,
            logprobs_share: 0.5,
            probe_max_tokens: 4,
            probe_max_prompt: 256,
            probe_alternatives: 0.4,
            probe_requests: 48,
            probe_share: 0.5,
            prompt_mass: 5000.0,
            escalate_after: 100,
            throttle_rpm: 6,
            throttle_tpm: 3000,
            link_shared_buckets: 12,
            link_within_secs: 120.0,
            link_slot_secs: 600.0,
            link_period_secs: 6.0 * 3600.0,
            link_share: 0.05,
            link_by_network: true,
            link_volume_ratio: 4.0,
            link_min_hourly: 10.0,
            link_max_group: 64,
            reference: None,
        }
    }
}

impl GuardConfig {
    pub fn enabled(&self) -> bool {
        self.max_action > Level::None
    }

    /// Checks the values a user may have written into the file.
    pub fn validate(&self) -> Result<(), String> {
        let share = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("guard `{name}` is {v}; it is a share between 0 and 1"))
            }
        };
        share("reasoning_share", self.reasoning_share)?;
        share("breadth", self.breadth)?;
        share("one_off_share", self.one_off_share)?;
        share("generative_share", self.generative_share)?;
        share("repeat_share", self.repeat_share)?;
        share("logprobs_share", self.logprobs_share)?;
        share("probe_alternatives", self.probe_alternatives)?;
        share("population_quantile", self.population_quantile)?;
        share("probe_share", self.probe_share)?;
        share("link_share", self.link_share)?;
        if self.window < 2 || self.min_requests > self.window {
            return Err(format!(
                "guard `window` ({}) must be at least 2 and at least `min_requests` ({})",
                self.window, self.min_requests
            ));
        }
        if self.eval_every == 0 || self.probe_requests == 0 || self.assumed_max_tokens == 0 {
            return Err("guard `eval_every`, `probe_requests` and `assumed_max_tokens` must be at least 1".into());
        }
        Ok(())
    }
}
