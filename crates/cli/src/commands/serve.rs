//! `distill serve MODEL`: the OpenAI-compatible server (see the `distill-serve` crate).

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result};
use clap::Args;
use distill_serve::guard::Level;
use distill_serve::{AppState, Db, ServeOptions};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  distill keys create --name me                 # prints an inference key (shown once)
  distill serve runs/support/final --name support-student --port 8000
  curl localhost:8000/v1/chat/completions -H \"Authorization: Bearer $KEY\" \\
       -d '{\"model\": \"support-student\", \"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}'

Every route except /health needs an API key. Requests with \"store\": true are captured in the
database; `distill capture export` turns them into prompts for the next distillation.")]
pub struct ServeArgs {
    /// Model to serve: a .gguf file, a Hugging Face directory (a training run's `final/`, an
    /// export) or a Hub id (or give it as `-m/--model`, as `distill generate` takes it). Defaults
    /// to the fetched default teacher.
    #[arg(env = "DISTILL_MODEL")]
    model: Option<String>,

    #[arg(short = 'm', long = "model", value_name = "MODEL", hide = true)]
    model_flag: Option<String>,

    /// Name clients send as `model` (default: the model file or directory name).
    #[arg(long)]
    name: Option<String>,

    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,

    /// Port to listen on (0: any free port; the chosen one is printed).
    #[arg(long, default_value_t = 8000)]
    port: u16,

    /// Keys, usage and captured completions: a SQLite file, or a postgres:// URL.
    #[arg(long, env = "DISTILL_DB", default_value = "distill-serve.db")]
    db: String,

    /// Most sequences decoded together in one batched step.
    #[arg(long, default_value_t = ServeOptions::default().max_batch)]
    max_batch: usize,

    /// Prompts longer than this many tokens are prefilled in chunks of it between decoding
    /// steps, so a long prompt does not stall the other streams.
    #[arg(long, default_value_t = ServeOptions::default().prefill_chunk, value_name = "TOKENS")]
    prefill_chunk: usize,

    /// Most requests in flight; beyond it requests are answered 503 with Retry-After.
    #[arg(long, default_value_t = ServeOptions::default().max_concurrent)]
    max_concurrent: usize,

    /// Most requests one key may have in flight (429 with Retry-After beyond), so one client
    /// cannot hold every slot. Default: half of --max-concurrent (all of it with --api-key).
    #[arg(long)]
    max_concurrent_per_key: Option<usize>,

    /// Seconds a client has to send a request's headers (also how long an idle keep-alive
    /// connection stays open); the connection is closed after.
    #[arg(long, default_value_t = ServeOptions::default().connections.header_timeout.as_secs(), value_name = "SECS")]
    header_timeout: u64,

    /// Seconds a client has to send a request's body once its headers arrived (408 after).
    #[arg(long, default_value_t = ServeOptions::default().body_timeout.as_secs(), value_name = "SECS")]
    body_timeout: u64,

    /// Most open connections from one network address; more are closed at once.
    #[arg(long, default_value_t = ServeOptions::default().connections.per_address)]
    max_connections_per_address: usize,

    /// Largest request body accepted, in bytes (413 beyond, before any parsing).
    #[arg(long, default_value_t = ServeOptions::default().max_body_bytes)]
    max_body_bytes: usize,

    /// Top-k alternatives stored per token of a captured (`store: true`) completion.
    #[arg(long, default_value_t = ServeOptions::default().capture_top_k)]
    capture_top_k: usize,

    /// A key for a quick single-user server: requests with `Authorization: Bearer KEY` are served
    /// as an inference key named `api-key` (created in the database on first use; usage, limits
    /// and the guard apply as to any key). Others still need keys from `distill keys create`.
    #[arg(long, env = "DISTILL_API_KEY", value_name = "KEY", hide_env_values = true)]
    api_key: Option<String>,

    /// Refuse `logprobs`/`top_logprobs` (400): clients get text only, which makes the model much
    /// harder to distil from its API.
    #[arg(long)]
    no_logprobs: bool,

    /// Extraction guard settings (TOML; see `distill guard calibrate`). Without it, defaults.
    #[arg(long)]
    guard_config: Option<std::path::PathBuf>,

    /// The strongest action the extraction guard takes by itself: flag (record only, the
    /// default), throttle (lower the key's limits), revoke, or off. Overrides the config's.
    #[arg(long)]
    guard: Option<Level>,

    /// Arithmetic of the model's matmuls. By default a GGUF file's quantised weights (Q4_0 … Q8_0,
    /// Q4_K, Q5_K, Q6_K) run as they are, on 8-bit integer products (AVX-512 VNNI or AVX2), and f32/f16/bf16
    /// weights in f32. Naming one applies it to every matmul: `f32` dequantises quantised weights
    /// (the reference path: 4 bytes per weight); `bf16` rounds weights and activations to bfloat16
    /// with f32 sums, faster on CPUs with AVX-512 BF16 at a small cost in fidelity
    /// (docs/performance.md); `int8` also rounds f32 weights to Q8_0 blocks. Where the CPU lacks
    /// the instructions: the file's own (as without --matmuls), with a warning.
    #[arg(long, value_parser = super::generate::parse_precision())]
    matmuls: Option<distill_teacher::Precision>,

