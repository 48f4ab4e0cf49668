//! `distill capture export`: completions captured by `distill serve` (`store: true`) as a prompt
//! file for the next distillation, or raw as stored.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use distill_serve::wire::{parse_request, Endpoint, Prompt};
use distill_serve::StoredCompletion;
use serde_json::{json, Value};

use super::serve::with_db;

#[derive(Args, Debug)]
pub struct CaptureArgs {
    #[command(subcommand)]
    command: CaptureCommand,
}

#[derive(Subcommand, Debug)]
enum CaptureCommand {
    /// Write captured completions as JSONL.
    #[command(after_help = "Examples:
  distill capture export --metadata team=support --since 7d -o support-traffic.jsonl
  distill generate --dataset data/traffic --prompts-file support-traffic.jsonl --chat   # teacher scores them
  distill capture export --format raw -o stored.jsonl      # request and response bodies as stored
  distill capture export --format traffic --since 30d -o traffic.jsonl
  distill guard calibrate traffic.jsonl --out guard.toml   # traffic you trust as the guard's benign reference")]
    Export(ExportArgs),
}

#[derive(Args, Debug)]
struct ExportArgs {
    /// The server's database: a SQLite file, or a postgres:// URL.
    #[arg(long, env = "DISTILL_DB", default_value = "distill-serve.db")]
    db: String,

    /// Output JSONL file (`-`: standard output).
    #[arg(short, long)]
    output: PathBuf,

    /// Only completions whose metadata has KEY=VALUE (repeat: all must match).
    #[arg(long, value_name = "KEY=VALUE")]
    metadata: Vec<String>,

    /// Only completions since then: a date (2026-11-29), an RFC 3339 time, a unix time, or a
    /// duration ago (24h, 7d).
    #[arg(long)]
    since: Option<String>,

    #[arg(long, value_enum, default_value_t = Format::Prompts)]
    format: Format,

    /// Then have a teacher score the exported completions into a teacher-signal dataset in DIR,
    /// as `distill generate --dataset DIR --prompts-file OUTPUT` would (resumable the same way).
    #[arg(long, value_name = "DIR", help_heading = "Dataset")]
    dataset: Option<PathBuf>,

    /// Teacher for --dataset: a .gguf file, HF directory or Hub id (default: the default teacher).
    #[arg(long, requires = "dataset", help_heading = "Dataset")]
    teacher: Option<String>,

    /// Top-k entries stored per completion token with --dataset.
    #[arg(long, default_value_t = 32, help_heading = "Dataset")]
    k: usize,

    /// Where the teacher runs with --dataset: `cpu`, or `cuda` / `cuda:N` on a binary built with
    /// `--features cuda`.
    #[arg(long, env = "DISTILL_DEVICE", default_value = "cpu", help_heading = "Dataset")]
    device: distill_models::DeviceSpec,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    /// One line per choice: `{"messages"|"prompt", "completion", "metadata"}`, the prompt-file
    /// format `distill generate --dataset` reads (the teacher then scores the completion).
    Prompts,
    /// One line per stored request: id, created, model, metadata, and the request and response
    /// bodies exactly as received and sent (as JSON strings).
    Raw,
    /// One line per stored request in the traffic-file format of `distill guard replay` and
    /// `distill guard calibrate`: `{"t", "key", "endpoint", "body"}`.
    Traffic,
}

pub fn run(args: CaptureArgs) -> Result<()> {
    let CaptureCommand::Export(args) = args.command;
    if args.dataset.is_some() && (args.output.as_os_str() == "-" || !matches!(args.format, Format::Prompts)) {
        bail!("--dataset reads the exported prompts back: give a file with -o and the default --format prompts");
    }
    let since = args.since.as_deref().map(parse_since).transpose()?.unwrap_or(0);
    let filters: Vec<(String, String)> = args
        .metadata
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("--metadata `{kv}` must be KEY=VALUE"))
        })
        .collect::<Result<_>>()?;
    let rows = with_db(&args.db, async |db| Ok(db.completions(since).await?))?;
    let rows: Vec<StoredCompletion> =
        rows.into_iter().filter(|r| filters.iter().all(|(k, v)| r.metadata.get(k) == Some(v))).collect();
    let mut out: Box<dyn Write> = if args.output.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::io::BufWriter::new(
            std::fs::File::create(&args.output).with_context(|| format!("cannot create {}", args.output.display()))?,
        ))
    };
    let mut lines = 0;
    for row in &rows {
        for line in export_lines(row, args.format)? {
            writeln!(out, "{line}")?;
            lines += 1;
        }
    }
    out.flush()?;
    drop(out);
    eprintln!("{} captured completions → {lines} lines in {}", rows.len(), args.output.display());
    if let Some(dataset) = args.dataset {
        if lines == 0 {
            bail!("no captured completion matched; nothing to score into {}", dataset.display());
        }
        // The captured lines carry their completions: the teacher only scores them.
        let options = distill_teacher::DatasetOptions { chat: false, k: args.k, ..Default::default() };
        super::dataset::run(&dataset, &args.output, args.teacher.as_deref(), args.device, None, None, options)?;
    }
    Ok(())
}

