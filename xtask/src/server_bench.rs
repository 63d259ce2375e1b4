//! `cargo xtask bench` (after the VM bench, or alone with `--server-only`): guard-server's
//! decision path under load. Release guard-server on SQLite and on a throwaway PostgreSQL
//! (`guard-server dev-postgres`), an `[[auto]] decision = "approve"` rule, and guard-loadgen
//! with 1, 10, 100, 1000 concurrent agents (one TLS connection each) measuring Submit -> the
//! first streamed APPROVED. One table at the end beside issue 3's targets; nothing is asserted.
//! Then the audit sinks' rows/s per format (`guard-server bench-sinks`), also reported only.
//! Every process started here is stopped on the way out, also on error.
use crate::services::{self, Children, Pki, Server};
use crate::util::{self, workspace_root};
use anyhow::{Context, Result};
use serde::Deserialize;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

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
    /// Audit rows each sink delivers in the sink benchmark (0: no sink benchmark).
    #[arg(long, default_value_t = 50_000)]
    pub sink_records: usize,
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

pub fn run(args: &ServerBenchArgs) -> Result<()> {
    let root = workspace_root();
    services::build_release_binaries(&["guard-server", "guardctl"])?;
    let release = root.join("target/release");
    let (server, loadgen) = (release.join("guard-server"), release.join("guard-loadgen"));
    let dir = root.join("target/server-bench");
    util::remove_dir_if_exists(&dir)?;
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    let pki = dir.join("pki");
    let hosts: Vec<String> = (0..HOSTS).map(|i| format!("bench-{i}")).collect();
    services::init_pki(&server, &pki, &Pki { server_name: "127.0.0.1", hosts: &hosts, approvers: &["bench"] })?;

    let mut children = Children::default();
    let mut rows = Vec::new();
    let mut notes = Vec::new();

    let sqlite = format!("sqlite://{}", dir.join("bench.db").display());
    let mut audit = Vec::new();
    let mut backend = |name: &'static str, url: &str, rows: &mut Vec<Row>| {
        let before = rows.len();
        if let Err(e) = bench_backend(name, url, args, &server, &loadgen, &dir, &pki, rows, &mut audit) {
            eprintln!("\n!!!!!!!! xtask: the {name} bench failed: {e:#} !!!!!!!!\n");
            let done: Vec<usize> = rows[before..].iter().map(|r| r.agents).collect();
            for &agents in args.server_agents.iter().filter(|a| !done.contains(a)) {
                rows.push(Row { backend: name, agents, result: Err(format!("{e:#}")) });
            }
        }
    };
    backend("sqlite", &sqlite, &mut rows);

    match services::start_postgres(&mut children, &server, &dir) {
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
    print!("{}", render_audit(&audit, args.server_seconds));
    if args.sink_records > 0 {
        match sink_bench(&server, &dir, args.sink_records) {
            Ok(table) => print!("{table}"),
            Err(e) => {
                eprintln!("\n!!!!!!!! xtask: the sink bench failed; NO SINK NUMBERS: {e:#} !!!!!!!!\n");
                notes.push(format!("sink bench: {e:#}"));
            }
        }
    }
    for n in notes {
        println!("NOTE: {n}");
    }
    Ok(())
}

