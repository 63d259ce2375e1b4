//! What the agent does with one kernel event, as a function of its state and the event: it
//! updates the state (processes, trees, holds) and returns the [`Effect`]s to carry out. It
//! reaches the kernel only through [`KernelMaps`](crate::kernel::KernelMaps) and the host only
//! through [`System`], so unit tests drive it with fakes of both.

use super::{ProcInfo, State, System, TreeInfo};
use crate::{
    audit::record,
    hold::{Decision, HoldInfo, Lineage, PendingHold},
    kernel::{codes, event},
    tree::{proc::Proc, selector::also_matched},
};
use guard_api::{AuditRecord, Reason, StatedReason, Timestamp};
use guard_common::{kind, Event, Hook};
use std::time::{Duration, Instant};

/// What the caller must do after an event.
// Both variants are large (a record, a hold's details) and each lives only until the caller
// acts on it: boxing either would add an allocation per kernel event for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Effect {
    /// Write this record to the audit log.
    Record(AuditRecord),
    /// A hold started: ask the decision source, and give up after `timeout`.
    Ask { hold: HoldInfo, timeout: Duration },
}

/// Handles one kernel event at `now`.
pub fn handle(st: &mut State, sys: &dyn System, e: &Event, now: Instant) -> Vec<Effect> {
    match e.kind {
        kind::EXEC => {
            exec(st, sys, e);
            vec![]
        }
        kind::EXIT => exit(st, e, now),
        kind::DECISION => vec![Effect::Record(event_record(st, sys, e))],
        kind::HOLD => {
            let mut out = superseded(st, e, now);
            out.push(hold(st, sys, e, now));
            out
        }
        kind::RESOLVED => vec![Effect::Record(resolved(st, sys, e, now))],
        _ => {
            tracing::warn!("unknown event kind {}", e.kind);
            vec![]
        }
    }
}

/// A watched process executed a program; for the exec that starts a tree, the tree begins.
fn exec(st: &mut State, sys: &dyn System, e: &Event) {
    let proc = sys.proc(e.tgid);
    let (argv, argv_from_proc) = choose_argv(event::argv_of(e), proc.as_ref().map(|p| p.argv.clone()));
    let mut info =
        ProcInfo { exe: Some(event::object_text(e)), argv, ppid: proc.as_ref().map_or(0, |p| p.ppid), argv_from_proc };
    if info.ppid == 0 {
        info.ppid = e.ppid;
    }
    if e.aux != 0 {
        // The exec that started a new tree (a selector matched in the kernel).
        let rank = e.aux as usize - 1;
        let selector =
            st.trees.selectors.get(rank).map(|s| s.describe()).unwrap_or_else(|| format!("selector rank {rank}"));
        // From /proc while the process lives; from the event itself if it is gone.
        let proc = proc.unwrap_or_else(|| Proc {
            pid: e.tgid,
            ppid: e.ppid,
            uid: e.uid,
            exe: info.exe.clone(),
            argv: info.argv.clone(),
            cgroup: None,
        });
        let also = also_matched(&st.trees.selectors, Some(&proc), Some(rank));
        let (_, policy) = st.policy_of(e.policy);
        tracing::info!(
            "new tree {}: {} ({}) selected by {selector}, policy {policy}{}",
            e.tgid,
            guard_api::screen::escape(info.exe.as_deref().unwrap_or("?")),
            guard_api::screen::escape_argv(&info.argv),
            if also.is_empty() {
                String::new()
            } else {
                format!("; it won over {} (exe > cgroup > user, then file order)", also.join(", "))
            }
        );
        let t = TreeInfo {
            root: e.tgid,
            tree_id: sys.tree_id(e.tgid),
            selector,
            policy_id: e.policy,
            also_matched: also,
            exe: info.exe.clone(),
            since: Timestamp::now(),
        };
        st.trees.trees.insert(e.tgid, t);
        // Whose tree it is, now, while its root lives (a pid reused by a new tree gets its own).
        match sys.owner(e.tgid) {
            Some(owner) => {
                st.owners.insert(e.tgid, owner);
            }
            None => {
                st.owners.remove(&e.tgid);
            }
        }
        // A pid reused by a new tree does not inherit an old tree's reason.
        st.trees.reasons.remove(&e.tgid);
    }
    st.procs.insert(e.tgid, info);
}

