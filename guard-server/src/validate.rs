//! The server's checks of incoming messages, as pure functions of the decoded message (no
//! network, no store), so that the services call them first and the fuzzers call them alone.
//! Every problem of a message is reported at once, each with its field's path
//! (`operation.ancestry[2].argv[0]`); none of them may panic on any input.
use crate::error::{GuardError, GuardResult};
use crate::lifecycle::{Violations, MAX_NAME_BYTES, MAX_RECORDS_PER_CALL};
use crate::store::ingest::Refusal;
use guard_api::chain::record_hash;
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
    if !r.audit_key.is_empty() && (r.audit_key.len() != 64 || !r.audit_key.bytes().all(|b| b.is_ascii_hexdigit())) {
        v.add("audit_key", "want an ed25519 public key: 64 hex digits");
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
/// The records of a `ReportRecords` call that can be stored, in order, and the first that
/// cannot (its stream, seq and what is wrong with it, the field named). A record must read as an
/// `AuditRecord`, carry its chain link, name `host` (the certificate's) and hash to its link;
/// the server never rewrites a chained record, so a mismatch is refused, not corrected.
pub fn report_records(host: &str, r: &ReportRecordsRequest) -> GuardResult<(Vec<AuditRecord>, Option<Refusal>)> {
    if r.records.len() > MAX_RECORDS_PER_CALL {
        return Err(GuardError::invalid(
            "records",
            format!("{} records, at most {MAX_RECORDS_PER_CALL} per call", r.records.len()),
        ));
    }
    let mut parsed = Vec::with_capacity(r.records.len());
    for (i, r) in r.records.iter().enumerate() {
        let (stream, seq) = parsed
            .last()
            .and_then(|p: &AuditRecord| p.chain.as_ref())
            .map(|c| (c.stream.clone(), c.seq + 1))
            .unwrap_or_default();
        let refuse = |stream: String, seq: u64, message: String| Some(Refusal { stream, seq, message });
        let record = match AuditRecord::from_json(&r.json) {
            Ok(record) => record,
            Err(e) => return Ok((parsed, refuse(stream, seq, format!("records[{i}].json: {e}")))),
        };
        let Some(link) = record.chain.clone() else {
            return Ok((
                parsed,
                refuse(stream, seq, format!("records[{i}].chain: missing (records come from the agent's spool)")),
            ));
        };
        let problem = if record.host != host {
            Some(format!("records[{i}].host: {:?} is not this agent's certificate name {host:?}", record.host))
        } else if link.redacted {
            Some(format!("records[{i}].chain.redacted: only the server redacts"))
        } else if record_hash(&record) != link.hash {
            Some(format!("records[{i}].chain.hash: {:?} is not the hash of the record's content", link.hash))
        } else {
            None
        };
        if let Some(message) = problem {
            return Ok((parsed, refuse(link.stream, link.seq, message)));
        }
        parsed.push(record);
    }
    Ok((parsed, None))
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