    /// Where the model runs: `cpu`, or `cuda` / `cuda:N` on a binary built with `--features cuda`
    /// (weights, KV caches and the batched decode on the GPU).
    #[arg(long, env = "DISTILL_DEVICE", default_value = "cpu")]
    device: distill_models::DeviceSpec,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let mut guard = super::guard::load_config(args.guard_config.as_deref())?;
    if let Some(level) = args.guard {
        guard.max_action = level;
    }
    if let Some(secret) = &args.api_key {
        distill_serve::db::check_chosen_secret(secret).context("--api-key")?;
    }
    // A busy port is found before minutes of model loading, not after.
    if args.port != 0 {
        if let Err(e) = std::net::TcpListener::bind((args.host, args.port)) {
            anyhow::bail!(
                "cannot listen on {}:{}: {e}\nHINT: another server may hold the port; pass --port N (or --port 0 for any free port)",
                args.host,
                args.port
            );
        }
    }
    let mut model = super::generate::load_model(args.model_flag.as_deref().or(args.model.as_deref()), args.device)?;
    super::generate::use_matmuls(&mut model, args.matmuls)?;
    let name = args.name.clone().unwrap_or_else(|| default_name(&model.source));
    let options = ServeOptions {
        model_name: name.clone(),
        max_batch: args.max_batch,
        prefill_chunk: args.prefill_chunk,
        max_concurrent: args.max_concurrent,
        max_concurrent_per_key: args.max_concurrent_per_key.unwrap_or(if args.api_key.is_some() {
            args.max_concurrent
        } else {
            args.max_concurrent.div_ceil(2)
        }),
        max_body_bytes: args.max_body_bytes,
        capture_top_k: args.capture_top_k,
        logprobs: !args.no_logprobs,
        guard,
        connections: distill_serve::conn::ConnLimits {
            header_timeout: std::time::Duration::from_secs(args.header_timeout.max(1)),
            per_address: args.max_connections_per_address,
        },
        body_timeout: std::time::Duration::from_secs(args.body_timeout.max(1)),
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let db = Db::open(&args.db).await.with_context(|| format!("opening the database `{}`", args.db))?;
        if let Some(secret) = &args.api_key {
            let key = db.ensure_key("api-key", secret).await.context("--api-key")?;
            eprintln!("--api-key: requests with it are served as key `{}` ({})", key.name, key.id);
        }
        let live = db.list_keys().await?.iter().filter(|k| k.revoked.is_none() && !k.admin).count();
        if live == 0 {
            eprintln!(
                "no inference API key yet: every request will be refused (401). Create one with\n  distill keys create --db {} --name NAME",
                args.db
            );
        }
        let guard = &options.guard;
        if guard.enabled() {
            eprintln!(
                "extraction guard: up to {} ({}); `distill guard report` lists what it did",
                guard.max_action.as_str(),
                if guard.reference.is_some() { "distribution test calibrated" } else { "distribution test off: see `distill guard calibrate`" }
            );
        } else {
            eprintln!("extraction guard: off");
        }
        let state = AppState::new(model, db, options);
        distill_serve::serve(state.clone(), SocketAddr::new(args.host, args.port), |addr| {
            eprintln!("serving `{name}` on http://{addr} (database {})", args.db);
        })
        .await
        .with_context(|| format!("serving on {}:{}", args.host, args.port))?;
        state.db.close().await;
        Ok::<_, anyhow::Error>(())
    })?;
    eprintln!("server stopped");
    Ok(())
}

/// `runs/x/final` → `x`; `dir/SmolLM2.Q8_0.gguf` → `SmolLM2.Q8_0`.
fn default_name(source: &str) -> String {
    let path = std::path::Path::new(source.trim_end_matches('/'));
    let stem = |p: &std::path::Path| p.file_stem().map(|s| s.to_string_lossy().into_owned());
    match path.file_name().map(|f| f.to_string_lossy().into_owned()) {
        Some(f) if f == "final" => path.parent().and_then(stem).unwrap_or(f),
        Some(f) if f.ends_with(".gguf") => stem(path).unwrap_or(f),
        Some(f) => f,
        None => source.to_string(),
    }
}

/// Runs an async database operation for the short admin commands.
pub fn with_db<T>(target: &str, f: impl AsyncFnOnce(&Db) -> Result<T>) -> Result<T> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(async {
        let db = Db::open(target).await.with_context(|| format!("opening the database `{target}`"))?;
        let out = f(&db).await;
        db.close().await;
        out
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_names_come_from_the_model_path() {
        assert_eq!(super::default_name("runs/support/final"), "support");
        assert_eq!(super::default_name("/m/SmolLM2-135M-Instruct.Q4_1.gguf"), "SmolLM2-135M-Instruct.Q4_1");
        assert_eq!(super::default_name("exported/student/"), "student");
    }
}
