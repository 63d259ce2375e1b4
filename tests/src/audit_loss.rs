//! Nothing lost (issue 11, item 2): the agent's spool survives a `kill -9` and a server that is
//! down, and every record reaches the server once, in order. A watched tree makes 500
//! `audit`-rule decisions while the agent points at a port where no server listens; the agent
//! is killed with SIGKILL, restarted on the same spool (still no server), 500 more; then it is
//! restarted pointing at the real server. Then once more with the shipped position deleted, so
//! the whole spool is sent again. The server's trail must hold the stream's records seq 1..=N
//! exactly once, in order, the 1,000 decisions in the order they were made; the local spool
//! must verify as one chain, its checkpoints signed by the host's audit key, and
//! `guardctl audit verify` must find the server's chain whole.

use crate::{
    harness::{read_records, write_files, Skip},
    Test,
};
use anyhow::{anyhow, bail, ensure, Context, Result};
use guard_api::{
    chain::{
        keys::SigningKey,
        verify::{verify_stream, Keys},
    },
    AuditRecord, RecordKind,
};
use std::{
    collections::HashMap,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub const TESTS: &[Test] = &[("audit_loss_kill_9_and_server_down_lose_nothing_and_ship_once_in_order", loss)];

const LOG: &str = "/tmp/t/audit-loss.jsonl";
const POLICY: &str = "/tmp/t/audit-loss.toml";
const SOCK: &str = "/tmp/t/audit-loss.sock";
const PIDFILE: &str = "/tmp/t/audit-loss.pid";
const RULE: &str = "loss-audit";
const WAIT: Duration = Duration::from_secs(60);

fn file(i: usize) -> String {
    format!("/tmp/t/loss/f{i}")
}

/// `guard-agent run` on the spool, with the server flags, running `script`.
fn start(flags: &[String], script: &str, phase: &str) -> Result<Child> {
    std::fs::remove_file(SOCK).ok();
    let err = std::fs::File::create(format!("/tmp/t/audit-loss-{phase}.err"))?;
    let child = Command::new("guard-agent")
        .args(["run", "--policy", POLICY, "--audit-log", LOG, "--admin-socket", SOCK])
        .args(flags)
        .args(["--", "/bin/sh", "-c", script])
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .context("starting guard-agent")?;
    let deadline = Instant::now() + WAIT;
    while !std::path::Path::new(SOCK).exists() {
        ensure!(Instant::now() < deadline, "the agent ({phase}) never opened its socket: {}", stderr(phase));
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child)
}

fn stderr(phase: &str) -> String {
    std::fs::read_to_string(format!("/tmp/t/audit-loss-{phase}.err")).unwrap_or_default()
}

/// The spool's records once `pred` holds for them (a read may catch a batch half-written).
fn wait_spool(what: &str, pred: impl Fn(&[AuditRecord]) -> bool) -> Result<Vec<AuditRecord>> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(r) = read_records(LOG) {
            if pred(&r) {
                return Ok(r);
            }
        }
        ensure!(Instant::now() < deadline, "the spool never showed {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn audited(records: &[AuditRecord]) -> Vec<String> {
    records.iter().filter(|r| r.rule.as_deref() == Some(RULE)).filter_map(|r| r.object.clone()).collect()
}

/// The tree's shell execs `sleep` once its reads are done; kill it (the agent is gone or going).
fn kill_tree() {
    if let Ok(pid) = std::fs::read_to_string(PIDFILE) {
        if let Ok(pid) = pid.trim().parse::<i32>() {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).ok();
        }
    }
}

/// The tree's script: one read of each file in `range`, in order, by the shell itself (a short
/// argv keeps the records small), then `exec sleep` (same pid, written to PIDFILE).
fn reads(range: std::ops::Range<usize>) -> String {
    format!(
        "echo $$ > {PIDFILE}; i={}; while [ $i -lt {} ]; do read x < /tmp/t/loss/f$i; i=$((i+1)); done; exec sleep 120",
        range.start, range.end
    )
}

