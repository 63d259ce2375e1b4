//! Building audit records: one constructor per source (a kernel event, a hold, lost events),
//! so the field runs are written once.

use crate::{
    hold::HoldInfo,
    kernel::{codes, event},
};
use guard_api::{Action, AuditRecord, Decision, Hook, Reason, RecordKind};
use guard_common::Event;

/// An enforcement record of what the kernel reported in `e`: its decision, reason, action,
/// hook, object and the acting task. `exe`/`argv` are the program the event is about.
pub fn from_event(host: &str, e: &Event, exe: Option<String>, argv: Vec<String>) -> AuditRecord {
    let mut r = AuditRecord::new(RecordKind::Enforcement, host);
    r.decision = Some(codes::decision(e.action, e.reason));
    r.reason = codes::reason(e.reason);
    r.action = Some(codes::action(e.action));
    r.hook = codes::hook(e.hook);
    r.object = Some(event::object_text(e));
    r.access = codes::access(e.hook, e.aux).map(String::from);
    r.pid = Some(e.tgid);
    r.tid = Some(e.tid);
    r.ppid = Some(e.ppid);
    r.uid = Some(e.uid);
    r.exe = exe;
    r.argv = argv;
    r
}

/// An enforcement record of a hold that ended without the kernel resolving it (its process
/// exited, say): a deny of the asked operation, for `reason`. The request id is the hold's.
pub fn from_hold(host: &str, h: &HoldInfo, reason: Reason) -> AuditRecord {
    let mut r = AuditRecord::new(RecordKind::Enforcement, host);
    r.decision = Some(Decision::Deny);
    r.reason = Some(reason);
    r.action = Some(Action::Ask);
    r.rule = h.rule.clone();
    r.policy = Some(h.policy.clone());
    r.hook = h.hook;
    r.object = Some(h.object.clone());
    r.access = h.access.clone();
    r.pid = Some(h.pid);
    r.tid = Some(h.tid);
    r.ppid = Some(h.ppid);
    r.uid = Some(h.uid);
    r.user = Some(h.user.clone());
    r.exe = h.exe.clone();
    r.argv = h.argv.clone();
    r.tree_id = Some(h.tree_id.clone());
    r.request_id = Some(h.id.clone());
    r.stated_reason = h.stated_reason.clone();
    r
}

/// The agent's own record of `n` events lost to a full ring buffer.
pub fn events_lost(host: &str, n: u64) -> AuditRecord {
    let mut r = AuditRecord::new(RecordKind::Agent, host);
    r.decision = Some(Decision::Deny);
    r.reason = Some(Reason::EventsLost);
    r.action = Some(Action::Deny);
    r.hook = Some(Hook::RingBuffer);
    r.object = Some("events_lost".into());
    r.pid = Some(0);
    r.tid = Some(0);
    r.ppid = Some(0);
    r.uid = Some(0);
    r.comment = Some("holds that could not be reported were denied in the kernel".into());
    r.lost = Some(n);
    r
}

/// The agent's own record of `n` `audit` or `ask` operations the kernel denied because the
/// ring buffer had no room for their records.
pub fn ring_full(host: &str, n: u64) -> AuditRecord {
    let mut r = events_lost(host, n);
    r.reason = Some(Reason::RingFull);
    r.object = Some("ring_full".into());
    r.comment =
        Some("audit or ask operations denied in the kernel: the ring buffer had no room for their records".into());
    r
}

/// An agent record about the agent itself or its spool: `object` says what, `comment` the
/// details a person reads.
fn agent_note(host: &str, object: &str, comment: String) -> AuditRecord {
    let mut r = AuditRecord::new(RecordKind::Agent, host);
    r.object = Some(object.into());
    r.comment = Some(comment);
    r
}

/// The agent started: its version and the policies in force (name and hash).
pub fn agent_start(host: &str, policies: &[(String, String)]) -> AuditRecord {
    let list: Vec<String> = policies.iter().map(|(name, hash)| format!("{name} ({hash})")).collect();
    agent_note(
        host,
        "start",
        format!("guard-agent {} started; policies: {}", env!("CARGO_PKG_VERSION"), list.join(", ")),
    )
}

/// The agent stops cleanly (a kill -9 leaves no such record: its absence is the evidence).
pub fn agent_stop(host: &str) -> AuditRecord {
    agent_note(host, "stop", format!("guard-agent {} stopped", env!("CARGO_PKG_VERSION")))
}

/// A policy was loaded (at start) or reloaded: its name and the hash registered with the server.
pub fn policy_loaded(host: &str, name: &str, hash: &str, how: &str) -> AuditRecord {
    let mut r = AuditRecord::new(RecordKind::Policy, host);
    r.policy = Some(name.into());
    r.object = Some(hash.into());
    r.comment = Some(how.into());
    r
}

/// The spool was damaged when the agent started: what was set aside, and where.
pub fn spool_damaged(host: &str, line: u64, bytes: u64, why: &str, to: &std::path::Path) -> AuditRecord {
    agent_note(
        host,
        "spool_damaged",
        format!("the audit spool was damaged from line {line} on ({why}): {bytes} bytes moved to {}", to.display()),
    )
}

/// The backlog of records not yet shipped reached its bound: records past it are counted, not
/// written, until the server acknowledges enough.
pub fn backlog_full(host: &str, unshipped: u64, max: u64) -> AuditRecord {
    agent_note(
        host,
        "backlog_full",
        format!(
            "{unshipped} bytes of audit records are not yet acknowledged by guard-server, past \
             audit_backlog_max_bytes = {max}: new records are counted, not written, until it catches up"
        ),
    )
}

/// Room returned after a full backlog: how many records were not written meanwhile.
pub fn backlog_dropped(host: &str, lost: u64) -> AuditRecord {
    let mut r = agent_note(
        host,
        "backlog_dropped",
        format!("{lost} audit records were not written while the backlog to guard-server was full"),
    );
    r.lost = Some(lost);
    r
}