/// A new hold of a thread ends the thread's earlier holds: the kernel keeps one per thread,
/// and a restarted syscall that asks again asked for a different operation (its object,
/// access or argv changed after the hold: the earlier verdict, whatever it was, did not
/// apply). The earlier operation never happened: a deny, recorded with who decided it.
fn superseded(st: &mut State, e: &Event, now: Instant) -> Vec<Effect> {
    let old: Vec<String> = st
        .holds
        .by_id
        .iter()
        .filter(|(_, h)| h.info.tid == e.tid && h.seq != e.seq)
        .map(|(id, _)| id.clone())
        .collect();
    let mut out = vec![];
    for id in old {
        if let Some(h) = st.holds.by_id.remove(&id) {
            tracing::info!("hold {id} ended: thread {} asked again for a different operation", e.tid);
            let reason = h.decision.as_ref().map_or(Reason::Cancelled, |d| d.reason);
            let mut r = record::from_hold(&st.host, &h.info, reason);
            r.approver = h.decision.as_ref().and_then(|d| d.approver.clone());
            r.comment = Some(
                "superseded: the restarted syscall asked for a different operation (a new request); this one did not run"
                    .into(),
            );
            r.held_ms = Some(now.saturating_duration_since(h.started).as_millis() as u64);
            out.push(Effect::Record(r));
        }
    }
    out
}

/// A process exited: its holds end (the operation never happened: a deny, whatever was
/// decided meanwhile), and the agent forgets it.
fn exit(st: &mut State, e: &Event, now: Instant) -> Vec<Effect> {
    let gone: Vec<String> =
        st.holds.by_id.iter().filter(|(_, h)| h.info.pid == e.tgid).map(|(id, _)| id.clone()).collect();
    let mut out = vec![];
    for id in gone {
        if let Some(h) = st.holds.by_id.remove(&id) {
            tracing::info!("hold {id} ended: process {} exited while held", e.tgid);
            let mut r = record::from_hold(&st.host, &h.info, Reason::Exited);
            r.approver = h.decision.as_ref().and_then(|d| d.approver.clone());
            r.comment = Some("the process exited while held".into());
            r.held_ms = Some(now.saturating_duration_since(h.started).as_millis() as u64);
            out.push(Effect::Record(r));
        }
    }
    st.procs.remove(&e.tgid);
    out
}

/// A new hold: it goes into the hold table and to the decision source.
fn hold(st: &mut State, sys: &dyn System, e: &Event, now: Instant) -> Effect {
    let id = st.holds.new_id();
    let info = proc_info(st, sys, e.tgid);
    let (timeout, policy_name) = {
        let (p, name) = st.policy_of(e.policy);
        (p.ask_timeout, name.to_string())
    };
    let (exe, argv, argv_from_proc) = program(e, info);
    let lineage = lineage(st, sys, e.tgid);
    let root = st.tree_root(e.tid).unwrap_or_else(|| lineage.last().map(|l| l.pid).unwrap_or(e.tgid));
    let tree_id = st.trees.trees.get(&root).map(|t| t.tree_id.clone()).unwrap_or_else(|| sys.tree_id(root));
    // Unknown (the root is gone and its start was not seen): sent empty, which the server
    // refuses, so the hold is denied rather than decided without separation of duties.
    let owner = match st.owners.get(&root) {
        Some(o) => Some(o.clone()),
        None => {
            let o = sys.owner(root);
            if let Some(o) = &o {
                st.owners.insert(root, o.clone());
            }
            o
        }
    };
    let policy_hash = st.policy_of(e.policy).0.hash.clone();
    let hold = HoldInfo {
        id: id.clone(),
        hook: codes::hook(e.hook),
        object: event::object_text(e),
        access: codes::access(e.hook, e.aux).map(String::from),
        rule: rule_name(st, e.policy, e.rule),
        pid: e.tgid,
        tid: e.tid,
        ppid: e.ppid,
        uid: e.uid,
        exe,
        argv,
        argv_from_proc,
        // The event carries no flag for a cut argv (only for a cut object).
        argv_truncated: false,
        ancestry: lineage.iter().map(|l| format!("{} {}", l.pid, l.exe.as_deref().unwrap_or("?"))).collect(),
        lineage,
        cwd: sys.cwd(e.tgid),
        user: sys.user_name(e.uid),
        tree_id,
        owner,
        policy_hash,
        policy: policy_name,
        stated_reason: stated_reason(st, Some(root)),
        held_secs: 0,
        timeout_secs: timeout.as_secs(),
    };
    tracing::info!(
        "hold {id}: {} {} by pid {} ({})",
        hold.hook.map(|h| h.name()).unwrap_or("unknown"),
        guard_api::screen::escape(&hold.object),
        hold.pid,
        hold.rule.clone().unwrap_or_default()
    );
    st.holds
        .by_id
        .insert(id, PendingHold { info: hold.clone(), seq: e.seq, hash: e.hash, started: now, decision: None });
    Effect::Ask { hold, timeout }
}

