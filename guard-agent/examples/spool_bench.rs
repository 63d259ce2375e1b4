//! The spool's append cost (run by `cargo xtask bench`; reported, never asserted): for batches
//! of 1, 10 and 100 records, each record sealed into the chain and each batch written and
//! `fdatasync`ed, as the agent does per ring-buffer poll. Prints records/s and the p50/p99/max
//! latency of one batch (seal + write + fdatasync).
//!
//! `spool_bench DIR [RECORDS]`: DIR must be on the disk the spool lives on (not a tmpfs, where
//! fdatasync costs nothing).

use guard_agent::audit::log::{AuditLog, Options};
use guard_api::{chain::keys::SigningKey, Action, AuditRecord, Decision, Hook, Reason, RecordKind};
use std::time::{Duration, Instant};

fn record(i: u64) -> AuditRecord {
    let mut r = AuditRecord::new(RecordKind::Enforcement, "bench-host");
    r.decision = Some(Decision::Allow);
    r.reason = Some(Reason::Rule);
    r.action = Some(Action::Audit);
    r.hook = Some(Hook::FileOpen);
    r.rule = Some("audit-src".into());
    r.policy = Some("coding-agent".into());
    r.object = Some(format!("/home/dev/project/src/module_{i}.rs"));
    r.access = Some("read".into());
    (r.pid, r.tid, r.ppid, r.uid) = (Some(4242), Some(4242), Some(4000), Some(1000));
    r.exe = Some("/usr/bin/cat".into());
    r.argv = vec!["cat".into(), format!("src/module_{i}.rs")];
    r.tree_id = Some("4000-1796002226007".into());
    r
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().expect("usage: spool_bench DIR [RECORDS]"));
    let total: u64 = args.next().map(|n| n.parse().expect("RECORDS is a number")).unwrap_or(20_000);
    std::fs::create_dir_all(&dir).expect("bench dir");
    println!("spool append ({}; {} build)", dir.display(), if cfg!(debug_assertions) { "debug" } else { "release" });
    println!("{:>6} {:>9} {:>11} {:>10} {:>10} {:>10}", "batch", "records", "records/s", "p50 ms", "p99 ms", "max ms");
    for batch in [1u64, 10, 100] {
        let path = dir.join(format!("spool-{batch}.jsonl"));
        std::fs::remove_file(&path).ok();
        let (key, _) = SigningKey::generate().expect("key");
        let mut log = AuditLog::open(&path, Options::new("bench-host", Some(key))).expect("open");
        // Fewer records for one-record batches: each costs a full fdatasync.
        let n = if batch == 1 { total / 10 } else { total };
        let mut lat = Vec::with_capacity((n / batch) as usize);
        let start = Instant::now();
        let mut i = 0;
        while i < n {
            let t = Instant::now();
            for _ in 0..batch {
                log.write(&record(i));
                i += 1;
            }
            log.flush();
            lat.push(t.elapsed());
        }
        let secs = start.elapsed().as_secs_f64();
        lat.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{batch:>6} {n:>9} {:>11.0} {:>10.3} {:>10.3} {:>10.3}",
            n as f64 / secs,
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99)),
            ms(*lat.last().expect("batches"))
        );
        drop(log);
        std::fs::remove_file(&path).ok();
    }
}
