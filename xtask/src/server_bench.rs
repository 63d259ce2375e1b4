//! `cargo xtask bench` (after the VM bench, or alone with `--server-only`): guard-server's
//! decision path under load. Release guard-server on SQLite and on a throwaway PostgreSQL
//! (`guard-server dev-postgres`), an `[[auto]] decision = "approve"` rule, and guard-loadgen
//! with 1, 10, 100, 1000 concurrent agents (one TLS connection each) measuring Submit -> the
//! first streamed APPROVED. One table at the end beside issue 3's targets; nothing is asserted.
//! Every process started here is stopped on the way out, also on error.
use crate::util::{self, workspace_root};
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Issue 3's targets, for comparison.
const TARGET_P99_US: u64 = 2_000;
const TARGET_RATE: f64 = 10_000.0;
/// The rule the load generator's requests name, auto-approved by the server's config.
const RULE: &str = "bench-auto";
/// Agent certificates, shared round-robin by the connections (each connection its own).
const HOSTS: usize = 16;

#[derive(clap::Args, Clone)]
pub struct ServerBenchArgs {
    /// Only the guard-server benchmark (no VM).
    #[arg(long)]
    pub server_only: bool,
    /// Skip the guard-server benchmark (VM bench only).
    #[arg(long, conflicts_with = "server_only")]
    pub no_server: bool,
    /// How long each load run submits, in seconds.
    #[arg(long, default_value_t = 5)]
    pub server_seconds: u64,
    /// Concurrent agents of the load runs (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
    pub server_agents: Vec<usize>,
}

/// What one load run measured, or why it has no numbers.
struct Row {
    backend: &'static str,
    agents: usize,
    result: Result<Measured, String>,
}

struct Measured {
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
    rate: f64,
    decisions: u64,
    errors: u64,
}

/// Children stopped in reverse order of start when dropped: SIGTERM, then SIGKILL after 10 s.
#[derive(Default)]
struct Children(Vec<(String, Child)>);

impl Children {
    fn stop_last(&mut self) {
        if let Some((name, mut child)) = self.0.pop() {
            stop(&name, &mut child);
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        while !self.0.is_empty() {
            self.stop_last();
        }
    }
}

fn stop(name: &str, child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("xtask: {name} did not stop on SIGTERM; killing it");
    let _ = child.kill();
    let _ = child.wait();
}

pub fn run(args: &ServerBenchArgs) -> Result<()> {
    let root = workspace_root();
    util::run(
        Command::new("cargo")
            .args(["build", "--release", "-p", "guard-server", "-p", "guardctl", "--bins"])
            .current_dir(&root),
    )?;
    let release = root.join("target/release");
    let (server, loadgen) = (release.join("guard-server"), release.join("guard-loadgen"));
    let dir = root.join("target/server-bench");
    util::remove_dir_if_exists(&dir)?;
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    let pki = dir.join("pki");
    let mut init = Command::new(&server);
    init.args(["init-pki", "--dir"]).arg(&pki).args(["--server-name", "127.0.0.1", "--approver", "bench"]);
    for i in 0..HOSTS {
        init.args(["--host", &format!("bench-{i}")]);
    }
    util::run(init.stdout(Stdio::null()))?;

    let mut children = Children::default();
    let mut rows = Vec::new();
    let mut notes = Vec::new();

    let sqlite = format!("sqlite://{}", dir.join("bench.db").display());
    let backend = |name: &'static str, url: &str, rows: &mut Vec<Row>| {
        let before = rows.len();
        if let Err(e) = bench_backend(name, url, args, &server, &loadgen, &dir, &pki, rows) {
            eprintln!("\n!!!!!!!! xtask: the {name} bench failed: {e:#} !!!!!!!!\n");
            let done: Vec<usize> = rows[before..].iter().map(|r| r.agents).collect();
            for &agents in args.server_agents.iter().filter(|a| !done.contains(a)) {
                rows.push(Row { backend: name, agents, result: Err(format!("{e:#}")) });
            }
        }
    };
    backend("sqlite", &sqlite, &mut rows);