/// A held operation completed with the agent's verdict: the record says who decided and how
/// long it waited.
fn resolved(st: &mut State, sys: &dyn System, e: &Event, now: Instant) -> AuditRecord {
    let mut r = event_record(st, sys, e);
    let Some(id) = st.holds.find(e.tid, e.seq).cloned() else { return r };
    let Some(h) = st.holds.by_id.remove(&id) else { return r };
    r.request_id = Some(id);
    r.held_ms = Some(now.saturating_duration_since(h.started).as_millis() as u64);
    r.user = Some(h.info.user.clone());
    r.tree_id = Some(h.info.tree_id.clone());
    // The reason shown on the request is the one kept with its outcome.
    if h.info.stated_reason.is_some() {
        r.stated_reason = h.info.stated_reason.clone();
    }
    if let Some(d) = h.decision {
        if d.request_id.is_some() {
            r.request_id = d.request_id;
        }
        r.reason = Some(d.reason);
        r.approver = d.approver;
        r.comment = d.comment;
    }
    r
}

/// Records a decision on hold `id` and writes its verdict into the kernel. Returns the held
/// thread (tid, tgid) to resume, or None when the hold is unknown, already decided, or the
/// verdict could not be written (the kernel then denies at its own deadline).
pub fn decide(st: &mut State, id: &str, d: Decision) -> Option<(u32, u32)> {
    let h = st.holds.by_id.get_mut(id)?;
    if h.decision.is_some() {
        return None;
    }
    h.decision = Some(d.clone());
    let (tid, tgid, seq, hash) = (h.info.tid, h.info.pid, h.seq, h.hash);
    tracing::info!("hold {id}: {} ({})", if d.allow { "allow" } else { "deny" }, d.reason);
    if let Err(e) = st.kernel.set_verdict(tid, seq, hash, d.allow) {
        tracing::error!("hold {id}: {e:#}; the kernel will deny it at its own deadline");
        return None;
    }
    Some((tid, tgid))
}

/// The record of newly lost events, given the kernel's running count; None when none were
/// lost since the last call.
pub fn lost(st: &mut State, total: u64) -> Option<AuditRecord> {
    if total <= st.lost_reported {
        return None;
    }
    let n = total - st.lost_reported;
    st.lost_reported = total;
    tracing::error!("{n} kernel events were lost: the ring buffer was full");
    Some(record::events_lost(&st.host, n))
}

/// The record of `audit` and `ask` operations the kernel denied because the ring buffer was
/// full (they could not be recorded there), given the kernel's running count; None when there
/// were none since the last call.
pub fn ring_full(st: &mut State, total: u64) -> Option<AuditRecord> {
    if total <= st.ring_full_reported {
        return None;
    }
    let n = total - st.ring_full_reported;
    st.ring_full_reported = total;
    tracing::error!("{n} audit or ask operations were denied: the ring buffer was full");
    Some(record::ring_full(&st.host, n))
}

/// The record of a kernel event, with the rule, policy, tree and stated reason it concerns.
fn event_record(st: &mut State, sys: &dyn System, e: &Event) -> AuditRecord {
    let mut info = proc_info(st, sys, e.tgid);
    if info.ppid == 0 {
        info.ppid = e.ppid;
        st.procs.insert(e.tgid, info.clone());
    }
    let (exe, argv, _) = program(e, info);
    let root = tree_of_event(st, e);
    let mut r = record::from_event(&st.host, e, exe, argv);
    r.rule = rule_name(st, e.policy, e.rule);
    r.policy = (!st.trees.policies.is_empty()).then(|| st.policy_of(e.policy).1.to_string());
    r.tree_id = root.and_then(|r| st.trees.trees.get(&r)).map(|t| t.tree_id.clone());
    r.stated_reason = stated_reason(st, root);
    r
}

