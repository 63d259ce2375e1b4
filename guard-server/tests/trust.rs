//! Issue 10, item 6: what the server trusts, through real mTLS clients on SQLite. Each test
//! fails if its rule is removed: the refused effect would happen (a self-approval, an
//! auto-approval of a renamed rule, a cancel by someone who may not deny, a grant longer
//! than one approver consented to, another host's request shown, a secret stored, an
//! unbounded stream of requests).
mod common;

use common::*;
use guard_proto::v1::{
    AuditQuery, CancelRequestRequest, GetRequestRequest, ListRequestsRequest, Operation, Process, ReportRecordsRequest,
    Request, ReviewRequest, State, WatchPendingRequest,
};
use guard_server::testing::config::ServerToml;
use sqlx::{Connection, Row, SqliteConnection};
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;

fn review(id: &str, approve: bool, grant_seconds: u64) -> ReviewRequest {
    ReviewRequest { id: id.into(), approve, comment: "ok".into(), grant_seconds }
}

/// Submits `operation` from `host`'s (registered) agent and returns the request as created.
async fn create(server: &Server, host: &str, operation: Operation) -> Request {
    let mut stream = server.agent(host).await.submit(submit(operation, 30, "")).await.unwrap().into_inner();
    next(&mut stream).await
}

async fn get(server: &Server, who: &str, id: &str) -> Result<Request, tonic::Status> {
    server.approver(who).await.get_request(GetRequestRequest { id: id.into() }).await.map(|r| r.into_inner())
}

fn field_of(status: &tonic::Status) -> String {
    status.get_error_details().bad_request().map(|b| b.field_violations[0].field.clone()).unwrap_or_default()
}

#[tokio::test]
async fn separation_of_duties_keys_on_the_trees_owner_not_the_acting_uid() {
    let site = Site::new();
    let server = site.start(None).await;
    // alice logged in and started the tree; it acts as root (sudo in the tree, or `run` as root).
    let mut op_root = op("r", "7-1", "root", 0, "/usr/bin/systemctl");
    (op_root.owner, op_root.owner_uid) = ("alice".into(), 1000);
    let created = create(&server, "h1", op_root.clone()).await;
    assert_eq!(created.operation.as_ref().unwrap().owner, "alice");
    let refused = server.approver("alice").await.review(review(&created.id, true, 0)).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("owned by alice"), "{}", refused.message());
    assert_eq!(state(&get(&server, "bob", &created.id).await.unwrap()), State::Pending, "not decided");

    // By the owner's uid alone (the host calls uid 1000 something else).
    let mut by_uid = op_root.clone();
    (by_uid.owner, by_uid.tree_id) = ("a1000".into(), "8-1".into());
    let created2 = create(&server, "h1", by_uid).await;
    let refused = server.approver("alice").await.review(review(&created2.id, false, 0)).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "a deny is a decision too: {refused:?}");

    // Someone else decides.
    let approved = server.approver("bob").await.review(review(&created.id, true, 0)).await.unwrap().into_inner();
    assert_eq!(state(&approved), State::Approved);

    // A submission without an owner is refused and not stored: nobody could be refused on it.
    let mut no_owner = op_root;
    no_owner.owner.clear();
    let err = server.agent("h1").await.submit(submit(no_owner, 30, "")).await.unwrap_err();
    assert_eq!((err.code(), field_of(&err).as_str()), (Code::InvalidArgument, "operation.owner"), "{err:?}");
    server.stop().await;
}

