//! The audit log: one JSON object per line, appended and flushed per batch of events.

use crate::events::Record;
use anyhow::{Context, Result};
use std::{
    fs::{File, OpenOptions},
    io::{BufWriter, Write},
    path::Path,
};

pub struct AuditLog {
    out: BufWriter<File>,
    written: u64,
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
        Ok(Self { out: BufWriter::new(file), written: 0 })
    }

    pub fn write(&mut self, r: &Record) {
        // A record that cannot be serialised would be a bug; a failed write is reported loudly
        // (the disk is full or gone) but must not stop enforcement.
        match serde_json::to_string(r) {
            Ok(line) => {
                if let Err(e) = writeln!(self.out, "{line}") {
                    tracing::error!("audit log write failed: {e}");
                }
                self.written += 1;
            }
            Err(e) => tracing::error!("cannot serialise an audit record: {e}"),
        }
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
