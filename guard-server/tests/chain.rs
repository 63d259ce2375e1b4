//! The audit trail is tamper-evident where it is stored: someone with write access to the
//! database modifies, deletes, reorders or inserts rows, and the verifier names the first
//! broken row and what was done to it. The same suite runs on SQLite and on PostgreSQL (its
//! own throwaway cluster; reported as ignored, never passed, without PostgreSQL's binaries).
//! The rows are read straight from the database after the server stopped, as an auditor with a
//! copy of it would, with the head and the keys from the database's own tables.
mod common;

use common::*;
use guard_api::chain::keys::SigningKey;
use guard_api::chain::verify::{verify_rows, Break, Keys, Tamper};
use guard_api::chain::{row_hash, ChainRow};
use guard_api::{AuditRecord, RecordKind};
use guard_proto::v1::{AuditHeadRequest, ReportRecordsRequest, ReviewRequest};
use sqlx::{AnyPool, Row};
use std::time::Duration;

/// A server that signs a checkpoint every second; an agent h1 that registered its audit key
/// and reported 5 records and one signed checkpoint; a request approved by alice. Returns the
/// agent's key; the server is stopped, its last row a server checkpoint.
async fn trail(site: &Site, url: Option<&str>) -> SigningKey {
    let server = site.start(url).await;
    let (key, _) = SigningKey::generate().unwrap();
    let mut agent = server.unregistered_agent("h1").await;
    let mut registration = registration(&[("test", POLICY_HASH)]);
    registration.audit_key = key.public_hex();
    agent.register(registration).await.unwrap();
    let mut spool = TestSpool::new("s1");
    let mut records = vec![];
    for i in 0..5 {
        let mut r = AuditRecord::new(RecordKind::Enforcement, "h1");
        r.object = Some(format!("/etc/file{i}"));
        records.push(spool.seal(r));
        if i == 2 {
            records.push(spool.checkpoint("h1", &key));
        }
    }
    let reply = agent.report_records(ReportRecordsRequest { records: wire(&records) }).await.unwrap().into_inner();
    assert_eq!((reply.accepted, reply.refused), (6, None));

    let mut stream = agent.submit(submit(op("etc-writes", "100-1", "dev", 2000, "/usr/bin/vi"), 30, "")).await.unwrap();
    let created = next(stream.get_mut()).await;
    let review = ReviewRequest { id: created.id.clone(), approve: true, comment: "ok".into(), grant_seconds: 0 };
    server.approver("alice").await.review(review).await.unwrap();

    // Wait for the server's checkpoint over all of it.
    let mut auditor = server.auditor("carol").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let head = auditor.head(AuditHeadRequest {}).await.unwrap().into_inner();
        let last = rows_after(&server, head.seq.saturating_sub(1)).await;
        if last.last().is_some_and(|r| r.kind == "checkpoint") {
            assert!(head.keys.iter().any(|k| k.host.is_empty()), "the server's key is listed");
            assert!(head.keys.iter().any(|k| k.host == "h1" && k.public_key == key.public_hex()));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no server checkpoint after 20 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.stop().await;
    key
}

async fn rows_after(server: &Server, after_seq: u64) -> Vec<ChainRow> {
    use tokio_stream::StreamExt;
    let query = guard_proto::v1::AuditQuery { after_seq, ..Default::default() };
    let events: Vec<_> = server.auditor("carol").await.query(query).await.unwrap().into_inner().collect().await;
    events.into_iter().map(|e| ChainRow::from(e.unwrap())).collect()
}

async fn pool(url: &str) -> AnyPool {
    sqlx::any::install_default_drivers();
    AnyPool::connect(url).await.expect("the database opens")
}

/// The rows, head and keys as the database holds them.
async fn read(db: &AnyPool) -> (Vec<ChainRow>, (u64, String), Keys) {
    let rows =
        sqlx::query("SELECT seq, time_ms, host, kind, request_id, json, prev_hash, hash FROM audit ORDER BY seq")
            .fetch_all(db)
            .await
            .unwrap()
            .iter()
            .map(|r| ChainRow {
                seq: r.get("seq"),
                time_ms: r.get("time_ms"),
                host: r.get("host"),
                kind: r.get("kind"),
                request_id: r.get("request_id"),
                json: r.get("json"),
                prev_hash: r.get("prev_hash"),
                hash: r.get("hash"),
            })
            .collect();
    let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1").fetch_one(db).await.unwrap();
    let head = (head.get::<i64, _>("seq") as u64, head.get::<String, _>("hash"));
    let mut keys = Keys::default();
    for k in sqlx::query("SELECT host, public_key FROM audit_keys").fetch_all(db).await.unwrap() {
        keys.add(&k.get::<String, _>("host"), &k.get::<String, _>("public_key"));
    }
    (rows, head, keys)
}

async fn verify(db: &AnyPool) -> Result<(), Break> {
    let (rows, head, keys) = read(db).await;
    verify_rows(&rows, Some((head.0, &head.1)), Some(&keys)).map(|_| ())
}

async fn exec(db: &AnyPool, sql: &str) {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_string())).execute(db).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Puts `rows` back as the whole table, and the head at their end.
async fn restore(db: &AnyPool, rows: &[ChainRow]) {
    exec(db, "DELETE FROM audit").await;
    for r in rows {
        write_row(db, r).await;
    }
    let last = rows.last().unwrap();
    set_head(db, last.seq, &last.hash).await;
}

