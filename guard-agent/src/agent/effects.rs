//! Carrying out what [`handle`](super::handle) decided: records go to the audit log (with the
//! state unlocked), holds go to the decision source, decisions become verdicts and the held
//! thread is resumed once it has really stopped.

use super::{
    handle::{self, Effect},
    Shared,
};
use crate::{
    hold::{Decision, DecisionSource},
    tree::proc,
};
use guard_api::Reason;
use guard_common::Event;
use nix::{sys::signal::Signal, unistd::Pid};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

/// Handles one kernel event; holds start a decision task on the current runtime.
pub fn on_event(agent: &Shared, source: &Arc<dyn DecisionSource>, e: Event) {
    // The handler reads /proc for processes it has not seen exec, and the user database for a
    // hold's user, with the state locked; records are written after it is unlocked.
    let effects = handle::handle(&mut agent.lock(), agent.system.as_ref(), &e, Instant::now());
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

/// Reports ring buffer overflows as records, never silently.
pub fn report_lost(agent: &Shared) {
    let record = {
        let mut st = agent.lock();
        let total = st.kernel.lost_events();
        handle::lost(&mut st, total)
    };
    if let Some(r) = record {
        agent.audit().write(&r);
    }
}

/// Every second, [`report_lost`].
pub async fn watch_lost(agent: Shared) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        report_lost(&agent);
    }
}
