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
    /// Requests per hour an admin accepted as normal for the key by clearing it.
    pub allowance: Option<f64>,
}

/// The guard's settings: the TOML file given to `distill serve --guard-config`, every field
/// optional. The defaults come from the replay benchmark (`bench/guard_replay.sh`). The guard
/// only flags by default: in that benchmark most applications new to the server that send
/// broad prompts at a harvester's volume were flagged on their first day, and an operator
/// should choose to have such keys throttled or revoked without a look.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuardConfig {
    /// The strongest response the guard takes by itself: `flag` only records, `throttle` lowers
    /// limits, `revoke` also revokes keys that keep going; `none` turns the guard off.
    pub max_action: Level,
    /// Recent requests per key the signals are read from.
    pub window: usize,
    /// Requests a key needs in its window before pattern signals count (sweeps count at once).
    pub min_requests: usize,
    /// Signals are evaluated every this many requests of a key.
    pub eval_every: usize,
    /// `top_logprobs` at or above this is "the most the server gives".
    pub logprobs_cap: usize,
    /// Requests per hour a key may always send without counting as heavy.
    pub hourly_floor: f64,
    /// A key is heavy above `population_factor` × the population's `population_quantile` of
    /// requests per hour (among keys active in the last hour, once there are `min_population`).
    pub population_factor: f64,
    pub population_quantile: f64,
    pub min_population: usize,
    /// A key older than `own_history_hours` is heavy above `own_factor` × the most it sent in
    /// one hour of the last week (the last `own_recent_hours` left out) instead.
    pub own_factor: f64,
    pub own_history_hours: f64,
    pub own_recent_hours: f64,
    /// Share of near-duplicate (same template) requests that counts as templated.
    pub template_share: f64,
    /// Share of requests asking for a chain of thought that counts as reasoning elicitation.
    pub reasoning_share: f64,
    /// Topic breadth (1 − mean cosine of content words) that makes a template or reasoning
    /// elicitation count as harvesting.
    pub breadth: f64,
    /// Topic breadth that counts as harvesting by itself: every request on something else, as
    /// when walking a prompt dataset.
    pub coverage: f64,
    /// Share of requests asking for `logprobs_cap` alternatives that counts as logprob harvesting.
    pub logprobs_at_cap_share: f64,
    /// Sweep requests (≤ 2 tokens with top_logprobs at the cap, or a new logit_bias map) in the
    /// window that fire the sweep rule, when they are also `sweep_share` of the window.
    pub sweep_requests: usize,
    pub sweep_share: f64,
    /// Further requests a flagged (throttled) key may make while still firing before it is
    /// throttled (revoked).
    pub escalate_after: u64,
    /// Limits of a throttled key (its own, when lower, still apply).
    pub throttle_rpm: u64,
    pub throttle_tpm: u64,
    /// Distinct near-duplicate buckets two keys must share, each within `link_within_secs` of
    /// the other's use, to be linked into one group.
    pub link_shared_buckets: usize,
    pub link_within_secs: f64,
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
            hourly_floor: 300.0,
            population_factor: 2.0,
            population_quantile: 0.95,
            min_population: 20,
            own_factor: 2.0,
            own_history_hours: 24.0,
            own_recent_hours: 12.0,
            template_share: 0.5,
            reasoning_share: 0.5,
            breadth: 0.9,
            coverage: 0.99,
            logprobs_at_cap_share: 0.5,
            sweep_requests: 48,
            sweep_share: 0.5,
            escalate_after: 100,
            throttle_rpm: 6,
            throttle_tpm: 3000,
            link_shared_buckets: 12,
            link_within_secs: 120.0,
            link_volume_ratio: 4.0,
            link_min_hourly: 60.0,
            link_max_group: 16,
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
        share("template_share", self.template_share)?;
        share("reasoning_share", self.reasoning_share)?;
        share("breadth", self.breadth)?;
        share("coverage", self.coverage)?;
        share("logprobs_at_cap_share", self.logprobs_at_cap_share)?;
        share("population_quantile", self.population_quantile)?;
        share("sweep_share", self.sweep_share)?;
        if self.window < 2 || self.min_requests > self.window {
            return Err(format!(
                "guard `window` ({}) must be at least 2 and at least `min_requests` ({})",
                self.window, self.min_requests
            ));
        }
        if self.eval_every == 0 || self.sweep_requests == 0 {
            return Err("guard `eval_every` and `sweep_requests` must be at least 1".into());
        }
        Ok(())
    }
}
