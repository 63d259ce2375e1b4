//! The agent's shared state and what it does with each kernel event.

use crate::{
    audit::AuditLog,
    events::{self, argv_of, hook_name, object_text, reason_name, Record},
    holds::{Decision, DecisionSource, HoldInfo, HoldTable, Lineage, PendingHold, StatedReason},
    kernel::Kernel,
    policy::{action_name, Policy},
};
use guard_common::{kind, Action, Event, Hook};
use nix::{sys::signal::Signal, unistd::Pid};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// What the agent knows of a watched process, kept after it exits so records still name it.
#[derive(Debug, Clone, Default)]
pub struct ProcInfo {
    pub exe: Option<String>,
    pub argv: Vec<String>,
    pub ppid: u32,
}

pub struct State {
    pub kernel: Kernel,
    pub policy: Policy,
    pub holds: HoldTable,
    pub procs: HashMap<u32, ProcInfo>,
    pub audit: AuditLog,
    pub host: String,
    /// Shown on requests: the policy file's name.
    pub policy_name: String,
    pub lost_reported: u64,
    /// What the daemon adds: several policies, trees started by selectors, stated reasons.
    pub trees: TreeState,
}

/// The daemon's view of its trees. Under `run` it stays empty and `State::policy` applies.
#[derive(Default)]
pub struct TreeState {
    /// Policies by kernel id: (name, policy).
    pub policies: HashMap<u8, (String, Policy)>,
    /// Selectors by rank, i.e. in winning order (the kernel reports rank + 1 on the exec
    /// that starts a tree).
    pub selectors: Vec<crate::config::SelectorConf>,
    /// Watched trees by root pid.
    pub trees: HashMap<u32, TreeInfo>,
    /// The latest reason each tree stated, by root pid.
    pub reasons: HashMap<u32, StatedReason>,
}

/// One watched tree, as `status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TreeInfo {
    pub root: u32,
    pub tree_id: String,
    /// How it came to be watched: the selector's description, "registered", "adopted".
    pub selector: String,
    pub policy_id: u8,
    /// Other selectors the root matched too, which lost (see config.rs for the rule).
    pub also_matched: Vec<String>,
    pub exe: Option<String>,
    pub since: String,
}

pub type Shared = Arc<Mutex<State>>;

impl State {
    /// The policy with kernel id `id`: the daemon's, or under `run` the only one.
    pub fn policy_of(&self, id: u8) -> (&Policy, &str) {
        match self.trees.policies.get(&id) {
            Some((name, p)) => (p, name.as_str()),
            None => (&self.policy, self.policy_name.as_str()),
        }
    }

    fn rule_name(&self, policy: u8, rule: u32) -> Option<String> {
        let (p, _) = self.policy_of(policy);
        (rule as usize).checked_sub(1).and_then(|i| p.rules.get(i)).map(|r| r.name.clone())
    }

    /// The root of the tree a task belongs to, from the kernel's map while it lives.
    pub fn tree_root(&self, tid: u32) -> Option<u32> {
        self.kernel.watched.get(&tid, 0).ok().map(|w| w.root)
    }

    fn stated_reason(&self, root: Option<u32>) -> Option<StatedReason> {
        root.and_then(|r| self.trees.reasons.get(&r).cloned())
    }

    /// The tree of a task that may have exited since its event: the kernel's map while it
    /// lives, else the nearest known tree root among the process and its recorded ancestors.
    fn tree_of_event(&self, e: &Event) -> Option<u32> {
        if let Some(root) = self.tree_root(e.tid) {
            return Some(root);
        }
        let mut pid = e.tgid;
        for _ in 0..32 {
            if self.trees.trees.contains_key(&pid) {
                return Some(pid);
            }
            pid = match self.procs.get(&pid) {
                Some(p) if p.ppid != 0 => p.ppid,
                _ if pid == e.tgid && e.ppid != 0 => e.ppid,
                _ => return None,
            };
        }
        None
    }

    fn proc_info(&mut self, pid: u32) -> ProcInfo {
        if let Some(p) = self.procs.get(&pid) {
            return p.clone();
        }
        // Not seen exec'ing (it started before it was watched): ask /proc while it lives.
        let info = read_proc(pid);
        self.procs.insert(pid, info.clone());
        info
    }

