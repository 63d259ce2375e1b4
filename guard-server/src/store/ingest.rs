//! Agents' records, stored exactly once and in chain order: each record names its place in its
//! host's stream (`guard_api::chain::ChainLink`), and the stream's position (`audit_streams`)
//! says what the server already holds. A resend is skipped; a record that does not extend the
//! stored chain (a gap, another previous hash) is refused with the field named, and nothing
//! after it in the batch is stored, so the agent resends from there. A checkpoint must be
//! signed by a key the host registered and sign the record just before it.
//!
//! The service checks what needs no database first (the record has a link, names the
//! certificate's host, hashes to its link) and may then redact it; this module checks what
//! needs the stored state.
use super::chain::append_audit;
use super::sql::{Backend, Tx};
use crate::audit::{self, AuditEntry};
use crate::error::GuardResult;
use guard_api::chain::{keys, stream_chain};
use guard_api::{AuditRecord, RecordKind};
use sqlx::{AssertSqlSafe, Row};
use std::collections::BTreeMap;

/// What became of one `ReportRecords` batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Ingest {
    /// Records stored now (resends not counted).
    pub accepted: u32,
    /// For each stream in the batch: the last seq the server holds.
    pub stored: Vec<(String, u64)>,
    /// The first record refused.
    pub refused: Option<Refusal>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub stream: String,
    pub seq: u64,
    pub message: String,
}

struct Position {
    seq: u64,
    hash: String,
    moved: bool,
}

/// Stores `records` of `host` (each already checked by the service) inside `tx`.
pub async fn ingest(
    tx: &mut Tx,
    backend: Backend,
    host: &str,
    records: Vec<AuditRecord>,
    now_ms: i64,
) -> GuardResult<Ingest> {
    let lock = if backend == Backend::Postgres { " FOR UPDATE" } else { "" };
    let mut positions: BTreeMap<String, Position> = BTreeMap::new();
    let mut host_keys: Option<Vec<String>> = None;
    let mut entries = vec![];
    let mut refused = None;
    for record in records {
        let Some(link) = record.chain.clone() else {
            // The service refuses these before; a caller of the store that did not is told so
            // (with no stream or seq to name), never silently skipped.
            let message = "chain: missing (records come from an agent's spool)".to_string();
            refused = Some(Refusal { stream: String::new(), seq: 0, message });
            break;
        };
        if !positions.contains_key(&link.stream) {
            let row = sqlx::query(AssertSqlSafe(format!(
                "SELECT seq, hash FROM audit_streams WHERE host = $1 AND stream = $2{lock}"
            )))
            .bind(host.to_string())
            .bind(link.stream.clone())
            .fetch_optional(&mut **tx)
            .await?;
            let (seq, hash) = match row {
                Some(row) => (u64::try_from(row.try_get::<i64, _>("seq")?).unwrap_or(0), row.try_get("hash")?),
                None => (0, String::new()),
            };
            positions.insert(link.stream.clone(), Position { seq, hash, moved: false });
        }
        let pos = positions.get_mut(&link.stream).expect("inserted above");
        if link.seq <= pos.seq {
            continue; // a resend of a record the server holds
        }
        let refuse = |message: String| Refusal { stream: link.stream.clone(), seq: link.seq, message };
        if link.seq != pos.seq + 1 {
            refused = Some(refuse(format!(
                "chain.seq: {} does not follow seq {} of stream {}, the last the server holds",
                link.seq, pos.seq, link.stream
            )));
            break;
        }
        if link.prev_hash != pos.hash {
            refused = Some(refuse(format!(
                "chain.prev_hash: {:?} is not the hash of seq {} of stream {} as the server holds it ({:?})",
                link.prev_hash, pos.seq, link.stream, pos.hash
            )));
            break;
        }
        if let Some(cp) = record.checkpoint.as_ref().filter(|_| record.kind == RecordKind::Checkpoint) {
            if host_keys.is_none() {
                host_keys = Some(audit_keys_of(tx, host).await?);
            }
            let chain = stream_chain(host, &link.stream);
            let problem = if cp.chain != chain || cp.seq + 1 != link.seq || cp.hash != link.prev_hash {
                Some(format!(
                    "checkpoint: signs {} seq {} ({:?}), not the record before it ({chain} seq {}, {:?})",
                    cp.chain,
                    cp.seq,
                    cp.hash,
                    link.seq - 1,
                    link.prev_hash
                ))
            } else {
                match host_keys.iter().flatten().find(|k| keys::key_id(k) == cp.key_id) {
                    None => Some(format!("checkpoint.key_id: {} is not a key host {host} registered", cp.key_id)),
                    Some(key) => keys::verify_head(cp, key).err().map(|e| format!("checkpoint.signature: {e}")),
                }
            };
            if let Some(message) = problem {
                refused = Some(refuse(message));
                break;
            }
        }
        (pos.seq, pos.hash, pos.moved) = (link.seq, link.hash.clone(), true);
        entries.push(audit::reported(record, host, now_ms));
    }
    append_audit(tx, backend, &entries).await?;
    for (stream, pos) in positions.iter().filter(|(_, p)| p.moved) {
        sqlx::query(
            "INSERT INTO audit_streams (host, stream, seq, hash) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (host, stream) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
        )
        .bind(host.to_string())
        .bind(stream.clone())
        .bind(i64::try_from(pos.seq).unwrap_or(i64::MAX))
        .bind(pos.hash.clone())
        .execute(&mut **tx)
        .await?;
    }
    Ok(Ingest {
        accepted: u32::try_from(entries.len()).unwrap_or(u32::MAX),
        stored: positions.into_iter().map(|(stream, p)| (stream, p.seq)).collect(),
        refused,
    })
}

