//! Escape attempts through io_uring (issue 9, class 1): requests that run on io-wq workers
//! (IOSQE_ASYNC) or on the SQPOLL thread are decided by the tree's rules, asks from them are
//! denied at once, and a policy can refuse io_uring outright. Each test asserts the effect did
//! not happen and that a record says what was refused and why. The workload side is
//! `tests/src/ops_uring.rs` (`guard-e2e do uring MODE OP ARGS`).

use anyhow::{ensure, Context, Result};
use guard_api::{AuditRecord, Decision, Hook, Reason};
use std::io::ErrorKind;
use std::net::TcpListener;

use crate::harness::{self, Agent, DaemonUnderTest, Workload};
use crate::Test;

pub const TESTS: &[Test] = &[
    ("escape_uring_read_denied_file_via_worker_and_sqpoll", read_denied),
    ("escape_uring_connect_to_denied_address_via_worker_and_sqpoll", connect_denied),
    ("escape_uring_unlink_and_rename_of_delete_protected_file", delete_protected),
    ("escape_uring_ask_from_worker_or_sqpoll_is_unholdable", ask_unholdable),
    ("escape_uring_policy_io_uring_deny", policy_deny),
    ("escape_tree_limit_is_per_tree", tree_limit_per_tree),
    ("escape_tree_limit_concurrent_forks_never_unwatched", fork_burst),
];

fn is(field: &Option<String>, want: &str) -> bool {
    field.as_deref() == Some(want)
}

/// Deny records of `hook` on `object` whose thread is not the process's main thread: they came
/// from an io-wq worker or the SQPOLL thread (both are threads of the submitting process).
fn io_thread_denies(r: &[AuditRecord], hook: Hook, object: &str, reason: Reason) -> usize {
    r.iter()
        .filter(|x| {
            x.decision == Some(Decision::Deny)
                && x.hook == Some(hook)
                && x.reason == Some(reason)
                && is(&x.object, object)
                && x.tid.is_some()
                && x.tid != x.pid
        })
        .count()
}

/// Runs `steps` (`guard-e2e do uring ...` arguments, expected to succeed or fail with EPERM)
/// under `policy`; returns the records.
fn run(name: &str, policy: &str, steps: &[(&str, bool)]) -> Result<Vec<AuditRecord>> {
    let script: Vec<String> = steps.iter().map(|(op, _)| format!("guard-e2e do {op}")).collect();
    let a = Agent::start(name, policy, &script.join("; "))?;
    for (op, allowed) in steps {
        let r = a.result()?;
        ensure!(r.starts_with(if *allowed { "RESULT ok" } else { "RESULT errno=1 " }), "{op}: got {r}");
    }
    a.finish()?.records()
}

/// IORING_OP_OPENAT of a read-denied file, forced onto a worker (IOSQE_ASYNC) and issued by
/// the SQPOLL thread. Before task_newtask tracking both opened the file.
fn read_denied() -> Result<()> {
    harness::write_files(&["/tmp/t/secret/a", "/tmp/t/free"])?;
    let policy = r#"
[[rule]]
name = "secrets"
action = "deny"
file = { path = "/tmp/t/secret/", access = "read" }
"#;
    let r = run(
        "uring-read",
        policy,
        &[
            // The same modes reach an unruled file: the ring itself works.
            ("uring async open /tmp/t/free", true),
            ("uring sqpoll open /tmp/t/free", true),
            ("uring async open /tmp/t/secret/a", false),
            ("uring sqpoll open /tmp/t/secret/a", false),
            ("uring inline open /tmp/t/secret/a", false),
        ],
    )?;
    let n = io_thread_denies(&r, Hook::FileOpen, "/tmp/t/secret/a", Reason::Rule);
    ensure!(n >= 2, "{n} deny records from io_uring threads (want the worker's and the SQPOLL thread's): {r:#?}");
    ensure!(
        r.iter().any(|x| is(&x.rule, "secrets") && x.decision == Some(Decision::Deny)),
        "the deny records do not name the rule: {r:#?}"
    );
    Ok(())
}

