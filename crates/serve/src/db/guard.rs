//! The extraction guard's tables: `guard_state` (each key's current level, risk and reasons)
//! and `guard_audit` (every decision and every admin clear, with the signal values behind it).

use serde::Serialize;
use sqlx::Row;

use super::{now, random_id, Db};

use crate::error::{Error, Result};
use crate::guard::{Decision, Level};

/// A key's guard state, for `distill guard report`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuardRow {
    pub key_id: String,
    pub name: String,
    pub level: Level,
    pub risk: f64,
    pub reasons: Vec<String>,
    /// The signal values of the last decision, JSON.
    pub signals: serde_json::Value,
    pub updated: i64,
    pub cleared: Option<i64>,
    pub revoked: bool,
}

/// One line of the audit table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    pub key_id: String,
    pub created: i64,
    /// flag, throttle, revoke or clear.
    pub action: String,
    /// `guard` for its own decisions, `admin` for clears.
    pub actor: String,
    pub risk: f64,
    pub reasons: Vec<String>,
    pub signals: serde_json::Value,
}

impl Db {
    /// Writes a guard decision: the key's state, its audit line and, for a revocation, the
    /// revocation itself, in one transaction.
    pub async fn record_guard_decision(&self, d: &Decision) -> Result<()> {
        let reasons = json(&d.reasons)?;
        let signals = json(&serde_json::json!({"signals": d.signals, "linked": d.linked, "requests": d.requests}))?;
        // When the guard decided: decisions are written behind the responses, possibly out of order.
        let at = d.at as i64;
        let mut tx = self.pool.begin().await.map_err(|e| self.error(e))?;
        sqlx::query(
            "INSERT INTO guard_state (key_id, level, risk, reasons, signals, updated, cleared) \
             VALUES ($1, $2, $3, $4, $5, $6, NULL) ON CONFLICT (key_id) DO UPDATE SET level = $2, risk = $3, \
             reasons = $4, signals = $5, updated = $6",
        )
        .bind(&d.key_id)
        .bind(d.level.as_i64())
        .bind(d.risk)
        .bind(&reasons)
        .bind(&signals)
        .bind(at)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.error(e))?;
        insert_audit(&mut tx, &d.key_id, d.at, d.level.as_str(), "guard", d.risk, &reasons, &signals)
            .await
            .map_err(|e| self.error(e))?;
        if d.level == Level::Revoke {
            sqlx::query("UPDATE api_keys SET revoked = $1 WHERE id = $2 AND revoked IS NULL")
                .bind(at)
                .bind(&d.key_id)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.error(e))?;
        }
        tx.commit().await.map_err(|e| self.error(e))
    }

    /// An admin judged the key benign: its guard level goes back to none (a key the guard
    /// revoked is live again) and the clear is audited with `note`. Returns the key's id, or
    /// `None` when no key has this id or name.
    pub async fn clear_guard(&self, id_or_name: &str, note: &str) -> Result<Option<String>> {
        self.clear_or_allow(id_or_name, note, None).await
    }

    /// An admin declared what the key is for (an evaluation harness, a batch pipeline): it is
    /// cleared as by [`Db::clear_guard`], and from then on allowed `tokens_per_hour` (or, with
    /// `None`, any volume: [`crate::guard::DECLARED`]); the guard keeps reporting its signals.
    /// Audited as `allow` with the declared use.
    pub async fn allow_guard(
        &self,
        id_or_name: &str,
        declared_use: &str,
        tokens_per_hour: Option<f64>,
    ) -> Result<Option<String>> {
        self.clear_or_allow(id_or_name, declared_use, Some(tokens_per_hour.unwrap_or(crate::guard::DECLARED))).await
    }

    async fn clear_or_allow(&self, id_or_name: &str, note: &str, allowance: Option<f64>) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT api_keys.id AS id, COALESCE(g.level, 0) AS level FROM api_keys \
             LEFT JOIN guard_state g ON g.key_id = api_keys.id WHERE api_keys.id = $1 OR api_keys.name = $1 \
             ORDER BY api_keys.created DESC",
        )
        .bind(id_or_name)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        let Some(row) = row else { return Ok(None) };
        let id: String = row.try_get("id").map_err(|e| self.error(e))?;
        let previous = Level::from_i64(row.try_get("level").map_err(|e| self.error(e))?);
        let at = now();
        let (action, reasons) = match allowance {
            None => ("clear", format!("cleared by an admin (was {}): {note}", previous.as_str())),
            Some(a) if a >= crate::guard::DECLARED => ("allow", format!("use declared by an admin: {note}")),
            Some(a) => ("allow", format!("use declared by an admin, {a:.0} tokens an hour: {note}")),
        };
        let reasons = json(&[reasons])?;
        let mut tx = self.pool.begin().await.map_err(|e| self.error(e))?;
        sqlx::query(
            "INSERT INTO guard_state (key_id, level, risk, reasons, signals, updated, cleared) \
             VALUES ($1, 0, 0, $2, '{}', $3, $3) ON CONFLICT (key_id) DO UPDATE SET level = 0, risk = 0, \
             reasons = $2, signals = '{}', updated = $3, cleared = $3",
        )
        .bind(&id)
        .bind(&reasons)
        .bind(at)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.error(e))?;
        if let Some(allowance) = allowance {
            sqlx::query("UPDATE guard_state SET allowance = $1 WHERE key_id = $2")
                .bind(allowance)
                .bind(&id)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.error(e))?;
        }
        let precise =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        insert_audit(&mut tx, &id, precise, action, "admin", 0.0, &reasons, "{}").await.map_err(|e| self.error(e))?;
        if previous == Level::Revoke {
            sqlx::query("UPDATE api_keys SET revoked = NULL WHERE id = $1")
                .bind(&id)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.error(e))?;
        }
        tx.commit().await.map_err(|e| self.error(e))?;
        Ok(Some(id))
    }

    /// Stores the tokens per hour a clear made normal for a key (the server works it out from
    /// what it saw of the key, and keeps it across restarts).
    pub async fn set_guard_allowance(&self, key_id: &str, allowance: f64) -> Result<()> {
        sqlx::query("UPDATE guard_state SET allowance = $1 WHERE key_id = $2")
            .bind(allowance)
            .bind(key_id)
            .execute(&self.pool)
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// A key's requests and completion tokens per clock hour since `since` (unix seconds), from
    /// the usage table: the history the guard judges an old key by after a restart.
    pub async fn hourly_usage(&self, key_id: &str, since: i64) -> Result<Vec<(i64, u64, u64)>> {
        let rows = sqlx::query(
            "SELECT created / 3600 AS hour, COUNT(*) AS n, CAST(COALESCE(SUM(completion_tokens), 0) AS BIGINT) AS tokens \
             FROM key_usage WHERE key_id = $1 AND created >= $2 GROUP BY created / 3600 ORDER BY hour",
        )
        .bind(key_id)
        .bind(since)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        rows.iter()
            .map(|r| {
                let tokens: i64 = r.try_get("tokens")?;
                Ok((r.try_get::<i64, _>("hour")?, r.try_get::<i64, _>("n")? as u64, tokens.max(0) as u64))
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(|e| self.error(e))
    }

    /// Keys the guard has acted on or that were cleared, highest level and risk first.
    pub async fn guard_report(&self) -> Result<Vec<GuardRow>> {
        let rows = sqlx::query(
            "SELECT g.key_id AS key_id, COALESCE(k.name, '') AS name, g.level AS level, g.risk AS risk, \
             g.reasons AS reasons, g.signals AS signals, g.updated AS updated, g.cleared AS cleared, \
             k.revoked AS revoked FROM guard_state g LEFT JOIN api_keys k ON k.id = g.key_id \
             ORDER BY g.level DESC, g.risk DESC, g.key_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        rows.iter()
            .map(|r| {
                let get = |e: sqlx::Error| self.error(e);
                Ok(GuardRow {
                    key_id: r.try_get("key_id").map_err(get)?,
                    name: r.try_get("name").map_err(get)?,
                    level: Level::from_i64(r.try_get("level").map_err(get)?),
                    risk: r.try_get("risk").map_err(get)?,
                    reasons: parse(&r.try_get::<String, _>("reasons").map_err(get)?)?,
                    signals: parse(&r.try_get::<String, _>("signals").map_err(get)?)?,
                    updated: r.try_get("updated").map_err(get)?,
                    cleared: r.try_get("cleared").map_err(get)?,
                    revoked: r.try_get::<Option<i64>, _>("revoked").map_err(get)?.is_some(),
                })
            })
            .collect()
    }

    /// Audit lines since `since` (unix seconds), of one key (id or name) or all, oldest first.
    pub async fn guard_audit(&self, key: Option<&str>, since: i64) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT a.key_id AS key_id, a.created AS created, a.action AS action, a.actor AS actor, a.risk AS risk, \
             a.reasons AS reasons, a.signals AS signals FROM guard_audit a LEFT JOIN api_keys k ON k.id = a.key_id \
             WHERE a.created >= $1 AND ($2 = '' OR a.key_id = $2 OR k.name = $2) ORDER BY a.created, a.id",
        )
        .bind(since)
        .bind(key.unwrap_or(""))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        rows.iter()
            .map(|r| {
                let get = |e: sqlx::Error| self.error(e);
                Ok(AuditEntry {
                    key_id: r.try_get("key_id").map_err(get)?,
                    created: r.try_get("created").map_err(get)?,
                    action: r.try_get("action").map_err(get)?,
                    actor: r.try_get("actor").map_err(get)?,
                    risk: r.try_get("risk").map_err(get)?,
                    reasons: parse(&r.try_get::<String, _>("reasons").map_err(get)?)?,
                    signals: parse(&r.try_get::<String, _>("signals").map_err(get)?)?,
                })
            })
            .collect()
    }
}

#[allow(clippy::too_many_arguments)]
async fn insert_audit(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    key_id: &str,
    at: f64,
    action: &str,
    actor: &str,
    risk: f64,
    reasons: &str,
    signals: &str,
) -> std::result::Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO guard_audit (id, key_id, created, action, actor, risk, reasons, signals) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    // Ids sort by time (microseconds), so the audit reads in the order things happened.
    .bind(format!("gda_{:020}_{}", (at * 1e6) as u64, &random_id("")[..8]))
    .bind(key_id)
    .bind(at as i64)
    .bind(action)
    .bind(actor)
    .bind(risk)
    .bind(reasons)
    .bind(signals)
    .execute(&mut **tx)
    .await
    .map(|_| ())
}

fn json<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Input(e.to_string()))
}

fn parse<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| Error::Input(format!("a stored guard value is not the JSON expected: {e}")))
}