#[tokio::test]
async fn the_server_matches_require_and_auto_on_host_policy_and_rule() {
    let config = config().extra(
        "[[require]]\nhost = \"h1\"\npolicy = \"test\"\nrule = \"deploy-*\"\napprovals = 2\napprovers = [\"alice\", \"bob\", \"carol\"]\n\
         [[auto]]\nhost = \"h2\"\nrule = \"deploy-*\"\ndecision = \"approve\"\n",
    );
    let site = Site::with(config);
    let server = site.start(None).await;
    // h1, policy test, rule deploy-web: two of three.
    let on_h1 = create(&server, "h1", op("deploy-web", "1-1", "dev", 2000, "/usr/bin/kubectl")).await;
    assert_eq!((state(&on_h1), on_h1.approvals_required), (State::Pending, 2));
    assert_eq!(on_h1.eligible_approvers, ["alice", "bob", "carol"]);
    // The same rule name from h2 is auto-approved: the host is the certificate's, not a field.
    let on_h2 = create(&server, "h2", op("deploy-web", "1-1", "dev", 2000, "/usr/bin/kubectl")).await;
    assert_eq!((state(&on_h2), on_h2.reason.as_str()), (State::Approved, "auto"));
    // On h1 under another policy the [[require]] does not apply (and neither does h2's auto).
    let mut other = op("deploy-web", "1-1", "dev", 2000, "/usr/bin/kubectl");
    other.policy = "other".into();
    let mut agent = server.agent("h1").await;
    agent.register(registration(&[("test", POLICY_HASH), ("other", POLICY_HASH)])).await.unwrap();
    let mut stream = agent.submit(submit(other, 30, "")).await.unwrap().into_inner();
    let plain = next(&mut stream).await;
    assert_eq!((state(&plain), plain.approvals_required), (State::Pending, 1));
    server.stop().await;
}

#[tokio::test]
async fn hosts_register_policy_hashes_and_a_changed_policy_is_flagged_not_auto_approved() {
    let site = Site::new();
    let server = site.start(None).await;
    // The registered hash: bench-auto is approved by the server's [[auto]].
    let same = create(&server, "h1", op("bench-auto", "1-1", "dev", 2000, "/bin/true")).await;
    assert_eq!((state(&same), same.flags.len()), (State::Approved, 0));
    // The tree edited the policy (renamed its ask rule to the auto rule's name) and the agent
    // reloaded it: the hash differs from the registered one.
    let mut renamed = op("bench-auto", "1-1", "dev", 2000, "/bin/true");
    renamed.policy_hash = format!("sha256:{}", "e".repeat(64));
    let flagged = create(&server, "h1", renamed.clone()).await;
    assert_eq!(state(&flagged), State::Pending, "no auto decision on an unregistered policy");
    assert_eq!(flagged.flags.len(), 1);
    assert!(
        flagged.flags[0].starts_with("policy-changed: policy \"test\" is sha256:eeeeeeeeeeee"),
        "{:?}",
        flagged.flags
    );
    // Stored: shown the same way later.
    assert_eq!(get(&server, "bob", &flagged.id).await.unwrap().flags, flagged.flags);

    // Registration input is checked and named.
    let err = server.unregistered_agent("h1").await.register(registration(&[("test", "md5:abc")])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(field_of(&err), "policy_hashes[\"test\"]");
    server.stop().await;

    // Under policy_changed = "refuse" the submission is refused, and from a host that never
    // registered it waits (FAILED_PRECONDITION: the agent retries until it has registered).
    let strict = Site::with(config().top("policy_changed = \"refuse\""));
    let server = strict.start(None).await;
    let refused = server.agent("h1").await.submit(submit(renamed, 30, "")).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("policy_changed"), "{}", refused.message());
    let early = server
        .unregistered_agent("h2")
        .await
        .submit(submit(op("r", "1-1", "dev", 2000, "/bin/x"), 30, ""))
        .await
        .unwrap_err();
    assert_eq!(early.code(), Code::FailedPrecondition, "{early:?}");
    let listed = server.approver("bob").await.list_requests(ListRequestsRequest::default()).await.unwrap();
    assert!(listed.into_inner().requests.is_empty(), "refused submissions are not stored");
    server.stop().await;
}

