//! End-to-end tests of `guard-agent daemon` (issue 4): selectors, registration, reasons,
//! status, policy reload and restart re-adoption.

use crate::{
    harness::{DaemonUnderTest, Workload},
    is, Test,
};
use anyhow::{ensure, Context, Result};
use guard_api::{AuditRecord, Decision, Reason, RecordKind, StatedReason};
use serde_json::Value;
use std::{
    os::unix::process::CommandExt,
    process::Command,
    time::{Duration, Instant},
};

pub const TESTS: &[Test] = &[
    ("daemon_selectors_and_registrations_watch_trees_with_their_own_policies", selectors_and_registrations),
    ("daemon_overlaps_resolve_by_rule_and_reload_keeps_or_replaces_policies", overlaps_and_reload),
    ("daemon_restart_keeps_enforcing_and_readopts_trees", restart_readopts),
    ("daemon_stated_reasons_reach_holds_and_records_of_their_own_tree", stated_reasons),
];

const E2E: &str = "/bin/guard-e2e";

fn deny_read(rule: &str, path: &str) -> String {
    format!("default = \"allow\"\nask_timeout = \"60s\"\n[[rule]]\nname = \"{rule}\"\naction = \"deny\"\nfile = {{ path = \"{path}\", access = \"read\" }}\n")
}

/// A copy of guard-e2e under another name: an "AI agent" binary for exe selectors.
fn agent_binary(dir: &str, name: &str) -> Result<String> {
    std::fs::create_dir_all(format!("{dir}/bin"))?;
    let to = format!("{dir}/bin/{name}");
    std::fs::copy(E2E, &to).context("copying guard-e2e")?;
    Ok(to)
}

/// Runs a command to its end; returns its output lines.
fn run(cmd: &mut Command) -> Result<String> {
    let (_, out) = Workload::spawn(cmd)?.finish()?;
    Ok(out)
}

fn has_line(out: &str, line: &str) -> bool {
    out.lines().any(|l| l.trim() == line)
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

/// True if the record carries a stated reason that satisfies `pred`.
fn stated(r: &AuditRecord, pred: impl Fn(&StatedReason) -> bool) -> bool {
    r.stated_reason.as_ref().is_some_and(pred)
}

/// A shell that waits for `go` to exist, then runs `then` (exec'd).
fn waiter(go: &str, then: &str) -> Command {
    let mut c = Command::new("/bin/sh");
    c.args(["-c", &format!("while [ ! -e {go} ]; do sleep 0.1; done; {then}")]);
    c
}

fn touch(path: &str) -> Result<()> {
    std::fs::write(path, b"go").with_context(|| format!("touching {path}"))
}

fn ensure_cgroup2() -> Result<()> {
    if !std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        std::fs::create_dir_all("/sys/fs/cgroup")?;
        let st = Command::new("mount").args(["-t", "cgroup2", "none", "/sys/fs/cgroup"]).status()?;
        ensure!(st.success(), "cannot mount cgroup2");
    }
    Ok(())
}