/// The audit sinks' rows/s per format (`guard-server bench-sinks`: file and syslog sinks
/// delivering a SQLite trail), its table as it prints it.
fn sink_bench(server: &Path, dir: &Path, records: usize) -> Result<String> {
    eprintln!("xtask: audit sinks, {records} rows per format");
    let out = Command::new(server)
        .args(["bench-sinks", "--records", &records.to_string(), "--dir"])
        .arg(dir.join("sinks"))
        .env("RUST_LOG", "warn")
        .stderr(Stdio::inherit())
        .output()
        .context("could not start guard-server bench-sinks")?;
    anyhow::ensure!(out.status.success(), "guard-server bench-sinks {}", out.status);
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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
    audit: &mut Vec<AuditRow>,
) -> Result<()> {
    // Its own set: the server stops when this returns, also on error.
    let mut children = Children::default();
    let port = services::free_port()?;
    let config = services::server_config(
        pki,
        port,
        database_url,
        // No rate limits: the load generator is one host asking as fast as it can.
        &format!("[[auto]]\nrule = \"{RULE}\"\ndecision = \"approve\"\n[rate_limit]\nhost_per_minute = 0\ntree_per_minute = 0\n"),
    );
    let name = format!("guard-server ({backend})");
    let file_stem = format!("server-{backend}");
    let s = Server {
        name: &name,
        binary: server,
        config: &config,
        dir,
        file_stem: &file_stem,
        env: &[("RUST_LOG", "warn")],
    };
    let log = services::spawn_server(&mut children, &s)?;
    eprintln!("xtask: guard-server on {backend} at 127.0.0.1:{port} (log {})", log.display());

    for &agents in &args.server_agents {
        eprintln!("xtask: {backend}: {agents} agents for {}s", args.server_seconds);
        let result = run_load(loadgen, pki, port, agents, args.server_seconds, &[]);
        if let Err(e) = &result {
            eprintln!("xtask: {backend} with {agents} agents: {e}");
        }
        rows.push(Row { backend, agents, result });
        // Let the server settle (closed connections, WAL checkpoints) between runs.
        std::thread::sleep(Duration::from_secs(1));
    }
    for agents in INGEST_AGENTS {
        eprintln!("xtask: {backend}: audit ingest, {agents} agents, batches of {INGEST_BATCH}");
        let batch = INGEST_BATCH.to_string();
        let result = run_load(loadgen, pki, port, agents, args.server_seconds, &["--ingest-batch", &batch]);
        audit.push(AuditRow { backend, what: format!("ingest, {agents} agent(s) x {INGEST_BATCH}"), result });
        std::thread::sleep(Duration::from_secs(1));
    }
    audit.push(AuditRow {
        backend,
        what: "verify (offline, whole chain)".into(),
        result: verify_speed(port, pki, dir, backend),
    });
    Ok(())
}

/// Audit ingest: records per ReportRecords call, and the concurrent agents of each run.
/// 300 records of the generator's shape are about 210 KB, under the server's 256 KiB message limit.
const INGEST_BATCH: usize = 300;
const INGEST_AGENTS: [usize; 2] = [1, 4];

/// One audit measurement: ingest (records/s, batch latencies) or verify (rows/s).
struct AuditRow {
    backend: &'static str,
    what: String,
    result: Result<Measured, String>,
}

/// Exports the whole chain with `guardctl audit rows`, then times an offline verify of it.
fn verify_speed(port: u16, pki: &Path, dir: &Path, backend: &str) -> Result<Measured, String> {
    let guardctl = workspace_root().join("target/release/guardctl");
    let ctl = |args: &[&str]| {
        Command::new(&guardctl)
            .args(["--server", &format!("https://127.0.0.1:{port}"), "--pki"])
            .arg(pki)
            .args(["--as", "bench"])
            .args(args)
            .output()
            .map_err(|e| format!("guardctl: {e}"))
    };
    let rows = ctl(&["audit", "rows"])?;
    let keys = ctl(&["audit", "keys"])?;
    if !rows.status.success() || !keys.status.success() {
        return Err(format!("guardctl audit rows/keys: {}", String::from_utf8_lossy(&rows.stderr)));
    }
    let (rows_file, keys_file) = (dir.join(format!("rows-{backend}.jsonl")), dir.join(format!("keys-{backend}.json")));
    fs::write(&rows_file, &rows.stdout).map_err(|e| e.to_string())?;
    fs::write(&keys_file, &keys.stdout).map_err(|e| e.to_string())?;
    let n = rows.stdout.iter().filter(|b| **b == b'\n').count() as u64;
    let t0 = std::time::Instant::now();
    let out = Command::new(&guardctl)
        .args(["audit", "verify", "--rows"])
        .arg(&rows_file)
        .arg("--keys")
        .arg(&keys_file)
        .output()
        .map_err(|e| format!("guardctl: {e}"))?;
    let took = t0.elapsed();
    if !out.status.success() {
        return Err(format!("verify said: {}", String::from_utf8_lossy(&out.stdout)));
    }
    let us = took.as_micros() as u64;
    Ok(Measured { p50_us: us, p99_us: us, max_us: us, rate: n as f64 / took.as_secs_f64(), decisions: n, errors: 0 })
}

