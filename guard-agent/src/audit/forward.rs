//! The central copy of the audit trail: records the local log wrote, reported to guard-server
//! in batches (`ReportRecords`, each record the same `AuditRecord` JSON as the local line).

use crate::hold::remote::backoff;
use guard_proto::v1::{agent_service_client::AgentServiceClient, Record, ReportRecordsRequest};
use std::time::Duration;
use tokio::{sync::mpsc, time::sleep};
use tonic::transport::Channel;

/// Records waiting to be reported while the server is away; beyond this the newest are
/// dropped from the central copy (the local audit log keeps every one).
pub const RECORD_BACKLOG: usize = 10_000;
/// Records per report.
const BATCH: usize = 500;

/// The channel the audit log writes to, and its receiving end for [`report`].
pub fn channel() -> (mpsc::Sender<String>, mpsc::Receiver<String>) {
    mpsc::channel(RECORD_BACKLOG)
}

/// Sends records in batches; keeps a failed batch and retries it with backoff. Ends when the
/// audit log (the sender) is gone.
pub async fn report(client: AgentServiceClient<Channel>, mut rx: mpsc::Receiver<String>) {
    let mut batch: Vec<Record> = vec![];
    let mut delays = backoff();
    loop {
        if batch.is_empty() {
            match rx.recv().await {
                Some(json) => batch.push(Record { json }),
                None => return,
            }
        }
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(json) => batch.push(Record { json }),
                Err(_) => break,
            }
        }
        match client.clone().report_records(ReportRecordsRequest { records: batch.clone() }).await {
            Ok(_) => {
                batch.clear();
                delays = backoff();
            }
            Err(e) => {
                tracing::debug!("reporting {} records failed: {}: {}", batch.len(), e.code(), e.message());
                sleep(delays.next().unwrap_or(Duration::from_secs(5))).await;
            }
        }
    }
}
