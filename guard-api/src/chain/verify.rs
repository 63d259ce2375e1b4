//! Verifying chains: an agent's stream of records ([`verify_stream`]) or guard-server's rows
//! with every agent stream inside them ([`verify_rows`]). The first break is named: the record
//! (its seq, or the row that holds it) and what was done to it.
//!
//! How a break is told apart, walking in the given order with `expected` = last seq + 1:
//! - a record whose content does not hash to its stored hash: **modified**;
//! - a record whose `prev_hash` is not the previous record's hash: the previous record was
//!   **modified** (and its own hash recomputed), or this one was put in its place;
//! - a checkpoint whose signed hash is not the chain's hash at that seq: a record up to it was
//!   **modified** and the chain recomputed after it;
//! - a seq above `expected` that comes later in the input: **reordered**; one that never comes:
//!   **deleted**; a seq seen before: **inserted**; below `expected` and never seen: **reordered**;
//! - a chain that ends before (or after) its known head: **deleted** (or **inserted**) at the end.
//!
//! Without a head, records deleted after the last checkpoint cannot be told from records never
//! written: the report says up to which seq the chain is signed.

use super::{keys, record_hash, stream_chain, ChainRow, SignedHead, SERVER_CHAIN};
use crate::{AuditRecord, RecordKind};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// What was done to the first broken record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    Modified,
    Deleted,
    Reordered,
    Inserted,
    /// A checkpoint signed by an unknown key, or whose signature does not verify.
    Signature,
    /// Not a record of the chain at all (unreadable, no link, another host).
    Malformed,
}

impl fmt::Display for Tamper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tamper::Modified => "modified",
            Tamper::Deleted => "deleted",
            Tamper::Reordered => "reordered",
            Tamper::Inserted => "inserted",
            Tamper::Signature => "bad signature",
            Tamper::Malformed => "malformed",
        })
    }
}

/// The first break of a chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chain {chain}: {at}: {tamper}: {message}")]
pub struct Break {
    pub tamper: Tamper,
    pub chain: String,
    /// Where: "seq N" for an agent's record, "row N" for a server row, "line N" of an export.
    pub at: String,
    pub message: String,
}

/// The public keys (hex) checkpoints may be signed with: the server's, and each host's. As a
/// file (`guardctl audit keys` writes one, an auditor pins it): `{"server": [...], "hosts":
/// {"web1": [...]}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keys {
    #[serde(default)]
    pub server: Vec<String>,
    #[serde(default)]
    pub hosts: BTreeMap<String, Vec<String>>,
}

impl Keys {
    /// Adds `public_hex` for `host` ("": the server).
    pub fn add(&mut self, host: &str, public_hex: &str) {
        let list = if host.is_empty() { &mut self.server } else { self.hosts.entry(host.into()).or_default() };
        if !list.iter().any(|k| k == public_hex) {
            list.push(public_hex.into());
        }
    }
}

/// Reads an export of server rows: one [`ChainRow`] per line (blank lines skipped). An error
/// names the line.
pub fn parse_rows(text: &str) -> Result<Vec<ChainRow>, Break> {
    let mut rows = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row = serde_json::from_str(line).map_err(|e| Break {
            tamper: Tamper::Malformed,
            chain: SERVER_CHAIN.into(),
            at: format!("line {}", i + 1),
            message: format!("not an audit row: {e}"),
        })?;
        rows.push(row);
    }
    Ok(rows)
}

impl Keys {
    /// The key with `key_id` among those of `host` (None: the server's).
    fn find(&self, host: Option<&str>, key_id: &str) -> Option<&str> {
        let candidates = match host {
            None => self.server.as_slice(),
            Some(h) => self.hosts.get(h).map(Vec::as_slice).unwrap_or_default(),
        };
        candidates.iter().map(String::as_str).find(|k| keys::key_id(k) == key_id)
    }
}

/// A chain that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    pub chain: String,
    pub records: u64,
    pub last_seq: u64,
    pub last_hash: String,
    /// The highest seq a verified checkpoint signs; None when none did (or keys were not given).
    pub signed_seq: Option<u64>,
}

/// One link as the walker sees it.
struct Link {
    seq: u64,
    prev_hash: String,
    hash: String,
    computed: String,
    checkpoint: Option<SignedHead>,
    at: String,
    /// For a row that does not hash as it is but would under another seq: that seq (its seq
    /// was changed to move it).
    moved_from: Option<u64>,
}

