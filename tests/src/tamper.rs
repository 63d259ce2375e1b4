//! Issue 10 items 1 and 2: a root tree cannot switch guard off, and the agent's death leaves
//! enforcement in place with nothing frozen. Every attempt is made from inside a root tree
//! whose policy *allows* the family of operation (ptrace, bpf, mount, umount, module, writes):
//! the tamper baseline must refuse it anyway. Each test asserts that the effect did not
//! happen (the agent alive, the pins present, the file unchanged), that a `tamper` record
//! says what was refused, and that a deny rule still denies afterwards.

use crate::{
    harness::{self, Agent, DaemonUnderTest, Workload},
    has, is, ops_tamper, Test,
};
use anyhow::{ensure, Context, Result};
use guard_api::{AuditRecord, Decision, Hook, Reason};
use std::{
    os::unix::process::CommandExt,
    process::Command,
    time::{Duration, Instant},
};

pub const TESTS: &[Test] = &[
    ("tamper_signals_ptrace_and_kernel_code_against_the_agent_are_refused", signals_and_ptrace),
    ("tamper_bpf_objects_pins_and_the_bpffs_are_refused", bpf_and_pins),
    ("tamper_guard_files_and_the_admin_socket_are_refused", files_and_socket),
    ("tamper_agent_killed_in_run_mode_rules_stay_and_asks_are_denied_at_once", run_agent_killed),
    ("tamper_daemon_killed_rules_stay_asks_denied_at_once_and_a_restart_resolves", daemon_killed),
    ("tamper_run_runs_the_command_as_the_given_user_root_only_when_asked", run_as_user),
];

const DIR: &str = "/tmp/t/tamper";
const SECRET: &str = "/tmp/t/tamper/secret";
const HELD: &str = "/tmp/t/tamper/held";
/// Longer than the kernel's heartbeat limit (3 s).
const STALE: Duration = Duration::from_millis(3_800);

/// A policy that allows every family the tests try (so only the baseline can refuse), with a
/// deny rule and an ask rule to show enforcement still works.
fn permissive_policy() -> String {
    let mut p = String::from("default = \"allow\"\nask_timeout = \"60s\"\n");
    p.push_str(&format!(
        "[[rule]]\nname = \"no-secret\"\naction = \"deny\"\nfile = {{ path = \"{SECRET}\", access = \"read\" }}\n"
    ));
    p.push_str(&format!(
        "[[rule]]\nname = \"ask-held\"\naction = \"ask\"\nfile = {{ path = \"{HELD}\", access = \"read\" }}\n"
    ));
    for (name, m) in [
        ("trace-ok", "ptrace = true"),
        ("bpf-ok", "bpf = true"),
        ("mount-ok", "mount = true"),
        ("umount-ok", "umount = true"),
        ("modules-ok", "module = true"),
    ] {
        p.push_str(&format!("[[rule]]\nname = \"{name}\"\naction = \"allow\"\n{m}\n"));
    }
    p.push_str(
        "[[rule]]\nname = \"writes-ok\"\naction = \"allow\"\nfile = { path = \"/tmp/t/\", access = \"write\" }\n",
    );
    p
}

fn prepare() -> Result<()> {
    std::fs::create_dir_all(DIR)?;
    harness::write_files(&[SECRET, HELD])
}

fn tamper(r: &AuditRecord, hook: Hook) -> bool {
    r.hook == Some(hook) && r.reason == Some(Reason::Tamper) && r.decision == Some(Decision::Deny)
}

fn count(r: &[AuditRecord], hook: Hook) -> usize {
    r.iter().filter(|x| tamper(x, hook)).count()
}

/// The next RESULT line, which must start with `want` (e.g. "RESULT errno=1 ").
fn expect(a: &Agent, what: &str, want: &str) -> Result<()> {
    let r = a.result()?;
    ensure!(r.starts_with(want), "{what}: expected {want:?}, got {r}");
    Ok(())
}

fn agent_pid(a: &Agent) -> Result<u32> {
    let l = a.line_starting("AGENT ")?;
    l.trim_start_matches("AGENT ").trim().parse().with_context(|| format!("agent pid in {l:?}"))
}

