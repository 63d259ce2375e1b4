//! Two server replicas on one PostgreSQL: decisions and new requests cross replicas through
//! LISTEN/NOTIFY. Starts its own throwaway cluster. Without PostgreSQL's binaries on the
//! build machine (build.rs sets `has_postgres`) libtest reports it as ignored, never as passed;
//! with them, a cluster that cannot start fails the test.
mod common;

use common::*;
use guard_proto::v1::{AuditQuery, ReviewRequest, State, WatchPendingRequest};
use guard_server::testing::pg::{find_bindir, PgCluster};
use std::time::Duration;
use tokio_stream::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(has_postgres), ignore = "SKIPPED: no PostgreSQL (initdb/pg_ctl) on the build machine")]
async fn replicas_share_requests_decisions_and_audit() {
    if let Err(why) = find_bindir() {
        panic!("PostgreSQL was installed at build time but is not now: {why}");
    }
    let pg_dir = tempfile::tempdir().expect("tempdir");
    let cluster = PgCluster::start(pg_dir.path(), 5432).expect("PostgreSQL starts");
    let url = cluster.url();
    let site = Site::new();
    let one = site.start(Some(&url)).await;
    let two = site.start(Some(&url)).await;

    // WatchPending on replica 2 sees a request created through replica 1.
    let mut watch = two.approver("carol").await.watch_pending(WatchPendingRequest {}).await.unwrap().into_inner();
    let mut agent = one.agent("h1").await;
    let mut stream = agent.submit(submit(op("r", "9-9", "dev", 2000, "/bin/x"), 30, "k1")).await.unwrap().into_inner();
    let created = next(&mut stream).await;
    assert_eq!(state(&created), State::Pending);
    let event = tokio::time::timeout(Duration::from_secs(10), watch.next()).await.expect("event").unwrap().unwrap();
    assert_eq!((event.kind.as_str(), event.request.unwrap().id), ("created", created.id.clone()));

    // The same hold key through replica 2 is the same request.
    let mut again = two
        .agent("h1")
        .await
        .submit(submit(op("r", "9-9", "dev", 2000, "/bin/x"), 30, "k1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut again).await.id, created.id);

    // Approved through replica 2 (with a grant): the Submit stream on replica 1 gets it.
    let review = ReviewRequest { id: created.id.clone(), approve: true, comment: "ok".into(), grant_seconds: 60 };
    two.approver("alice").await.review(review).await.unwrap();
    let last = next(&mut stream).await;
    assert_eq!(state(&last), State::Approved);
    assert_eq!(last.decided_by, "alice");
    ends(&mut stream).await;
    let event = tokio::time::timeout(Duration::from_secs(10), watch.next()).await.expect("event").unwrap().unwrap();
    assert_eq!(event.kind, "decided");

    // The grant made on replica 2 covers a submission on replica 1.
    let mut granted = agent.submit(submit(op("r", "9-9", "dev", 2000, "/bin/x"), 30, "k2")).await.unwrap().into_inner();
    assert_eq!(next(&mut granted).await.reason, "grant");

    // Expiry is swept by one of the replicas, audited once.
    let mut short = agent.submit(submit(op("r", "9-9", "dev", 2000, "/bin/y"), 1, "")).await.unwrap().into_inner();
    let pending = next(&mut short).await;
    assert_eq!(state(&next(&mut short).await), State::Expired);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let query = AuditQuery { request_id: pending.id.clone(), ..Default::default() };
    let events: Vec<_> = one.auditor("bob").await.query(query).await.unwrap().into_inner().collect().await;
    let kinds: Vec<String> = events.into_iter().map(|e| e.unwrap().kind).collect();
    assert_eq!(kinds, ["request", "decision"]);

    // One audit chain for both replicas: gapless sequence.
    let all: Vec<_> = two.auditor("bob").await.query(AuditQuery::default()).await.unwrap().into_inner().collect().await;
    let seqs: Vec<u64> = all.into_iter().map(|e| e.unwrap().seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());

    // Database down: UNAVAILABLE (worth retrying), not INTERNAL.
    drop(cluster);
    let err = two
        .approver("alice")
        .await
        .get_request(guard_proto::v1::GetRequestRequest { id: created.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");

    one.stop().await;
    two.stop().await;
}
