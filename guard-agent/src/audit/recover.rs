//! Reading a spool back when the agent starts: where its chain ends (to continue it), and where
//! it stops being one. Every line is checked: it ends with a newline, reads as a record this
//! version knows (unknown fields are refused, so a newer version's file fails here), carries a
//! chain link that continues the previous line's (same stream, next seq, previous hash), and
//! hashes to its own hash. The first line that fails and everything after it is damage: moved
//! to `<log>.damaged-<unix ms>` by [`set_aside`], never dropped and never silently skipped
//! (the caller records it in the chain).

use anyhow::{Context, Result};
use guard_api::{chain::record_hash, AuditRecord};
use std::{
    fs::File,
    io::{BufRead, BufReader, Seek, SeekFrom},
    path::{Path, PathBuf},
};

/// The last record of a chain: what the next one links to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub stream: String,
    pub seq: u64,
    pub hash: String,
}

/// The first bad line and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// 1-based line number.
    pub line: u64,
    /// Where the line starts: the spool's good prefix ends here.
    pub offset: u64,
    /// From `offset` to the end of the file.
    pub bytes: u64,
    pub why: String,
}

/// What [`scan`] found.
#[derive(Debug, Default)]
pub struct Scan {
    /// The last good record; None for an empty (or wholly damaged) spool.
    pub head: Option<Head>,
    pub good_len: u64,
    pub records: u64,
    pub damage: Option<Damage>,
    /// The seq of the good record whose line ends exactly at the asked offset, if one does.
    pub seq_ending_at: Option<u64>,
}

/// Scans the spool at `path` (a missing file is an empty spool); `ending_at` asks which record
/// ends at that byte offset (to check a stored shipped position against the file).
pub fn scan(path: &Path, ending_at: Option<u64>) -> Result<Scan> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Scan::default()),
        Err(e) => return Err(e).with_context(|| format!("opening the audit spool {}", path.display())),
    };
    let total = file.metadata().with_context(|| format!("reading {}", path.display()))?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut out = Scan { seq_ending_at: (ending_at == Some(0)).then_some(0), ..Scan::default() };
    let mut line = Vec::with_capacity(4096);
    let mut offset = 0u64;
    let mut number = 0u64;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        number += 1;
        match check_line(&line, out.head.as_ref()) {
            Ok(head) => {
                offset += n as u64;
                out.records += 1;
                if ending_at == Some(offset) {
                    out.seq_ending_at = Some(head.seq);
                }
                out.head = Some(head);
            }
            Err(why) => {
                out.damage = Some(Damage { line: number, offset, bytes: total - offset, why });
                break;
            }
        }
    }
    out.good_len = offset;
    Ok(out)
}

/// Whether `line` (with its newline) is a good record after `prev`; its head if so.
fn check_line(line: &[u8], prev: Option<&Head>) -> Result<Head, String> {
    let Some(body) = line.strip_suffix(b"\n") else {
        return Err("the last line is truncated (no newline at its end)".into());
    };
    let text = std::str::from_utf8(body).map_err(|e| format!("not UTF-8 text: {e}"))?;
    let r = AuditRecord::from_json(text).map_err(|e| format!("not an audit record this version reads: {e}"))?;
    let link = r.chain.as_ref().ok_or("the record has no chain link (written before the spool was sealed)")?;
    let (stream, seq, hash) = match prev {
        Some(p) => (p.stream.as_str(), p.seq + 1, p.hash.as_str()),
        None => (link.stream.as_str(), 1, ""),
    };
    if link.stream != stream {
        return Err(format!("stream {:?} in the middle of stream {stream:?}", link.stream));
    }
    if link.seq != seq {
        return Err(format!("seq {} where seq {seq} was expected", link.seq));
    }
    if link.prev_hash != hash {
        return Err(format!("seq {} does not link to the previous record's hash", link.seq));
    }
    if record_hash(&r) != link.hash {
        return Err(format!("seq {}'s content does not hash to its stored hash", link.seq));
    }
    Ok(Head { stream: link.stream.clone(), seq: link.seq, hash: link.hash.clone() })
}

/// `<log>.damaged-<ms>`.
pub fn damaged_path(log: &Path, unix_ms: i64) -> PathBuf {
    let mut p = log.as_os_str().to_owned();
    p.push(format!(".damaged-{unix_ms}"));
    PathBuf::from(p)
}

/// Moves the damaged tail of the spool (from `damage.offset` on) to `<log>.damaged-<ms>`: the
/// copy is written and synced before the spool is cut, so a crash in between leaves the bytes
/// in both places, never in neither.
pub fn set_aside(log: &Path, damage: &Damage, unix_ms: i64) -> Result<PathBuf> {
    let to = damaged_path(log, unix_ms);
    let mut src = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(log)
        .with_context(|| format!("opening the audit spool {}", log.display()))?;
    let mut copy = || -> std::io::Result<()> {
        src.seek(SeekFrom::Start(damage.offset))?;
        let mut dst = std::fs::OpenOptions::new().write(true).create_new(true).open(&to)?;
        std::io::copy(&mut src, &mut dst)?;
        dst.sync_all()
    };
    copy().with_context(|| format!("copying the damaged part of {} to {}", log.display(), to.display()))?;
    src.set_len(damage.offset)
        .and_then(|()| src.sync_all())
        .with_context(|| format!("cutting the damaged part off {} (it is saved in {})", log.display(), to.display()))?;
    Ok(to)
}
