//! A teacher behind one or more OpenAI-compatible endpoints (vLLM, SGLang, TGI, llama.cpp's
//! server, `distill serve`, OpenAI): completions and their top log-probabilities come from
//! `POST /v1/chat/completions` with `logprobs: true, top_logprobs: k` (k ≤ 20, the API's cap).
//!
//! Prompts fan out over every endpoint, each with its own concurrency; a failed request (timeout,
//! transport error, 429, 5xx) is retried on whichever endpoint is healthy, with exponential
//! backoff for the one that failed, so a dead endpoint only slows the job. Each prompt's result
//! is kept once, by its index. The API key comes from the environment and is never logged.
//! [`tokens`] scores and completes token-id prompts through `/v1/completions`, for training.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use distill_kernels::TopK;
use distill_models::{ChatMessage, ModelText, SamplingParams};
use serde_json::{json, Value};

use crate::{Error, Result};

mod as_teacher;
mod tokens;
pub use tokens::TextCompletion;

/// Most alternatives per token OpenAI-compatible APIs return.
pub const MAX_REMOTE_TOP_K: usize = 20;

/// Where and how to reach the teacher.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// Base URLs (`http://host:8000`, with or without `/v1`).
    pub urls: Vec<String>,
    /// Model name sent as `model`.
    pub model: String,
    /// Requests in flight per endpoint.
    pub concurrency: usize,
    /// Bearer token (read from the environment by the caller; never printed).
    pub api_key: Option<String>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Attempts per prompt before the job fails.
    pub attempts: usize,
}

/// Where the API key of a remote teacher is read from, first found first.
pub const API_KEY_VARIABLES: [&str; 2] = ["DISTILL_TEACHER_API_KEY", "OPENAI_API_KEY"];

impl RemoteOptions {
    /// Options for `urls` with the key from [`API_KEY_VARIABLES`]; without a `model`, the first
    /// one the first endpoint lists (`GET /v1/models`).
    pub fn from_env(
        urls: Vec<String>,
        model: Option<String>,
        concurrency: usize,
        timeout: Duration,
        attempts: usize,
    ) -> Result<Self> {
        let first = urls.first().ok_or_else(|| Error::Input("no teacher endpoint given".into()))?;
        let api_key = API_KEY_VARIABLES.iter().find_map(|v| std::env::var(v).ok());
        let model = match model {
            Some(m) => m,
            None => first_model(first, api_key.as_deref(), timeout)?,
        };
        Ok(Self { urls, model, concurrency: concurrency.max(1), api_key, timeout, attempts })
    }
}

/// One prompt's completion with the teacher's top-k at every completion token.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteCompletion {
    /// Completion token ids, the end-of-sequence token included when the teacher stopped on it.
    pub token_ids: Vec<u32>,
    /// One row per completion token. The end-of-sequence row is a hard label (the APIs report
    /// no distribution for the token that ends a completion).
    pub top: TopK,
    pub text: String,
}

/// Health of one endpoint, as the job saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointReport {
    pub url: String,
    pub served: u64,
    pub failures: u64,
    pub last_error: Option<String>,
}

struct Endpoint {
    url: String,
    served: AtomicU64,
    failures: AtomicU64,
    /// Consecutive failures and when the endpoint may be tried again.
    backoff: Mutex<(u32, Option<Instant>, Option<String>)>,
}

pub struct RemoteTeacher {
    options: RemoteOptions,
    endpoints: Vec<Endpoint>,
    /// `MODEL @ URL, URL…`.
    label: String,
    /// The teacher's tokenizer, chat template and stop ids, from a local copy.
    text: ModelText,
    vocab_size: usize,
    /// Set once an endpoint refuses log-probabilities: from then on completions are text only
    /// and stored as hard labels (sequence-level KD).
    text_only: AtomicBool,
}

/// The shared state of one fan-out: items left to do, results, the first fatal error.
struct Job<'a, R> {
    queue: &'a Mutex<VecDeque<(usize, usize)>>,
    results: &'a Mutex<Vec<Option<R>>>,
    fatal: &'a Mutex<Option<String>>,
    remaining: &'a AtomicU64,
}

/// Why one attempt failed, and whether another attempt can help.
enum Failure {
    Retry(String),
    Fatal(String),
    /// The endpoint does not give log-probabilities; ask again for text only.
    NoLogprobs,
}

