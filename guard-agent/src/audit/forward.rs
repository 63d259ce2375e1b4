//! Shipping the spool to guard-server, at least once. The shipper reads the spool from the
//! shipped position (`<log>.shipped`), never past what the spool has synced, and sends up to
//! [`BATCH`] records in chain order with `ReportRecords` (each record exactly its spool line, so
//! its hash holds). The server stores each once, keyed by (host, stream, seq), and answers with
//! the last seq it holds for the stream: the position moves there, and is persisted (aside,
//! then renamed). A record sent but not acknowledged (the answer lost, the agent killed) is
//! sent again; the server skips it.
//!
//! A record the server refuses is logged loudly with the server's message and shown by
//! `status --check`; the shipper stays on it, retrying with backoff, until the server takes it
//! (fixed there) or an operator drops it. Nothing after it is skipped: the chain has no gaps.

use super::{log::Shared, position::Position};
use crate::hold::remote::{backoff, RemoteDecisions};
use anyhow::{Context, Result};
use guard_proto::v1::{Record, ReportRecordsRequest, ReportRecordsResponse};
use std::{
    fs::File,
    io::{Read, Seek, SeekFrom},
    path::{Path, PathBuf},
    sync::{atomic::Ordering, Arc},
    time::Duration,
};
use tokio::time::sleep;

/// Records per report.
pub const BATCH: usize = 500;
/// Bytes of records per report, under guard-server's 256 KiB message limit with room for the
/// message's framing (a record with a long argv is ~10 KiB). At least one record is sent.
pub const BATCH_BYTES: usize = 192 * 1024;
/// The longest wait for the spool's next batch when no wake-up comes.
const IDLE: Duration = Duration::from_secs(1);

/// One spool line in a batch: its seq, where it ends, its JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub seq: u64,
    pub end: u64,
    pub json: String,
}

/// The records after `pos`, up to `synced` bytes of the spool: at most [`BATCH`] records and
/// about [`BATCH_BYTES`]. The spool's chain has no gaps, so the seqs follow `pos.seq`.
pub fn read_batch(log: &Path, pos: &Position, synced: u64) -> Result<Vec<Line>> {
    let available = synced.saturating_sub(pos.offset);
    let mut want = available.min(2 * BATCH_BYTES as u64);
    let mut f = File::open(log).with_context(|| format!("opening the audit spool {}", log.display()))?;
    let buf = loop {
        f.seek(SeekFrom::Start(pos.offset)).with_context(|| format!("reading {}", log.display()))?;
        let mut buf = Vec::with_capacity(want as usize);
        (&mut f).take(want).read_to_end(&mut buf).with_context(|| format!("reading {}", log.display()))?;
        // A record longer than the window: read on until its end.
        if buf.contains(&b'\n') || want >= available {
            break buf;
        }
        want = (want * 2).min(available);
    };
    let mut out = vec![];
    let (mut start, mut bytes) = (0usize, 0usize);
    while let Some(n) = buf[start..].iter().position(|b| *b == b'\n') {
        if out.len() == BATCH || (!out.is_empty() && bytes + n > BATCH_BYTES) {
            break;
        }
        let json = String::from_utf8(buf[start..start + n].to_vec())
            .with_context(|| format!("{} at byte {}: not UTF-8", log.display(), pos.offset + start as u64))?;
        start += n + 1;
        bytes += n;
        out.push(Line { seq: pos.seq + out.len() as u64 + 1, end: pos.offset + start as u64, json });
    }
    Ok(out)
}

/// Moves `pos` over the records of `batch` the server holds (`stored`: its last seq of the
/// stream). Whether it moved.
pub fn advance(pos: &mut Position, batch: &[Line], stored: Option<u64>) -> bool {
    let Some(stored) = stored else { return false };
    let before = pos.seq;
    for l in batch.iter().take_while(|l| l.seq <= stored) {
        pos.seq = l.seq;
        pos.offset = l.end;
    }
    pos.seq != before
}

/// What one answer means for the shipper.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The batch is stored (or the position moved): go on at once.
    Moved,
    /// The server refuses the record at the position: "seq N: message".
    Refused(String),
    /// Nothing moved and nothing refused: try again later.
    Stuck,
}