async fn write_row(db: &AnyPool, r: &ChainRow) {
    sqlx::query(
        "INSERT INTO audit (seq, time_ms, host, kind, request_id, json, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(r.seq)
    .bind(r.time_ms)
    .bind(r.host.clone())
    .bind(r.kind.clone())
    .bind(r.request_id.clone())
    .bind(r.json.clone())
    .bind(r.prev_hash.clone())
    .bind(r.hash.clone())
    .execute(db)
    .await
    .unwrap();
}

async fn set_head(db: &AnyPool, seq: i64, hash: &str) {
    sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
        .bind(seq)
        .bind(hash.to_string())
        .execute(db)
        .await
        .unwrap();
}

fn rehash(rows: &mut [ChainRow], from: usize) {
    for i in from..rows.len() {
        let prev = if i == 0 { String::new() } else { rows[i - 1].hash.clone() };
        rows[i].prev_hash = prev;
        rows[i].hash = row_hash(
            &rows[i].prev_hash,
            rows[i].seq,
            rows[i].time_ms,
            &rows[i].host,
            &rows[i].kind,
            &rows[i].request_id,
            &rows[i].json,
        );
    }
}

fn expect(got: Result<(), Break>, tamper: Tamper, at: &str, case: &str) {
    let b = got.expect_err(case);
    assert_eq!((b.tamper, b.at.as_str()), (tamper, at), "{case}: {b}");
}

async fn each_kind_of_tampering_is_found(url: &str, site: &Site) {
    let db = pool(url).await;
    verify(&db).await.expect("the untouched trail verifies");
    let (rows, _, _) = read(&db).await;
    let n = rows.len();
    let record_row = rows.iter().find(|r| r.json.contains("/etc/file1")).unwrap().seq;

    // Modified: an agent's record changed in place.
    exec(&db, &format!("UPDATE audit SET json = REPLACE(json, '/etc/file1', '/etc/fileX') WHERE seq = {record_row}"))
        .await;
    expect(verify(&db).await, Tamper::Modified, &format!("row {record_row}"), "a changed json");
    restore(&db, &rows).await;

    // Modified: a column the old hash did not cover.
    exec(&db, &format!("UPDATE audit SET time_ms = time_ms + 1 WHERE seq = {record_row}")).await;
    expect(verify(&db).await, Tamper::Modified, &format!("row {record_row}"), "a changed time");
    restore(&db, &rows).await;

    // Modified, and every later hash and the head recomputed: the server's signed checkpoint
    // (the last row) no longer matches.
    let mut forged = rows.clone();
    let i = forged.iter().position(|r| r.seq == record_row).unwrap();
    forged[i].json = forged[i].json.replace("/etc/file1", "/etc/fileX");
    rehash(&mut forged, i);
    restore(&db, &forged).await;
    expect(verify(&db).await, Tamper::Modified, &format!("row {}", n), "a recomputed chain");
    restore(&db, &rows).await;

    // Deleted: a row in the middle, and the last row (the head says more).
    exec(&db, &format!("DELETE FROM audit WHERE seq = {record_row}")).await;
    expect(verify(&db).await, Tamper::Deleted, &format!("row {}", record_row + 1), "a deleted row");
    restore(&db, &rows).await;
    exec(&db, &format!("DELETE FROM audit WHERE seq = {n}")).await;
    expect(verify(&db).await, Tamper::Deleted, &format!("seq {n}"), "a deleted last row");
    restore(&db, &rows).await;

    // Reordered: two rows swap places.
    exec(&db, &format!("UPDATE audit SET seq = -1 WHERE seq = {record_row}")).await;
    exec(&db, &format!("UPDATE audit SET seq = {record_row} WHERE seq = {}", record_row + 1)).await;
    exec(&db, &format!("UPDATE audit SET seq = {} WHERE seq = -1", record_row + 1)).await;
    expect(verify(&db).await, Tamper::Reordered, &format!("row {record_row}"), "two rows swapped");
    restore(&db, &rows).await;

    // Inserted: a second copy of an agent's record appended after the server's last
    // checkpoint, chained and with the head moved, so the server's chain holds: the agent's
    // stream does not.
    let mut extra = rows[record_row as usize - 1].clone();
    extra.seq = n as i64 + 1;
    let mut longer = rows.clone();
    longer.push(extra);
    rehash(&mut longer, n);
    restore(&db, &longer).await;
    expect(verify(&db).await, Tamper::Inserted, &format!("row {}", n + 1), "a duplicated agent record");
    restore(&db, &rows).await;

    // An agent's checkpoint re-signed by another key (and the server chain recomputed).
    let (other, _) = SigningKey::generate().unwrap();
    let mut resigned = rows.clone();
    let j = resigned.iter().position(|r| r.json.contains("\"kind\":\"checkpoint\"") && r.host == "h1").unwrap();
    let mut cp = AuditRecord::from_json(&resigned[j].json).unwrap();
    let head = cp.checkpoint.clone().unwrap();
    cp.checkpoint = Some(other.sign_head(&head.chain, head.seq, &head.hash));
    let seq = cp.chain.as_ref().unwrap().seq;
    let prev = cp.chain.as_ref().unwrap().prev_hash.clone();
    guard_api::chain::seal(&mut cp, "s1", seq, &prev);
    resigned[j].json = cp.to_json();
    rehash(&mut resigned, j);
    restore(&db, &resigned).await;
    // The server's checkpoint catches the rewrite first; with the rows re-signed by a forger
    // who also had the server's key, the agent's key would: both are checked.
    expect(verify(&db).await, Tamper::Modified, &format!("row {n}"), "a re-signed agent checkpoint");
    restore(&db, &rows).await;

    verify(&db).await.expect("restored, the trail verifies again");
    db.close().await;
    let _ = site;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_is_named_on_sqlite() {
    let site = Site::with(config().extra("[audit]\ncheckpoint_every = \"1s\"\n"));
    trail(&site, None).await;
    each_kind_of_tampering_is_found(&site.db_url(), &site).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(has_postgres), ignore = "SKIPPED: no PostgreSQL (initdb/pg_ctl) on the build machine")]
async fn tampering_is_named_on_postgres() {
    use guard_server::testing::pg::{find_bindir, PgCluster};
    if let Err(why) = find_bindir() {
        panic!("PostgreSQL was installed at build time but is not now: {why}");
    }
    let pg_dir = tempfile::tempdir().expect("tempdir");
    let cluster = PgCluster::start(pg_dir.path(), 5441).expect("PostgreSQL starts");
    let url = cluster.url();
    let site = Site::with(config().extra("[audit]\ncheckpoint_every = \"1s\"\n"));
    trail(&site, Some(&url)).await;
    each_kind_of_tampering_is_found(&url, &site).await;
}
