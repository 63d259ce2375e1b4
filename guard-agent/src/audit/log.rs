//! The local audit log, which is also the spool guard-server is fed from: one
//! `guard_api::AuditRecord` per line (JSONL), each sealed into this host's hash chain
//! (`guard_api::chain::seal`: stream, seq, previous hash, own hash) before it is written.
//!
//! **fsync policy.** Records are sealed and buffered as they come, then written and
//! `fdatasync`ed once per batch: one batch per ring-buffer poll, per hold outcome, per lost-event
//! report, and at least once a second. A record counts as written when its batch is synced;
//! the shipper ([`super::forward`]) only reads the synced length, so nothing is shipped that a
//! crash could take back. A crash loses at most the batch being built (records of events the
//! kernel already decided); the chain shows no gap because those records were never sealed to
//! disk.
//!
//! **Stream.** A new spool takes a random stream id (16 random bytes, hex); an existing one is
//! read back at start ([`super::recover`]) and continues from its last record. Damage found at
//! start is moved aside and recorded in the chain (`object: "spool_damaged"`).
//!
//! **Checkpoints.** Every [`CHECKPOINT_EVERY`] records, or [`CHECKPOINT_INTERVAL`] after the last
//! one when records were written since, and at a clean stop, a record of kind `checkpoint`
//! signs the head of the chain (the record before it) with the host's audit key.
//!
//! **Backlog bound.** With a server, the bytes written but not yet acknowledged are bounded by
//! `audit_backlog_max_bytes`. Past it: an error log, one `backlog_full` record, a problem in
//! `status --check`, and new records are counted instead of written; when the server has caught
//! up (to 90% of the bound), one `backlog_dropped` record with `lost: N`.