/// Every record of `stream` in the server's trail, in the server's row order, and what else the
/// query returned (for a failure's message).
fn server_stream(
    pki: &str,
    server: &str,
    host: &str,
    since_s: u64,
    stream: &str,
) -> Result<(Vec<AuditRecord>, String)> {
    let out = Command::new("guardctl")
        .args(["--server", server, "--pki", pki, "--as", "alice", "--json", "audit", "--host", host])
        .args(["--since", &format!("{since_s}s"), "--limit", "10000"])
        .output()
        .context("running guardctl")?;
    ensure!(out.status.success(), "guardctl audit: {}", String::from_utf8_lossy(&out.stderr));
    let mut rows: Vec<(u64, AuditRecord)> = vec![];
    let (mut total, mut streams) = (0, std::collections::BTreeMap::<String, usize>::new());
    for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()) {
        let row: serde_json::Value = serde_json::from_str(line).with_context(|| format!("guardctl row: {line}"))?;
        let seq = row["seq"].as_u64().ok_or_else(|| anyhow!("row without seq: {line}"))?;
        let Some(event) = row.get("event").filter(|e| e.is_object()) else { continue };
        let r: AuditRecord =
            serde_json::from_value(event.clone()).with_context(|| format!("row {seq} is not a record: {line}"))?;
        total += 1;
        *streams.entry(r.chain.as_ref().map(|c| c.stream.clone()).unwrap_or_default()).or_default() += 1;
        if r.chain.as_ref().is_some_and(|c| c.stream == stream) {
            rows.push((seq, r));
        }
    }
    rows.sort_by_key(|(seq, _)| *seq);
    Ok((rows.into_iter().map(|(_, r)| r).collect(), format!("{total} rows of host {host}, by stream: {streams:?}")))
}