/// The one build directory of `run` agent `pid`'s pins.
fn run_pin_dir(pid: u32) -> Result<String> {
    let root = format!("/sys/fs/bpf/guard-run/{pid}");
    let b = std::fs::read_dir(&root)
        .with_context(|| format!("reading {root}"))?
        .flatten()
        .next()
        .with_context(|| format!("no build directory in {root}"))?;
    Ok(b.path().to_string_lossy().into_owned())
}

fn bpffs_mounted_rw() -> Result<bool> {
    let m = std::fs::read_to_string("/proc/mounts")?;
    Ok(m.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[1] == "/sys/fs/bpf" && f[2] == "bpf" && f[3].split(',').any(|o| o == "rw")
    }))
}

/// Signals (kill(2) and pidfd_send_signal, SIGKILL and SIGSTOP), ptrace attach,
/// process_vm_readv and /proc/PID/mem of the agent; module load and kexec. The policy allows
/// ptrace and modules.
fn signals_and_ptrace() -> Result<()> {
    prepare()?;
    let module = harness::module_path();
    let mut script = String::from("P=$PPID; ");
    for op in [
        "kill 9 $P",
        "kill 19 $P",
        "pidfd-kill 9 $P",
        "pidfd-kill 19 $P",
        "ptrace $P",
        "vm-read $P",
        "open-read /proc/$P/mem",
        "kexec-unload",
    ] {
        script.push_str(&format!("guard-e2e do {op}; "));
    }
    if let Some(m) = &module {
        script.push_str(&format!("guard-e2e do module {m}; "));
    }
    // The tree stays until the test has asked the agent for its status (else the agent
    // would exit with its tree first).
    let go = format!("{DIR}/go-signals");
    std::fs::remove_file(&go).ok();
    script.push_str(&format!(
        "guard-e2e do open-read {SECRET}; kill -0 $P && echo AGENT-ALIVE; while [ ! -e {go} ]; do sleep 0.1; done"
    ));
    let a = Agent::start("tamper-signals", &permissive_policy(), &script)?;
    for what in ["kill -9", "kill -STOP", "pidfd SIGKILL", "pidfd SIGSTOP", "ptrace attach", "process_vm_readv"] {
        expect(&a, what, "RESULT errno=1 ")?;
    }
    expect(&a, "/proc/PID/mem", "RESULT errno=13 ")?;
    let kexec = a.result()?;
    ensure!(kexec.starts_with("RESULT errno=1 ") || kexec.starts_with("RESULT errno=38 "), "kexec_load: {kexec}");
    if module.is_some() {
        expect(&a, "finit_module", "RESULT errno=1 ")?;
    }
    expect(&a, "the deny rule afterwards", "RESULT errno=1 ")?;
    a.line_starting("AGENT-ALIVE")?;
    // Alive and answering (not stopped): its admin socket works.
    let st = a.status()?;
    ensure!(st["watched_tasks"].as_u64().is_some(), "status after the attempts: {st}");
    std::fs::write(&go, "")?;
    let r = a.finish()?.records()?;
    ensure!(count(&r, Hook::TaskKill) >= 4, "not four tamper records for the signals: {r:#?}");
    ensure!(count(&r, Hook::PtraceAccessCheck) >= 2, "no tamper records for ptrace and process_vm_readv: {r:#?}");
    if !kexec.starts_with("RESULT errno=38 ") {
        ensure!(count(&r, Hook::KernelLoadData) >= 1, "no tamper record for kexec: {r:#?}");
    }
    if module.is_some() {
        ensure!(count(&r, Hook::KernelReadFile) >= 1, "no tamper record for the module: {r:#?}");
    }
    ensure!(
        has(&r, |x| is(&x.rule, "no-secret") && x.decision == Some(Decision::Deny)),
        "the deny rule did not record: {r:#?}"
    );
    // No policy rule ever decided a tamper attempt.
    ensure!(!has(&r, |x| is(&x.rule, "trace-ok") || is(&x.rule, "modules-ok")), "a rule decided a tamper attempt");
    Ok(())
}