/// IORING_OP_CONNECT to a denied loopback listener; the listener accepts nothing.
fn connect_denied() -> Result<()> {
    let denied = TcpListener::bind("127.0.0.1:0")?;
    denied.set_nonblocking(true)?;
    let allowed = TcpListener::bind("127.0.0.1:0")?;
    let (dp, ap) = (denied.local_addr()?.port(), allowed.local_addr()?.port());
    let policy = format!(
        r#"
[[rule]]
name = "no-port"
action = "deny"
connect = {{ cidr = "127.0.0.1/32", port = {dp} }}
"#
    );
    let r = run(
        "uring-connect",
        &policy,
        &[
            (&format!("uring async connect 127.0.0.1:{ap}"), true),
            (&format!("uring async connect 127.0.0.1:{dp}"), false),
            (&format!("uring sqpoll connect 127.0.0.1:{dp}"), false),
            (&format!("uring inline connect 127.0.0.1:{dp}"), false),
        ],
    )?;
    match denied.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Ok((_, from)) => anyhow::bail!("the denied listener accepted a connection from {from}"),
        Err(e) => return Err(e).context("accept on the denied listener"),
    }
    let n = r
        .iter()
        .filter(|x| {
            x.decision == Some(Decision::Deny)
                && x.hook == Some(Hook::SocketConnect)
                && is(&x.rule, "no-port")
                && x.tid.is_some()
                && x.tid != x.pid
        })
        .count();
    ensure!(n >= 2, "{n} connect deny records from io_uring threads: {r:#?}");
    Ok(())
}

/// IORING_OP_UNLINKAT and IORING_OP_RENAMEAT of a delete-protected file, on a worker and on
/// the SQPOLL thread: the file is still there, with its content.
fn delete_protected() -> Result<()> {
    harness::write_files(&["/tmp/t/keep/a", "/tmp/t/free"])?;
    let before = std::fs::read("/tmp/t/keep/a")?;
    std::fs::remove_file("/tmp/t/moved").ok();
    let policy = r#"
[[rule]]
name = "keep"
action = "deny"
file = { path = "/tmp/t/keep/", access = "delete" }
"#;
    let r = run(
        "uring-delete",
        policy,
        &[
            ("uring async unlink /tmp/t/keep/a", false),
            ("uring sqpoll unlink /tmp/t/keep/a", false),
            ("uring async rename /tmp/t/keep/a /tmp/t/moved", false),
            ("uring sqpoll rename /tmp/t/keep/a /tmp/t/moved", false),
            // The same requests on an unprotected file work.
            ("uring sqpoll rename /tmp/t/free /tmp/t/free2", true),
            ("uring async unlink /tmp/t/free2", true),
        ],
    )?;
    ensure!(std::fs::read("/tmp/t/keep/a").ok() == Some(before), "/tmp/t/keep/a was removed or changed");
    ensure!(!std::path::Path::new("/tmp/t/moved").exists(), "/tmp/t/keep/a was renamed");
    for hook in [Hook::PathUnlink, Hook::PathRename] {
        let n = io_thread_denies(&r, hook, "/tmp/t/keep/a", Reason::Rule);
        ensure!(n >= 2, "{n} {hook:?} deny records from io_uring threads: {r:#?}");
    }
    Ok(())
}

/// An ask rule met on a worker or the SQPOLL thread cannot be held (nothing would restart the
/// request): denied at once, recorded `unholdable`, no request made.
fn ask_unholdable() -> Result<()> {
    harness::write_files(&["/tmp/t/ask/a"])?;
    let policy = r#"
ask_timeout = "60s"
[[rule]]
name = "ask-read"
action = "ask"
file = { path = "/tmp/t/ask/", access = "read" }
"#;
    let start = std::time::Instant::now();
    let r = run(
        "uring-ask",
        policy,
        &[("uring async open /tmp/t/ask/a", false), ("uring sqpoll open /tmp/t/ask/a", false)],
    )?;
    // A held ask would wait for the 60 s ask_timeout; the agent's start, inside `start`, can
    // take tens of seconds under TCG on a loaded host, so only the timeout itself is the bound.
    ensure!(start.elapsed().as_secs() < 55, "the asks waited ({:?}): they were held", start.elapsed());
    ensure!(!r.iter().any(|x| x.request_id.is_some()), "something was held: {r:#?}");
    let n = io_thread_denies(&r, Hook::FileOpen, "/tmp/t/ask/a", Reason::Unholdable);
    ensure!(n >= 2, "{n} unholdable records from io_uring threads: {r:#?}");
    Ok(())
}

