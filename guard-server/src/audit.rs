//! The server's audit rows. Each row's JSON is one `guard_api::AuditRecord`, the record the
//! agents write and report too, so one SIEM parser (and one Rust type) reads the agents' logs
//! and the server's trail. The records of the server's own rows (kinds request, review,
//! decision, grant and policy, and refused attempts) are built here and nowhere else.
use guard_api::{AuditRecord, Decision, Hook, Reason, RecordKind, StatedReason, Timestamp};
use guard_proto::v1::{Request, Review, State};

/// The row kind of the records agents report (`ReportRecords`). The record's own `kind`
/// (enforcement or agent) is inside its JSON; the row kind says where the row came from.
pub const KIND_RECORD: &str = "record";

/// What a record's comment says when its argv was redacted.
pub const REDACTED_NOTE: &str = "argv redacted by guard-server";

/// One audit row to append.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub time_ms: i64,
    pub host: String,
    pub kind: &'static str,
    pub request_id: String,
    pub json: String,
}

/// The row kind of a server record: its `RecordKind` by the name records use.
pub fn row_kind(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::Request => "request",
        RecordKind::Review => "review",
        RecordKind::Decision => "decision",
        RecordKind::Enforcement => "enforcement",
        RecordKind::Agent => "agent",
        RecordKind::Grant => "grant",
        RecordKind::Policy => "policy",
        RecordKind::Checkpoint => "checkpoint",
    }
}

fn decision_of(state: State) -> Option<Decision> {
    match state {
        State::Approved => Some(Decision::Allow),
        State::Denied | State::Expired | State::Cancelled => Some(Decision::Deny),
        State::Pending | State::Unspecified => None,
    }
}

fn text(s: &str) -> Option<String> {
    Some(s).filter(|s| !s.is_empty()).map(str::to_string)
}

/// The record of `kind` (request, review or decision) about `request` at `time_ms`; `review`
/// for review rows.
pub fn record(kind: RecordKind, time_ms: i64, request: &Request, review: Option<&Review>) -> AuditRecord {
    let op = request.operation.clone().unwrap_or_default();
    let actor = op.ancestry.first().cloned().unwrap_or_default();
    let redacted = op.ancestry.iter().any(|p| p.argv_redacted);
    let state = State::try_from(request.state).unwrap_or(State::Unspecified);
    let mut r = AuditRecord::at(Timestamp::from_unix_ms(time_ms), kind, request.host.clone());
    r.state = Some(state.label().to_string());
    r.rule = text(&op.rule);
    r.policy = text(&op.policy);
    // Submissions are validated against the hook vocabulary, so this is always Some.
    r.hook = Hook::from_name(&op.hook);
    r.object = text(&op.object);
    r.access = text(&op.access);
    r.pid = Some(actor.pid);
    r.ppid = Some(actor.ppid);
    r.uid = Some(op.uid);
    r.user = text(&op.user);
    r.exe = text(&actor.exe);
    r.argv = actor.argv;
    r.tree_id = text(&op.tree_id);
    r.request_id = text(&request.id);
    r.stated_reason = op.stated_reason.map(|s| StatedReason {
        tool: s.tool,
        call_id: s.call_id,
        reason: s.reason,
        session: s.session,
    });
    match (kind, review) {
        (RecordKind::Review, Some(v)) => {
            r.decision = Some(if v.approve { Decision::Allow } else { Decision::Deny });
            r.approver = text(&v.approver);
            r.comment = Some(v.comment.clone());
            r.grant_seconds = Some(v.grant_seconds);
            r.verified_by = text(&v.verified_by);
        }
        (RecordKind::Decision, _) => {
            r.decision = decision_of(state);
            r.reason = Reason::from_name(&request.reason);
            r.approver = text(&request.decided_by);
            r.comment = Some(request.comment.clone());
        }
        _ => {}
    }
    if redacted {
        r.comment = Some(match r.comment.take().filter(|c| !c.is_empty()) {
            Some(c) => format!("{c} ({REDACTED_NOTE})"),
            None => REDACTED_NOTE.to_string(),
        });
    }
    r
}

/// The audit row of `kind` (request, review or decision) about `request`.
pub fn entry(kind: RecordKind, time_ms: i64, request: &Request, review: Option<&Review>) -> AuditEntry {
    AuditEntry {
        time_ms,
        host: request.host.clone(),
        kind: row_kind(kind),
        request_id: request.id.clone(),
        json: record(kind, time_ms, request, review).to_json(),
    }
}

/// The audit row of a record an agent reported: its `host` is the certificate's name, in the
/// row and in the record, so the two cannot disagree.
pub fn reported(mut record: AuditRecord, host: &str, time_ms: i64) -> AuditEntry {
    record.host = host.to_string();
    AuditEntry {
        time_ms,
        host: host.to_string(),
        kind: KIND_RECORD,
        // Not the record's request_id: a query by request lists the server's own rows only.
        request_id: String::new(),
        json: record.to_json(),
    }
}

/// The audit row of a record the server wrote itself (a refusal, a grant, a policy): its row
/// kind is the record's kind, and its request id the record's, so `--request` finds it.
pub fn server_entry(record: &AuditRecord) -> AuditEntry {
    AuditEntry {
        time_ms: record.time.unix_ms(),
        host: record.host.clone(),
        kind: row_kind(record.kind),
        request_id: record.request_id.clone().unwrap_or_default(),
        json: record.to_json(),
    }
}

