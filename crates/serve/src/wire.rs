//! The OpenAI wire format at the edge: request bodies are parsed and validated here into a
//! [`GenerationRequest`], and responses are built here from [`Completion`]s. Nothing past this
//! module sees a wire type.

use std::collections::BTreeMap;

use distill_models::{ChatMessage, Completion, FinishReason, SamplingParams, TextTokenizer, TokenLogprob};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::ApiError;

/// Most completions one request may ask for (`n`).
pub const MAX_N: i64 = 16;
/// Most alternatives per token (`top_logprobs`, and `logprobs` on /v1/completions), as OpenAI.
pub const MAX_TOP_LOGPROBS: i64 = 20;
/// Most stop strings, as OpenAI.
pub const MAX_STOP: usize = 4;
/// Metadata limits of OpenAI's stored completions.
pub const MAX_METADATA: usize = 16;
const MAX_METADATA_KEY: usize = 64;
const MAX_METADATA_VALUE: usize = 512;

/// Which endpoint a request came in on; it decides the response shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat.completions",
            Endpoint::Completions => "completions",
        }
    }
}

/// What to generate from.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Chat(Vec<ChatMessage>),
    Text(String),
    /// Token ids as they are (`/v1/completions` with `prompt: [1, 2, 3]`): no re-tokenisation,
    /// what a teacher needs to score exactly the tokens a student produced.
    Tokens(Vec<u32>),
}

/// A validated request, independent of the endpoint's wire shape.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    pub endpoint: Endpoint,
    pub model: String,
    pub prompt: Prompt,
    pub n: usize,
    /// `None`: until the context is full.
    pub max_tokens: Option<usize>,
    /// The field `max_tokens` came from, for error messages.
    pub max_tokens_field: &'static str,
    /// Temperature, top_p and stop strings (seed and max_tokens are set per choice).
    pub sampling: SamplingParams,
    pub seed: Option<u64>,
    /// `Some(k)`: return each token's log-probability and its `k` most likely alternatives.
    pub logprobs: Option<usize>,
    pub logit_bias: Vec<(u32, f32)>,
    pub stream: bool,
    pub include_usage: bool,
    pub store: bool,
    pub metadata: BTreeMap<String, String>,
    /// `Some(k)`: also return the top `k` log-probabilities at every prompt position (vLLM's
    /// `prompt_logprobs`), `/v1/completions` only.
    pub prompt_logprobs: Option<usize>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Fields both endpoints share. Numbers are read wide (i64/f64) so that a negative or huge
/// value gets a message naming the field instead of a type error.
#[derive(Deserialize)]
struct Common {
    model: String,
    max_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    n: Option<i64>,
    stop: Option<Value>,
    seed: Option<i64>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    logit_bias: Option<BTreeMap<String, f64>>,
    #[serde(default)]
    store: bool,
    metadata: Option<BTreeMap<String, String>>,
    frequency_penalty: Option<f64>,
    presence_penalty: Option<f64>,
    top_k: Option<i64>,
    /// Accepted and ignored, as OpenAI's end-user identifier.
    #[allow(dead_code)]
    user: Option<String>,
}

/// Chat-only fields; the same body is read once more as [`Common`] (not `flatten`ed, which
/// would hide the failing field's name).
#[derive(Deserialize)]
struct ChatBody {
    messages: Vec<MessageBody>,
    max_completion_tokens: Option<i64>,
    #[serde(default)]
    logprobs: bool,
    top_logprobs: Option<i64>,
    tools: Option<Value>,
}

#[derive(Deserialize)]
struct MessageBody {
    role: String,
    content: Option<Value>,
}

#[derive(Deserialize)]
struct CompletionBody {
    prompt: Value,
    logprobs: Option<i64>,
    #[serde(default)]
    echo: bool,
    suffix: Option<String>,
    best_of: Option<i64>,
    prompt_logprobs: Option<i64>,
}

