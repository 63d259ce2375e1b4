//! guard-loadgen: a benchmarking tool for guard-server, not an agent. It opens N agent
//! connections (each its own TCP+TLS connection, agent certificates reused round-robin),
//! has each submit requests back to back for a while, and measures Submit -> first streamed
//! message in state APPROVED. The requests must match an `[[auto]] decision = "approve"` rule
//! of the server (`--rule`), so the numbers are the server's decision path and its store.
//!
//! Output: a summary line, or with --json one JSON object (what `cargo xtask bench` reads).

use anyhow::{bail, Context, Result};
use clap::Parser;
use guard_proto::v1::agent_service_client::AgentServiceClient;
use guard_proto::v1::{Operation, Process, Record, RegisterRequest, ReportRecordsRequest, State, SubmitRequest};
use guardctl::conn::{self, TlsFiles, TlsMaterial};
use serde_json::json;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{Barrier, Semaphore};
use tonic::transport::Channel;

#[derive(Parser)]
#[command(name = "guard-loadgen", about = "Load generator for guard-server (benchmarking only)")]
struct Args {
    #[arg(long, default_value = "https://127.0.0.1:7443")]
    server: String,
    /// Directory from `guard-server init-pki`: DIR/ca.crt and DIR/agent-HOST.crt/.key.
    #[arg(long, value_name = "DIR")]
    pki: PathBuf,
    /// Agent certificates to use, round-robin over the connections (repeatable).
    /// Default: bench-0 .. bench-(--host-count - 1).
    #[arg(long = "host")]
    hosts: Vec<String>,
    #[arg(long, default_value_t = 8)]
    host_count: usize,
    /// Concurrent agents, each its own connection, each with one request in flight.
    #[arg(long, default_value_t = 10)]
    agents: usize,
    /// How long to submit, after every agent has connected.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    duration: Duration,
    /// Rule name of the submitted operations: the server must auto-approve it.
    #[arg(long, default_value = "bench-auto")]
    rule: String,
    /// Connections opened at once while setting up.
    #[arg(long, default_value_t = 50)]
    connect_parallelism: usize,
    #[arg(long)]
    json: bool,
    /// Audit ingest instead of decisions: each agent reports batches of this many chained
    /// records (ReportRecords) back to back; the rate is then records per second, the
    /// latencies those of one batch.
    #[arg(long, value_name = "RECORDS")]
    ingest_batch: Option<usize>,
}

/// How long one request may wait for its decision before it counts as an error.
const DECISION_WAIT: Duration = Duration::from_secs(10);

/// What one agent measured.
#[derive(Default)]
struct AgentResult {
    latencies_us: Vec<u32>,
    not_approved: u64,
    errors: u64,
    first_error: Option<String>,
}

/// The hash the load generator's agents register for policy "bench" and send with each
/// request, so the server applies its `[[auto]]` rule (it does not for a changed policy).
const BENCH_POLICY_HASH: &str = "sha256:be9c4be9c4be9c4be9c4be9c4be9c4be9c4be9c4be9c4be9c4be9c4be9c4be9c";

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    raise_nofile(args.agents as u64 * 2 + 64);
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(args)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("guard-loadgen: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Each connection is a socket; the default soft limit (often 1024) is too low for 1000.
fn raise_nofile(want: u64) {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= want {
            return;
        }
        let raised = libc::rlimit { rlim_cur: want.max(lim.rlim_cur), rlim_max: want.max(lim.rlim_max) };
        // Raising the hard limit needs privilege; otherwise go as far as the hard limit allows.
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            let soft = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            libc::setrlimit(libc::RLIMIT_NOFILE, &soft);
            if lim.rlim_max < want {
                eprintln!("guard-loadgen: open-file limit {} is below the {want} wanted", lim.rlim_max);
            }
        }
    }
}

