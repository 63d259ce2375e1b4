//! Storage of requests, reviews, grants, hosts and the audit trail, behind one trait so the
//! services do not know which database they run on. Each method is one transaction: the
//! rules of the lifecycle are applied inside it (see `Judge`), so several replicas on one
//! PostgreSQL never decide the same request twice.
//!
//! Both backends share the SQL (sqlx's `Any` driver, `$N` placeholders that SQLite and
//! PostgreSQL both accept) and the schema's migrations (`schema.rs`, `migrations/`):
//! `sql.rs` implements the trait, `writer.rs` is the group-commit writer of submissions,
//! `chain.rs` the audit hash chain, `rows.rs` rows <-> messages. `sqlite.rs` and
//! `postgres.rs` hold what differs: opening, locking, and change notification across replicas.
pub mod accounts;
mod chain;
pub mod chat;
pub mod grants;
pub mod ingest;
pub mod passkeys;
pub mod postgres;
pub mod revocations;
mod rows;
pub mod schema;
mod sql;
pub mod sqlite;
mod writer;

use crate::error::GuardResult;
use crate::fanout::Fanout;
use async_trait::async_trait;
use guard_api::AuditRecord;
use guard_proto::v1::{AuditEvent, AuditHead, Operation, Request, Review, State};
use std::collections::HashMap;
use std::sync::Arc;

pub use sql::SqlStore;

/// The hook of an exec, whose grants also name the argv.
const EXEC_HOOK: &str = "bprm_check_security";

/// What a grant binds besides host, tree, hook and object: the acting process's argv for an
/// exec (as JSON, so that `["a b"]` and `["a", "b"]` differ), empty for anything else. `None`
/// for an exec whose argv was cut short: the approver did not see all of it, so no grant
/// covers such an exec (it asks every time).
pub fn grant_argv(op: &Operation) -> Option<String> {
    if op.hook != EXEC_HOOK {
        return Some(String::new());
    }
    let acting = op.ancestry.first()?;
    if acting.argv_truncated {
        return None;
    }
    serde_json::to_string(&acting.argv).ok()
}

/// A request to create, as the lifecycle planned it.
#[derive(Debug, Clone)]
pub struct NewRequest {
    pub id: String,
    pub host: String,
    /// `None`: no idempotency key, every submit creates a request.
    pub hold_key: Option<String>,
    pub operation: Operation,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub approvals_required: u32,
    pub eligible_approvers: Vec<String>,
    /// Decision of an `[[auto]]` rule, applied when no grant covers the operation.
    pub auto: Option<Decision>,
    /// What the server noticed (`Request.flags`).
    pub flags: Vec<String>,
}

impl NewRequest {
    /// The request as it is created: pending, no reviews (an `[[auto]]` decision is applied
    /// by the writer, after grants are checked).
    pub fn pending(&self) -> Request {
        Request {
            id: self.id.clone(),
            host: self.host.clone(),
            operation: Some(self.operation.clone()),
            state: State::Pending as i32,
            created_ms: self.created_ms,
            expires_ms: self.expires_ms,
            approvals_required: self.approvals_required,
            eligible_approvers: self.eligible_approvers.clone(),
            flags: self.flags.clone(),
            ..Default::default()
        }
    }
}

/// How a request ends.
#[derive(Debug, Clone)]
pub struct Decision {
    pub state: State,
    pub reason: String,
    pub decided_by: String,
    pub comment: String,
    pub decided_ms: i64,
}

/// What a review does, decided by the lifecycle from the request as it is in the
/// transaction.
#[derive(Debug, Clone)]
pub struct ReviewEffect {
    pub decision: Option<Decision>,
    /// A grant for the same (host, tree, hook, object) until this time.
    pub grant_until_ms: Option<i64>,
}

/// The lifecycle's rule for one review, run inside the store's transaction on the locked row.
pub type Judge = dyn Fn(&Request) -> GuardResult<ReviewEffect> + Send + Sync;

/// Result of ending a request from outside a review (withdraw, cancel).
#[derive(Debug)]
pub enum Finish {
    Ended(Request),
    /// It had already ended; here it is as it is.
    AlreadyEnded(Request),
}

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub states: Vec<State>,
    pub host: Option<String>,
    pub limit: u32,
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub since_ms: i64,
    /// Only events before this time (exclusive).
    pub until_ms: Option<i64>,
    pub host: Option<String>,
    pub request_id: Option<String>,
    /// Only rows after this seq (0: from the first).
    pub after_seq: u64,
    /// Filters on the record (decision, rule, approver, tree).
    pub search: crate::search::Search,
    /// Only the events of hosts this says the caller sees; None: every host.
    pub visible: Option<crate::search::Visible>,
    /// Most events returned (after every filter); 0: the store's maximum.
    pub limit: u32,
}

