//! `guard-agent status` tells the truth (issue 10, item 3): it checks in the kernel that every
//! program is attached, that the ring buffer is read and that the server answers, and
//! `status --check` turns that into an exit code (0 enforcing, 1 degraded, 2 not running).
//! Each degraded case is made from outside the agent, as an attacker (or an accident) would:
//! a link pin removed, the bpffs holding the pins unmounted lazily, the server gone. (A link
//! held as an fd, as `run` holds them, cannot be detached from outside on 6.1 or 6.12:
//! BPF_LINK_DETACH answers EOPNOTSUPP for LSM and tracing links.)

use crate::{
    harness::{Agent, DaemonUnderTest, Skip},
    Test,
};
use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::{
    process::Command,
    time::{Duration, Instant},
};

pub const TESTS: &[Test] = &[
    ("status_check_says_enforcing_and_exits_0_when_healthy", healthy),
    ("status_check_names_a_program_whose_link_pin_was_removed", pin_removed),
    ("status_check_names_every_program_after_the_bpffs_is_unmounted", bpffs_unmounted),
    ("status_check_names_an_unreachable_server", server_unreachable),
    ("status_check_exits_2_when_no_agent_runs", not_running),
];

/// `guard-agent status --check --socket SOCK`: (exit code, its one line).
fn check(sock: &str) -> Result<(i32, String)> {
    let out = Command::new("guard-agent").args(["status", "--check", "--socket", sock]).output()?;
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok((out.status.code().unwrap_or(-1), line))
}

fn status_json(sock: &str) -> Result<Value> {
    let out = Command::new("guard-agent").args(["status", "--json", "--socket", sock]).output()?;
    ensure!(out.status.success(), "status --json failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Waits until `status --check` exits `code`; returns its line.
fn wait_check(sock: &str, code: i32) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (got, line) = check(sock)?;
        if got == code {
            return Ok(line);
        }
        if Instant::now() > deadline {
            bail!("status --check exits {got} ({line:?}), not {code}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The server and PKI `cargo xtask test` provides, if any: (url, flags for `run`).
fn server_flags(url: Option<&str>) -> Option<(String, Vec<String>)> {
    let pki = std::env::var("GUARD_E2E_PKI").ok()?;
    let host = std::env::var("GUARD_E2E_HOST").ok()?;
    let url = match url {
        Some(u) => u.to_string(),
        None => std::env::var("GUARD_E2E_SERVER").ok()?,
    };
    let flags = crate::server_tests::agent_server_flags(&url, &pki, &host);
    Some((url, flags))
}

fn start_run(name: &str, flags: &[String]) -> Result<Agent> {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Agent::start_with(name, "default = \"allow\"\n", "sleep 60", &flags)
}

fn healthy() -> Result<()> {
    // With the real server when the suite has one: reachable is part of healthy.
    let flags = server_flags(None).map(|(_, f)| f).unwrap_or_default();
    let a = start_run("st-healthy", &flags)?;
    let line = wait_check(a.socket(), 0)?;
    ensure!(line == "enforcing", "healthy status line: {line:?}");
    let st = status_json(a.socket())?;
    let h = &st["health"];
    ensure!(h["state"] == "enforcing" && h["problems"].as_array().is_some_and(|p| p.is_empty()), "health: {h}");
    let total = h["programs"]["total"].as_u64().unwrap_or(0);
    ensure!(total > 10 && h["programs"]["attached"] == total, "programs: {}", h["programs"]);
    ensure!(h["ring"]["reading"] == true, "ring: {}", h["ring"]);
    if !flags.is_empty() {
        ensure!(h["server"]["reachable"] == true, "server: {}", h["server"]);
    }
    a.kill();
    Ok(())
}

fn pin_removed() -> Result<()> {
    let d = DaemonUnderTest::start("st-pin", &[("p", "default = \"allow\"\n")], "")?;
    let line = wait_check(&d.sock, 0)?;
    ensure!(line == "enforcing", "before: {line:?}");
    // The daemon holds no link fds: its pins keep the programs attached. Removing one from
    // outside (root, no tree) releases that link, and the program stops deciding anything.
    let build = std::fs::read_dir(&d.pins)?.flatten().next().context("no pin directory")?.path();
    let pin = build.join("link_file_open");
    std::fs::remove_file(&pin).with_context(|| format!("removing {}", pin.display()))?;
    let line = wait_check(&d.sock, 1)?;
    ensure!(line.starts_with("degraded: ") && line.contains("file_open"), "after the pin was removed: {line:?}");
    ensure!(!line.contains("task_alloc"), "only the detached program is named: {line:?}");
    let st = d.status()?;
    ensure!(st["kernel"]["enforcing"] == false, "the kernel section still says enforcing: {}", st["kernel"]);
    Ok(())
}

fn bpffs_unmounted() -> Result<()> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    // A bpffs of this test's own, on the daemon's pin directory: unmounting it detaches only
    // this daemon's programs (unmounting /sys/fs/bpf would take every test's with it).
    let dir = "/sys/fs/bpf/st-umount";
    std::fs::create_dir_all(dir)?;
    mount(Some("bpf"), dir, Some("bpf"), MsFlags::empty(), None::<&str>).context("mounting a bpffs")?;
    let d = DaemonUnderTest::start("st-umount", &[("p", "default = \"allow\"\n")], "");
    let d = match d {
        Ok(d) => d,
        Err(e) => {
            umount2(dir, MntFlags::MNT_DETACH).ok();
            return Err(e);
        }
    };
    let before = wait_check(&d.sock, 0);
    // `umount -l`: the superblock goes once nothing uses it, and with it every pinned link.
    umount2(dir, MntFlags::MNT_DETACH).context("umount -l")?;
    ensure!(before? == "enforcing", "before the unmount");
    let line = wait_check(&d.sock, 1)?;
    ensure!(line.starts_with("degraded: ") && line.contains("not attached"), "after umount -l: {line:?}");
    let st = d.status()?;
    let p = &st["health"]["programs"];
    ensure!(p["attached"] == 0 && p["total"].as_u64().unwrap_or(0) > 10, "programs after umount -l: {p}");
    for name in ["file_open", "task_alloc", "sched_process_exec", "sched_process_exit"] {
        ensure!(line.contains(name), "{name} is not named: {line:?}");
    }
    Ok(())
}

fn server_unreachable() -> Result<()> {
    // Nothing listens on port 1 in the VM.
    let Some((url, flags)) = server_flags(Some("https://127.0.0.1:1")) else {
        return Err(Skip("no PKI from `cargo xtask test` (GUARD_E2E_PKI)".into()).into());
    };
    let a = start_run("st-server", &flags)?;
    let line = wait_check(a.socket(), 1)?;
    ensure!(line.starts_with("degraded: ") && line.contains(&url), "server down: {line:?}");
    ensure!(!line.contains("not attached"), "the programs are attached: {line:?}");
    let st = status_json(a.socket())?;
    ensure!(st["health"]["server"]["reachable"] == false, "server: {}", st["health"]["server"]);
    a.kill();
    Ok(())
}

fn not_running() -> Result<()> {
    let (code, line) = check("/tmp/t/no-agent-here.sock")?;
    ensure!(code == 2 && line.starts_with("not running"), "no agent: exit {code}, {line:?}");
    Ok(())
}
