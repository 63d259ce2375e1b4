//! The server's checks of incoming messages, as pure functions of the decoded message (no
//! network, no store), so that the services call them first and the fuzzers call them alone.
//! Every problem of a message is reported at once, each with its field's path
//! (`operation.ancestry[2].argv[0]`); none of them may panic on any input.
use crate::error::{GuardError, GuardResult};
use crate::lifecycle::{Violations, MAX_NAME_BYTES, MAX_RECORDS_PER_CALL};
use guard_api::AuditRecord;
use guard_proto::v1::{RegisterRequest, ReportRecordsRequest, State, TreeExitedRequest, WithdrawRequest};

pub use crate::lifecycle::{validate_review as review, validate_submit as submit};

/// At most this many policy names in a registration.
pub const MAX_REGISTERED_POLICIES: usize = 256;

pub fn register(r: &RegisterRequest) -> GuardResult<()> {
    let mut v = Violations::default();
    v.text("agent_version", &r.agent_version, MAX_NAME_BYTES, false);
    v.text("kernel", &r.kernel, MAX_NAME_BYTES, false);
    if r.policies.len() > MAX_REGISTERED_POLICIES {
        v.add("policies", format!("at most {MAX_REGISTERED_POLICIES} entries"));
    }
    for (i, p) in r.policies.iter().enumerate().take(MAX_REGISTERED_POLICIES) {
        v.text(&format!("policies[{i}]"), p, MAX_NAME_BYTES, false);
    }
    if r.policy_hashes.len() > MAX_REGISTERED_POLICIES {
        v.add("policy_hashes", format!("at most {MAX_REGISTERED_POLICIES} entries"));
    }
    let mut named: Vec<(&String, &String)> = r.policy_hashes.iter().collect();
    named.sort();
    for (name, hash) in named.into_iter().take(MAX_REGISTERED_POLICIES) {
        v.text(&format!("policy_hashes[{name:?}]"), name, MAX_NAME_BYTES, true);
        if !is_policy_hash(hash) {
            v.add(format!("policy_hashes[{name:?}]"), "want \"sha256:\" and 64 lowercase hex digits");
        }
    }
    v.into_result()
}

/// A policy hash as agents report it: "sha256:" and 64 lowercase hex digits.
pub fn is_policy_hash(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// The records of a report, each read as the one audit record type (unknown fields refused);
/// the error names every record that does not fit.
pub fn report_records(r: &ReportRecordsRequest) -> GuardResult<Vec<AuditRecord>> {
    if r.records.len() > MAX_RECORDS_PER_CALL {
        return Err(GuardError::invalid(
            "records",
            format!("{} records, at most {MAX_RECORDS_PER_CALL} per call", r.records.len()),
        ));
    }
    let mut v = Violations::default();
    let mut parsed = Vec::with_capacity(r.records.len());
    for (i, r) in r.records.iter().enumerate() {
        match AuditRecord::from_json(&r.json) {
            Ok(record) => parsed.push(record),
            Err(e) => v.add(format!("records[{i}].json"), e.to_string()),
        }
    }
    v.into_result()?;
    Ok(parsed)
}

/// The end a withdrawal asks for: (state, reason).
pub fn withdraw(r: &WithdrawRequest) -> GuardResult<(State, &'static str)> {
    match r.why.as_str() {
        "timeout" => Ok((State::Expired, "expired")),
        "process-exited" | "agent-stopped" => Ok((State::Cancelled, "cancelled")),
        _ => Err(GuardError::invalid("why", "one of timeout, process-exited, agent-stopped")),
    }
}

pub fn tree_exited(r: &TreeExitedRequest) -> GuardResult<()> {
    let mut v = Violations::default();
    v.text("tree_id", &r.tree_id, MAX_NAME_BYTES, true);
    v.into_result()
}
