use super::*;
use guard_api::chain::verify::{verify_stream, Keys, Tamper};
use std::collections::BTreeMap;

const HOST: &str = "web1";

fn rec(object: &str) -> AuditRecord {
    let mut r = AuditRecord::new(RecordKind::Enforcement, HOST);
    r.object = Some(object.into());
    r
}

fn open(path: &Path) -> AuditLog {
    AuditLog::open(path, Options::new(HOST, None)).unwrap()
}

fn lines(path: &Path) -> Vec<AuditRecord> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| AuditRecord::from_json(l).unwrap()).collect()
}

fn labelled(records: &[AuditRecord]) -> Vec<(String, AuditRecord)> {
    records.iter().enumerate().map(|(i, r)| (format!("line {}", i + 1), r.clone())).collect()
}

fn keys_of(key: &SigningKey) -> Keys {
    Keys { server: vec![], hosts: BTreeMap::from([(HOST.to_string(), vec![key.public_hex()])]) }
}

fn objects(records: &[AuditRecord]) -> Vec<String> {
    records.iter().map(|r| r.object.clone().unwrap_or_default()).collect()
}

/// A spool of `n` good records, and its bytes.
fn good_spool(path: &Path, n: usize) -> Vec<u8> {
    let mut log = open(path);
    for i in 0..n {
        log.write(&rec(&format!("/good/{i}")));
    }
    log.flush();
    std::fs::read(path).unwrap()
}

#[test]
fn records_are_sealed_written_only_at_flush_and_a_reopened_spool_continues_its_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut log = open(&path);
    let stream = log.stream().to_string();
    assert_eq!(stream.len(), 32, "16 random bytes, hex: {stream}");
    log.write(&rec("/a"));
    log.write(&rec("/b"));
    // Not written before the batch ends: the shipper reads only what is synced.
    assert_eq!(std::fs::read(&path).unwrap().len(), 0);
    assert_eq!(log.shared.synced.load(Ordering::Relaxed), 0);
    log.flush();
    let len = std::fs::read(&path).unwrap().len() as u64;
    assert_eq!(log.shared.synced.load(Ordering::Relaxed), len);
    drop(log);

    let mut log = open(&path);
    assert_eq!(log.stream(), stream, "an existing spool continues its stream");
    log.write(&rec("/c"));
    log.flush();
    drop(log);

    let records = lines(&path);
    assert_eq!(objects(&records), ["/a", "/b", "/c"]);
    let seqs: Vec<u64> = records.iter().map(|r| r.chain.as_ref().unwrap().seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    let report = verify_stream(HOST, &labelled(&records), None).unwrap();
    assert_eq!(report.last_seq, 3);

    // A spool wiped and recreated is a new stream, never a silent restart of the old one.
    std::fs::remove_file(&path).unwrap();
    let log = open(&path);
    assert_ne!(log.stream(), stream);
}

#[test]
fn checkpoints_every_n_records_and_at_a_clean_stop_sign_the_record_before_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (key, _) = SigningKey::generate().unwrap();
    let public = key.public_hex();
    let mut opts = Options::new(HOST, Some(key));
    opts.checkpoint_every = 3;
    let mut log = AuditLog::open(&path, opts).unwrap();
    assert_eq!(log.audit_key(), Some(public.clone()));
    for i in 0..7 {
        log.write(&rec(&format!("/r{i}")));
    }
    log.close(crate::audit::record::agent_stop(HOST));
    drop(log);

    let records = lines(&path);
    let kinds: Vec<RecordKind> = records.iter().map(|r| r.kind).collect();
    use RecordKind::{Agent as A, Checkpoint as C, Enforcement as E};
    assert_eq!(kinds, [E, E, E, C, E, E, E, C, E, A, C]);
    for (i, r) in records.iter().enumerate().filter(|(_, r)| r.kind == C) {
        let head = r.checkpoint.as_ref().unwrap();
        let before = records[i - 1].chain.as_ref().unwrap();
        assert_eq!((head.seq, &head.hash), (before.seq, &before.hash), "a checkpoint signs the record before it");
        assert_eq!(head.chain, format!("{HOST}/{}", before.stream));
    }
    let good = Keys { server: vec![], hosts: BTreeMap::from([(HOST.to_string(), vec![public])]) };
    let report = verify_stream(HOST, &labelled(&records), Some(&good)).unwrap();
    assert_eq!(report.signed_seq, Some(10), "the stop record is signed");
    // Another host key does not verify them.
    let (other, _) = SigningKey::generate().unwrap();
    let e = verify_stream(HOST, &labelled(&records), Some(&keys_of(&other))).unwrap_err();
    assert_eq!(e.tamper, Tamper::Signature, "{e}");
}

