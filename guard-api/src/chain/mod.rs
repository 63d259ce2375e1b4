//! The audit hash chains and their signed checkpoints: what makes the trail tamper-evident.
//!
//! There are two kinds of chain, both SHA-256:
//!
//! - **An agent's spool** ([`seal`]): each record carries a [`ChainLink`] (its stream, seq, the
//!   previous record's hash and its own). The hash covers the record's *canonical encoding*:
//!   its JSON as [`AuditRecord::to_json`] writes it (every field, in declared order, no
//!   whitespace, strings escaped by serde_json) with `chain.hash` empty. So a change of any
//!   field, the sequence or the link changes the hash. A chain is one (host, stream): the
//!   stream is a random id the spool takes when it is created, so a spool wiped and recreated
//!   shows as a new stream, never as a silent restart of the old one.
//! - **guard-server's rows** ([`row_hash`]): each row's hash covers the previous row's hash and
//!   every column of the row (seq, time, host, kind, request id, the record's JSON).
//!
//! A hash chain alone can be recomputed by whoever rewrites it, so each chain is closed every N
//! records or T seconds by a **checkpoint**: a record of kind `checkpoint` whose
//! [`SignedHead`] is an ed25519 signature ([`keys`]) over the chain's id, a seq and the hash of
//! the record at that seq. The checkpoint is itself a link of the chain, so it cannot be moved.
//! [`verify`] checks both kinds and names the first record that was modified, deleted,
//! reordered or inserted.

pub mod keys;
pub mod verify;

use crate::AuditRecord;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A record's place in its agent's chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainLink {
    /// The spool's stream: a random id taken when the spool was created.
    pub stream: String,
    /// 1 for the stream's first record, then one more per record, without gaps.
    pub seq: u64,
    /// The hash of the record at `seq - 1`; empty for seq 1.
    pub prev_hash: String,
    /// SHA-256 (hex) of this record's canonical encoding with this field empty.
    pub hash: String,
    /// Set by guard-server when it redacted the record's argv after checking its hash: the
    /// content no longer hashes to `hash`, but the chain still links through it (and the
    /// server's own chain covers the redacted row). Always false in an agent's spool.
    #[serde(default)]
    pub redacted: bool,
}

/// A signed statement that a chain's record at `seq` has hash `hash`: everything up to it is
/// fixed by the signer's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedHead {
    /// The chain: "<host>/<stream>" for an agent's spool, [`SERVER_CHAIN`] for the server's rows.
    pub chain: String,
    pub seq: u64,
    pub hash: String,
    /// [`keys::key_id`] of the signing key.
    pub key_id: String,
    /// ed25519 over [`keys::head_message`], hex.
    pub signature: String,
}

/// The chain id of guard-server's own rows.
pub const SERVER_CHAIN: &str = "server";

/// The chain id of an agent's stream.
pub fn stream_chain(host: &str, stream: &str) -> String {
    format!("{host}/{stream}")
}

/// SHA-256 of `bytes`, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// The hash a chained record should carry: SHA-256 of its canonical encoding with
/// `chain.hash` empty. For a record without a link, the hash of its encoding as it is.
pub fn record_hash(r: &AuditRecord) -> String {
    let mut canonical = r.clone();
    if let Some(link) = &mut canonical.chain {
        link.hash.clear();
    }
    sha256_hex(canonical.to_json().as_bytes())
}

/// Links `r` into a stream at `seq` after a record whose hash is `prev_hash`, and seals it:
/// sets `r.chain` with the hash of the result.
pub fn seal(r: &mut AuditRecord, stream: &str, seq: u64, prev_hash: &str) {
    r.chain = Some(ChainLink {
        stream: stream.into(),
        seq,
        prev_hash: prev_hash.into(),
        hash: String::new(),
        redacted: false,
    });
    let hash = record_hash(r);
    if let Some(link) = &mut r.chain {
        link.hash = hash;
    }
}

