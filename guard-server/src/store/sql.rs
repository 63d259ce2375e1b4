//! The SQL shared by both backends. Every write runs in one transaction that first takes
//! the lock it needs (SQLite: `BEGIN IMMEDIATE`, the database write lock; PostgreSQL: the
//! request's row with `FOR UPDATE`), then reads, judges and writes, so the decision and the
//! rows it is based on cannot drift apart, whatever the number of replicas.
//!
//! Submissions, the hot path, go through one writer task per store that commits them in
//! groups ("group commit"): whatever arrived while the previous transaction ran is written
//! in the next one, with multi-row statements. The durability of each submission is the
//! same as with one transaction each (it is answered after its commit), the audit chain
//! stays one gapless sequence in arrival order, and the cost of a commit (the fsync, the
//! write lock, the round trips to PostgreSQL) is shared by the whole group.
use super::codec::{operation_from_json, operation_to_json, state_from_label, state_label};
use super::{AuditFilter, Decision, Finish, HostInfo, Judge, ListFilter, NewRequest, Store};
use crate::audit::{self, AuditEntry, KIND_DECISION, KIND_RECORD, KIND_REQUEST, KIND_REVIEW};
use crate::error::{GuardError, GuardResult};
use crate::fanout::Fanout;
use crate::ids;
use async_trait::async_trait;
use guard_proto::v1::{AuditEvent, Request, Review, State};
use sqlx::any::AnyRow;
use sqlx::{Any, AssertSqlSafe, Row, Transaction};
use sqlx::{AnyConnection, AnyPool};
use std::collections::{BTreeSet, HashMap, HashSet};
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct SqlStore {
    pool: AnyPool,
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

/// Most submissions one group commit takes: at 17 bound values a request and 8 an audit
/// row (two rows a request), far below SQLite's 32766 and PostgreSQL's 65535 parameters.
const MAX_BATCH: usize = 256;
/// Submissions waiting for the writer before callers wait to hand theirs in.
const QUEUE: usize = 4096;
/// Audit rows in one INSERT.
const AUDIT_ROWS_PER_INSERT: usize = 512;
/// Bound values of one row of `requests`.
const REQUEST_VALUES: usize = 17;

type Tx = Transaction<'static, Any>;

const REQUEST_COLUMNS: &str = "id, host, operation, state, created_ms, expires_ms, decided_ms, \
     approvals_required, eligible_approvers, reason, decided_by, comment";

/// Most rows a list or an audit query returns in one call.
const MAX_ROWS: u32 = 10_000;

/// The schema, in the SQL both backends accept (TEXT, BIGINT). Times are Unix ms.
pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS requests (
        id TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        hold_key TEXT,
        operation TEXT NOT NULL,
        hook TEXT NOT NULL,
        object TEXT NOT NULL,
        rule TEXT NOT NULL,
        tree_id TEXT NOT NULL,
        state TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        expires_ms BIGINT NOT NULL,
        decided_ms BIGINT NOT NULL DEFAULT 0,
        approvals_required BIGINT NOT NULL,
        eligible_approvers TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        decided_by TEXT NOT NULL DEFAULT '',
        comment TEXT NOT NULL DEFAULT '',
        UNIQUE (host, hold_key)
    )",
    "CREATE INDEX IF NOT EXISTS requests_pending ON requests (state, expires_ms)",
    "CREATE INDEX IF NOT EXISTS requests_host ON requests (host, created_ms)",
    "CREATE TABLE IF NOT EXISTS reviews (
        request_id TEXT NOT NULL REFERENCES requests (id),
        approver TEXT NOT NULL,
        approve BIGINT NOT NULL,
        comment TEXT NOT NULL,
        time_ms BIGINT NOT NULL,
        grant_seconds BIGINT NOT NULL,
        PRIMARY KEY (request_id, approver)
    )",
    "CREATE TABLE IF NOT EXISTS grants (
        id TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        tree_id TEXT NOT NULL,
        hook TEXT NOT NULL,
        object TEXT NOT NULL,
        approver TEXT NOT NULL,
        request_id TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        expires_ms BIGINT NOT NULL,
        ended_ms BIGINT
    )",
    "CREATE INDEX IF NOT EXISTS grants_match ON grants (host, tree_id, hook, object)",
    // Append-only. `hash` = SHA-256(prev_hash || json): a chain a verifier can walk later.
    "CREATE TABLE IF NOT EXISTS audit (
        seq BIGINT PRIMARY KEY,
        time_ms BIGINT NOT NULL,
        host TEXT NOT NULL,
        kind TEXT NOT NULL,
        request_id TEXT NOT NULL,
        json TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS audit_time ON audit (time_ms)",
    "CREATE INDEX IF NOT EXISTS audit_request ON audit (request_id)",
    // The chain's head in one row: appenders serialize on it, so seq has no gaps and every
    // row links to the one before it even with several replicas.
    "CREATE TABLE IF NOT EXISTS audit_head (id BIGINT PRIMARY KEY, seq BIGINT NOT NULL, hash TEXT NOT NULL)",
    "INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '') ON CONFLICT DO NOTHING",
    "CREATE TABLE IF NOT EXISTS hosts (
        host TEXT PRIMARY KEY,
        agent_version TEXT NOT NULL,
        kernel TEXT NOT NULL,
        policies TEXT NOT NULL,
        seen_ms BIGINT NOT NULL
    )",
];

