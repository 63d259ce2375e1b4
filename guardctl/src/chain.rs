//! `guardctl audit verify | rows | keys`: the server's hash chain, fetched (rows and head) and
//! checked with `guard_api::chain::verify`, or checked offline from an export and a keys file.

use anyhow::{Context, Result};
use guard_api::chain::verify::{verify_rows, Keys, RowsReport};
use guard_api::chain::ChainRow;
use guard_proto::v1::audit_service_client::AuditServiceClient;
use guard_proto::v1::{AuditHead, AuditHeadRequest, AuditQuery};
use std::fmt::Write as _;
use tonic::transport::Channel;

/// Rows per query while paging through the chain.
const PAGE: u32 = 5_000;

/// The keys the server has registered, as a keys file holds them.
pub fn keys_of(head: &AuditHead) -> Keys {
    let mut keys = Keys::default();
    for k in &head.keys {
        keys.add(&k.host, &k.public_key);
    }
    keys
}

/// The head first, then every row up to it, page by page.
pub async fn fetch(client: &mut AuditServiceClient<Channel>) -> Result<(AuditHead, Vec<ChainRow>)> {
    let head = client.head(AuditHeadRequest {}).await?.into_inner();
    let mut rows: Vec<ChainRow> = vec![];
    let mut after = 0u64;
    while after < head.seq {
        let query = AuditQuery { after_seq: after, limit: PAGE, ..Default::default() };
        let mut stream = client.query(query).await?.into_inner();
        let before = rows.len();
        while let Some(e) = stream.message().await.context("reading the audit stream")? {
            if e.seq > head.seq {
                break;
            }
            after = e.seq;
            rows.push(ChainRow::from(e));
        }
        if rows.len() == before {
            break; // the rest is not visible to this approver: verify says what is missing
        }
    }
    Ok((head, rows))
}

/// What a verified chain amounts to, for a person.
pub fn describe(r: &RowsReport, keys_checked: bool) -> String {
    let signed = |s: Option<u64>| match (s, keys_checked) {
        (_, false) => "signatures not checked".to_string(),
        (Some(seq), true) => format!("signed up to seq {seq}"),
        (None, true) => "no signed checkpoint yet".to_string(),
    };
    let mut out = format!(
        "OK: the server's chain is whole: rows 1 to {} ({}), {}\n",
        r.server.last_seq,
        r.server.last_hash,
        signed(r.server.signed_seq)
    );
    for s in &r.streams {
        let _ = writeln!(out, "OK: stream {}: seqs 1 to {}, {}", s.chain, s.last_seq, signed(s.signed_seq));
    }
    out
}

/// Checks `rows` up to `head` (seq, hash) with `keys`; the text to print and whether it held.
pub fn check(rows: &[ChainRow], head: Option<(u64, &str)>, keys: Option<&Keys>) -> (String, bool) {
    match verify_rows(rows, head, keys) {
        Ok(report) => (describe(&report, keys.is_some()), true),
        Err(b) => (format!("BROKEN: {b}\n"), false),
    }
}
