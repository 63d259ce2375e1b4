//! The server over SQLite, through real mTLS clients.
mod common;

use common::*;
use guard_api::{AuditRecord, Decision, RecordKind};
use guard_proto::v1::{
    AuditQuery, AwaitRequest, CancelRequestRequest, GetRequestRequest, ListRequestsRequest, Operation, Record,
    ReportRecordsRequest, ReviewRequest, State, TreeExitedRequest, WatchPendingRequest, WhoAmIRequest, WithdrawRequest,
};
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;

fn review(id: &str, approve: bool) -> ReviewRequest {
    ReviewRequest { id: id.into(), approve, comment: "ok".into(), grant_seconds: 0 }
}

#[tokio::test]
async fn approve_once_streams_pending_then_approved_and_audits() {
    let site = Site::new();
    let server = site.start(None).await;
    let mut agent = server.agent("h1").await;
    let mut stream =
        agent.submit(submit(op("etc-writes", "100-1", "dev", 2000, "/usr/bin/vi"), 30, "")).await.unwrap().into_inner();
    let created = next(&mut stream).await;
    assert_eq!(state(&created), State::Pending);
    assert_eq!(created.host, "h1");
    assert_eq!(created.id.len(), 10);
    assert_eq!(created.approvals_required, 1);
    assert!(created.expires_ms > created.created_ms + 29_000);

    let reviewed = server.approver("alice").await.review(review(&created.id, true)).await.unwrap().into_inner();
    assert_eq!(state(&reviewed), State::Approved);
    let last = next(&mut stream).await;
    assert_eq!(state(&last), State::Approved);
    assert_eq!((last.reason.as_str(), last.decided_by.as_str()), ("approved", "alice"));
    assert_eq!(last.reviews.len(), 1);
    ends(&mut stream).await;

    let query = AuditQuery { request_id: created.id.clone(), ..Default::default() };
    let events: Vec<_> = server.auditor("bob").await.query(query).await.unwrap().into_inner().collect().await;
    let events: Vec<_> = events.into_iter().map(|e| e.unwrap()).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["request", "review", "decision"]);
    let decision: serde_json::Value = serde_json::from_str(&events[2].json).unwrap();
    for field in [
        "time",
        "host",
        "decision",
        "reason",
        "rule",
        "hook",
        "pid",
        "ppid",
        "exe",
        "argv",
        "object",
        "request_id",
        "approver",
    ] {
        assert!(decision.get(field).is_some(), "audit json lacks {field}: {decision}");
    }
    assert_eq!(decision["decision"], "allow");
    assert_eq!(decision["approver"], "alice");
    assert_eq!(decision["pid"], 4242);
    assert!(events.windows(2).all(|w| w[1].seq > w[0].seq));
    server.stop().await;
}

#[tokio::test]
async fn deny_decides_at_once() {
    let site = Site::new();
    let server = site.start(None).await;
    let mut stream = server
        .agent("h1")
        .await
        .submit(submit(op("r", "1-1", "dev", 2000, "/bin/x"), 30, ""))
        .await
        .unwrap()
        .into_inner();
    let created = next(&mut stream).await;
    let mut r = review(&created.id, false);
    r.comment = "no".into();
    server.approver("bob").await.review(r).await.unwrap();
    let last = next(&mut stream).await;
    assert_eq!(state(&last), State::Denied);
    assert_eq!((last.reason.as_str(), last.decided_by.as_str(), last.comment.as_str()), ("denied", "bob", "no"));
    ends(&mut stream).await;
}

