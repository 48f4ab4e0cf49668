//! `distill`: knowledge distillation of language models in one binary.
//!
//! The command line as a library: the `distill` binary and the Python package's `distill`
//! command both call [`main`].

mod commands;
mod progress;

use std::ffi::OsString;

use clap::{Parser, Subcommand};

/// Distil a large teacher language model into a small, fast student.
#[derive(Parser)]
#[command(name = "distill", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole pipeline from one TOML: teacher signal → train → eval → export → report.
    Run(commands::run::RunArgs),
    /// Generate text with a model (GGUF file, Hugging Face directory or Hub id).
    Generate(commands::generate::GenerateArgs),
    /// How well a student's tokenizer fits a teacher's: shared tokens, token boundaries, the
    /// teacher's mass the student can match, and which cross-tokenizer modes make sense.
    Align(commands::align::AlignArgs),
    /// Summarise a teacher-signal dataset: sequences, tokens, size, teacher, k, entropy.
    Inspect(commands::inspect::InspectArgs),
    /// Train a student on a teacher-signal dataset, configured by a TOML file.
    Train(commands::train::TrainArgs),
    /// Compare a student with its teacher: KL, agreement, perplexity, ROUGE-L, exact match,
    /// size, memory and speed, summed up as retention.
    Eval(commands::eval::EvalArgs),
    /// Write RUN_DIR/report.html (plots, retention, cost, samples) and report.json.
    Report(commands::report::ReportArgs),
    /// Export a model (e.g. a trained student) as GGUF (f32/f16/q8_0/q4_0) or an HF directory.
    Export(commands::export::ExportArgs),
    /// Serve a model behind an OpenAI-compatible API (chat/completions, completions, models),
    /// with API keys, per-key limits and capture of `store: true` traffic.
    Serve(commands::serve::ServeArgs),
    /// Create, list and revoke the API keys of `distill serve`; show usage per key.
    Keys(commands::keys::KeysArgs),
    /// Export traffic captured by `distill serve` as prompts for the next distillation.
    Capture(commands::capture::CaptureArgs),
    /// The extraction guard of `distill serve`: report, audit, clear keys; replay or calibrate
    /// on traffic files.
    Guard(commands::guard::GuardArgs),
    #[command(name = "__measure", hide = true)]
    Measure(commands::eval::MeasureArgs),
}

/// Training and scoring free and reallocate tensors of up to tens of MB every step. glibc's
/// malloc hands blocks above a moving threshold to mmap and back, so each one costs fresh zeroed
/// pages: page faults were about a tenth of a training step. Keeping blocks up to 32 MiB (the
/// most glibc allows) in the heap, and not trimming it below 1 GiB of free space, reuses them.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters (under glibc's arena lock); [`main`] calls
    // it first thing, from the binary or the Python package's console script.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// `RUST_BACKTRACE=1` asks for panics' backtraces; candle also reads it to attach a backtrace to
/// every error it makes, which then prints inside a user's error message. Library backtraces stay
/// off unless asked for with `RUST_LIB_BACKTRACE=1`; panics keep theirs.
fn quiet_library_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY (edition 2024 makes this unsafe): called first thing by the command, before it
        // starts threads that could read the environment concurrently.
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
}

/// Runs the command line `args` (the program name first) and returns the process exit code:
/// 0, 1 after an error (printed to stderr), or 2 for a usage error (clap prints it, or the help,
/// and exits the process itself, as every command line does).
pub fn main<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    quiet_library_backtraces();
    tune_malloc();
    // A second call in one process (the Python package) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("DISTILL_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .try_init();
    let cli = Cli::parse_from(args);
    let result = match cli.command {
        // A server keeps its thread (the HTTP runtime blocks on it for good); its engine runs each
        // step on a worker itself.
        Command::Serve(args) => commands::serve::run(args),
        // Everything else is one inference or training loop, run on a rayon worker.
        command => distill_kernels::on_worker(|| dispatch(command)),
    };
    match result {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("error: {err:#}");
            1
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Generate(args) => commands::generate::run(args),
        Command::Run(args) => commands::run::run(args),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Align(args) => commands::align::run(args),
        Command::Train(args) => commands::train::run(args),
        Command::Eval(args) => commands::eval::run(args).map(|_| ()),
        Command::Export(args) => commands::export::run(args),
        Command::Report(args) => commands::report::run(args).map(|_| ()),
        Command::Serve(args) => commands::serve::run(args),
        Command::Keys(args) => commands::keys::run(args),
        Command::Capture(args) => commands::capture::run(args),
        Command::Guard(args) => commands::guard::run(args),
        Command::Measure(args) => commands::eval::measure(args),
    }
}
