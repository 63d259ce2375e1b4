//! The local audit log: one `guard_api::AuditRecord` per line (JSONL), appended and flushed
//! per batch of events, and a copy of each line handed to the forwarder when a server is set.

use anyhow::{Context, Result};
use guard_api::AuditRecord;
use std::{
    fs::{File, OpenOptions},
    io::{BufWriter, Write},
    path::Path,
};

pub struct AuditLog {
    out: BufWriter<File>,
    written: u64,
    /// A copy of each line for the central audit trail, when a server is configured.
    forward: Option<tokio::sync::mpsc::Sender<String>>,
    forward_dropped: u64,
}

impl AuditLog {
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening the audit log {}", path.display()))?;
        Ok(Self { out: BufWriter::new(file), written: 0, forward: None, forward_dropped: 0 })
    }

    pub fn write(&mut self, r: &AuditRecord) {
        // A failed write is reported loudly (the disk is full or gone) but must not stop
        // enforcement.
        let line = r.to_json();
        if let Err(e) = writeln!(self.out, "{line}") {
            tracing::error!("audit log write failed: {e}");
        }
        // Never blocks enforcement: a full backlog (server away for long) loses only the
        // central copy, and says so; this file keeps every record.
        if let Some(tx) = &self.forward {
            if tx.try_send(line).is_err() {
                self.forward_dropped += 1;
                if self.forward_dropped.is_power_of_two() {
                    tracing::warn!("{} records not sent to guard-server (backlog full)", self.forward_dropped);
                }
            }
        }
        self.written += 1;
    }

    pub fn forward_to(&mut self, tx: tokio::sync::mpsc::Sender<String>) {
        self.forward = Some(tx);
    }

    pub fn flush(&mut self) {
        if let Err(e) = self.out.flush() {
            tracing::error!("audit log flush failed: {e}");
        }
    }

    pub fn written(&self) -> u64 {
        self.written
    }
}