fn selectors_and_registrations() -> Result<()> {
    let dir = "/tmp/t/dsel";
    std::fs::create_dir_all(dir)?;
    let secret = |n: &str| format!("{dir}/secret-{n}");
    crate::harness::write_files(&[&secret("coding"), &secret("ops"), &secret("user"), &secret("reg")])?;
    let coding_agent = agent_binary(dir, "coding-agent")?;
    ensure_cgroup2()?;
    std::fs::create_dir_all("/sys/fs/cgroup/dsel.slice/inner.service")?;
    let sel = format!(
        r#"registration_policy = "reg"
[[selector]]
name = "coding agents"
policy = "coding"
exe = "{coding_agent}"
[[selector]]
name = "agents slice"
policy = "ops"
cgroup = "dsel.slice"
[[selector]]
name = "service account"
policy = "users"
user = 4242
"#
    );
    let d = DaemonUnderTest::start(
        "dsel",
        &[
            ("coding", &deny_read("coding-no-secret", &secret("coding"))),
            ("ops", &deny_read("ops-no-secret", &secret("ops"))),
            ("users", &deny_read("users-no-secret", &secret("user"))),
            ("reg", &deny_read("reg-no-secret", &secret("reg"))),
        ],
        &sel,
    )?;

    // A tree started by a matching executable, and its descendants.
    let out = run(Command::new(&coding_agent).args(["do", "open-read", &secret("coding")]))?;
    ensure!(has_line(&out, &format!("RESULT errno=1 open-read {}", secret("coding"))), "exe tree: {out}");
    let out = run(Command::new(&coding_agent).args(["do", "exec", E2E, "do", "open-read", &secret("coding")]))?;
    ensure!(has_line(&out, &format!("RESULT errno=1 open-read {}", secret("coding"))), "exe tree child: {out}");
    let out = run(Command::new(&coding_agent).args(["do", "open-read", &secret("ops")]))?;
    ensure!(has_line(&out, &format!("RESULT ok open-read {}", secret("ops"))), "exe tree, other policy's file: {out}");

    // A tree in a matching cgroup (a sub-cgroup of the selected one).
    let cg = |file: &str| {
        let mut c = Command::new("/bin/sh");
        c.args([
            "-c",
            &format!(
                "echo $$ > /sys/fs/cgroup/dsel.slice/inner.service/cgroup.procs && exec {E2E} do open-read {file}"
            ),
        ]);
        c
    };
    let out = run(&mut cg(&secret("ops")))?;
    ensure!(has_line(&out, &format!("RESULT errno=1 open-read {}", secret("ops"))), "cgroup tree: {out}");
    let out = run(&mut cg(&secret("coding")))?;
    ensure!(has_line(&out, &format!("RESULT ok open-read {}", secret("coding"))), "cgroup tree, other file: {out}");

    // A tree of a matching user.
    let out = run(Command::new(E2E).args(["do", "open-read", &secret("user")]).uid(4242).gid(4242))?;
    ensure!(has_line(&out, &format!("RESULT errno=1 open-read {}", secret("user"))), "user tree: {out}");

    // A long-lived user tree, as status shows it.
    let go = format!("{dir}/go-user");
    let w = Workload::spawn(waiter(&go, &format!("exec {E2E} do open-read {}", secret("user"))).uid(4242).gid(4242))?;
    let t = d.tree(w.pid())?;
    ensure!(s(&t, "policy") == "users" && s(&t, "selector").contains("user 4242"), "status tree: {t}");
    ensure!(t["processes"].as_u64().unwrap_or(0) >= 1, "status tree processes: {t}");
    let st = d.status()?;
    ensure!(st["kernel"]["bpf_lsm"] == true, "kernel support in status: {st}");
    let screen = d.ctl(&["status"])?;
    let screen = String::from_utf8_lossy(&screen.stdout).to_string();
    ensure!(screen.contains("enforcing") && screen.contains(&w.pid().to_string()), "status screen:\n{screen}");
    touch(&go)?;
    let (_, out) = w.finish()?;
    ensure!(has_line(&out, &format!("RESULT errno=1 open-read {}", secret("user"))), "long user tree: {out}");

    // Registered with `run --daemon` (the registration policy by default).
    let out = Command::new("guard-agent")
        .args(["run", "--daemon", "--admin-socket", &d.sock, "--", E2E, "do", "open-read", &secret("reg")])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        has_line(&text, &format!("RESULT errno=1 open-read {}", secret("reg"))),
        "run --daemon: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.code() == Some(1), "run --daemon exits with CMD's status: {:?}", out.status);

    // Adopted while running, with `watch --pid`.
    let go = format!("{dir}/go-watch");
    let w = Workload::spawn(&mut waiter(&go, &format!("exec {E2E} do open-read {}", secret("reg"))))?;
    let out = d.ctl(&["watch", "--pid", &w.pid().to_string(), "--policy", "reg"])?;
    ensure!(out.status.success(), "watch --pid: {}", String::from_utf8_lossy(&out.stderr));
    let t = d.tree(w.pid())?;
    ensure!(s(&t, "selector").contains("watch --pid") && s(&t, "policy") == "reg", "watched tree: {t}");
    touch(&go)?;
    let (_, out) = w.finish()?;
    ensure!(has_line(&out, &format!("RESULT errno=1 open-read {}", secret("reg"))), "watch --pid tree: {out}");

    // A process no selector matches is untouched.
    for n in ["coding", "ops", "user", "reg"] {
        let out = run(Command::new(E2E).args(["do", "open-read", &secret(n)]))?;
        ensure!(has_line(&out, &format!("RESULT ok open-read {}", secret(n))), "unwatched process: {out}");
    }

    // Every denial is recorded under its own policy.
    for (policy, rule, file) in [
        ("coding", "coding-no-secret", secret("coding")),
        ("ops", "ops-no-secret", secret("ops")),
        ("users", "users-no-secret", secret("user")),
        ("reg", "reg-no-secret", secret("reg")),
    ] {
        d.wait_record(&format!("for {rule}"), |r| {
            is(&r.rule, rule) && is(&r.policy, policy) && is(&r.object, &file) && r.decision == Some(Decision::Deny)
        })?;
    }
    Ok(())
}

