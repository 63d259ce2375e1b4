use super::*;
use crate::chain::{keys::SigningKey, row_hash, seal};
use crate::Timestamp;

/// A stream of `n` records of host web1, with a signed checkpoint as every 4th record.
fn stream(n: u64, key: &SigningKey) -> Vec<(String, AuditRecord)> {
    let mut prev = String::new();
    (1..=n)
        .map(|seq| {
            let mut r = AuditRecord::at(Timestamp::from_unix_ms(1_000 + seq as i64), RecordKind::Enforcement, "web1");
            r.object = Some(format!("/etc/file{seq}"));
            if seq % 4 == 0 {
                r.kind = RecordKind::Checkpoint;
                r.checkpoint = Some(key.sign_head("web1/s1", seq - 1, &prev));
            }
            seal(&mut r, "s1", seq, &prev);
            prev = r.chain.as_ref().unwrap().hash.clone();
            (format!("seq {seq}"), r)
        })
        .collect()
}

fn keys(key: &SigningKey) -> Keys {
    Keys { server: vec![], hosts: BTreeMap::from([("web1".into(), vec![key.public_hex()])]) }
}

fn broken(records: &[(String, AuditRecord)], key: &SigningKey) -> Break {
    verify_stream("web1", records, Some(&keys(key))).unwrap_err()
}

/// Re-seals every record from index `from` on, as a forger without the key would.
fn reseal(records: &mut [(String, AuditRecord)], from: usize) {
    let mut prev = records[from - 1].1.chain.as_ref().unwrap().hash.clone();
    for (_, r) in &mut records[from..] {
        let seq = r.chain.as_ref().unwrap().seq;
        seal(r, "s1", seq, &prev);
        prev = r.chain.as_ref().unwrap().hash.clone();
    }
}

#[test]
fn a_whole_stream_verifies_and_says_how_far_it_is_signed() {
    let (key, _) = SigningKey::generate().unwrap();
    let s = stream(10, &key);
    let report = verify_stream("web1", &s, Some(&keys(&key))).unwrap();
    assert_eq!((report.records, report.last_seq, report.signed_seq), (10, 10, Some(7)));
    assert_eq!(report.chain, "web1/s1");
    assert_eq!(verify_stream("web1", &s, None).unwrap().signed_seq, None);
}

#[test]
fn each_kind_of_tampering_is_named_at_its_record() {
    let (key, _) = SigningKey::generate().unwrap();
    let s = stream(10, &key);

    let mut m = s.clone();
    m[4].1.object = Some("/etc/other".into());
    let b = broken(&m, &key);
    assert_eq!((b.tamper, b.at.as_str()), (Tamper::Modified, "seq 5"), "{b}");

    // Modified and its own hash recomputed: found by the next record's link.
    let mut m = s.clone();
    m[4].1.object = Some("/etc/other".into());
    let (seq, prev) = (5, m[3].1.chain.as_ref().unwrap().hash.clone());
    seal(&mut m[4].1, "s1", seq, &prev);
    let b = broken(&m, &key);
    assert_eq!((b.tamper, b.at.as_str()), (Tamper::Modified, "seq 5"), "{b}");

    // Modified and the whole chain recomputed: found by the next signed checkpoint.
    let mut m = s.clone();
    m[4].1.object = Some("/etc/other".into());
    reseal(&mut m, 4);
    let b = broken(&m, &key);
    assert_eq!((b.tamper, b.at.as_str()), (Tamper::Modified, "seq 8"), "{b}");
    assert!(b.message.contains("signs seq 7"), "{b}");

    let mut m = s.clone();
    m.remove(5);
    let b = broken(&m, &key);
    assert_eq!((b.tamper, b.at.as_str()), (Tamper::Deleted, "seq 7"), "{b}");
    assert!(b.message.contains("seq 6 is missing"), "{b}");

    let mut m = s.clone();
    m.swap(2, 3);
    let b = broken(&m, &key);
    assert_eq!((b.tamper, b.at.as_str()), (Tamper::Reordered, "seq 4"), "{b}");

    let mut m = s.clone();
    let mut forged = m[2].1.clone();
    forged.object = Some("/etc/forged".into());
    m.insert(3, ("seq 3 (forged)".into(), forged));
    let b = broken(&m, &key);
    assert_eq!((b.tamper, b.at.as_str()), (Tamper::Inserted, "seq 3 (forged)"), "{b}");

    // A checkpoint re-signed by another key.
    let (other, _) = SigningKey::generate().unwrap();
    let mut m = s.clone();
    let head = m[3].1.checkpoint.clone().unwrap();
    m[3].1.checkpoint = Some(other.sign_head(&head.chain, head.seq, &head.hash));
    reseal(&mut m, 3);
    let b = broken(&m, &key);
    assert_eq!((b.tamper, b.at.as_str()), (Tamper::Signature, "seq 4"), "{b}");

    let mut m = s.clone();
    m[6].1.chain = None;
    assert_eq!(broken(&m, &key).tamper, Tamper::Malformed);
}

fn rows(n: i64) -> Vec<ChainRow> {
    let mut prev = String::new();
    (1..=n)
        .map(|seq| {
            let mut r = AuditRecord::at(Timestamp::from_unix_ms(seq), RecordKind::Request, "web1");
            r.request_id = Some(format!("r{seq}"));
            let json = r.to_json();
            let hash = row_hash(&prev, seq, seq, "web1", "request", "r", &json);
            let row = ChainRow {
                seq,
                time_ms: seq,
                host: "web1".into(),
                kind: "request".into(),
                request_id: "r".into(),
                json,
                prev_hash: prev.clone(),
                hash: hash.clone(),
            };
            prev = hash;
            row
        })
        .collect()
}

#[test]
fn server_rows_break_at_the_changed_column_or_the_cut() {
    let r = rows(5);
    let head = verify_rows(&r, None, None).unwrap().server;
    assert_eq!(head.last_seq, 5);
    verify_rows(&r, Some((5, &head.last_hash)), None).unwrap();

    let mut m = r.clone();
    m[2].request_id = "other".into();
    let b = verify_rows(&m, None, None).unwrap_err();
    assert_eq!((b.tamper, b.at.as_str()), (Tamper::Modified, "row 3"), "{b}");

    let mut m = r.clone();
    m[1].time_ms += 1;
    assert_eq!(verify_rows(&m, None, None).unwrap_err().at, "row 2");

    let b = verify_rows(&r[..4], Some((5, &head.last_hash)), None).unwrap_err();
    assert_eq!((b.tamper, b.at.as_str()), (Tamper::Deleted, "seq 5"), "{b}");
}
