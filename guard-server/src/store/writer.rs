//! The group-commit writer. Submissions, the hot path, go through one writer task per store
//! that commits them in groups: whatever arrived while the previous transaction ran is written
//! in the next one, with multi-row statements. The durability of each submission is the same
//! as with one transaction each (it is answered after its commit), the audit chain stays one
//! gapless sequence in arrival order, and the cost of a commit (the fsync, the write lock, the
//! round trips to PostgreSQL) is shared by the whole group. Live grants are matched here too.
use super::chain::append_audit_refs;
use super::rows::{operation_to_json, params, state_label};
use super::sql::{apply, begin_write, commit, state_of, Backend, Tx};
use super::{grant_argv, Decision, NewRequest};
use crate::audit::{self, AuditEntry};
use crate::error::GuardResult;
use crate::fanout::Fanout;
use guard_api::RecordKind;
use guard_proto::v1::{Request, State};
use sqlx::{AnyPool, AssertSqlSafe, Row};
use std::collections::{BTreeSet, HashSet};
use tokio::sync::{mpsc, oneshot};

/// Most submissions one group commit takes: at 18 bound values a request and 8 an audit
/// row (two rows a request), far below SQLite's 32766 and PostgreSQL's 65535 parameters.
const MAX_BATCH: usize = 256;
/// Submissions waiting for the writer before callers wait to hand theirs in.
pub const QUEUE: usize = 4096;
/// Bound values of one row of `requests`.
const REQUEST_VALUES: usize = 18;

/// One submission handed to the writer.
pub struct SubmitJob {
    pub prepared: Prepared,
    pub reply: oneshot::Sender<GuardResult<Submitted>>,
}

/// A submission made ready by its caller (serialization and audit JSON are CPU the callers'
/// tasks spend in parallel), as if no grant covered it; the writer redoes it if one does.
pub struct Prepared {
    pub hold_key: Option<String>,
    pub request: Request,
    operation_json: String,
    eligible_json: String,
    flags_json: String,
    entries: Vec<AuditEntry>,
}

pub enum Submitted {
    Created(Box<Request>),
    /// (host, hold_key) already names a request, committed.
    Exists,
}

/// The audit rows of a new request: its creation and, when decided at once, its decision.
pub fn submit_entries(request: &Request) -> Vec<AuditEntry> {
    let mut entries = vec![audit::entry(RecordKind::Request, request.created_ms, request, None)];
    if state_of(request) != State::Pending {
        entries.push(audit::entry(RecordKind::Decision, request.created_ms, request, None));
    }
    entries
}

pub fn prepare(new: NewRequest) -> Prepared {
    let mut request = new.pending();
    if let Some(d) = &new.auto {
        apply(&mut request, d);
    }
    Prepared {
        hold_key: new.hold_key,
        operation_json: operation_to_json(request.operation.as_ref().unwrap_or(&Default::default())),
        eligible_json: serde_json::to_string(&request.eligible_approvers).unwrap_or_else(|_| "[]".into()),
        flags_json: serde_json::to_string(&request.flags).unwrap_or_else(|_| "[]".into()),
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
    access: String,
    argv: String,
    expires_ms: i64,
}

/// The group-commit writer: one task per store, the only one that creates requests.
pub struct Writer {
    pub pool: AnyPool,
    pub backend: Backend,
    pub fanout: Fanout,
}

impl Writer {
    pub async fn run(self, mut rx: mpsc::Receiver<SubmitJob>) {
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
             expires_ms, decided_ms, approvals_required, eligible_approvers, reason, decided_by, comment, flags) \
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
                .bind(r.comment.clone())
                .bind(p.flags_json.clone());
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
            "SELECT id, approver, host, tree_id, hook, object, access, argv, expires_ms FROM grants \
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
                    access: row.try_get("access")?,
                    argv: row.try_get("argv")?,
                    expires_ms: row.try_get("expires_ms")?,
                })
            })
            .collect::<GuardResult<Vec<_>>>()?;
        for job in jobs.iter_mut() {
            let r = &mut job.prepared.request;
            let Some(op) = r.operation.as_ref().filter(|op| !op.tree_id.is_empty()) else {
                continue;
            };
            // Exactly what the approver saw: the access, and for an exec the argv (an exec
            // with a cut-short argv has no binding and meets no grant).
            let Some(argv) = grant_argv(op) else { continue };
            let best = grants
                .iter()
                .filter(|g| {
                    g.host == r.host
                        && g.tree_id == op.tree_id
                        && g.hook == op.hook
                        && g.object == op.object
                        && g.access == op.access
                        && g.argv == argv
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
