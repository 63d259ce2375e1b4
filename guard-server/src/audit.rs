//! The JSON body of audit rows: the design's audit record fields (time, host, decision,
//! reason, rule, hook, pid, ppid, exe, argv, object, request_id, approver), so one SIEM
//! parser reads both the agents' logs and the server's trail.
use guard_proto::v1::{Request, Review, State};
use ring::digest;
use serde_json::{json, Value};

pub const KIND_REQUEST: &str = "request";
pub const KIND_REVIEW: &str = "review";
pub const KIND_DECISION: &str = "decision";
pub const KIND_RECORD: &str = "record";

/// One audit row to append.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub time_ms: i64,
    pub host: String,
    pub kind: &'static str,
    pub request_id: String,
    pub json: String,
}

fn rfc3339(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn decision_of(state: State) -> &'static str {
    match state {
        State::Approved => "allow",
        State::Denied | State::Expired | State::Cancelled => "deny",
        State::Pending | State::Unspecified => "",
    }
}

/// Audit entry for `kind` about `request`; `review` for review rows.
pub fn entry(kind: &'static str, time_ms: i64, request: &Request, review: Option<&Review>) -> AuditEntry {
    let op = request.operation.clone().unwrap_or_default();
    let actor = op.ancestry.first().cloned().unwrap_or_default();
    let state = State::try_from(request.state).unwrap_or(State::Unspecified);
    let (decision, reason, approver) = match (kind, review) {
        (KIND_REVIEW, Some(r)) => (if r.approve { "allow" } else { "deny" }, "", r.approver.as_str()),
        (KIND_DECISION, _) => (decision_of(state), request.reason.as_str(), request.decided_by.as_str()),
        _ => ("", "", ""),
    };
    let mut body = json!({
        "time": rfc3339(time_ms),
        "host": request.host,
        "kind": kind,
        "state": state.label(),
        "decision": decision,
        "reason": reason,
        "rule": op.rule,
        "policy": op.policy,
        "hook": op.hook,
        "pid": actor.pid,
        "ppid": actor.ppid,
        "uid": op.uid,
        "user": op.user,
        "exe": actor.exe,
        "argv": actor.argv,
        "object": op.object,
        "access": op.access,
        "tree_id": op.tree_id,
        "request_id": request.id,
        "approver": approver,
    });
    if let (Some(r), Value::Object(map)) = (review, &mut body) {
        map.insert("comment".into(), Value::String(r.comment.clone()));
        map.insert("grant_seconds".into(), Value::from(r.grant_seconds));
    }
    if let (KIND_DECISION, Value::Object(map)) = (kind, &mut body) {
        map.insert("comment".into(), Value::String(request.comment.clone()));
    }
    AuditEntry { time_ms, host: request.host.clone(), kind, request_id: request.id.clone(), json: body.to_string() }
}

/// Link of the hash chain: SHA-256 over the previous hash (hex) then the row's JSON.
pub fn chain_hash(prev_hash: &str, json: &str) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(prev_hash.as_bytes());
    ctx.update(json.as_bytes());
    ctx.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect()
}
