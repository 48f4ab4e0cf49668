//! The server's database: API keys (hashed), per-key usage and captured completions. SQLite by
//! default (WAL, `synchronous=FULL`: an acknowledged row is on disk) or Postgres given a URL,
//! through sqlx's `Any` driver with SQL both understand.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;
use sha2::{Digest, Sha256};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};

use crate::error::{Error, Result};
use crate::guard::{Level, Standing};

mod guard;
pub use guard::{AuditEntry, GuardRow};

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, hash TEXT NOT NULL UNIQUE, \
     prefix TEXT NOT NULL, admin BIGINT NOT NULL, rpm BIGINT, tpm BIGINT, created BIGINT NOT NULL, revoked BIGINT)",
    "CREATE TABLE IF NOT EXISTS key_usage (id TEXT PRIMARY KEY, key_id TEXT NOT NULL, created BIGINT NOT NULL, \
     endpoint TEXT NOT NULL, prompt_tokens BIGINT NOT NULL, completion_tokens BIGINT NOT NULL, outcome TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS key_usage_by_key ON key_usage (key_id, created)",
    "CREATE TABLE IF NOT EXISTS completions (id TEXT PRIMARY KEY, created BIGINT NOT NULL, key_id TEXT NOT NULL, \
     model TEXT NOT NULL, endpoint TEXT NOT NULL, metadata TEXT NOT NULL, request TEXT NOT NULL, \
     response TEXT NOT NULL, logprobs TEXT NOT NULL, prompt_tokens BIGINT NOT NULL, completion_tokens BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS completions_by_time ON completions (created)",
    "CREATE TABLE IF NOT EXISTS guard_state (key_id TEXT PRIMARY KEY, level BIGINT NOT NULL, \
     risk DOUBLE PRECISION NOT NULL, reasons TEXT NOT NULL, signals TEXT NOT NULL, updated BIGINT NOT NULL, cleared BIGINT, \
     allowance DOUBLE PRECISION)",
    "CREATE TABLE IF NOT EXISTS guard_audit (id TEXT PRIMARY KEY, key_id TEXT NOT NULL, created BIGINT NOT NULL, \
     action TEXT NOT NULL, actor TEXT NOT NULL, risk DOUBLE PRECISION NOT NULL, reasons TEXT NOT NULL, signals TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS guard_audit_by_key ON guard_audit (key_id, created)",
];

/// The columns of a key, with its extraction-guard state, as [`key_from_row`] reads them.
const KEY_COLUMNS: &str = "api_keys.id AS id, name, prefix, admin, rpm, tpm, created, revoked, \
     COALESCE(g.level, 0) AS guard_level, g.cleared AS guard_cleared, g.allowance AS guard_allowance \
     FROM api_keys LEFT JOIN guard_state g ON g.key_id = api_keys.id";

/// An API key as stored: never the secret itself, only its SHA-256.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    /// The first characters of the secret, to recognise a key in listings.
    pub prefix: String,
    /// Admin keys manage keys and read usage; they cannot call inference.
    pub admin: bool,
    /// Requests per minute (None: unlimited).
    pub rpm: Option<u64>,
    /// Prompt + completion tokens per minute (None: unlimited).
    pub tpm: Option<u64>,
    pub created: i64,
    pub revoked: Option<i64>,
    /// What the extraction guard has done to the key, and what an admin accepted.
    pub guard: Standing,
}

/// Totals of one key's recorded usage.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct UsageTotals {
    pub key_id: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Requests whose client went away before the end (their tokens are counted).
    pub aborted: u64,
}

/// One captured (`store: true`) request and the response sent for it, byte for byte.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCompletion {
    pub id: String,
    pub created: i64,
    pub key_id: String,
    pub model: String,
    pub endpoint: String,
    pub metadata: BTreeMap<String, String>,
    /// The request body as received.
    pub request: String,
    /// The response body as sent (for a stream: the equivalent non-streamed response).
    pub response: String,
    /// Per choice, per token: `[[id, logprob], ...]` of the top-k alternatives, JSON.
    pub logprobs: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

pub struct Db {
    pool: AnyPool,
    url: String,
}

pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// A random identifier with `prefix`: 128 bits from the thread's CSPRNG.
pub fn random_id(prefix: &str) -> String {
    let bytes: [u8; 16] = rand::thread_rng().gen();
    format!("{prefix}{}", hex(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Longest key name, in characters: a name is a label in listings.
pub const MAX_KEY_NAME: usize = 200;

/// Refuses a chosen API key (`--api-key`) too short to be one, or with whitespace.
pub fn check_chosen_secret(secret: &str) -> Result<()> {
    if secret.chars().count() < 8 || secret.chars().any(char::is_whitespace) {
        return Err(Error::Input("an API key needs at least 8 characters and no whitespace".into()));
    }
    Ok(())
}

/// SHA-256 of a key's secret. Keys are 128 random bits, so a fast hash is enough: there is no
/// password to guess.
pub fn hash_secret(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

impl Db {
    /// Opens (creating if needed) the database at `target`: a file path for SQLite, or a
    /// `postgres://` / `sqlite:` URL.
    pub async fn open(target: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let (url, sqlite) = if target.starts_with("postgres://") || target.starts_with("postgresql://") {
            (target.to_string(), false)
        } else if target.starts_with("sqlite:") {
            (target.to_string(), true)
        } else {
            let path = Path::new(target);
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)?;
            }
            (format!("sqlite://{target}?mode=rwc"), true)
        };
        let db_error = |source| Error::Database { url: redact(&url), source };
        let pool = AnyPoolOptions::new()
            .max_connections(if sqlite { 4 } else { 16 })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        conn.execute("PRAGMA journal_mode=WAL").await?;
                        conn.execute("PRAGMA synchronous=FULL").await?;
                        conn.execute("PRAGMA busy_timeout=10000").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(db_error)?;
        for statement in SCHEMA {
            pool.execute(*statement).await.map_err(db_error)?;
        }
        Ok(Self { pool, url: redact(&url) })
    }

    fn error(&self, source: sqlx::Error) -> Error {
        Error::Database { url: self.url.clone(), source }
    }

    /// Creates a key and returns it with its secret, which is shown only this once.
    pub async fn create_key(
        &self,
        name: &str,
        admin: bool,
        rpm: Option<u64>,
        tpm: Option<u64>,
    ) -> Result<(ApiKey, String)> {
        let secret = random_id("dk-");
        // The prefix shown in listings: "dk-" and 7 of the 32 random hex digits.
        let key = self.insert_key(name, admin, rpm, tpm, &secret, &secret[..10]).await?;
        Ok((key, secret))
    }

    /// The live inference key whose secret is `secret`, created under `name` when no key has it:
    /// a single-user server's key given on the command line (`distill serve --api-key`), which then
    /// counts usage and meets limits and the guard as any other.
    pub async fn ensure_key(&self, name: &str, secret: &str) -> Result<ApiKey> {
        check_chosen_secret(secret)?;
        if let Some(key) = self.find_key(secret).await? {
            return Ok(key);
        }
        // A chosen secret may be short: listings show only its first 3 characters.
        let prefix: String = secret.chars().take(3).collect();
        self.insert_key(name, false, None, None, secret, &prefix).await
    }

    async fn insert_key(
        &self,
        name: &str,
        admin: bool,
        rpm: Option<u64>,
        tpm: Option<u64>,
        secret: &str,
        prefix: &str,
    ) -> Result<ApiKey> {
        if name.trim().is_empty() {
            return Err(Error::Input("a key needs a name (--name), to recognise it in listings".into()));
        }
        if name.chars().count() > MAX_KEY_NAME {
            return Err(Error::Input(format!("a key's name holds at most {MAX_KEY_NAME} characters")));
        }
        let key = ApiKey {
            id: random_id("key_")[..16].to_string(),
            name: name.to_string(),
            prefix: prefix.to_string(),
            admin,
            rpm,
            tpm,
            created: now(),
            revoked: None,
            guard: Standing::default(),
        };
        sqlx::query(
            "INSERT INTO api_keys (id, name, hash, prefix, admin, rpm, tpm, created, revoked) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL)",
        )
        .bind(&key.id)
        .bind(&key.name)
        .bind(hash_secret(secret))
        .bind(&key.prefix)
        .bind(admin as i64)
        .bind(rpm.map(|v| v as i64))
        .bind(tpm.map(|v| v as i64))
        .bind(key.created)
        .execute(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        Ok(key)
    }

    pub async fn list_keys(&self) -> Result<Vec<ApiKey>> {
        let rows = sqlx::query(&format!("SELECT {KEY_COLUMNS} ORDER BY created, api_keys.id"))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.error(e))?;
        rows.iter().map(|r| key_from_row(r).map_err(|e| self.error(e))).collect()
    }

    /// The live (not revoked) key with this secret.
    pub async fn find_key(&self, secret: &str) -> Result<Option<ApiKey>> {
        let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} WHERE hash = $1 AND revoked IS NULL"))
            .bind(hash_secret(secret))
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.error(e))?;
        row.as_ref().map(key_from_row).transpose().map_err(|e| self.error(e))
    }

    /// Revokes the key with this id or name. Returns false when no live key matched.
    pub async fn revoke_key(&self, id_or_name: &str) -> Result<bool> {
        let done = sqlx::query("UPDATE api_keys SET revoked = $1 WHERE (id = $2 OR name = $2) AND revoked IS NULL")
            .bind(now())
            .bind(id_or_name)
            .execute(&self.pool)
            .await
            .map_err(|e| self.error(e))?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn record_usage(
        &self,
        key_id: &str,
        endpoint: &str,
        prompt_tokens: u64,
        completion_tokens: u64,
        outcome: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO key_usage (id, key_id, created, endpoint, prompt_tokens, completion_tokens, outcome) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(random_id("use_"))
        .bind(key_id)
        .bind(now())
        .bind(endpoint)
        .bind(prompt_tokens as i64)
        .bind(completion_tokens as i64)
        .bind(outcome)
        .execute(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Usage per key since `since` (unix seconds).
    pub async fn usage(&self, since: i64) -> Result<Vec<UsageTotals>> {
        let rows = sqlx::query(
            "SELECT key_id, COUNT(*) AS requests, CAST(SUM(prompt_tokens) AS BIGINT) AS p, \
             CAST(SUM(completion_tokens) AS BIGINT) AS c, \
             CAST(SUM(CASE WHEN outcome = 'aborted' THEN 1 ELSE 0 END) AS BIGINT) AS aborted \
             FROM key_usage WHERE created >= $1 GROUP BY key_id ORDER BY key_id",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        rows.iter()
            .map(|r| {
                Ok(UsageTotals {
                    key_id: r.try_get("key_id")?,
                    requests: r.try_get::<i64, _>("requests")? as u64,
                    prompt_tokens: r.try_get::<i64, _>("p")? as u64,
                    completion_tokens: r.try_get::<i64, _>("c")? as u64,
                    aborted: r.try_get::<i64, _>("aborted")? as u64,
                })
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(|e| self.error(e))
    }

    /// Stores a captured completion; returns once the row is committed (durably, on SQLite).
    pub async fn store_completion(&self, c: &StoredCompletion) -> Result<()> {
        let metadata = serde_json::to_string(&c.metadata).map_err(|e| Error::Input(e.to_string()))?;
        sqlx::query(
            "INSERT INTO completions (id, created, key_id, model, endpoint, metadata, request, response, logprobs, \
             prompt_tokens, completion_tokens) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&c.id)
        .bind(c.created)
        .bind(&c.key_id)
        .bind(&c.model)
        .bind(&c.endpoint)
        .bind(metadata)
        .bind(&c.request)
        .bind(&c.response)
        .bind(&c.logprobs)
        .bind(c.prompt_tokens as i64)
        .bind(c.completion_tokens as i64)
        .execute(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Captured completions created at or after `since`, oldest first.
    pub async fn completions(&self, since: i64) -> Result<Vec<StoredCompletion>> {
        let rows = sqlx::query(
            "SELECT id, created, key_id, model, endpoint, metadata, request, response, logprobs, prompt_tokens, \
             completion_tokens FROM completions WHERE created >= $1 ORDER BY created, id",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let metadata: String = r.try_get("metadata").map_err(|e| self.error(e))?;
            out.push(StoredCompletion {
                id: r.try_get("id").map_err(|e| self.error(e))?,
                created: r.try_get("created").map_err(|e| self.error(e))?,
                key_id: r.try_get("key_id").map_err(|e| self.error(e))?,
                model: r.try_get("model").map_err(|e| self.error(e))?,
                endpoint: r.try_get("endpoint").map_err(|e| self.error(e))?,
                metadata: serde_json::from_str(&metadata)
                    .map_err(|e| Error::Input(format!("stored metadata is not a JSON object: {e}")))?,
                request: r.try_get("request").map_err(|e| self.error(e))?,
                response: r.try_get("response").map_err(|e| self.error(e))?,
                logprobs: r.try_get("logprobs").map_err(|e| self.error(e))?,
                prompt_tokens: r.try_get::<i64, _>("prompt_tokens").map_err(|e| self.error(e))? as u64,
                completion_tokens: r.try_get::<i64, _>("completion_tokens").map_err(|e| self.error(e))? as u64,
            });
        }
        Ok(out)
    }

    /// SQLite's own consistency check ("ok" when sound); Postgres has no equivalent and says "ok".
    pub async fn integrity_check(&self) -> Result<String> {
        if !self.url.starts_with("sqlite:") {
            return Ok("ok".into());
        }
        let row = sqlx::query("PRAGMA integrity_check").fetch_one(&self.pool).await.map_err(|e| self.error(e))?;
        row.try_get::<String, _>(0).map_err(|e| self.error(e))
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn key_from_row(r: &AnyRow) -> std::result::Result<ApiKey, sqlx::Error> {
    Ok(ApiKey {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        prefix: r.try_get("prefix")?,
        admin: r.try_get::<i64, _>("admin")? != 0,
        rpm: r.try_get::<Option<i64>, _>("rpm")?.map(|v| v as u64),
        tpm: r.try_get::<Option<i64>, _>("tpm")?.map(|v| v as u64),
        created: r.try_get("created")?,
        revoked: r.try_get("revoked")?,
        guard: Standing {
            level: Level::from_i64(r.try_get("guard_level")?),
            cleared: r.try_get("guard_cleared")?,
            allowance: r.try_get("guard_allowance")?,
        },
    })
}

/// The URL without a password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme && url[scheme + 3..at].contains(':') => {
            let user = url[scheme + 3..at].split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}