#[derive(Debug, Clone, Default)]
pub struct HostInfo {
    pub host: String,
    pub agent_version: String,
    pub kernel: String,
    pub policies: Vec<String>,
    /// Policy name -> "sha256:<hex>".
    pub policy_hashes: HashMap<String, String>,
    pub seen_ms: i64,
}

/// Each channel's own rows are a trait of their own, in their own file: the console's accounts
/// and sessions and its reads of grants (`accounts.rs`, `grants.rs`), approvers' passkeys
/// (`passkeys.rs`), the chat channels' cards (`chat.rs`); so every store has them.
#[async_trait]
pub trait Store:
    accounts::AccountStore + grants::GrantStore + passkeys::PasskeyStore + chat::ChatStore + Send + Sync
{
    /// Creates the request (decided at once when a grant or the auto rule covers it), or
    /// returns the existing one with the same (host, hold_key).
    async fn submit(&self, new: NewRequest) -> GuardResult<Request>;
    /// The request, expired first if it is pending past its time.
    async fn get(&self, id: &str, now_ms: i64) -> GuardResult<Option<Request>>;
    async fn list(&self, filter: &ListFilter) -> GuardResult<Vec<Request>>;
    /// Records `review` if `judge` accepts it on the locked request. NOT_FOUND when absent.
    async fn review(&self, id: &str, review: Review, judge: &Judge) -> GuardResult<Request>;
    /// Ends a pending request; `host` restricts it to that host's requests (else NOT_FOUND).
    async fn finish(&self, id: &str, host: Option<&str>, decision: Decision) -> GuardResult<Finish>;
    /// Expires every pending request past its time (returns how many), and ends the grants past
    /// theirs, each with its record.
    async fn expire_due(&self, now_ms: i64) -> GuardResult<usize>;
    /// Ends the host's grants for a tree, each with its record; returns how many.
    async fn end_grants(&self, host: &str, tree_id: &str, now_ms: i64) -> GuardResult<u32>;
    /// Appends records the server wrote itself (refused attempts, policy registrations) to the
    /// audit trail, in their own transaction.
    async fn append_server(&self, records: Vec<AuditRecord>) -> GuardResult<()>;
    /// Stores the chained records `host`'s agent reported, each once, in chain order (see
    /// [`ingest`]); the service has checked each one's host and hash.
    async fn append_records(&self, host: &str, records: Vec<AuditRecord>, now_ms: i64) -> GuardResult<ingest::Ingest>;
    /// Keeps `public_hex` among the keys that sign `host`'s checkpoints ("": the server's).
    async fn register_audit_key(&self, host: &str, public_hex: &str, now_ms: i64) -> GuardResult<()>;
    /// The chain's head (seq, hash) and every registered audit key.
    async fn audit_head(&self) -> GuardResult<AuditHead>;
    /// Signs the chain's head with `key` in a checkpoint row, unless the head is one already.
    async fn checkpoint(&self, key: &guard_api::chain::keys::SigningKey, now_ms: i64) -> GuardResult<Option<u64>>;
    async fn audit(&self, filter: &AuditFilter) -> GuardResult<Vec<AuditEvent>>;
    /// Records the host's registration; returns the policy hashes it had registered before.
    async fn register_host(&self, info: HostInfo) -> GuardResult<Option<HashMap<String, String>>>;
    /// The policy hashes `host` registered; None when it never registered.
    async fn host_policies(&self, host: &str) -> GuardResult<Option<HashMap<String, String>>>;
    /// The seq of the last audit row sink `name` delivered (0 when it never delivered one).
    async fn sink_position(&self, name: &str) -> GuardResult<u64>;
    /// Records that sink `name` delivered every audit row up to `seq`.
    async fn set_sink_position(&self, name: &str, seq: u64) -> GuardResult<()>;
    /// Lists a client certificate as revoked, with its audit record; false when it was already.
    async fn revoke_certificate(&self, revoked: &crate::revocation::Revoked) -> GuardResult<bool>;
    /// Every revoked client certificate.
    async fn revoked_certificates(&self) -> GuardResult<Vec<crate::revocation::Revoked>>;
}

/// Opens the store named by `url` (`sqlite:...` or `postgres://...`), creating its schema,
/// and for PostgreSQL starts listening to the other replicas' changes.
pub async fn open(url: &str, fanout: Fanout) -> anyhow::Result<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::open(url, fanout).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::open(url, fanout).await?))
    } else {
        anyhow::bail!("unsupported database url {url:?}: use sqlite:PATH or postgres://...")
    }
}
