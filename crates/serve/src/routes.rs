//! HTTP routes: authentication, the OpenAI endpoints, admin endpoints, and the bookkeeping of a
//! request (limits, concurrency slot, usage, capture) around the engine.

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use distill_models::{Completion, SamplingParams};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::sync::OwnedSemaphorePermit;

use crate::conn::ClientAddr;
use crate::db::{now, random_id, ApiKey, StoredCompletion};
use crate::engine::{Event, Job};
use crate::error::ApiError;
use crate::guard::{Guard, Level};
use crate::limits::{Ask, KeySlot};
use crate::usage::UsageGuard;
use crate::wire::{self, Endpoint, GenerationRequest, Prompt};
use crate::AppState;

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.options.max_body_bytes;
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/admin/keys", get(list_keys).post(create_key))
        .route("/v1/admin/keys/{id}", delete(revoke_key))
        .route("/v1/admin/usage", get(usage))
        .route("/v1/admin/guard", get(guard_report))
        .route("/v1/admin/guard/{id}/clear", post(guard_clear))
        .route("/v1/admin/guard/{id}/allow", post(guard_allow))
        .fallback(|| async {
            ApiError::not_found("no such route; see /v1/models, /v1/chat/completions, /v1/completions")
        })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(state.clone(), crate::conn::body_in_time))
        .with_state(state)
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Who may call a route.
#[derive(Clone, Copy, PartialEq)]
enum Role {
    /// Inference keys only: admin keys are refused so a leaked admin key cannot harvest.
    Inference,
    Admin,
    Any,
}

async fn authenticate(app: &AppState, headers: &HeaderMap, role: Role) -> Result<ApiKey, ApiError> {
    let secret = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ApiError::unauthorized(
                "missing API key: send `Authorization: Bearer KEY` (create a key with `distill keys create`)",
            )
        })?;
    let key = app
        .db
        .find_key(secret)
        .await
        .map_err(|e| ApiError::internal("looking up the API key", e))?
        .ok_or_else(|| ApiError::unauthorized("invalid or revoked API key"))?;
    match (role, key.admin) {
        (Role::Inference, true) => Err(ApiError::forbidden("admin keys cannot call inference; use an inference key")),
        (Role::Admin, false) => Err(ApiError::forbidden("this route needs an admin key")),
        _ => Ok(key),
    }
}

async fn models(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    authenticate(&app, &headers, Role::Any).await?;
    Ok(Json(json!({
        "object": "list",
        "data": [{"id": app.options.model_name, "object": "model", "created": 0, "owned_by": "distill"}],
    })))
}