fn overlaps_and_reload() -> Result<()> {
    let dir = "/tmp/t/dovl";
    std::fs::create_dir_all(dir)?;
    let (a, b) = (format!("{dir}/secret-a"), format!("{dir}/secret-b"));
    crate::harness::write_files(&[&a, &b])?;
    let coding_agent = agent_binary(dir, "ovl-agent")?;
    // The user selector comes first in the file, but an exe selector wins over a user one.
    let sel = "[[selector]]\nname = \"svc\"\npolicy = \"users\"\nuser = 4243\n[[selector]]\nname = \"agent\"\npolicy = \"coding\"\nexe = \"ovl-agent\"\n";
    let d = DaemonUnderTest::start(
        "dovl",
        &[("coding", &deny_read("coding-a", &a)), ("users", &deny_read("users-b", &b))],
        sel,
    )?;
    let out = run(Command::new(&coding_agent).args(["do", "open-read", &a]).uid(4243).gid(4243))?;
    ensure!(has_line(&out, &format!("RESULT errno=1 open-read {a}")), "exe selector should win: {out}");
    let out = run(Command::new(&coding_agent).args(["do", "open-read", &b]).uid(4243).gid(4243))?;
    ensure!(has_line(&out, &format!("RESULT ok open-read {b}")), "the user selector lost: {out}");
    d.wait_log("won over selector #1 \"svc\"", Duration::from_secs(30))?;

    // A non-root process outside every tree cannot register anything.
    let out =
        Command::new("guard-agent").args(["watch", "--pid", "1", "--socket", &d.sock]).uid(4244).gid(4244).output()?;
    ensure!(!out.status.success(), "a non-root registration was accepted");
    // Nor can root ask for pid 1 (every process descends from it).
    let out = d.ctl(&["watch", "--pid", "1"])?;
    ensure!(!out.status.success(), "watching pid 1 was accepted");

    // A running tree sees a changed policy at once (reload on file change).
    let go = format!("{dir}/go");
    let w = Workload::spawn(Command::new(&coding_agent).args([
        "do",
        "exec",
        "/bin/sh",
        "-c",
        &format!("while [ ! -e {go} ]; do sleep 0.1; done; {E2E} do open-read {b}"),
    ]))?;
    d.tree(w.pid())?;
    let pol = format!("{dir}/coding.toml");
    std::fs::write(
        &pol,
        format!(
            "{}[[rule]]\nname = \"coding-b-now\"\naction = \"deny\"\nfile = {{ path = \"{b}\", access = \"read\" }}\n",
            deny_read("coding-a", &a)
        ),
    )?;
    d.wait_log("configuration reloaded (file change)", Duration::from_secs(30))?;
    touch(&go)?;
    let (_, out) = w.finish()?;
    ensure!(has_line(&out, &format!("RESULT errno=1 open-read {b}")), "the running tree kept the old policy: {out}");
    d.wait_record("for the reloaded rule", |r| is(&r.rule, "coding-b-now"))?;
    // The daemon's start and each policy it loaded are records; a reload records the changed
    // policy again with its new hash, and not the unchanged one.
    let recs = d.records()?;
    ensure!(recs.iter().any(|r| r.kind == RecordKind::Agent && is(&r.object, "start")), "no start record: {recs:#?}");
    let loads = |name: &str| -> Vec<String> {
        recs.iter()
            .filter(|r| r.kind == RecordKind::Policy && is(&r.policy, name))
            .filter_map(|r| r.object.clone())
            .collect()
    };
    let (coding, users) = (loads("coding"), loads("users"));
    ensure!(
        coding.len() == 2 && coding[0] != coding[1] && coding.iter().all(|h| h.starts_with("sha256:")),
        "policy records of coding (loaded, then changed): {coding:?}"
    );
    ensure!(users.len() == 1, "policy records of users (loaded, unchanged): {users:?}");

    // An invalid config keeps the old one in force and says why, with file:line:col.
    let cfg = std::fs::read_to_string(&d.config)?;
    std::fs::write(&d.config, format!("{cfg}[[selector]]\npolicy = \"nope\"\nuser = 1\n"))?;
    let out = d.ctl(&["reload"])?;
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    ensure!(!out.status.success() && err.contains("agent.toml:") && err.contains("unknown policy"), "reload: {err}");
    let st = d.status()?;
    ensure!(st["last_reload"]["ok"] == false, "status after a bad reload: {}", st["last_reload"]);
    let out = run(Command::new(&coding_agent).args(["do", "open-read", &a]))?;
    ensure!(has_line(&out, &format!("RESULT errno=1 open-read {a}")), "the old config stopped enforcing: {out}");
    Ok(())
}