/// Parses a request body: UTF-8, then JSON, then every field's range. Errors name the field.
pub fn parse_request(endpoint: Endpoint, body: &[u8]) -> Result<GenerationRequest, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::invalid(None, format!("the request body is not valid UTF-8 ({e})")))?;
    if text.trim().is_empty() {
        return Err(ApiError::invalid(None, "the request body is empty; send a JSON object"));
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ApiError::invalid(None, format!("the request body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::invalid(None, "the request body must be a JSON object"));
    }
    refuse_unsupported(&value)?;
    let common = deserialize(&value)?;
    match endpoint {
        Endpoint::Chat => chat_request(common, deserialize(&value)?),
        Endpoint::Completions => completion_request(common, deserialize(&value)?),
    }
}

/// Fields of the OpenAI and vLLM APIs this server does not implement. Taking them silently would
/// answer something other than what the client asked for, so each is a 400 naming it.
const UNSUPPORTED: [&str; 7] = [
    "functions",
    "function_call",
    "tool_choice",
    "parallel_tool_calls",
    "min_p",
    "repetition_penalty",
    "response_format",
];

fn refuse_unsupported(body: &Value) -> Result<(), ApiError> {
    for field in UNSUPPORTED {
        let value = &body[field];
        // `response_format: {"type": "text"}` asks for what the server does anyway.
        if value.is_null() || (field == "response_format" && value["type"] == "text") {
            continue;
        }
        return Err(ApiError::invalid(Some(field), format!("`{field}` is not supported by this server; leave it out")));
    }
    if !body["stream_options"].is_null() && body["stream"] != Value::Bool(true) {
        return Err(ApiError::invalid(Some("stream_options"), "`stream_options` needs `stream: true`"));
    }
    Ok(())
}

fn deserialize<T: for<'de> Deserialize<'de>>(value: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ApiError::invalid(None, format!("invalid request: {inner}"))
        } else {
            ApiError::invalid(Some(&path), format!("`{path}`: {inner}"))
        }
    })
}

fn chat_request(c: Common, body: ChatBody) -> Result<GenerationRequest, ApiError> {
    if body.tools.is_some() {
        return Err(ApiError::invalid(Some("tools"), "`tools` is not supported by this server"));
    }
    if body.messages.is_empty() {
        return Err(ApiError::invalid(Some("messages"), "`messages` must hold at least one message"));
    }
    let mut messages = Vec::with_capacity(body.messages.len());
    for (i, m) in body.messages.into_iter().enumerate() {
        let field = format!("messages[{i}]");
        if !matches!(m.role.as_str(), "system" | "developer" | "user" | "assistant") {
            return Err(ApiError::invalid(
                Some(&format!("{field}.role")),
                format!("`{field}.role` must be system, developer, user or assistant, got `{}`", m.role),
            ));
        }
        let content = message_text(m.content.as_ref(), &field)?;
        // Templates written for HF models know `system`; OpenAI's `developer` means the same.
        let role = if m.role == "developer" { "system".to_string() } else { m.role };
        messages.push(ChatMessage::new(role, content));
    }
    if messages.iter().all(|m| m.content.is_empty()) {
        return Err(ApiError::invalid(Some("messages"), "every message in `messages` is empty"));
    }
    let top = match (body.logprobs, body.top_logprobs) {
        (false, Some(k)) if k > 0 => {
            return Err(ApiError::invalid(Some("top_logprobs"), "`top_logprobs` needs `logprobs: true`"));
        }
        (true, k) => Some(range("top_logprobs", k.unwrap_or(0), 0, MAX_TOP_LOGPROBS)? as usize),
        (false, k) => {
            if let Some(k) = k {
                range("top_logprobs", k, 0, MAX_TOP_LOGPROBS)?;
            }
            None
        }
    };
    let max_tokens = match (body.max_completion_tokens, c.max_tokens) {
        (Some(m), _) => Some(("max_completion_tokens", m)),
        (None, Some(m)) => Some(("max_tokens", m)),
        (None, None) => None,
    };
    common(c, Endpoint::Chat, Prompt::Chat(messages), max_tokens, top)
}

