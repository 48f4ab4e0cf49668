//! `distill keys ...`: API keys of `distill serve`, managed directly in its database.

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use distill_serve::guard::Level;

use super::serve::with_db;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  distill keys create --name alice --rpm 60 --tpm 20000
  distill keys create --name ops --admin        # manages keys over HTTP; cannot call inference
  distill keys list
  distill keys revoke alice
  distill keys usage --since 24h")]
pub struct KeysArgs {
    /// The server's database: a SQLite file, or a postgres:// URL.
    #[arg(long, env = "DISTILL_DB", default_value = "distill-serve.db", global = true)]
    db: String,

    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Create a key and print its secret (shown only this once; only its hash is stored).
    Create {
        /// A name to recognise the key by (and to revoke it with).
        #[arg(long)]
        name: String,
        /// An admin key: manages keys and reads usage under /v1/admin, cannot call inference.
        #[arg(long)]
        admin: bool,
        /// Requests per minute allowed (default: unlimited).
        #[arg(long)]
        rpm: Option<u64>,
        /// Prompt + completion tokens per minute allowed (default: unlimited).
        #[arg(long)]
        tpm: Option<u64>,
    },
    /// List keys (never their secrets).
    List,
    /// Revoke a key by id or name; requests with it are refused from then on.
    Revoke { key: String },
    /// Requests and tokens per key.
    Usage {
        /// Only usage since then: a date (2026-11-29), an RFC 3339 time, or a duration ago (24h, 7d).
        #[arg(long)]
        since: Option<String>,
    },
}

pub fn run(args: KeysArgs) -> Result<()> {
    match args.command {
        KeysCommand::Create { name, admin, rpm, tpm } => with_db(&args.db, async |db| {
            let (key, secret) = db.create_key(&name, admin, rpm, tpm).await?;
            eprintln!(
                "created {} key `{}` ({}); its secret is shown only now:",
                if admin { "admin" } else { "inference" },
                key.name,
                key.id
            );
            println!("{secret}");
            Ok(())
        }),
        KeysCommand::List => with_db(&args.db, async |db| {
            println!("{:<18} {:<16} {:<12} {:<9} {:>8} {:>10}  state", "id", "name", "prefix", "role", "rpm", "tpm");
            let limit = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
            for k in db.list_keys().await? {
                println!(
                    "{:<18} {:<16} {:<12} {:<9} {:>8} {:>10}  {}",
                    k.id,
                    k.name,
                    k.prefix,
                    if k.admin { "admin" } else { "inference" },
                    limit(k.rpm),
                    limit(k.tpm),
                    match (k.revoked.is_some(), k.guard.level) {
                        (true, _) => "revoked".to_string(),
                        (false, Level::None) => "live".to_string(),
                        (false, level) => format!("live, guard: {}", level.as_str()),
                    }
                );
            }
            Ok(())
        }),
        KeysCommand::Revoke { key } => with_db(&args.db, async |db| {
            if !db.revoke_key(&key).await? {
                bail!("no live key with id or name `{key}` (see `distill keys list`)");
            }
            eprintln!("revoked `{key}`");
            Ok(())
        }),
        KeysCommand::Usage { since } => {
            let since = match since {
                Some(s) => super::capture::parse_since(&s)?,
                None => 0,
            };
            with_db(&args.db, async |db| {
                println!(
                    "{:<18} {:>9} {:>14} {:>17} {:>8}",
                    "key", "requests", "prompt_tokens", "completion_tokens", "aborted"
                );
                for u in db.usage(since).await? {
                    println!(
                        "{:<18} {:>9} {:>14} {:>17} {:>8}",
                        u.key_id, u.requests, u.prompt_tokens, u.completion_tokens, u.aborted
                    );
                }
                Ok(())
            })
        }
    }
}