use super::{position::Position, recover};
use anyhow::{Context, Result};
use guard_api::{
    chain::{keys::SigningKey, seal, stream_chain},
    AuditRecord, RecordKind, Timestamp,
};
use std::{
    fs::{File, OpenOptions},
    io::{Read, Write},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

/// A checkpoint after this many records.
pub const CHECKPOINT_EVERY: u64 = 1000;
/// A checkpoint this long after the last, when records were written since.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(60);
/// The default bound of the backlog not yet acknowledged by the server.
pub const BACKLOG_MAX_BYTES: u64 = 1 << 30;

/// How the spool is kept.
pub struct Options {
    /// The host name records carry (and the chain id's first half).
    pub host: String,
    /// The key checkpoints are signed with; None writes no checkpoints (tests only).
    pub key: Option<SigningKey>,
    pub checkpoint_every: u64,
    pub checkpoint_interval: Duration,
}

impl Options {
    pub fn new(host: impl Into<String>, key: Option<SigningKey>) -> Self {
        Options { host: host.into(), key, checkpoint_every: CHECKPOINT_EVERY, checkpoint_interval: CHECKPOINT_INTERVAL }
    }
}

/// `<dir of the log>/audit.key`: the host's audit key lives beside its spool.
pub fn key_path(log: &Path) -> PathBuf {
    log.parent().unwrap_or(Path::new(".")).join("audit.key")
}

/// Opens the spool at `log` for `host`, with the host's audit key ([`key_path`], created on
/// first use).
pub fn open_spool(log: &Path, host: &str) -> Result<AuditLog> {
    let key_file = key_path(log);
    let key = SigningKey::load_or_create(&key_file).map_err(|e| {
        anyhow::anyhow!("the host's audit key {}: {e} (it signs the spool's checkpoints)", key_file.display())
    })?;
    AuditLog::open(log, Options::new(host, Some(key)))
}

/// What the spool and its shipper share.
#[derive(Debug, Default)]
pub struct Shared {
    /// Bytes of the spool written and synced: the shipper reads no further.
    pub synced: AtomicU64,
    /// Bytes acknowledged by the server (the shipped position's offset).
    pub shipped: AtomicU64,
    /// Woken after each synced batch.
    pub wake: tokio::sync::Notify,
    /// The record the server refuses, while it does: "seq N: message".
    pub refused: Mutex<Option<String>>,
}

/// The chain's last sealed record.
struct Head {
    stream: String,
    seq: u64,
    hash: String,
}

pub struct AuditLog {
    path: PathBuf,
    file: File,
    host: String,
    head: Head,
    /// Bytes in the file (all synced).
    len: u64,
    /// Sealed records not yet written.
    pending: Vec<u8>,
    written: u64,
    key: Option<SigningKey>,
    checkpoint_every: u64,
    checkpoint_interval: Duration,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    shared: Arc<Shared>,
    /// Where shipping starts (from `<log>.shipped`, checked against the file).
    ship_from: Position,
    /// The backlog bound, once a shipper is attached.
    backlog_max: Option<u64>,
    /// Records not written because the backlog is full, since it filled.
    dropped: Option<u64>,
}

impl AuditLog {
    /// Opens the spool at `path`, recovering it first: damage is moved aside and recorded.
    pub fn open(path: &Path, opts: Options) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let stored = Position::load(path).unwrap_or_else(|e| {
            tracing::error!("{e:#}: shipping starts over from the spool's first record (the server skips what it has)");
            None
        });
        let scan = recover::scan(path, stored.as_ref().map(|p| p.offset))?;
        let damaged = match &scan.damage {
            Some(d) => {
                let to = recover::set_aside(path, d, Timestamp::now().unix_ms())?;
                tracing::error!(
                    "the audit spool {} is damaged from line {} on ({}): {} bytes moved to {}; {} good records kept",
                    path.display(),
                    d.line,
                    d.why,
                    d.bytes,
                    to.display(),
                    scan.records
                );
                Some((d.clone(), to))
            }
            None => None,
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening the audit spool {}", path.display()))?;
        let head = match scan.head {
            Some(h) => Head { stream: h.stream, seq: h.seq, hash: h.hash },
            None => Head { stream: new_stream()?, seq: 0, hash: String::new() },
        };
        let ship_from = match stored {
            Some(p) if p.stream == head.stream && scan.seq_ending_at == Some(p.seq) => p,
            Some(p) => {
                tracing::warn!(
                    "the shipped position (stream {}, seq {}, byte {}) does not match the spool {} (stream {}, {} \
                     bytes): shipping starts over from its first record (the server skips what it has)",
                    p.stream,
                    p.seq,
                    p.offset,
                    path.display(),
                    head.stream,
                    scan.good_len
                );
                Position { stream: head.stream.clone(), seq: 0, offset: 0 }
            }
            None => Position { stream: head.stream.clone(), seq: 0, offset: 0 },
        };
        let shared = Arc::new(Shared::default());
        shared.synced.store(scan.good_len, Ordering::Relaxed);
        shared.shipped.store(ship_from.offset, Ordering::Relaxed);
        let mut log = AuditLog {
            path: path.to_path_buf(),
            file,
            host: opts.host,
            head,
            len: scan.good_len,
            pending: Vec::with_capacity(64 * 1024),
            written: 0,
            key: opts.key,
            checkpoint_every: opts.checkpoint_every.max(1),
            checkpoint_interval: opts.checkpoint_interval,
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            shared,
            ship_from,
            backlog_max: None,
            dropped: None,
        };
        if let Some((d, to)) = damaged {
            let r = super::record::spool_damaged(&log.host, d.line, d.bytes, &d.why, &to);
            log.append(r);
            log.flush();
        }
        Ok(log)
    }

    /// Appends `r` to the chain (written at the next [`flush`](Self::flush)), unless the
    /// backlog is full: then it is counted.
    pub fn write(&mut self, r: &AuditRecord) {
        if self.backlog_blocks() {
            return;
        }
        self.append(r.clone());
        self.since_checkpoint += 1;
        if self.since_checkpoint >= self.checkpoint_every {
            self.checkpoint();
        }
    }

    /// Writes and syncs the records sealed since the last flush (one batch), and takes a
    /// checkpoint first when one is due by time. A failed write keeps the batch for the next
    /// flush and says so: the disk is full or gone, enforcement goes on.
    pub fn flush(&mut self) {
        if self.since_checkpoint > 0 && self.last_checkpoint.elapsed() >= self.checkpoint_interval {
            self.checkpoint();
        }
        self.room_check();
        if self.pending.is_empty() {
            return;
        }
        match self.file.write_all(&self.pending).and_then(|()| self.file.sync_data()) {
            Ok(()) => {
                self.len += self.pending.len() as u64;
                self.pending.clear();
                self.shared.synced.store(self.len, Ordering::Release);
                self.shared.wake.notify_one();
            }
            Err(e) => {
                tracing::error!(
                    "writing the audit spool {} failed: {e}; {} bytes of records kept in memory and retried at the \
                     next batch",
                    self.path.display(),
                    self.pending.len()
                );
                // A half-written batch would read as damage at the next start: cut it off.
                if let Err(e) = self.file.set_len(self.len) {
                    tracing::error!("cutting a partial write off {}: {e}", self.path.display());
                }
            }
        }
    }

    /// A clean stop: what the full backlog kept out, `stop`, a checkpoint, all synced.
    pub fn close(&mut self, stop: AuditRecord) {
        if let Some(n) = self.dropped.take() {
            let r = super::record::backlog_dropped(&self.host, n);
            self.append(r);
        }
        self.append(stop);
        self.since_checkpoint += 1;
        self.checkpoint();
        self.flush();
    }

    /// Records written by this process (sealed into the chain).
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The public half of the audit key (hex), for registration.
    pub fn audit_key(&self) -> Option<String> {
        self.key.as_ref().map(SigningKey::public_hex)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn stream(&self) -> &str {
        &self.head.stream
    }

    /// What the shipper needs: where to start, and the state shared with the spool. Bounds the
    /// backlog from now on.
    pub fn ship(&mut self, backlog_max: u64) -> (Position, Arc<Shared>) {
        self.backlog_max = Some(backlog_max);
        (self.ship_from.clone(), self.shared.clone())
    }

    fn unshipped(&self) -> u64 {
        (self.len + self.pending.len() as u64).saturating_sub(self.shared.shipped.load(Ordering::Acquire))
    }

    /// For `status`: the chain's head, the backlog, what the server refuses.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "path": self.path,
            "stream": self.head.stream,
            "seq": self.head.seq,
            "bytes": self.len,
            "unshipped_bytes": self.backlog_max.map(|_| self.unshipped()),
            "backlog_max_bytes": self.backlog_max,
            "backlog_full": self.dropped.is_some(),
            "records_not_written": self.dropped,
            "refused": *self.shared.refused.lock().expect("refused lock"),
        })
    }

    /// What `status --check` must fail on: a full backlog, a record the server refuses.
    pub fn problems(&self) -> Vec<String> {
        let mut out = vec![];
        if let (Some(n), Some(max)) = (self.dropped, self.backlog_max) {
            out.push(format!(
                "the audit backlog is full: {} bytes not acknowledged by guard-server (audit_backlog_max_bytes = \
                 {max}); {n} records not written",
                self.unshipped()
            ));
        }
        if let Some(refused) = &*self.shared.refused.lock().expect("refused lock") {
            out.push(format!("guard-server refuses audit record {refused}; the spool keeps it and retries"));
        }
        out
    }

    /// Whether the backlog keeps `r` out (counted); says so loudly when it fills.
    fn backlog_blocks(&mut self) -> bool {
        self.room_check();
        let Some(max) = self.backlog_max else { return false };
        match self.dropped {
            Some(n) => {
                self.dropped = Some(n + 1);
                true
            }
            None if self.unshipped() > max => {
                let unshipped = self.unshipped();
                tracing::error!(
                    "the audit backlog is full: {unshipped} bytes not acknowledged by guard-server \
                     (audit_backlog_max_bytes = {max}); new records are counted, not written, until it catches up"
                );
                let r = super::record::backlog_full(&self.host, unshipped, max);
                self.append(r);
                self.dropped = Some(1);
                true
            }
            None => false,
        }
    }

    /// After a full backlog: once the server has caught up to 90% of the bound (so a backlog
    /// at the edge does not flap), one record of how many records were not written.
    fn room_check(&mut self) {
        let (Some(n), Some(max)) = (self.dropped, self.backlog_max) else { return };
        if self.unshipped() > max / 10 * 9 {
            return;
        }
        tracing::warn!("the audit backlog has room again; {n} records were not written while it was full");
        let r = super::record::backlog_dropped(&self.host, n);
        self.append(r);
        self.dropped = None;
    }

    /// Seals `r` as the chain's next record and buffers its line.
    fn append(&mut self, mut r: AuditRecord) {
        let seq = self.head.seq + 1;
        seal(&mut r, &self.head.stream, seq, &self.head.hash);
        self.head.seq = seq;
        self.head.hash = r.chain.as_ref().map(|c| c.hash.clone()).unwrap_or_default();
        self.pending.extend_from_slice(r.to_json().as_bytes());
        self.pending.push(b'\n');
        self.written += 1;
    }

    /// A checkpoint record signing the chain's head (the record before it).
    fn checkpoint(&mut self) {
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        let Some(key) = &self.key else { return };
        if self.head.seq == 0 {
            return;
        }
        let mut r = AuditRecord::new(RecordKind::Checkpoint, self.host.clone());
        r.checkpoint =
            Some(key.sign_head(&stream_chain(&self.host, &self.head.stream), self.head.seq, &self.head.hash));
        self.append(r);
    }
}

/// A new stream id: 16 random bytes, hex.
fn new_stream() -> Result<String> {
    let mut bytes = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading 16 random bytes for a new audit stream id from /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests;