/// A message's text: a string, or OpenAI's list of `{"type": "text", "text": ...}` parts.
fn message_text(content: Option<&Value>, field: &str) -> Result<String, ApiError> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    _ => {
                        return Err(ApiError::invalid(
                            Some(&format!("{field}.content[{j}]")),
                            format!("`{field}.content[{j}]` must be {{\"type\": \"text\", \"text\": ...}}; only text is supported"),
                        ))
                    }
                }
            }
            Ok(text)
        }
        Some(_) => Err(ApiError::invalid(
            Some(&format!("{field}.content")),
            format!("`{field}.content` must be a string or a list of text parts"),
        )),
    }
}

fn completion_request(c: Common, body: CompletionBody) -> Result<GenerationRequest, ApiError> {
    if body.echo {
        return Err(ApiError::invalid(Some("echo"), "`echo` is not supported by this server"));
    }
    if body.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid(Some("suffix"), "`suffix` is not supported by this server"));
    }
    if let Some(b) = body.best_of {
        if b != 1 && Some(b) != c.n {
            return Err(ApiError::invalid(Some("best_of"), "`best_of` other than `n` is not supported"));
        }
    }
    let as_token = |v: &Value| v.as_u64().filter(|id| *id <= u64::from(u32::MAX)).map(|id| id as u32);
    let prompt = match &body.prompt {
        Value::String(s) if s.is_empty() => return Err(ApiError::invalid(Some("prompt"), "`prompt` is empty")),
        Value::String(s) => Prompt::Text(s.clone()),
        Value::Array(items) if items.len() == 1 && items[0].is_string() => {
            Prompt::Text(items[0].as_str().unwrap_or_default().into())
        }
        Value::Array(items) if items.len() > 1 && items.iter().all(Value::is_string) => {
            return Err(ApiError::invalid(
                Some("prompt"),
                format!("`prompt` holds {} prompts; send one prompt per request", items.len()),
            ))
        }
        Value::Array(items) if !items.is_empty() && items.iter().all(|v| as_token(v).is_some()) => {
            Prompt::Tokens(items.iter().filter_map(as_token).collect())
        }
        Value::Array(items) if items.len() == 1 && items[0].as_array().is_some_and(|a| !a.is_empty()) => {
            let ids: Option<Vec<u32>> = items[0].as_array().into_iter().flatten().map(as_token).collect();
            Prompt::Tokens(ids.ok_or_else(|| {
                ApiError::invalid(Some("prompt"), "`prompt` token ids must be integers from 0 to 2^32 − 1")
            })?)
        }
        _ => {
            return Err(ApiError::invalid(
                Some("prompt"),
                "`prompt` must be a string or a list of token ids (one prompt per request)",
            ))
        }
    };
    if matches!(&prompt, Prompt::Text(t) if t.is_empty()) {
        return Err(ApiError::invalid(Some("prompt"), "`prompt` is empty"));
    }
    let prompt_logprobs = match body.prompt_logprobs {
        Some(k) => Some(range("prompt_logprobs", k, 1, MAX_TOP_LOGPROBS)? as usize),
        None => None,
    };
    if prompt_logprobs.is_some() && c.stream {
        return Err(ApiError::invalid(
            Some("prompt_logprobs"),
            "`prompt_logprobs` is returned with complete responses only; send `stream: false`",
        ));
    }
    if c.store && matches!(prompt, Prompt::Tokens(_)) {
        return Err(ApiError::invalid(Some("store"), "`store` needs a text prompt; token-id prompts are not captured"));
    }
    let top = match body.logprobs {
        Some(k) => Some(range("logprobs", k, 0, MAX_TOP_LOGPROBS)? as usize),
        None => None,
    };
    let max_tokens = c.max_tokens.map(|m| ("max_tokens", m));
    let mut request = common(c, Endpoint::Completions, prompt, max_tokens, top)?;
    request.prompt_logprobs = prompt_logprobs;
    Ok(request)
}

