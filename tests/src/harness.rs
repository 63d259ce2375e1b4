//! Starting agents, answering their holds, reading their output and audit logs.

use anyhow::{anyhow, bail, Context, Result};
use guard_api::AuditRecord;
use serde_json::Value;
use std::{
    io::{BufRead, BufReader, Read},
    net::{TcpListener, TcpStream},
    os::unix::net::UnixListener,
    process::{Child, Command, Stdio},
    sync::mpsc::{channel, Receiver},
    time::{Duration, Instant},
};

const DIR: &str = "/tmp/t";
/// Generous: everything runs under software emulation.
const WAIT: Duration = Duration::from_secs(120);

/// A test that cannot run here returns `Err(Skip(why).into())`: the runner reports it as
/// ignored with `SKIPPED: name: why`, never as passed.
#[derive(Debug)]
pub struct Skip(pub String);

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SKIPPED: {}", self.0)
    }
}

impl std::error::Error for Skip {}

pub fn prepare() {
    std::fs::create_dir_all(format!("{DIR}/bin")).expect("test dir");
}

pub fn write_files(paths: &[&str]) -> Result<()> {
    for p in paths {
        if let Some(d) = std::path::Path::new(p).parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::write(p, b"data\n").with_context(|| format!("writing {p}"))?;
    }
    Ok(())
}

pub fn copy_busybox(to: &str) -> Result<()> {
    let bb = std::fs::canonicalize("/bin/sh").unwrap_or_else(|_| "/bin/busybox".into());
    std::fs::copy(&bb, to).with_context(|| format!("copying {} to {to}", bb.display()))?;
    Ok(())
}

/// A kernel module file the VM ships (failover.ko has no dependencies).
pub fn module_path() -> Option<String> {
    let p = "/lib/modules/failover.ko";
    std::path::Path::new(p).exists().then(|| p.to_string())
}

pub struct Output {
    pub code: i32,
    pub stderr: String,
    /// The agent's audit log, read by [`Output::records`].
    log: String,
}

impl Output {
    /// The agent's audit records; an error if a line is not an [`AuditRecord`].
    pub fn records(&self) -> Result<Vec<AuditRecord>> {
        read_records(&self.log)
    }
}

/// Runs an agent to completion (for policies that must be rejected).
pub fn run_agent_once(name: &str, policy: &str, script: &str) -> Result<Output> {
    let (pol, log, sock) = paths(name);
    std::fs::write(&pol, policy)?;
    let out = Command::new("guard-agent")
        .args(["run", "--policy", &pol, "--audit-log", &log, "--admin-socket", &sock, "--", "/bin/sh", "-c", script])
        .output()?;
    Ok(Output { code: out.status.code().unwrap_or(-1), stderr: String::from_utf8_lossy(&out.stderr).into(), log })
}

fn paths(name: &str) -> (String, String, String) {
    (format!("{DIR}/{name}.toml"), format!("{DIR}/{name}.jsonl"), format!("{DIR}/{name}.sock"))
}

/// The agent's JSONL audit log as records (none if the file does not exist). A line that is
/// not an [`AuditRecord`] is an error naming it: a record of another shape must fail a test,
/// not vanish from what the test searches.
pub fn read_records(log: &str) -> Result<Vec<AuditRecord>> {
    let text = match std::fs::read_to_string(log) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {log}")),
    };
    parse_records(&text).with_context(|| format!("in the audit log {log}"))
}

/// The fields in which two records of one decision differ, among those that every copy of
/// the decision (the agent's JSONL, what it reports, the server's row) must agree on.
pub fn differing_decision_fields(a: &AuditRecord, b: &AuditRecord) -> Vec<&'static str> {
    let checks = [
        ("decision", a.decision == b.decision),
        ("reason", a.reason == b.reason),
        ("rule", a.rule == b.rule),
        ("hook", a.hook == b.hook),
        ("object", a.object == b.object),
        ("pid", a.pid == b.pid),
        ("argv", a.argv == b.argv),
        ("approver", a.approver == b.approver),
        ("request_id", a.request_id == b.request_id),
    ];
    checks.into_iter().filter(|(_, same)| !same).map(|(name, _)| name).collect()
}