fn loss() -> Result<()> {
    let (Ok(pki), Ok(host), Ok(server)) =
        (std::env::var("GUARD_E2E_PKI"), std::env::var("GUARD_E2E_HOST"), std::env::var("GUARD_E2E_SERVER"))
    else {
        return Err(Skip("no server and PKI from `cargo xtask test` (GUARD_E2E_*)".into()).into());
    };
    let flags = |url: &str| crate::server_tests::agent_server_flags(url, &pki, &host);
    let started = Instant::now();
    for f in [LOG.to_string(), format!("{LOG}.shipped"), PIDFILE.to_string()] {
        std::fs::remove_file(f).ok();
    }
    let paths: Vec<String> = (0..1000).map(file).collect();
    write_files(&paths.iter().map(String::as_str).collect::<Vec<_>>())?;
    std::fs::write(
        POLICY,
        format!(
            "default = \"allow\"\n[[rule]]\nname = \"{RULE}\"\naction = \"audit\"\nfile = {{ path = \"/tmp/t/loss/\", access = \"read\" }}\n"
        ),
    )?;
    // Nothing listens on port 1 in the VM: the server is "stopped".
    let down = flags("https://127.0.0.1:1");

    // 1: 500 decisions, then kill -9 (no stop record, no final checkpoint).
    let mut a = start(&down, &reads(0..500), "1")?;
    wait_spool("the first 500 decisions", |r| audited(r).len() == 500)?;
    a.kill().context("SIGKILL")?;
    a.wait()?;
    kill_tree();

    // 2: restarted on the same spool, still no server: 500 more, then a clean stop.
    let mut b = start(&down, &reads(500..1000), "2")?;
    wait_spool("1,000 decisions", |r| audited(r).len() == 1000)?;
    kill_tree();
    let deadline = Instant::now() + WAIT;
    while b.try_wait()?.is_none() {
        if Instant::now() > deadline {
            b.kill().ok();
            bail!("the second agent did not stop after its tree ended: {}", stderr("2"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // 3: restarted pointing at the real server, which gets the whole spool.
    let mut c = start(&flags(&server), "exec sleep 120", "3")?;
    let spool =
        wait_spool("the third start", |r| r.iter().filter(|x| x.object.as_deref() == Some("start")).count() == 3)?;
    let stream = spool[0].chain.as_ref().ok_or_else(|| anyhow!("the spool's first record has no link"))?.stream.clone();
    let last = spool.last().and_then(|r| r.chain.as_ref()).map(|c| c.seq).unwrap_or(0);
    let since = started.elapsed().as_secs() + 120;
    let deadline = Instant::now() + WAIT;
    loop {
        let (got, seen) = server_stream(&pki, &server, &host, since, &stream)?;
        if got.iter().filter_map(|r| r.chain.as_ref()).any(|l| l.seq >= last) {
            break;
        }
        if Instant::now() > deadline {
            c.kill().ok();
            bail!(
                "the server holds {} records of stream {stream}, not seq 1..={last} ({seen}); agent: {}",
                got.len(),
                stderr("3")
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    c.kill().ok();
    c.wait().ok();

    // 4: the shipped position lost (as if the acknowledgements never arrived): the agent sends
    // the whole spool again, and the server must skip what it holds.
    std::fs::remove_file(format!("{LOG}.shipped"))?;
    let mut d = start(&flags(&server), "exec sleep 120", "4")?;
    let spool =
        wait_spool("the fourth start", |r| r.iter().filter(|x| x.object.as_deref() == Some("start")).count() == 4)?;
    let last = spool.last().and_then(|r| r.chain.as_ref()).map(|c| c.seq).unwrap_or(0);
    let deadline = Instant::now() + WAIT;
    loop {
        let pos: Option<serde_json::Value> =
            std::fs::read_to_string(format!("{LOG}.shipped")).ok().and_then(|t| serde_json::from_str(&t).ok());
        if pos.as_ref().and_then(|p| p["seq"].as_u64()).is_some_and(|s| s >= last) {
            break;
        }
        if Instant::now() > deadline {
            d.kill().ok();
            bail!("the resent spool was never acknowledged up to seq {last} ({pos:?}); agent: {}", stderr("4"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    d.kill().ok();
    d.wait().ok();
    let (shipped, _) = server_stream(&pki, &server, &host, started.elapsed().as_secs() + 120, &stream)?;

    // Exactly once, in order: seq 1..=N of the stream, each once, in the server's row order.
    let seqs: Vec<u64> = shipped.iter().filter_map(|r| r.chain.as_ref()).map(|l| l.seq).collect();
    let n = seqs.len() as u64;
    ensure!(n >= last, "{n} records shipped, the spool had {last}");
    let mut count: HashMap<u64, usize> = HashMap::new();
    for s in &seqs {
        *count.entry(*s).or_default() += 1;
    }
    let twice: Vec<u64> = count.iter().filter(|(_, c)| **c > 1).map(|(s, _)| *s).collect();
    ensure!(twice.is_empty(), "records stored more than once: seqs {twice:?}");
    ensure!(seqs == (1..=n).collect::<Vec<_>>(), "the server's rows are not seq 1..={n} in order: {seqs:?}");
    let objects = audited(&shipped);
    ensure!(objects.len() == 1000, "{} of the 1,000 decisions reached the server", objects.len());
    ensure!(objects == paths, "the decisions reached the server out of production order");

    // The local spool is one chain across the kill -9 and both restarts, signed by the host's key.
    let spool = read_records(LOG)?;
    // The kill -9 (1) leaves no stop record, the clean stop (2) one; (3) and (4) are killed too.
    let lifecycle: Vec<&str> = spool
        .iter()
        .filter(|r| r.kind == RecordKind::Agent)
        .filter_map(|r| r.object.as_deref())
        .filter(|o| *o == "start" || *o == "stop")
        .collect();
    ensure!(lifecycle == ["start", "start", "stop", "start", "start"], "the agent's starts and stops: {lifecycle:?}");
    let key = SigningKey::from_pkcs8(&std::fs::read("/tmp/t/audit.key")?).map_err(|e| anyhow!(e))?;
    let keys =
        Keys { server: vec![], hosts: std::collections::BTreeMap::from([(host.clone(), vec![key.public_hex()])]) };
    let labelled: Vec<(String, AuditRecord)> =
        spool.iter().enumerate().map(|(i, r)| (format!("line {}", i + 1), r.clone())).collect();
    let report = verify_stream(&host, &labelled, Some(&keys)).map_err(|e| anyhow!("the local spool: {e}"))?;
    ensure!(report.signed_seq.is_some(), "no checkpoint of the spool verified: {report:?}");
    // And the server's own check of its chain and every stream in it, with the keys it holds.
    let out = Command::new("guardctl")
        .args(["--server", &server, "--pki", &pki, "--as", "alice", "audit", "verify"])
        .output()
        .context("running guardctl audit verify")?;
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "guardctl audit verify: {said}");
    println!(
        "    spool: {} records, stream {stream}, signed up to seq {:?}; server: seq 1..={n} once, in order; {:.1} s",
        report.records,
        report.signed_seq,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
