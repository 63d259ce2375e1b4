//! One audit record type end to end: what an agent reports comes out of the audit trail as
//! the same `guard_api::AuditRecord`, and the server's own rows are that type too.
mod common;

use common::*;
use guard_api::{Action, AuditRecord, Decision, Hook, Reason, RecordKind, StatedReason, Timestamp};
use guard_proto::v1::{AuditEvent, AuditQuery, ReportRecordsRequest, ReviewRequest};
use tokio_stream::StreamExt;

async fn audit(server: &Server, query: AuditQuery) -> Vec<AuditEvent> {
    let events: Vec<_> = server.auditor("carol").await.query(query).await.unwrap().into_inner().collect().await;
    events.into_iter().map(|e| e.unwrap()).collect()
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

    let events = audit(&server, AuditQuery { host: "h1".into(), ..Default::default() }).await;
    assert_eq!(events.len(), 1);
    assert_eq!(AuditRecord::from_json(&events[0].json).unwrap(), sent);

    // A record naming another host than the certificate's is refused, not rewritten: the
    // server never changes what the agent's chain covers.
    let records = wire(&[spool.seal(full_record("not-h1"))]);
    let reply = server.agent("h1").await.report_records(ReportRecordsRequest { records }).await.unwrap().into_inner();
    let refused = reply.refused.expect("refused");
    assert!(refused.message.contains("records[0].host") && refused.message.contains("not-h1"), "{}", refused.message);
    assert_eq!(audit(&server, AuditQuery { host: "h1".into(), ..Default::default() }).await.len(), 1);
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
    assert_eq!(kinds, [RecordKind::Request, RecordKind::Review, RecordKind::Decision]);
    for (e, r) in events.iter().zip(&records) {
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