fn request_from_row(row: &AnyRow) -> GuardResult<Request> {
    let id: String = row.try_get("id")?;
    let corrupt = |what: &str| GuardError::Internal(format!("request {id}: bad {what} in the database"));
    let operation: String = row.try_get("operation")?;
    let operation = operation_from_json(&operation).map_err(|_| corrupt("operation"))?;
    let state: String = row.try_get("state")?;
    let state = state_from_label(&state).ok_or_else(|| corrupt("state"))?;
    let eligible: String = row.try_get("eligible_approvers")?;
    let eligible: Vec<String> = serde_json::from_str(&eligible).map_err(|_| corrupt("eligible_approvers"))?;
    let approvals: i64 = row.try_get("approvals_required")?;
    Ok(Request {
        host: row.try_get("host")?,
        operation: Some(operation),
        state: state as i32,
        created_ms: row.try_get("created_ms")?,
        expires_ms: row.try_get("expires_ms")?,
        decided_ms: row.try_get("decided_ms")?,
        approvals_required: u32::try_from(approvals).map_err(|_| corrupt("approvals_required"))?,
        eligible_approvers: eligible,
        reviews: Vec::new(),
        reason: row.try_get("reason")?,
        decided_by: row.try_get("decided_by")?,
        comment: row.try_get("comment")?,
        id,
    })
}

fn review_from_row(row: &AnyRow) -> GuardResult<(String, Review)> {
    let approve: i64 = row.try_get("approve")?;
    let grant_seconds: i64 = row.try_get("grant_seconds")?;
    Ok((
        row.try_get("request_id")?,
        Review {
            approver: row.try_get("approver")?,
            approve: approve != 0,
            comment: row.try_get("comment")?,
            time_ms: row.try_get("time_ms")?,
            grant_seconds: u64::try_from(grant_seconds).unwrap_or(0),
        },
    ))
}

fn state_of(request: &Request) -> State {
    State::try_from(request.state).unwrap_or(State::Unspecified)
}

fn apply(request: &mut Request, decision: &Decision) {
    request.state = decision.state as i32;
    request.reason = decision.reason.clone();
    request.decided_by = decision.decided_by.clone();
    request.comment = decision.comment.clone();
    request.decided_ms = decision.decided_ms;
}

/// `$1, $2, ...` from `first` for `n` values.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// Placeholders for the long generated statements (multi-row inserts): SQLite gets
/// anonymous `?`, numbered in the order they appear, because sqlx looks each named
/// parameter up by a linear scan (quadratic in their number); PostgreSQL needs `$N`.
/// A statement uses one style only, so `first` must follow the `?`s before it.
fn params(backend: Backend, first: usize, n: usize) -> String {
    match backend {
        Backend::Sqlite => vec!["?"; n].join(", "),
        Backend::Postgres => placeholders(first, n),
    }
}