/// The public keys (hex) `host` registered; "" is the server's own.
pub async fn audit_keys_of(tx: &mut Tx, host: &str) -> GuardResult<Vec<String>> {
    let rows = sqlx::query("SELECT public_key FROM audit_keys WHERE host = $1")
        .bind(host.to_string())
        .fetch_all(&mut **tx)
        .await?;
    rows.iter().map(|r| Ok(r.try_get("public_key")?)).collect()
}

/// Keeps `public_hex` among `host`'s audit keys (a key seen before keeps its first time).
pub async fn register_key(tx: &mut Tx, host: &str, public_hex: &str, now_ms: i64) -> GuardResult<()> {
    sqlx::query(
        "INSERT INTO audit_keys (host, key_id, public_key, first_seen_ms) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (host, key_id) DO NOTHING",
    )
    .bind(host.to_string())
    .bind(keys::key_id(public_hex))
    .bind(public_hex.to_string())
    .bind(now_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The row kind of the server's checkpoints.
pub const KIND_CHECKPOINT: &str = "checkpoint";

/// Appends a server checkpoint signing the chain's head with `key`, unless the head is already
/// a checkpoint (or the chain is empty). Returns the seq it signed.
pub async fn checkpoint(
    tx: &mut Tx,
    backend: Backend,
    key: &keys::SigningKey,
    now_ms: i64,
) -> GuardResult<Option<u64>> {
    let lock = if backend == Backend::Postgres { " FOR UPDATE" } else { "" };
    let head = sqlx::query(AssertSqlSafe(format!("SELECT seq, hash FROM audit_head WHERE id = 1{lock}")))
        .fetch_one(&mut **tx)
        .await?;
    let seq: i64 = head.try_get("seq")?;
    let hash: String = head.try_get("hash")?;
    if seq == 0 {
        return Ok(None);
    }
    let last_kind: Option<String> = sqlx::query("SELECT kind FROM audit WHERE seq = $1")
        .bind(seq)
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| r.try_get("kind"))
        .transpose()?;
    if last_kind.as_deref() == Some(KIND_CHECKPOINT) {
        return Ok(None);
    }
    let seq = u64::try_from(seq).unwrap_or(0);
    let mut record = AuditRecord::at(guard_api::Timestamp::from_unix_ms(now_ms), RecordKind::Checkpoint, "");
    record.checkpoint = Some(key.sign_head(guard_api::chain::SERVER_CHAIN, seq, &hash));
    record.comment = Some(format!("guard-server signs its audit chain up to row {seq}"));
    let entry = AuditEntry {
        time_ms: now_ms,
        host: String::new(),
        kind: KIND_CHECKPOINT,
        request_id: String::new(),
        json: record.to_json(),
    };
    append_audit(tx, backend, &[entry]).await?;
    Ok(Some(seq))
}