fn export_lines(row: &StoredCompletion, format: Format) -> Result<Vec<String>> {
    if let Format::Raw = format {
        // The bodies are JSON strings holding the exact bytes (a body may span lines).
        let line = json!({
            "id": row.id, "created": row.created, "model": row.model, "endpoint": row.endpoint,
            "metadata": row.metadata, "request": row.request, "response": row.response,
        });
        return Ok(vec![line.to_string()]);
    }
    if let Format::Traffic = format {
        let body: Value =
            serde_json::from_str(&row.request).with_context(|| format!("stored request of {}", row.id))?;
        let line = json!({"t": row.created, "key": row.key_id, "endpoint": row.endpoint, "body": body});
        return Ok(vec![line.to_string()]);
    }
    let endpoint = if row.endpoint == Endpoint::Chat.as_str() { Endpoint::Chat } else { Endpoint::Completions };
    let request = parse_request(endpoint, row.request.as_bytes())
        .map_err(|e| anyhow::anyhow!("stored request of {} no longer parses: {}", row.id, e.message))?;
    let response: Value =
        serde_json::from_str(&row.response).with_context(|| format!("stored response of {}", row.id))?;
    let choices = response["choices"].as_array().cloned().unwrap_or_default();
    let mut lines = Vec::with_capacity(choices.len());
    for (i, choice) in choices.iter().enumerate() {
        let completion = match endpoint {
            Endpoint::Chat => choice["message"]["content"].as_str(),
            Endpoint::Completions => choice["text"].as_str(),
        }
        .unwrap_or_default();
        let mut metadata: BTreeMap<String, String> = row.metadata.clone();
        let id = if choices.len() > 1 { format!("{}-{i}", row.id) } else { row.id.clone() };
        metadata.insert("id".into(), id);
        let mut line = match &request.prompt {
            Prompt::Chat(messages) => json!({"messages": messages}),
            Prompt::Text(text) => json!({"prompt": text}),
            Prompt::Tokens(_) => bail!("stored request of {} has a token-id prompt, which is never stored", row.id),
        };
        line["completion"] = json!(completion);
        line["metadata"] = json!(metadata);
        lines.push(line.to_string());
    }
    Ok(lines)
}

/// Unix seconds for `2026-11-29`, an RFC 3339 time, a unix time, or a duration ago (`24h`).
pub fn parse_since(text: &str) -> Result<i64> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<i64>() {
        return Ok(secs);
    }
    if let Ok(ago) = humantime::parse_duration(text) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        return Ok(now.saturating_sub(ago).as_secs() as i64);
    }
    let full = if text.len() == 10 { format!("{text}T00:00:00Z") } else { text.to_string() };
    match humantime::parse_rfc3339_weak(&full) {
        Ok(t) => Ok(t.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)),
        Err(_) => {
            bail!("--since `{text}`: expected a date (2026-11-29), an RFC 3339 time, unix seconds or a duration (24h)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_since;

    #[test]
    fn since_accepts_dates_times_unix_seconds_and_durations() {
        assert_eq!(parse_since("2026-11-29").unwrap(), 1_795_910_400);
        assert_eq!(parse_since("2026-11-29T01:00:00Z").unwrap(), 1_795_914_000);
        assert_eq!(parse_since("1795910400").unwrap(), 1_795_910_400);
        let day_ago = parse_since("24h").unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        assert!((now - 86_400 - day_ago).abs() <= 2);
        assert!(parse_since("yesterday").is_err());
    }
}