/// `io_uring = "deny"`: an inline IORING_OP_OPENAT of an unruled file is refused (on the
/// submitting thread, inside io_uring_enter), so is one on a worker, and an SQPOLL ring cannot
/// be set up; the same open as a plain syscall works.
fn policy_deny() -> Result<()> {
    harness::write_files(&["/tmp/t/free"])?;
    let policy = "default = \"allow\"\nio_uring = \"deny\"\n";
    let r = run(
        "uring-deny",
        policy,
        &[
            ("uring inline open /tmp/t/free", false),
            ("uring async open /tmp/t/free", false),
            ("uring sqpoll open /tmp/t/free", false),
            ("open-read /tmp/t/free", true),
        ],
    )?;
    let denied = |hook: Hook, object: Option<&str>| {
        r.iter().any(|x| {
            x.decision == Some(Decision::Deny)
                && x.reason == Some(Reason::IoUring)
                && x.hook == Some(hook)
                && object.is_none_or(|o| is(&x.object, o))
        })
    };
    ensure!(denied(Hook::FileOpen, Some("/tmp/t/free")), "no io_uring deny record of the open: {r:#?}");
    ensure!(denied(Hook::UringSqpoll, None), "no io_uring deny record of the SQPOLL setup: {r:#?}");
    let inline = r.iter().any(|x| {
        x.reason == Some(Reason::IoUring) && x.hook == Some(Hook::FileOpen) && x.tid.is_some() && x.tid == x.pid
    });
    ensure!(inline, "no io_uring deny record from the submitting thread itself (inline): {r:#?}");
    Ok(())
}

fn num(key: &str, line: &str) -> u32 {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)).and_then(|v| v.parse().ok()).unwrap_or(u32::MAX)
}

/// Two trees of one daemon (a user selector starts one per process): the first is at its
/// `max_tree_tasks` and keeps its tasks alive; its forks fail with EAGAIN and are recorded
/// `tree_limit`, while the second tree still forks freely.
fn tree_limit_per_tree() -> Result<()> {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    const E2E: &str = "/bin/guard-e2e";
    // Under /tmp itself: the tree runs as uid 4247.
    let go = "/tmp/guard-limit-go";
    std::fs::remove_file(go).ok();
    let d = DaemonUnderTest::start(
        "dlim",
        &[("svc", "default = \"allow\"\n")],
        "max_tree_tasks = 10\n[[selector]]\npolicy = \"svc\"\nuser = 4247\n",
    )?;
    let mut a =
        Workload::spawn(std::process::Command::new(E2E).args(["do", "fork-hold", "30", go]).uid(4247).gid(4247))?;
    let mut line = String::new();
    std::io::BufReader::new(a.0.stdout.take().context("piped")?).read_line(&mut line)?;
    let res = (|| -> Result<()> {
        // The root counts: 10 tasks leave room for 9 children.
        ensure!(num("forked=", &line) <= 9 && num("eagain=", &line) > 0 && num("other=", &line) == 0, "tree A: {line}");
        let (_, out) =
            Workload::spawn(std::process::Command::new(E2E).args(["do", "fork-wide", "5"]).uid(4247).gid(4247))?
                .finish()?;
        ensure!(
            num("forked=", &out) == 5 && num("eagain=", &out) == 0,
            "tree B could not fork while tree A was at its limit: {out}"
        );
        Ok(())
    })();
    std::fs::write(go, "")?;
    a.finish()?;
    res?;
    d.wait_record("of the refused fork", |x| {
        x.hook == Some(Hook::TaskAlloc) && x.decision == Some(Decision::Deny) && x.reason == Some(Reason::TreeLimit)
    })?;
    Ok(())
}

/// 16 threads fork 40 children each at once, against a task limit of 200: every child that
/// exists is in the tree (its open of a read-denied file fails with EPERM), none runs
/// unwatched, and the forks past the limit fail with EAGAIN.
fn fork_burst() -> Result<()> {
    harness::write_files(&["/tmp/t/secret/a"])?;
    let policy = r#"
[[rule]]
name = "secrets"
action = "deny"
file = { path = "/tmp/t/secret/", access = "read" }
"#;
    let a = Agent::start_with(
        "burst",
        policy,
        "guard-e2e do fork-burst 16 40 /tmp/t/secret/a; guard-e2e do fork-burst 16 40 /tmp/t/secret/a",
        &["--max-tree-tasks", "200"],
    )?;
    for _ in 0..2 {
        let r = a.result()?;
        ensure!(num("escaped=", &r) == 0 && num("other=", &r) == 0, "a child ran unwatched: {r}");
        ensure!(num("denied=", &r) > 0, "no child ran: {r}");
    }
    let out = a.finish()?;
    let r = out.records()?;
    ensure!(
        r.iter()
            .any(|x| x.hook == Some(Hook::FileOpen) && is(&x.rule, "secrets") && x.decision == Some(Decision::Deny)),
        "no deny record of the children's opens"
    );
    Ok(())
}
