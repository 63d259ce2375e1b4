//! The SQL shared by both backends. Every write runs in one transaction that first takes
//! the lock it needs (SQLite: `BEGIN IMMEDIATE`, the database write lock; PostgreSQL: the
//! request's row with `FOR UPDATE`), then reads, judges and writes, so the decision and the
//! rows it is based on cannot drift apart, whatever the number of replicas.
//!
//! Submissions go through the group-commit writer (`writer.rs`); rows are mapped in
//! `rows.rs`; the audit chain is appended in `chain.rs`.
use super::chain::append_audit;
use super::ingest::{self, Ingest};
use super::rows::{load_request, load_reviews, placeholders, request_from_row, state_label};
use super::writer::{prepare, SubmitJob, Submitted, Writer, QUEUE};
use super::{AuditFilter, Decision, Finish, HostInfo, Judge, ListFilter, NewRequest, Store};
use crate::audit::{self, AuditEntry, GrantEnd};
use crate::error::{GuardError, GuardResult};
use crate::fanout::Fanout;
use crate::ids;
use async_trait::async_trait;
use guard_api::chain::keys::SigningKey;
use guard_api::{AuditRecord, RecordKind};
use guard_proto::v1::{AuditEvent, AuditHead, AuditKey, Request, Review, State};

use super::grant_argv;
use sqlx::AnyPool;
use sqlx::{Any, AssertSqlSafe, Row, Transaction};
use std::collections::HashMap;
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct SqlStore {
    /// Also for the chat channels' queries (`chat.rs`).
    pub(super) pool: AnyPool,
    backend: Backend,
    fanout: Fanout,
    /// To the group-commit writer (see `Writer`).
    submits: mpsc::Sender<SubmitJob>,
    /// Tasks that live as long as the store (the writer; PostgreSQL's LISTEN relay).
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for SqlStore {
    fn drop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

pub type Tx = Transaction<'static, Any>;

pub const REQUEST_COLUMNS: &str = "id, host, operation, state, created_ms, expires_ms, decided_ms, \
     approvals_required, eligible_approvers, reason, decided_by, comment, flags";

/// Most rows a list or an audit query returns in one call.
const MAX_ROWS: u32 = 10_000;
/// Fewest rows an audit query reads at a time (see `audit`).
const MIN_PAGE: usize = 1000;

/// The request's state (Unspecified for a number this build does not know).
pub fn state_of(request: &Request) -> State {
    State::try_from(request.state).unwrap_or(State::Unspecified)
}

/// Writes `decision` into the request as it is returned to callers (the row is updated apart).
pub fn apply(request: &mut Request, decision: &Decision) {
    request.state = decision.state as i32;
    request.reason = decision.reason.clone();
    request.decided_by = decision.decided_by.clone();
    request.comment = decision.comment.clone();
    request.decided_ms = decision.decided_ms;
}

pub async fn begin_write(pool: &AnyPool, backend: Backend) -> GuardResult<Tx> {
    Ok(match backend {
        // Take the write lock now rather than on the first write, so a transaction that
        // read first never fails with SQLITE_BUSY on upgrade (busy_timeout waits here).
        Backend::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await?,
        Backend::Postgres => pool.begin().await?,
    })
}

/// Commits and tells every stream (here, and on the other replicas) which requests changed.
pub async fn commit(mut tx: Tx, backend: Backend, fanout: &Fanout, changed: &[&str]) -> GuardResult<()> {
    if backend == Backend::Postgres {
        // One statement for all of them (a NOTIFY each would be a round trip each); they are
        // delivered at commit. Ids are our own base32 alphabet, checked all the same.
        let ids: Vec<&str> = changed.iter().copied().filter(|id| ids::looks_like_request_id(id)).collect();
        for chunk in ids.chunks(1000) {
            let values = (1..=chunk.len()).map(|i| format!("(${i})")).collect::<Vec<_>>().join(", ");
            let sql = format!(
                "SELECT count(*) AS n FROM (VALUES {values}) AS t (id) CROSS JOIN LATERAL pg_notify('{}', t.id) AS n",
                super::postgres::CHANNEL
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(id.to_string());
            }
            query.execute(&mut *tx).await?;
        }
    }
    tx.commit().await?;
    for id in changed {
        fanout.publish_id(id);
    }
    Ok(())
}

impl SqlStore {
    /// Starts the group-commit writer: call inside the runtime.
    pub fn new(pool: AnyPool, backend: Backend, fanout: Fanout) -> SqlStore {
        let (submits, rx) = mpsc::channel(QUEUE);
        let writer = Writer { pool: pool.clone(), backend, fanout: fanout.clone() };
        let tasks = vec![tokio::spawn(writer.run(rx))];
        SqlStore { pool, backend, fanout, submits, tasks }
    }

    /// For the store's other files (`passkeys.rs`, `accounts.rs`, `grants.rs`).
    pub(super) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn with_task(mut self, task: tokio::task::JoinHandle<()>) -> SqlStore {
        self.tasks.push(task);
        self
    }

    pub(super) fn backend(&self) -> Backend {
        self.backend
    }

    async fn begin_write(&self) -> GuardResult<Tx> {
        begin_write(&self.pool, self.backend).await
    }

    /// Commits and tells every stream (here, and on the other replicas) which requests changed.
    async fn commit(&self, tx: Tx, changed: &[&str]) -> GuardResult<()> {
        commit(tx, self.backend, &self.fanout, changed).await
    }

    /// Locks the request's row for the rest of the transaction (PostgreSQL); SQLite's
    /// write transaction is already exclusive.
    async fn lock_request(&self, tx: &mut Tx, id: &str) -> GuardResult<()> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT id FROM requests WHERE id = $1 FOR UPDATE")
                .bind(id.to_string())
                .fetch_optional(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Expires `request` (pending, past its time) inside `tx`.
    async fn expire_in(&self, tx: &mut Tx, request: &mut Request, now_ms: i64) -> GuardResult<()> {
        let decision = expired(now_ms);
        let done = set_decision(tx, &request.id, &decision).await?;
        if done {
            apply(request, &decision);
            append_audit(tx, self.backend, &[audit::entry(RecordKind::Decision, now_ms, request, None)]).await?;
        }
        Ok(())
    }
}

fn expired(now_ms: i64) -> Decision {
    Decision {
        state: State::Expired,
        reason: "expired".into(),
        decided_by: String::new(),
        comment: String::new(),
        decided_ms: now_ms,
    }
}

/// Ends a pending request. False when it was not pending (someone else ended it first).
async fn set_decision(tx: &mut Tx, id: &str, d: &Decision) -> GuardResult<bool> {
    let done = sqlx::query(
        "UPDATE requests SET state = $1, reason = $2, decided_by = $3, comment = $4, decided_ms = $5 \
         WHERE id = $6 AND state = 'pending'",
    )
    .bind(state_label(d.state).to_string())
    .bind(d.reason.clone())
    .bind(d.decided_by.clone())
    .bind(d.comment.clone())
    .bind(d.decided_ms)
    .bind(id.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The columns of `grants` an `audit::Grant` is read from.
pub const GRANT_COLUMNS: &str =
    "id, host, tree_id, hook, object, access, argv, approver, request_id, created_ms, expires_ms";

pub fn grant_from_row(row: &sqlx::any::AnyRow) -> GuardResult<audit::Grant> {
    Ok(audit::Grant {
        id: row.try_get("id")?,
        host: row.try_get("host")?,
        tree_id: row.try_get("tree_id")?,
        hook: row.try_get("hook")?,
        object: row.try_get("object")?,
        access: row.try_get("access")?,
        argv: row.try_get("argv")?,
        approver: row.try_get("approver")?,
        request_id: row.try_get("request_id")?,
        created_ms: row.try_get("created_ms")?,
        expires_ms: row.try_get("expires_ms")?,
    })
}

impl SqlStore {
    /// Expires every pending request past its time, each audited once.
    async fn expire_requests(&self, now_ms: i64) -> GuardResult<usize> {
        // A cheap read first: most sweeps find nothing and should not take the write lock.
        let due = sqlx::query("SELECT id FROM requests WHERE state = 'pending' AND expires_ms <= $1 LIMIT 1")
            .bind(now_ms)
            .fetch_optional(&self.pool)
            .await?;
        if due.is_none() {
            return Ok(0);
        }
        let mut tx = self.begin_write().await?;
        // Conditional on `pending`: with several replicas sweeping, each row is expired (and
        // audited) by exactly one of them.
        let sql = format!(
            "UPDATE requests SET state = 'expired', reason = 'expired', decided_by = '', comment = '', decided_ms = $1 \
             WHERE state = 'pending' AND expires_ms <= $1 RETURNING {REQUEST_COLUMNS}"
        );
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(now_ms).fetch_all(&mut *tx).await?;
        let requests = rows.iter().map(request_from_row).collect::<GuardResult<Vec<_>>>()?;
        let entries: Vec<AuditEntry> =
            requests.iter().map(|r| audit::entry(RecordKind::Decision, now_ms, r, None)).collect();
        append_audit(&mut tx, self.backend, &entries).await?;
        let ids: Vec<&str> = requests.iter().map(|r| r.id.as_str()).collect();
        self.commit(tx, &ids).await?;
        Ok(requests.len())
    }

    /// Ends the live grants matching `condition` (`$1` is now, `$2`... are `binds`), each
    /// with its record, in one transaction. Conditional on `ended_ms IS NULL`: with several
    /// replicas, each grant is ended (and audited) by exactly one of them. An expired grant's
    /// `ended_ms` is its expiry, the time it stopped covering anything.
    async fn end_grants_where(
        &self,
        end: GrantEnd,
        condition: &str,
        binds: &[&str],
        now_ms: i64,
    ) -> GuardResult<usize> {
        if end == GrantEnd::Expired {
            // A cheap read first: most sweeps find nothing and should not take the write lock.
            let due = sqlx::query("SELECT id FROM grants WHERE ended_ms IS NULL AND expires_ms <= $1 LIMIT 1")
                .bind(now_ms)
                .fetch_optional(&self.pool)
                .await?;
            if due.is_none() {
                return Ok(0);
            }
        }
        let ended = match end {
            GrantEnd::Expired => "expires_ms",
            GrantEnd::TreeExited | GrantEnd::Revoked => "$1",
        };
        let sql = format!(
            "UPDATE grants SET ended_ms = {ended} WHERE ended_ms IS NULL AND {condition} RETURNING {GRANT_COLUMNS}"
        );
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(now_ms);
        for b in binds {
            query = query.bind(b.to_string());
        }
        let mut tx = self.begin_write().await?;
        let rows = query.fetch_all(&mut *tx).await?;
        let grants = rows.iter().map(grant_from_row).collect::<GuardResult<Vec<_>>>()?;
        let entries: Vec<AuditEntry> =
            grants.iter().map(|g| audit::server_entry(&audit::grant_record(g, now_ms, Some(end)))).collect();
        append_audit(&mut tx, self.backend, &entries).await?;
        tx.commit().await?;
        Ok(grants.len())
    }
}

#[async_trait]
impl Store for SqlStore {
    async fn submit(&self, new: NewRequest) -> GuardResult<Request> {
        let (host, now_ms) = (new.host.clone(), new.created_ms);
        let (reply, answer) = oneshot::channel();
        let job = SubmitJob { prepared: prepare(new), reply };
        let key = job.prepared.hold_key.clone();
        let stopped = || GuardError::Unavailable("the store is shutting down".into());
        self.submits.send(job).await.map_err(|_| stopped())?;
        match answer.await.map_err(|_| stopped())?? {
            Submitted::Created(request) => Ok(*request),
            Submitted::Exists => {
                // Idempotent: the request this (host, hold_key) already names, as it is now.
                let row = sqlx::query("SELECT id FROM requests WHERE host = $1 AND hold_key = $2")
                    .bind(host)
                    .bind(key.unwrap_or_default())
                    .fetch_one(&self.pool)
                    .await?;
                let id: String = row.try_get("id")?;
                self.get(&id, now_ms).await?.ok_or_else(|| GuardError::Internal("vanished".into()))
            }
        }
    }

    async fn get(&self, id: &str, now_ms: i64) -> GuardResult<Option<Request>> {
        let mut conn = self.pool.acquire().await?;
        let Some(request) = load_request(&mut conn, id).await? else {
            return Ok(None);
        };
        if state_of(&request) != State::Pending || request.expires_ms > now_ms {
            return Ok(Some(request));
        }
        drop(conn);
        // Past its time and the sweeper has not run yet: expire it now, under the lock.
        let mut tx = self.begin_write().await?;
        self.lock_request(&mut tx, id).await?;
        let Some(mut request) = load_request(&mut tx, id).await? else {
            return Ok(None);
        };
        if state_of(&request) == State::Pending && request.expires_ms <= now_ms {
            self.expire_in(&mut tx, &mut request, now_ms).await?;
            self.commit(tx, &[id]).await?;
        } else {
            tx.rollback().await?;
        }
        Ok(Some(request))
    }

    async fn list(&self, filter: &ListFilter) -> GuardResult<Vec<Request>> {
        let mut sql = format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE 1 = 1");
        let mut n = 0;
        if !filter.states.is_empty() {
            sql += &format!(" AND state IN ({})", placeholders(n + 1, filter.states.len()));
            n += filter.states.len();
        }
        if filter.host.is_some() {
            sql += &format!(" AND host = ${}", n + 1);
        }
        let limit = if filter.limit == 0 { MAX_ROWS } else { filter.limit.min(MAX_ROWS) };
        sql += &format!(" ORDER BY created_ms DESC, id LIMIT {limit}");
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for s in &filter.states {
            query = query.bind(state_label(*s).to_string());
        }
        if let Some(host) = &filter.host {
            query = query.bind(host.clone());
        }
        let mut conn = self.pool.acquire().await?;
        let rows = query.fetch_all(&mut *conn).await?;
        let mut requests = rows.iter().map(request_from_row).collect::<GuardResult<Vec<_>>>()?;
        load_reviews(&mut conn, &mut requests).await?;
        Ok(requests)
    }

    async fn review(&self, id: &str, review: Review, judge: &Judge) -> GuardResult<Request> {
        let now_ms = review.time_ms;
        let mut tx = self.begin_write().await?;
        self.lock_request(&mut tx, id).await?;
        let Some(mut request) = load_request(&mut tx, id).await? else {
            return Err(GuardError::NotFound(format!("no request {id:?}")));
        };
        let mut expired_now = false;
        if state_of(&request) == State::Pending && request.expires_ms <= now_ms {
            self.expire_in(&mut tx, &mut request, now_ms).await?;
            expired_now = true;
        }
        let effect = match judge(&request) {
            Ok(effect) => effect,
            Err(err) => {
                // Keep the expiry we just found (it is true whatever the reviewer wanted).
                if expired_now {
                    self.commit(tx, &[id]).await?;
                } else {
                    tx.rollback().await?;
                }
                return Err(err);
            }
        };
        sqlx::query(
            "INSERT INTO reviews (request_id, approver, approve, comment, time_ms, grant_seconds, verified_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id.to_string())
        .bind(review.approver.clone())
        .bind(i64::from(review.approve))
        .bind(review.comment.clone())
        .bind(review.time_ms)
        .bind(i64::try_from(review.grant_seconds).unwrap_or(i64::MAX))
        .bind(review.verified_by.clone())
        .execute(&mut *tx)
        .await?;
        request.reviews.push(review.clone());
        let mut entries = vec![audit::entry(RecordKind::Review, now_ms, &request, Some(&review))];
        if let Some(decision) = &effect.decision {
            if !set_decision(&mut tx, id, decision).await? {
                // Cannot happen under the lock; refuse rather than record a review twice.
                tx.rollback().await?;
                return Err(GuardError::Internal(format!("request {id} changed under its lock")));
            }
            apply(&mut request, decision);
            entries.push(audit::entry(RecordKind::Decision, now_ms, &request, None));
        }
        // An exec whose argv was cut short gets no grant (`grant_argv`): the approval covers
        // this request only.
        let grant = effect.grant_until_ms.zip(request.operation.as_ref().and_then(|op| Some((op, grant_argv(op)?))));
        if let Some((until, (op, argv))) = grant {
            let grant = audit::Grant {
                id: ids::new_request_id().map_err(|_| GuardError::Internal("no randomness".into()))?,
                host: request.host.clone(),
                tree_id: op.tree_id.clone(),
                hook: op.hook.clone(),
                object: op.object.clone(),
                access: op.access.clone(),
                argv,
                approver: review.approver.clone(),
                request_id: id.to_string(),
                created_ms: now_ms,
                expires_ms: until,
            };
            sqlx::query(
                "INSERT INTO grants (id, host, tree_id, hook, object, access, argv, approver, request_id, created_ms, \
                 expires_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(grant.id.clone())
            .bind(grant.host.clone())
            .bind(grant.tree_id.clone())
            .bind(grant.hook.clone())
            .bind(grant.object.clone())
            .bind(grant.access.clone())
            .bind(grant.argv.clone())
            .bind(grant.approver.clone())
            .bind(grant.request_id.clone())
            .bind(grant.created_ms)
            .bind(grant.expires_ms)
            .execute(&mut *tx)
            .await?;
            // In the same transaction: a grant exists exactly when its record does.
            entries.push(audit::server_entry(&audit::grant_record(&grant, now_ms, None)));
        }
        append_audit(&mut tx, self.backend, &entries).await?;
        self.commit(tx, &[id]).await?;
        Ok(request)
    }

    async fn finish(&self, id: &str, host: Option<&str>, decision: Decision) -> GuardResult<Finish> {
        let mut tx = self.begin_write().await?;
        self.lock_request(&mut tx, id).await?;
        let request = load_request(&mut tx, id).await?;
        let Some(mut request) = request.filter(|r| host.is_none_or(|h| r.host == h)) else {
            tx.rollback().await?;
            return Err(GuardError::NotFound(format!("no request {id:?}")));
        };
        if state_of(&request) != State::Pending {
            tx.rollback().await?;
            return Ok(Finish::AlreadyEnded(request));
        }
        set_decision(&mut tx, id, &decision).await?;
        apply(&mut request, &decision);
        append_audit(&mut tx, self.backend, &[audit::entry(RecordKind::Decision, decision.decided_ms, &request, None)])
            .await?;
        self.commit(tx, &[id]).await?;
        Ok(Finish::Ended(request))
    }

    async fn expire_due(&self, now_ms: i64) -> GuardResult<usize> {
        let expired = self.expire_requests(now_ms).await?;
        self.end_grants_where(GrantEnd::Expired, "expires_ms <= $1", &[], now_ms).await?;
        Ok(expired)
    }

    async fn end_grants(&self, host: &str, tree_id: &str, now_ms: i64) -> GuardResult<u32> {
        let ended =
            self.end_grants_where(GrantEnd::TreeExited, "host = $2 AND tree_id = $3", &[host, tree_id], now_ms).await?;
        Ok(u32::try_from(ended).unwrap_or(u32::MAX))
    }

    async fn append_server(&self, records: Vec<AuditRecord>) -> GuardResult<()> {
        if records.is_empty() {
            return Ok(());
        }
        let entries: Vec<AuditEntry> = records.iter().map(audit::server_entry).collect();
        let mut tx = self.begin_write().await?;
        append_audit(&mut tx, self.backend, &entries).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn append_records(&self, host: &str, records: Vec<AuditRecord>, now_ms: i64) -> GuardResult<Ingest> {
        let mut tx = self.begin_write().await?;
        let done = ingest::ingest(&mut tx, self.backend, host, records, now_ms).await?;
        tx.commit().await?;
        Ok(done)
    }

    async fn register_audit_key(&self, host: &str, public_hex: &str, now_ms: i64) -> GuardResult<()> {
        let mut tx = self.begin_write().await?;
        ingest::register_key(&mut tx, host, public_hex, now_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn audit_head(&self) -> GuardResult<AuditHead> {
        // One read transaction, so the head and the keys are of the same moment.
        let mut tx = self.pool.begin().await?;
        let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1").fetch_one(&mut *tx).await?;
        let keys =
            sqlx::query("SELECT host, key_id, public_key, first_seen_ms FROM audit_keys ORDER BY host, first_seen_ms")
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| {
                    Ok(AuditKey {
                        host: r.try_get("host")?,
                        key_id: r.try_get("key_id")?,
                        public_key: r.try_get("public_key")?,
                        first_seen_ms: r.try_get("first_seen_ms")?,
                    })
                })
                .collect::<GuardResult<Vec<_>>>()?;
        tx.commit().await?;
        Ok(AuditHead {
            seq: u64::try_from(head.try_get::<i64, _>("seq")?).unwrap_or(0),
            hash: head.try_get("hash")?,
            keys,
        })
    }

    async fn checkpoint(&self, key: &SigningKey, now_ms: i64) -> GuardResult<Option<u64>> {
        let mut tx = self.begin_write().await?;
        let signed = ingest::checkpoint(&mut tx, self.backend, key, now_ms).await?;
        tx.commit().await?;
        Ok(signed)
    }

    async fn audit(&self, filter: &AuditFilter) -> GuardResult<Vec<AuditEvent>> {
        let limit = if filter.limit == 0 { MAX_ROWS } else { filter.limit.min(MAX_ROWS) } as usize;
        let mut events = Vec::new();
        // Read in pages in seq order: the filters on the record are in the SQL, the caller's
        // host visibility is applied here, and a page's hidden events are made up by the next
        // page, so `limit` counts the events returned. A page is at least `MIN_PAGE` rows, so a
        // small limit behind many hidden rows is not one query per row.
        let page = limit.max(MIN_PAGE).min(MAX_ROWS as usize);
        let mut after_seq: i64 = i64::try_from(filter.after_seq).unwrap_or(i64::MAX);
        loop {
            let mut sql = String::from(
                "SELECT seq, time_ms, host, kind, request_id, json, prev_hash, hash FROM audit \
                 WHERE time_ms >= $1 AND seq > $2",
            );
            let mut n = 2;
            if filter.until_ms.is_some() {
                n += 1;
                sql += &format!(" AND time_ms < ${n}");
            }
            if filter.host.is_some() {
                n += 1;
                sql += &format!(" AND host = ${n}");
            }
            if filter.request_id.is_some() {
                n += 1;
                sql += &format!(" AND request_id = ${n}");
            }
            let mut next = n + 1;
            let (conditions, binds) = filter.search.conditions(self.backend == Backend::Postgres, &mut next);
            sql += &conditions;
            sql += &format!(" ORDER BY seq LIMIT {page}");
            let mut query = sqlx::query(AssertSqlSafe(sql)).bind(filter.since_ms).bind(after_seq);
            if let Some(until) = filter.until_ms {
                query = query.bind(until);
            }
            if let Some(host) = &filter.host {
                query = query.bind(host.clone());
            }
            if let Some(id) = &filter.request_id {
                query = query.bind(id.clone());
            }
            for value in binds {
                query = query.bind(value);
            }
            let rows = query.fetch_all(&self.pool).await?;
            let full_page = rows.len() == page;
            for row in &rows {
                let seq: i64 = row.try_get("seq")?;
                after_seq = seq;
                let event = AuditEvent {
                    seq: u64::try_from(seq).unwrap_or(0),
                    time_ms: row.try_get("time_ms")?,
                    host: row.try_get("host")?,
                    kind: row.try_get("kind")?,
                    request_id: row.try_get("request_id")?,
                    json: row.try_get("json")?,
                    prev_hash: row.try_get("prev_hash")?,
                    hash: row.try_get("hash")?,
                };
                if filter.visible.as_ref().is_none_or(|v| v.sees(&event.host)) {
                    events.push(event);
                    if events.len() == limit {
                        return Ok(events);
                    }
                }
            }
            if !full_page {
                return Ok(events);
            }
        }
    }

    async fn register_host(&self, info: HostInfo) -> GuardResult<Option<HashMap<String, String>>> {
        let before = self.host_policies(&info.host).await?;
        sqlx::query(
            "INSERT INTO hosts (host, agent_version, kernel, policies, seen_ms, policy_hashes) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (host) DO UPDATE SET agent_version = excluded.agent_version, kernel = excluded.kernel, \
             policies = excluded.policies, seen_ms = excluded.seen_ms, policy_hashes = excluded.policy_hashes",
        )
        .bind(info.host)
        .bind(info.agent_version)
        .bind(info.kernel)
        .bind(serde_json::to_string(&info.policies).unwrap_or_else(|_| "[]".into()))
        .bind(info.seen_ms)
        .bind(serde_json::to_string(&info.policy_hashes).unwrap_or_else(|_| "{}".into()))
        .execute(&self.pool)
        .await?;
        Ok(before)
    }

    async fn host_policies(&self, host: &str) -> GuardResult<Option<HashMap<String, String>>> {
        let row = sqlx::query("SELECT policy_hashes FROM hosts WHERE host = $1")
            .bind(host.to_string())
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let text: String = row.try_get("policy_hashes")?;
        let hashes = serde_json::from_str(&text)
            .map_err(|_| GuardError::Internal(format!("host {host}: bad policy_hashes in the database")))?;
        Ok(Some(hashes))
    }

    async fn sink_position(&self, name: &str) -> GuardResult<u64> {
        let row = sqlx::query("SELECT seq FROM sink_positions WHERE name = $1")
            .bind(name.to_string())
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(0) };
        let seq: i64 = row.try_get("seq")?;
        Ok(u64::try_from(seq).unwrap_or(0))
    }

    async fn set_sink_position(&self, name: &str, seq: u64) -> GuardResult<()> {
        sqlx::query(
            "INSERT INTO sink_positions (name, seq) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET seq = excluded.seq",
        )
        .bind(name.to_string())
        .bind(i64::try_from(seq).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn revoke_certificate(&self, revoked: &crate::revocation::Revoked) -> GuardResult<bool> {
        let mut tx = self.begin_write().await?;
        let new = super::revocations::insert(&mut tx, self.backend, revoked).await?;
        tx.commit().await?;
        Ok(new)
    }

    async fn revoked_certificates(&self) -> GuardResult<Vec<crate::revocation::Revoked>> {
        super::revocations::all(&self.pool).await
    }
}
