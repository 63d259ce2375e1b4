//! Carrying out what [`handle`](super::handle) decided: records go to the audit log (with the
//! state unlocked), holds go to the decision source, decisions become verdicts and the held
//! thread is resumed once it has really stopped.

use super::{
    handle::{self, Effect},
    Owner, Shared, System,
};
use crate::{
    hold::{Decision, DecisionSource},
    tree::proc::{self, Proc},
};
use guard_api::Reason;
use guard_common::{kind, Event};
use nix::{sys::signal::Signal, unistd::Pid};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

/// Handles one kernel event; holds start a decision task on the current runtime.
pub fn on_event(agent: &Shared, source: &Arc<dyn DecisionSource>, e: Event) {
    // What the handler will certainly ask of the host (/proc for an exec, the user database
    // and the cwd for a hold) is read before the state is locked; only processes the agent has
    // not seen exec are read under the lock. Records are written after it is unlocked.
    let host = Prefetched::for_event(agent.system.as_ref(), &e);
    let effects = handle::handle(&mut agent.lock(), &host, &e, Instant::now());
    for effect in effects {
        match effect {
            Effect::Record(r) => agent.audit().write(&r),
            Effect::Ask { hold, timeout } => {
                let id = hold.id.clone();
                let decision = source.decide(hold);
                let agent = agent.clone();
                tokio::spawn(async move {
                    // Each source ends at the timeout with its own reason (expired,
                    // unreachable); this is only the backstop should one fail to.
                    let backstop = timeout + Duration::from_secs(2);
                    let d = tokio::time::timeout(backstop, decision).await.unwrap_or_else(|_| Decision::expired());
                    apply_decision(&agent, &id, d).await;
                });
            }
        }
    }
}

/// The host, with the answers for one event read ahead (None: ask the host).
struct Prefetched<'a> {
    host: &'a dyn System,
    pid: u32,
    proc: Option<Option<Proc>>,
    cwd: Option<Option<String>>,
    user: Option<(u32, String)>,
    /// For the exec that starts a tree: its owner.
    owner: Option<Option<Owner>>,
}

impl<'a> Prefetched<'a> {
    fn for_event(host: &'a dyn System, e: &Event) -> Self {
        let mut p = Prefetched { host, pid: e.tgid, proc: None, cwd: None, user: None, owner: None };
        match e.kind {
            kind::EXEC => {
                p.proc = Some(host.proc(e.tgid));
                if e.aux != 0 {
                    p.owner = Some(host.owner(e.tgid));
                }
            }
            kind::HOLD => {
                p.cwd = Some(host.cwd(e.tgid));
                p.user = Some((e.uid, host.user_name(e.uid)));
            }
            _ => {}
        }
        p
    }
}

impl System for Prefetched<'_> {
    fn proc(&self, pid: u32) -> Option<Proc> {
        match &self.proc {
            Some(p) if pid == self.pid => p.clone(),
            _ => self.host.proc(pid),
        }
    }

    fn cwd(&self, pid: u32) -> Option<String> {
        match &self.cwd {
            Some(c) if pid == self.pid => c.clone(),
            _ => self.host.cwd(pid),
        }
    }

    fn user_name(&self, uid: u32) -> String {
        match &self.user {
            Some((u, name)) if *u == uid => name.clone(),
            _ => self.host.user_name(uid),
        }
    }

    fn tree_id(&self, root: u32) -> String {
        self.host.tree_id(root)
    }

    fn owner(&self, root: u32) -> Option<Owner> {
        match &self.owner {
            Some(o) if root == self.pid => o.clone(),
            _ => self.host.owner(root),
        }
    }
}

/// Writes the verdict, then resumes the held thread once it has really stopped.
pub async fn apply_decision(agent: &Shared, id: &str, d: Decision) {
    let target = handle::decide(&mut agent.lock(), id, d);
    if let Some((tid, tgid)) = target {
        resume(tid, tgid).await;
    }
}

/// SIGCONT must arrive after the SIGSTOP took effect: an early SIGCONT cancels the pending
/// stop and the thread would never re-enter the hook to read its verdict.
async fn resume(tid: u32, tgid: u32) {
    for _ in 0..200 {
        if proc::thread_state(tgid, tid).map(|s| s == 'T' || s == 't').unwrap_or(true) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    nix::sys::signal::kill(Pid::from_raw(tgid as i32), Signal::SIGCONT).ok();
}

/// Denies every hold still waiting: used when the agent stops, so nothing stays frozen.
pub async fn deny_all(agent: &Shared, reason: Reason) {
    let ids = agent.lock().holds.waiting_ids();
    for id in ids {
        apply_decision(agent, &id, Decision::deny(reason, Some("agent stopping".into()))).await;
    }
}

/// Reports ring buffer overflows as records, never silently: the events lost, and the
/// `audit`/`ask` operations denied for want of room.
pub fn report_lost(agent: &Shared) {
    let records = {
        let mut st = agent.lock();
        let total = st.kernel.lost_events();
        let denied = st.kernel.failed_closed(guard_common::reason::RING_FULL);
        [handle::lost(&mut st, total), handle::ring_full(&mut st, denied)]
    };
    let mut audit = agent.audit();
    for r in records.into_iter().flatten() {
        audit.write(&r);
    }
    audit.flush();
}

/// Every second, [`report_lost`]; its flush is also the spool's backstop (a checkpoint due by
/// time, a batch some path did not flush).
pub async fn watch_lost(agent: Shared) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        report_lost(&agent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A host that counts how often it is asked.
    #[derive(Default)]
    struct Counting(AtomicUsize);

    impl System for Counting {
        fn proc(&self, pid: u32) -> Option<Proc> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Some(Proc { pid, ..Default::default() })
        }
        fn cwd(&self, _: u32) -> Option<String> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Some("/".into())
        }
        fn user_name(&self, uid: u32) -> String {
            self.0.fetch_add(1, Ordering::SeqCst);
            uid.to_string()
        }
        fn tree_id(&self, root: u32) -> String {
            root.to_string()
        }
        fn owner(&self, _: u32) -> Option<Owner> {
            self.0.fetch_add(1, Ordering::SeqCst);
            None
        }
    }

    fn event(kind: u8) -> Event {
        // SAFETY: Event is plain old data (integers and byte arrays): all zeroes is a valid one.
        let mut e: Event = unsafe { std::mem::zeroed() };
        e.kind = kind;
        e.tgid = 42;
        e.uid = 1000;
        e
    }

    #[test]
    fn answers_for_the_event_are_read_once_before_the_lock() {
        let host = Counting::default();
        let p = Prefetched::for_event(&host, &event(kind::HOLD));
        assert_eq!(host.0.load(Ordering::SeqCst), 2, "cwd and user read ahead");
        assert_eq!(p.cwd(42).as_deref(), Some("/"));
        assert_eq!(p.user_name(1000), "1000");
        assert_eq!(host.0.load(Ordering::SeqCst), 2, "served from what was read ahead");
        assert_eq!(p.user_name(7), "7");
        assert_eq!(host.0.load(Ordering::SeqCst), 3, "another user is asked of the host");
        let p = Prefetched::for_event(&host, &event(kind::EXEC));
        assert_eq!(p.proc(42).map(|p| p.pid), Some(42));
        assert_eq!(host.0.load(Ordering::SeqCst), 4);
    }
}
