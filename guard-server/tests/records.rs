//! One audit record type end to end: what an agent reports comes out of the audit trail as
//! the same `guard_api::AuditRecord`, and the server's own rows are that type too.
mod common;

use common::*;
use guard_api::{Action, AuditRecord, Decision, Hook, Reason, RecordKind, StatedReason, Timestamp};
use guard_proto::v1::{
    AuditEvent, AuditQuery, CancelRequestRequest, ReportRecordsRequest, ReviewRequest, TreeExitedRequest,
    WithdrawRequest,
};
use guard_server::testing::pg::{find_bindir, PgCluster};
use std::time::Duration;
use tokio_stream::StreamExt;

async fn audit(server: &Server, query: AuditQuery) -> Vec<AuditEvent> {
    let events: Vec<_> = server.auditor("carol").await.query(query).await.unwrap().into_inner().collect().await;
    events.into_iter().map(|e| e.unwrap()).collect()
}

/// The rows of the records `host`'s agent reported (not the server's own rows about it).
async fn reported(server: &Server, host: &str) -> Vec<AuditEvent> {
    let mut events = audit(server, AuditQuery { host: host.into(), ..Default::default() }).await;
    events.retain(|e| e.kind == "record");
    events
}

/// The records of request `id`'s rows, in trail order.
async fn records_of(server: &Server, id: &str) -> Vec<AuditRecord> {
    let events = audit(server, AuditQuery { request_id: id.into(), ..Default::default() }).await;
    events.iter().map(|e| AuditRecord::from_json(&e.json).unwrap()).collect()
}

/// The records of `host`'s rows of `kind`, in trail order.
async fn host_records(server: &Server, host: &str, kind: RecordKind) -> Vec<AuditRecord> {
    let events = audit(server, AuditQuery { host: host.into(), ..Default::default() }).await;
    let records = events.iter().map(|e| AuditRecord::from_json(&e.json).unwrap());
    records.filter(|r| r.kind == kind).collect()
}

/// A record with every field set, as an agent's JSONL line has it.
fn full_record(host: &str) -> AuditRecord {
    let mut r = AuditRecord::at(Timestamp::from_unix_ms(1_796_002_226_007), RecordKind::Enforcement, host);
    r.decision = Some(Decision::Deny);
    r.reason = Some(Reason::Denied);
    r.action = Some(Action::Ask);
    r.rule = Some("etc-writes".into());
    r.policy = Some("coding".into());
    r.hook = Some(Hook::FileOpen);
    r.object = Some("/etc/passwd".into());
    r.access = Some("write".into());
    r.pid = Some(4242);
    r.tid = Some(4243);
    r.ppid = Some(4200);
    r.uid = Some(1000);
    r.user = Some("dev".into());
    r.exe = Some("/usr/bin/vi".into());
    r.argv = vec!["vi".into(), "/etc/passwd".into()];
    r.tree_id = Some("4100-77".into());
    r.request_id = Some("abcdefghij".into());
    r.state = Some("denied".into());
    r.approver = Some("alice".into());
    r.comment = Some("no".into());
    r.grant_seconds = Some(0);
    r.held_ms = Some(1234);
    r.lost = Some(0);
    r.stated_reason = Some(StatedReason {
        tool: "edit".into(),
        call_id: "c1".into(),
        reason: "fix the users".into(),
        session: "s1".into(),
    });
    r
}