async fn chat_completions(
    State(app): State<Arc<AppState>>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    generate(app, client.map(|c| c.0 .0), headers, body, Endpoint::Chat)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn completions(
    State(app): State<Arc<AppState>>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    generate(app, client.map(|c| c.0 .0), headers, body, Endpoint::Completions)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn generate(
    app: Arc<AppState>,
    client: Option<IpAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    endpoint: Endpoint,
) -> Result<Response, ApiError> {
    let key = authenticate(&app, &headers, Role::Inference).await?;
    let body = body.map_err(|rejection| {
        let status = rejection.status();
        let mut e = ApiError::invalid(None, format!("cannot read the request body: {}", rejection.body_text()));
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            e.status = status;
            e.message = format!("the request body exceeds {} bytes", app.options.max_body_bytes);
        }
        e
    })?;
    let req = wire::parse_request(endpoint, &body)?;
    if req.model != app.options.model_name {
        return Err(ApiError::model_not_found(&req.model, &app.options.model_name));
    }
    if req.logprobs.is_some() && !app.options.logprobs {
        return Err(ApiError::invalid(Some("logprobs"), "this server does not return `logprobs`; omit the field"));
    }
    let vocab = app.model.model.config().vocab_size;
    if let Some((bad, _)) = req.logit_bias.iter().find(|(id, _)| *id as usize >= vocab) {
        return Err(ApiError::invalid(
            Some("logit_bias"),
            format!("`logit_bias` names token id {bad}; this model's vocabulary has {vocab} tokens"),
        ));
    }
    let prompt = tokenize(&app, &req)?;
    let context = app.model.model.config().max_position_embeddings;
    let prompt_field = if endpoint == Endpoint::Chat { "messages" } else { "prompt" };
    if prompt.len() >= context {
        return Err(ApiError::invalid(
            Some(prompt_field),
            format!(
                "the prompt is {} tokens; the model's context is {context}, which leaves no room to generate",
                prompt.len()
            ),
        ));
    }
    let room = context - prompt.len();
    let asked_max_tokens = match req.max_tokens {
        Some(m) if m > room => {
            let field = req.max_tokens_field;
            return Err(ApiError::invalid(
                Some(field),
                format!(
                    "`{field}` is {m}, but the prompt ({} tokens) leaves {room} of the model's context of {context}",
                    prompt.len()
                ),
            ));
        }
        Some(m) => m,
        None => room,
    };
    // The slot first: a request turned away for load does not use up the key's rate.
    let permit = app.slots.clone().try_acquire_owned().map_err(|_| {
        ApiError::overloaded(format!(
            "the server is at its limit of {} concurrent requests; retry shortly",
            app.options.max_concurrent
        ))
    })?;
    let key_slot = app.key_slots.take(&key.id, app.options.max_concurrent_per_key).ok_or_else(|| {
        ApiError::rate_limited(
            format!(
                "this key already has {} requests in flight, its limit; retry when one finishes",
                app.options.max_concurrent_per_key
            ),
            1,
        )
    })?;
    if app.guard.needs_history(&key.id) {
        // Once per key and process: a restarted server judges old keys by their own past.
        let week_ago = now() - 7 * 86_400;
        match app.db.hourly_usage(&key.id, week_ago).await {
            Ok(hours) => app.guard.seed_history(&key.id, &hours),
            Err(e) => tracing::error!("reading a key's request history for the extraction guard: {e}"),
        }
    }
    let (level, accepted) = app.guard.sync(&key.id, &key.guard);
    if let Some(allowance) = accepted {
        let (app, key_id) = (app.clone(), key.id.clone());
        tokio::spawn(async move {
            if let Err(e) = app.db.set_guard_allowance(&key_id, allowance).await {
                tracing::error!("storing a cleared key's accepted volume: {e}");
            }
        });
    }
    let (rpm, tpm) = app.guard.limits(level, key.rpm, key.tpm);
    let ask = Ask {
        prompt_tokens: prompt.len() as u64,
        n: req.n as u64,
        max_tokens: asked_max_tokens as u64,
        explicit: req.max_tokens.is_some(),
    };
    let admitted = app.limiter.admit(&key.id, rpm, tpm, ask).map_err(|r| {
        let message = if level >= Level::Throttle {
            format!("{} (this key's limits were lowered by the server's usage policy; ask its operator)", r.message)
        } else {
            r.message
        };
        ApiError::rate_limited(message, r.retry_after_secs)
    })?;
    observe(&app, &key.id, &req, &prompt, client);
    let prompt_logprobs = match req.prompt_logprobs {
        Some(k) => {
            Some(score_prompt(&app, &prompt, k).await.inspect_err(|_| app.limiter.settle(&key.id, &admitted, 0))?)
        }
        None => None,
    };
    let top_logprobs = match (req.logprobs, req.store) {
        (k, true) => Some(k.unwrap_or(0).max(app.options.capture_top_k)),
        (k, false) => k,
    };
    let (events, rx) = unbounded_channel();
    let job = Job {
        prompt: prompt.clone(),
        n: req.n,
        sampling: SamplingParams { seed: req.seed.unwrap_or_else(rand::random), ..req.sampling.clone() },
        max_tokens: admitted.max_tokens as usize,
        top_logprobs,
        logit_bias: req.logit_bias.clone(),
        events,
    };
    if !app.engine.submit(job) {
        app.limiter.settle(&key.id, &admitted, 0);
        return Err(ApiError::internal("submitting to the engine", "the engine thread has stopped"));
    }
    let id = random_id(if endpoint == Endpoint::Chat { "chatcmpl-" } else { "cmpl-" });
    let raw = String::from_utf8_lossy(&body).into_owned(); // parse_request checked it is UTF-8
    let usage = UsageGuard::new(app.clone(), &key.id, endpoint, prompt.len(), req.n, admitted);
    let flight = InFlight {
        app,
        key,
        req,
        raw,
        id,
        created: now(),
        prompt_tokens: prompt.len(),
        prompt_logprobs,
        rx,
        usage,
        _permit: (permit, key_slot),
    };
    if flight.req.stream {
        Ok(crate::stream::respond(flight))
    } else {
        respond(flight).await
    }
}

/// Shows the admitted request to the extraction guard and, when it decides to act on the key,
/// records the decision without holding up the response.
fn observe(app: &Arc<AppState>, key_id: &str, req: &GenerationRequest, prompt: &[u32], client: Option<IpAddr>) {
    let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    // The guard reads text: a token-id prompt is decoded for it.
    let decoded = match &req.prompt {
        Prompt::Tokens(_) => Some(app.model.tokenizer.decode(prompt, false).unwrap_or_default()),
        _ => None,
    };
    let obs = Guard::observation(req, at, decoded.as_deref(), Some(prompt.len()), client);
    let Some(decision) = app.guard.observe(key_id, &obs) else { return };
    tracing::warn!(
        "extraction guard: key {} → {} (risk {:.2}): {}",
        decision.key_id,
        decision.level.as_str(),
        decision.risk,
        decision.reasons.join("; ")
    );
    let app = app.clone();
    tokio::spawn(async move {
        if let Err(e) = app.db.record_guard_decision(&decision).await {
            tracing::error!("recording an extraction-guard decision: {e}");
        }
    });
}

/// vLLM's `prompt_logprobs`: for every prompt position after the first, the model's top `k`
/// next-token log-probabilities, keyed by token id (`[null, {"id": {"logprob", "rank",
/// "decoded_token"}}, ...]`). Computed on a blocking thread beside the engine.
async fn score_prompt(app: &Arc<AppState>, prompt: &[u32], k: usize) -> Result<Value, ApiError> {
    let model = app.model.clone();
    let request = distill_teacher::ScoreRequest { token_ids: prompt.to_vec(), from: 1 };
    let top = tokio::task::spawn_blocking(move || {
        // One request in, one row set out.
        distill_kernels::on_worker(|| {
            distill_teacher::score_with(&model.model, std::slice::from_ref(&request), k, 1.0).map(|mut s| s.remove(0))
        })
    })
    .await
    .map_err(|e| ApiError::internal("scoring the prompt", e))?
    .map_err(|e| ApiError::internal("scoring the prompt", e))?;
    let tokenizer = &app.model.tokenizer;
    let mut positions = vec![Value::Null];
    for (ids, logprobs) in top.ids.chunks(k).zip(top.logprobs.chunks(k)) {
        let mut row = serde_json::Map::with_capacity(k);
        for (rank, (id, logprob)) in ids.iter().zip(logprobs).enumerate() {
            let decoded = tokenizer.decode(&[*id], false).unwrap_or_default();
            row.insert(id.to_string(), json!({"logprob": logprob, "rank": rank + 1, "decoded_token": decoded}));
        }
        positions.push(Value::Object(row));
    }
    Ok(Value::Array(positions))
}

/// The prompt's token ids: chat messages through the model's template, text as it is, token
/// ids checked against the vocabulary.
fn tokenize(app: &AppState, req: &GenerationRequest) -> Result<Vec<u32>, ApiError> {
    let text = match &req.prompt {
        Prompt::Tokens(ids) => {
            let vocab = app.model.model.config().vocab_size;
            if let Some(bad) = ids.iter().find(|id| **id as usize >= vocab) {
                return Err(ApiError::invalid(
                    Some("prompt"),
                    format!("`prompt` holds token id {bad}; this model's vocabulary has {vocab} tokens"),
                ));
            }
            return Ok(ids.clone());
        }
        Prompt::Text(t) => t.clone(),
        Prompt::Chat(messages) => {
            let template = app.model.chat_template.as_ref().ok_or_else(|| {
                ApiError::invalid(
                    Some("messages"),
                    "this model has no chat template; use /v1/completions with a `prompt`",
                )
            })?;
            template.render(messages, true).map_err(|e| {
                ApiError::invalid(Some("messages"), format!("the chat template rejected `messages`: {e}"))
            })?
        }
    };
    let ids = app.model.tokenizer.encode(&text, true).map_err(|e| ApiError::internal("tokenizing the prompt", e))?;
    if ids.is_empty() {
        return Err(ApiError::invalid(Some("prompt"), "the prompt has no tokens"));
    }
    Ok(ids)
}

/// A request handed to the engine: what is needed to answer it and account for it.
pub(crate) struct InFlight {
    pub app: Arc<AppState>,
    pub key: ApiKey,
    pub req: GenerationRequest,
    pub raw: String,
    pub id: String,
    pub created: i64,
    pub prompt_tokens: usize,
    /// `prompt_logprobs` when asked for, the same for every choice.
    pub prompt_logprobs: Option<Value>,
    pub rx: UnboundedReceiver<Event>,
    pub usage: UsageGuard,
    _permit: (OwnedSemaphorePermit, KeySlot),
}

impl InFlight {
    /// The complete (non-streamed) response body for the finished choices.
    pub fn response_body(&self, completions: &[Completion]) -> String {
        let tokenizer = &self.app.model.tokenizer;
        let choices: Vec<Value> = completions
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut choice = wire::choice(self.req.endpoint, tokenizer, i, c, self.req.logprobs);
                if let Some(scored) = &self.prompt_logprobs {
                    choice["prompt_logprobs"] = scored.clone();
                }
                choice
            })
            .collect();
        let generated: usize = completions.iter().map(|c| c.token_ids.len()).sum();
        json!({
            "id": self.id,
            "object": wire::object_names(self.req.endpoint).0,
            "created": self.created,
            "model": self.req.model,
            "system_fingerprint": null,
            "choices": choices,
            "usage": wire::usage(self.prompt_tokens, generated),
        })
        .to_string()
    }

    /// Stores the exchange when asked (`store: true`) and records usage. Returns once the row
    /// is committed, so a response sent after this is never lost to a crash. `sent` is the body
    /// sent as it is; a stream passes `None` and its complete body is built only to be stored.
    pub async fn finish(&mut self, completions: &[Completion], sent: Option<&str>) -> Result<(), ApiError> {
        let generated: usize = completions.iter().map(|c| c.token_ids.len()).sum();
        if self.req.store {
            let logprobs: Vec<Value> = completions
                .iter()
                .map(|c| {
                    json!({
                        "tokens": c.token_ids,
                        "top": c.logprobs.iter().map(|t| &t.top).collect::<Vec<_>>(),
                    })
                })
                .collect();
            let row = StoredCompletion {
                id: self.id.clone(),
                created: self.created,
                key_id: self.key.id.clone(),
                model: self.req.model.clone(),
                endpoint: self.req.endpoint.as_str().into(),
                metadata: self.req.metadata.clone(),
                request: self.raw.clone(),
                response: sent.map_or_else(|| self.response_body(completions), str::to_string),
                logprobs: json!({"k": self.app.options.capture_top_k, "choices": logprobs}).to_string(),
                prompt_tokens: self.prompt_tokens as u64,
                completion_tokens: generated as u64,
            };
            self.app.db.store_completion(&row).await.map_err(|e| ApiError::internal("storing the completion", e))?;
        }
        self.usage.complete(generated).await;
        Ok(())
    }
}

