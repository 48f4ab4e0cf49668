//! Per-key limits over a sliding minute: requests/min and tokens/min. Kept in memory: a
//! restart forgets the last minute, which errs on the side of serving.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);

#[derive(Default)]
struct KeyWindow {
    requests: VecDeque<Instant>,
    tokens: VecDeque<(Instant, u64)>,
    token_sum: u64,
}

impl KeyWindow {
    fn expire(&mut self, now: Instant) {
        while self.requests.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
            self.requests.pop_front();
        }
        while let Some(&(t, n)) = self.tokens.front() {
            if now.duration_since(t) < WINDOW {
                break;
            }
            self.token_sum -= n;
            self.tokens.pop_front();
        }
    }
}

/// Why a request was refused, and when to come back.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub message: String,
    pub retry_after_secs: u64,
}

#[derive(Default)]
pub struct Limiter {
    windows: Mutex<HashMap<String, KeyWindow>>,
}

impl Limiter {
    /// Admits a request of `prompt_tokens` for `key_id` under `rpm`/`tpm`, counting it, or says
    /// why not. The completion's tokens are added by [`Limiter::add_tokens`] as they are known.
    pub fn admit(&self, key_id: &str, rpm: Option<u64>, tpm: Option<u64>, prompt_tokens: u64) -> Result<(), Refusal> {
        self.admit_at(key_id, rpm, tpm, prompt_tokens, Instant::now())
    }

    fn admit_at(
        &self,
        key_id: &str,
        rpm: Option<u64>,
        tpm: Option<u64>,
        prompt_tokens: u64,
        now: Instant,
    ) -> Result<(), Refusal> {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let w = windows.entry(key_id.to_string()).or_default();
        w.expire(now);
        let wait = |since: Instant| 1 + WINDOW.saturating_sub(now.duration_since(since)).as_secs();
        if let Some(rpm) = rpm {
            if w.requests.len() as u64 >= rpm {
                let retry = w.requests.front().map(|&t| wait(t)).unwrap_or(60);
                return Err(Refusal {
                    message: format!(
                        "rate limit of {rpm} requests per minute reached for this key; retry in {retry} s"
                    ),
                    retry_after_secs: retry,
                });
            }
        }
        if let Some(tpm) = tpm {
            if prompt_tokens > tpm {
                return Err(Refusal {
                    message: format!(
                        "the prompt alone ({prompt_tokens} tokens) exceeds this key's {tpm} tokens per minute"
                    ),
                    retry_after_secs: 60,
                });
            }
            if w.token_sum + prompt_tokens > tpm {
                // Wait until enough of the window has expired to fit the prompt.
                let mut freed = 0;
                let mut retry = 60;
                for &(t, n) in &w.tokens {
                    freed += n;
                    if w.token_sum - freed + prompt_tokens <= tpm {
                        retry = wait(t);
                        break;
                    }
                }
                return Err(Refusal {
                    message: format!("rate limit of {tpm} tokens per minute reached for this key; retry in {retry} s"),
                    retry_after_secs: retry,
                });
            }
        }
        w.requests.push_back(now);
        w.tokens.push_back((now, prompt_tokens));
        w.token_sum += prompt_tokens;
        Ok(())
    }

    /// Counts generated tokens against the key's tokens/min.
    pub fn add_tokens(&self, key_id: &str, tokens: u64) {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let w = windows.entry(key_id.to_string()).or_default();
        w.tokens.push_back((Instant::now(), tokens));
        w.token_sum += tokens;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_per_minute_refuse_the_extra_request_until_the_window_moves() {
        let limiter = Limiter::default();
        let t0 = Instant::now();
        for i in 0..3 {
            limiter.admit_at("k", Some(3), None, 1, t0 + Duration::from_secs(i)).unwrap();
        }
        let refusal = limiter.admit_at("k", Some(3), None, 1, t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!(refusal.retry_after_secs, 51, "{refusal:?}");
        assert!(refusal.message.contains("3 requests per minute"));
        limiter.admit_at("other", Some(3), None, 1, t0 + Duration::from_secs(10)).unwrap();
        limiter.admit_at("k", Some(3), None, 1, t0 + Duration::from_secs(60)).unwrap();
    }

    #[test]
    fn tokens_per_minute_count_prompts_and_completions() {
        let limiter = Limiter::default();
        let t0 = Instant::now();
        limiter.admit_at("k", None, Some(100), 40, t0).unwrap();
        limiter.add_tokens("k", 50); // now at 90
        let refusal = limiter.admit_at("k", None, Some(100), 20, t0 + Duration::from_secs(1)).unwrap_err();
        assert!(refusal.message.contains("100 tokens per minute"), "{refusal:?}");
        limiter.admit_at("k", None, Some(100), 10, t0 + Duration::from_secs(1)).unwrap();
        assert!(limiter.admit_at("k", None, Some(100), 101, t0).unwrap_err().message.contains("alone"));
        assert!(limiter.admit_at("k", None, None, 1_000_000, t0).is_ok());
    }
}
