//! `distill serve`: an OpenAI-compatible HTTP server over one model, with continuous batching,
//! traffic capture (`store: true`), API keys and per-key limits.
//!
//! Layout: [`wire`] parses and validates OpenAI request bodies and builds response bodies;
//! [`engine`] batches generation on a worker thread; [`db`] keeps keys, usage and captured
//! completions; [`limits`] enforces per-key rates and requests in flight; [`guard`] notices keys
//! harvesting the model; [`routes`] ties them to HTTP, over connections [`conn`] accepts and
//! keeps from slow or numerous clients.

pub mod conn;
pub mod db;
pub mod engine;
pub mod error;
pub mod guard;
pub mod limits;
pub mod routes;
mod stream;
mod usage;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

use distill_models::LoadedModel;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use db::{ApiKey, Db, StoredCompletion, UsageTotals};
pub use error::{ApiError, Error, Result};

/// How the server runs; every field has the default a user would want.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The model name clients send as `model` (and `/v1/models` lists).
    pub model_name: String,
    /// Most sequences decoded together in one batched step.
    pub max_batch: usize,
    /// Prompts longer than this many tokens are prefilled in chunks of it, between decoding
    /// steps of the running batch (smaller: other streams wait less; larger: a long prompt
    /// finishes sooner).
    pub prefill_chunk: usize,
    /// Most requests in flight (generating or waiting for the engine); more are answered 503
    /// with Retry-After instead of queueing without bound.
    pub max_concurrent: usize,
    /// Most requests one key may have in flight, so that one client cannot hold every slot;
    /// more are answered 429 with Retry-After.
    pub max_concurrent_per_key: usize,
    /// Request bodies above this many bytes are refused (413) before any parsing.
    pub max_body_bytes: usize,
    /// Top-k alternatives kept per token of a captured completion, for the next distillation.
    pub capture_top_k: usize,
    /// Whether clients may ask for log-probabilities. Off, `logprobs`/`top_logprobs` are refused
    /// (400): the cheapest defence against logit harvesting, at the cost of logit teachers.
    pub logprobs: bool,
    /// The extraction guard's settings (`max_action = none` turns it off).
    pub guard: guard::GuardConfig,
    /// Header deadline and connections per address.
    pub connections: conn::ConnLimits,
    /// Time a client has to send a request's body once its headers arrived (408 after).
    pub body_timeout: std::time::Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            model_name: "distill".into(),
            max_batch: 32,
            prefill_chunk: engine::PREFILL_CHUNK,
            max_concurrent: 128,
            max_concurrent_per_key: 64,
            max_body_bytes: 1 << 20,
            capture_top_k: 20,
            logprobs: true,
            guard: guard::GuardConfig::default(),
            connections: conn::ConnLimits::default(),
            body_timeout: std::time::Duration::from_secs(30),
        }
    }
}

/// Everything a request handler needs.
pub struct AppState {
    pub model: Arc<LoadedModel>,
    pub engine: engine::Engine,
    pub db: Db,
    pub limiter: limits::Limiter,
    pub slots: Arc<Semaphore>,
    pub key_slots: limits::KeySlots,
    pub guard: guard::Guard,
    pub options: ServeOptions,
}

impl AppState {
    pub fn new(model: LoadedModel, db: Db, options: ServeOptions) -> Arc<Self> {
        let model = Arc::new(model);
        let engine = engine::Engine::start_with(model.clone(), options.max_batch, options.prefill_chunk);
        Arc::new(Self {
            model,
            engine,
            db,
            limiter: limits::Limiter::default(),
            slots: Arc::new(Semaphore::new(options.max_concurrent.max(1))),
            key_slots: limits::KeySlots::default(),
            guard: guard::Guard::new(options.guard.clone()),
            options,
        })
    }
}

/// Binds `addr` and serves until Ctrl-C or SIGTERM; `on_listening` receives the bound address
/// (useful with port 0).
pub async fn serve(state: Arc<AppState>, addr: SocketAddr, on_listening: impl FnOnce(SocketAddr)) -> Result<()> {
    let listener = TcpListener::bind(addr).await?;
    on_listening(listener.local_addr()?);
    let limits = state.options.connections;
    conn::serve(listener, routes::router(state), limits, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = terminate => {} }
}