fn restart_readopts() -> Result<()> {
    let dir = "/tmp/t/drst";
    std::fs::create_dir_all(dir)?;
    let secret = format!("{dir}/secret");
    let held = format!("{dir}/held");
    crate::harness::write_files(&[&secret, &held])?;
    for g in ["go1", "go2", "go3"] {
        std::fs::remove_file(format!("{dir}/{g}")).ok();
    }
    let wait_then_read =
        |g: &str| format!("while [ ! -e {dir}/{g} ]; do sleep 0.1; done; {E2E} do open-read {secret}; echo STEP {g}");
    // Runs before any daemon: found and adopted when the daemon starts.
    let w = Workload::spawn(
        Command::new("/bin/sh")
            .args(["-c", &format!("{}; {}; {}", wait_then_read("go1"), wait_then_read("go2"), wait_then_read("go3"))])
            .uid(4245)
            .gid(4245),
    )?;
    std::thread::sleep(Duration::from_millis(300));
    let policy = format!(
        "{}[[rule]]\nname = \"svc-ask\"\naction = \"ask\"\nfile = {{ path = \"{held}\", access = \"read\" }}\n",
        deny_read("svc-no-secret", &secret)
    );
    let mut d = DaemonUnderTest::start("drst", &[("svc", &policy)], "[[selector]]\npolicy = \"svc\"\nuser = 4245\n")?;
    let t = d.tree(w.pid())?;
    ensure!(s(&t, "selector").contains("found running"), "pre-existing tree: {t}");
    touch(&format!("{dir}/go1"))?;
    d.wait_record("from the adopted tree", |r| is(&r.rule, "svc-no-secret"))?;

    // No daemon: the kernel keeps enforcing on the tree and keeps starting trees by selector.
    d.stop()?;
    touch(&format!("{dir}/go2"))?;
    let out = run(Command::new(E2E).args(["do", "open-read", &secret]).uid(4245).gid(4245))?;
    ensure!(has_line(&out, &format!("RESULT errno=1 open-read {secret}")), "new tree while no daemon runs: {out}");
    // An ask while no daemon runs: denied by the kernel at once (the daemon cleared its
    // heartbeat when it stopped), recorded by the next daemon from the pinned ring (issue 10).
    let asked = Instant::now();
    let out = run(Command::new(E2E).args(["do", "open-read", &held]).uid(4245).gid(4245))?;
    ensure!(has_line(&out, &format!("RESULT errno=1 open-read {held}")), "an ask while no daemon runs: {out}");
    ensure!(asked.elapsed() < Duration::from_secs(20), "the ask was held: {:?}", asked.elapsed());

    // A restarted daemon keeps the programs, re-adopts the tree, and records its operations.
    let before = d.records()?.len();
    d.restart()?;
    d.wait_log("kept attached from an earlier daemon", Duration::from_secs(30))?;
    let t = d.tree(w.pid())?;
    ensure!(s(&t, "selector").contains("re-adopted") && s(&t, "policy") == "svc", "re-adopted tree: {t}");
    d.wait_record("agent_gone for the ask made while no daemon ran", |r| {
        r.reason == Some(Reason::AgentGone) && is(&r.object, &held)
    })?;
    touch(&format!("{dir}/go3"))?;
    let (_, out) = w.finish()?;
    let denied = out.lines().filter(|l| l.trim() == format!("RESULT errno=1 open-read {secret}")).count();
    ensure!(denied == 3, "the tree was not denied before, during and after the restart: {out}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let recs = d.records()?;
        if recs[before.min(recs.len())..].iter().any(|r| is(&r.rule, "svc-no-secret") && r.pid.is_some()) {
            break;
        }
        ensure!(Instant::now() < deadline, "no record after the restart: {recs:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn stated_reasons() -> Result<()> {
    let dir = "/tmp/t/drsn";
    std::fs::create_dir_all(dir)?;
    let (secret, held) = (format!("{dir}/secret"), format!("{dir}/held"));
    crate::harness::write_files(&[&secret, &held])?;
    let policy = format!(
        "{}[[rule]]\nname = \"ask-held\"\naction = \"ask\"\nfile = {{ path = \"{held}\", access = \"read\" }}\n",
        deny_read("no-secret", &secret)
    );
    let d = DaemonUnderTest::start("drsn", &[("coder", &policy)], "")?;
    let go = format!("{dir}/go");
    std::fs::remove_file(&go).ok();
    let script = format!(
        "guard-agent reason --tool bash --call-id call-7 --session sess-1 'check the secret for the test' && \
         {E2E} do open-read {secret}; while [ ! -e {go} ]; do sleep 0.1; done; {E2E} do open-read {secret}; {E2E} do open-read {held}"
    );
    let a = Workload::spawn(
        Command::new("guard-agent")
            .args(["run", "--daemon", "--admin-socket", &d.sock, "--", "/bin/sh", "-c", &script])
            .env("GUARD_REASON_SOCKET", &d.reason_sock),
    )?;
    let r = d.wait_record("with tree A's reason", |r| is(&r.rule, "no-secret"))?;
    let want = StatedReason {
        tool: "bash".into(),
        call_id: "call-7".into(),
        reason: "check the secret for the test".into(),
        session: "sess-1".into(),
    };
    ensure!(r.stated_reason.as_ref() == Some(&want), "record's stated reason: {r:?}");
    // Another tree states its own reason; it does not become tree A's.
    let out = Command::new("guard-agent")
        .args(["run", "--daemon", "--admin-socket", &d.sock, "--", "/bin/sh", "-c"])
        .arg(format!("guard-agent reason --tool evil --call-id x 'not yours' && {E2E} do open-read {secret}"))
        .env("GUARD_REASON_SOCKET", &d.reason_sock)
        .output()?;
    ensure!(String::from_utf8_lossy(&out.stdout).contains("RESULT errno=1"), "tree B: {out:?}");
    d.wait_record("with tree B's reason", |r| stated(r, |why| why.tool == "evil"))?;
    // A process outside every tree is refused.
    let out =
        Command::new("guard-agent").args(["reason", "--socket", &d.reason_sock, "--tool", "x", "outsider"]).output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && err.contains("not in a watched tree"), "outsider's reason: {err}");

    touch(&go)?;
    let h = {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(h) = d.pending()?.into_iter().find(|h| s(h, "object") == held) {
                break h;
            }
            ensure!(Instant::now() < deadline, "no hold appeared; stderr:\n{}", d.stderr());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    ensure!(s(&h["stated_reason"], "call_id") == "call-7" && s(&h, "policy") == "coder", "hold's stated reason: {h}");
    let out = d.ctl(&["approve", s(&h, "id")])?;
    ensure!(out.status.success(), "approve: {}", String::from_utf8_lossy(&out.stderr));
    let (_, out) = a.finish()?;
    ensure!(has_line(&out, &format!("RESULT ok open-read {held}")), "approved hold: {out}");
    let recs = d.records()?;
    let second =
        recs.iter().filter(|r| is(&r.rule, "no-secret")).filter(|r| stated(r, |why| why.call_id == "call-7")).count();
    ensure!(second >= 2, "tree A's later record lost its own reason: {recs:?}");
    let approved = recs.iter().find(|r| is(&r.rule, "ask-held") && r.reason == Some(Reason::Approved));
    ensure!(
        approved.is_some_and(|r| stated(r, |why| why.tool == "bash")),
        "the approved hold's record has no reason: {recs:?}"
    );
    Ok(())
}