fn common(
    c: Common,
    endpoint: Endpoint,
    prompt: Prompt,
    max_tokens: Option<(&'static str, i64)>,
    logprobs: Option<usize>,
) -> Result<GenerationRequest, ApiError> {
    if c.model.is_empty() {
        return Err(ApiError::invalid(Some("model"), "`model` is empty; GET /v1/models lists the served model"));
    }
    let n = range("n", c.n.unwrap_or(1), 1, MAX_N)? as usize;
    let max_tokens_field = max_tokens.map_or("max_tokens", |(field, _)| field);
    let max_tokens = match max_tokens {
        Some((field, m)) => Some(range(field, m, 1, i64::from(u32::MAX))? as usize),
        None => None,
    };
    let temperature = c.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            Some("temperature"),
            format!("`temperature` must be in [0, 2], got {temperature}"),
        ));
    }
    let top_p = c.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(Some("top_p"), format!("`top_p` must be in (0, 1], got {top_p}")));
    }
    for (field, value) in [("frequency_penalty", c.frequency_penalty), ("presence_penalty", c.presence_penalty)] {
        if value.is_some_and(|v| v != 0.0) {
            return Err(ApiError::invalid(
                Some(field),
                format!("`{field}` is not supported by this server; omit it or send 0"),
            ));
        }
    }
    let stop = match c.stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(ApiError::invalid(Some("stop"), "`stop` must be a string or a list of strings")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(ApiError::invalid(Some("stop"), "`stop` must be a string or a list of strings")),
    };
    if stop.len() > MAX_STOP {
        return Err(ApiError::invalid(
            Some("stop"),
            format!("`stop` holds {} strings; at most {MAX_STOP}", stop.len()),
        ));
    }
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid(Some("stop"), "`stop` strings must not be empty"));
    }
    let mut logit_bias = Vec::new();
    for (token, bias) in c.logit_bias.unwrap_or_default() {
        let id: u32 = token.parse().map_err(|_| {
            ApiError::invalid(Some("logit_bias"), format!("`logit_bias` keys must be token ids, got `{token}`"))
        })?;
        if !(-100.0..=100.0).contains(&bias) {
            return Err(ApiError::invalid(
                Some("logit_bias"),
                format!("`logit_bias` values must be in [-100, 100], got {bias}"),
            ));
        }
        logit_bias.push((id, bias as f32));
    }
    let metadata = c.metadata.unwrap_or_default();
    if metadata.len() > MAX_METADATA {
        return Err(ApiError::invalid(
            Some("metadata"),
            format!("`metadata` holds {} pairs; at most {MAX_METADATA}", metadata.len()),
        ));
    }
    for (k, v) in &metadata {
        if k.is_empty() || k.chars().count() > MAX_METADATA_KEY || v.chars().count() > MAX_METADATA_VALUE {
            return Err(ApiError::invalid(
                Some("metadata"),
                format!(
                    "`metadata` keys must be 1–{MAX_METADATA_KEY} characters and values at most {MAX_METADATA_VALUE}"
                ),
            ));
        }
    }
    if !c.store && !metadata.is_empty() {
        return Err(ApiError::invalid(
            Some("metadata"),
            "`metadata` is stored with the completion; it needs `store: true`",
        ));
    }
    // vLLM's `top_k`: sample among the k likeliest tokens; 0 or -1 turn it off.
    let top_k = match c.top_k {
        None | Some(-1) => 0,
        Some(k) => range("top_k", k, 0, i64::from(u32::MAX))? as usize,
    };
    let sampling = SamplingParams { temperature, top_p, top_k, seed: 0, max_tokens: 0, stop };
    Ok(GenerationRequest {
        endpoint,
        model: c.model,
        prompt,
        n,
        max_tokens,
        max_tokens_field,
        sampling,
        seed: c.seed.map(|s| s as u64),
        logprobs,
        logit_bias,
        stream: c.stream,
        include_usage: c.stream_options.is_some_and(|o| o.include_usage),
        store: c.store,
        metadata,
        prompt_logprobs: None,
    })
}