/// Walks `links` of `chain` from its genesis; `signer` is the host whose keys sign it (None:
/// the server); `keys` None skips signatures; `head` is the chain's known last link.
fn walk(
    chain: &str,
    links: &[Link],
    signer: Option<&str>,
    keys: Option<&Keys>,
    head: Option<(u64, &str)>,
) -> Result<ChainReport, Break> {
    let fail = |tamper, at: &str, message: String| Break { tamper, chain: chain.into(), at: at.into(), message };
    let mut seen: HashMap<u64, &str> = HashMap::new();
    let (mut last_seq, mut last_hash, mut last_at) = (0u64, "", String::from("the chain's start"));
    let mut signed_seq = None;
    for (i, l) in links.iter().enumerate() {
        let expected = last_seq + 1;
        if l.seq != expected {
            if l.seq > expected {
                if links[i + 1..].iter().any(|m| m.seq == expected) {
                    return Err(fail(Tamper::Reordered, &l.at, format!("seq {} comes before seq {expected}", l.seq)));
                }
                let missing = if l.seq - 1 == expected {
                    format!("seq {expected} is")
                } else {
                    format!("seqs {expected} to {} are", l.seq - 1)
                };
                return Err(fail(Tamper::Deleted, &l.at, format!("{missing} missing before seq {}", l.seq)));
            }
            if seen.contains_key(&l.seq) {
                return Err(fail(Tamper::Inserted, &l.at, format!("a second record with seq {}", l.seq)));
            }
            return Err(fail(Tamper::Reordered, &l.at, format!("seq {} comes after seq {last_seq}", l.seq)));
        }
        if let (true, Some(from)) = (l.computed != l.hash, l.moved_from) {
            return Err(fail(
                Tamper::Reordered,
                &l.at,
                format!("this row was written as seq {from}: its seq was changed to move it"),
            ));
        }
        if l.computed != l.hash {
            return Err(fail(
                Tamper::Modified,
                &l.at,
                format!("seq {}'s content does not hash to its stored hash: a field was changed", l.seq),
            ));
        }
        if l.prev_hash != last_hash {
            return Err(fail(
                Tamper::Modified,
                &last_at,
                format!(
                    "seq {} links to hash {:?}, not to seq {last_seq}'s hash {last_hash:?}: seq {last_seq} was changed \
                     (or seq {} put in place of the original)",
                    l.seq, l.prev_hash, l.seq
                ),
            ));
        }
        if let Some(cp) = &l.checkpoint {
            if cp.chain != chain {
                return Err(fail(
                    Tamper::Inserted,
                    &l.at,
                    format!("a checkpoint of chain {:?} in this chain", cp.chain),
                ));
            }
            match seen.get(&cp.seq) {
                Some(h) if *h == cp.hash => {}
                Some(h) => {
                    return Err(fail(
                        Tamper::Modified,
                        &l.at,
                        format!(
                            "the checkpoint signs seq {} with hash {:?} but the chain has {h:?}: a record up to seq {} was \
                             changed and the chain recomputed",
                            cp.seq, cp.hash, cp.seq
                        ),
                    ))
                }
                None => {
                    return Err(fail(Tamper::Inserted, &l.at, format!("a checkpoint of seq {}, which is not before it", cp.seq)))
                }
            }
            if let Some(keys) = keys {
                let key = keys.find(signer, &cp.key_id).ok_or_else(|| {
                    fail(
                        Tamper::Signature,
                        &l.at,
                        format!(
                            "signed by key {}, which is not a key of {}",
                            cp.key_id,
                            signer.unwrap_or("the server")
                        ),
                    )
                })?;
                keys::verify_head(cp, key).map_err(|e| fail(Tamper::Signature, &l.at, e))?;
                signed_seq = Some(cp.seq);
            }
        }
        seen.insert(l.seq, &l.hash);
        (last_seq, last_hash, last_at) = (l.seq, &l.hash, l.at.clone());
    }
    if let Some((seq, hash)) = head {
        if last_seq < seq {
            return Err(fail(
                Tamper::Deleted,
                &format!("seq {}", last_seq + 1),
                format!(
                    "the chain ends at seq {last_seq} but its head is seq {seq}: the records after it were deleted"
                ),
            ));
        }
        if last_seq > seq || last_hash != hash {
            return Err(fail(
                Tamper::Inserted,
                &last_at,
                format!("the chain ends at seq {last_seq} ({last_hash:?}) but its head is seq {seq} ({hash:?})"),
            ));
        }
    }
    Ok(ChainReport {
        chain: chain.into(),
        records: links.len() as u64,
        last_seq,
        last_hash: last_hash.into(),
        signed_seq,
    })
}