async fn respond(mut flight: InFlight) -> Result<Response, ApiError> {
    let mut done: Vec<Option<Completion>> = vec![None; flight.req.n];
    while done.iter().any(Option::is_none) {
        match flight.rx.recv().await {
            Some(Event::Delta { index, generated, .. }) => flight.usage.generated(index, generated),
            Some(Event::Done { index, completion }) => {
                flight.usage.generated(index, completion.token_ids.len());
                if let Some(slot) = done.get_mut(index) {
                    *slot = Some(completion);
                }
            }
            Some(Event::Failed(e)) => return Err(ApiError::internal("generating", e)),
            None => return Err(ApiError::internal("generating", "the engine dropped the request")),
        }
    }
    let completions: Vec<Completion> = done.into_iter().flatten().collect();
    let body = flight.response_body(&completions);
    flight.finish(&completions, Some(&body)).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[derive(Deserialize)]
struct NewKey {
    name: String,
    #[serde(default)]
    admin: bool,
    rpm: Option<u64>,
    tpm: Option<u64>,
}

async fn create_key(State(app): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    authenticate(&app, &headers, Role::Admin).await?;
    let new: NewKey = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(None, format!("expected {{\"name\", \"admin\"?, \"rpm\"?, \"tpm\"?}}: {e}")))?;
    let (key, secret) = app.db.create_key(&new.name, new.admin, new.rpm, new.tpm).await.map_err(|e| match e {
        crate::Error::Input(m) => ApiError::invalid(Some("name"), m),
        e => ApiError::internal("creating a key", e),
    })?;
    Ok((StatusCode::CREATED, Json(json!({"key": key_json(&key), "secret": secret}))).into_response())
}