async fn run(args: Args) -> Result<()> {
    if args.agents == 0 {
        bail!("--agents must be at least 1");
    }
    let hosts: Vec<String> = if args.hosts.is_empty() {
        (0..args.host_count.max(1)).map(|i| format!("bench-{i}")).collect()
    } else {
        args.hosts.clone()
    };
    let materials: Vec<TlsMaterial> = hosts
        .iter()
        .map(|h| TlsMaterial::load(&TlsFiles::from_pki(&args.pki, "agent-", h, "--pki/--host")))
        .collect::<Result<_>>()?;

    // A nonce keeps hold keys unique across runs against the same database.
    let nonce = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let connect_start = Instant::now();
    let gate = Arc::new(Semaphore::new(args.connect_parallelism.max(1)));
    let start = Arc::new(Barrier::new(args.agents + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(args.agents);
    for i in 0..args.agents {
        let tls = materials[i % materials.len()].clone();
        let (host, ingest_batch) = (hosts[i % hosts.len()].clone(), args.ingest_batch);
        let (server, rule, gate, start, stop) =
            (args.server.clone(), args.rule.clone(), gate.clone(), start.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let connected = async {
                let _permit = gate.acquire().await?;
                let channel = conn::connect(&server, &tls).await?;
                let mut client = AgentServiceClient::new(channel);
                client
                    .register(RegisterRequest {
                        agent_version: "guard-loadgen".into(),
                        kernel: String::new(),
                        policies: vec!["bench".into()],
                        policy_hashes: [("bench".to_string(), BENCH_POLICY_HASH.to_string())].into(),
                        audit_key: String::new(),
                    })
                    .await
                    .map_err(|s| anyhow::anyhow!("Register: {}: {}", s.code(), s.message()))?;
                anyhow::Ok(client)
            }
            .await;
            // Everyone waits at the barrier, also agents that failed, so the run starts.
            start.wait().await;
            match (connected, ingest_batch) {
                (Ok(client), Some(batch)) => ingest_loop(client, &host, i, nonce, batch, &stop).await,
                (Ok(client), None) => agent_loop(client, i, nonce, &rule, &stop).await,
                (Err(e), _) => {
                    AgentResult { errors: 1, first_error: Some(format!("connect: {e:#}")), ..Default::default() }
                }
            }
        }));
    }
    start.wait().await;
    let connect_time = connect_start.elapsed();
    let t0 = Instant::now();
    tokio::time::sleep(args.duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = AgentResult::default();
    let mut failed_agents = 0;
    for t in tasks {
        let r = t.await.context("agent task panicked")?;
        if r.latencies_us.is_empty() && r.errors > 0 {
            failed_agents += 1;
        }
        all.latencies_us.extend(r.latencies_us);
        all.not_approved += r.not_approved;
        all.errors += r.errors;
        if all.first_error.is_none() {
            all.first_error = r.first_error;
        }
    }
    // Requests in flight when the clock stopped finish after it: count the time they took.
    let elapsed = t0.elapsed().as_secs_f64();
    let mut lat = all.latencies_us;
    lat.sort_unstable();
    // In ingest mode each latency is one batch of records.
    let decisions = lat.len() as u64 * args.ingest_batch.unwrap_or(1) as u64;
    let pct = |p: f64| -> u32 {
        if lat.is_empty() {
            return 0;
        }
        let rank = ((p / 100.0) * lat.len() as f64).ceil() as usize;
        lat[rank.clamp(1, lat.len()) - 1]
    };
    let (p50, p99, max) = (pct(50.0), pct(99.0), lat.last().copied().unwrap_or(0));
    let rate = decisions as f64 / elapsed;
    if args.json {
        let v = json!({
            "agents": args.agents, "connections": args.agents - failed_agents, "hosts": hosts.len(),
            "connect_s": connect_time.as_secs_f64(), "duration_s": elapsed, "decisions": decisions,
            "decisions_per_s": rate, "p50_us": p50, "p99_us": p99, "max_us": max,
            "not_approved": all.not_approved, "errors": all.errors, "first_error": all.first_error,
        });
        println!("{v}");
    } else {
        println!(
            "agents {} (connected in {:.2}s, {failed_agents} without any decision)  duration {elapsed:.2}s  decisions {decisions}  \
             {rate:.0}/s  p50 {p50}µs  p99 {p99}µs  max {max}µs  not approved {}  errors {}",
            args.agents,
            connect_time.as_secs_f64(),
            all.not_approved,
            all.errors
        );
        if let Some(e) = &all.first_error {
            println!("first error: {e}");
        }
    }
    if decisions == 0 {
        bail!("no request was approved: {}", all.first_error.unwrap_or_else(|| "(no error seen)".into()));
    }
    Ok(())
}

/// One agent: submit, wait for APPROVED, repeat until told to stop. Errors are counted, not
/// fatal, so that one overloaded moment does not void a run; the first one is kept.
async fn agent_loop(
    mut client: AgentServiceClient<Channel>,
    agent: usize,
    nonce: u128,
    rule: &str,
    stop: &AtomicBool,
) -> AgentResult {
    let mut res = AgentResult::default();
    let mut seq: u64 = 0;
    let pid = 10_000 + agent as u32;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let req = SubmitRequest {
            operation: Some(Operation {
                hook: "bprm_check_security".into(),
                object: "/usr/bin/true".into(),
                rule: rule.to_string(),
                policy: "bench".into(),
                ancestry: vec![Process {
                    pid,
                    ppid: 1,
                    uid: 1000,
                    exe: "/usr/bin/true".into(),
                    argv: vec!["true".into(), seq.to_string()],
                    ..Default::default()
                }],
                cwd: "/".into(),
                user: "bench".into(),
                uid: 1000,
                owner: "bench".into(),
                owner_uid: 1000,
                owner_source: "loginuid".into(),
                policy_hash: BENCH_POLICY_HASH.into(),
                tree_id: format!("{pid}-{nonce}"),
                ..Default::default()
            }),
            timeout_seconds: 30,
            hold_key: format!("loadgen-{nonce}-{agent}-{seq}"),
        };
        let t0 = Instant::now();
        // A request the server does not decide at once (no auto rule for --rule) must not hang
        // the run.
        let outcome = tokio::time::timeout(DECISION_WAIT, submit_until_approved(&mut client, req))
            .await
            .unwrap_or_else(|_| Err(format!("no decision within {DECISION_WAIT:?} (is --rule auto-approved?)")));
        match outcome {
            Ok(true) => res.latencies_us.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32),
            Ok(false) => res.not_approved += 1,
            Err(e) => {
                res.errors += 1;
                res.first_error.get_or_insert(e);
                // Do not spin on a broken connection.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    res
}

/// One agent reporting its own stream of audit records, `batch` at a time, until told to stop.
/// Each record is sealed here as an agent's spool would (that cost is the load generator's).
async fn ingest_loop(
    mut client: AgentServiceClient<Channel>,
    host: &str,
    agent: usize,
    nonce: u128,
    batch: usize,
    stop: &AtomicBool,
) -> AgentResult {
    let mut res = AgentResult::default();
    let stream = format!("bench-{nonce}-{agent}");
    let (mut seq, mut prev) = (0u64, String::new());
    let mut template = guard_api::AuditRecord::new(guard_api::RecordKind::Enforcement, host);
    template.decision = Some(guard_api::Decision::Allow);
    template.action = Some(guard_api::Action::Audit);
    template.hook = Some(guard_api::Hook::FileOpen);
    template.rule = Some("bench-audit".into());
    template.argv = vec!["cat".into(), "/etc/hosts".into()];
    while !stop.load(Ordering::Relaxed) {
        let records: Vec<Record> = (0..batch)
            .map(|_| {
                seq += 1;
                let mut r = template.clone();
                r.object = Some(format!("/srv/data/{seq}"));
                guard_api::chain::seal(&mut r, &stream, seq, &prev);
                prev = r.chain.as_ref().map(|c| c.hash.clone()).unwrap_or_default();
                Record { json: r.to_json() }
            })
            .collect();
        let t0 = Instant::now();
        match client.report_records(ReportRecordsRequest { records }).await {
            Ok(reply) => match reply.into_inner().refused {
                None => res.latencies_us.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32),
                Some(r) => {
                    res.errors += 1;
                    res.first_error.get_or_insert(format!("refused seq {}: {}", r.seq, r.message));
                    return res;
                }
            },
            Err(s) => {
                res.errors += 1;
                res.first_error.get_or_insert(format!("ReportRecords: {:?}: {}", s.code(), s.message()));
                return res;
            }
        }
    }
    res
}

/// Ok(true) when a streamed message said APPROVED, Ok(false) when the request ended otherwise.
async fn submit_until_approved(client: &mut AgentServiceClient<Channel>, req: SubmitRequest) -> Result<bool, String> {
    let fmt = |s: tonic::Status| format!("Submit: {:?}: {}", s.code(), s.message());
    let mut stream = client.submit(req).await.map_err(fmt)?.into_inner();
    while let Some(msg) = stream.message().await.map_err(fmt)? {
        match State::try_from(msg.state) {
            Ok(State::Approved) => return Ok(true),
            Ok(State::Pending) => continue,
            _ => return Ok(false),
        }
    }
    Err("Submit: the stream ended without a decision".into())
}