impl RemoteTeacher {
    /// `text` must be the teacher's (a local copy's tokenizer, chat template and stop ids):
    /// returned tokens are mapped to its ids, and its first stop id is appended when an endpoint
    /// reports `finish_reason: stop` without a stop string. `vocab_size` is the teacher's
    /// output-layer rows.
    pub fn new(options: RemoteOptions, text: ModelText, vocab_size: usize) -> Result<Self> {
        if options.urls.is_empty() {
            return Err(Error::Input("no teacher endpoint given".into()));
        }
        let endpoints: Vec<Endpoint> = options
            .urls
            .iter()
            .map(|u| Endpoint {
                url: base_url(u),
                served: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                backoff: Mutex::new((0, None, None)),
            })
            .collect();
        let label = format!(
            "{} @ {}",
            options.model,
            endpoints.iter().map(|e: &Endpoint| e.url.as_str()).collect::<Vec<_>>().join(", ")
        );
        Ok(Self { options, endpoints, label, text, vocab_size, text_only: AtomicBool::new(false) })
    }

    /// Whether the endpoints gave text only (the dataset then holds hard labels).
    pub fn is_text_only(&self) -> bool {
        self.text_only.load(Ordering::SeqCst)
    }

    /// How each endpoint fared so far: completions served, failed requests, the last error.
    pub fn report(&self) -> Vec<EndpointReport> {
        self.endpoints
            .iter()
            .map(|e| EndpointReport {
                url: e.url.clone(),
                served: e.served.load(Ordering::Relaxed),
                failures: e.failures.load(Ordering::Relaxed),
                last_error: e.backoff.lock().unwrap_or_else(|p| p.into_inner()).2.clone(),
            })
            .collect()
    }

    /// A completion per conversation, sampled with `params` (prompt `i` with `seed + i`), and the
    /// teacher's top-`k` (k ≤ 20) at every token.
    pub fn complete_chats(
        &self,
        prompts: &[Vec<ChatMessage>],
        params: &SamplingParams,
        k: usize,
    ) -> Result<Vec<RemoteCompletion>> {
        as_teacher::check_remote_k(k)?;
        self.fan_out(prompts, |endpoint, index, messages| {
            let seeded = SamplingParams { seed: params.seed.wrapping_add(index as u64), ..params.clone() };
            self.request(endpoint, messages, &seeded, k)
        })
    }