async fn list_keys(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    authenticate(&app, &headers, Role::Admin).await?;
    let keys = app.db.list_keys().await.map_err(|e| ApiError::internal("listing keys", e))?;
    Ok(Json(json!({"object": "list", "data": keys.iter().map(key_json).collect::<Vec<_>>()})))
}

async fn revoke_key(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authenticate(&app, &headers, Role::Admin).await?;
    if !app.db.revoke_key(&id).await.map_err(|e| ApiError::internal("revoking a key", e))? {
        return Err(ApiError::not_found(format!("no live key `{id}`")));
    }
    Ok(Json(json!({"id": id, "revoked": true})))
}

#[derive(Deserialize)]
struct UsageQuery {
    /// Read as text so that a bad value gets the API's JSON error naming it, not axum's plain text.
    since: Option<String>,
}

async fn usage(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<UsageQuery>,
) -> Result<Json<Value>, ApiError> {
    authenticate(&app, &headers, Role::Admin).await?;
    let since = match q.since.as_deref() {
        None | Some("") => 0,
        Some(s) => s.parse::<i64>().map_err(|_| {
            ApiError::invalid(Some("since"), format!("`since` must be a Unix time in seconds, got `{s}`"))
        })?,
    };
    let totals = app.db.usage(since).await.map_err(|e| ApiError::internal("reading usage", e))?;
    Ok(Json(json!({"object": "list", "data": totals})))
}