/// bpf() on the agent's pinned map, its map, program and link by id; removal and rename of
/// pins; `umount -l` of the bpffs and of /sys, a read-only remount. The policy allows bpf,
/// mount and umount; other bpf use (a new map) stays allowed.
fn bpf_and_pins() -> Result<()> {
    prepare()?;
    let ids = format!("{DIR}/ids");
    std::fs::remove_file(&ids).ok();
    let mut script = format!("echo AGENT $PPID; while [ ! -e {ids} ]; do sleep 0.1; done; . {ids}; ");
    let ops = [
        "bpf-obj-get $PIN/WATCHED",
        "bpf-get-fd-by-id map $MAP",
        "bpf-get-fd-by-id prog $PROG",
        "bpf-get-fd-by-id link $LINK",
        "unlink $LINKPIN",
        "rename $PIN/WATCHED $PIN/moved",
        "umount-lazy /sys/fs/bpf",
        "remount-ro-plain /sys/fs/bpf",
        "umount-lazy /sys",
    ];
    for op in ops {
        script.push_str(&format!("guard-e2e do {op}; "));
    }
    script.push_str(&format!("guard-e2e do bpf; guard-e2e do open-read {SECRET}"));
    let a = Agent::start("tamper-bpf", &permissive_policy(), &script)?;
    let pid = agent_pid(&a)?;
    let pin = run_pin_dir(pid)?;
    let (map, link, prog) = ops_tamper::object_ids(&pin)?;
    let link_pin = std::fs::read_dir(&pin)?
        .flatten()
        .map(|f| f.path().to_string_lossy().into_owned())
        .find(|p| p.rsplit('/').next().is_some_and(|n| n.starts_with("link_")))
        .context("a link pin")?;
    // Written aside and renamed into place: the tree waits for the file to exist, and must not
    // source it while it is still empty (it then ran every op on "/WATCHED" and the like).
    let partial = format!("{ids}.partial");
    std::fs::write(&partial, format!("PIN={pin}\nMAP={map}\nPROG={prog}\nLINK={link}\nLINKPIN={link_pin}\n"))?;
    std::fs::rename(&partial, &ids)?;
    for op in ops {
        expect(&a, op, "RESULT errno=1 ")?;
    }
    expect(&a, "a new map of the tree's own (allowed by the policy)", "RESULT ok")?;
    expect(&a, "the deny rule afterwards", "RESULT errno=1 ")?;
    ensure!(std::path::Path::new(&format!("{pin}/WATCHED")).exists(), "the WATCHED pin is gone");
    ensure!(std::path::Path::new(&link_pin).exists(), "the link pin is gone");
    ensure!(bpffs_mounted_rw()?, "/sys/fs/bpf is no longer mounted read-write");
    let r = a.finish()?.records()?;
    ensure!(count(&r, Hook::BpfMap) >= 1, "no tamper record for BPF_OBJ_GET of the map pin: {r:#?}");
    ensure!(count(&r, Hook::Bpf) >= 3, "not three tamper records for the GET_FD_BY_ID calls: {r:#?}");
    ensure!(count(&r, Hook::PathUnlink) >= 1, "no tamper record for the pin's removal: {r:#?}");
    ensure!(count(&r, Hook::PathRename) >= 1, "no tamper record for the pin's rename: {r:#?}");
    ensure!(count(&r, Hook::SbUmount) >= 2, "not two tamper records for the unmounts: {r:#?}");
    ensure!(count(&r, Hook::SbMount) >= 1, "no tamper record for the remount: {r:#?}");
    ensure!(has(&r, |x| is(&x.rule, "no-secret")), "the deny rule did not record: {r:#?}");
    Ok(())
}