    /// The chain of watched ancestors, nearest first.
    fn lineage(&mut self, mut pid: u32) -> Vec<Lineage> {
        let mut out = vec![];
        for _ in 0..32 {
            let info = self.proc_info(pid);
            out.push(Lineage { pid, ppid: info.ppid, exe: info.exe.clone(), argv: info.argv.clone() });
            // Up to the tree's root: a parent that forked without exec (a shell running a
            // builtin or a subshell) is still in the tree, though no exec event named it.
            if info.ppid == 0 || !(self.procs.contains_key(&info.ppid) || self.kernel.is_watched(info.ppid)) {
                break;
            }
            pid = info.ppid;
        }
        out
    }

    fn record(&mut self, e: &Event) -> Record {
        let mut info = self.proc_info(e.tgid);
        if info.ppid == 0 {
            info.ppid = e.ppid;
            self.procs.insert(e.tgid, info.clone());
        }
        let (exe, argv) = program(e, info);
        let root = self.tree_of_event(e);
        let action = Action::from_u8(e.action).unwrap_or(Action::Deny);
        let denied = matches!(action, Action::Deny)
            || matches!(
                e.reason,
                guard_common::reason::DENIED | guard_common::reason::EXPIRED | guard_common::reason::UNHOLDABLE
            );
        Record {
            time: events::now_rfc3339(),
            host: self.host.clone(),
            decision: if denied { "deny" } else { "allow" },
            reason: reason_name(e.reason).to_string(),
            rule: self.rule_name(e.policy, e.rule),
            action: action_name(action),
            hook: hook_name(e),
            pid: e.tgid,
            tid: e.tid,
            ppid: e.ppid,
            uid: e.uid,
            exe,
            argv,
            object: object_text(e),
            request_id: None,
            approver: None,
            comment: None,
            held_ms: None,
            lost: None,
            policy: (!self.trees.policies.is_empty()).then(|| self.policy_of(e.policy).1.to_string()),
            stated_reason: self.stated_reason(root),
        }
    }
}

/// The program an event is about: for an exec decision the one being started, not the caller.
fn program(e: &Event, info: ProcInfo) -> (Option<String>, Vec<String>) {
    if e.hook == Hook::Exec as u8 {
        (Some(object_text(e)), argv_of(e))
    } else {
        (info.exe, info.argv)
    }
}

/// A user's name, or the uid as text when it has none.
fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(uid.into()).ok().flatten().map(|u| u.name).unwrap_or_else(|| uid.to_string())
}

/// "<pid>-<start time in clock ticks>": unique on this host even when pids are reused.
pub fn tree_id(root: u32) -> String {
    let start = std::fs::read_to_string(format!("/proc/{root}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").and_then(|(_, r)| r.split(' ').nth(19).map(str::to_owned)))
        .unwrap_or_else(|| "0".into());
    format!("{root}-{start}")
}

fn read_proc(pid: u32) -> ProcInfo {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok().map(|p| p.display().to_string());
    let argv = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
        })
        .unwrap_or_default();
    let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.split(' ').nth(1).and_then(|p| p.parse().ok()).unwrap_or(0)))
        .unwrap_or(0);
    ProcInfo { exe, argv, ppid }
}

