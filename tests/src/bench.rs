//! `guard-e2e bench`: guard's cost on the operations it hooks, measured side by side in one
//! boot: no agent, agent loaded but the process unwatched (one map lookup per hook), watched
//! with no rule matching, and watched with every operation matching an allow rule (and so
//! recorded). Rounds alternate the modes; the median of each is reported with its ratio to no
//! agent. No assertion on time: the numbers are for people.

use crate::harness::{self, Agent};
use anyhow::{bail, Context, Result};
use std::{
    io::Read,
    net::{TcpListener, TcpStream},
    process::{Child, Command},
    time::{Duration, Instant},
};

/// The hooked operations timed: opens (file_open), execs (bprm_creds_for_exec and
/// bprm_check_security, plus the fork), connects (socket_connect), forks (task_alloc,
/// task_newtask, task_free: the tree's task reservation) and renames there and back
/// (path_rename, whose source is decided as the object and its ancestors).
const OPS: [(&str, u32); 5] =
    [("open", 200_000), ("exec", 500), ("connect", 5_000), ("fork", 2_000), ("rename", 50_000)];
const MODES: [&str; 4] = ["none", "unwatched", "watched-nomatch", "watched-allow"];
const BENCH_FILE: &str = "/tmp/t/bench/file";

const POLICY_NOMATCH: &str = r#"
[[rule]]
name = "elsewhere"
action = "deny"
file = { path = "/nonexistent/", access = "any" }
[[rule]]
name = "other-tool"
action = "deny"
exec = { path = "/nonexistent/tool" }
[[rule]]
name = "other-net"
action = "deny"
connect = { cidr = "192.0.2.0/24" }
"#;

const POLICY_ALLOW: &str = r#"
[[rule]]
name = "bench-files"
action = "allow"
file = { path = "/tmp/t/bench/", access = "read" }
[[rule]]
name = "bench-tools"
action = "allow"
exec = { path = "/bin/" }
[[rule]]
name = "bench-net"
action = "allow"
connect = { cidr = "127.0.0.1/32" }
"#;

