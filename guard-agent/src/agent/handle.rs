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
        kind::HOLD => vec![hold(st, sys, e, now)],
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
    let mut info = ProcInfo {
        exe: Some(event::object_text(e)),
        argv: proc.as_ref().map(|p| p.argv.clone()).unwrap_or_default(),
        ppid: proc.as_ref().map_or(0, |p| p.ppid),
    };
    if info.argv.is_empty() {
        info.argv = event::argv_of(e);
    }
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
            info.exe.as_deref().unwrap_or("?"),
            info.argv.join(" "),
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
        // A pid reused by a new tree does not inherit an old tree's reason.
        st.trees.reasons.remove(&e.tgid);
    }
    st.procs.insert(e.tgid, info);
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
    let (exe, argv) = program(e, info);
    let lineage = lineage(st, sys, e.tgid);
    let root = st.tree_root(e.tid).unwrap_or_else(|| lineage.last().map(|l| l.pid).unwrap_or(e.tgid));
    let tree_id = st.trees.trees.get(&root).map(|t| t.tree_id.clone()).unwrap_or_else(|| sys.tree_id(root));
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
        // The event carries no flag for a cut argv (only for a cut object).
        argv_truncated: false,
        ancestry: lineage.iter().map(|l| format!("{} {}", l.pid, l.exe.as_deref().unwrap_or("?"))).collect(),
        lineage,
        cwd: sys.cwd(e.tgid),
        user: sys.user_name(e.uid),
        tree_id,
        policy: policy_name,
        stated_reason: stated_reason(st, Some(root)),
        held_secs: 0,
        timeout_secs: timeout.as_secs(),
    };
    tracing::info!(
        "hold {id}: {} {} by pid {} ({})",
        hold.hook.map(|h| h.name()).unwrap_or("unknown"),
        hold.object,
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

/// The record of a kernel event, with the rule, policy, tree and stated reason it concerns.
fn event_record(st: &mut State, sys: &dyn System, e: &Event) -> AuditRecord {
    let mut info = proc_info(st, sys, e.tgid);
    if info.ppid == 0 {
        info.ppid = e.ppid;
        st.procs.insert(e.tgid, info.clone());
    }
    let (exe, argv) = program(e, info);
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
    let info = sys.proc(pid).map(|p| ProcInfo { exe: p.exe, argv: p.argv, ppid: p.ppid }).unwrap_or_default();
    st.procs.insert(pid, info.clone());
    info
}

/// The chain of watched ancestors, nearest first.
fn lineage(st: &mut State, sys: &dyn System, mut pid: u32) -> Vec<Lineage> {
    let mut out = vec![];
    for _ in 0..32 {
        let info = proc_info(st, sys, pid);
        out.push(Lineage { pid, ppid: info.ppid, exe: info.exe.clone(), argv: info.argv.clone() });
        // Up to the tree's root: a parent that forked without exec (a shell running a builtin
        // or a subshell) is still in the tree, though no exec event named it.
        if info.ppid == 0 || !(st.procs.contains_key(&info.ppid) || st.kernel.is_watched(info.ppid)) {
            break;
        }
        pid = info.ppid;
    }
    out
}

/// The program an event is about: for an exec decision the one being started, not the caller.
fn program(e: &Event, info: ProcInfo) -> (Option<String>, Vec<String>) {
    if e.hook == Hook::Exec as u8 {
        (Some(event::object_text(e)), event::argv_of(e))
    } else {
        (info.exe, info.argv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{kernel::KernelMaps, policy::Policy, tree::proc::Proc};
    use anyhow::Result;
    use guard_api::{Action, Decision as Verdict, Hook as ApiHook, RecordKind};
    use guard_common::{Action as KAction, Hold, SelKey, Selector, Watched};
    use std::collections::HashMap;

    /// The kernel's maps, in memory: what the handler wrote can be read back.
    #[derive(Default)]
    struct FakeMaps {
        watched: HashMap<u32, Watched>,
        verdicts: Vec<(u32, u64, u64, bool)>,
    }

    impl KernelMaps for FakeMaps {
        fn watch(&mut self, tid: u32, policy: u8, root: u32) -> Result<()> {
            self.watched.insert(tid, Watched { policy, _pad: [0; 3], root });
            Ok(())
        }
        fn adopt(&mut self, tid: u32, policy: u8, root: u32) -> Result<bool> {
            Ok(self.watched.insert(tid, Watched { policy, _pad: [0; 3], root }).is_none())
        }
        fn unadopt(&mut self, tid: u32) {
            self.watched.remove(&tid);
        }
        fn watched(&self, tid: u32) -> Option<Watched> {
            self.watched.get(&tid).copied()
        }
        fn watched_tasks(&self) -> Vec<(u32, Watched)> {
            self.watched.iter().map(|(t, w)| (*t, *w)).collect()
        }
        fn watched_count(&self) -> usize {
            self.watched.len()
        }
        fn counted_tasks(&self) -> u64 {
            self.watched.len() as u64
        }
        fn holds_in_kernel(&self) -> usize {
            0
        }
        fn held(&self) -> Vec<(u32, Hold)> {
            vec![]
        }
        fn lost_events(&self) -> u64 {
            0
        }
        fn set_verdict(&mut self, tid: u32, seq: u64, hash: u64, allow: bool) -> Result<()> {
            self.verdicts.push((tid, seq, hash, allow));
            Ok(())
        }
        fn install_policy(&mut self, _: u8, _: &Policy) -> Result<()> {
            Ok(())
        }
        fn install_named_policy(&mut self, _: u8, _: &str, _: &Policy) -> Result<()> {
            Ok(())
        }
        fn policy_slots(&self) -> Vec<(u8, u64)> {
            vec![]
        }
        fn set_selectors(&mut self, _: &[(SelKey, Selector)]) -> Result<()> {
            Ok(())
        }
    }

    /// A host with a shell (pid 10) that started `cat` (pid 42), run by alice (uid 1000).
    struct FakeHost;

    impl System for FakeHost {
        fn proc(&self, pid: u32) -> Option<Proc> {
            let (ppid, exe, argv) = match pid {
                10 => (1, "/bin/sh", vec!["sh"]),
                42 => (10, "/usr/bin/cat", vec!["cat", "/etc/shadow"]),
                _ => return None,
            };
            Some(Proc {
                pid,
                ppid,
                uid: 1000,
                exe: Some(exe.into()),
                argv: argv.into_iter().map(String::from).collect(),
                cgroup: None,
            })
        }
        fn cwd(&self, _: u32) -> Option<String> {
            Some("/home/alice".into())
        }
        fn user_name(&self, uid: u32) -> String {
            if uid == 1000 {
                "alice".into()
            } else {
                uid.to_string()
            }
        }
        fn tree_id(&self, root: u32) -> String {
            format!("{root}-777")
        }
    }

    fn state() -> State {
        let policy = Policy::parse(
            "p.toml",
            r#"
ask_timeout = "30s"
[[rule]]
name = "no-shadow"
action = "deny"
file = { path = "/etc/shadow", access = "read" }
[[rule]]
name = "ask-shadow"
action = "ask"
file = { path = "/etc/shadow", access = "read" }
"#,
        )
        .unwrap();
        let mut kernel = FakeMaps::default();
        for tid in [10, 42] {
            kernel.watch(tid, 0, 10).unwrap();
        }
        State::new(Box::new(kernel), policy, "p".into(), "web1".into())
    }

    /// An event of `kind` by cat (pid 42) opening /etc/shadow for reading.
    fn event(kind: u8, action: KAction, reason: u8, rule: u32) -> Event {
        // SAFETY: Event is plain old data (integers and byte arrays): all zeroes is a valid one.
        let mut e: Event = unsafe { std::mem::zeroed() };
        e.kind = kind;
        e.hook = Hook::FileOpen as u8;
        e.action = action as u8;
        e.reason = reason;
        e.rule = rule;
        e.tgid = 42;
        e.tid = 42;
        e.ppid = 10;
        e.uid = 1000;
        e.aux = 1; // FMODE_READ
        e.seq = 7;
        e.hash = 0xabc;
        e.object[..11].copy_from_slice(b"/etc/shadow");
        e
    }

    fn only_record(effects: Vec<Effect>) -> AuditRecord {
        match <[Effect; 1]>::try_from(effects) {
            Ok([Effect::Record(r)]) => r,
            Ok([other]) => panic!("expected a record, got {other:?}"),
            Err(v) => panic!("expected one effect, got {v:?}"),
        }
    }

    fn only_ask(effects: Vec<Effect>) -> (HoldInfo, Duration) {
        match <[Effect; 1]>::try_from(effects) {
            Ok([Effect::Ask { hold, timeout }]) => (hold, timeout),
            Ok([other]) => panic!("expected an ask, got {other:?}"),
            Err(v) => panic!("expected one effect, got {v:?}"),
        }
    }

    #[test]
    fn a_decision_event_becomes_its_record() {
        let mut st = state();
        let e = event(kind::DECISION, KAction::Deny, guard_common::reason::RULE, 1);
        let r = only_record(handle(&mut st, &FakeHost, &e, Instant::now()));
        assert_eq!(r.kind, RecordKind::Enforcement);
        assert_eq!(r.host, "web1");
        assert_eq!(r.decision, Some(Verdict::Deny));
        assert_eq!(r.reason, Some(Reason::Rule));
        assert_eq!(r.action, Some(Action::Deny));
        assert_eq!(r.hook, Some(ApiHook::FileOpen));
        assert_eq!(r.rule.as_deref(), Some("no-shadow"));
        assert_eq!(r.object.as_deref(), Some("/etc/shadow"));
        assert_eq!(r.access.as_deref(), Some("read"));
        assert_eq!((r.pid, r.tid, r.ppid, r.uid), (Some(42), Some(42), Some(10), Some(1000)));
        assert_eq!(r.exe.as_deref(), Some("/usr/bin/cat"));
        assert_eq!(r.argv, vec!["cat", "/etc/shadow"]);
        assert_eq!(r.request_id, None);
        assert_eq!(r.held_ms, None);
        // Under `run` (one policy, no daemon config) records name no policy, as before.
        assert_eq!(r.policy, None);
        // Today's JSONL keys, always written.
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        for key in [
            "time",
            "host",
            "decision",
            "reason",
            "rule",
            "action",
            "hook",
            "pid",
            "tid",
            "ppid",
            "uid",
            "exe",
            "argv",
            "object",
            "request_id",
            "approver",
            "comment",
            "held_ms",
            "lost",
            "policy",
            "stated_reason",
            "kind",
            "user",
            "access",
            "tree_id",
            "state",
            "grant_seconds",
        ] {
            assert!(v.get(key).is_some(), "{key} missing from {v}");
        }
        assert_eq!(v["decision"], "deny");
        assert_eq!(v["hook"], "file_open");
    }

    #[test]
    fn a_hold_event_creates_a_hold_and_asks_the_source() {
        let mut st = state();
        let e = event(kind::HOLD, KAction::Ask, 0, 2);
        let (hold, timeout) = only_ask(handle(&mut st, &FakeHost, &e, Instant::now()));
        assert_eq!(timeout, Duration::from_secs(30));
        assert_eq!(hold.id, "1");
        assert_eq!(hold.hook, Some(ApiHook::FileOpen));
        assert_eq!(hold.access.as_deref(), Some("read"));
        assert_eq!(hold.rule.as_deref(), Some("ask-shadow"));
        assert_eq!(hold.user, "alice");
        assert_eq!(hold.tree_id, "10-777");
        assert_eq!(hold.cwd.as_deref(), Some("/home/alice"));
        assert_eq!(hold.timeout_secs, 30);
        assert_eq!(hold.ancestry, vec!["42 /usr/bin/cat", "10 /bin/sh"]);
        assert_eq!(st.holds.waiting().len(), 1);
        // The decision becomes the kernel's verdict, once.
        let approve =
            Decision { allow: true, reason: Reason::Approved, approver: None, comment: None, request_id: None };
        assert_eq!(decide(&mut st, "1", approve.clone()), Some((42, 42)));
        assert_eq!(decide(&mut st, "1", approve), None);
        assert_eq!(decide(&mut st, "9", Decision::expired()), None);
        assert!(st.holds.waiting().is_empty());
    }

    #[test]
    fn a_resolved_event_records_the_verdict_and_how_long_it_was_held() {
        let mut st = state();
        let start = Instant::now();
        only_ask(handle(&mut st, &FakeHost, &event(kind::HOLD, KAction::Ask, 0, 2), start));
        let d = Decision {
            allow: true,
            reason: Reason::Approved,
            approver: Some("bob".into()),
            comment: Some("fine".into()),
            request_id: Some("req-9".into()),
        };
        decide(&mut st, "1", d);
        let e = event(kind::RESOLVED, KAction::Ask, guard_common::reason::APPROVED, 2);
        let r = only_record(handle(&mut st, &FakeHost, &e, start + Duration::from_millis(1500)));
        assert_eq!(r.decision, Some(Verdict::Allow));
        assert_eq!(r.reason, Some(Reason::Approved));
        assert_eq!(r.action, Some(Action::Ask));
        assert_eq!(r.approver.as_deref(), Some("bob"));
        assert_eq!(r.comment.as_deref(), Some("fine"));
        assert_eq!(r.request_id.as_deref(), Some("req-9"));
        assert_eq!(r.held_ms, Some(1500));
        assert_eq!(r.user.as_deref(), Some("alice"));
        assert!(st.holds.by_id.is_empty());
    }

    #[test]
    fn an_exit_event_ends_the_holds_of_its_process() {
        let mut st = state();
        let start = Instant::now();
        only_ask(handle(&mut st, &FakeHost, &event(kind::HOLD, KAction::Ask, 0, 2), start));
        assert!(st.procs.contains_key(&42));
        let exit = event(kind::EXIT, KAction::Allow, 0, 0);
        let r = only_record(handle(&mut st, &FakeHost, &exit, start + Duration::from_millis(20)));
        assert_eq!(r.decision, Some(Verdict::Deny));
        assert_eq!(r.reason, Some(Reason::Exited));
        assert_eq!(r.action, Some(Action::Ask));
        assert_eq!(r.request_id.as_deref(), Some("1"));
        assert_eq!(r.tree_id.as_deref(), Some("10-777"));
        assert_eq!(r.held_ms, Some(20));
        assert!(st.holds.by_id.is_empty());
        // The process cache forgets the exited process (it stays bounded).
        assert!(!st.procs.contains_key(&42));
        // Nothing left to end: no record.
        assert!(handle(&mut st, &FakeHost, &exit, start).is_empty());
    }

    #[test]
    fn lost_events_make_one_record_each_time_more_are_lost() {
        let mut st = state();
        assert!(lost(&mut st, 0).is_none());
        let r = lost(&mut st, 5).expect("a record");
        assert_eq!(r.kind, RecordKind::Agent);
        assert_eq!(r.reason, Some(Reason::EventsLost));
        assert_eq!(r.hook, Some(ApiHook::RingBuffer));
        assert_eq!(r.lost, Some(5));
        assert!(lost(&mut st, 5).is_none());
        assert_eq!(lost(&mut st, 7).and_then(|r| r.lost), Some(2));
    }
}