fn rule_name(st: &State, policy: u8, rule: u32) -> Option<String> {
    let (p, _) = st.policy_of(policy);
    (rule as usize).checked_sub(1).and_then(|i| p.rules.get(i)).map(|r| r.name.clone())
}

fn stated_reason(st: &State, root: Option<u32>) -> Option<StatedReason> {
    root.and_then(|r| st.trees.reasons.get(&r).cloned())
}

/// The tree of a task that may have exited since its event: the kernel's map while it lives,
/// else the nearest known tree root among the process and its recorded ancestors.
fn tree_of_event(st: &State, e: &Event) -> Option<u32> {
    if let Some(root) = st.tree_root(e.tid) {
        return Some(root);
    }
    let mut pid = e.tgid;
    for _ in 0..32 {
        if st.trees.trees.contains_key(&pid) {
            return Some(pid);
        }
        pid = match st.procs.get(&pid) {
            Some(p) if p.ppid != 0 => p.ppid,
            _ if pid == e.tgid && e.ppid != 0 => e.ppid,
            _ => return None,
        };
    }
    None
}

/// What the agent knows of `pid`; one not seen exec'ing (it started before it was watched) is
/// asked of /proc while it lives.
fn proc_info(st: &mut State, sys: &dyn System, pid: u32) -> ProcInfo {
    if let Some(p) = st.procs.get(&pid) {
        return p.clone();
    }
    let info = sys
        .proc(pid)
        .map(|p| ProcInfo { exe: p.exe, argv_from_proc: !p.argv.is_empty(), argv: p.argv, ppid: p.ppid })
        .unwrap_or_default();
    st.procs.insert(pid, info.clone());
    info
}

/// The chain of watched ancestors, nearest first.
fn lineage(st: &mut State, sys: &dyn System, mut pid: u32) -> Vec<Lineage> {
    let mut out = vec![];
    for _ in 0..32 {
        let info = proc_info(st, sys, pid);
        out.push(Lineage {
            pid,
            ppid: info.ppid,
            exe: info.exe.clone(),
            argv: info.argv.clone(),
            argv_from_proc: info.argv_from_proc,
        });
        // Up to the tree's root: a parent that forked without exec (a shell running a builtin
        // or a subshell) is still in the tree, though no exec event named it.
        if info.ppid == 0 || !(st.procs.contains_key(&info.ppid) || st.kernel.is_watched(info.ppid)) {
            break;
        }
        pid = info.ppid;
    }
    out
}

/// The argv of an exec: the kernel's copy (each argument cut to `ARG_LEN`, the first few
/// only), unless /proc's agrees with it and says more. A process that rewrote its argv
/// before the agent read /proc disagrees with the kernel, and the kernel's copy wins.
/// Returns the argv and whether it came from /proc.
fn choose_argv(kernel: Vec<String>, proc: Option<Vec<String>>) -> (Vec<String>, bool) {
    let proc = proc.unwrap_or_default();
    if kernel.is_empty() {
        let from_proc = !proc.is_empty();
        return (proc, from_proc);
    }
    let agrees = proc.len() >= kernel.len() && kernel.iter().zip(&proc).all(|(k, p)| p.starts_with(k.as_str()));
    if !agrees {
        if !proc.is_empty() {
            tracing::warn!(
                "argv in /proc ({proc:?}) differs from the kernel's copy at exec ({kernel:?}): kept the kernel's"
            );
        }
        return (kernel, false);
    }
    if proc == kernel {
        (kernel, false)
    } else {
        (proc, true)
    }
}

/// The program an event is about: for an exec decision the one being started, not the caller;
/// and whether its argv came from /proc.
fn program(e: &Event, info: ProcInfo) -> (Option<String>, Vec<String>, bool) {
    if e.hook == Hook::Exec as u8 {
        (Some(event::object_text(e)), event::argv_of(e), false)
    } else {
        (info.exe, info.argv, info.argv_from_proc)
    }
}

#[cfg(test)]
mod tests;