    match start_postgres(&server, &dir, &mut children) {
        Ok(url) => {
            backend("postgres", &url, &mut rows);
            children.stop_last();
        }
        Err(e) => {
            let why = format!("{e:#}");
            eprintln!("\n!!!!!!!! xtask: PostgreSQL could not be started; NO PostgreSQL NUMBERS: {why} !!!!!!!!\n");
            for &agents in &args.server_agents {
                rows.push(Row { backend: "postgres", agents, result: Err(format!("PostgreSQL not started: {why}")) });
            }
            notes.push(format!("PostgreSQL: {why}"));
        }
    }
    drop(children);
    print!("{}", render(&rows, args.server_seconds));
    for n in notes {
        println!("NOTE: {n}");
    }
    Ok(())
}

/// One server on `database_url`, every agent count against it, then the server stopped.
#[allow(clippy::too_many_arguments)]
fn bench_backend(
    backend: &'static str,
    database_url: &str,
    args: &ServerBenchArgs,
    server: &Path,
    loadgen: &Path,
    dir: &Path,
    pki: &Path,
    rows: &mut Vec<Row>,
) -> Result<()> {
    // Its own set: the server stops when this returns, also on error.
    let mut children = Children::default();
    let port = free_port()?;
    let config = dir.join(format!("server-{backend}.toml"));
    fs::write(&config, server_config(pki, port, database_url))
        .with_context(|| format!("writing {}", config.display()))?;
    let log = dir.join(format!("server-{backend}.log"));
    let out = fs::File::create(&log)?;
    // 1000 agents are 1000 sockets on the server too; raise its open-file limit on the way in.
    let child = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$0" serve --config "$1""#)
        .arg(server)
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(out.try_clone()?)
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting guard-server ({backend})"))?;
    children.0.push((format!("guard-server ({backend})"), child));
    wait_for_line(&log, "listening on", &format!("guard-server ({backend})"), &mut children.0.last_mut().unwrap().1)?;
    eprintln!("xtask: guard-server on {backend} at 127.0.0.1:{port} (log {})", log.display());

    for &agents in &args.server_agents {
        eprintln!("xtask: {backend}: {agents} agents for {}s", args.server_seconds);
        let result = run_load(loadgen, pki, port, agents, args.server_seconds);
        if let Err(e) = &result {
            eprintln!("xtask: {backend} with {agents} agents: {e}");
        }
        rows.push(Row { backend, agents, result });
        // Let the server settle (closed connections, WAL checkpoints) between runs.
        std::thread::sleep(Duration::from_secs(1));
    }
    Ok(())
}

fn run_load(loadgen: &Path, pki: &Path, port: u16, agents: usize, seconds: u64) -> Result<Measured, String> {
    let out = Command::new(loadgen)
        .args(["--server", &format!("https://127.0.0.1:{port}"), "--pki"])
        .arg(pki)
        .args(["--host-count", &HOSTS.to_string(), "--agents", &agents.to_string()])
        .args(["--duration", &format!("{seconds}s"), "--rule", RULE, "--json"])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("could not start guard-loadgen: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(line) = text.lines().rev().find(|l| l.starts_with('{')) else {
        return Err(format!("guard-loadgen {}: printed no result", out.status));
    };
    let num = |k: &str| json_number(line, k).ok_or_else(|| format!("guard-loadgen result lacks {k}: {line}"));
    let m = Measured {
        p50_us: num("p50_us")? as u64,
        p99_us: num("p99_us")? as u64,
        max_us: num("max_us")? as u64,
        rate: num("decisions_per_s")?,
        decisions: num("decisions")? as u64,
        errors: num("errors")? as u64 + num("not_approved")? as u64,
    };
    if !out.status.success() {
        return Err(format!("guard-loadgen {}: {line}", out.status));
    }
    Ok(m)
}