/// Verifies one agent stream: `records` of `host` in the order they were written (from the
/// stream's first record), each labelled with where it was read (`at`).
pub fn verify_stream(host: &str, records: &[(String, AuditRecord)], keys: Option<&Keys>) -> Result<ChainReport, Break> {
    let stream = records.first().and_then(|(_, r)| r.chain.as_ref()).map(|c| c.stream.clone()).unwrap_or_default();
    let chain = stream_chain(host, &stream);
    let mut links = Vec::with_capacity(records.len());
    for (at, r) in records {
        let malformed =
            |message: String| Break { tamper: Tamper::Malformed, chain: chain.clone(), at: at.clone(), message };
        let link = r.chain.as_ref().ok_or_else(|| malformed("the record has no chain link".into()))?;
        if link.stream != stream {
            return Err(malformed(format!("stream {:?} in the middle of stream {stream:?}", link.stream)));
        }
        if r.host != host {
            return Err(malformed(format!("host {:?} in the chain of host {host:?}", r.host)));
        }
        links.push(Link {
            seq: link.seq,
            prev_hash: link.prev_hash.clone(),
            hash: link.hash.clone(),
            // A record the server redacted cannot be recomputed; its link still must hold.
            computed: if link.redacted { link.hash.clone() } else { record_hash(r) },
            checkpoint: r.checkpoint.clone().filter(|_| r.kind == RecordKind::Checkpoint),
            at: at.clone(),
            moved_from: None,
        });
    }
    walk(&chain, &links, Some(host), keys, None)
}

/// What [`verify_rows`] found: the server's chain and every agent stream in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowsReport {
    pub server: ChainReport,
    pub streams: Vec<ChainReport>,
}

/// The row kind of records agents reported (their own kind is in their JSON).
pub const ROW_KIND_RECORD: &str = "record";

/// Verifies guard-server's rows from the first (seq 1), up to `head` when given (seq, hash),
/// then each agent stream the reported rows carry.
pub fn verify_rows(rows: &[ChainRow], head: Option<(u64, &str)>, keys: Option<&Keys>) -> Result<RowsReport, Break> {
    let mut links = Vec::with_capacity(rows.len());
    let mut searched = false;
    let mut streams: BTreeMap<(String, String), Vec<(String, AuditRecord)>> = BTreeMap::new();
    for row in rows {
        let at = format!("row {}", row.seq);
        let malformed =
            |message: String| Break { tamper: Tamper::Malformed, chain: SERVER_CHAIN.into(), at: at.clone(), message };
        let seq = u64::try_from(row.seq).map_err(|_| malformed(format!("seq {} is negative", row.seq)))?;
        let record =
            AuditRecord::from_json(&row.json).map_err(|e| malformed(format!("json is not an audit record: {e}")))?;
        if record.host != row.host {
            return Err(malformed(format!("host {:?} is not the record's host {:?}", row.host, record.host)));
        }
        let checkpoint = (row.kind == "checkpoint" && record.kind == RecordKind::Checkpoint)
            .then(|| record.checkpoint.clone())
            .flatten();
        if row.kind == ROW_KIND_RECORD {
            if let Some(link) = &record.chain {
                streams.entry((row.host.clone(), link.stream.clone())).or_default().push((at.clone(), record.clone()));
            }
        }
        let computed = row.expected_hash();
        // For the first row that does not hash as it is: the seq it was written with, if its
        // seq was changed to move it (searched once, so the cost stays linear).
        let moved_from = if computed != row.hash && !searched {
            searched = true;
            (1..=rows.len() as i64 + 1)
                .find(|s| {
                    *s != row.seq
                        && super::row_hash(
                            &row.prev_hash,
                            *s,
                            row.time_ms,
                            &row.host,
                            &row.kind,
                            &row.request_id,
                            &row.json,
                        ) == row.hash
                })
                .and_then(|s| u64::try_from(s).ok())
        } else {
            None
        };
        links.push(Link {
            seq,
            prev_hash: row.prev_hash.clone(),
            hash: row.hash.clone(),
            computed,
            checkpoint,
            at,
            moved_from,
        });
    }
    let server = walk(SERVER_CHAIN, &links, None, keys, head)?;
    let streams = streams
        .into_iter()
        .map(|((host, _), records)| verify_stream(&host, &records, keys))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RowsReport { server, streams })
}

#[cfg(test)]
mod tests;