/// The agent's policy file and audit log (write, truncate, rename, unlink, link, chmod), and
/// its admin socket (a plain connect, and the fork-connect-exit trick that approves a hold).
/// The policy allows every write under /tmp/t/.
fn files_and_socket() -> Result<()> {
    prepare()?;
    let (pol, log, sock) = ("/tmp/t/tamper-files.toml", "/tmp/t/tamper-files.jsonl", "/tmp/t/tamper-files.sock");
    let ops = [
        format!("open-write {pol}"),
        format!("truncate {pol}"),
        format!("rename {pol} {DIR}/moved.toml"),
        format!("chmod {pol}"),
        format!("unlink {log}"),
        format!("link {log} {DIR}/log-link"),
        format!("connect-unix {sock}"),
        format!("fork-connect-approve {sock}"),
    ];
    std::fs::remove_file(format!("{DIR}/log-link")).ok();
    let mut script = format!("guard-e2e do open-read {HELD} & sleep 1; ");
    for op in &ops {
        script.push_str(&format!("guard-e2e do {op}; "));
    }
    script.push_str(&format!("guard-e2e do open-read {pol}; guard-e2e do open-read {SECRET}"));
    let policy = permissive_policy();
    let a = Agent::start("tamper-files", &policy, &script)?;
    // A hold is waiting: the fork-connect-exit trick would approve it.
    let h = a.wait_hold("file_open")?;
    for op in &ops {
        expect(&a, op, "RESULT errno=1 ")?;
    }
    expect(&a, "reading the policy (allowed)", "RESULT ok")?;
    expect(&a, "the deny rule afterwards", "RESULT errno=1 ")?;
    ensure!(std::fs::read_to_string(pol)? == policy, "the policy file changed");
    ensure!(std::path::Path::new(log).exists(), "the audit log is gone");
    ensure!(!std::path::Path::new(&format!("{DIR}/log-link")).exists(), "the audit log got a new name");
    // The hold is still waiting: nothing from the tree approved it.
    let p = a.pending()?;
    ensure!(p.iter().any(|x| x["id"] == h["id"]), "the hold was decided by the tree: {p:?}");
    a.deny(h["id"].as_str().unwrap_or_default())?;
    let r = a.finish()?.records()?;
    for hook in
        [Hook::FileOpen, Hook::PathTruncate, Hook::PathRename, Hook::PathChmod, Hook::PathUnlink, Hook::PathLink]
    {
        ensure!(count(&r, hook) >= 1, "no tamper record on {hook}: {r:#?}");
    }
    ensure!(count(&r, Hook::UnixStreamConnect) >= 2, "not two tamper records for the admin socket: {r:#?}");
    ensure!(!has(&r, |x| x.reason == Some(Reason::Approved)), "an approval happened: {r:#?}");
    ensure!(
        has(&r, |x| x.reason == Some(Reason::Denied) && is(&x.object, HELD)),
        "the hold was not denied by the test's own answer: {r:#?}"
    );
    Ok(())
}

/// `kill -9` of a `run` agent from outside: its pins keep the programs attached, the deny
/// rule still denies, and an ask is denied at once (no thread stopped) once the heartbeat is
/// stale.
fn run_agent_killed() -> Result<()> {
    prepare()?;
    let go = format!("{DIR}/go-run");
    std::fs::remove_file(&go).ok();
    let script = format!(
        "echo AGENT $PPID; while [ ! -e {go} ]; do sleep 0.1; done; guard-e2e do open-read {SECRET}; guard-e2e do open-read {HELD}; echo DONE"
    );
    let a = Agent::start("tamper-run-kill", &permissive_policy(), &script)?;
    let pid = agent_pid(&a)?;
    let pin = run_pin_dir(pid)?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL)?;
    std::thread::sleep(STALE);
    ensure!(std::path::Path::new(&format!("{pin}/WATCHED")).exists(), "the pins went with the agent");
    std::fs::write(&go, "")?;
    let start = Instant::now();
    let secret = a.line_starting_within("RESULT ", Duration::from_secs(60))?;
    ensure!(secret.starts_with("RESULT errno=1 "), "the deny rule after the agent's death: {secret}");
    let held = a.line_starting_within("RESULT ", Duration::from_secs(20))?;
    ensure!(held.starts_with("RESULT errno=1 "), "the ask after the agent's death: {held}");
    a.line_starting_within("DONE", Duration::from_secs(20))?;
    ensure!(start.elapsed() < Duration::from_secs(20), "the ask was held: {:?}", start.elapsed());
    drop(a);
    // The tree is gone: its pins may go (the next `run` would remove them too).
    remove_dir_pins(&format!("/sys/fs/bpf/guard-run/{pid}"));
    Ok(())
}