/// Handles one kernel event. Holds start a decision task on `rt`.
pub fn handle_event(state: &Shared, source: &Arc<dyn DecisionSource>, e: Event) {
    let mut st = state.lock().expect("state lock");
    match e.kind {
        kind::EXEC => {
            let mut info = read_proc(e.tgid);
            info.exe = Some(object_text(&e));
            if info.argv.is_empty() {
                info.argv = argv_of(&e);
            }
            if info.ppid == 0 {
                info.ppid = e.ppid;
            }
            if e.aux != 0 {
                // The exec that started a new tree (a selector matched in the kernel).
                let rank = e.aux as usize - 1;
                let selector = st
                    .trees
                    .selectors
                    .get(rank)
                    .map(|s| s.describe())
                    .unwrap_or_else(|| format!("selector rank {rank}"));
                // From /proc while the process lives; from the event itself if it is gone.
                let proc = crate::trees::read_proc(e.tgid).unwrap_or_else(|| crate::trees::Proc {
                    pid: e.tgid,
                    ppid: e.ppid,
                    uid: e.uid,
                    exe: info.exe.clone(),
                    argv: info.argv.clone(),
                    cgroup: None,
                });
                let also: Vec<String> = crate::trees::matching(&st.trees.selectors, &proc)
                    .into_iter()
                    .filter(|(r, _)| *r != rank)
                    .map(|(_, s)| s.describe())
                    .collect();
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
                    tree_id: tree_id(e.tgid),
                    selector,
                    policy_id: e.policy,
                    also_matched: also,
                    exe: info.exe.clone(),
                    since: events::now_rfc3339(),
                };
                st.trees.trees.insert(e.tgid, t);
                // A pid reused by a new tree does not inherit an old tree's reason.
                st.trees.reasons.remove(&e.tgid);
            }
            st.procs.insert(e.tgid, info);
        }
        kind::EXIT => {
            // Holds of a process that died while held end here.
            let gone: Vec<String> =
                st.holds.by_id.iter().filter(|(_, h)| h.info.pid == e.tgid).map(|(id, _)| id.clone()).collect();
            for id in gone {
                if let Some(h) = st.holds.by_id.remove(&id) {
                    tracing::info!("hold {id} ended: process {} exited while held", e.tgid);
                    // The operation never happened: a deny, whatever was decided meanwhile.
                    let r = Record {
                        time: events::now_rfc3339(),
                        host: st.host.clone(),
                        decision: "deny",
                        reason: "exited".into(),
                        rule: h.info.rule.clone(),
                        action: "ask",
                        hook: h.info.hook,
                        pid: h.info.pid,
                        tid: h.info.tid,
                        ppid: h.info.ppid,
                        uid: h.info.uid,
                        exe: h.info.exe.clone(),
                        argv: h.info.argv.clone(),
                        object: h.info.object.clone(),
                        request_id: Some(id),
                        approver: h.decision.as_ref().and_then(|d| d.approver.clone()),
                        comment: Some("the process exited while held".into()),
                        held_ms: Some(h.started.elapsed().as_millis() as u64),
                        lost: None,
                        policy: Some(h.info.policy.clone()),
                        stated_reason: h.info.stated_reason.clone(),
                    };
                    st.audit.write(&r);
                }
            }
        }
        kind::DECISION => {
            let r = st.record(&e);
            st.audit.write(&r);
        }
        kind::HOLD => {
            let id = st.holds.new_id();
            let info = st.proc_info(e.tgid);
            let (timeout, policy_name) = {
                let (p, name) = st.policy_of(e.policy);
                (p.ask_timeout, name.to_string())
            };
            let (exe, argv) = program(&e, info);
            let lineage = st.lineage(e.tgid);
            let root = st.tree_root(e.tid).unwrap_or_else(|| lineage.last().map(|l| l.pid).unwrap_or(e.tgid));
            let tree = st.trees.trees.get(&root).map(|t| t.tree_id.clone()).unwrap_or_else(|| tree_id(root));
            let hold = HoldInfo {
                id: id.clone(),
                hook: hook_name(&e),
                object: object_text(&e),
                rule: st.rule_name(e.policy, e.rule),
                pid: e.tgid,
                tid: e.tid,
                ppid: e.ppid,
                uid: e.uid,
                exe,
                argv,
                ancestry: lineage.iter().map(|l| format!("{} {}", l.pid, l.exe.as_deref().unwrap_or("?"))).collect(),
                lineage,
                cwd: std::fs::read_link(format!("/proc/{}/cwd", e.tgid)).ok().map(|p| p.display().to_string()),
                user: user_name(e.uid),
                tree_id: tree,
                policy: policy_name,
                stated_reason: st.stated_reason(Some(root)),
                held_secs: 0,
                timeout_secs: timeout.as_secs(),
            };
            tracing::info!(
                "hold {id}: {} {} by pid {} ({})",
                hold.hook,
                hold.object,
                hold.pid,
                hold.rule.clone().unwrap_or_default()
            );
            st.holds.by_id.insert(
                id.clone(),
                PendingHold { info: hold.clone(), seq: e.seq, hash: e.hash, started: Instant::now(), decision: None },
            );
            let decision = source.decide(hold);
            let state = state.clone();
            tokio::spawn(async move {
                // Each source ends at the timeout with its own reason (expired, unreachable);
                // this is only the backstop should one fail to.
                let backstop = timeout + Duration::from_secs(2);
                let d = tokio::time::timeout(backstop, decision).await.unwrap_or_else(|_| Decision::expired());
                apply_decision(&state, &id, d).await;
            });
        }
        kind::RESOLVED => {
            let mut r = st.record(&e);
            if let Some(id) = st.holds.find(e.tid, e.seq).cloned() {
                if let Some(h) = st.holds.by_id.remove(&id) {
                    r.request_id = Some(id);
                    r.held_ms = Some(h.started.elapsed().as_millis() as u64);
                    // The reason shown on the request is the one kept with its outcome.
                    if h.info.stated_reason.is_some() {
                        r.stated_reason = h.info.stated_reason.clone();
                    }
                    if let Some(d) = h.decision {
                        if d.request_id.is_some() {
                            r.request_id = d.request_id;
                        }
                        r.reason = d.reason.to_string();
                        r.approver = d.approver;
                        r.comment = d.comment;
                    }
                }
            }
            st.audit.write(&r);
        }
        _ => tracing::warn!("unknown event kind {}", e.kind),
    }
}