/// Version tag of the row encoding, so a future change of columns cannot collide with it.
const ROW_ENCODING: &str = "guard-row-v2";

/// One row of guard-server's chain, every column (as the `audit` table and an export hold it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainRow {
    pub seq: i64,
    pub time_ms: i64,
    pub host: String,
    pub kind: String,
    pub request_id: String,
    pub json: String,
    pub prev_hash: String,
    pub hash: String,
}

/// The hash of a server row: SHA-256 of the canonical encoding (a JSON array, which fixes the
/// order and escapes every string) of the previous row's hash and every column of this row.
pub fn row_hash(
    prev_hash: &str,
    seq: i64,
    time_ms: i64,
    host: &str,
    kind: &str,
    request_id: &str,
    json: &str,
) -> String {
    let canonical = serde_json::to_string(&(ROW_ENCODING, prev_hash, seq, time_ms, host, kind, request_id, json))
        .expect("strings and integers always serialise");
    sha256_hex(canonical.as_bytes())
}

impl ChainRow {
    /// The hash this row should carry.
    pub fn expected_hash(&self) -> String {
        row_hash(&self.prev_hash, self.seq, self.time_ms, &self.host, &self.kind, &self.request_id, &self.json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RecordKind, Timestamp};

    fn rec(object: &str) -> AuditRecord {
        let mut r = AuditRecord::at(Timestamp::from_unix_ms(1_000), RecordKind::Enforcement, "web1");
        r.object = Some(object.into());
        r
    }

    #[test]
    fn a_sealed_record_hashes_every_field_and_its_link() {
        let mut r = rec("/etc/passwd");
        seal(&mut r, "s1", 1, "");
        let h = r.chain.as_ref().unwrap().hash.clone();
        assert_eq!(h.len(), 64);
        assert_eq!(record_hash(&r), h);
        for change in [
            |r: &mut AuditRecord| r.object = Some("/etc/shadow".into()),
            |r: &mut AuditRecord| r.pid = Some(1),
            |r: &mut AuditRecord| r.argv.push("x".into()),
            |r: &mut AuditRecord| r.chain.as_mut().unwrap().seq = 2,
            |r: &mut AuditRecord| r.chain.as_mut().unwrap().prev_hash = "00".into(),
            |r: &mut AuditRecord| r.chain.as_mut().unwrap().stream = "s2".into(),
            |r: &mut AuditRecord| r.time = Timestamp::from_unix_ms(1_001),
        ] {
            let mut m = r.clone();
            change(&mut m);
            assert_ne!(record_hash(&m), h, "{}", m.to_json());
        }
    }

    #[test]
    fn a_row_hash_covers_every_column() {
        let base = row_hash("p", 1, 2, "h", "k", "r", "{}");
        assert_ne!(row_hash("q", 1, 2, "h", "k", "r", "{}"), base);
        assert_ne!(row_hash("p", 2, 2, "h", "k", "r", "{}"), base);
        assert_ne!(row_hash("p", 1, 3, "h", "k", "r", "{}"), base);
        assert_ne!(row_hash("p", 1, 2, "g", "k", "r", "{}"), base);
        assert_ne!(row_hash("p", 1, 2, "h", "j", "r", "{}"), base);
        assert_ne!(row_hash("p", 1, 2, "h", "k", "s", "{}"), base);
        assert_ne!(row_hash("p", 1, 2, "h", "k", "r", "[]"), base);
        // Moving text between columns is a change too.
        assert_ne!(row_hash("p", 1, 2, "hk", "", "r", "{}"), row_hash("p", 1, 2, "h", "k", "r", "{}"));
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(unhex(&hex(&[0, 1, 0xab, 0xff])).unwrap(), vec![0, 1, 0xab, 0xff]);
        assert!(unhex("abc").is_none());
        assert!(unhex("zz").is_none());
    }
}