fn remove_dir_pins(root: &str) {
    for b in std::fs::read_dir(root).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(b.path()).into_iter().flatten().flatten() {
            std::fs::remove_file(f.path()).ok();
        }
        std::fs::remove_dir(b.path()).ok();
    }
    std::fs::remove_dir(root).ok();
}

/// The pid of the `guard-agent daemon --config <config>` process.
fn daemon_pid(config: &str) -> Result<i32> {
    for p in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else { continue };
        let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if args.contains(&b"daemon".as_slice()) && args.contains(&config.as_bytes()) {
            return Ok(pid);
        }
    }
    anyhow::bail!("no daemon running with {config}")
}

/// `kill -9` of the daemon from outside while a thread of a tree is held: the deny rule still
/// denies, a new ask is denied at once (`agent_gone`, recorded by the next daemon from the
/// pinned ring), and the restarted daemon re-adopts the tree and resolves the stopped thread.
fn daemon_killed() -> Result<()> {
    prepare()?;
    let dir = "/tmp/t/dtamper";
    std::fs::create_dir_all(dir)?;
    let go = format!("{dir}/go");
    std::fs::remove_file(&go).ok();
    let policy = permissive_policy();
    let mut d =
        DaemonUnderTest::start("dtamper", &[("svc", &policy)], "[[selector]]\npolicy = \"svc\"\nuser = 4246\n")?;
    let w = Workload::spawn(
        Command::new("/bin/sh")
            .args(["-c", &format!("while [ ! -e {go} ]; do sleep 0.1; done; guard-e2e do open-read {HELD}; echo END")])
            .uid(4246)
            .gid(4246),
    )?;
    d.tree(w.pid())?;
    std::fs::write(&go, "")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !d.pending()?.iter().any(|h| h["object"] == HELD) {
        ensure!(Instant::now() < deadline, "no hold; stderr:\n{}", d.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = daemon_pid(&d.config)?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)?;
    std::thread::sleep(STALE);
    // No daemon: a new tree (by selector, in the kernel) is still enforced, and its ask is
    // denied at once instead of stopping it.
    let start = Instant::now();
    let (_, out) = Workload::spawn(
        Command::new("/bin/sh")
            .args(["-c", &format!("guard-e2e do open-read {SECRET}; guard-e2e do open-read {HELD}")])
            .uid(4246)
            .gid(4246),
    )?
    .finish()?;
    ensure!(out.contains(&format!("RESULT errno=1 open-read {SECRET}")), "deny rule with no daemon: {out}");
    ensure!(out.contains(&format!("RESULT errno=1 open-read {HELD}")), "ask with no daemon: {out}");
    ensure!(start.elapsed() < Duration::from_secs(20), "the ask was held: {:?}", start.elapsed());
    // The restarted daemon re-adopts the tree, records what happened meanwhile, and resumes
    // the thread that was stopped when the daemon died (denied: nobody saw that request).
    d.restart()?;
    let t = d.tree(w.pid())?;
    ensure!(t["selector"].as_str().unwrap_or_default().contains("re-adopted"), "re-adopted tree: {t}");
    d.wait_record("agent_gone", |r| r.reason == Some(Reason::AgentGone) && is(&r.object, HELD))?;
    let (_, out) = w.finish()?;
    ensure!(out.contains(&format!("RESULT errno=1 open-read {HELD}")), "the held thread: {out}");
    Ok(())
}

/// `run --user UID` runs CMD as that user from its first instruction; `--user root` keeps
/// root. (Without `--user`, SUDO_UID/SUDO_GID decide; the VM runs without sudo, as root.)
fn run_as_user() -> Result<()> {
    for (user, want) in [("4248", "4248"), ("root", "0")] {
        let a = Agent::start_with(
            "tamper-user",
            &permissive_policy(),
            "grep ^Uid: /proc/self/status; guard-e2e do open-read /tmp/t/tamper/secret",
            &["--user", user],
        )?;
        let l = a.line_starting("Uid:")?;
        let ids: Vec<&str> = l.split_whitespace().skip(1).collect();
        ensure!(ids.len() == 4 && ids.iter().all(|i| *i == want), "--user {user}: {l}");
        // Watched as any tree: the deny rule applies.
        expect(&a, "the deny rule", "RESULT errno=1 ")?;
        a.finish()?;
    }
    Ok(())
}