async fn load_reviews(conn: &mut AnyConnection, requests: &mut [Request]) -> GuardResult<()> {
    if requests.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "SELECT request_id, approver, approve, comment, time_ms, grant_seconds FROM reviews \
         WHERE request_id IN ({}) ORDER BY time_ms, approver",
        placeholders(1, requests.len())
    );
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for r in requests.iter() {
        query = query.bind(r.id.clone());
    }
    let mut by_id: HashMap<String, Vec<Review>> = HashMap::new();
    for row in query.fetch_all(&mut *conn).await? {
        let (id, review) = review_from_row(&row)?;
        by_id.entry(id).or_default().push(review);
    }
    for r in requests.iter_mut() {
        r.reviews = by_id.remove(&r.id).unwrap_or_default();
    }
    Ok(())
}

async fn load_request(conn: &mut AnyConnection, id: &str) -> GuardResult<Option<Request>> {
    let sql = format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE id = $1");
    let Some(row) = sqlx::query(AssertSqlSafe(sql)).bind(id.to_string()).fetch_optional(&mut *conn).await? else {
        return Ok(None);
    };
    let mut requests = [request_from_row(&row)?];
    load_reviews(conn, &mut requests).await?;
    let [request] = requests;
    Ok(Some(request))
}

/// Appends `entries` to the audit chain, in order, inside `tx`.
async fn append_audit(tx: &mut Tx, backend: Backend, entries: &[AuditEntry]) -> GuardResult<()> {
    append_audit_refs(tx, backend, &entries.iter().collect::<Vec<_>>()).await
}