/// JSON lines (blank lines skipped) as audit records.
pub fn parse_records(jsonl: &str) -> Result<Vec<AuditRecord>> {
    let lines = jsonl.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    lines
        .map(|(i, l)| AuditRecord::from_json(l).with_context(|| format!("line {} is not an audit record: {l}", i + 1)))
        .collect()
}

pub struct Agent {
    child: Child,
    sock: String,
    log: String,
    lines: Receiver<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Agent {
    /// Starts `guard-agent run` on `/bin/sh -c script` and waits until its socket is up.
    pub fn start(name: &str, policy: &str, script: &str) -> Result<Agent> {
        Self::start_with(name, policy, script, &[])
    }

    /// As `start`, with extra `guard-agent run` flags.
    pub fn start_with(name: &str, policy: &str, script: &str, flags: &[&str]) -> Result<Agent> {
        Self::start_with_env(name, policy, script, flags, &[])
    }

    /// As `start_with`, with extra environment variables for the agent (and so the tree).
    pub fn start_with_env(
        name: &str,
        policy: &str,
        script: &str,
        flags: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Agent> {
        let mut program = Command::new("guard-agent");
        program.envs(env.iter().copied());
        Self::start_program(program, name, policy, script, flags)
    }

    /// As `start_with`, from a session whose audit login uid is `loginuid` (as after a login
    /// as that user, then sudo): guard-agent and its tree inherit it.
    pub fn start_with_loginuid(name: &str, policy: &str, script: &str, flags: &[&str], loginuid: u32) -> Result<Agent> {
        let mut sh = Command::new("/bin/sh");
        sh.args(["-c", "echo \"$0\" > /proc/self/loginuid && exec guard-agent \"$@\"", &loginuid.to_string()]);
        Self::start_program(sh, name, policy, script, flags)
    }

    /// `program` (guard-agent, or what execs it) with `run`'s arguments.
    fn start_program(mut program: Command, name: &str, policy: &str, script: &str, flags: &[&str]) -> Result<Agent> {
        let (pol, log, sock) = paths(name);
        std::fs::write(&pol, policy)?;
        std::fs::remove_file(&log).ok();
        let mut child = program
            .args(["run", "--policy", &pol, "--audit-log", &log, "--admin-socket", &sock])
            .args(flags)
            .args(["--", "/bin/sh", "-c", script])
            .env("GUARD_SOCKET", &sock)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting guard-agent")?;
        let (tx, lines) = channel();
        let out = child.stdout.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                println!("    | {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let err = child.stderr.take().expect("piped");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if std::env::var("GUARD_E2E_VERBOSE").is_ok() {
                    eprintln!("    agent: {line}");
                }
                let mut s = sink.lock().expect("lock");
                s.push_str(&line);
                s.push('\n');
            }
        });
        let a = Agent { child, sock, log, lines, stderr };
        let deadline = Instant::now() + WAIT;
        while !std::path::Path::new(&a.sock).exists() {
            if Instant::now() > deadline {
                bail!("the agent never opened its socket; stderr: {}", a.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(a)
    }

    fn stderr(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    /// The agent's admin socket.
    pub fn socket(&self) -> &str {
        &self.sock
    }

    /// The next line of the workload's output that starts with `prefix`.
    pub fn line_starting_within(&self, prefix: &str, wait: Duration) -> Result<String> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return Ok(l),
                Ok(_) => continue,
                Err(_) => {
                    bail!("no output line starting with {prefix:?} within {wait:?}; agent stderr:\n{}", self.stderr())
                }
            }
        }
    }

    pub fn line_starting(&self, prefix: &str) -> Result<String> {
        self.line_starting_within(prefix, WAIT)
    }

    pub fn result(&self) -> Result<String> {
        self.line_starting("RESULT ")
    }

    pub fn result_within(&self, wait: Duration) -> Result<String> {
        self.line_starting_within("RESULT ", wait)
    }

