//! `guard-server bench-sinks` (hidden, `testing` builds only; `cargo xtask bench` runs it):
//! how many audit rows a second one sink delivers, per format, from a SQLite trail of
//! realistic records: reading after its position, formatting, writing (a file sink with an
//! fsync per batch, and a syslog sink over TCP to a loopback receiver that reads and discards),
//! storing the position. Reported, not asserted.
use crate::fanout::Fanout;
use crate::sinks::config::{FileConfig, SinkConfig, SinkKind, SyslogConfig};
use crate::sinks::Sinks;
use crate::store;
use anyhow::{Context, Result};
use guard_api::export::Format;
use guard_api::{Action, AuditRecord, Decision, Hook, Reason, RecordKind, StatedReason, Timestamp};
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

const FORMATS: &[&str] = &["ocsf", "ocsf-1.5", "ecs", "cef", "jsonl"];
const BATCH: u32 = 1000;
/// A sink that has not delivered everything by then is reported as stuck.
const LIMIT: Duration = Duration::from_secs(600);

/// An enforcement record with the fields an agent's usually has.
fn record(i: usize) -> AuditRecord {
    let mut r = AuditRecord::at(Timestamp::now(), RecordKind::Enforcement, "bench-0");
    r.decision = Some(if i.is_multiple_of(3) { Decision::Deny } else { Decision::Allow });
    r.reason = Some(Reason::Rule);
    r.action = Some(Action::Audit);
    r.rule = Some("project-writes".into());
    r.policy = Some("coding-agent".into());
    r.hook = Some(Hook::FileOpen);
    r.object = Some(format!("/home/dev/project/src/module_{i}.rs"));
    r.access = Some("write".into());
    r.pid = Some(4242);
    r.tid = Some(4243);
    r.ppid = Some(4200);
    r.uid = Some(1000);
    r.user = Some("dev".into());
    r.exe = Some("/usr/bin/python3".into());
    r.argv = vec!["python3".into(), "tool.py".into(), "--write".into(), format!("src/module_{i}.rs")];
    r.tree_id = Some("4100-77".into());
    r.stated_reason = Some(StatedReason {
        tool: "edit_file".into(),
        call_id: format!("call-{i}"),
        reason: "apply the refactoring the user asked for".into(),
        session: "s-1".into(),
    });
    r
}

pub async fn run(dir: &Path, records: usize) -> Result<String> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let db = dir.join("sinks.db");
    let _ = std::fs::remove_file(&db);
    let url = format!("sqlite://{}", db.display());
    let store = store::open(&url, Fanout::default()).await?;
    // Sealed into one stream, as an agent's spool would send them.
    let mut prev = String::new();
    let all: Vec<AuditRecord> = (0..records)
        .map(|i| {
            let mut r = record(i);
            guard_api::chain::seal(&mut r, "bench", i as u64 + 1, &prev);
            prev = r.chain.as_ref().map(|c| c.hash.clone()).unwrap_or_default();
            r
        })
        .collect();
    for chunk in all.chunks(1000) {
        let done = store.append_records("bench-0", chunk.to_vec(), Timestamp::now().unix_ms()).await?;
        if let Some(r) = done.refused {
            anyhow::bail!("the store refused bench record {}: {}", r.seq, r.message);
        }
    }
    let last = records as u64;

    // The syslog receiver: accepts, reads, discards.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?.to_string();
    let discard = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 16];
                while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });

    let mut out = String::new();
    let _ = writeln!(out, "\naudit sinks: {records} rows from SQLite, batches of {BATCH}, one sink at a time");
    let _ = writeln!(out, "{:<9} {:>14} {:>16} {:>12}", "format", "file rows/s", "syslog rows/s", "bytes/row");
    for name in FORMATS {
        let format = Format::parse(name).map_err(|e| anyhow::anyhow!("{e}"))?;
        let path = dir.join(format!("out-{name}.log"));
        let file = SinkKind::File(FileConfig { path: path.clone(), max_bytes: u64::MAX, keep: 1 });
        let file_rate = measure(&store, &format!("file-{name}"), format, file, last).await?;
        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) / records.max(1) as u64;
        let _ = std::fs::remove_file(&path);
        let syslog = SinkKind::Syslog(SyslogConfig { address: address.clone(), tls: None, app_name: "guard".into() });
        let syslog_rate = measure(&store, &format!("syslog-{name}"), format, syslog, last).await?;
        let _ = writeln!(out, "{name:<9} {file_rate:>14.0} {syslog_rate:>16.0} {bytes:>12}");
    }
    discard.abort();
    drop(store);
    let _ = std::fs::remove_file(&db);
    Ok(out)
}

/// Rows a second one sink delivered, from its start to its position reaching `last`.
async fn measure(
    store: &std::sync::Arc<dyn store::Store>,
    name: &str,
    format: Format,
    kind: SinkKind,
    last: u64,
) -> Result<f64> {
    let config = SinkConfig { name: name.into(), format, batch: BATCH, poll: Duration::from_millis(5), kind };
    let start = Instant::now();
    let sinks = Sinks::start(store.clone(), &[config])?;
    while store.sink_position(name).await? < last {
        anyhow::ensure!(start.elapsed() < LIMIT, "sink {name} delivered less than {last} rows in {LIMIT:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = start.elapsed();
    drop(sinks);
    Ok(last as f64 / elapsed.as_secs_f64())
}
