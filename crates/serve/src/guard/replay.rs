//! Traffic files for `distill guard replay` and `distill guard calibrate`: one request per
//! line, `{"t": unix_seconds, "key": "...", "endpoint": "chat" | "completions", "body": {...}}`,
//! the body exactly as a client would POST it, and optionally `"ip": "..."`, the client's address.
//! Other fields (a benchmark's labels) are ignored.

use std::collections::HashMap;
use std::net::IpAddr;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::window::{KeyWindow, Observation, Reference};
use super::{Guard, GuardConfig};
use crate::wire::{self, Endpoint, GenerationRequest};

#[derive(Deserialize)]
struct Line<'a> {
    t: f64,
    key: String,
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    ip: Option<String>,
    #[serde(borrow)]
    body: &'a RawValue,
}

/// One request of a traffic file: the key, the arrival time, the client's address and the
/// request as the server would have validated it.
pub struct TrafficLine {
    pub key: String,
    pub at: f64,
    pub client: Option<IpAddr>,
    pub request: GenerationRequest,
}

/// Parses one line of a traffic file; the error says what is wrong with the line.
pub fn parse_request_line(line: &str) -> Result<TrafficLine, String> {
    let parsed: Line = serde_json::from_str(line)
        .map_err(|e| format!("expected {{\"t\": seconds, \"key\": \"...\", \"body\": {{...}}}}: {e}"))?;
    let endpoint = match parsed.endpoint.as_deref() {
        None | Some("chat") | Some("chat.completions") => Endpoint::Chat,
        Some("completions") => Endpoint::Completions,
        Some(other) => return Err(format!("`endpoint` is `{other}`; use chat or completions")),
    };
    let request = wire::parse_request(endpoint, parsed.body.get().as_bytes())
        .map_err(|e| format!("the body is not a valid request: {}", e.message))?;
    let client = match parsed.ip.as_deref() {
        Some(ip) => Some(ip.parse::<IpAddr>().map_err(|_| format!("`ip` is `{ip}`, not an IP address"))?),
        None => None,
    };
    Ok(TrafficLine { key: parsed.key, at: parsed.t, client, request })
}

/// [`parse_request_line`], then the guard's view of the request.
pub fn parse_line(line: &str) -> Result<(String, Observation), String> {
    let l = parse_request_line(line)?;
    Ok((l.key, Guard::observation(&l.request, l.at, None, None, l.client)))
}

/// Builds the distribution test's reference from traffic judged benign: the quantiles of the
/// distances between each request and its nearest predecessor of the same key, and the
/// threshold that `quantile` of benign keys never exceed. Keys with fewer than `min_requests`
/// requests are left out, as the test ignores them.
pub fn calibrate(config: &GuardConfig, traffic: &[(String, Observation)], quantile: f64) -> Result<Reference, String> {
    let counts = traffic.iter().fold(HashMap::<&str, usize>::new(), |mut m, (k, _)| {
        *m.entry(k).or_default() += 1;
        m
    });
    let tested = |key: &str| counts.get(key).is_some_and(|n| *n >= config.min_requests);

    let mut samples = Vec::new();
    each_window(config, traffic, |key, window, _| {
        if tested(key) {
            // The newest request's distance, once: each request is sampled when it arrives.
            samples.extend(window.novelties().last());
        }
    });
    let keys = counts.values().filter(|n| **n >= config.min_requests).count();
    if keys < 10 {
        return Err(format!(
            "only {keys} keys have the {} requests the test needs; calibrate on more benign traffic",
            config.min_requests
        ));
    }
    let quantiles = Reference::quantiles_of(samples.clone());
    let mut worst: HashMap<String, f64> = HashMap::new();
    each_window(config, traffic, |key, window, due| {
        if due {
            let d = Reference::ks_distance(&quantiles, window.novelties());
            let w = worst.entry(key.to_string()).or_insert(0.0);
            *w = w.max(d);
        }
    });
    let mut maxima: Vec<f64> = worst.into_values().collect();
    maxima.sort_by(f64::total_cmp);
    let threshold = maxima[((maxima.len() - 1) as f64 * quantile.clamp(0.0, 1.0)).round() as usize];
    Ok(Reference { quantiles, threshold: threshold.max(1e-6), keys, samples: samples.len() })
}