#[tokio::test]
async fn a_reported_record_comes_back_field_for_field() {
    let site = Site::new();
    let server = site.start(None).await;
    let mut spool = TestSpool::new("s1");
    let sent = spool.seal(full_record("h1"));
    let records = wire(std::slice::from_ref(&sent));
    let accepted = server.agent("h1").await.report_records(ReportRecordsRequest { records }).await.unwrap();
    assert_eq!(accepted.into_inner().accepted, 1);

    let events = reported(&server, "h1").await;
    assert_eq!(events.len(), 1);
    assert_eq!(AuditRecord::from_json(&events[0].json).unwrap(), sent);

    // A record naming another host than the certificate's is refused, not rewritten: the
    // server never changes what the agent's chain covers.
    let records = wire(&[spool.seal(full_record("not-h1"))]);
    let reply = server.agent("h1").await.report_records(ReportRecordsRequest { records }).await.unwrap().into_inner();
    let refused = reply.refused.expect("refused");
    assert!(refused.message.contains("records[0].host") && refused.message.contains("not-h1"), "{}", refused.message);
    assert_eq!(reported(&server, "h1").await.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn the_servers_own_rows_are_audit_records() {
    let site = Site::new();
    let server = site.start(None).await;
    let mut agent = server.agent("h1").await;
    let mut stream =
        agent.submit(submit(op("etc-writes", "100-1", "dev", 2000, "/usr/bin/vi"), 30, "")).await.unwrap().into_inner();
    let created = next(&mut stream).await;
    let review = ReviewRequest { id: created.id.clone(), approve: true, comment: "ok".into(), grant_seconds: 60 };
    server.approver("alice").await.review(review).await.unwrap();

    let events = audit(&server, AuditQuery { request_id: created.id.clone(), ..Default::default() }).await;
    let records: Vec<AuditRecord> = events.iter().map(|e| AuditRecord::from_json(&e.json).unwrap()).collect();
    let kinds: Vec<RecordKind> = records.iter().map(|r| r.kind).collect();
    // The approval for 60 s made a grant: its record follows the decision.
    assert_eq!(kinds, [RecordKind::Request, RecordKind::Review, RecordKind::Decision, RecordKind::Grant]);
    for (e, r) in events.iter().zip(&records).take(3) {
        assert_eq!(e.kind, serde_json::to_value(r.kind).unwrap(), "row kind is the record's kind");
        assert_eq!(r.host, "h1");
        assert_eq!(r.time.unix_ms(), e.time_ms);
        assert_eq!(r.request_id.as_deref(), Some(created.id.as_str()));
        assert_eq!(r.hook, Some(Hook::BprmCheckSecurity));
        assert_eq!(r.rule.as_deref(), Some("etc-writes"));
        assert_eq!(r.tree_id.as_deref(), Some("100-1"));
        assert_eq!((r.pid, r.ppid, r.uid), (Some(4242), Some(4200), Some(2000)));
        assert_eq!(r.user.as_deref(), Some("dev"));
        assert_eq!(r.argv, ["/usr/bin/vi", "--now"]);
    }
    let (request, review, decision) = (&records[0], &records[1], &records[2]);
    assert_eq!((request.state.as_deref(), request.decision), (Some("pending"), None));
    assert_eq!(review.decision, Some(Decision::Allow));
    assert_eq!(review.approver.as_deref(), Some("alice"));
    assert_eq!((review.comment.as_deref(), review.grant_seconds), (Some("ok"), Some(60)));
    assert_eq!(decision.state.as_deref(), Some("approved"));
    assert_eq!((decision.decision, decision.reason), (Some(Decision::Allow), Some(Reason::Approved)));
    assert_eq!(decision.approver.as_deref(), Some("alice"));
    server.stop().await;
}

/// A refused record of `attempt` by `who` whose comment says `why`, among `records`.
fn refusal<'a>(records: &'a [AuditRecord], attempt: &str, who: &str, why: &str) -> &'a AuditRecord {
    let prefix = format!("{attempt} refused: ");
    records
        .iter()
        .find(|r| {
            r.reason == Some(Reason::Refused)
                && r.approver.as_deref() == Some(who)
                && r.comment.as_deref().is_some_and(|c| c.starts_with(&prefix) && c.contains(why))
        })
        .unwrap_or_else(|| panic!("no refused {attempt} by {who} saying {why:?} in {records:#?}"))
}

