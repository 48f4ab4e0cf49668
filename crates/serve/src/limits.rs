//! Per-key limits: requests/min and tokens/min over a sliding minute, and requests in flight.
//! Kept in memory: a restart forgets the last minute, which errs on the side of serving.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);

#[derive(Default)]
struct KeyWindow {
    requests: VecDeque<Instant>,
    /// (when, tokens, reservation id): a request's prompt plus the completion tokens it may
    /// still generate, lowered to what it did generate when it ends.
    tokens: VecDeque<(Instant, u64, u64)>,
    token_sum: u64,
}

impl KeyWindow {
    fn expire(&mut self, now: Instant) {
        while self.requests.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
            self.requests.pop_front();
        }
        while let Some(&(t, n, _)) = self.tokens.front() {
            if now.duration_since(t) < WINDOW {
                break;
            }
            self.token_sum -= n;
            self.tokens.pop_front();
        }
    }

    /// Seconds until `need` more tokens fit under `tpm`.
    fn wait_for(&self, need: u64, tpm: u64, now: Instant) -> u64 {
        let mut freed = 0;
        for &(t, n, _) in &self.tokens {
            freed += n;
            if self.token_sum - freed + need <= tpm {
                return 1 + WINDOW.saturating_sub(now.duration_since(t)).as_secs();
            }
        }
        60
    }
}

/// Why a request was refused, and when to come back.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub message: String,
    pub retry_after_secs: u64,
}

/// What a request may use: its prompt, and `n` choices of up to `max_tokens` each.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ask {
    pub prompt_tokens: u64,
    pub n: u64,
    pub max_tokens: u64,
    /// The client set `max_tokens`; otherwise it is the context's room, and a key's tokens per
    /// minute may lower it to what the key's minute has left.
    pub explicit: bool,
}

/// An admitted request's hold on its key's tokens per minute, released by
/// [`Limiter::settle`] when it ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Admitted {
    id: u64,
    /// Completion tokens held (n × max_tokens).
    reserved: u64,
    /// Tokens each choice may generate.
    pub max_tokens: u64,
}

#[derive(Default)]
pub struct Limiter {
    windows: Mutex<HashMap<String, KeyWindow>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl Limiter {
    /// Admits a request for `key_id` under `rpm`/`tpm`, or says why not. The prompt and every
    /// token the request may generate (n × max_tokens) count against `tpm` at once, so no
    /// request can take a key past its limit; [`Limiter::settle`] gives back what it did not use.
    pub fn admit(&self, key_id: &str, rpm: Option<u64>, tpm: Option<u64>, ask: Ask) -> Result<Admitted, Refusal> {
        self.admit_at(key_id, rpm, tpm, ask, Instant::now())
    }

    fn admit_at(
        &self,
        key_id: &str,
        rpm: Option<u64>,
        tpm: Option<u64>,
        ask: Ask,
        now: Instant,
    ) -> Result<Admitted, Refusal> {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let w = windows.entry(key_id.to_string()).or_default();
        w.expire(now);
        if let Some(rpm) = rpm {
            if w.requests.len() as u64 >= rpm {
                let retry = w
                    .requests
                    .front()
                    .map(|&t| 1 + WINDOW.saturating_sub(now.duration_since(t)).as_secs())
                    .unwrap_or(60);
                return Err(Refusal {
                    message: format!(
                        "rate limit of {rpm} requests per minute reached for this key; retry in {retry} s"
                    ),
                    retry_after_secs: retry,
                });
            }
        }
        let (n, prompt) = (ask.n.max(1), ask.prompt_tokens);
        let mut max_tokens = ask.max_tokens;
        if let Some(tpm) = tpm {
            // The least this request can use: its prompt and one token per choice.
            let least = prompt + n;
            if least > tpm {
                return Err(Refusal {
                    message: format!(
                        "the prompt ({prompt} tokens) and one token for each of the {n} choices exceed this key's {tpm} tokens per minute"
                    ),
                    retry_after_secs: 60,
                });
            }
            if ask.explicit && prompt + n * max_tokens > tpm {
                return Err(Refusal {
                    message: format!(
                        "this request may use {} tokens (a prompt of {prompt} and {n} × max_tokens {max_tokens}), more than this key's {tpm} tokens per minute; ask for max_tokens ≤ {}",
                        prompt + n * max_tokens,
                        (tpm - prompt) / n
                    ),
                    retry_after_secs: 60,
                });
            }
            let left = tpm.saturating_sub(w.token_sum);
            if !ask.explicit {
                // Without max_tokens: at most what the key's minute has left.
                max_tokens = max_tokens.min(left.saturating_sub(prompt) / n);
            }
            let need = prompt + n * max_tokens.max(1);
            if max_tokens == 0 || w.token_sum + need > tpm {
                let retry = w.wait_for(need, tpm, now);
                return Err(Refusal {
                    message: format!("rate limit of {tpm} tokens per minute reached for this key; retry in {retry} s"),
                    retry_after_secs: retry,
                });
            }
        }
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let reserved = n * max_tokens;
        let held = if tpm.is_some() { prompt + reserved } else { prompt };
        w.requests.push_back(now);
        w.tokens.push_back((now, held, id));
        w.token_sum += held;
        Ok(Admitted { id, reserved: if tpm.is_some() { reserved } else { 0 }, max_tokens })
    }

    /// Ends an admitted request that generated `generated` tokens: its hold on the key's tokens
    /// per minute becomes what it used.
    pub fn settle(&self, key_id: &str, admitted: &Admitted, generated: u64) {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let w = windows.entry(key_id.to_string()).or_default();
        let Some(entry) = w.tokens.iter_mut().rev().find(|(_, _, id)| *id == admitted.id) else {
            // Expired from the window already: nothing is held any more.
            return;
        };
        if admitted.reserved >= generated {
            let unused = admitted.reserved - generated;
            entry.1 -= unused;
            w.token_sum -= unused;
        } else {
            let over = generated - admitted.reserved;
            entry.1 += over;
            w.token_sum += over;
        }
    }
}

/// Places held per key, at most a cap each, each given back when its [`Place`] is dropped:
/// a key's requests in flight, a network address's open connections.
pub struct Places<K> {
    counts: Arc<Mutex<HashMap<K, usize>>>,
}

impl<K> Default for Places<K> {
    fn default() -> Self {
        Self { counts: Arc::default() }
    }
}

/// One place held for `key` among its [`Places`].
pub struct Place<K: Eq + std::hash::Hash> {
    counts: Arc<Mutex<HashMap<K, usize>>>,
    key: K,
}

impl<K: Eq + std::hash::Hash + Clone> Places<K> {
    /// Takes a place for `key` if it holds fewer than `cap` (at least 1).
    pub fn take(&self, key: &K, cap: usize) -> Option<Place<K>> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(key.clone()).or_default();
        if *count >= cap.max(1) {
            return None;
        }
        *count += 1;
        Some(Place { counts: self.counts.clone(), key: key.clone() })
    }

