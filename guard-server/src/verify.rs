//! The audit trail's verifier: reads rows of the hash chain (as the `audit` table holds them,
//! or exported one JSON object a line) and says whether the chain is whole, or the first row
//! where it is not and why.
//!
//! What is checked, row by row from the genesis (seq 0, hash ""): `seq` follows the previous
//! row's; `prev_hash` is the previous row's `hash`; `hash` is SHA-256 of `prev_hash` then
//! `json` ([`audit::chain_hash`]); `json` reads as an `AuditRecord`; the row's `host` is the
//! record's and its `kind` is the record's (or `record`, for what agents reported). With the
//! head (`audit_head`), the last row must be the head, so rows cut off at the end are found.
//! Columns the hash does not cover (`time_ms`, `request_id`) are not evidence.
use crate::audit::{self, KIND_RECORD};
use guard_api::AuditRecord;
use serde::{Deserialize, Serialize};

/// The hash before the first row (the initial `audit_head`).
pub const GENESIS_HASH: &str = "";

/// One row of the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainRow {
    pub seq: i64,
    pub host: String,
    pub kind: String,
    pub json: String,
    pub prev_hash: String,
    pub hash: String,
}

/// The chain's head as `audit_head` holds it: the last row's seq and hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    pub seq: i64,
    pub hash: String,
}

/// Where the chain breaks (`at`: the row's seq, or the export's line) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {message}")]
pub struct ChainError {
    pub at: String,
    pub message: String,
}

fn err(at: String, message: impl Into<String>) -> ChainError {
    ChainError { at, message: message.into() }
}

/// Reads an export: one `ChainRow` per line, in order; blank lines are skipped. An error
/// names the line (1-based) and what is wrong with it.
pub fn parse_export(text: &str) -> Result<Vec<ChainRow>, ChainError> {
    let mut rows = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row = serde_json::from_str(line).map_err(|e| err(format!("line {}", i + 1), e.to_string()))?;
        rows.push(row);
    }
    Ok(rows)
}

/// Verifies `rows`, which start at the genesis; with `head`, they must end at it. Returns the
/// head the rows end at.
pub fn verify(rows: &[ChainRow], head: Option<&Head>) -> Result<Head, ChainError> {
    let mut last = Head { seq: 0, hash: GENESIS_HASH.to_string() };
    for row in rows {
        let at = format!("audit row seq {}", row.seq);
        if Some(row.seq) != last.seq.checked_add(1) {
            return Err(err(at, format!("expected seq {} after seq {}", last.seq.saturating_add(1), last.seq)));
        }
        if row.prev_hash != last.hash {
            return Err(err(
                at,
                format!("prev_hash {:?} is not the hash of seq {} ({:?})", row.prev_hash, last.seq, last.hash),
            ));
        }
        let want = audit::chain_hash(&row.prev_hash, &row.json);
        if row.hash != want {
            return Err(err(
                at,
                format!("hash {:?} is not SHA-256 of prev_hash and json ({want:?}): the row was changed", row.hash),
            ));
        }
        let record = AuditRecord::from_json(&row.json)
            .map_err(|e| err(at.clone(), format!("json is not an audit record: {e}")))?;
        if record.host != row.host {
            return Err(err(at, format!("host {:?} is not the record's host {:?}", row.host, record.host)));
        }
        if row.kind != KIND_RECORD && row.kind != audit::row_kind(record.kind) {
            return Err(err(
                at,
                format!("kind {:?} is not the record's kind {:?}", row.kind, audit::row_kind(record.kind)),
            ));
        }
        last = Head { seq: row.seq, hash: row.hash.clone() };
    }
    if let Some(h) = head {
        if *h != last {
            return Err(err(
                "audit head".into(),
                format!(
                    "the head is seq {} ({:?}) but the rows end at seq {} ({:?}): rows are missing or were added",
                    h.seq, h.hash, last.seq, last.hash
                ),
            ));
        }
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use guard_api::{RecordKind, Timestamp};

    /// A valid chain of `n` rows: reported records of host "web1".
    pub fn chain(n: usize) -> Vec<ChainRow> {
        let mut prev = GENESIS_HASH.to_string();
        (0..n)
            .map(|i| {
                let mut r = AuditRecord::at(Timestamp::from_unix_ms(1_000 + i as i64), RecordKind::Enforcement, "web1");
                r.object = Some(format!("/etc/file{i}"));
                let json = r.to_json();
                let hash = audit::chain_hash(&prev, &json);
                let row = ChainRow {
                    seq: i as i64 + 1,
                    host: "web1".into(),
                    kind: KIND_RECORD.into(),
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
    fn a_whole_chain_verifies_up_to_its_head() {
        let rows = chain(3);
        let head = verify(&rows, None).unwrap();
        assert_eq!(head.seq, 3);
        assert_eq!(verify(&rows, Some(&head)).unwrap(), head);
        assert_eq!(verify(&[], None).unwrap(), Head { seq: 0, hash: String::new() });
    }

    #[test]
    fn each_change_is_found_at_its_row() {
        let rows = chain(3);
        let mut r = rows.clone();
        r[1].json = r[1].json.replace("file1", "file9");
        let e = verify(&r, None).unwrap_err();
        assert_eq!(e.at, "audit row seq 2", "{e}");
        assert!(e.message.contains("was changed"), "{e}");
        let mut r = rows.clone();
        r.remove(1);
        assert!(verify(&r, None).unwrap_err().message.contains("expected seq 2"));
        let mut r = rows.clone();
        r[2].host = "web2".into();
        assert!(verify(&r, None).unwrap_err().message.contains("host"));
        let mut r = rows.clone();
        r[0].kind = "decision".into();
        assert!(verify(&r, None).unwrap_err().message.contains("kind"));
        let head = verify(&rows, None).unwrap();
        let e = verify(&rows[..2], Some(&head)).unwrap_err();
        assert!(e.to_string().starts_with("audit head: "), "{e}");
    }

    #[test]
    fn exports_name_their_bad_line() {
        let rows = chain(2);
        let text: String = rows.iter().map(|r| serde_json::to_string(r).unwrap() + "\n\n").collect();
        assert_eq!(parse_export(&text).unwrap(), rows);
        let e = parse_export(&format!("{text}{{\"seq\": 3}}\n")).unwrap_err();
        assert_eq!(e.at, "line 5", "{e}");
    }
}
