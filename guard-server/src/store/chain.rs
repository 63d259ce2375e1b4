//! The audit hash chain: rows appended in order, each linked to the one before it by a hash
//! over every column ([`row_hash`]), with one head row that appenders serialize on (so `seq`
//! has no gaps, whatever the replicas).
use super::rows::params;
use super::sql::{Backend, Tx};
use crate::audit::AuditEntry;
use crate::error::GuardResult;
use guard_api::chain::row_hash;
use sqlx::{AssertSqlSafe, Row};

/// Audit rows in one INSERT.
const AUDIT_ROWS_PER_INSERT: usize = 512;

/// Appends `entries` to the audit chain, in order, inside `tx`.
pub async fn append_audit(tx: &mut Tx, backend: Backend, entries: &[AuditEntry]) -> GuardResult<()> {
    append_audit_refs(tx, backend, &entries.iter().collect::<Vec<_>>()).await
}

pub async fn append_audit_refs(tx: &mut Tx, backend: Backend, entries: &[&AuditEntry]) -> GuardResult<()> {
    if entries.is_empty() {
        return Ok(());
    }
    // PostgreSQL: FOR UPDATE makes concurrent appenders wait and then see the new head.
    // SQLite: the transaction already holds the database write lock.
    let lock = if backend == Backend::Postgres { " FOR UPDATE" } else { "" };
    let head = sqlx::query(AssertSqlSafe(format!("SELECT seq, hash FROM audit_head WHERE id = 1{lock}")))
        .fetch_one(&mut **tx)
        .await?;
    let mut seq: i64 = head.try_get("seq")?;
    let mut hash: String = head.try_get("hash")?;
    for chunk in entries.chunks(AUDIT_ROWS_PER_INSERT) {
        let rows = (0..chunk.len()).map(|i| format!("({})", params(backend, i * 8 + 1, 8))).collect::<Vec<_>>();
        let sql = format!(
            "INSERT INTO audit (seq, time_ms, host, kind, request_id, json, prev_hash, hash) VALUES {}",
            rows.join(", ")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for e in chunk {
            seq += 1;
            let next = row_hash(&hash, seq, e.time_ms, &e.host, e.kind, &e.request_id, &e.json);
            query = query
                .bind(seq)
                .bind(e.time_ms)
                .bind(e.host.clone())
                .bind(e.kind.to_string())
                .bind(e.request_id.clone())
                .bind(e.json.clone())
                .bind(std::mem::replace(&mut hash, next.clone()))
                .bind(next);
        }
        query.execute(&mut **tx).await?;
    }
    sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
        .bind(seq)
        .bind(hash)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
