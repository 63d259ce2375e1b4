//! The truth behind `status`: whether guard enforces right now, checked where it can fail
//! rather than taken from the agent's own belief. Three things must hold:
//!
//! - every program is attached: the kernel lists a link for each (see [`attached`]);
//! - the ring buffer is being read: the reader beat within [`RING_STALE`] (see [`ring`]);
//! - the server, when one is configured, answers this agent now (see `RemoteDecisions::probe`).
//!
//! The audit spool's problems (a full backlog, a record the server refuses: see `audit::log`)
//! degrade the state too, though enforcement goes on (`enforcing` stays true).
//!
//! Otherwise the state is `degraded`, with one problem per failed check, each naming what
//! failed (the program, the reader, the server). `guard-agent status --check` turns the state
//! into an exit code for monitoring: 0 enforcing, 1 degraded, 2 not running.

use crate::{
    hold::remote::RemoteDecisions,
    kernel::{
        attached::{self, Identity, ProgramState},
        ring,
    },
};
use serde_json::{json, Value};
use std::time::Duration;

/// A reader that has not beaten for this long is taken as stopped (it beats every second).
pub const RING_STALE: Duration = Duration::from_secs(5);
/// How long `status` waits for the server.
pub const SERVER_WAIT: Duration = Duration::from_secs(3);

/// The ring buffer reader's state, as [`ring::health`] reports it.
pub struct Reader {
    pub running: bool,
    pub ms_since_beat: Option<u64>,
    pub events_read: u64,
}

/// The problems the three checks found; none means enforcing.
pub fn problems(programs: &[ProgramState], reader: &Reader, server: Option<&Result<(), String>>) -> Vec<String> {
    let mut out = vec![];
    let detached: Vec<&str> = programs.iter().filter(|p| !p.attached()).map(|p| p.name.as_str()).collect();
    if programs.is_empty() {
        out.push("no programs are known to this agent".to_string());
    } else if !detached.is_empty() {
        out.push(format!(
            "{} of {} programs not attached in the kernel: {}",
            detached.len(),
            programs.len(),
            detached.join(", ")
        ));
    }
    match (reader.running, reader.ms_since_beat) {
        (false, _) => out.push("the ring buffer is not being read: its reader stopped".to_string()),
        (true, Some(ms)) if ms > RING_STALE.as_millis() as u64 => {
            out.push(format!("the ring buffer is not being read: its reader last ran {} s ago", ms / 1000))
        }
        _ => {}
    }
    if let Some(Err(e)) = server {
        out.push(e.clone());
    }
    out
}

/// Runs the checks and returns `{"state", "enforcing", "problems", "programs", "ring",
/// "server"}`; `spool` are the audit spool's problems. Called from an admin request handler, on
/// a multi-thread runtime (the server probe blocks it).
pub fn check(identity: &Identity, remote: Option<&RemoteDecisions>, spool: Vec<String>) -> Value {
    let programs = attached::check(identity);
    let (running, ms_since_beat, events_read) = ring::health();
    let reader = Reader { running, ms_since_beat, events_read };
    let server = remote.map(probe);
    let mut problems = problems(&programs, &reader, server.as_ref());
    let enforcing = problems.is_empty();
    problems.extend(spool);
    json!({
        "state": if problems.is_empty() { "enforcing" } else { "degraded" },
        "enforcing": enforcing,
        "problems": problems,
        "programs": {
            "total": programs.len(),
            "attached": programs.iter().filter(|p| p.attached()).count(),
            "detached": programs.iter().filter(|p| !p.attached()).map(|p| &p.name).collect::<Vec<_>>(),
            "links": programs.iter().map(|p| json!({"name": p.name, "program_id": p.program_id, "link_ids": p.link_ids})).collect::<Vec<_>>(),
        },
        "ring": {"reading": reader.running, "ms_since_beat": reader.ms_since_beat, "events_read": reader.events_read},
        "server": server.map(|r| match r {
            Ok(()) => json!({"reachable": true}),
            Err(e) => json!({"reachable": false, "error": e}),
        }),
    })
}

fn probe(remote: &RemoteDecisions) -> Result<(), String> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| h.block_on(remote.probe(SERVER_WAIT)))
        }
        _ => Err("guard-server could not be probed (no multi-thread runtime)".to_string()),
    }
}

/// The one-line summary: `enforcing`, or `degraded: <problems>`.
pub fn summary(status: &Value) -> String {
    let h = &status["health"];
    match h["state"].as_str() {
        Some("enforcing") => "enforcing".to_string(),
        Some(state) => {
            let problems: Vec<&str> =
                h["problems"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            format!("{state}: {}", problems.join("; "))
        }
        None => "degraded: the agent did not report its health".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prog(name: &str, links: &[u32]) -> ProgramState {
        ProgramState { name: name.into(), program_id: 7, link_ids: links.to_vec() }
    }

    fn reading() -> Reader {
        Reader { running: true, ms_since_beat: Some(200), events_read: 3 }
    }

    #[test]
    fn healthy_is_no_problem() {
        assert!(problems(&[prog("file_open", &[1]), prog("task_alloc", &[2])], &reading(), Some(&Ok(()))).is_empty());
        assert!(problems(&[prog("file_open", &[1])], &reading(), None).is_empty());
    }

    #[test]
    fn each_failure_names_what_failed() {
        let p = problems(&[prog("file_open", &[]), prog("task_alloc", &[2])], &reading(), None);
        assert_eq!(p, ["1 of 2 programs not attached in the kernel: file_open"]);
        let stale = Reader { running: true, ms_since_beat: Some(9000), events_read: 0 };
        let p =
            problems(&[prog("file_open", &[1])], &stale, Some(&Err("guard-server https://x:1 is unreachable".into())));
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("ring buffer") && p[0].contains("9 s ago"), "{p:?}");
        assert!(p[1].contains("https://x:1"), "{p:?}");
        let stopped = Reader { running: false, ms_since_beat: Some(1), events_read: 0 };
        assert!(problems(&[prog("x", &[1])], &stopped, None)[0].contains("reader stopped"));
        assert!(problems(&[], &reading(), None)[0].contains("no programs"));
    }

    #[test]
    fn summary_line() {
        let ok = json!({"health": {"state": "enforcing", "problems": []}});
        assert_eq!(summary(&ok), "enforcing");
        let bad = json!({"health": {"state": "degraded", "problems": ["a", "b"]}});
        assert_eq!(summary(&bad), "degraded: a; b");
        assert!(summary(&json!({})).starts_with("degraded"));
    }
}