async fn append_audit_refs(tx: &mut Tx, backend: Backend, entries: &[&AuditEntry]) -> GuardResult<()> {
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
            let next = audit::chain_hash(&hash, &e.json);
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

async fn begin_write(pool: &AnyPool, backend: Backend) -> GuardResult<Tx> {
    Ok(match backend {
        // Take the write lock now rather than on the first write, so a transaction that
        // read first never fails with SQLITE_BUSY on upgrade (busy_timeout waits here).
        Backend::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await?,
        Backend::Postgres => pool.begin().await?,
    })
}

/// Commits and tells every stream (here, and on the other replicas) which requests changed.
async fn commit(mut tx: Tx, backend: Backend, fanout: &Fanout, changed: &[&str]) -> GuardResult<()> {
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

/// One submission handed to the writer.
struct SubmitJob {
    prepared: Prepared,
    reply: oneshot::Sender<GuardResult<Submitted>>,
}

/// A submission made ready by its caller (serialization and audit JSON are CPU the callers'
/// tasks spend in parallel), as if no grant covered it; the writer redoes it if one does.
struct Prepared {
    hold_key: Option<String>,
    request: Request,
    operation_json: String,
    eligible_json: String,
    entries: Vec<AuditEntry>,
}

enum Submitted {
    Created(Box<Request>),
    /// (host, hold_key) already names a request, committed.
    Exists,
}

/// The audit rows of a new request: its creation and, when decided at once, its decision.
fn submit_entries(request: &Request) -> Vec<AuditEntry> {
    let mut entries = vec![audit::entry(KIND_REQUEST, request.created_ms, request, None)];
    if state_of(request) != State::Pending {
        entries.push(audit::entry(KIND_DECISION, request.created_ms, request, None));
    }
    entries
}

fn prepare(new: NewRequest) -> Prepared {
    let mut request = Request {
        id: new.id,
        host: new.host,
        operation: Some(new.operation),
        state: State::Pending as i32,
        created_ms: new.created_ms,
        expires_ms: new.expires_ms,
        decided_ms: 0,
        approvals_required: new.approvals_required,
        eligible_approvers: new.eligible_approvers,
        reviews: Vec::new(),
        reason: String::new(),
        decided_by: String::new(),
        comment: String::new(),
    };
    if let Some(d) = &new.auto {
        apply(&mut request, d);
    }
    Prepared {
        hold_key: new.hold_key,
        operation_json: operation_to_json(request.operation.as_ref().unwrap_or(&Default::default())),
        eligible_json: serde_json::to_string(&request.eligible_approvers).unwrap_or_else(|_| "[]".into()),
        entries: submit_entries(&request),
        request,
    }
}

/// A live grant, as the writer matches it against the submissions of a group.
struct LiveGrant {
    id: String,
    approver: String,
    host: String,
    tree_id: String,
    hook: String,
    object: String,
    expires_ms: i64,
}

/// The group-commit writer: one task per store, the only one that creates requests.
struct Writer {
    pool: AnyPool,
    backend: Backend,
    fanout: Fanout,
}

impl Writer {
    async fn run(self, mut rx: mpsc::Receiver<SubmitJob>) {
        let mut jobs = Vec::with_capacity(MAX_BATCH);
        // No waiting for a group to fill: what queued during the last commit is the group.
        while rx.recv_many(&mut jobs, MAX_BATCH).await > 0 {
            self.group_commit(std::mem::take(&mut jobs)).await;
        }
    }

    async fn group_commit(&self, jobs: Vec<SubmitJob>) {
        // The first submission of a (host, hold_key) in the group is inserted; a later one is
        // the same request, answered once it is committed.
        let mut keys = HashSet::new();
        let (mut fresh, mut again) = (Vec::with_capacity(jobs.len()), Vec::new());
        for job in jobs {
            let first = match &job.prepared.hold_key {
                Some(key) => keys.insert((job.prepared.request.host.clone(), key.clone())),
                None => true,
            };
            if first {
                fresh.push(job);
            } else {
                again.push(job);
            }
        }
        match self.insert(&mut fresh).await {
            Ok(inserted) => {
                for (job, created) in fresh.into_iter().zip(inserted) {
                    let answer =
                        if created { Submitted::Created(Box::new(job.prepared.request)) } else { Submitted::Exists };
                    let _ = job.reply.send(Ok(answer));
                }
                for job in again {
                    let _ = job.reply.send(Ok(Submitted::Exists));
                }
            }
            Err(e) => {
                for job in fresh.into_iter().chain(again) {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// One transaction for the group; which of `jobs` were created (the others' hold keys
    /// were taken, possibly by another replica that committed first).
    async fn insert(&self, jobs: &mut [SubmitJob]) -> GuardResult<Vec<bool>> {
        let mut tx = begin_write(&self.pool, self.backend).await?;
        self.apply_grants(&mut tx, jobs).await?;

        let rows = (0..jobs.len())
            .map(|i| format!("({})", params(self.backend, i * REQUEST_VALUES + 1, REQUEST_VALUES)))
            .collect::<Vec<_>>();
        let sql = format!(
            "INSERT INTO requests (id, host, hold_key, operation, hook, object, rule, tree_id, state, created_ms, \
             expires_ms, decided_ms, approvals_required, eligible_approvers, reason, decided_by, comment) \
             VALUES {} ON CONFLICT (host, hold_key) DO NOTHING RETURNING id",
            rows.join(", ")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for job in jobs.iter() {
            let p = &job.prepared;
            let r = &p.request;
            let op = r.operation.clone().unwrap_or_default();
            query = query
                .bind(r.id.clone())
                .bind(r.host.clone())
                .bind(p.hold_key.clone())
                .bind(p.operation_json.clone())
                .bind(op.hook)
                .bind(op.object)
                .bind(op.rule)
                .bind(op.tree_id)
                .bind(state_label(state_of(r)).to_string())
                .bind(r.created_ms)
                .bind(r.expires_ms)
                .bind(r.decided_ms)
                .bind(i64::from(r.approvals_required))
                .bind(p.eligible_json.clone())
                .bind(r.reason.clone())
                .bind(r.decided_by.clone())
                .bind(r.comment.clone());
        }
        let mut created = HashSet::with_capacity(jobs.len());
        for row in query.fetch_all(&mut *tx).await? {
            created.insert(row.try_get::<String, _>("id")?);
        }
        let inserted: Vec<bool> = jobs.iter().map(|j| created.contains(&j.prepared.request.id)).collect();
        let entries: Vec<&AuditEntry> = jobs
            .iter()
            .zip(&inserted)
            .filter(|(_, created)| **created)
            .flat_map(|(j, _)| j.prepared.entries.iter())
            .collect();
        append_audit_refs(&mut tx, self.backend, &entries).await?;
        let changed: Vec<&str> = jobs
            .iter()
            .zip(&inserted)
            .filter(|(_, created)| **created)
            .map(|(j, _)| j.prepared.request.id.as_str())
            .collect();
        commit(tx, self.backend, &self.fanout, &changed).await?;
        Ok(inserted)
    }

    /// A live grant for the very operation in the very tree decides a submission at once;
    /// one query finds them for the whole group.
    async fn apply_grants(&self, tx: &mut Tx, jobs: &mut [SubmitJob]) -> GuardResult<()> {
        let scoped = || {
            jobs.iter()
                .map(|j| &j.prepared.request)
                .filter(|r| r.operation.as_ref().is_some_and(|op| !op.tree_id.is_empty()))
        };
        let hosts: BTreeSet<&str> = scoped().map(|r| r.host.as_str()).collect();
        if hosts.is_empty() {
            return Ok(());
        }
        let trees: BTreeSet<&str> =
            scoped().filter_map(|r| r.operation.as_ref()).map(|op| op.tree_id.as_str()).collect();
        let since = scoped().map(|r| r.created_ms).min().unwrap_or_default();
        let sql = format!(
            "SELECT id, approver, host, tree_id, hook, object, expires_ms FROM grants \
             WHERE host IN ({}) AND tree_id IN ({}) AND ended_ms IS NULL AND expires_ms > {}",
            params(self.backend, 1, hosts.len()),
            params(self.backend, hosts.len() + 1, trees.len()),
            params(self.backend, hosts.len() + trees.len() + 1, 1)
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for h in &hosts {
            query = query.bind(h.to_string());
        }
        for t in &trees {
            query = query.bind(t.to_string());
        }
        let rows = query.bind(since).fetch_all(&mut **tx).await?;
        if rows.is_empty() {
            return Ok(());
        }
        let grants = rows
            .iter()
            .map(|row| {
                Ok(LiveGrant {
                    id: row.try_get("id")?,
                    approver: row.try_get("approver")?,
                    host: row.try_get("host")?,
                    tree_id: row.try_get("tree_id")?,
                    hook: row.try_get("hook")?,
                    object: row.try_get("object")?,
                    expires_ms: row.try_get("expires_ms")?,
                })
            })
            .collect::<GuardResult<Vec<_>>>()?;
        for job in jobs.iter_mut() {
            let r = &mut job.prepared.request;
            let Some(op) = r.operation.as_ref().filter(|op| !op.tree_id.is_empty()) else {
                continue;
            };
            let best = grants
                .iter()
                .filter(|g| {
                    g.host == r.host
                        && g.tree_id == op.tree_id
                        && g.hook == op.hook
                        && g.object == op.object
                        && g.expires_ms > r.created_ms
                })
                .max_by_key(|g| g.expires_ms);
            if let Some(g) = best {
                let decision = Decision {
                    state: State::Approved,
                    reason: "grant".into(),
                    decided_by: g.approver.clone(),
                    comment: format!("grant {}", g.id),
                    decided_ms: r.created_ms,
                };
                apply(r, &decision);
                job.prepared.entries = submit_entries(r);
            }
        }
        Ok(())
    }
}

impl SqlStore {
    /// Starts the group-commit writer: call inside the runtime.
    pub fn new(pool: AnyPool, backend: Backend, fanout: Fanout) -> SqlStore {
        let (submits, rx) = mpsc::channel(QUEUE);
        let writer = Writer { pool: pool.clone(), backend, fanout: fanout.clone() };
        let tasks = vec![tokio::spawn(writer.run(rx))];
        SqlStore { pool, backend, fanout, submits, tasks }
    }

    pub fn with_task(mut self, task: tokio::task::JoinHandle<()>) -> SqlStore {
        self.tasks.push(task);
        self
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
            append_audit(tx, self.backend, &[audit::entry(KIND_DECISION, now_ms, request, None)]).await?;
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
            "INSERT INTO reviews (request_id, approver, approve, comment, time_ms, grant_seconds) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id.to_string())
        .bind(review.approver.clone())
        .bind(i64::from(review.approve))
        .bind(review.comment.clone())
        .bind(review.time_ms)
        .bind(i64::try_from(review.grant_seconds).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
        request.reviews.push(review.clone());
        let mut entries = vec![audit::entry(KIND_REVIEW, now_ms, &request, Some(&review))];
        if let Some(decision) = &effect.decision {
            if !set_decision(&mut tx, id, decision).await? {
                // Cannot happen under the lock; refuse rather than record a review twice.
                tx.rollback().await?;
                return Err(GuardError::Internal(format!("request {id} changed under its lock")));
            }
            apply(&mut request, decision);
            entries.push(audit::entry(KIND_DECISION, now_ms, &request, None));
        }
        if let (Some(until), Some(op)) = (effect.grant_until_ms, &request.operation) {
            let grant_id = ids::new_request_id().map_err(|_| GuardError::Internal("no randomness".into()))?;
            sqlx::query(
                "INSERT INTO grants (id, host, tree_id, hook, object, approver, request_id, created_ms, expires_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(grant_id)
            .bind(request.host.clone())
            .bind(op.tree_id.clone())
            .bind(op.hook.clone())
            .bind(op.object.clone())
            .bind(review.approver.clone())
            .bind(id.to_string())
            .bind(now_ms)
            .bind(until)
            .execute(&mut *tx)
            .await?;
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
        append_audit(&mut tx, self.backend, &[audit::entry(KIND_DECISION, decision.decided_ms, &request, None)])
            .await?;
        self.commit(tx, &[id]).await?;
        Ok(Finish::Ended(request))
    }

    async fn expire_due(&self, now_ms: i64) -> GuardResult<usize> {
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
        let entries: Vec<AuditEntry> = requests.iter().map(|r| audit::entry(KIND_DECISION, now_ms, r, None)).collect();
        append_audit(&mut tx, self.backend, &entries).await?;
        let ids: Vec<&str> = requests.iter().map(|r| r.id.as_str()).collect();
        self.commit(tx, &ids).await?;
        Ok(requests.len())
    }

    async fn end_grants(&self, host: &str, tree_id: &str, now_ms: i64) -> GuardResult<u32> {
        let done = sqlx::query("UPDATE grants SET ended_ms = $1 WHERE host = $2 AND tree_id = $3 AND ended_ms IS NULL")
            .bind(now_ms)
            .bind(host.to_string())
            .bind(tree_id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(u32::try_from(done.rows_affected()).unwrap_or(u32::MAX))
    }

    async fn append_records(&self, host: &str, records: Vec<String>, now_ms: i64) -> GuardResult<u32> {
        let n = records.len();
        let entries: Vec<AuditEntry> = records
            .into_iter()
            .map(|json| AuditEntry {
                time_ms: now_ms,
                host: host.to_string(),
                kind: KIND_RECORD,
                request_id: String::new(),
                json,
            })
            .collect();
        let mut tx = self.begin_write().await?;
        append_audit(&mut tx, self.backend, &entries).await?;
        tx.commit().await?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    async fn audit(&self, filter: &AuditFilter) -> GuardResult<Vec<AuditEvent>> {
        let mut sql = String::from("SELECT seq, time_ms, host, kind, request_id, json FROM audit WHERE time_ms >= $1");
        let mut n = 1;
        if filter.host.is_some() {
            n += 1;
            sql += &format!(" AND host = ${n}");
        }
        if filter.request_id.is_some() {
            n += 1;
            sql += &format!(" AND request_id = ${n}");
        }
        let limit = if filter.limit == 0 { MAX_ROWS } else { filter.limit.min(MAX_ROWS) };
        sql += &format!(" ORDER BY seq LIMIT {limit}");
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(filter.since_ms);
        if let Some(host) = &filter.host {
            query = query.bind(host.clone());
        }
        if let Some(id) = &filter.request_id {
            query = query.bind(id.clone());
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                let seq: i64 = row.try_get("seq")?;
                Ok(AuditEvent {
                    seq: u64::try_from(seq).unwrap_or(0),
                    time_ms: row.try_get("time_ms")?,
                    host: row.try_get("host")?,
                    kind: row.try_get("kind")?,
                    request_id: row.try_get("request_id")?,
                    json: row.try_get("json")?,
                })
            })
            .collect()
    }

    async fn register_host(&self, info: HostInfo) -> GuardResult<()> {
        sqlx::query(
            "INSERT INTO hosts (host, agent_version, kernel, policies, seen_ms) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (host) DO UPDATE SET agent_version = excluded.agent_version, kernel = excluded.kernel, \
             policies = excluded.policies, seen_ms = excluded.seen_ms",
        )
        .bind(info.host)
        .bind(info.agent_version)
        .bind(info.kernel)
        .bind(serde_json::to_string(&info.policies).unwrap_or_else(|_| "[]".into()))
        .bind(info.seen_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
