//! `distill guard ...`: the extraction guard of `distill serve` — what it decided (report,
//! audit), clearing a key an admin judged benign, and replaying or calibrating on traffic files.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use distill_serve::guard::{replay, Guard, GuardConfig, Level, Observation};
use indicatif::{ProgressBar, ProgressStyle};

use super::serve::with_db;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  distill guard report                          # keys the guard acted on, riskiest first
  distill guard audit team-a --since 7d         # every decision on a key, with its signal values
  distill guard clear team-a --note \"load test\" # back to normal (a key it revoked is live again)
  distill guard allow evals --use \"nightly eval harness\"  # never acted on, still watched
  distill guard replay traffic.jsonl            # what the guard would do with this traffic
  distill guard calibrate benign.jsonl --out guard.toml
  distill serve MODEL --guard-config guard.toml --guard revoke

Traffic files have one request per line (\"ip\", the client's address, is optional):
  {\"t\": 1795910400.5, \"key\": \"team-a\", \"ip\": \"198.51.100.7\", \"endpoint\": \"chat\", \"body\": {...request...}}")]
pub struct GuardArgs {
    /// The server's database: a SQLite file, or a postgres:// URL.
    #[arg(long, env = "DISTILL_DB", default_value = "distill-serve.db", global = true)]
    db: String,

    #[command(subcommand)]
    command: GuardCommand,
}

#[derive(Subcommand, Debug)]
enum GuardCommand {
    /// Keys the guard flagged, throttled or revoked (and cleared ones), by level and risk, with
    /// the reasons.
    Report {
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The audit table: every decision and clear, with the signal values behind it.
    Audit {
        /// Only this key (id or name).
        key: Option<String>,
        /// Only since then: a date, an RFC 3339 time, unix seconds or a duration ago (24h, 7d).
        #[arg(long)]
        since: Option<String>,
    },
    /// Clear a key: its guard level goes back to none, a key the guard revoked is live again,
    /// and a running server judges it afresh from its next request. The clear is audited.
    Clear {
        /// Key id or name.
        key: String,
        /// Why it was cleared, kept in the audit table.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Declare what a key is for (an evaluation harness, a batch pipeline): it is cleared, and
    /// the guard no longer acts on it (or allows it --tokens-per-hour), while still reporting
    /// its signals. Audited with the declared use.
    Allow {
        /// Key id or name.
        key: String,
        /// What the key is used for, kept in the audit table.
        #[arg(long = "use", value_name = "TEXT")]
        declared_use: String,
        /// Allow this many tokens written per hour (and 24× a day) instead of any volume; the
        /// probe and prompt-scoring rules still apply then.
        #[arg(long)]
        tokens_per_hour: Option<f64>,
    },
    /// Run a traffic file through the guard and print what it would decide, per key, and how
    /// long it took per request.
    Replay {
        traffic: PathBuf,
        /// Guard settings (TOML); defaults otherwise.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override the strongest action (flag, throttle, revoke).
        #[arg(long)]
        guard: Option<Level>,
        /// Write every decision as a JSON line here.
        #[arg(long)]
        decisions: Option<PathBuf>,
        /// Also record the decisions in the database, as a server would.
        #[arg(long)]
        record: bool,
        /// Write every key's signals at the end of the replay as JSON lines here (to tune
        /// thresholds).
        #[arg(long)]
        signals: Option<PathBuf>,
    },
    /// Build the distribution test's reference from traffic you trust to be benign and write a
    /// guard config that uses it.
    Calibrate {
        traffic: PathBuf,
        /// Settings to start from (TOML); defaults otherwise.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Share of benign keys that must stay under the threshold.
        #[arg(long, default_value_t = 0.995)]
        quantile: f64,
        /// Where to write the config (`--out` is accepted too).
        #[arg(short, long = "output", alias = "out", value_name = "FILE")]
        out: PathBuf,
    },
}

/// Reads a guard config file (TOML, every field optional) and checks it.
pub fn load_config(path: Option<&Path>) -> Result<GuardConfig> {
    let Some(path) = path else { return Ok(GuardConfig::default()) };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the guard config {}", path.display()))?;
    let config: GuardConfig =
        toml::from_str(&text).with_context(|| format!("the guard config {} is not valid", path.display()))?;
    config.validate().map_err(anyhow::Error::msg).with_context(|| format!("in {}", path.display()))?;
    Ok(config)
}

pub fn run(args: GuardArgs) -> Result<()> {
    match args.command {
        GuardCommand::Report { json } => with_db(&args.db, async |db| {
            let rows = db.guard_report().await?;
            if json {
                for r in &rows {
                    println!("{}", serde_json::to_string(r)?);
                }
                return Ok(());
            }
            if rows.is_empty() {
                eprintln!("the guard has not acted on any key");
                return Ok(());
            }
            println!("{:<18} {:<16} {:<9} {:>6}  reasons", "key", "name", "level", "risk");
            for r in rows {
                let level = if r.revoked && r.level < Level::Revoke { "revoked*" } else { r.level.as_str() };
                println!("{:<18} {:<16} {:<9} {:>6.2}  {}", r.key_id, r.name, level, r.risk, r.reasons.join("; "));
            }
            Ok(())
        }),
        GuardCommand::Audit { key, since } => {
            let since = since.as_deref().map(super::capture::parse_since).transpose()?.unwrap_or(0);
            with_db(&args.db, async |db| {
                for entry in db.guard_audit(key.as_deref(), since).await? {
                    println!("{}", serde_json::to_string(&entry)?);
                }
                Ok(())
            })
        }
        GuardCommand::Clear { key, note } => with_db(&args.db, async |db| {
            let Some(id) = db.clear_guard(&key, &note).await? else {
                bail!("no key with id or name `{key}` (see `distill keys list`)");
            };
            eprintln!("cleared `{key}` ({id}); a running server judges it afresh from its next request");
            Ok(())
        }),
        GuardCommand::Allow { key, declared_use, tokens_per_hour } => with_db(&args.db, async |db| {
            if declared_use.trim().is_empty() {
                bail!("say what the key is used for with --use; it is kept in the audit table");
            }
            if tokens_per_hour.is_some_and(|t| !(t > 0.0 && t.is_finite())) {
                bail!("--tokens-per-hour must be a positive number");
            }
            let Some(id) = db.allow_guard(&key, &declared_use, tokens_per_hour).await? else {
                bail!("no key with id or name `{key}` (see `distill keys list`)");
            };
            let what = tokens_per_hour.map_or("any volume".to_string(), |t| format!("{t:.0} tokens an hour"));
            eprintln!("`{key}` ({id}) is declared for \"{declared_use}\" and allowed {what}; a running server applies it from the key's next request");
            Ok(())
        }),
        GuardCommand::Replay { traffic, config, guard, decisions, record, signals } => {
            let mut config = load_config(config.as_deref())?;
            if let Some(level) = guard {
                config.max_action = level;
            }
            let outputs = ReplayOutputs { decisions, signals, db: record.then_some(args.db) };
            replay_traffic(&traffic, config, &outputs)
        }
        GuardCommand::Calibrate { traffic, config, quantile, out } => {
            let base = load_config(config.as_deref())?;
            let requests = read_traffic(&traffic)?;
            let reference = replay::calibrate(&base, &requests, quantile)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("calibrating on {}", traffic.display()))?;
            eprintln!(
                "reference from {} benign keys ({} distances); threshold {:.3} (KS distance)",
                reference.keys, reference.samples, reference.threshold
            );
            let config = GuardConfig { reference: Some(reference), ..base };
            std::fs::write(&out, toml::to_string(&config)?).with_context(|| format!("writing {}", out.display()))?;
            eprintln!("wrote {}; use it with `distill serve --guard-config {}`", out.display(), out.display());
            Ok(())
        }
    }
}

fn read_traffic(path: &Path) -> Result<Vec<(String, Observation)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let bar = progress(lines.len() as u64, "reading");
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let parsed = replay::parse_line(line)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("{} line {}", path.display(), i + 1))?;
        out.push(parsed);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(out)
}

fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(&format!("{what} {{bar:40}} {{pos}}/{{len}} requests ({{eta}})")) {
        bar.set_style(style);
    }
    bar
}

/// Per key: what the replay saw and decided.
#[derive(Default)]
struct KeySummary {
    requests: u64,
    first: Option<(u64, Level)>,
    level: Level,
    reasons: Vec<String>,
}

/// Where a replay writes what it found, besides the summary on stdout.
struct ReplayOutputs {
    decisions: Option<PathBuf>,
    signals: Option<PathBuf>,
    db: Option<String>,
}

fn replay_traffic(path: &Path, config: GuardConfig, outputs: &ReplayOutputs) -> Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let guard = Guard::new(config);
    let mut out = match &outputs.decisions {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    let mut summaries: std::collections::BTreeMap<String, KeySummary> = Default::default();
    let mut made = Vec::new();
    let mut micros = Vec::with_capacity(lines.len());
    let bar = progress(lines.len() as u64, "replaying");
    for (line, raw) in lines.iter().enumerate() {
        let replay::TrafficLine { key, at, client, request } = replay::parse_request_line(raw)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("{} line {}", path.display(), line + 1))?;
        // Timed as the server pays it: the request's fingerprint and the guard's bookkeeping
        // (parsing is the server's anyway).
        let start = Instant::now();
        let decision = guard.observe(&key, &Guard::observation(&request, at, None, None, client));
        micros.push(start.elapsed().as_secs_f64() * 1e6);
        let summary = summaries.entry(key).or_default();
        summary.requests += 1;
        if let Some(d) = decision {
            summary.first.get_or_insert((summary.requests, d.level));
            summary.level = d.level;
            summary.reasons = d.reasons.clone();
            if let Some(out) = out.as_mut() {
                let mut value = serde_json::to_value(&d)?;
                value["line"] = (line + 1).into();
                value["t"] = at.into();
                writeln!(out, "{value}")?;
            }
            made.push(d);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if let Some(mut out) = out {
        out.flush()?;
    }
    if let Some(path) = &outputs.signals {
        let mut file = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        for report in guard.report() {
            writeln!(file, "{}", serde_json::to_string(&report)?)?;
        }
        file.flush()?;
    }
    if let Some(db) = &outputs.db {
        with_db(db, async |db| {
            for d in &made {
                db.record_guard_decision(d).await?;
            }
            Ok(())
        })?;
    }
    micros.sort_by(f64::total_cmp);
    let pct = |q: f64| micros.get(((micros.len().max(1) - 1) as f64 * q) as usize).copied().unwrap_or(0.0);
    println!("{:<24} {:>9} {:>12} {:<9} reasons", "key", "requests", "first_action", "level");
    let acted = summaries.iter().filter(|(_, s)| s.first.is_some());
    for (key, s) in acted {
        let (at, level) = s.first.unwrap_or_default();
        println!(
            "{key:<24} {:>9} {:>12} {:<9} {}",
            s.requests,
            format!("{}@{at}", level.as_str()),
            s.level.as_str(),
            s.reasons.join("; ")
        );
    }
    let acted = summaries.values().filter(|s| s.first.is_some()).count();
    eprintln!(
        "{} requests from {} keys; the guard acted on {acted} keys ({} decisions). Guard time per request: \
         p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        lines.len(),
        summaries.len(),
        made.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    Ok(())
}