fn range(field: &str, value: i64, min: i64, max: i64) -> Result<i64, ApiError> {
    if value < min || value > max {
        return Err(ApiError::invalid(Some(field), format!("`{field}` must be in [{min}, {max}], got {value}")));
    }
    Ok(value)
}

pub fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

/// Token text as OpenAI shows it, with its UTF-8 bytes (a token may hold part of a character).
fn token_entry(tokenizer: &TextTokenizer, id: u32) -> (String, Vec<u8>) {
    let bytes = tokenizer.token_bytes(id);
    (String::from_utf8_lossy(&bytes).into_owned(), bytes)
}

/// `choices[i].logprobs` of a chat response (or chunk) for the tokens `logprobs`, showing `k`
/// alternatives each.
pub fn chat_logprobs(tokenizer: &TextTokenizer, logprobs: &[TokenLogprob], k: usize) -> Value {
    let content: Vec<Value> = logprobs
        .iter()
        .map(|t| {
            let (token, bytes) = token_entry(tokenizer, t.id);
            let top: Vec<Value> = t
                .top
                .iter()
                .take(k)
                .map(|&(id, lp)| {
                    let (token, bytes) = token_entry(tokenizer, id);
                    json!({"token": token, "logprob": lp, "bytes": bytes})
                })
                .collect();
            json!({"token": token, "logprob": t.logprob, "bytes": bytes, "top_logprobs": top})
        })
        .collect();
    json!({"content": content})
}

/// `choices[i].logprobs` of a legacy completion (or chunk): parallel lists, `text_offset` from
/// `offset` (the text already sent before these tokens).
pub fn completion_logprobs(tokenizer: &TextTokenizer, logprobs: &[TokenLogprob], k: usize, offset: usize) -> Value {
    let mut tokens = Vec::new();
    let mut token_logprobs = Vec::new();
    let mut top_logprobs = Vec::new();
    let mut text_offset = Vec::new();
    let mut at = offset;
    for t in logprobs {
        let (token, _) = token_entry(tokenizer, t.id);
        text_offset.push(at);
        at += token.len();
        tokens.push(token);
        token_logprobs.push(t.logprob);
        let mut top = Map::new();
        for &(id, lp) in t.top.iter().take(k) {
            top.insert(token_entry(tokenizer, id).0, json!(lp));
        }
        top_logprobs.push(Value::Object(top));
    }
    json!({"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs, "text_offset": text_offset})
}

/// One finished choice as the response body shows it.
pub fn choice(
    endpoint: Endpoint,
    tokenizer: &TextTokenizer,
    index: usize,
    completion: &Completion,
    logprobs_k: Option<usize>,
) -> Value {
    let reason = finish_reason(completion.finish_reason);
    match endpoint {
        Endpoint::Chat => json!({
            "index": index,
            "message": {"role": "assistant", "content": completion.text, "refusal": null},
            "logprobs": logprobs_k.map(|k| chat_logprobs(tokenizer, &completion.logprobs, k)),
            "finish_reason": reason,
        }),
        Endpoint::Completions => json!({
            "index": index,
            "text": completion.text,
            "logprobs": logprobs_k.map(|k| completion_logprobs(tokenizer, &completion.logprobs, k, 0)),
            "finish_reason": reason,
        }),
    }
}

pub fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

/// The object name of a full response and of a streamed chunk.
pub fn object_names(endpoint: Endpoint) -> (&'static str, &'static str) {
    match endpoint {
        Endpoint::Chat => ("chat.completion", "chat.completion.chunk"),
        Endpoint::Completions => ("text_completion", "text_completion"),
    }
}

#[cfg(test)]
mod tests;