/// Replays `traffic` into per-key windows, showing each key's window after each of its
/// requests and whether the test would be evaluated there.
fn each_window(config: &GuardConfig, traffic: &[(String, Observation)], mut visit: impl FnMut(&str, &KeyWindow, bool)) {
    let mut keys: HashMap<&str, (KeyWindow, usize)> = HashMap::new();
    for (key, obs) in traffic {
        let (window, since) = keys.entry(key).or_insert_with(|| (KeyWindow::new(config.window), 0));
        window.push(obs, config);
        *since += 1;
        let due = *since >= config.eval_every && window.len() >= config.min_requests;
        if due {
            *since = 0;
        }
        visit(key, window, due);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_through_the_server_validation_and_errors_say_what_is_wrong() {
        let (key, obs) = parse_line(
            r#"{"t": 12.5, "key": "k1", "label": "x", "body": {"model": "m", "messages": [{"role": "user", "content": "Hi there"}], "logprobs": true, "top_logprobs": 20, "max_tokens": 1}}"#,
        )
        .unwrap();
        assert_eq!((key.as_str(), obs.at, obs.logprobs, obs.max_tokens), ("k1", 12.5, Some(20), Some(1)));
        assert!(obs.may_probe(&GuardConfig::default()));
        let (_, obs) =
            parse_line(r#"{"t": 1, "key": "k", "endpoint": "completions", "body": {"model": "m", "prompt": "abc"}}"#)
                .unwrap();
        assert!(!obs.may_probe(&GuardConfig::default()));
        assert!(parse_line(r#"{"t": 1, "key": "k"}"#).unwrap_err().contains("body"));
        assert!(parse_line(r#"{"t": 1, "key": "k", "body": {"model": "m", "messages": []}}"#)
            .unwrap_err()
            .contains("not a valid request"));
        let (_, obs) = parse_line(
            r#"{"t": 1, "key": "k", "ip": "198.51.100.4", "endpoint": "completions", "body": {"model": "m", "prompt": "abc", "prompt_logprobs": 5}}"#,
        )
        .unwrap();
        assert_eq!(
            (obs.prompt_logprobs, obs.origin),
            (Some(5), Some(crate::guard::network_of("198.51.100.200".parse().unwrap())))
        );
        assert!(parse_line(
            r#"{"t": 1, "key": "k", "ip": "nowhere", "endpoint": "completions", "body": {"model": "m", "prompt": "a"}}"#
        )
        .unwrap_err()
        .contains("not an IP address"));
        assert!(parse_line(r#"{"t": 1, "key": "k", "endpoint": "embeddings", "body": {}}"#)
            .unwrap_err()
            .contains("embeddings"));
    }

    #[test]
    fn calibration_puts_benign_keys_under_the_threshold_and_a_template_far_above() {
        let config = GuardConfig { window: 60, min_requests: 30, ..GuardConfig::default() };
        let words = [
            "garden",
            "tax",
            "printer",
            "recipe",
            "flight",
            "python",
            "insurance",
            "guitar",
            "marathon",
            "mortgage",
            "vaccine",
            "bicycle",
            "poem",
            "resume",
            "router",
            "sourdough",
            "visa",
            "chess",
            "aquarium",
            "invoice",
        ];
        let mut traffic = Vec::new();
        for k in 0..30usize {
            for i in 0..60usize {
                // People return to what they asked before (a follow-up) or ask something new.
                let a = words[(k * 3 + i / 3) % words.len()];
                let b = words[(k * 7 + i * 5) % words.len()];
                let text = if i % 3 == 0 {
                    format!("I have a question about my {a}, it keeps failing")
                } else {
                    format!("thanks! and what about {b} with {a}? number {i}")
                };
                let obs = Observation::of_text((k * 1000 + i) as f64, &text);
                traffic.push((format!("benign-{k}"), obs));
            }
        }
        let reference = calibrate(&config, &traffic, 0.995).unwrap();
        assert_eq!(reference.keys, 30);
        assert_eq!(reference.quantiles.len(), 101);
        let mut templated = KeyWindow::new(60);
        for i in 0..60 {
            let text =
                format!("Give a complete, detailed and exhaustive encyclopedia entry on topic number {i} please");
            templated.push(&Observation::of_text(i as f64, &text), &config);
        }
        let d = Reference::ks_distance(&reference.quantiles, templated.novelties());
        assert!(d > 1.5 * reference.threshold, "{d} vs threshold {}", reference.threshold);
        assert!(calibrate(&config, &traffic[..100], 0.995).unwrap_err().contains("more benign traffic"));
    }
}