    fn ctl(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("guard-agent").args(args).args(["--socket", &self.sock]).output()?;
        if !out.status.success() {
            bail!("guard-agent {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into())
    }

    pub fn pending(&self) -> Result<Vec<Value>> {
        let v: Value = serde_json::from_str(&self.ctl(&["pending", "--json"])?)?;
        v.as_array().cloned().ok_or_else(|| anyhow!("pending is not a list: {v}"))
    }

    pub fn status(&self) -> Result<Value> {
        Ok(serde_json::from_str(&self.ctl(&["status", "--json"])?)?)
    }

    /// Waits for a hold on `hook` and returns it.
    pub fn wait_hold(&self, hook: &str) -> Result<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(h) = self.pending()?.into_iter().find(|h| h["hook"] == hook) {
                return Ok(h);
            }
            if Instant::now() > deadline {
                bail!("no hold on {hook} appeared; agent stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn approve(&self, id: &str) -> Result<()> {
        self.ctl(&["approve", id]).map(|_| ())
    }

    pub fn deny(&self, id: &str) -> Result<()> {
        self.ctl(&["deny", id, "--reason", "test says no"]).map(|_| ())
    }

    /// Waits for the agent (and so the workload) to end; returns its records.
    pub fn finish(self) -> Result<Output> {
        self.finish_within(WAIT)
    }

    pub fn finish_within(mut self, wait: Duration) -> Result<Output> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(Output { code: st.code().unwrap_or(-1), stderr: self.stderr(), log: self.log.clone() });
            }
            if Instant::now() > deadline {
                self.child.kill().ok();
                bail!("the agent did not exit; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the workload through the agent (SIGTERM is forwarded to it) and waits.
    /// The first SIGTERM goes to the workload's shell; the next ones kill what is left of
    /// the tree (the agent keeps enforcing on descendants that outlive the shell).
    pub fn kill(mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            )
            .ok();
            for _ in 0..20 {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.child.kill().ok();
            self.child.wait().ok();
        }
    }
}

/// TCP and unix listeners outside the watched tree, accepting in the background.
pub struct Listeners {
    pub tcp4: [u16; 2],
    pub tcp6: u16,
}

impl Listeners {
    pub fn start() -> Result<Self> {
        let a = TcpListener::bind("127.0.0.1:0")?;
        let b = TcpListener::bind("127.0.0.1:0")?;
        let c = TcpListener::bind("[::1]:0")?;
        let tcp4 = [a.local_addr()?.port(), b.local_addr()?.port()];
        let tcp6 = c.local_addr()?.port();
        for l in [a, b, c] {
            std::thread::spawn(move || accept_tcp(l));
        }
        for path in ["/tmp/t/denied.sock", "/tmp/t/allowed.sock"] {
            std::fs::remove_file(path).ok();
            let l = UnixListener::bind(path)?;
            std::thread::spawn(move || {
                for s in l.incoming().flatten() {
                    drop(s)
                }
            });
        }
        for name in ["guard-denied", "guard-allowed"] {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            if let Ok(l) = UnixListener::bind_addr(&addr) {
                std::thread::spawn(move || {
                    for s in l.incoming().flatten() {
                        drop(s)
                    }
                });
            }
        }
        Ok(Listeners { tcp4, tcp6 })
    }
}

fn accept_tcp(l: TcpListener) {
    for s in l.incoming().flatten() {
        let mut s: TcpStream = s;
        let mut b = [0u8; 1];
        let _ = s.set_read_timeout(Some(Duration::from_millis(10)));
        let _ = s.read(&mut b);
    }
}

/// A process outside every tree, for ptrace targets.
pub struct Outsider(Child);

impl Outsider {
    pub fn start() -> Result<Self> {
        Ok(Outsider(Command::new("sleep").arg("600").spawn()?))
    }
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Outsider {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// A `guard-agent daemon` under test, with its own config, sockets, audit log and pin
/// directory (removed on drop, which detaches its programs: no test leaves enforcement behind).
pub struct DaemonUnderTest {
    child: Option<Child>,
    pub config: String,
    pub sock: String,
    pub reason_sock: String,
    pub log: String,
    pub pins: String,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl DaemonUnderTest {
    /// Writes `policies` (name, text) and a config with `selectors` (TOML text appended after
    /// the generated header), starts the daemon and waits for its socket.
    pub fn start(name: &str, policies: &[(&str, &str)], selectors: &str) -> Result<Self> {
        let dir = format!("{DIR}/{name}");
        std::fs::create_dir_all(&dir)?;
        let mut config = format!(
            "audit_log = \"{dir}/audit.jsonl\"\nadmin_socket = \"{dir}/agent.sock\"\nreason_socket = \"{dir}/reason.sock\"\npin_dir = \"/sys/fs/bpf/{name}\"\n"
        );
        let mut table = String::from("[policies]\n");
        for (pname, text) in policies {
            std::fs::write(format!("{dir}/{pname}.toml"), text)?;
            table.push_str(&format!("{pname} = \"{pname}.toml\"\n"));
        }
        config.push_str(selectors.split("[[selector]]").next().unwrap_or(""));
        config.push_str(&table);
        if let Some(i) = selectors.find("[[selector]]") {
            config.push_str(&selectors[i..]);
        }
        let cfg_path = format!("{dir}/agent.toml");
        std::fs::write(&cfg_path, &config)?;
        std::fs::remove_file(format!("{dir}/audit.jsonl")).ok();
        let mut d = DaemonUnderTest {
            child: None,
            sock: format!("{dir}/agent.sock"),
            reason_sock: format!("{dir}/reason.sock"),
            log: format!("{dir}/audit.jsonl"),
            pins: format!("/sys/fs/bpf/{name}"),
            config: cfg_path,
            stderr: Default::default(),
        };
        d.launch()?;
        Ok(d)
    }

    fn launch(&mut self) -> Result<()> {
        std::fs::remove_file(&self.sock).ok();
        let mut child = Command::new("guard-agent")
            .args(["daemon", "--config", &self.config])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting guard-agent daemon")?;
        let err = child.stderr.take().expect("piped");
        let sink = self.stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if std::env::var("GUARD_E2E_VERBOSE").is_ok() {
                    eprintln!("    daemon: {line}");
                }
                let mut s = sink.lock().expect("lock");
                s.push_str(&line);
                s.push('\n');
            }
        });
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while !std::path::Path::new(&self.sock).exists() {
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("the daemon exited ({st}); stderr:\n{}", self.stderr());
            }
            if Instant::now() > deadline {
                bail!("the daemon never opened its socket; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    /// Waits until the daemon's log contains `needle`.
    pub fn wait_log(&self, needle: &str, wait: Duration) -> Result<()> {
        let deadline = Instant::now() + wait;
        while !self.stderr().contains(needle) {
            if Instant::now() > deadline {
                bail!("the daemon never logged {needle:?}; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// SIGTERM and wait: the pins stay (trees stay enforced by the kernel).
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM)?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while c.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    c.kill().ok();
                    bail!("the daemon did not stop on SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.launch()
    }

    /// Runs `guard-agent ARGS --socket <admin socket>`.
    pub fn ctl(&self, args: &[&str]) -> Result<std::process::Output> {
        Ok(Command::new("guard-agent").args(args).args(["--socket", &self.sock]).output()?)
    }

    pub fn status(&self) -> Result<Value> {
        let out = self.ctl(&["status", "--json"])?;
        if !out.status.success() {
            bail!("status failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// The tree rooted at `root` in `status`, waiting for it to appear.
    pub fn tree(&self, root: u32) -> Result<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let st = self.status()?;
            if let Some(t) = st["trees"].as_array().into_iter().flatten().find(|t| t["root"] == root) {
                return Ok(t.clone());
            }
            if Instant::now() > deadline {
                bail!("no tree with root {root} in status: {st}\nstderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn records(&self) -> Result<Vec<AuditRecord>> {
        read_records(&self.log)
    }

    /// Waits for a record that satisfies `pred`.
    pub fn wait_record(&self, what: &str, pred: impl Fn(&AuditRecord) -> bool) -> Result<AuditRecord> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(r) = self.records()?.into_iter().find(&pred) {
                return Ok(r);
            }
            if Instant::now() > deadline {
                bail!("no record {what}; records: {:?}\nstderr:\n{}", self.records()?, self.stderr());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pending(&self) -> Result<Vec<Value>> {
        let out = self.ctl(&["pending", "--json"])?;
        let v: Value = serde_json::from_slice(&out.stdout)?;
        v.as_array().cloned().ok_or_else(|| anyhow!("pending is not a list: {v}"))
    }
}

impl Drop for DaemonUnderTest {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
        }
        if let Ok(files) = std::fs::read_dir(&self.pins) {
            for build in files.flatten() {
                for f in std::fs::read_dir(build.path()).into_iter().flatten().flatten() {
                    std::fs::remove_file(f.path()).ok();
                }
                std::fs::remove_dir(build.path()).ok();
            }
        }
        std::fs::remove_dir(&self.pins).ok();
    }
}

/// A workload started in the background; its output is collected when it ends.
pub struct Workload(pub Child);

impl Workload {
    pub fn spawn(cmd: &mut Command) -> Result<Self> {
        Ok(Workload(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?))
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Waits for the end; returns (exit code, stdout, then stderr after "STDERR: " if any).
    /// Both pipes are drained while the child runs, so a child that writes more than a pipe
    /// holds cannot block on a full pipe while we wait for it to exit.
    pub fn finish(mut self) -> Result<(i32, String)> {
        let stdout = self.0.stdout.take().map(drain);
        let stderr = self.0.stderr.take().map(drain);
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(st) = self.0.try_wait()? {
                break st;
            }
            if Instant::now() > deadline {
                self.0.kill().ok();
                self.0.wait().ok();
                bail!("a workload did not end");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let collect = |reader: Option<std::thread::JoinHandle<std::io::Result<String>>>| -> Result<String> {
            match reader {
                Some(r) => r.join().map_err(|_| anyhow!("a pipe reader panicked"))?.context("reading a workload pipe"),
                None => Ok(String::new()),
            }
        };
        let mut out = collect(stdout)?;
        let err = collect(stderr)?;
        if !err.is_empty() {
            out.push_str("\nSTDERR: ");
            out.push_str(&err);
        }
        Ok((status.code().unwrap_or(-1), out))
    }
}

/// Reads a pipe to its end on a thread of its own.
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<std::io::Result<String>> {
    std::thread::spawn(move || {
        let mut text = String::new();
        pipe.read_to_string(&mut text).map(|_| text)
    })
}

impl Drop for Workload {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.0.kill().ok();
            self.0.wait().ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guard_api::{Decision, Hook, Reason, RecordKind, Timestamp};

    fn approved() -> AuditRecord {
        let mut r = AuditRecord::at(Timestamp::from_unix_ms(1_796_002_226_007), RecordKind::Enforcement, "guard-vm");
        r.decision = Some(Decision::Allow);
        r.reason = Some(Reason::Approved);
        r.rule = Some("secrets".into());
        r.hook = Some(Hook::FileOpen);
        r.object = Some("/tmp/t/srv/ok-1".into());
        r.pid = Some(77);
        r.argv = vec!["guard-e2e".into(), "do".into(), "open-read".into(), "/tmp/t/srv/ok-1".into()];
        r.approver = Some("alice".into());
        r.request_id = Some("abcdefghij".into());
        r
    }

    #[test]
    fn jsonl_reads_into_records_and_a_foreign_line_is_an_error() {
        let jsonl = format!("{}\n\n{}\n", approved().to_json(), approved().to_json());
        assert_eq!(parse_records(&jsonl).unwrap(), vec![approved(), approved()]);
        let old_shape = r#"{"time":"2026-11-30T01:30:26.007Z","decision":"allow","rule":"x"}"#;
        let e = format!("{:#}", parse_records(&format!("{}\n{old_shape}\n", approved().to_json())).unwrap_err());
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn records_of_one_decision_are_compared_field_by_field() {
        let jsonl = approved();
        let mut row = approved();
        // The server's own row differs where it should: kind, time, state.
        row.kind = RecordKind::Decision;
        row.state = Some("approved".into());
        row.time = Timestamp::from_unix_ms(1_796_002_226_999);
        assert!(differing_decision_fields(&jsonl, &row).is_empty());
        row.pid = Some(78);
        row.reason = Some(Reason::Grant);
        assert_eq!(differing_decision_fields(&jsonl, &row), vec!["reason", "pid"]);
    }
}