#[tokio::test]
async fn cancelling_needs_the_same_eligibility_as_denying() {
    let site = Site::new();
    let server = site.start(None).await;
    let cancel = |id: &str| CancelRequestRequest { id: id.into(), comment: "stop".into() };
    // prod-deploy: alice, bob or carol. mallory may not deny it, so she may not cancel it.
    let prod = create(&server, "h1", op("prod-deploy", "1-1", "dev", 2000, "/usr/bin/kubectl")).await;
    let err = server.approver("mallory").await.cancel_request(cancel(&prod.id)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(state(&get(&server, "bob", &prod.id).await.unwrap()), State::Pending, "still pending");
    // A tree alice owns: alice may not cancel (that is denying her own request).
    let hers = create(&server, "h1", op("r", "2-1", "alice", 1000, "/bin/x")).await;
    let err = server.approver("alice").await.cancel_request(cancel(&hers.id)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(state(&get(&server, "bob", &hers.id).await.unwrap()), State::Pending, "still pending");
    // An eligible approver may.
    let done = server.approver("bob").await.cancel_request(cancel(&prod.id)).await.unwrap().into_inner();
    assert_eq!((state(&done), done.decided_by.as_str()), (State::Cancelled, "bob"));
    server.stop().await;
}

async fn grant_seconds_in_db(site: &Site, request_id: &str) -> Option<i64> {
    let mut conn = SqliteConnection::connect(&site.db_url()).await.unwrap();
    sqlx::query("SELECT expires_ms - created_ms AS ms FROM grants WHERE request_id = $1")
        .bind(request_id)
        .fetch_optional(&mut conn)
        .await
        .unwrap()
        .map(|r| r.get::<i64, _>("ms") / 1000)
}

#[tokio::test]
async fn in_n_of_m_the_grant_is_the_smallest_any_approver_granted() {
    let site = Site::new();
    let server = site.start(None).await;
    // alice grants a minute, then carol, who completes it, an hour: a minute.
    let first = create(&server, "h1", op("prod-deploy", "5-1", "dev", 2000, "/usr/bin/kubectl")).await;
    server.approver("alice").await.review(review(&first.id, true, 60)).await.unwrap();
    let done = server.approver("carol").await.review(review(&first.id, true, 3600)).await.unwrap().into_inner();
    assert_eq!(state(&done), State::Approved);
    assert_eq!(grant_seconds_in_db(&site, &first.id).await, Some(60));

    // alice approves this one only; carol's hour does not turn her consent into a grant.
    let second = create(&server, "h1", op("prod-deploy", "6-1", "dev", 2000, "/usr/bin/helm")).await;
    server.approver("alice").await.review(review(&second.id, true, 0)).await.unwrap();
    server.approver("carol").await.review(review(&second.id, true, 3600)).await.unwrap();
    assert_eq!(grant_seconds_in_db(&site, &second.id).await, None);
    let again = create(&server, "h1", op("prod-deploy", "6-1", "dev", 2000, "/usr/bin/helm")).await;
    assert_eq!(state(&again), State::Pending, "no grant covers the repeat: {again:?}");
    server.stop().await;
}

#[tokio::test]
async fn approvers_see_and_decide_only_the_hosts_they_are_assigned_to() {
    let config = ServerToml::new("pki")
        .default_timeout("30s")
        .approver_in("alice", &["alice"], &["everything"])
        .approver_in("carol", &[], &["first"])
        .approver("mallory", &[])
        .extra("[[host_group]]\nname = \"first\"\nhosts = [\"h1\"]\n[[host_group]]\nname = \"everything\"\nhosts = [\"*\"]\n");
    let site = Site::with(config);
    let server = site.start(None).await;
    // carol's watch starts before the requests: it must not show h2's as "created".
    let mut watch = server.approver("carol").await.watch_pending(WatchPendingRequest {}).await.unwrap().into_inner();
    let on_h1 = create(&server, "h1", op("r", "1-1", "dev", 2000, "/bin/one")).await;
    let on_h2 = create(&server, "h2", op("r", "1-1", "dev", 2000, "/bin/two")).await;

    let list = |who: &'static str, host: &'static str| {
        let server = &server;
        async move {
            let req = ListRequestsRequest { host: host.into(), ..Default::default() };
            server.approver(who).await.list_requests(req).await.map(|r| r.into_inner().requests)
        }
    };
    let hosts = |rs: Vec<Request>| rs.into_iter().map(|r| r.host).collect::<Vec<_>>();
    assert_eq!(hosts(list("carol", "").await.unwrap()), ["h1"]);
    assert_eq!(list("carol", "h2").await.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(hosts(list("alice", "").await.unwrap()).len(), 2);
    assert!(list("mallory", "").await.unwrap().is_empty(), "in no host group: sees nothing");

    assert_eq!(get(&server, "carol", &on_h2.id).await.unwrap_err().code(), Code::PermissionDenied);
    let err = server.approver("carol").await.review(review(&on_h2.id, true, 0)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = server
        .approver("carol")
        .await
        .cancel_request(CancelRequestRequest { id: on_h2.id.clone(), comment: String::new() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(state(&get(&server, "alice", &on_h2.id).await.unwrap()), State::Pending);

    let first = tokio::time::timeout(Duration::from_secs(10), watch.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.request.unwrap().id, on_h1.id);
    let more = tokio::time::timeout(Duration::from_millis(500), watch.next()).await;
    assert!(more.is_err(), "carol's watch showed another host's request: {more:?}");

    // The audit trail too: by host, and in full.
    let trail = |host: &str| AuditQuery { host: host.into(), ..Default::default() };
    let err = server.auditor("carol").await.query(trail("h2")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let rows: Vec<_> = server.auditor("carol").await.query(trail("")).await.unwrap().into_inner().collect().await;
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|r| r.as_ref().unwrap().host == "h1"), "{rows:?}");
    server.stop().await;
}

#[tokio::test]
async fn argv_is_redacted_before_it_is_stored_or_shown() {
    let site = Site::with(config().extra("[redact]\npatterns = [\"sk_live_[a-z0-9]+\"]\n"));
    let server = site.start(None).await;
    let secrets = [
        "hunter2pw",
        "eyJhbGciOiJIUzI1NiJ9payload",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_abcdefghijklmnopqrstuvwxyz0123",
        "sk_live_abc123",
        "tok3nvalue",
    ];
    let mut operation = op("r", "1-1", "dev", 2000, "/usr/bin/curl");
    operation.ancestry[0].argv = vec![
        "curl".into(),
        "--password=hunter2pw".into(),
        "-H".into(),
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9payload".into(),
        "AKIAIOSFODNN7EXAMPLE".into(),
        "https://ghp_abcdefghijklmnopqrstuvwxyz0123@github.com/x".into(),
        "key=sk_live_abc123".into(),
        "--token".into(),
        "tok3nvalue".into(),
        "https://example.com/ok".into(),
    ];
    operation.ancestry.push(Process {
        pid: 4200,
        ppid: 1,
        argv: vec!["mysql".into(), "-phunter2pw".into()],
        argv_from_proc: true,
        ..Default::default()
    });
    let created = create(&server, "h1", operation).await;
    let shown = get(&server, "alice", &created.id).await.unwrap();
    for r in [&created, &shown] {
        let op = r.operation.as_ref().unwrap();
        let argv = &op.ancestry[0].argv;
        assert_eq!(argv[1], "--password=[REDACTED]");
        assert_eq!(argv[3], "Authorization: Bearer [REDACTED]");
        assert_eq!(argv[8], "[REDACTED]");
        assert_eq!(argv[9], "https://example.com/ok", "the rest is kept");
        assert!(op.ancestry[0].argv_redacted && op.ancestry[1].argv_redacted);
        assert_eq!(op.ancestry[1].argv, ["mysql", "-p[REDACTED]"]);
        assert!(op.ancestry[1].argv_from_proc, "the /proc mark is kept");
        assert!(r.flags.contains(&"argv-redacted".to_string()), "{:?}", r.flags);
    }
    // An agent's own record is redacted too.
    let mut record = guard_api::AuditRecord::new(guard_api::RecordKind::Enforcement, "h1");
    record.argv = vec!["psql".into(), "--password=hunter2pw".into()];
    let record = TestSpool::new("s1").seal(record);
    let report = ReportRecordsRequest { records: wire(&[record]) };
    let reply = server.agent("h1").await.report_records(report).await.unwrap().into_inner();
    assert_eq!((reply.accepted, reply.refused), (1, None));

    // Nowhere in the trail, and nowhere in the database file.
    let rows: Vec<_> =
        server.auditor("bob").await.query(AuditQuery::default()).await.unwrap().into_inner().collect().await;
    let rows: Vec<_> = rows.into_iter().map(|r| r.unwrap()).collect();
    assert!(rows.iter().any(|r| r.json.contains("argv redacted by guard-server")), "the record says so");
    // Redacted after its hash was checked: the link says so, and the chain still verifies.
    let reported = rows.iter().find(|r| r.kind == "record").expect("the reported record");
    let reported = guard_api::AuditRecord::from_json(&reported.json).unwrap();
    assert!(reported.chain.as_ref().unwrap().redacted);
    let chain: Vec<_> = rows.iter().cloned().map(guard_api::chain::ChainRow::from).collect();
    guard_api::chain::verify::verify_rows(&chain, None, None).expect("the chain verifies");
    server.stop().await;
    let mut stored = Vec::new();
    for entry in std::fs::read_dir(site.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().starts_with("guard.db") {
            // The -wal and -shm files may vanish as the closing pool checkpoints them into
            // guard.db (read below): what they held is then in the main file.
            match std::fs::read(&path) {
                Ok(bytes) => stored.extend(bytes),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("reading {}: {e}", path.display()),
            }
        }
    }
    assert!(!stored.is_empty());
    let stored = String::from_utf8_lossy(&stored);
    for row in &rows {
        for secret in secrets {
            assert!(!row.json.contains(secret), "{secret} in the audit trail: {}", row.json);
        }
    }
    for secret in secrets {
        assert!(!stored.contains(secret), "{secret} stored in the database");
    }
}

#[tokio::test]
async fn submissions_are_rate_limited_per_tree_and_per_host() {
    let site = Site::with(
        config().extra("[rate_limit]\ntree_per_minute = 1\ntree_burst = 2\nhost_per_minute = 1\nhost_burst = 5\n"),
    );
    let server = site.start(None).await;
    let mut agent = server.agent("h1").await;
    let try_submit = |tree: &str, n: u32| submit(op("r", tree, "dev", 2000, &format!("/bin/x{n}")), 30, "");
    for n in 0..2 {
        agent.submit(try_submit("1-1", n)).await.expect("within the tree's burst");
    }
    let over = agent.submit(try_submit("1-1", 2)).await.unwrap_err();
    assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");
    assert!(over.message().contains("tree \"1-1\" of host h1"), "{}", over.message());
    assert!(over.message().contains("tree_per_minute"), "names the setting: {}", over.message());
    // Other trees of the host, up to the host's burst (2 taken, 3 left).
    for n in 0..3 {
        agent.submit(try_submit(&format!("{}-1", n + 2), n)).await.expect("within the host's burst");
    }
    let over = agent.submit(try_submit("9-1", 0)).await.unwrap_err();
    assert_eq!(over.code(), Code::ResourceExhausted);
    assert!(over.message().contains("host h1 submitted more than 1"), "{}", over.message());
    // Another host has its own.
    server.agent("h2").await.submit(try_submit("1-1", 0)).await.expect("h2 is not h1");
    let all = server.approver("bob").await.list_requests(ListRequestsRequest::default()).await.unwrap();
    assert_eq!(all.into_inner().requests.len(), 6, "refused submissions create nothing");
    server.stop().await;
}

#[tokio::test]
async fn bad_trust_config_names_the_place() {
    let site = Site::new();
    let dir = site.dir.path();
    let base = std::fs::read_to_string(dir.join("server.toml")).unwrap();
    let cases = [
        ("[redact]\npatterns = [\"(unclosed\"]\n", "bad redaction pattern"),
        ("[[approver]]\nname = \"zed\"\nhost_groups = [\"nope\"]\n", "no [[host_group]] is named \"nope\""),
        ("policy_changed = \"ignore\"\n", "policy_changed is \"ignore\""),
        ("[rate_limit]\ntree_per_minute = 5\ntree_burst = 0\n", "burst must be at least 1"),
        ("[[auto]]\nhost = \"\"\nrule = \"x\"\ndecision = \"approve\"\n", "empty pattern"),
    ];
    for (extra, want) in cases {
        // Top-level keys go before the first table.
        let text = if extra.starts_with('[') { format!("{base}{extra}") } else { format!("{extra}{base}") };
        let path = dir.join("bad.toml");
        std::fs::write(&path, &text).unwrap();
        let err = guard_server::config::ServerConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains(want), "{extra}: {err}");
        assert!(err.starts_with(&format!("{}:", path.display())), "names the file and line: {err}");
        let line: usize = err.split(':').nth(1).unwrap().parse().unwrap();
        assert!(line > 0, "{err}");
    }
}
