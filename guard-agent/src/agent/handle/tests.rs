//! The event handler driven with a fake of the kernel maps and of the host.

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
    fn owner(&self, root: u32) -> Option<crate::agent::Owner> {
        (root == 10).then(|| crate::agent::Owner { uid: 1000, name: "alice".into(), source: "loginuid" })
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
    // The tree's owner (root 10's login uid), the policy's hash; argv read from /proc is marked.
    let owner = hold.owner.clone().expect("owner");
    assert_eq!((owner.uid, owner.name.as_str(), owner.source), (1000, "alice", "loginuid"));
    assert_eq!(hold.policy_hash, st.policy.hash);
    assert!(hold.policy_hash.starts_with("sha256:") && hold.policy_hash.len() == 71);
    assert!(hold.argv_from_proc && hold.lineage.iter().all(|l| l.argv_from_proc));
    assert_eq!(st.holds.waiting().len(), 1);
    // The decision becomes the kernel's verdict, once.
    let approve = Decision { allow: true, reason: Reason::Approved, approver: None, comment: None, request_id: None };
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
fn a_new_hold_of_the_same_thread_supersedes_its_approved_hold() {
    let mut st = state();
    let start = Instant::now();
    only_ask(handle(&mut st, &FakeHost, &event(kind::HOLD, KAction::Ask, 0, 2), start));
    let approve = Decision { allow: true, reason: Reason::Approved, approver: None, comment: None, request_id: None };
    assert_eq!(decide(&mut st, "1", approve), Some((42, 42)));
    // The restart asked for something else: a new hold, and the approved one ends as not run.
    let mut again = event(kind::HOLD, KAction::Ask, 0, 2);
    again.seq = 8;
    again.hash = 0xdef;
    let effects = handle(&mut st, &FakeHost, &again, start + Duration::from_millis(5));
    assert_eq!(effects.len(), 2, "{effects:?}");
    let Effect::Record(r) = &effects[0] else { panic!("{effects:?}") };
    assert_eq!(r.decision, Some(Verdict::Deny));
    assert_eq!(r.reason, Some(Reason::Approved));
    assert_eq!(r.request_id.as_deref(), Some("1"));
    assert!(matches!(&effects[1], Effect::Ask { hold, .. } if hold.id == "2"));
    assert_eq!(st.holds.by_id.len(), 1);
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

#[test]
fn an_exec_argv_rewritten_in_proc_loses_to_the_kernels_copy() {
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // The process rewrote its argv before the agent read /proc: the kernel's copy wins.
    let (argv, from_proc) = super::choose_argv(v(&["rm", "-rf", "/srv"]), Some(v(&["ls", "README.md"])));
    assert_eq!((argv, from_proc), (v(&["rm", "-rf", "/srv"]), false));
    // /proc agrees and says more (an argument longer than the kernel keeps): /proc, marked.
    let long = "x".repeat(100);
    let (argv, from_proc) = super::choose_argv(v(&["echo", &long[..63]]), Some(v(&["echo", &long])));
    assert_eq!((argv, from_proc), (v(&["echo", &long]), true));
    // The same: the kernel's, unmarked. Nothing from the kernel: /proc, marked.
    assert_eq!(super::choose_argv(v(&["ls"]), Some(v(&["ls"]))), (v(&["ls"]), false));
    assert_eq!(super::choose_argv(vec![], Some(v(&["ls"]))), (v(&["ls"]), true));
}