/// Applies the server's answer to `pos`.
pub fn apply(pos: &mut Position, batch: &[Line], resp: &ReportRecordsResponse) -> Outcome {
    let mut stored = resp.stored.iter().find(|p| p.stream == pos.stream).map(|p| p.seq);
    // A server older than stored positions answers only how many it accepted: all of them is
    // its acknowledgement of the batch.
    if resp.stored.is_empty() && resp.refused.is_none() && resp.accepted as usize == batch.len() {
        stored = batch.last().map(|l| l.seq);
    }
    let moved = advance(pos, batch, stored);
    match resp.refused.as_ref().filter(|r| r.stream == pos.stream) {
        Some(r) => Outcome::Refused(format!("seq {} of stream {}: {}", r.seq, r.stream, r.message)),
        None if moved => Outcome::Moved,
        None => Outcome::Stuck,
    }
}

fn wait(delays: &mut impl Iterator<Item = Duration>) -> Duration {
    delays.next().unwrap_or(Duration::from_secs(30))
}

/// Ships the spool at `log` from `from`, for as long as the agent runs. Starts once the agent
/// is registered: the server checks checkpoints against the audit key registration gives it.
pub async fn ship(server: Arc<RemoteDecisions>, log: PathBuf, from: Position, shared: Arc<Shared>) {
    while !server.is_registered() {
        sleep(Duration::from_millis(100)).await;
    }
    let client = server.client();
    let mut pos = from;
    let mut delays = backoff();
    loop {
        let synced = shared.synced.load(Ordering::Acquire);
        if pos.offset >= synced {
            tokio::select! {
                _ = shared.wake.notified() => {}
                _ = sleep(IDLE) => {}
            }
            continue;
        }
        let batch = match read_batch(&log, &pos, synced) {
            Ok(b) if !b.is_empty() => b,
            Ok(_) => {
                tracing::error!(
                    "the audit spool {} has no complete record at byte {} (synced to {synced}): shipping waits",
                    log.display(),
                    pos.offset
                );
                sleep(wait(&mut delays)).await;
                continue;
            }
            Err(e) => {
                tracing::error!("{e:#}: shipping waits");
                sleep(wait(&mut delays)).await;
                continue;
            }
        };
        let records = batch.iter().map(|l| Record { json: l.json.clone() }).collect();
        let resp = match client.clone().report_records(ReportRecordsRequest { records }).await {
            Ok(r) => r.into_inner(),
            Err(e) => {
                tracing::warn!(
                    "shipping {} audit records from seq {} failed: {}: {}; retrying",
                    batch.len(),
                    pos.seq + 1,
                    e.code(),
                    e.message()
                );
                sleep(wait(&mut delays)).await;
                continue;
            }
        };
        let before = pos.seq;
        let outcome = apply(&mut pos, &batch, &resp);
        if pos.seq != before {
            shared.shipped.store(pos.offset, Ordering::Release);
            if let Err(e) = pos.store(&log) {
                tracing::error!("{e:#}: a restarted agent will send some records again (the server skips them)");
            }
        }
        match outcome {
            Outcome::Moved => {
                *shared.refused.lock().expect("refused lock") = None;
                delays = backoff();
            }
            Outcome::Refused(what) => {
                tracing::error!(
                    "guard-server refuses audit record {what}; the spool keeps it and retries (fix it on the server, or \
                     drop it explicitly)"
                );
                *shared.refused.lock().expect("refused lock") = Some(what);
                sleep(wait(&mut delays)).await;
            }
            Outcome::Stuck => {
                tracing::warn!(
                    "guard-server acknowledged none of {} audit records from seq {}; retrying",
                    batch.len(),
                    before + 1
                );
                sleep(wait(&mut delays)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guard_proto::v1::{RefusedRecord, StreamPosition};

    fn spool(lines: &[&str]) -> (tempfile::TempDir, PathBuf, u64) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, &text).unwrap();
        (dir, path, text.len() as u64)
    }

    #[test]
    fn a_batch_reads_whole_lines_from_the_position_up_to_the_synced_length() {
        let (_d, path, len) = spool(&["{\"a\":1}", "{\"b\":22}", "{\"c\":333}"]);
        let pos = Position { stream: "s".into(), seq: 4, offset: 8 };
        let b = read_batch(&path, &pos, len).unwrap();
        assert_eq!(
            b,
            vec![
                Line { seq: 5, end: 17, json: "{\"b\":22}".into() },
                Line { seq: 6, end: 27, json: "{\"c\":333}".into() }
            ]
        );
        // Not past what is synced, and never half a line.
        assert_eq!(read_batch(&path, &pos, 20).unwrap().len(), 1);
        assert!(read_batch(&path, &pos, 8).unwrap().is_empty());
    }

    #[test]
    fn a_batch_stays_under_the_server_message_limit() {
        let big = format!("{{\"argv\":\"{}\"}}", "x".repeat(10_000));
        let lines: Vec<&str> = (0..100).map(|_| big.as_str()).collect();
        let (_d, path, len) = spool(&lines);
        let b = read_batch(&path, &Position::default(), len).unwrap();
        let bytes: usize = b.iter().map(|l| l.json.len()).sum();
        assert!(bytes <= BATCH_BYTES && b.len() >= BATCH_BYTES / big.len() - 1, "{} records, {bytes} bytes", b.len());
        // One record larger than a batch still goes alone (the server then says what is wrong).
        let huge = "y".repeat(3 * BATCH_BYTES);
        let (_d, path, len) = spool(&[&huge, "{}"]);
        assert_eq!(read_batch(&path, &Position::default(), len).unwrap().len(), 1);
    }

    #[test]
    fn a_batch_holds_at_most_500_records() {
        let lines: Vec<String> = (0..1200).map(|i| format!("{{\"n\":{i}}}")).collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let (_d, path, len) = spool(&refs);
        let mut pos = Position { stream: "s".into(), seq: 0, offset: 0 };
        let mut seen = vec![];
        loop {
            let b = read_batch(&path, &pos, len).unwrap();
            if b.is_empty() {
                break;
            }
            assert!(b.len() <= BATCH);
            seen.extend(b.iter().map(|l| l.json.clone()));
            assert!(advance(&mut pos, &b, Some(b.last().unwrap().seq)));
        }
        assert_eq!(seen, lines);
        assert_eq!((pos.seq, pos.offset), (1200, len));
    }

    fn resp(stored: Option<u64>, refused: Option<u64>) -> ReportRecordsResponse {
        ReportRecordsResponse {
            accepted: 0,
            stored: stored.map(|seq| StreamPosition { stream: "s".into(), seq }).into_iter().collect(),
            refused: refused.map(|seq| RefusedRecord { stream: "s".into(), seq, message: "hook: unknown".into() }),
        }
    }

    #[test]
    fn the_position_moves_to_what_the_server_stored_and_stays_on_a_refused_record() {
        let batch: Vec<Line> = (1..=3).map(|seq| Line { seq, end: seq * 10, json: String::new() }).collect();
        let start = Position { stream: "s".into(), seq: 0, offset: 0 };

        let mut pos = start.clone();
        assert_eq!(apply(&mut pos, &batch, &resp(Some(3), None)), Outcome::Moved);
        assert_eq!((pos.seq, pos.offset), (3, 30));

        // Stored up to 1, seq 2 refused: the position stays on seq 2.
        let mut pos = start.clone();
        let out = apply(&mut pos, &batch, &resp(Some(1), Some(2)));
        assert_eq!(out, Outcome::Refused("seq 2 of stream s: hook: unknown".into()));
        assert_eq!((pos.seq, pos.offset), (1, 10));

        // The server holds more than was sent (a position reset): the batch is done.
        let mut pos = start.clone();
        assert_eq!(apply(&mut pos, &batch, &resp(Some(900), None)), Outcome::Moved);
        assert_eq!(pos.seq, 3);

        // Nothing stored for this stream: stuck, the position stays.
        let mut pos = start.clone();
        assert_eq!(apply(&mut pos, &batch, &resp(None, None)), Outcome::Stuck);
        assert_eq!(pos, start);
        // A server that predates stored positions: accepting the whole batch acknowledges it,
        // accepting less does not.
        let mut old = resp(None, None);
        old.accepted = 2;
        assert_eq!(apply(&mut pos, &batch, &old), Outcome::Stuck);
        old.accepted = 3;
        assert_eq!(apply(&mut pos.clone(), &batch, &old), Outcome::Moved);
        // Another stream's answer does not move this one.
        let mut other = resp(Some(3), Some(1));
        other.stored[0].stream = "t".into();
        other.refused.as_mut().unwrap().stream = "t".into();
        assert_eq!(apply(&mut pos, &batch, &other), Outcome::Stuck);
    }
}
