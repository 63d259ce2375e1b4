//! The server's audit rows. Each row's JSON is one `guard_api::AuditRecord`, the record the
//! agents write and report too, so one SIEM parser (and one Rust type) reads the agents' logs
//! and the server's trail. The records of the server's own rows (kinds request, review and
//! decision) are built here and nowhere else.
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