/// `"key":<number>` from a flat JSON object; xtask has no JSON parser and needs none more.
fn json_number(json: &str, key: &str) -> Option<f64> {
    let at = json.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &json[at..];
    let end = rest.find(|c: char| !(c.is_ascii_digit() || "+-.eE".contains(c))).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn render(rows: &[Row], seconds: u64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nguard-server decision path: Submit -> first streamed APPROVED ({} s per run, {} CPUs, loadgen on the same machine)",
        seconds,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    let _ = writeln!(
        s,
        "{:<9} {:>6} {:>9} {:>9} {:>9} {:>12} {:>9} {:>7}   {:<16} {:<16}",
        "backend",
        "agents",
        "p50 µs",
        "p99 µs",
        "max µs",
        "decisions/s",
        "decided",
        "errors",
        "p99 < 2 ms?",
        "10,000/s?"
    );
    for r in rows {
        match &r.result {
            Ok(m) => {
                let p99_ok = if m.p99_us < TARGET_P99_US { "reached" } else { "not reached" };
                let rate_ok = if m.rate >= TARGET_RATE {
                    "reached".to_string()
                } else {
                    format!("{:.0}% of it", 100.0 * m.rate / TARGET_RATE)
                };
                let _ = writeln!(
                    s,
                    "{:<9} {:>6} {:>9} {:>9} {:>9} {:>12.0} {:>9} {:>7}   {:<16} {:<16}",
                    r.backend, r.agents, m.p50_us, m.p99_us, m.max_us, m.rate, m.decisions, m.errors, p99_ok, rate_ok
                );
            }
            Err(e) => {
                let _ = writeln!(s, "{:<9} {:>6}   FAILED: {e}", r.backend, r.agents);
            }
        }
    }
    let _ = writeln!(s, "targets (issue 3): p99 < {} µs, {} decisions/s", TARGET_P99_US, TARGET_RATE as u64);
    s.lines().map(|l| format!("{}\n", l.trim_end())).collect()
}

fn start_postgres(server: &Path, dir: &Path, children: &mut Children) -> Result<String> {
    let port = free_port()?;
    let log = dir.join("postgres.log");
    let out = fs::File::create(&log)?;
    let child = Command::new(server)
        .args(["dev-postgres", "--dir"])
        .arg(dir.join("pg"))
        .args(["--port", &port.to_string()])
        .stdout(out.try_clone()?)
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .context("starting guard-server dev-postgres")?;
    children.0.push(("PostgreSQL (dev-postgres)".into(), child));
    let line = wait_for_line(&log, "postgres://", "dev-postgres", &mut children.0.last_mut().unwrap().1)?;
    let url = line.split_whitespace().find(|w| w.starts_with("postgres://")).unwrap_or_default().to_string();
    eprintln!("xtask: PostgreSQL at {url}");
    Ok(url)
}

fn server_config(pki: &Path, port: u16, database_url: &str) -> String {
    let p = |f: &str| pki.join(f).display().to_string();
    format!(
        "listen = \"127.0.0.1:{port}\"\ndatabase_url = \"{database_url}\"\ndefault_timeout = \"60s\"\n\n\
         [tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\n\
         [[auto]]\nrule = \"{RULE}\"\ndecision = \"approve\"\n",
        p("ca.crt"),
        p("server.crt"),
        p("server.key"),
    )
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until the child's log has a line containing `needle`; fails early if it exits.
fn wait_for_line(log: &Path, needle: &str, name: &str, child: &mut Child) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return Ok(line.to_string());
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!("{name} exited ({status}) before it was ready; its log ({}):\n{text}", log.display());
        }
        if Instant::now() > deadline {
            bail!("{name} was not ready within 120 s; its log ({}):\n{text}", log.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_from_the_loadgen_json() {
        let line = r#"{"agents":10,"decisions":5120,"decisions_per_s":1023.5,"first_error":null,"p99_us":1934}"#;
        assert_eq!(json_number(line, "decisions"), Some(5120.0));
        assert_eq!(json_number(line, "decisions_per_s"), Some(1023.5));
        assert_eq!(json_number(line, "p99_us"), Some(1934.0));
        assert_eq!(json_number(line, "p50_us"), None);
    }
}
