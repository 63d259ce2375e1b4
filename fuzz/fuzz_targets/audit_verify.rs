//! The audit chain verifier (guard_api::chain::verify). Two properties: any export text is read
//! and verified without a panic; and a valid chain built from the input verifies, while the same
//! chain changed in any way the hash covers (any column of a row; a row removed, moved, added;
//! a row changed and every later hash recomputed, which the signed checkpoint catches) is
//! refused when checked against its head and the server's key.
#![no_main]

use guard_api::chain::keys::SigningKey;
use guard_api::chain::verify::{parse_rows, verify_rows, Keys};
use guard_api::chain::{row_hash, ChainRow, SERVER_CHAIN};
use guard_api::{AuditRecord, RecordKind, Timestamp};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::generate().expect("a key").0)
}

fn row(seq: i64, prev: &str, kind: &str, json: String) -> ChainRow {
    let hash = row_hash(prev, seq, seq, "web1", kind, "", &json);
    ChainRow {
        seq,
        time_ms: seq,
        host: "web1".into(),
        kind: kind.into(),
        request_id: String::new(),
        json,
        prev_hash: prev.into(),
        hash,
    }
}

/// A valid chain: one request row per input line (its object), closed by a signed checkpoint.
fn chain(lines: &[&str]) -> Vec<ChainRow> {
    let mut rows: Vec<ChainRow> = vec![];
    for line in lines {
        let prev = rows.last().map(|r| r.hash.clone()).unwrap_or_default();
        let mut r = AuditRecord::at(Timestamp::from_unix_ms(rows.len() as i64), RecordKind::Request, "web1");
        r.object = Some(line.to_string());
        rows.push(row(rows.len() as i64 + 1, &prev, "request", r.to_json()));
    }
    let last = rows.last().expect("at least one line").clone();
    let mut cp = AuditRecord::at(Timestamp::from_unix_ms(0), RecordKind::Checkpoint, "web1");
    cp.checkpoint = Some(key().sign_head(SERVER_CHAIN, last.seq as u64, &last.hash));
    rows.push(row(last.seq + 1, &last.hash, "checkpoint", cp.to_json()));
    rows
}

/// Recomputes prev_hash and hash of every row from `from` on, as a forger would.
fn rechain(rows: &mut [ChainRow], from: usize) {
    for i in from..rows.len() {
        let prev = if i == 0 { String::new() } else { rows[i - 1].hash.clone() };
        rows[i].prev_hash = prev;
        rows[i].hash = rows[i].expected_hash();
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(rows) = parse_rows(&text) {
        let _ = verify_rows(&rows, None, None);
    }
    if data.len() < 4 {
        return;
    }
    let (ctl, rest) = data.split_at(4);
    let rest = String::from_utf8_lossy(rest);
    let lines: Vec<&str> = rest.split('\n').take(16).collect();
    let rows = chain(&lines);
    let mut keys = Keys::default();
    keys.add("", &key().public_hex());
    let last = rows.last().expect("a checkpoint").clone();
    let head = (last.seq as u64, last.hash.as_str());
    verify_rows(&rows, Some(head), Some(&keys)).expect("a chain built by the rules verifies");

    let mut bad = rows.clone();
    // Not the checkpoint itself: changing its record is a different test (its signature).
    let i = ctl[1] as usize % (bad.len() - 1);
    let byte = ctl[2];
    match ctl[0] % 10 {
        0 => {
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
        5 => bad[i].time_ms = bad[i].time_ms.wrapping_add(byte as i64 + 1),
        6 => {
            bad.remove(i);
        }
        7 => {
            let j = byte as usize % bad.len();
            bad.swap(i, j);
        }
        8 => {
            let extra = bad[i].clone();
            bad.insert(i, extra);
        }
        _ => {
            // A forger who changes a record and recomputes every hash after it (and the head).
            bad[i].request_id.push('x');
            rechain(&mut bad, i);
            let forged = bad.last().expect("rows").clone();
            assert!(
                verify_rows(&bad, Some((forged.seq as u64, &forged.hash)), Some(&keys)).is_err(),
                "a recomputed chain passed its signed checkpoint"
            );
            return;
        }
    }
    if bad != rows {
        assert!(
            verify_rows(&bad, Some(head), Some(&keys)).is_err(),
            "a changed chain was accepted: mutation {}",
            ctl[0] % 10
        );
    }
});