/// One timed loop of `op`, in this process: microseconds per operation.
pub fn bench_loop(op: &str, n: u32) -> Result<f64> {
    let start;
    match op {
        "open" => {
            let path = std::ffi::CString::new(BENCH_FILE)?;
            start = Instant::now();
            for _ in 0..n {
                // SAFETY: path is a NUL-terminated CString that outlives the loop.
                let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
                if fd < 0 {
                    bail!("open failed: {}", std::io::Error::last_os_error());
                }
                // SAFETY: fd was just returned by open and is closed once, here.
                unsafe { libc::close(fd) };
            }
        }
        "exec" => {
            start = Instant::now();
            for _ in 0..n {
                let st = Command::new("/bin/true").status()?;
                if !st.success() {
                    bail!("/bin/true failed");
                }
            }
        }
        "connect" => {
            let l = TcpListener::bind("127.0.0.1:0")?;
            let addr = l.local_addr()?;
            std::thread::spawn(move || {
                for s in l.incoming().flatten() {
                    drop(s);
                }
            });
            start = Instant::now();
            for _ in 0..n {
                drop(TcpStream::connect(addr)?);
            }
        }
        "fork" => {
            start = Instant::now();
            for _ in 0..n {
                // SAFETY: the child only calls _exit, which is async-signal-safe.
                let pid = unsafe { libc::fork() };
                if pid < 0 {
                    bail!("fork failed: {}", std::io::Error::last_os_error());
                }
                if pid == 0 {
                    // SAFETY: ends the child at once, without running the parent's destructors.
                    unsafe { libc::_exit(0) };
                }
                let mut status = 0;
                // SAFETY: waits for the child just forked; status is a valid out pointer.
                unsafe { libc::waitpid(pid, &mut status, 0) };
            }
        }
        "rename" => {
            let there = format!("{BENCH_FILE}.renamed");
            start = Instant::now();
            for _ in 0..n {
                std::fs::rename(BENCH_FILE, &there)?;
                std::fs::rename(&there, BENCH_FILE)?;
            }
        }
        other => bail!("unknown bench op {other}"),
    }
    Ok(start.elapsed().as_secs_f64() * 1e6 / n as f64)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Every mode measures in a fresh `guard-e2e bench-loop` process, after the same settling time
/// since the agent started (attaching programs makes the emulator retranslate kernel code for
/// a while), so that only guard differs between modes.
const SETTLE_SECS: u64 = 3;

fn parse_bench(line: &str) -> Result<f64> {
    line.split_whitespace().nth(2).and_then(|v| v.parse().ok()).context("bad BENCH line")
}

/// Runs `op` in a fresh process outside any tree.
fn fresh(op: &str, n: u32) -> Result<f64> {
    let out = Command::new("guard-e2e").args(["bench-loop", op, &n.to_string()]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("bench-loop failed: {text} {}", String::from_utf8_lossy(&out.stderr));
    }
    parse_bench(text.lines().find(|l| l.starts_with("BENCH ")).unwrap_or(""))
}

/// Runs `op` inside a watched tree and reads its result line.
fn watched(name: &str, policy: &str, op: &str, n: u32) -> Result<f64> {
    let a = Agent::start(name, policy, &format!("sleep {SETTLE_SECS}; guard-e2e bench-loop {op} {n}"))?;
    let line = a.line_starting_within("BENCH ", Duration::from_secs(1200))?;
    let out = a.finish()?;
    if out.code != 0 {
        bail!("watched bench exited {}", out.code);
    }
    parse_bench(&line)
}

struct Background(Child);
impl Drop for Background {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

fn unwatched(op: &str, n: u32) -> Result<f64> {
    let policy = "/tmp/t/bench-unwatched.toml";
    std::fs::write(policy, POLICY_ALLOW)?;
    let mut child = Command::new("guard-agent")
        .args([
            "run",
            "--policy",
            policy,
            "--audit-log",
            "/tmp/t/bench-unwatched.jsonl",
            "--admin-socket",
            "/tmp/t/bench-unwatched.sock",
            "--",
            "sleep",
            "100000",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut err = child.stderr.take();
    let _guard = Background(child);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::path::Path::new("/tmp/t/bench-unwatched.sock").exists() {
        if Instant::now() > deadline {
            let mut s = String::new();
            if let Some(e) = err.as_mut() {
                e.read_to_string(&mut s).ok();
            }
            bail!("agent did not start: {s}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(SETTLE_SECS));
    fresh(op, n)
}

pub fn run(rounds: usize) -> Result<i32> {
    harness::prepare();
    harness::write_files(&[BENCH_FILE])?;
    println!("guard bench: {rounds} rounds, modes alternating in each; microseconds per operation");
    let mut results: Vec<Vec<Vec<f64>>> = vec![vec![vec![]; MODES.len()]; OPS.len()];
    for round in 0..rounds {
        for (oi, (op, n)) in OPS.iter().enumerate() {
            for (mi, mode) in MODES.iter().enumerate() {
                let us = match *mode {
                    "none" => fresh(op, *n)?,
                    "unwatched" => unwatched(op, *n)?,
                    "watched-nomatch" => watched("bench-nomatch", POLICY_NOMATCH, op, *n)?,
                    _ => watched("bench-allow", POLICY_ALLOW, op, *n)?,
                };
                println!("  round {round} {op:<8} {mode:<16} {us:>10.2}");
                results[oi][mi].push(us);
            }
        }
    }
    println!("\n| op | {} |", MODES.join(" | "));
    println!("|---|{}", "---|".repeat(MODES.len()));
    for (oi, (op, _)) in OPS.iter().enumerate() {
        let base = median(&mut results[oi][0].clone());
        let cells: Vec<String> = (0..MODES.len())
            .map(|mi| {
                let m = median(&mut results[oi][mi].clone());
                if mi == 0 {
                    format!("{m:.2}")
                } else {
                    format!("{m:.2} ({:.3}x)", m / base)
                }
            })
            .collect();
        println!("| {op} | {} |", cells.join(" | "));
    }
    Ok(0)
}