#[test]
fn a_checkpoint_is_due_by_time_only_when_records_were_written_since() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (key, _) = SigningKey::generate().unwrap();
    let mut opts = Options::new(HOST, Some(key));
    opts.checkpoint_interval = Duration::ZERO;
    let mut log = AuditLog::open(&path, opts).unwrap();
    log.flush();
    assert!(lines(&path).is_empty(), "no records, no checkpoint");
    log.write(&rec("/a"));
    log.flush();
    log.flush();
    let kinds: Vec<RecordKind> = lines(&path).iter().map(|r| r.kind).collect();
    assert_eq!(kinds, [RecordKind::Enforcement, RecordKind::Checkpoint]);
}

/// Appends `damage` to a good spool of 3 records, reopens it and checks the recovery: the good
/// prefix kept byte for byte, the damage moved aside whole, a `spool_damaged` record naming
/// `line`, the byte count and the file, and a chain that still verifies.
fn recovers(damage: &[u8], line: u64, why: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let good = good_spool(&path, 3);
    let mut bytes = good.clone();
    bytes.extend_from_slice(damage);
    std::fs::write(&path, &bytes).unwrap();

    let mut log = open(&path);
    log.write(&rec("/after"));
    log.flush();
    drop(log);

    let now = std::fs::read(&path).unwrap();
    assert_eq!(&now[..good.len()], &good[..], "the good prefix is kept");
    let aside: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".damaged-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read(&aside[0]).unwrap(), damage, "the damage is moved aside whole");
    let records = lines(&path);
    assert_eq!(records.len(), 5);
    let note = &records[3];
    assert_eq!((note.kind, note.object.as_deref()), (RecordKind::Agent, Some("spool_damaged")));
    let comment = note.comment.clone().unwrap();
    for part in [format!("line {line}"), format!("{} bytes", damage.len()), aside[0].display().to_string()] {
        assert!(comment.contains(&part), "{part:?} not in {comment:?}");
    }
    assert!(comment.contains(why), "{why:?} not in {comment:?}");
    assert_eq!(records[4].object.as_deref(), Some("/after"));
    verify_stream(HOST, &labelled(&records), None).unwrap();
}

#[test]
fn recovery_of_a_truncated_last_line() {
    let mut r = rec("/cut");
    guard_api::chain::seal(&mut r, "whatever", 4, "");
    let json = r.to_json();
    recovers(&json.as_bytes()[..json.len() / 2], 4, "truncated");
}

#[test]
fn recovery_of_garbage_bytes() {
    recovers(b"\x00\x00\xff\xfe garbage\n{\"also\": 1}\n", 4, "not UTF-8");
}

#[test]
fn recovery_of_a_record_from_a_newer_version() {
    // A field this version does not know: a newer agent's file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.jsonl");
    good_spool(&path, 4);
    let fourth = std::fs::read_to_string(&path).unwrap().lines().nth(3).unwrap().to_string();
    let newer = fourth.replacen('{', "{\"severity\":\"high\",", 1) + "\n";
    recovers(newer.as_bytes(), 4, "unknown field `severity`");
}

#[test]
fn recovery_of_a_record_that_does_not_continue_the_chain() {
    // A good record of another spool: it reads, but does not link.
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.jsonl");
    let text = String::from_utf8(good_spool(&other, 4)).unwrap();
    let fourth = text.lines().nth(3).unwrap().to_string() + "\n";
    recovers(fourth.as_bytes(), 4, "stream");
}