#[tokio::test]
async fn n_of_m_needs_distinct_eligible_approvers() {
    let site = Site::new();
    let server = site.start(None).await;
    let mut stream = server
        .agent("h1")
        .await
        .submit(submit(op("prod-deploy", "1-1", "dev", 2000, "/usr/bin/kubectl"), 30, ""))
        .await
        .unwrap()
        .into_inner();
    let created = next(&mut stream).await;
    assert_eq!(created.approvals_required, 2);
    assert_eq!(created.eligible_approvers, ["alice", "bob", "carol"]);

    let after_one = server.approver("alice").await.review(review(&created.id, true)).await.unwrap().into_inner();
    assert_eq!(state(&after_one), State::Pending);
    // Same approver again: one approval is not two.
    let again = server.approver("alice").await.review(review(&created.id, true)).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    let details = again.get_error_details();
    let violation = &details.precondition_failure().expect("PreconditionFailure detail").violations[0];
    assert_eq!(violation.r#type, "ALREADY_REVIEWED");
    // Not an eligible approver of this rule.
    let stranger = server.approver("mallory").await.review(review(&created.id, true)).await.unwrap_err();
    assert_eq!(stranger.code(), Code::PermissionDenied, "{stranger:?}");

    let done = server.approver("carol").await.review(review(&created.id, true)).await.unwrap().into_inner();
    assert_eq!(state(&done), State::Approved);
    assert_eq!(done.decided_by, "carol");
    let last = next(&mut stream).await;
    assert_eq!(state(&last), State::Approved);
    assert_eq!(last.reviews.len(), 2);
    ends(&mut stream).await;
}

/// A grant covers exactly what the approver saw (issue 9 item 5): a read grant is not a write
/// grant, an exec grant names its argv, and an exec whose argv was cut short gets none.
#[tokio::test]
async fn grant_binds_access_and_argv() {
    let site = Site::new();
    let server = site.start(None).await;
    let mut agent = server.agent("h1").await;
    let approve_for_a_minute = |id: &str| {
        let mut r = review(id, true);
        r.grant_seconds = 60;
        r
    };
    let file = |access: &str| Operation {
        hook: "file_open".into(),
        access: access.into(),
        ..op("secrets", "100-7", "dev", 2000, "/etc/app/key")
    };
    let mut first = agent.submit(submit(file("read"), 30, "")).await.unwrap().into_inner();
    let created = next(&mut first).await;
    server.approver("alice").await.review(approve_for_a_minute(&created.id)).await.unwrap();
    assert_eq!(state(&next(&mut first).await), State::Approved);
    let mut again = agent.submit(submit(file("read"), 30, "")).await.unwrap().into_inner();
    assert_eq!(next(&mut again).await.reason, "grant", "the same read is granted");
    let mut write = agent.submit(submit(file("write"), 30, "")).await.unwrap().into_inner();
    assert_eq!(state(&next(&mut write).await), State::Pending, "a read grant covered a write");

    let exec = |args: &[&str], truncated: bool| {
        let mut o = op("kubectl", "100-7", "dev", 2000, "/usr/bin/kubectl");
        o.ancestry[0].argv = args.iter().map(|a| a.to_string()).collect();
        o.ancestry[0].argv_truncated = truncated;
        o
    };
    let get = ["kubectl", "get", "pods"];
    let mut first = agent.submit(submit(exec(&get, false), 30, "")).await.unwrap().into_inner();
    let created = next(&mut first).await;
    server.approver("alice").await.review(approve_for_a_minute(&created.id)).await.unwrap();
    assert_eq!(state(&next(&mut first).await), State::Approved);
    let mut same = agent.submit(submit(exec(&get, false), 30, "")).await.unwrap().into_inner();
    assert_eq!(next(&mut same).await.reason, "grant", "the same argv is granted");
    for other in [&["kubectl", "delete", "pods"][..], &["kubectl", "get pods"], &["kubectl", "get", "pods", "-A"]] {
        let mut s = agent.submit(submit(exec(other, false), 30, "")).await.unwrap().into_inner();
        assert_eq!(state(&next(&mut s).await), State::Pending, "the grant for {get:?} covered {other:?}");
    }
    let mut cut = agent.submit(submit(exec(&get, true), 30, "")).await.unwrap().into_inner();
    assert_eq!(state(&next(&mut cut).await), State::Pending, "a grant covered an argv nobody saw whole");
}

#[tokio::test]
async fn grant_covers_same_tree_only_and_ends_with_the_tree() {
    let site = Site::new();
    let server = site.start(None).await;
    let mut agent = server.agent("h1").await;
    let kubectl = || op("kubectl", "100-7", "dev", 2000, "/usr/bin/kubectl");
    let mut first = agent.submit(submit(kubectl(), 30, "")).await.unwrap().into_inner();
    let created = next(&mut first).await;
    let mut r = review(&created.id, true);
    r.grant_seconds = 60;
    server.approver("alice").await.review(r).await.unwrap();
    assert_eq!(state(&next(&mut first).await), State::Approved);

    // Same host, tree, hook, object: approved at creation by the grant.
    let mut second = agent.submit(submit(kubectl(), 30, "")).await.unwrap().into_inner();
    let granted = next(&mut second).await;
    assert_eq!(state(&granted), State::Approved);
    assert_eq!((granted.reason.as_str(), granted.decided_by.as_str()), ("grant", "alice"));
    ends(&mut second).await;

    // Another tree: asks again.
    let mut other = agent
        .submit(submit(op("kubectl", "200-1", "dev", 2000, "/usr/bin/kubectl"), 30, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&next(&mut other).await), State::Pending);
    // Another host, same tree id: asks again.
    let mut h2 = server.agent("h2").await.submit(submit(kubectl(), 30, "")).await.unwrap().into_inner();
    assert_eq!(state(&next(&mut h2).await), State::Pending);

    let ended = agent.tree_exited(TreeExitedRequest { tree_id: "100-7".into() }).await.unwrap().into_inner();
    assert_eq!(ended.grants_ended, 1);
    let mut third = agent.submit(submit(kubectl(), 30, "")).await.unwrap().into_inner();
    assert_eq!(state(&next(&mut third).await), State::Pending);

    // A grant goes only with an approval.
    let mut deny_grant = review(&created.id, false);
    deny_grant.grant_seconds = 10;
    let err = server.approver("bob").await.review(deny_grant).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn expiry_then_review_is_failed_precondition() {
    let site = Site::new();
    let server = site.start(None).await;
    let mut stream = server
        .agent("h1")
        .await
        .submit(submit(op("r", "1-1", "dev", 2000, "/bin/x"), 1, ""))
        .await
        .unwrap()
        .into_inner();
    let created = next(&mut stream).await;
    let last = next(&mut stream).await;
    assert_eq!(state(&last), State::Expired);
    assert_eq!(last.reason, "expired");
    ends(&mut stream).await;
    let err = server.approver("alice").await.review(review(&created.id, true)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.get_error_details().precondition_failure().is_some());
    let got =
        server.approver("alice").await.get_request(GetRequestRequest { id: created.id }).await.unwrap().into_inner();
    assert_eq!(state(&got), State::Expired);
}

#[tokio::test]
async fn unknown_ids_are_not_found() {
    let site = Site::new();
    let server = site.start(None).await;
    let mut alice = server.approver("alice").await;
    for id in ["aaaaaaaaaa", "nope", "'; DROP TABLE requests; --"] {
        let err = alice.review(review(id, true)).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{id}: {err:?}");
        let err = alice.get_request(GetRequestRequest { id: id.into() }).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
    let err = server.agent("h1").await.r#await(AwaitRequest { id: "aaaaaaaaaa".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn roles_come_from_certificates() {
    let site = Site::new();
    let server = site.start(None).await;
    // An agent certificate cannot review.
    let mut as_agent =
        guard_proto::v1::review_service_client::ReviewServiceClient::new(server.channel("agent-h1").await);
    let err = as_agent.review(review("aaaaaaaaaa", true)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("approver") && err.message().contains("agent"), "{}", err.message());
    let who = as_agent.who_am_i(WhoAmIRequest {}).await.unwrap().into_inner();
    assert_eq!((who.name.as_str(), who.role.as_str()), ("h1", "agent"));
    // An approver certificate cannot submit.
    let mut as_approver =
        guard_proto::v1::agent_service_client::AgentServiceClient::new(server.channel("approver-alice").await);
    let err = as_approver.submit(submit(op("r", "1-1", "dev", 2000, "/bin/x"), 30, "")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("guard-agent") && err.message().contains("alice"), "{}", err.message());
    // Nor can an agent read the audit trail.
    let mut audit = guard_proto::v1::audit_service_client::AuditServiceClient::new(server.channel("agent-h1").await);
    assert_eq!(audit.query(AuditQuery::default()).await.unwrap_err().code(), Code::PermissionDenied);
}

#[tokio::test]
async fn nobody_approves_their_own_tree() {
    let site = Site::new();
    let server = site.start(None).await;
    let mut agent = server.agent("h1").await;
    // By user name, by uid listed in unix_users, and by approver name = user.
    for (user, uid) in [("alice", 2000), ("someone", 1000)] {
        let mut s = agent.submit(submit(op("r", "1-1", user, uid, "/bin/x"), 30, "")).await.unwrap().into_inner();
        let created = next(&mut s).await;
        let err = server.approver("alice").await.review(review(&created.id, true)).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{user}/{uid}: {err:?}");
        // Someone else may.
        server.approver("bob").await.review(review(&created.id, true)).await.unwrap();
    }
    let mut s = agent.submit(submit(op("r", "1-1", "mallory", 3000, "/bin/x"), 30, "")).await.unwrap().into_inner();
    let created = next(&mut s).await;
    let err = server.approver("mallory").await.review(review(&created.id, true)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn certificates_from_another_ca_are_refused() {
    let site = Site::new();
    let server = site.start(None).await;
    let other = Site::new();
    // Trusts our server's CA but presents a certificate from another CA.
    let refused = async {
        let channel = channel_with(server.addr(), &site.pki(), &other.pki(), "agent-h1").await?;
        let mut agent = guard_proto::v1::agent_service_client::AgentServiceClient::new(channel);
        agent.register(guard_proto::v1::RegisterRequest::default()).await.map_err(|e| e.into())
    };
    let result: Result<_, Box<dyn std::error::Error>> = refused.await;
    assert!(result.is_err(), "a foreign client certificate must be refused");
    // And a client without a certificate at all.
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(site.pki().join("ca.crt")).unwrap()))
        .domain_name("localhost");
    let bare = async {
        let channel = tonic::transport::Channel::from_shared(format!("https://{}", server.addr()))?
            .tls_config(tls)?
            .connect()
            .await?;
        let mut agent = guard_proto::v1::agent_service_client::AgentServiceClient::new(channel);
        agent.register(guard_proto::v1::RegisterRequest::default()).await.map_err(|e| e.into())
    };
    let result: Result<_, Box<dyn std::error::Error>> = bare.await;
    assert!(result.is_err(), "a client without a certificate must be refused");
}

#[tokio::test]
async fn invalid_submissions_are_refused_and_not_stored() {
    let site = Site::new();
    let server = site.start(None).await;
    let mut agent = server.agent("h1").await;
    let mut no_op = submit(op("r", "1-1", "dev", 2000, "/bin/x"), 30, "");
    no_op.operation = None;
    let mut big_object = op("r", "1-1", "dev", 2000, "/bin/x");
    big_object.object = "/".repeat(5000);
    let mut long_argv = op("r", "1-1", "dev", 2000, "/bin/x");
    long_argv.ancestry[0].argv = vec!["a".into(); 65];
    let mut no_hook = op("r", "1-1", "dev", 2000, "/bin/x");
    no_hook.hook.clear();
    // The proto's old vocabulary ("exec", "open") is not a kernel hook name.
    let mut old_hook = op("r", "1-1", "dev", 2000, "/bin/x");
    old_hook.hook = "exec".into();
    let cases = [
        (no_op, "operation"),
        (submit(big_object, 30, ""), "operation.object"),
        (submit(long_argv, 30, ""), "operation.ancestry[0].argv"),
        (submit(no_hook, 30, ""), "operation.hook"),
        (submit(old_hook, 30, ""), "operation.hook"),
    ];
    for (request, field) in cases {
        let err = agent.submit(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        let details = err.get_error_details();
        let bad = details.bad_request().expect("BadRequest detail");
        assert!(bad.field_violations.iter().any(|v| v.field == field), "{field}: {:?}", bad.field_violations);
    }
    // Over the whole-message limit: refused by the codec before any handler.
    let mut huge = op("r", "1-1", "dev", 2000, "/bin/x");
    huge.ancestry =
        (0..64).map(|_| guard_proto::v1::Process { argv: vec!["x".repeat(4096); 2], ..Default::default() }).collect();
    let err = agent.submit(submit(huge, 30, "")).await.unwrap_err();
    // tonic's codec answers OUT_OF_RANGE for a message over max_decoding_message_size.
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    let stored =
        server.approver("alice").await.list_requests(ListRequestsRequest::default()).await.unwrap().into_inner();
    assert!(stored.requests.is_empty(), "nothing stored: {:?}", stored.requests);
}

#[tokio::test]
async fn hosts_see_only_their_own_requests() {
    let site = Site::new();
    let server = site.start(None).await;
    let mut h1 = server.agent("h1").await;
    let mut h2 = server.agent("h2").await;
    let mut s = h1.submit(submit(op("r", "1-1", "dev", 2000, "/bin/x"), 30, "hold-1")).await.unwrap().into_inner();
    let created = next(&mut s).await;
    assert_eq!(created.host, "h1");
    let id = created.id.clone();
    assert_eq!(h2.r#await(AwaitRequest { id: id.clone() }).await.unwrap_err().code(), Code::NotFound);
    let withdraw = |why: &str| WithdrawRequest { id: id.clone(), why: why.into() };
    assert_eq!(h2.withdraw(withdraw("agent-stopped")).await.unwrap_err().code(), Code::NotFound);
    // Same host, same hold key: the same request, not a new one.
    let mut again = h1.submit(submit(op("r", "1-1", "dev", 2000, "/bin/x"), 30, "hold-1")).await.unwrap().into_inner();
    assert_eq!(next(&mut again).await.id, id);
    // Another host may use the same hold key.
    let mut other = h2.submit(submit(op("r", "1-1", "dev", 2000, "/bin/x"), 30, "hold-1")).await.unwrap().into_inner();
    assert_ne!(next(&mut other).await.id, id);

    let mut attached = h1.r#await(AwaitRequest { id: id.clone() }).await.unwrap().into_inner();
    assert_eq!(state(&next(&mut attached).await), State::Pending);
    let withdrawn = h1.withdraw(withdraw("process-exited")).await.unwrap().into_inner();
    assert_eq!(state(&withdrawn), State::Cancelled);
    assert_eq!(state(&next(&mut attached).await), State::Cancelled);
    ends(&mut attached).await;
    assert_eq!(h1.withdraw(withdraw("bogus")).await.unwrap_err().code(), Code::InvalidArgument);
}

#[tokio::test]
async fn auto_rules_decide_without_a_person() {
    let site = Site::new();
    let server = site.start(None).await;
    let mut agent = server.agent("h1").await;
    for (rule, expected) in [("bench-auto", State::Approved), ("auto-deny", State::Denied)] {
        let mut s = agent.submit(submit(op(rule, "1-1", "dev", 2000, "/bin/x"), 30, "")).await.unwrap().into_inner();
        let first = next(&mut s).await;
        assert_eq!(state(&first), expected);
        assert_eq!(first.reason, "auto");
        ends(&mut s).await;
    }
}

async fn next_event(watch: &mut tonic::Streaming<guard_proto::v1::RequestEvent>) -> guard_proto::v1::RequestEvent {
    tokio::time::timeout(Duration::from_secs(10), watch.next()).await.expect("event").expect("open").expect("ok")
}

#[tokio::test]
async fn watch_pending_sees_snapshot_changes_and_decisions() {
    let site = Site::new();
    let server = site.start(None).await;
    let mut agent = server.agent("h1").await;
    let mut s1 =
        agent.submit(submit(op("prod-deploy", "1-1", "dev", 2000, "/bin/a"), 30, "")).await.unwrap().into_inner();
    let before = next(&mut s1).await;
    let mut watch = server.approver("carol").await.watch_pending(WatchPendingRequest {}).await.unwrap().into_inner();
    let snap = next_event(&mut watch).await;
    assert_eq!((snap.kind.as_str(), snap.request.unwrap().id), ("snapshot", before.id.clone()));
    let mut s2 = agent.submit(submit(op("r", "1-1", "dev", 2000, "/bin/b"), 30, "")).await.unwrap().into_inner();
    let created = next(&mut s2).await;
    let ev = next_event(&mut watch).await;
    assert_eq!((ev.kind.as_str(), ev.request.unwrap().id), ("created", created.id.clone()));
    server.approver("alice").await.review(review(&before.id, true)).await.unwrap();
    let ev = next_event(&mut watch).await;
    assert_eq!((ev.kind.as_str(), ev.request.unwrap().id), ("reviewed", before.id.clone()));
    let cancel = CancelRequestRequest { id: created.id.clone(), comment: "not today".into() };
    let cancelled = server.approver("bob").await.cancel_request(cancel.clone()).await.unwrap().into_inner();
    assert_eq!(state(&cancelled), State::Cancelled);
    let ev = next_event(&mut watch).await;
    assert_eq!(ev.kind, "decided");
    assert_eq!(state(&ev.request.unwrap()), State::Cancelled);
    // Cancelling again: no longer pending.
    let err = server.approver("bob").await.cancel_request(cancel).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn records_are_stored_once_in_chain_order_and_a_bad_one_stops_the_batch() {
    let site = Site::new();
    let server = site.start(None).await;
    let mut agent = server.agent("h2").await;
    let record = |object: &str| {
        let mut r = AuditRecord::new(RecordKind::Enforcement, "h2");
        r.decision = Some(Decision::Deny);
        r.rule = Some("no-metadata".into());
        r.object = Some(object.into());
        r
    };
    let mut spool = TestSpool::new("s1");
    let first = [spool.seal(record("a")), spool.seal(record("b"))];
    let reply = agent.report_records(ReportRecordsRequest { records: wire(&first) }).await.unwrap().into_inner();
    assert_eq!((reply.accepted, reply.stored[0].seq, reply.refused), (2, 2, None));

    // A resend (the agent died before it saw the answer) stores nothing twice.
    let third = spool.seal(record("c"));
    let again = [first[0].clone(), first[1].clone(), third.clone()];
    let reply = agent.report_records(ReportRecordsRequest { records: wire(&again) }).await.unwrap().into_inner();
    assert_eq!((reply.accepted, reply.stored[0].seq), (1, 3));

    // A batch with an unreadable record: the records before it are stored, it is refused with
    // the field named, nothing after it is stored.
    let fourth = spool.seal(record("d"));
    let mut colour: serde_json::Value = serde_json::from_str(&fourth.to_json()).unwrap();
    colour.as_object_mut().unwrap().insert("colour".into(), "red".into());
    let fifth = spool.seal(record("e"));
    let bad = vec![
        Record { json: fourth.to_json() },
        Record { json: "[1]".into() },
        Record { json: colour.to_string() },
        Record { json: fifth.to_json() },
    ];
    let reply = agent.report_records(ReportRecordsRequest { records: bad }).await.unwrap().into_inner();
    let refused = reply.refused.expect("refused");
    assert_eq!((reply.accepted, reply.stored[0].seq), (1, 4));
    assert!(refused.message.starts_with("records[1].json: "), "{}", refused.message);
    assert_eq!((refused.stream.as_str(), refused.seq), ("s1", 5));

    // A gap (seq 5 never arrived) and a changed record are refused, each naming the field.
    let sixth = spool.seal(record("f"));
    let reply = agent.report_records(ReportRecordsRequest { records: wire(&[sixth]) }).await.unwrap().into_inner();
    let refused = reply.refused.expect("a gap is refused");
    assert!(refused.message.starts_with("chain.seq: 6 does not follow seq 4"), "{}", refused.message);
    let mut changed = fifth.clone();
    changed.object = Some("changed after sealing".into());
    let reply = agent.report_records(ReportRecordsRequest { records: wire(&[changed]) }).await.unwrap().into_inner();
    assert!(reply.refused.expect("refused").message.starts_with("records[0].chain.hash"));
    let mut unchained = fifth.clone();
    unchained.chain = None;
    let reply = agent.report_records(ReportRecordsRequest { records: wire(&[unchained]) }).await.unwrap().into_inner();
    assert!(reply.refused.expect("refused").message.starts_with("records[0].chain: missing"));

    let reply = agent.report_records(ReportRecordsRequest { records: wire(&[fifth]) }).await.unwrap().into_inner();
    assert_eq!((reply.accepted, reply.stored[0].seq, reply.refused), (1, 5, None));

    let events: Vec<_> = server
        .auditor("alice")
        .await
        .query(AuditQuery { host: "h2".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    let events: Vec<_> = events.into_iter().map(|e| e.unwrap()).collect();
    assert_eq!(events[0].kind, "policy", "its registration first");
    let objects: Vec<String> = events[1..]
        .iter()
        .map(|e| {
            assert_eq!(e.kind, "record");
            AuditRecord::from_json(&e.json).unwrap().object.unwrap()
        })
        .collect();
    assert_eq!(objects, ["a", "b", "c", "d", "e"], "each once, in chain order");
    server.stop().await;
}

#[tokio::test]
async fn bad_config_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:0\"\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\ncolour = \"blue\"\n",
    )
    .unwrap();
    let err = guard_server::config::ServerConfig::load(&path).unwrap_err().to_string();
    assert!(err.contains("server.toml:6:1"), "{err}");
    assert!(err.contains("colour"), "{err}");
}
