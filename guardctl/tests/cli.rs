//! guardctl against a real guard-server: what approvers see and what their answers do to the
//! agent's request stream.

mod support;

use guard_proto::v1::State;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_shows_the_request_and_approve_releases_the_agent() {
    let server = Server::start();
    let mut agent = server.agent().await;
    let (created, mut stream) = submit(&mut agent, "/etc/hosts", "add a host entry for the test db", "hold-1").await;
    assert_eq!(created.state, State::Pending as i32);
    let id = created.id.clone();

    let table = assert_ok(&server.ctl(&["pending"]));
    let header = table.lines().next().unwrap_or_default();
    for col in ["ID", "AGE", "HOST", "USER", "HOOK", "OBJECT", "RULE", "STATED REASON", "APPROVALS", "EXPIRES IN"] {
        assert!(header.contains(col), "column {col} missing: {table}");
    }
    let row = table.lines().find(|l| l.starts_with(&id)).unwrap_or_else(|| panic!("{id} not listed:\n{table}"));
    for cell in [HOST, "dev", "open", "/etc/hosts", "etc-writes", "add a host entry", "0/1"] {
        assert!(row.contains(cell), "{cell} missing from the row: {row}");
    }

    let json = json_lines(&assert_ok(&server.ctl(&["pending", "--json"])));
    let mine = json.iter().find(|v| v["id"] == id.as_str()).expect("request in pending --json");
    assert_eq!(mine["state"], "pending");
    assert_eq!(mine["host"], HOST);
    assert_eq!(mine["operation"]["object"], "/etc/hosts");
    assert_eq!(mine["operation"]["stated_reason"]["reason"], "add a host entry for the test db");

    let shown = assert_ok(&server.ctl(&["show", &id]));
    for text in [
        "/home/dev/project",
        "write",
        "test-policy",
        "pid 4200 uid 1000 /usr/bin/python3",
        "argv: python3 agent.py --task 'fix config'",
        "└─ pid 4242 uid 1000 /usr/bin/tee *",
        "add a host entry for the test db",
        "call-7",
        "expires",
    ] {
        assert!(shown.contains(text), "show lacks {text:?}:\n{shown}");
    }
    // The root of the tree comes before the acting process.
    assert!(shown.find("/usr/bin/python3").unwrap() < shown.find("/usr/bin/tee").unwrap(), "{shown}");

    let out = assert_ok(&server.ctl(&["approve", &id, "--comment", "fine for the test"]));
    assert!(out.contains(&id) && out.contains("approved"), "{out}");
    let decided = next_state(&mut stream, State::Pending as i32).await;
    assert_eq!(decided.state, State::Approved as i32, "{decided:?}");
    assert!(decided.reviews.iter().any(|r| r.approver == APPROVER && r.approve), "{decided:?}");

    // No longer pending: gone from `pending`, refused a second time.
    let table = assert_ok(&server.ctl(&["pending"]));
    assert!(!table.contains(&id), "{table}");
    let again = server.ctl(&["approve", &id]);
    assert_eq!(again.status.code(), Some(2), "double approve: {}", stderr(&again));
    assert!(stderr(&again).starts_with("guardctl: FAILED_PRECONDITION: "), "{}", stderr(&again));

    let shown = json_lines(&assert_ok(&server.ctl(&["show", &id, "--json"])));
    assert_eq!(shown[0]["state"], "approved");
    assert_eq!(shown[0]["reviews"][0]["approver"], APPROVER);
    assert_eq!(shown[0]["reviews"][0]["comment"], "fine for the test");

    let listed = json_lines(&assert_ok(&server.ctl(&["list", "--state", "approved", "--json"])));
    assert!(listed.iter().any(|v| v["id"] == id.as_str()), "{listed:?}");
    let listed = json_lines(&assert_ok(&server.ctl(&["list", "--state", "denied", "--json"])));
    assert!(!listed.iter().any(|v| v["id"] == id.as_str()), "{listed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_needs_a_reason_and_the_agent_gets_it() {
    let server = Server::start();
    let mut agent = server.agent().await;
    let (created, mut stream) = submit(&mut agent, "/etc/shadow", "", "hold-deny").await;
    let id = created.id.clone();

    let no_reason = server.ctl(&["deny", &id]);
    assert_eq!(no_reason.status.code(), Some(1), "deny without --reason is a usage error");
    assert!(stderr(&no_reason).contains("--reason"), "{}", stderr(&no_reason));

    let out = assert_ok(&server.ctl(&["deny", &id, "--reason", "shadow is off limits"]));
    assert!(out.contains("denied"), "{out}");
    let decided = next_state(&mut stream, State::Pending as i32).await;
    assert_eq!(decided.state, State::Denied as i32, "{decided:?}");
    let says_why = decided.comment == "shadow is off limits"
        || decided.reviews.iter().any(|r| !r.approve && r.comment == "shadow is off limits");
    assert!(says_why, "the reason did not reach the agent: {decided:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_the_request_cancelled() {
    let server = Server::start();
    let mut agent = server.agent().await;
    let (created, mut stream) = submit(&mut agent, "/etc/motd", "", "hold-cancel").await;
    assert_ok(&server.ctl(&["cancel", &created.id, "--comment", "asked twice"]));
    let decided = next_state(&mut stream, State::Pending as i32).await;
    assert_eq!(decided.state, State::Cancelled as i32, "{decided:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_exit_2_with_the_grpc_code() {
    let server = Server::start();
    let unknown = server.ctl(&["approve", "no-such-request"]);
    assert_eq!(unknown.status.code(), Some(2), "{}", stderr(&unknown));
    assert!(stderr(&unknown).starts_with("guardctl: NOT_FOUND: "), "{}", stderr(&unknown));

    let show = server.ctl(&["show", "no-such-request"]);
    assert_eq!(show.status.code(), Some(2));
    assert!(stderr(&show).contains("NOT_FOUND"), "{}", stderr(&show));

    // A host certificate is not an approver.
    let as_agent = Command::new(env!("CARGO_BIN_EXE_guardctl"))
        .args(["--server", &server.url, "pending"])
        .arg("--ca")
        .arg(server.pki.join("ca.crt"))
        .arg("--cert")
        .arg(server.pki.join(format!("agent-{HOST}.crt")))
        .arg("--key")
        .arg(server.pki.join(format!("agent-{HOST}.key")))
        .output()
        .unwrap();
    assert_eq!(as_agent.status.code(), Some(2), "{}", stderr(&as_agent));
    assert!(stderr(&as_agent).contains("PERMISSION_DENIED"), "{}", stderr(&as_agent));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_names_the_certificate() {
    let server = Server::start();
    let me = json_lines(&assert_ok(&server.ctl_as(OTHER_APPROVER, &["whoami", "--json"])));
    assert_eq!(me[0]["name"], OTHER_APPROVER);
    assert_eq!(me[0]["role"], "approver");
    assert_eq!(assert_ok(&server.ctl(&["whoami"])).trim(), format!("{APPROVER} (approver)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_json_streams_creation_and_decision() {
    let server = Server::start();
    let mut agent = server.agent().await;
    let (early, _early_stream) = submit(&mut agent, "/etc/early", "", "hold-early").await;

    let mut watch = Command::new(env!("CARGO_BIN_EXE_guardctl"))
        .args(["--server", &server.url, "--as", APPROVER, "watch", "--json"])
        .arg("--pki")
        .arg(&server.pki)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    let out = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let v = serde_json::from_str(&line).unwrap_or_else(|e| panic!("watch printed non-JSON ({e}): {line}"));
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    let wait_for = |pred: &dyn Fn(&serde_json::Value) -> bool, what: &str| -> serde_json::Value {
        loop {
            let v = rx.recv_timeout(Duration::from_secs(15)).unwrap_or_else(|_| panic!("watch never showed {what}"));
            if pred(&v) {
                return v;
            }
        }
    };
    let snap = wait_for(&|v| v["request"]["id"] == early.id.as_str(), "the pending request");
    assert_eq!(snap["kind"], "snapshot");

    let (created, _stream) = submit(&mut agent, "/etc/later", "", "hold-later").await;
    let ev = wait_for(&|v| v["request"]["id"] == created.id.as_str(), "the new request");
    assert_eq!(ev["kind"], "created");
    assert_eq!(ev["request"]["operation"]["object"], "/etc/later");

    assert_ok(&server.ctl(&["approve", &created.id]));
    let ev = wait_for(&|v| v["request"]["id"] == created.id.as_str() && v["kind"] == "decided", "the decision");
    assert_eq!(ev["request"]["state"], "approved");
    let _ = watch.kill();
    let _ = watch.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_has_the_request_and_its_review() {
    let server = Server::start();
    let mut agent = server.agent().await;
    let (created, mut stream) = submit(&mut agent, "/etc/audited", "", "hold-audit").await;
    assert_ok(&server.ctl(&["deny", &created.id, "--reason", "no"]));
    next_state(&mut stream, State::Pending as i32).await;

    let events = json_lines(&assert_ok(&server.ctl(&["audit", "--request", &created.id, "--json"])));
    assert!(!events.is_empty(), "no audit events for {}", created.id);
    assert!(events.iter().all(|e| e["request_id"] == created.id.as_str()), "filter by request: {events:?}");
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert!(kinds.contains(&"request"), "{kinds:?}");
    assert!(kinds.contains(&"review") || kinds.contains(&"decision"), "{kinds:?}");

    let table = assert_ok(&server.ctl(&["audit", "--since", "10m", "--request", &created.id]));
    assert!(table.starts_with("TIME"), "{table}");
    assert!(table.contains(&created.id), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_export_writes_each_event_in_the_chosen_format() {
    let server = Server::start();
    let mut agent = server.agent().await;
    let (created, mut stream) = submit(&mut agent, "/etc/exported", "", "hold-export").await;
    assert_ok(&server.ctl(&["deny", &created.id, "--reason", "no"]));
    next_state(&mut stream, State::Pending as i32).await;
    let rows = json_lines(&assert_ok(&server.ctl(&["audit", "--request", &created.id, "--json"])));
    assert!(rows.len() >= 2, "a request and its decision: {rows:?}");

    // OCSF: one event per row, API Activity (the server's request and review rows), linked
    // by the request id, the denial a rejection.
    let ocsf = json_lines(&assert_ok(&server.ctl(&["audit", "--request", &created.id, "--format", "ocsf"])));
    assert_eq!(ocsf.len(), rows.len(), "{ocsf:?}");
    for e in &ocsf {
        assert_eq!(e["class_uid"], 6003, "{e}");
        assert_eq!(e["type_uid"].as_i64(), Some(6003 * 100 + e["activity_id"].as_i64().unwrap()), "{e}");
        assert_eq!(e["metadata"]["correlation_uid"], created.id.as_str(), "{e}");
    }
    assert!(ocsf.iter().any(|e| e["disposition_id"] == 25), "no Rejected disposition: {ocsf:?}");
    let old = json_lines(&assert_ok(&server.ctl(&["audit", "--request", &created.id, "--format", "ocsf-1.5"])));
    assert!(old.iter().all(|e| e["metadata"]["version"] == "1.5.0"), "{old:?}");

    let ecs = json_lines(&assert_ok(&server.ctl(&["audit", "--request", &created.id, "--format", "ecs"])));
    assert_eq!(ecs.len(), rows.len());
    assert!(ecs.iter().all(|e| e["@timestamp"].is_string()), "{ecs:?}");

    let cef = assert_ok(&server.ctl(&["audit", "--request", &created.id, "--format", "cef"]));
    assert_eq!(cef.lines().count(), rows.len(), "{cef}");
    assert!(cef.lines().all(|l| l.starts_with("CEF:0|")), "{cef}");

    let bad = server.ctl(&["audit", "--format", "xml"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("xml"), "the error names the format: {}", stderr(&bad));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_since_and_until_bound_the_trail_by_time() {
    let server = Server::start();
    let mut agent = server.agent().await;
    let (created, mut stream) = submit(&mut agent, "/etc/bounded", "", "hold-bounded").await;
    assert_ok(&server.ctl(&["deny", &created.id, "--reason", "no"]));
    next_state(&mut stream, State::Pending as i32).await;
    let count = |args: &[&str]| {
        let mut all = vec!["audit", "--request", created.id.as_str(), "--format", "jsonl"];
        all.extend_from_slice(args);
        assert_ok(&server.ctl(&all)).lines().count()
    };
    let every = count(&[]);
    assert!(every >= 2, "a request and its decision");
    // A window around now holds them all; one that ended an hour ago, or starts in a year,
    // holds none. Both spellings: a duration ago and an RFC 3339 time.
    assert_eq!(count(&["--since", "1h", "--until", "2100-01-01T00:00:00Z"]), every);
    assert_eq!(count(&["--until", "1h"]), 0);
    assert_eq!(count(&["--since", "2100-01-01T00:00:00Z"]), 0);
    assert_eq!(count(&["--since", "2000-01-01T00:00:00Z", "--until", "2000-01-02T00:00:00Z"]), 0);

    // The issue's spellings, `audit search` and `audit export --format`, are the same reads.
    let plain = assert_ok(&server.ctl(&["audit", "--request", &created.id, "--format", "jsonl"]));
    assert_eq!(plain.lines().count(), every);
    let export = assert_ok(&server.ctl(&["audit", "export", "--request", &created.id, "--format", "jsonl"]));
    assert_eq!(export, plain);
    let search = assert_ok(&server.ctl(&["audit", "search", "--request", &created.id, "--format", "jsonl"]));
    assert_eq!(search, plain);
    let no_format = server.ctl(&["audit", "export", "--request", &created.id]);
    assert!(!no_format.status.success() && stderr(&no_format).contains("--format"), "{}", stderr(&no_format));

    let bad = server.ctl(&["audit", "--until", "yesterday-ish"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("yesterday-ish"), "the error names the value: {}", stderr(&bad));
}

#[test]
fn credential_errors_name_the_file_and_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_guardctl"))
        .args(["--server", "https://127.0.0.1:1", "--ca", "/nonexistent/ca.pem", "--cert", "/x.crt", "--key", "/x.key"])
        .arg("pending")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("/nonexistent/ca.pem") && err.contains("--ca"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_guardctl")).args(["--cert", "/x.crt", "pending"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("missing --ca, --key"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_exits_1() {
    let server = Server::start();
    // A port nothing listens on, with valid credentials.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = Command::new(env!("CARGO_BIN_EXE_guardctl"))
        .args(["--server", &format!("https://127.0.0.1:{port}"), "--as", APPROVER, "pending"])
        .arg("--pki")
        .arg(&server.pki)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot connect"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_checks_the_chain_online_and_offline_and_names_the_broken_row() {
    let server = Server::start();
    let mut agent = server.agent().await;
    let (created, _stream) = submit(&mut agent, "/etc/verified", "", "hold-verify").await;
    assert_ok(&server.ctl(&["deny", &created.id, "--reason", "no"]));

    let online = assert_ok(&server.ctl(&["audit", "verify"]));
    assert!(online.starts_with("OK: the server's chain is whole: rows 1 to "), "{online}");

    // Offline: an export and the keys, checked without the server.
    let rows = assert_ok(&server.ctl(&["audit", "rows"]));
    let keys = assert_ok(&server.ctl(&["audit", "keys"]));
    assert!(rows.lines().count() >= 2, "{rows}");
    assert!(keys.contains("\"server\""), "{keys}");
    let keys_file = server.dir.join("keys.json");
    std::fs::write(&keys_file, &keys).unwrap();
    let offline = |text: &str| {
        let file = server.dir.join("rows.jsonl");
        std::fs::write(&file, text).unwrap();
        Command::new(env!("CARGO_BIN_EXE_guardctl"))
            .args(["audit", "verify", "--rows", file.to_str().unwrap(), "--keys", keys_file.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let out = offline(&rows);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("OK: "));

    let lines: Vec<&str> = rows.lines().collect();
    let broken = |text: String, what: &str| {
        let out = offline(&text);
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(out.status.code(), Some(1), "{said}");
        assert!(said.starts_with("BROKEN: chain server: row ") && said.contains(what), "{what}: {said}");
    };
    broken(rows.replacen("/etc/verified", "/etc/elsewhere", 1), ": modified: ");
    broken([&lines[..1], &lines[2..]].concat().join("\n"), ": deleted: ");
    let mut swapped = lines.clone();
    swapped.swap(0, 1);
    broken(swapped.join("\n"), ": reordered: ");
    broken(format!("{rows}{}\n", lines[0]), ": inserted: ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_search_filters_by_decision_rule_approver_and_tree() {
    use guard_api::{AuditRecord, Decision, RecordKind};
    use guard_proto::v1::{Record, ReportRecordsRequest, SubmitRequest};
    let server = Server::start();
    let mut agent = server.agent().await;
    // Three requests: approved by alice (rule etc-writes, tree 1-1), denied by bob (net-out,
    // tree 2-2), and one left pending (etc-writes, tree 2-2).
    let mut held = Vec::new();
    for (object, rule, tree) in
        [("/etc/a", "etc-writes", "1-1"), ("/etc/b", "net-out", "2-2"), ("/etc/c", "etc-writes", "2-2")]
    {
        let mut op = operation(object, "search test");
        op.rule = rule.into();
        op.tree_id = tree.into();
        let req = SubmitRequest { operation: Some(op), timeout_seconds: 300, hold_key: String::new() };
        let mut stream = agent.submit(req).await.expect("Submit").into_inner();
        let created = stream.message().await.unwrap().unwrap();
        held.push((created, stream));
    }
    assert_ok(&server.ctl(&["approve", &held[0].0.id]));
    assert_ok(&server.ctl_as(OTHER_APPROVER, &["deny", &held[1].0.id, "--reason", "no egress"]));
    next_state(&mut held[0].1, State::Pending as i32).await;
    next_state(&mut held[1].1, State::Pending as i32).await;
    // And a record the agent reported itself: an in-kernel deny of rule net-out in tree 2-2.
    let mut reported = AuditRecord::new(RecordKind::Enforcement, HOST);
    reported.decision = Some(Decision::Deny);
    reported.rule = Some("net-out".into());
    reported.tree_id = Some("2-2".into());
    reported.object = Some("10.0.0.1:443".into());
    guard_api::chain::seal(&mut reported, "s1", 1, "");
    let reply = agent
        .report_records(ReportRecordsRequest { records: vec![Record { json: reported.to_json() }] })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.refused, None);

    let search = |args: &[&str]| -> Vec<AuditRecord> {
        let mut all = vec!["audit", "--format", "jsonl"];
        all.extend_from_slice(args);
        let out = assert_ok(&server.ctl(&all));
        out.lines().map(|l| AuditRecord::from_json(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
    };
    let everything = search(&[]);
    let (a, b, c) = (&held[0].0.id, &held[1].0.id, &held[2].0.id);
    let of = |records: &[AuditRecord], id: &str| records.iter().filter(|r| r.request_id.as_deref() == Some(id)).count();

    let allowed = search(&["--decision", "allow"]);
    assert!(!allowed.is_empty() && allowed.iter().all(|r| r.decision == Some(Decision::Allow)), "{allowed:#?}");
    assert_eq!((of(&allowed, a), of(&allowed, b), of(&allowed, c)), (2, 0, 0), "a's review and decision");

    let denied = search(&["--decision", "deny", "--rule", "net-out"]);
    let kinds: Vec<RecordKind> = denied.iter().map(|r| r.kind).collect();
    assert_eq!(kinds, [RecordKind::Review, RecordKind::Decision, RecordKind::Enforcement], "{denied:#?}");
    assert!(denied.iter().all(|r| r.decision == Some(Decision::Deny) && r.rule.as_deref() == Some("net-out")));

    let pending = search(&["--decision", "pending"]);
    assert_eq!(pending.len(), 3, "the three requests as created: {pending:#?}");
    assert!(pending.iter().all(|r| r.kind == RecordKind::Request && r.decision.is_none()));

    let bobs = search(&["--approver", OTHER_APPROVER]);
    assert_eq!(bobs.len(), 2, "{bobs:#?}");
    assert!(bobs.iter().all(|r| r.approver.as_deref() == Some(OTHER_APPROVER) && r.request_id.as_deref() == Some(b)));

    let tree = search(&["--tree", "2-2"]);
    let expected = everything.iter().filter(|r| r.tree_id.as_deref() == Some("2-2")).count();
    assert_eq!(tree.len(), expected);
    assert!(tree.len() >= 5 && tree.iter().all(|r| r.tree_id.as_deref() == Some("2-2")), "{tree:#?}");
    assert_eq!(of(&tree, a), 0);

    // The limit counts matching events: bob's two rows come after many others in the trail.
    assert!(everything.len() > 6);
    let first = search(&["--approver", OTHER_APPROVER, "--limit", "1"]);
    assert_eq!((first.len(), first[0].kind), (1, RecordKind::Review));
    assert_eq!(search(&["--tree", "2-2", "--rule", "net-out", "--limit", "2"]).len(), 2);
    assert_eq!(search(&["--tree", "1-1", "--approver", OTHER_APPROVER]).len(), 0, "filters combine");

    // A bad value is refused, naming it (by guardctl) or its field (by the server).
    let bad = server.ctl(&["audit", "--decision", "maybe"]);
    assert!(!bad.status.success() && stderr(&bad).contains("maybe"), "{}", stderr(&bad));
    let long = "r".repeat(300);
    let bad = server.ctl(&["audit", "--rule", &long]);
    assert!(!bad.status.success(), "{}", stdout(&bad));
    assert!(stderr(&bad).contains("rule: 300 bytes, at most 256"), "{}", stderr(&bad));
}

/// `guard-server` run with `args` (init-pki, cert ...); its output.
fn server_cmd(args: &[&str]) -> std::process::Output {
    Command::new(server_binary()).args(args).output().expect("running guard-server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_signs_a_csr_made_here_and_a_revoked_certificate_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let server = Server::start();
    let pki = server.pki.to_str().unwrap().to_string();
    // The approver makes the key and CSR on their own machine (here: into the PKI dir, where
    // `--pki --as dave` looks); the key is theirs alone.
    let out = assert_ok(&server.ctl_as("dave", &["enroll", "dave", "--dir", &pki]));
    assert!(out.contains("approver-dave.csr"), "{out}");
    let key = server.pki.join("approver-dave.key");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    // A second enroll never replaces the key.
    let again = server.ctl_as("dave", &["enroll", "dave", "--dir", &pki]);
    assert!(!again.status.success() && stderr(&again).contains("must not exist yet"), "{}", stderr(&again));
    // A CSR whose signature does not match its content is refused (who sent it does not hold the key).
    let csr = std::fs::read_to_string(server.pki.join("approver-dave.csr")).unwrap();
    let mut lines: Vec<String> = csr.lines().map(str::to_string).collect();
    let middle = lines.len() / 2;
    let flipped: String = lines[middle]
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i == 10 {
                if c == 'A' {
                    'B'
                } else {
                    'A'
                }
            } else {
                c
            }
        })
        .collect();
    lines[middle] = flipped;
    let forged = server.dir.join("forged.csr");
    std::fs::write(&forged, lines.join("\n") + "\n").unwrap();
    let refused = server_cmd(&["cert", "sign", "--pki", &pki, "--csr", forged.to_str().unwrap()]);
    assert!(!refused.status.success(), "a forged CSR was signed");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("forged.csr"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // Before signing, dave has no certificate: guardctl says which file is missing.
    let before = server.ctl_as("dave", &["whoami"]);
    assert!(!before.status.success(), "dave connected before being signed");

    let signed = server_cmd(&["cert", "sign", "--pki", &pki, "--csr", &format!("{pki}/approver-dave.csr")]);
    let said = String::from_utf8_lossy(&signed.stdout).to_string();
    assert!(signed.status.success(), "cert sign: {}", String::from_utf8_lossy(&signed.stderr));
    let serial = said.split("serial ").nth(1).unwrap().trim_end_matches([')', '\n']).to_string();
    assert_eq!(assert_ok(&server.ctl_as("dave", &["whoami"])).trim(), "dave (approver)");

    // Revoked: every call with that certificate is refused, saying why; others still work.
    let db = format!("sqlite://{}", server.dir.join("guard.db").display());
    let revoked = server_cmd(&[
        "cert",
        "revoke",
        "--database-url",
        &db,
        "--cert",
        &format!("{pki}/approver-dave.crt"),
        "--reason",
        "laptop lost",
    ]);
    assert!(revoked.status.success(), "cert revoke: {}", String::from_utf8_lossy(&revoked.stderr));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let refusal = loop {
        let o = server.ctl_as("dave", &["whoami"]);
        if !o.status.success() {
            break stderr(&o);
        }
        assert!(std::time::Instant::now() < deadline, "a revoked certificate is still accepted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        refusal.contains("UNAUTHENTICATED") && refusal.contains("revoked") && refusal.contains("laptop lost"),
        "{refusal}"
    );
    assert!(refusal.contains(&serial), "the refusal names the serial {serial}: {refusal}");
    assert_eq!(assert_ok(&server.ctl(&["whoami"])).trim(), format!("{APPROVER} (approver)"));
    // Revoking twice changes nothing; the revocation is in the audit trail.
    let twice = server_cmd(&[
        "cert",
        "revoke",
        "--database-url",
        &db,
        "--serial",
        &serial,
        "--name",
        "dave",
        "--reason",
        "again",
    ]);
    assert!(
        String::from_utf8_lossy(&twice.stdout).contains("revoked already"),
        "{}",
        String::from_utf8_lossy(&twice.stdout)
    );
    let trail = assert_ok(&server.ctl(&["audit", "--json"]));
    let records: Vec<_> = trail.lines().filter(|l| l.contains(&format!("certificate serial {serial}"))).collect();
    assert_eq!(records.len(), 1, "one revocation record: {trail}");
    assert!(records[0].contains("laptop lost") && records[0].contains("\"revoked\""), "{}", records[0]);
}