#[test]
fn recovery_moves_everything_from_the_first_bad_line_even_good_records_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let text = String::from_utf8(good_spool(&path, 4)).unwrap();
    let ls: Vec<&str> = text.lines().collect();
    // Line 2 modified: its content no longer hashes to its hash.
    let modified = ls[1].replace("/good/1", "/good/X");
    std::fs::write(&path, format!("{}\n{modified}\n{}\n{}\n", ls[0], ls[2], ls[3])).unwrap();
    let mut log = open(&path);
    log.flush();
    drop(log);
    let records = lines(&path);
    assert_eq!(objects(&records), ["/good/0", "spool_damaged"]);
    let c = records[1].comment.clone().unwrap();
    assert!(c.contains("line 2") && c.contains("does not hash"), "{c}");
    verify_stream(HOST, &labelled(&records), None).unwrap();
}

#[test]
fn a_wholly_damaged_spool_starts_a_new_stream_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    // A log written before the spool was sealed: no chain links.
    std::fs::write(&path, rec("/old").to_json() + "\n").unwrap();
    let mut log = open(&path);
    log.flush();
    drop(log);
    let records = lines(&path);
    assert_eq!(objects(&records), ["spool_damaged"]);
    assert_eq!(records[0].chain.as_ref().unwrap().seq, 1);
    assert!(records[0].comment.as_ref().unwrap().contains("no chain link"));
}

#[test]
fn the_shipped_position_is_kept_only_when_it_matches_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let text = String::from_utf8(good_spool(&path, 3)).unwrap();
    let stream = lines(&path)[0].chain.clone().unwrap().stream;
    let after_two = (text.lines().take(2).map(|l| l.len() + 1).sum::<usize>()) as u64;

    let at_two = Position { stream: stream.clone(), seq: 2, offset: after_two };
    at_two.store(&path).unwrap();
    let mut log = open(&path);
    let (from, shared) = log.ship(BACKLOG_MAX_BYTES);
    assert_eq!(from, at_two);
    assert_eq!(shared.shipped.load(Ordering::Relaxed), after_two);
    drop(log);

    // Not at a record's end, another seq, another stream: start over from the beginning.
    for bad in [
        Position { stream: stream.clone(), seq: 2, offset: after_two - 1 },
        Position { stream: stream.clone(), seq: 3, offset: after_two },
        Position { stream: "other".into(), seq: 2, offset: after_two },
        Position { stream: stream.clone(), seq: 9, offset: 1 << 40 },
    ] {
        bad.store(&path).unwrap();
        let mut log = open(&path);
        assert_eq!(log.ship(BACKLOG_MAX_BYTES).0, Position { stream: stream.clone(), seq: 0, offset: 0 }, "{bad:?}");
    }
}

#[test]
fn a_full_backlog_counts_records_says_so_and_records_how_many_when_room_returns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut log = open(&path);
    let one = {
        let mut r = rec("/x");
        seal(&mut r, log.stream(), 1, "");
        r.to_json().len() as u64 + 1
    };
    let (_, shared) = log.ship(one * 5);
    for i in 0..20 {
        log.write(&rec(&format!("/r{i}")));
        log.flush();
    }
    assert!(log.problems().iter().any(|p| p.contains("audit backlog is full")), "{:?}", log.problems());
    let records = lines(&path);
    let objs = objects(&records);
    assert_eq!(objs.iter().filter(|o| *o == "backlog_full").count(), 1, "{objs:?}");
    let written = objs.iter().filter(|o| o.starts_with("/r")).count();
    assert!((4..=6).contains(&written), "{objs:?}");
    // The server acknowledges everything: room returns, and the loss is recorded.
    shared.shipped.store(std::fs::metadata(&path).unwrap().len(), Ordering::Release);
    log.write(&rec("/back"));
    log.flush();
    assert!(log.problems().is_empty(), "{:?}", log.problems());
    let records = lines(&path);
    let dropped = &records[records.len() - 2];
    assert_eq!(dropped.object.as_deref(), Some("backlog_dropped"));
    assert_eq!(dropped.lost, Some(20 - written as u64));
    assert_eq!(records.last().unwrap().object.as_deref(), Some("/back"));
    verify_stream(HOST, &labelled(&records), None).unwrap();
}