#[tokio::test]
async fn refused_reviews_cancels_and_withdraws_are_records() {
    let site = Site::new();
    let server = site.start(None).await;
    let mut agent = server.agent("h1").await;
    let mut stream =
        agent.submit(submit(op("etc-writes", "7-1", "dev", 2000, "/bin/a"), 30, "")).await.unwrap().into_inner();
    let plain = next(&mut stream).await;
    // alice's own Unix user (1000) runs this tree: she may not decide it.
    let mut stream =
        agent.submit(submit(op("etc-writes", "7-2", "alice", 1000, "/bin/b"), 30, "")).await.unwrap().into_inner();
    let own = next(&mut stream).await;
    // Two of alice, bob, carol must approve; mallory is not one of them.
    let mut stream =
        agent.submit(submit(op("prod-deploy", "7-3", "dev", 2000, "/bin/c"), 30, "")).await.unwrap().into_inner();
    let two = next(&mut stream).await;

    let review = |id: &str, approve: bool, grant_seconds: u64| ReviewRequest {
        id: id.into(),
        approve,
        comment: "trying".into(),
        grant_seconds,
    };
    let alice = || server.approver("alice");
    // A grant longer than the server allows.
    alice().await.review(review(&plain.id, true, 10 * 24 * 3600)).await.unwrap_err();
    // Self-approval.
    alice().await.review(review(&own.id, true, 0)).await.unwrap_err();
    // Not eligible, then the same approver twice towards the two-person rule.
    server.approver("mallory").await.review(review(&two.id, true, 0)).await.unwrap_err();
    alice().await.review(review(&two.id, true, 0)).await.unwrap();
    alice().await.review(review(&two.id, true, 0)).await.unwrap_err();
    // Decided, then reviewed again, cancelled, and withdrawn by its agent: all too late.
    server.approver("bob").await.review(review(&plain.id, false, 0)).await.unwrap();
    server.approver("carol").await.review(review(&plain.id, true, 0)).await.unwrap_err();
    let cancel = CancelRequestRequest { id: plain.id.clone(), comment: "stop".into() };
    server.approver("carol").await.cancel_request(cancel).await.unwrap_err();
    let withdraw = WithdrawRequest { id: plain.id.clone(), why: "timeout".into() };
    let answer = agent.withdraw(withdraw.clone()).await.unwrap().into_inner();
    assert_eq!(state(&answer), guard_proto::v1::State::Denied, "the agent gets the real outcome");
    // Cancelling what one may not decide; another host withdrawing h1's request.
    let cancel = CancelRequestRequest { id: own.id.clone(), comment: "mine".into() };
    alice().await.cancel_request(cancel).await.unwrap_err();
    server.agent("h2").await.withdraw(withdraw).await.unwrap_err();
    // An id no request has is no attempt on anything: not recorded.
    let nowhere = WithdrawRequest { id: "zzzzzzzzzz".into(), why: "timeout".into() };
    server.agent("h2").await.withdraw(nowhere).await.unwrap_err();

    let records = records_of(&server, &plain.id).await;
    let too_big = refusal(&records, "review", "alice", "grant_seconds");
    let already = refusal(&records, "review", "carol", "no longer pending");
    let cancelled = refusal(&records, "cancel", "carol", "no longer pending");
    let withdrawn = refusal(&records, "withdraw", "agent:h1", "no longer pending");
    for r in [too_big, already, cancelled, withdrawn] {
        // A refusal changed nothing: no decision, and it is a review-kind record of the request.
        assert_eq!((r.kind, r.decision, r.host.as_str()), (RecordKind::Review, None, "h1"));
        assert_eq!(r.request_id.as_deref(), Some(plain.id.as_str()));
        assert_eq!((r.hook, r.object.as_deref()), (Some(Hook::BprmCheckSecurity), Some("/bin/a")));
    }
    assert_eq!(already.state.as_deref(), Some("denied"), "the request as it was when refused");
    let decisions: Vec<_> = records.iter().filter(|r| r.kind == RecordKind::Decision).collect();
    assert_eq!(decisions.len(), 1, "refusals decide nothing");
    assert_eq!(decisions[0].decision, Some(Decision::Deny));

    let records = records_of(&server, &own.id).await;
    let own_review = refusal(&records, "review", "alice", "alice's own");
    assert_eq!(own_review.state.as_deref(), Some("pending"));
    refusal(&records, "cancel", "alice", "alice's own");
    let records = records_of(&server, &two.id).await;
    refusal(&records, "review", "mallory", "not among the approvers");
    refusal(&records, "review", "alice", "already reviewed");
    let accepted = records.iter().filter(|r| r.kind == RecordKind::Review && r.reason.is_none()).count();
    assert_eq!(accepted, 1, "alice's one accepted review");
    // The other host's attempt is on its own trail, naming the id it tried.
    let h2 = host_records(&server, "h2", RecordKind::Review).await;
    assert_eq!(h2.len(), 1, "only the attempt on a request that exists: {h2:#?}");
    let foreign = refusal(&h2, "withdraw", "agent:h2", "no request");
    assert_eq!((foreign.request_id.as_deref(), foreign.object.as_deref()), (Some(plain.id.as_str()), None));
    server.stop().await;
}