    /// Keys holding a place now.
    pub fn holders(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl<K: Eq + std::hash::Hash> Drop for Place<K> {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// Requests in flight per API key.
pub type KeySlots = Places<String>;
pub type KeySlot = Place<String>;

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(prompt_tokens: u64, n: u64, max_tokens: u64, explicit: bool) -> Ask {
        Ask { prompt_tokens, n, max_tokens, explicit }
    }

    #[test]
    fn requests_per_minute_refuse_the_extra_request_until_the_window_moves() {
        let limiter = Limiter::default();
        let t0 = Instant::now();
        for i in 0..3 {
            limiter.admit_at("k", Some(3), None, ask(1, 1, 8, true), t0 + Duration::from_secs(i)).unwrap();
        }
        let refusal =
            limiter.admit_at("k", Some(3), None, ask(1, 1, 8, true), t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!(refusal.retry_after_secs, 51, "{refusal:?}");
        assert!(refusal.message.contains("3 requests per minute"));
        limiter.admit_at("other", Some(3), None, ask(1, 1, 8, true), t0 + Duration::from_secs(10)).unwrap();
        limiter.admit_at("k", Some(3), None, ask(1, 1, 8, true), t0 + Duration::from_secs(60)).unwrap();
    }

    #[test]
    fn tokens_per_minute_hold_every_token_a_request_may_generate_until_it_ends() {
        let limiter = Limiter::default();
        let t0 = Instant::now();
        // 16 choices of 8 tokens cannot fit a budget of 50, whatever the prompt.
        let r = limiter.admit_at("k", None, Some(50), ask(4, 16, 8, true), t0).unwrap_err();
        assert!(r.message.contains("≤ 2"), "{r:?}");
        // 40 + 2 × 30 = 100 held at admission: nothing else fits while it runs.
        let a = limiter.admit_at("k", None, Some(100), ask(40, 2, 30, true), t0).unwrap();
        assert!(limiter.admit_at("k", None, Some(100), ask(1, 1, 1, true), t0).is_err());
        // It generated 10 tokens: 50 are held now, and a request of 10 + 40 fits exactly.
        limiter.settle("k", &a, 10);
        limiter.admit_at("k", None, Some(100), ask(10, 1, 40, true), t0).unwrap();
        assert!(limiter.admit_at("k", None, Some(100), ask(1, 1, 1, true), t0).is_err());
        // The window moves on.
        limiter.admit_at("k", None, Some(100), ask(1, 1, 1, true), t0 + Duration::from_secs(60)).unwrap();
        assert!(limiter.admit_at("k", None, None, ask(1_000_000, 4, 1_000, true), t0).is_ok());
    }

    #[test]
    fn without_max_tokens_a_request_gets_what_the_minute_has_left() {
        let limiter = Limiter::default();
        let t0 = Instant::now();
        let a = limiter.admit_at("k", None, Some(100), ask(20, 2, 8_000, false), t0).unwrap();
        assert_eq!(a.max_tokens, 40, "(100 − 20) / 2");
        limiter.settle("k", &a, 30); // 50 held
        let b = limiter.admit_at("k", None, Some(100), ask(10, 1, 8_000, false), t0).unwrap();
        assert_eq!(b.max_tokens, 40);
        let r = limiter.admit_at("k", None, Some(100), ask(1, 1, 8_000, false), t0).unwrap_err();
        assert!(r.message.contains("100 tokens per minute") && r.retry_after_secs == 61, "{r:?}");
        let r =
            limiter.admit_at("k", None, Some(100), ask(99, 2, 8_000, false), t0 + Duration::from_secs(61)).unwrap_err();
        assert!(r.message.contains("one token for each of the 2 choices"), "{r:?}");
    }

    #[test]
    fn a_key_holds_at_most_its_cap_of_requests_in_flight() {
        let slots = KeySlots::default();
        let k = |s: &str| s.to_string();
        let held: Vec<KeySlot> = (0..2).map(|_| slots.take(&k("k"), 2).unwrap()).collect();
        assert!(slots.take(&k("k"), 2).is_none());
        assert!(slots.take(&k("other"), 2).is_some());
        drop(held);
        assert!(slots.take(&k("k"), 2).is_some());
        assert_eq!(slots.holders(), 0, "finished keys leave no entry");
    }
}