    /// Runs `call` once per item over every endpoint (each with `concurrency` workers),
    /// retrying failures on whichever endpoint is healthy with backoff for the one that
    /// failed. Results come back in item order; the first fatal error ends the job.
    fn fan_out<T: Sync, R: Send>(
        &self,
        items: &[T],
        call: impl Fn(&Endpoint, usize, &T) -> std::result::Result<R, Failure> + Sync,
    ) -> Result<Vec<R>> {
        let queue: Mutex<VecDeque<(usize, usize)>> = Mutex::new((0..items.len()).map(|i| (i, 0)).collect());
        let results: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
        let fatal: Mutex<Option<String>> = Mutex::new(None);
        let remaining = AtomicU64::new(items.len() as u64);
        let job = Job { queue: &queue, results: &results, fatal: &fatal, remaining: &remaining };
        std::thread::scope(|s| {
            for endpoint in &self.endpoints {
                for _ in 0..self.options.concurrency.max(1) {
                    s.spawn(|| self.worker(endpoint, items, &call, &job));
                }
            }
        });
        if let Some(e) = fatal.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(Error::Network(e));
        }
        results
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.ok_or_else(|| Error::Network(format!("item {i} got no answer"))))
            .collect()
    }

    fn worker<T, R>(
        &self,
        endpoint: &Endpoint,
        items: &[T],
        call: &(impl Fn(&Endpoint, usize, &T) -> std::result::Result<R, Failure> + Sync),
        job: &Job<'_, R>,
    ) {
        let Job { queue, results, fatal, remaining } = job;
        loop {
            if remaining.load(Ordering::SeqCst) == 0 || fatal.lock().map(|f| f.is_some()).unwrap_or(true) {
                return;
            }
            // A backed-off endpoint waits; the others keep taking work meanwhile.
            let wait =
                endpoint.backoff.lock().ok().and_then(|b| b.1).and_then(|t| t.checked_duration_since(Instant::now()));
            if let Some(wait) = wait {
                std::thread::sleep(wait.min(Duration::from_millis(200)));
                continue;
            }
            let Some((index, attempt)) = queue.lock().ok().and_then(|mut q| q.pop_front()) else {
                // Others hold the last items; one of them may fail and come back.
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            match call(endpoint, index, &items[index]) {
                Ok(done) => {
                    endpoint.served.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut b) = endpoint.backoff.lock() {
                        b.0 = 0;
                        b.1 = None;
                    }
                    if let Ok(mut r) = results.lock() {
                        if r[index].is_none() {
                            r[index] = Some(done);
                            remaining.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                }
                Err(Failure::NoLogprobs) => {
                    if !self.text_only.swap(true, Ordering::SeqCst) {
                        tracing::warn!(
                            "teacher endpoint {} gives no log-probabilities: falling back to sequence-level KD \
                             (the teacher's text as hard labels)",
                            endpoint.url
                        );
                    }
                    if let Ok(mut q) = queue.lock() {
                        q.push_front((index, attempt));
                    }
                }
                Err(Failure::Fatal(e)) => {
                    if let Ok(mut f) = fatal.lock() {
                        f.get_or_insert(format!("{}: {e}", endpoint.url));
                    }
                }
                Err(Failure::Retry(e)) => {
                    endpoint.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("teacher endpoint {} failed (attempt {}): {e}", endpoint.url, attempt + 1);
                    if let Ok(mut b) = endpoint.backoff.lock() {
                        b.0 += 1;
                        let delay = Duration::from_millis(250u64 << b.0.min(7)); // 0.5 s … 32 s
                        b.1 = Some(Instant::now() + delay);
                        b.2 = Some(e.clone());
                    }
                    if attempt + 1 >= self.options.attempts {
                        if let Ok(mut f) = fatal.lock() {
                            f.get_or_insert(format!(
                                "request {index} failed {} times; last error from {}: {e}",
                                attempt + 1,
                                endpoint.url
                            ));
                        }
                    } else if let Ok(mut q) = queue.lock() {
                        q.push_back((index, attempt + 1));
                    }
                }
            }
        }
    }

    fn request(
        &self,
        endpoint: &Endpoint,
        messages: &[ChatMessage],
        params: &SamplingParams,
        k: usize,
    ) -> std::result::Result<RemoteCompletion, Failure> {
        let mut body = json!({
            "model": self.options.model,
            "messages": messages,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": params.seed,
        });
        let text_only = self.text_only.load(Ordering::SeqCst);
        if !text_only {
            body["logprobs"] = json!(true);
            body["top_logprobs"] = json!(k);
        }
        if !params.stop.is_empty() {
            body["stop"] = json!(params.stop);
        }
        let value = self.post(endpoint, "/v1/chat/completions", &body, |code, detail| {
            code == 400 && detail.contains("logprobs") && !text_only
        })?;
        self.parse(&value, k, params).map_err(Failure::Fatal)
    }

    /// POSTs `body` to `path` of `endpoint`. Transport errors, 429 and 5xx can be retried;
    /// other statuses are fatal, except those `no_logprobs(status, detail)` recognises as an
    /// endpoint refusing log-probabilities.
    fn post(
        &self,
        endpoint: &Endpoint,
        path: &str,
        body: &Value,
        no_logprobs: impl Fn(u16, &str) -> bool,
    ) -> std::result::Result<Value, Failure> {
        let mut request = ureq::post(&format!("{}{path}", endpoint.url))
            .timeout(self.options.timeout)
            .set("Content-Type", "application/json");
        if let Some(key) = &self.options.api_key {
            request = request.set("Authorization", &format!("Bearer {key}"));
        }
        let response = match request.send_string(&body.to_string()) {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => {
                let detail = r.into_string().unwrap_or_default();
                let detail: String = detail.chars().take(300).collect();
                return Err(if no_logprobs(code, &detail) {
                    Failure::NoLogprobs
                } else if code == 429 || code >= 500 {
                    Failure::Retry(format!("HTTP {code}: {detail}"))
                } else {
                    Failure::Fatal(format!("HTTP {code}: {detail}"))
                });
            }
            Err(e) => return Err(Failure::Retry(e.to_string())),
        };
        let text = response.into_string().map_err(|e| Failure::Retry(format!("reading the response: {e}")))?;
        serde_json::from_str(&text).map_err(|e| Failure::Retry(format!("response is not JSON: {e}")))
    }

    /// The completion's token ids and top-k rows from a chat response.
    fn parse(&self, value: &Value, k: usize, params: &SamplingParams) -> std::result::Result<RemoteCompletion, String> {
        let choice = &value["choices"][0];
        let text = choice["message"]["content"].as_str().unwrap_or_default().to_string();
        let mut top = TopK { k, ids: Vec::new(), logprobs: Vec::new(), tail_logprob: Vec::new() };
        let Some(content) = choice["logprobs"]["content"].as_array() else {
            if !self.text_only.swap(true, Ordering::SeqCst) {
                tracing::warn!("the teacher endpoint returns no log-probabilities: falling back to sequence-level KD");
            }
            // Text only: the teacher's tokens as hard labels.
            let mut token_ids = self.text.tokenizer.encode(&text, false).map_err(|e| e.to_string())?;
            if ended_on_eos(choice, &text, params) {
                token_ids.extend(self.text.stop_ids.first());
            }
            for &id in &token_ids {
                push_row(&mut top, &[(id, 0.0)], k);
            }
            return Ok(RemoteCompletion { token_ids, top, text });
        };
        let mut token_ids = Vec::with_capacity(content.len() + 1);
        for (position, t) in content.iter().enumerate() {
            let id = self.token_id(t).ok_or_else(|| {
                format!(
                    "token {} at position {position} is not in the local tokenizer; is --tokenizer the teacher's?",
                    t["token"]
                )
            })?;
            token_ids.push(id);
            let mut row: Vec<(u32, f32)> = t["top_logprobs"]
                .as_array()
                .map(|alts| {
                    alts.iter().filter_map(|a| Some((self.token_id(a)?, a["logprob"].as_f64()? as f32))).collect()
                })
                .unwrap_or_default();
            row.sort_by(|a, b| b.1.total_cmp(&a.1));
            row.dedup_by_key(|(id, _)| *id);
            row.truncate(k);
            push_row(&mut top, &row, k);
        }
        if ended_on_eos(choice, &text, params) {
            if let Some(&eos) = self.text.stop_ids.first() {
                token_ids.push(eos);
                push_row(&mut top, &[(eos, 0.0)], k);
            }
        }
        Ok(RemoteCompletion { token_ids, top, text })
    }

    /// Id of a returned token: from its `bytes` through the byte-level alphabet when given,
    /// else from its text.
    fn token_id(&self, t: &Value) -> Option<u32> {
        if let Some(bytes) = t["bytes"].as_array() {
            let bytes: Option<Vec<u8>> = bytes.iter().map(|b| b.as_u64().map(|b| b as u8)).collect();
            if let Some(id) = bytes.and_then(|b| self.text.tokenizer.id_for_bytes(&b)) {
                return Some(id);
            }
        }
        self.text.tokenizer.token_to_id(t["token"].as_str()?)
    }
}

/// `finish_reason: stop` without a stop string: the teacher ended on its end-of-sequence token.
fn ended_on_eos(choice: &Value, text: &str, params: &SamplingParams) -> bool {
    choice["finish_reason"] == "stop" && params.stop.iter().all(|s| !text.ends_with(s.as_str()))
}

/// The first model `GET /v1/models` lists at `url`.
pub fn first_model(url: &str, api_key: Option<&str>, timeout: Duration) -> Result<String> {
    let mut request = ureq::get(&format!("{}/v1/models", base_url(url))).timeout(timeout);
    if let Some(key) = api_key {
        request = request.set("Authorization", &format!("Bearer {key}"));
    }
    let body = request
        .call()
        .map_err(|e| Error::Network(format!("GET /v1/models: {e}")))?
        .into_string()
        .map_err(|e| Error::Network(format!("GET /v1/models: {e}")))?;
    let value: Value =
        serde_json::from_str(&body).map_err(|e| Error::Network(format!("GET /v1/models: not JSON: {e}")))?;
    value["data"][0]["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| Error::Network("GET /v1/models listed no model".into()))
}

/// Appends one row of at most `k` (id, logprob) pairs, padded to `k` with impossible entries,
/// and its tail mass `ln(1 − Σ p)` (−inf when the pairs hold it all).
fn push_row(top: &mut TopK, row: &[(u32, f32)], k: usize) {
    let mass: f64 = row.iter().map(|&(_, lp)| (lp as f64).exp()).sum();
    for i in 0..k {
        let (id, lp) = row.get(i).copied().unwrap_or((row.first().map_or(0, |r| r.0), f32::NEG_INFINITY));
        top.ids.push(id);
        top.logprobs.push(lp);
    }
    let rest = 1.0 - mass;
    top.tail_logprob.push(if rest > 1e-7 { rest.ln() as f32 } else { f32::NEG_INFINITY });
}

/// `http://host:8000/v1/` → `http://host:8000`.
fn base_url(url: &str) -> String {
    let trimmed = url.trim_end_matches('/');
    trimmed.strip_suffix("/v1").unwrap_or(trimmed).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_padded_and_their_tail_is_the_missing_mass() {
        let mut top = TopK { k: 3, ids: Vec::new(), logprobs: Vec::new(), tail_logprob: Vec::new() };
        push_row(&mut top, &[(5, (0.5f32).ln()), (7, (0.25f32).ln())], 3);
        assert_eq!(top.ids, vec![5, 7, 5]);
        assert_eq!(top.logprobs[2], f32::NEG_INFINITY);
        assert!((top.tail_logprob[0] - (0.25f32).ln()).abs() < 1e-6);
        push_row(&mut top, &[(2, 0.0)], 3);
        assert_eq!(top.tail_logprob[1], f32::NEG_INFINITY, "a hard label holds all the mass");
    }

    #[test]
    fn base_urls_drop_the_api_suffix() {
        assert_eq!(base_url("http://h:8000/v1/"), "http://h:8000");
        assert_eq!(base_url("http://h:8000"), "http://h:8000");
    }
}
