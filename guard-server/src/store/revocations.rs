//! The `revoked_certificates` table (migration 0010).
use super::chain::append_audit;
use super::sql::{Backend, Tx};
use crate::audit::server_entry;
use crate::error::GuardResult;
use crate::revocation::Revoked;
use sqlx::{AnyPool, Row};

/// Inserts `r` and its audit record in `tx`; false (and no record) when the serial was listed.
pub async fn insert(tx: &mut Tx, backend: Backend, r: &Revoked) -> GuardResult<bool> {
    let done = sqlx::query(
        "INSERT INTO revoked_certificates (serial, name, reason, revoked_by, revoked_ms) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (serial) DO NOTHING",
    )
    .bind(r.serial.clone())
    .bind(r.name.clone())
    .bind(r.reason.clone())
    .bind(r.revoked_by.clone())
    .bind(r.revoked_ms)
    .execute(&mut **tx)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    append_audit(tx, backend, &[server_entry(&r.record())]).await?;
    Ok(true)
}

pub async fn all(pool: &AnyPool) -> GuardResult<Vec<Revoked>> {
    let rows = sqlx::query(
        "SELECT serial, name, reason, revoked_by, revoked_ms FROM revoked_certificates ORDER BY revoked_ms",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(Revoked {
                serial: row.try_get("serial")?,
                name: row.try_get("name")?,
                reason: row.try_get("reason")?,
                revoked_by: row.try_get("revoked_by")?,
                revoked_ms: row.try_get("revoked_ms")?,
            })
        })
        .collect()
}