/// Writes the verdict, then resumes the held thread once it has really stopped.
pub async fn apply_decision(state: &Shared, id: &str, d: Decision) {
    let target = {
        let mut st = state.lock().expect("state lock");
        let Some(h) = st.holds.by_id.get_mut(id) else {
            return;
        };
        if h.decision.is_some() {
            return;
        }
        h.decision = Some(d.clone());
        let (tid, tgid, seq, hash) = (h.info.tid, h.info.pid, h.seq, h.hash);
        tracing::info!("hold {id}: {} ({})", if d.allow { "allow" } else { "deny" }, d.reason);
        if let Err(e) = st.kernel.set_verdict(tid, seq, hash, d.allow) {
            tracing::error!("hold {id}: {e:#}; the kernel will deny it at its own deadline");
            return;
        }
        (tid, tgid)
    };
    resume(target.0, target.1).await;
}

/// SIGCONT must arrive after the SIGSTOP took effect: an early SIGCONT cancels the pending
/// stop and the thread would never re-enter the hook to read its verdict.
async fn resume(tid: u32, tgid: u32) {
    for _ in 0..200 {
        if thread_state(tgid, tid).map(|s| s == 'T' || s == 't').unwrap_or(true) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    nix::sys::signal::kill(Pid::from_raw(tgid as i32), Signal::SIGCONT).ok();
}

fn thread_state(tgid: u32, tid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{tgid}/task/{tid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// Denies every hold still waiting: used when the agent stops, so nothing stays frozen.
pub async fn deny_all(state: &Shared, reason: &'static str) {
    let ids: Vec<String> = {
        let st = state.lock().expect("state lock");
        st.holds.by_id.iter().filter(|(_, h)| h.decision.is_none()).map(|(id, _)| id.clone()).collect()
    };
    for id in ids {
        apply_decision(
            state,
            &id,
            Decision { request_id: None, allow: false, reason, approver: None, comment: Some("agent stopping".into()) },
        )
        .await;
    }
}

/// Reports ring buffer overflows as records, never silently.
pub fn report_lost(state: &Shared) {
    let mut st = state.lock().expect("state lock");
    let lost = st.kernel.lost_events();
    if lost > st.lost_reported {
        let n = lost - st.lost_reported;
        st.lost_reported = lost;
        tracing::error!("{n} kernel events were lost: the ring buffer was full");
        let r = Record {
            time: events::now_rfc3339(),
            host: st.host.clone(),
            decision: "deny",
            reason: "events_lost".into(),
            rule: None,
            action: "deny",
            hook: "ring_buffer",
            pid: 0,
            tid: 0,
            ppid: 0,
            uid: 0,
            exe: None,
            argv: vec![],
            object: "events_lost".into(),
            request_id: None,
            approver: None,
            comment: Some("holds that could not be reported were denied in the kernel".into()),
            held_ms: None,
            lost: Some(n),
            policy: None,
            stated_reason: None,
        };
        st.audit.write(&r);
    }
}
