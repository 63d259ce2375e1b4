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