/// Grants made and ended, each a record: by a tree's exit and by its time running out.
async fn grants_are_recorded_when_made_and_when_they_end(server: &Server) {
    let mut agent = server.agent("h1").await;
    let argv_op = op("etc-writes", "8-1", "dev", 2000, "/usr/bin/make");
    let mut stream = agent.submit(submit(argv_op, 30, "")).await.unwrap().into_inner();
    let first = next(&mut stream).await;
    let review = ReviewRequest { id: first.id.clone(), approve: true, comment: "ok".into(), grant_seconds: 600 };
    server.approver("alice").await.review(review).await.unwrap();
    let mut stream =
        agent.submit(submit(op("etc-writes", "8-2", "dev", 2000, "/bin/short"), 30, "")).await.unwrap().into_inner();
    let second = next(&mut stream).await;
    let review = ReviewRequest { id: second.id.clone(), approve: true, comment: "ok".into(), grant_seconds: 1 };
    server.approver("bob").await.review(review).await.unwrap();

    let made =
        records_of(server, &first.id).await.into_iter().find(|r| r.kind == RecordKind::Grant).expect("grant record");
    assert_eq!((made.decision, made.reason), (Some(Decision::Allow), Some(Reason::Approved)));
    assert_eq!((made.host.as_str(), made.tree_id.as_deref()), ("h1", Some("8-1")));
    assert_eq!((made.hook, made.object.as_deref()), (Some(Hook::BprmCheckSecurity), Some("/usr/bin/make")));
    assert_eq!(made.argv, ["/usr/bin/make", "--now"], "an exec grant is bound to its argv");
    assert_eq!((made.approver.as_deref(), made.grant_seconds), (Some("alice"), Some(600)));
    assert_eq!(made.state.as_deref(), Some("active"));
    let comment = made.comment.clone().unwrap();
    assert!(comment.starts_with("grant ") && comment.contains(" until 20"), "{comment}");
    let grant_id = comment.split(' ').nth(1).unwrap().to_string();

    // The tree exits: its grant ends, recorded once.
    let exited = agent.tree_exited(TreeExitedRequest { tree_id: "8-1".into() }).await.unwrap().into_inner();
    assert_eq!(exited.grants_ended, 1);
    agent.tree_exited(TreeExitedRequest { tree_id: "8-1".into() }).await.unwrap();
    let ended: Vec<_> =
        records_of(server, &first.id).await.into_iter().filter(|r| r.state.as_deref() == Some("ended")).collect();
    assert_eq!(ended.len(), 1, "{ended:#?}");
    assert_eq!((ended[0].kind, ended[0].decision, ended[0].reason), (RecordKind::Grant, None, Some(Reason::Exited)));
    assert_eq!(ended[0].comment.as_deref(), Some(format!("grant {grant_id} ended: tree exited").as_str()));
    assert_eq!((ended[0].tree_id.as_deref(), ended[0].approver.as_deref()), (Some("8-1"), Some("alice")));

    // The 1 s grant runs out: the sweeper ends it, recorded once (whatever the replicas).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let expired = loop {
        let ended: Vec<_> =
            records_of(server, &second.id).await.into_iter().filter(|r| r.state.as_deref() == Some("ended")).collect();
        if !ended.is_empty() || std::time::Instant::now() > deadline {
            break ended;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    let again =
        records_of(server, &second.id).await.into_iter().filter(|r| r.state.as_deref() == Some("ended")).count();
    assert_eq!((expired.len(), again), (1, 1), "{expired:#?}");
    assert_eq!((expired[0].reason, expired[0].approver.as_deref()), (Some(Reason::Expired), Some("bob")));
    assert!(expired[0].comment.as_deref().unwrap().ends_with("ended: expired"), "{:?}", expired[0].comment);

    // The search filters, on this backend's JSON functions: alice's allows are her review,
    // the decision and the grant of the first request; the second tree's pending record is
    // its request's creation.
    let query = AuditQuery { decision: "allow".into(), approver: "alice".into(), ..Default::default() };
    let alices: Vec<AuditRecord> =
        audit(server, query).await.iter().map(|e| AuditRecord::from_json(&e.json).unwrap()).collect();
    let kinds: Vec<RecordKind> = alices.iter().map(|r| r.kind).collect();
    assert_eq!(kinds, [RecordKind::Review, RecordKind::Decision, RecordKind::Grant], "{alices:#?}");
    assert!(alices.iter().all(|r| r.request_id.as_deref() == Some(first.id.as_str())));
    let query = AuditQuery { decision: "pending".into(), tree_id: "8-2".into(), ..Default::default() };
    let pending = audit(server, query).await;
    assert_eq!(pending.len(), 1);
    assert_eq!((pending[0].kind.as_str(), pending[0].request_id.as_str()), ("request", second.id.as_str()));
}

#[tokio::test]
async fn grants_are_records_sqlite() {
    let site = Site::new();
    let server = site.start(None).await;
    grants_are_recorded_when_made_and_when_they_end(&server).await;
    server.stop().await;
}

/// A registration records each policy whose hash is new or changed, and nothing for an agent
/// that registers again as it was.
async fn policy_registrations_are_records(server: &Server) {
    let policies = || host_records(server, "h1", RecordKind::Policy);
    let mut agent = server.agent("h1").await;
    let first = policies().await;
    assert_eq!(first.len(), 1, "{first:#?}");
    assert_eq!((first[0].policy.as_deref(), first[0].object.as_deref()), (Some("test"), Some(POLICY_HASH)));
    assert_eq!((first[0].comment.as_deref(), first[0].state.as_deref()), (None, Some("loaded")));

    agent.register(registration(&[("test", POLICY_HASH)])).await.unwrap();
    assert_eq!(policies().await.len(), 1, "the same policy again is no new record");

    let changed = "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";
    agent.register(registration(&[("test", changed), ("extra", POLICY_HASH)])).await.unwrap();
    let all = policies().await;
    assert_eq!(all.len(), 3, "{all:#?}");
    let (extra, test) = (&all[1], &all[2]);
    assert_eq!((extra.policy.as_deref(), extra.comment.as_deref()), (Some("extra"), None));
    assert_eq!((test.policy.as_deref(), test.object.as_deref()), (Some("test"), Some(changed)));
    assert_eq!((test.comment.as_deref(), test.state.as_deref()), (Some(POLICY_HASH), Some("changed")));
    assert!(all.iter().all(|r| r.host == "h1" && r.decision.is_none()));
}

#[tokio::test]
async fn policy_registrations_are_records_sqlite() {
    let site = Site::new();
    let server = site.start(None).await;
    policy_registrations_are_records(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(has_postgres), ignore = "SKIPPED: no PostgreSQL (initdb/pg_ctl) on the build machine")]
async fn grants_and_policies_are_records_postgres() {
    if let Err(why) = find_bindir() {
        panic!("PostgreSQL was installed at build time but is not now: {why}");
    }
    let pg_dir = tempfile::tempdir().expect("tempdir");
    let cluster = PgCluster::start(pg_dir.path(), 5432).expect("PostgreSQL starts");
    let site = Site::new();
    // Two replicas: the expired grant is ended and recorded by one of them only.
    let one = site.start(Some(&cluster.url())).await;
    let two = site.start(Some(&cluster.url())).await;
    policy_registrations_are_records(&one).await;
    grants_are_recorded_when_made_and_when_they_end(&two).await;
    one.stop().await;
    two.stop().await;
    drop(cluster);
}

/// An approver assigned to some hosts only: `limit` counts the events they may see, not the
/// rows read to find them, and the search filters apply to what they see.
#[tokio::test]
async fn the_limit_counts_the_events_an_approver_sees() {
    let site = Site::with(
        guard_server::testing::config::ServerToml::new("pki")
            .default_timeout("30s")
            .approver_in("alice", &[], &["second"])
            .approver("carol", &[])
            .extra("[[host_group]]\nname = \"second\"\nhosts = [\"h2\"]\n"),
    );
    let server = site.start(None).await;
    // 2,500 of h1's records first (more than one page of the store's reads), then three of h2's.
    let record = |host: &str| {
        let mut r = AuditRecord::at(Timestamp::from_unix_ms(1_796_002_226_007), RecordKind::Enforcement, host);
        r.decision = Some(Decision::Deny);
        r.rule = Some("r".into());
        r
    };
    let mut h1 = server.agent("h1").await;
    let mut spool = TestSpool::new("s1");
    for n in [250; 10] {
        let records: Vec<_> = (0..n).map(|_| spool.seal(record("h1"))).collect();
        let reply = h1.report_records(ReportRecordsRequest { records: wire(&records) }).await.unwrap().into_inner();
        assert_eq!(reply.refused, None);
    }
    let mut spool = TestSpool::new("s1");
    let records: Vec<_> = (0..3).map(|_| spool.seal(record("h2"))).collect();
    server.agent("h2").await.report_records(ReportRecordsRequest { records: wire(&records) }).await.unwrap();

    let query = |limit: u32, rule: &str| AuditQuery { limit, rule: rule.into(), ..Default::default() };
    let seen = |events: Vec<guard_proto::v1::AuditEvent>| events.iter().map(|e| e.host.clone()).collect::<Vec<_>>();
    let all: Vec<_> = server.auditor("alice").await.query(query(2, "r")).await.unwrap().into_inner().collect().await;
    let all: Vec<_> = all.into_iter().map(|e| e.unwrap()).collect();
    assert_eq!(seen(all), ["h2", "h2"], "two of the events alice sees, past h1's 2,500");
    let all: Vec<_> = server.auditor("alice").await.query(query(0, "r")).await.unwrap().into_inner().collect().await;
    assert_eq!(all.len(), 3);
    let none: Vec<_> =
        server.auditor("alice").await.query(query(5, "other")).await.unwrap().into_inner().collect().await;
    assert!(none.is_empty());
    // carol is in no host group: with groups configured, she sees nothing, however many rows.
    let carol: Vec<_> = server.auditor("carol").await.query(query(2, "r")).await.unwrap().into_inner().collect().await;
    assert!(carol.is_empty());
    server.stop().await;
}
