//! What the console reads besides requests: the live grants (with how often each fired) and
//! their revocation, the decisions taken earlier on the same operation, and the positions of
//! the agents' audit streams.
use super::chain::append_audit;
use super::rows::{load_reviews, request_from_row};
use super::sql::{begin_write, grant_from_row, SqlStore, GRANT_COLUMNS, REQUEST_COLUMNS};
use crate::audit::{self, Grant, GrantEnd};
use crate::error::GuardResult;
use async_trait::async_trait;
use guard_proto::v1::Request;
use sqlx::{AssertSqlSafe, Row};

/// A live grant and how many requests it decided so far.
#[derive(Debug, Clone)]
pub struct LiveGrant {
    pub grant: Grant,
    /// Requests approved by this grant (their decision names it: comment "grant <id>").
    pub fired: u64,
}

/// Where one agent audit stream stands (`audit_streams`): its last stored seq and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPosition {
    pub host: String,
    pub stream: String,
    pub seq: u64,
    pub hash: String,
}

#[async_trait]
pub trait GrantStore: Send + Sync {
    /// The grants not ended and not past their time at `now_ms`, newest first.
    async fn live_grants(&self, now_ms: i64) -> GuardResult<Vec<LiveGrant>>;
    /// Grant `id` and when it ended (None: still live, unless past its time).
    async fn grant(&self, id: &str) -> GuardResult<Option<(Grant, Option<i64>)>>;
    /// Ends grant `id` now, recording that `by` revoked it. None when it had already ended
    /// (or never existed): nothing changes then.
    async fn revoke_grant(&self, id: &str, by: &str, now_ms: i64) -> GuardResult<Option<Grant>>;
    /// At most `limit` decided requests for the same operation (host, hook, object) other
    /// than `except_id`, newest first.
    async fn earlier_decisions(
        &self,
        host: &str,
        hook: &str,
        object: &str,
        except_id: &str,
        limit: u32,
    ) -> GuardResult<Vec<Request>>;
    /// Every agent audit stream's position, by host and stream.
    async fn stream_positions(&self) -> GuardResult<Vec<StreamPosition>>;
}

/// The comment of a grant's decisions (`store/writer.rs` writes it): how its firings are found.
fn fired_comment(id: &str) -> String {
    format!("grant {id}")
}

#[async_trait]
impl GrantStore for SqlStore {
    async fn live_grants(&self, now_ms: i64) -> GuardResult<Vec<LiveGrant>> {
        let sql = format!(
            "SELECT {GRANT_COLUMNS} FROM grants WHERE ended_ms IS NULL AND expires_ms > $1 ORDER BY created_ms DESC, id"
        );
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(now_ms).fetch_all(self.pool()).await?;
        let mut live = Vec::with_capacity(rows.len());
        for row in &rows {
            let grant = grant_from_row(row)?;
            let n: i64 = sqlx::query("SELECT count(*) AS n FROM requests WHERE reason = 'grant' AND comment = $1")
                .bind(fired_comment(&grant.id))
                .fetch_one(self.pool())
                .await?
                .try_get("n")?;
            live.push(LiveGrant { grant, fired: u64::try_from(n).unwrap_or(0) });
        }
        Ok(live)
    }

    async fn grant(&self, id: &str) -> GuardResult<Option<(Grant, Option<i64>)>> {
        let sql = format!("SELECT {GRANT_COLUMNS}, ended_ms FROM grants WHERE id = $1");
        let row = sqlx::query(AssertSqlSafe(sql)).bind(id.to_string()).fetch_optional(self.pool()).await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some((grant_from_row(&row)?, row.try_get("ended_ms")?)))
    }

    async fn revoke_grant(&self, id: &str, by: &str, now_ms: i64) -> GuardResult<Option<Grant>> {
        let mut tx = begin_write(self.pool(), self.backend()).await?;
        // Conditional on `ended_ms IS NULL`: a grant ends (and is recorded) once, whoever
        // revokes or sweeps it at the same time.
        let sql = format!(
            "UPDATE grants SET ended_ms = $1, revoked_by = $2 WHERE id = $3 AND ended_ms IS NULL RETURNING {GRANT_COLUMNS}"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(now_ms)
            .bind(by.to_string())
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(None);
        };
        let grant = grant_from_row(&row)?;
        let mut record = audit::grant_record(&grant, now_ms, Some(GrantEnd::Revoked));
        record.comment = Some(format!("grant {} ended: revoked by {by}", grant.id));
        append_audit(&mut tx, self.backend(), &[audit::server_entry(&record)]).await?;
        tx.commit().await?;
        Ok(Some(grant))
    }

    async fn earlier_decisions(
        &self,
        host: &str,
        hook: &str,
        object: &str,
        except_id: &str,
        limit: u32,
    ) -> GuardResult<Vec<Request>> {
        let sql = format!(
            "SELECT {REQUEST_COLUMNS} FROM requests WHERE host = $1 AND hook = $2 AND object = $3 AND id <> $4 \
             AND state <> 'pending' ORDER BY created_ms DESC, id LIMIT {}",
            limit.min(100)
        );
        let mut conn = self.pool().acquire().await?;
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(host.to_string())
            .bind(hook.to_string())
            .bind(object.to_string())
            .bind(except_id.to_string())
            .fetch_all(&mut *conn)
            .await?;
        let mut requests = rows.iter().map(request_from_row).collect::<GuardResult<Vec<_>>>()?;
        load_reviews(&mut conn, &mut requests).await?;
        Ok(requests)
    }

    async fn stream_positions(&self) -> GuardResult<Vec<StreamPosition>> {
        let rows = sqlx::query("SELECT host, stream, seq, hash FROM audit_streams ORDER BY host, stream")
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                Ok(StreamPosition {
                    host: r.try_get("host")?,
                    stream: r.try_get("stream")?,
                    seq: u64::try_from(r.try_get::<i64, _>("seq")?).unwrap_or(0),
                    hash: r.try_get("hash")?,
                })
            })
            .collect()
    }
}