fn render_audit(rows: &[AuditRow], seconds: u64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nguard-server audit trail: ReportRecords ingest of chained records ({seconds} s per run), and an offline verify"
    );
    let _ = writeln!(
        s,
        "{:<9} {:<34} {:>12} {:>10} {:>12} {:>12}",
        "backend", "run", "records/s", "records", "p50 µs", "p99 µs"
    );
    for r in rows {
        match &r.result {
            Ok(m) => {
                let _ = writeln!(
                    s,
                    "{:<9} {:<34} {:>12.0} {:>10} {:>12} {:>12}",
                    r.backend, r.what, m.rate, m.decisions, m.p50_us, m.p99_us
                );
            }
            Err(e) => {
                let _ = writeln!(s, "{:<9} {:<34}   FAILED: {e}", r.backend, r.what);
            }
        }
    }
    let _ = writeln!(s, "target (issue 11): 50,000 records/s ingest on this machine; latencies are per batch (ingest) or the whole run (verify)");
    s.lines().map(|l| format!("{}\n", l.trim_end())).collect()
}

fn run_load(
    loadgen: &Path,
    pki: &Path,
    port: u16,
    agents: usize,
    seconds: u64,
    extra: &[&str],
) -> Result<Measured, String> {
    let out = Command::new(loadgen)
        .args(["--server", &format!("https://127.0.0.1:{port}"), "--pki"])
        .arg(pki)
        .args(extra)
        .args(["--host-count", &HOSTS.to_string(), "--agents", &agents.to_string()])
        .args(["--duration", &format!("{seconds}s"), "--rule", RULE, "--json"])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("could not start guard-loadgen: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(line) = text.lines().rev().find(|l| l.starts_with('{')) else {
        return Err(format!("guard-loadgen {}: printed no result", out.status));
    };
    let r: LoadgenResult =
        serde_json::from_str(line).map_err(|e| format!("guard-loadgen result does not parse ({e}): {line}"))?;
    let m = Measured {
        p50_us: r.p50_us,
        p99_us: r.p99_us,
        max_us: r.max_us,
        rate: r.decisions_per_s,
        decisions: r.decisions,
        errors: r.errors + r.not_approved,
    };
    if !out.status.success() {
        return Err(format!("guard-loadgen {}: {line}", out.status));
    }
    Ok(m)
}

/// The fields of guard-loadgen's `--json` result line that the table shows.
#[derive(Deserialize)]
struct LoadgenResult {
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
    decisions_per_s: f64,
    decisions: u64,
    errors: u64,
    not_approved: u64,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loadgen_result_line_parses() {
        let line = r#"{"agents":10,"decisions":5120,"decisions_per_s":1023.5,"errors":0,"first_error":null,"max_us":9000,"not_approved":2,"p50_us":800,"p99_us":1934}"#;
        let r: LoadgenResult = serde_json::from_str(line).unwrap();
        assert_eq!((r.decisions, r.p99_us, r.not_approved), (5120, 1934, 2));
        assert_eq!(r.decisions_per_s, 1023.5);
        assert!(serde_json::from_str::<LoadgenResult>(r#"{"decisions":1}"#).is_err());
    }
}
