//! Audit sinks: the server's audit trail delivered to files, syslog receivers and SIEM HTTP
//! collectors, several at once (`[[sink]]` in the config).
//!
//! Each sink is its own task that reads the audit rows after its position (`sink_positions`),
//! in seq order, a batch at a time, delivers the batch, and only then stores the batch's last
//! seq as its new position: delivery is at-least-once, and a receiver that is down or slow
//! only makes its own sink fall behind. Decisions never wait for a sink: the sinks read what
//! the store already committed and nothing writes to them.
//!
//! Waking: a short poll (`poll_interval`, 1s by default), and at once while a full batch says
//! there is more. Not the fanout: it carries request changes only (agents' ReportRecords do
//! not publish there), and rows written by another replica on the same PostgreSQL would not
//! reach it either; a poll of an indexed `seq > $n` costs little and sees all of them.
//!
//! Order: appenders serialize on the chain's head row (store/chain.rs), so a row with a
//! higher seq never commits before one with a lower seq, and reading "after my position"
//! cannot skip a row still in flight.
pub mod config;
mod file;
mod http;
mod syslog;
mod tls;

use crate::store::{AuditFilter, Store};
use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use config::{SinkConfig, SinkKind};
use guard_api::export::{Format, Severity};
use guard_api::AuditRecord;
use guard_proto::v1::AuditEvent;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// One audit row, ready for a sink: the record formatted once, plus what framings need.
#[derive(Debug, Clone)]
pub struct Item {
    pub seq: u64,
    pub host: String,
    /// The record's time (the row's when its JSON does not parse).
    pub time_ms: i64,
    /// The record's kind (`enforcement`, `request`...): syslog's MSGID, HEC's field.
    pub kind: String,
    pub severity: Severity,
    /// The record in the sink's format, one line.
    pub line: String,
    /// The row's JSON (guard's own record), for dead letters.
    pub json: String,
}

impl Item {
    pub fn new(event: &AuditEvent, format: Format) -> Item {
        match AuditRecord::from_json(&event.json) {
            Ok(r) => Item {
                seq: event.seq,
                host: event.host.clone(),
                time_ms: r.time.unix_ms(),
                kind: crate::audit::row_kind(r.kind).to_string(),
                severity: Severity::of(&r),
                line: format.encode_line(&r),
                json: event.json.clone(),
            },
            // A row this build cannot read as a record (written by a newer server): delivered
            // as it is rather than dropped, so the receiver still has it.
            Err(e) => {
                tracing::warn!("audit row {}: not a record this server reads ({e}); sent as stored", event.seq);
                Item {
                    seq: event.seq,
                    host: event.host.clone(),
                    time_ms: event.time_ms,
                    kind: event.kind.clone(),
                    severity: Severity::Informational,
                    line: event.json.clone(),
                    json: event.json.clone(),
                }
            }
        }
    }
}

/// Where one sink's batches go. `deliver` returns Ok once the receiver has the whole batch
/// (or, for records it refused for good, once they are in the dead-letter file); an Err means
/// nothing may be assumed delivered and the same batch is tried again later.
#[async_trait]
pub trait Deliver: Send {
    async fn deliver(&mut self, items: &[Item]) -> anyhow::Result<()>;
}

/// The running sinks; dropping it stops them (a batch in flight is sent again next start).
#[derive(Default)]
pub struct Sinks {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Sinks {
    fn drop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Sinks {
    /// Starts one task per sink. Fails only on settings that cannot work at all (a CA file
    /// that does not parse); a receiver that is down is not an error here.
    pub fn start(store: Arc<dyn Store>, configs: &[SinkConfig]) -> anyhow::Result<Sinks> {
        let mut sinks = Sinks::default();
        for config in configs {
            let deliver: Box<dyn Deliver> = match &config.kind {
                SinkKind::File(f) => Box::new(file::FileSink::new(f.clone())),
                SinkKind::Syslog(s) => Box::new(syslog::SyslogSink::new(s.clone())?),
                SinkKind::Http(h) => Box::new(http::HttpSink::new(&config.name, config.format, h.clone())?),
            };
            sinks.tasks.push(tokio::spawn(run(store.clone(), config.clone(), deliver)));
        }
        Ok(sinks)
    }
}

/// Retries back off from 100ms to 30s, with jitter so that sinks failing together do not
/// retry together.
fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Calls `op` until it succeeds, backing off between tries and logging each failure.
async fn persist<T, F, Fut>(what: &str, name: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut delays = backoff();
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(30));
                tracing::warn!("sink {name}: {what}: {e:#} (again in {delay:?})");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

async fn run(store: Arc<dyn Store>, config: SinkConfig, mut deliver: Box<dyn Deliver>) {
    let name = config.name.as_str();
    let mut position = persist("reading its position", name, || async { Ok(store.sink_position(name).await?) }).await;
    tracing::info!("sink {name}: delivering audit rows after seq {position}");
    loop {
        let filter = AuditFilter { after_seq: position, limit: config.batch, ..Default::default() };
        let rows = persist("reading audit rows", name, || async { Ok(store.audit(&filter).await?) }).await;
        let Some(last) = rows.last().map(|r| r.seq) else {
            tokio::time::sleep(config.poll).await;
            continue;
        };
        let items: Vec<Item> = rows.iter().map(|r| Item::new(r, config.format)).collect();
        // Until the receiver has it: a dead receiver holds this sink here, and nothing else.
        let mut delays = backoff();
        while let Err(e) = deliver.deliver(&items).await {
            let delay = delays.next().unwrap_or(Duration::from_secs(30));
            tracing::warn!("sink {name}: delivering seq {}..={last}: {e:#} (again in {delay:?})", items[0].seq);
            tokio::time::sleep(delay).await;
        }
        // If this fails for good the batch is delivered again after a restart: at-least-once.
        persist("storing its position", name, || async { Ok(store.set_sink_position(name, last).await?) }).await;
        position = last;
        if rows.len() < config.batch as usize {
            tokio::time::sleep(config.poll).await;
        }
    }
}
