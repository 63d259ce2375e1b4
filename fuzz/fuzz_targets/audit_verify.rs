//! The audit chain verifier. Two properties: any export text is read and verified without a
//! panic; and a valid chain built from the input verifies, while the same chain changed in any
//! way the hash covers (a row's JSON, seq, host or hashes; a row removed, moved, added; a row
//! changed and every later hash recomputed) is refused when checked against its head.
#![no_main]

use guard_api::{AuditRecord, RecordKind, Timestamp};
use guard_server::audit::{chain_hash, KIND_RECORD};
use guard_server::verify::{parse_export, verify, ChainRow, GENESIS_HASH};
use libfuzzer_sys::fuzz_target;

/// A valid chain: one reported record per input line (its object), host "web1".
fn chain(lines: &[&str]) -> Vec<ChainRow> {
    let mut prev = GENESIS_HASH.to_string();
    let mut rows = vec![];
    for (i, line) in lines.iter().enumerate() {
        let mut r = AuditRecord::at(Timestamp::from_unix_ms(i as i64), RecordKind::Enforcement, "web1");
        r.object = Some(line.to_string());
        let json = r.to_json();
        let hash = chain_hash(&prev, &json);
        rows.push(ChainRow {
            seq: i as i64 + 1,
            host: "web1".into(),
            kind: KIND_RECORD.into(),
            json,
            prev_hash: std::mem::replace(&mut prev, hash.clone()),
            hash,
        });
    }
    rows
}

/// Recomputes prev_hash and hash of every row from `from` on, as a forger would.
fn rechain(rows: &mut [ChainRow], from: usize) {
    for i in from..rows.len() {
        let prev = if i == 0 { GENESIS_HASH.to_string() } else { rows[i - 1].hash.clone() };
        rows[i].hash = chain_hash(&prev, &rows[i].json);
        rows[i].prev_hash = prev;
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(rows) = parse_export(&text) {
        let _ = verify(&rows, None);
    }
    if data.len() < 4 {
        return;
    }
    let (ctl, rest) = data.split_at(4);
    let rest = String::from_utf8_lossy(rest);
    let lines: Vec<&str> = rest.split('\n').take(16).collect();
    let rows = chain(&lines);
    let head = verify(&rows, None).expect("a chain built by the rules verifies");
    assert_eq!(verify(&rows, Some(&head)), Ok(head.clone()));

    let mut bad = rows.clone();
    let i = ctl[1] as usize % bad.len();
    let byte = ctl[2];
    match ctl[0] % 9 {
        0 => {
            // A byte of the JSON changed (kept valid UTF-8 by replacing a whole character).
            let mut json = bad[i].json.clone().into_bytes();
            let at = ctl[3] as usize % json.len();
            if json[at].is_ascii() && byte.is_ascii() {
                json[at] = byte;
            }
            bad[i].json = String::from_utf8(json).expect("ascii for ascii");
        }
        1 => bad[i].seq = bad[i].seq.wrapping_add(byte as i64 + 1),
        2 => bad[i].host.push(byte as char),
        3 => bad[i].hash.push(byte as char),
        4 => bad[i].prev_hash = format!("{:02x}{}", byte, bad[i].prev_hash),
        5 => {
            bad.remove(i);
        }
        6 => {
            let j = byte as usize % bad.len();
            bad.swap(i, j);
        }
        7 => {
            let extra = bad[i].clone();
            bad.insert(i, extra);
        }
        _ => {
            // A forger who changes a record and recomputes every hash after it.
            bad[i].json = bad[i].json.replacen("web1", "webX", 1);
            rechain(&mut bad, i);
        }
    }
    if bad != rows {
        assert!(verify(&bad, Some(&head)).is_err(), "a changed chain was accepted: mutation {}", ctl[0] % 9);
    }
});