/// What a refused attempt tried (the record's comment starts with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    Review,
    Cancel,
    Withdraw,
}

impl Attempt {
    fn label(self) -> &'static str {
        match self {
            Attempt::Review => "review",
            Attempt::Cancel => "cancel",
            Attempt::Withdraw => "withdraw",
        }
    }
}

/// The record of an attempt on request `id` that the server refused: it changed nothing, but
/// who tried what, and why it was refused, is part of the trail. A review record (the attempt
/// was a decision on the request) with no decision, reason `refused`, `approver` who tried and
/// `comment` "<attempt> refused: <message>". `request` is the request as it was, when it
/// exists; `host` is where the record goes when it does not (a withdraw of another host's id).
pub fn refused(
    attempt: Attempt,
    time_ms: i64,
    id: &str,
    request: Option<&Request>,
    host: &str,
    who: &str,
    message: &str,
) -> AuditRecord {
    let mut r = match request {
        Some(request) => record(RecordKind::Review, time_ms, request, None),
        None => {
            let mut r = AuditRecord::at(Timestamp::from_unix_ms(time_ms), RecordKind::Review, host);
            r.request_id = text(id);
            r
        }
    };
    r.decision = None;
    r.reason = Some(Reason::Refused);
    r.approver = text(who);
    let redacted = r.comment.take().filter(|c| c.contains(REDACTED_NOTE)).map(|_| format!(" ({REDACTED_NOTE})"));
    r.comment = Some(format!("{} refused: {message}{}", attempt.label(), redacted.unwrap_or_default()));
    r
}

/// A grant ("approve for N seconds") as the store keeps it.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    pub id: String,
    pub host: String,
    pub tree_id: String,
    pub hook: String,
    pub object: String,
    pub access: String,
    /// The exec's argv as JSON (what the grant binds), empty for any other hook.
    pub argv: String,
    pub approver: String,
    pub request_id: String,
    pub created_ms: i64,
    pub expires_ms: i64,
}

/// How a grant ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantEnd {
    /// Its time ran out.
    Expired,
    /// The tree it was scoped to exited (the agent said so).
    TreeExited,
    /// Someone revoked it before its time (the console's Revoke); the record's comment names
    /// who.
    Revoked,
}

impl GrantEnd {
    pub fn label(self) -> &'static str {
        match self {
            GrantEnd::Expired => "expired",
            GrantEnd::TreeExited => "tree exited",
            GrantEnd::Revoked => "revoked",
        }
    }
}

/// The record of a grant made (`end` None: decision allow, reason approved, state `active`) or
/// ended (state `ended`, reason expired or exited, `comment` says which), at `time_ms`. Its
/// scope is the record's host, tree, hook, object, access and argv; `grant_seconds` its length;
/// `approver` who granted it; `request_id` the request whose approval made it.
pub fn grant_record(grant: &Grant, time_ms: i64, end: Option<GrantEnd>) -> AuditRecord {
    let mut r = AuditRecord::at(Timestamp::from_unix_ms(time_ms), RecordKind::Grant, grant.host.clone());
    r.hook = Hook::from_name(&grant.hook);
    r.object = text(&grant.object);
    r.access = text(&grant.access);
    // Written by the store from `grant_argv`, so it always reads; empty for a non-exec grant.
    r.argv = serde_json::from_str(&grant.argv).unwrap_or_default();
    r.tree_id = text(&grant.tree_id);
    r.request_id = text(&grant.request_id);
    r.approver = text(&grant.approver);
    r.grant_seconds = Some(u64::try_from((grant.expires_ms - grant.created_ms) / 1000).unwrap_or(0));
    let until = Timestamp::from_unix_ms(grant.expires_ms);
    match end {
        None => {
            r.decision = Some(Decision::Allow);
            r.reason = Some(Reason::Approved);
            r.state = Some("active".into());
            r.comment = Some(format!("grant {} until {until}", grant.id));
        }
        Some(end) => {
            r.reason = Some(match end {
                GrantEnd::Expired => Reason::Expired,
                GrantEnd::TreeExited => Reason::Exited,
                GrantEnd::Revoked => Reason::Cancelled,
            });
            r.state = Some("ended".into());
            r.comment = Some(format!("grant {} ended: {}", grant.id, end.label()));
        }
    }
    r
}

/// The records of a host's registration: one per policy whose hash is new (`before` had no
/// such policy) or changed (`comment`: the hash it had), none for one registered as it was.
/// `policy` is its name, `object` its "sha256:<hex>". Sorted by name, so the trail's order
/// does not depend on a hash map's.
pub fn policy_records(
    host: &str,
    time_ms: i64,
    hashes: &std::collections::HashMap<String, String>,
    before: Option<&std::collections::HashMap<String, String>>,
) -> Vec<AuditRecord> {
    let mut names: Vec<&String> = hashes.keys().collect();
    names.sort();
    names
        .into_iter()
        .filter_map(|name| {
            let hash = &hashes[name];
            let old = before.and_then(|b| b.get(name));
            if old == Some(hash) {
                return None;
            }
            let mut r = AuditRecord::at(Timestamp::from_unix_ms(time_ms), RecordKind::Policy, host);
            r.policy = Some(name.clone());
            r.object = Some(hash.clone());
            r.state = Some(if old.is_some() { "changed" } else { "loaded" }.into());
            r.comment = old.cloned();
            Some(r)
        })
        .collect()
}