pub fn key_json(key: &ApiKey) -> Value {
    json!({
        "id": key.id, "name": key.name, "prefix": key.prefix, "admin": key.admin,
        "rpm": key.rpm, "tpm": key.tpm, "created": key.created, "revoked": key.revoked,
    })
}

async fn guard_report(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    authenticate(&app, &headers, Role::Admin).await?;
    Ok(Json(json!({"object": "list", "data": app.guard.report()})))
}

#[derive(Deserialize, Default)]
struct ClearNote {
    #[serde(default)]
    note: String,
}

async fn guard_clear(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    authenticate(&app, &headers, Role::Admin).await?;
    let note: ClearNote = if body.is_empty() {
        ClearNote::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid(Some("note"), format!("expected {{\"note\"?}}: {e}")))?
    };
    // As with `distill guard clear`: the key's next request sees the newer clear in the
    // database (`Guard::sync`), which resets it and stores the volume it accepted.
    let cleared = app.db.clear_guard(&id, &note.note).await.map_err(|e| ApiError::internal("clearing a key", e))?;
    let key_id = cleared.ok_or_else(|| ApiError::not_found(format!("no key `{id}`")))?;
    Ok(Json(json!({"id": key_id, "cleared": true})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeclaredUse {
    #[serde(rename = "use")]
    declared_use: String,
    tokens_per_hour: Option<f64>,
}

/// As `distill guard allow`: declares what a key is for; audited, and applied from the key's
/// next request.
async fn guard_allow(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    authenticate(&app, &headers, Role::Admin).await?;
    let declared: DeclaredUse = serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid(
            Some("use"),
            format!("expected {{\"use\": \"what the key is for\", \"tokens_per_hour\"?}}: {e}"),
        )
    })?;
    if declared.declared_use.trim().is_empty() {
        return Err(ApiError::invalid(Some("use"), "say what the key is used for; it is kept in the audit table"));
    }
    if declared.tokens_per_hour.is_some_and(|t| !(t > 0.0 && t.is_finite())) {
        return Err(ApiError::invalid(Some("tokens_per_hour"), "`tokens_per_hour` must be a positive number"));
    }
    let allowed = app
        .db
        .allow_guard(&id, &declared.declared_use, declared.tokens_per_hour)
        .await
        .map_err(|e| ApiError::internal("declaring a key's use", e))?;
    let key_id = allowed.ok_or_else(|| ApiError::not_found(format!("no key `{id}`")))?;
    Ok(Json(json!({"id": key_id, "allowed": true, "use": declared.declared_use})))
}
