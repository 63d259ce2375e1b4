//! The web console over real HTTPS (tokio-rustls + hyper, trusting the site's CA) against a
//! real guard-server on SQLite, with requests submitted by the real gRPC agent client.
mod common;

use bytes::Bytes;
use common::*;
use guard_proto::v1::{Process, State, StatedReason};
use guard_server::console::accounts::{self, Role};
use guard_server::fanout::Fanout;
use guard_server::store;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsConnector;

const PASSWORD: &str = "correct horse battery";

/// The policy of `common::config()` with a console on an ephemeral port.
fn console_site() -> Site {
    Site::with(config().extra("[console]\nlisten = \"127.0.0.1:0\"\nlockout_failures = 5\nlockout_for = \"15m\"\n"))
}

/// Adds console users (through a second store on the same SQLite file, as `guard-server user
/// add` does).
async fn add_users(site: &Site, users: &[(&str, Role)]) {
    add_users_to(&site.db_url(), users).await
}

async fn add_users_to(url: &str, users: &[(&str, Role)]) {
    let store = store::open(url, Fanout::default()).await.expect("store");
    for (name, role) in users {
        accounts::add_user(store.as_ref(), name, *role, PASSWORD, guard_server::lifecycle::now_ms())
            .await
            .expect("add user");
    }
}

struct Reply {
    status: u16,
    headers: hyper::HeaderMap,
    body: String,
}

impl Reply {
    fn set_cookies(&self) -> Vec<String> {
        self.headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect()
    }
}

/// A browser, as far as the console can tell: one cookie jar, the console's origin on its
/// POSTs (unless a test says otherwise), TLS checked against the site's CA.
struct Browser {
    addr: SocketAddr,
    origin: String,
    tls: TlsConnector,
    cookies: BTreeMap<String, String>,
}

impl Browser {
    fn new(site: &Site, server: &Server) -> Browser {
        let (addr, origin) = server.console();
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(site.pki().join("ca.crt")).unwrap() {
            roots.add(ca.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Browser { addr, origin, tls: TlsConnector::from(Arc::new(config)), cookies: BTreeMap::new() }
    }

    async fn connect(&self) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let name = ServerName::from(self.addr.ip());
        let tls = self.tls.connect(name, tcp).await.expect("TLS with the site's CA");
        let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        send
    }

    fn request(&self, method: &str, path: &str, body: String, origin: Option<&str>) -> hyper::Request<Full<Bytes>> {
        let mut b = hyper::Request::builder().method(method).uri(path).header("host", self.addr.to_string());
        if !self.cookies.is_empty() {
            let jar = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
            b = b.header("cookie", jar);
        }
        if let Some(o) = origin {
            b = b.header("origin", o);
        }
        if method == "POST" {
            b = b.header("content-type", "application/x-www-form-urlencoded");
        }
        b.body(Full::new(Bytes::from(body))).unwrap()
    }

    fn keep_cookies(&mut self, headers: &hyper::HeaderMap) {
        for v in headers.get_all("set-cookie") {
            let v = v.to_str().unwrap();
            let (pair, attrs) = v.split_once(';').unwrap_or((v, ""));
            let (k, val) = pair.split_once('=').unwrap();
            if attrs.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_string(), val.to_string());
            }
        }
    }

    async fn send(&mut self, method: &str, path: &str, body: String, origin: Option<&str>) -> Reply {
        let mut send = self.connect().await;
        let response = send.send_request(self.request(method, path, body, origin)).await.unwrap();
        let (parts, body) = response.into_parts();
        self.keep_cookies(&parts.headers);
        let body = body.collect().await.unwrap().to_bytes();
        Reply { status: parts.status.as_u16(), headers: parts.headers, body: String::from_utf8_lossy(&body).into() }
    }

    async fn get(&mut self, path: &str) -> Reply {
        self.send("GET", path, String::new(), None).await
    }

    /// A form POST from the console's own page (its Origin).
    async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Reply {
        let origin = self.origin.clone();
        self.post_from(path, fields, Some(&origin)).await
    }

    async fn post_from(&mut self, path: &str, fields: &[(&str, &str)], origin: Option<&str>) -> Reply {
        let body = fields.iter().map(|(k, v)| format!("{k}={}", form_encode(v))).collect::<Vec<_>>().join("&");
        self.send("POST", path, body, origin).await
    }

    /// A JSON POST as the passkey script makes it (the session's token in X-CSRF-Token).
    async fn post_json(&mut self, path: &str, body: serde_json::Value, token: Option<&str>) -> Reply {
        let mut send = self.connect().await;
        let mut request = self.request("POST", path, body.to_string(), Some(&self.origin.clone()));
        request.headers_mut().insert("content-type", "application/json".parse().unwrap());
        if let Some(t) = token {
            request.headers_mut().insert("x-csrf-token", t.parse().unwrap());
        }
        let response = send.send_request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Reply { status: parts.status.as_u16(), headers: parts.headers, body: String::from_utf8_lossy(&body).into() }
    }

    async fn sign_in(&mut self, user: &str, password: &str) -> Reply {
        let page = self.get("/login").await;
        assert_eq!(page.status, 200, "{}", page.body);
        let token = csrf(&page.body);
        self.post("/login", &[("csrf", &token), ("username", user), ("password", password)]).await
    }

    /// Signs in and answers the queue page (its CSRF token is the session's).
    async fn signed_in(&mut self, user: &str) -> String {
        let reply = self.sign_in(user, PASSWORD).await;
        assert_eq!(reply.status, 303, "sign-in of {user}: {}", reply.body);
        let page = self.get("/").await;
        assert_eq!(page.status, 200);
        csrf(&page.body)
    }

    /// An open event stream (`/events`).
    async fn events(&mut self) -> Events {
        let mut send = self.connect().await;
        let response = send.send_request(self.request("GET", "/events", String::new(), None)).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Events { body: response.into_body(), buffer: String::new(), _send: send }
    }
}

fn form_encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The first CSRF token of a page's forms.
fn csrf(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a form with a csrf field") + "name=\"csrf\" value=\"".len();
    page[at..].split('"').next().unwrap().to_string()
}

struct Events {
    body: Incoming,
    buffer: String,
    _send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Events {
    /// The stream ends within 10 s, sending no further event.
    async fn ends(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let frame = tokio::time::timeout_at(deadline, self.body.frame()).await.expect("the stream ends within 10s");
            match frame {
                None | Some(Err(_)) => return,
                Some(Ok(frame)) => {
                    let data = frame.into_data().unwrap_or_default();
                    let text = String::from_utf8_lossy(&data);
                    assert!(!text.contains("event:"), "an event after sign-out: {text}");
                }
            }
        }
    }

    /// The next event named `kind` (skipping others) as (kind, data), within 10 s.
    async fn next_of(&mut self, kind: &str) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = "message";
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(e) = line.strip_prefix("event:") {
                        event = e.trim();
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.trim_start());
                    }
                }
                if event == kind {
                    return serde_json::from_str(&data).expect("event data is JSON");
                }
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .unwrap_or_else(|_| panic!("no {kind} event within 10s"))
                .expect("stream open")
                .expect("frame");
            if let Ok(data) = frame.into_data() {
                self.buffer.push_str(&String::from_utf8_lossy(&data));
            }
        }
    }
}

/// Submits `operation` from host h1 and answers the pending request and its Submit stream.
async fn hold(
    server: &Server,
    operation: guard_proto::v1::Operation,
) -> (guard_proto::v1::Request, tonic::Streaming<guard_proto::v1::Request>) {
    let mut agent = server.agent("h1").await;
    let mut stream = agent.submit(submit(operation, 30, "")).await.unwrap().into_inner();
    let created = next(&mut stream).await;
    assert_eq!(state(&created), State::Pending);
    (created, stream)
}

/// The audit records of request `id`, parsed.
async fn records(server: &Server, id: &str) -> Vec<guard_api::AuditRecord> {
    use tokio_stream::StreamExt;
    let query = guard_proto::v1::AuditQuery { request_id: id.into(), ..Default::default() };
    let events: Vec<_> = server.auditor("bob").await.query(query).await.unwrap().into_inner().collect().await;
    events.into_iter().map(|e| guard_api::AuditRecord::from_json(&e.unwrap().json).unwrap()).collect()
}

/// Every audit record of the server's own chain (host "") and of h1, parsed.
async fn all_records(server: &Server) -> Vec<guard_api::AuditRecord> {
    use tokio_stream::StreamExt;
    let events: Vec<_> = server
        .auditor("bob")
        .await
        .query(guard_proto::v1::AuditQuery::default())
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    events.into_iter().map(|e| guard_api::AuditRecord::from_json(&e.unwrap().json).unwrap()).collect()
}

#[tokio::test]
async fn sign_in_sets_a_secure_session_cookie_and_sign_out_ends_it() {
    let site = console_site();
    let server = site.start(None).await;
    add_users(&site, &[("bob", Role::Approver)]).await;
    let mut browser = Browser::new(&site, &server);

    let first = browser.get("/").await;
    assert_eq!((first.status, first.headers["location"].to_str().unwrap()), (303, "/login"), "not signed in");
    let reply = browser.sign_in("bob", PASSWORD).await;
    assert_eq!(reply.status, 303, "{}", reply.body);
    let cookie =
        reply.set_cookies().into_iter().find(|c| c.starts_with("__Host-guard_session=")).expect("session cookie");
    for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(flag), "{flag} missing: {cookie}");
    }
    let id = cookie.split(['=', ';']).nth(1).unwrap();
    assert_eq!(id.len(), 64, "256 bits");

    let page = browser.get("/").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("bob (approver)"), "{}", page.body);
    let h = &page.headers;
    assert!(h["content-security-policy"].to_str().unwrap().starts_with("default-src 'self'"));
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["cache-control"], "no-store");
    assert!(!page.body.contains("<script>"), "no inline script");

    // Only the id's SHA-256 is stored.
    let store = store::open(&site.db_url(), Fanout::default()).await.unwrap();
    assert!(store.session(id).await.unwrap().is_none(), "the raw id is not a stored key");
    assert!(store.session(&accounts::id_hash(id)).await.unwrap().is_some());

    let token = csrf(&page.body);
    let mut events = browser.events().await;
    events.next_of("snapshot").await;
    let out = browser.post("/logout", &[("csrf", &token)]).await;
    assert_eq!(out.status, 303);
    // The open event stream ends at the next change and sends nothing of it.
    let (_created, _stream) = hold(&server, op("etc-writes", "100-1", "dev", 2000, "/usr/bin/vi")).await;
    events.ends().await;
    assert!(store.session(&accounts::id_hash(id)).await.unwrap().is_none(), "logout deletes the session");
    // The old cookie opens nothing any more.
    browser.cookies.insert("__Host-guard_session".into(), id.into());
    assert_eq!(browser.get("/").await.status, 303);
    server.stop().await;
}

#[tokio::test]
async fn wrong_password_and_unknown_user_get_the_same_answer_and_five_failures_lock() {
    let site = console_site();
    let server = site.start(None).await;
    add_users(&site, &[("bob", Role::Approver)]).await;
    let mut browser = Browser::new(&site, &server);

    let wrong = browser.sign_in("bob", "not the password").await;
    let unknown = browser.sign_in("nobody", "not the password").await;
    assert_eq!((wrong.status, unknown.status), (401, 401));
    let message = |body: &str| body.split("role=\"status\">").nth(1).unwrap().split('<').next().unwrap().to_string();
    assert_eq!(message(&wrong.body), message(&unknown.body), "no hint of which names exist");
    assert!(!browser.cookies.contains_key("__Host-guard_session"));

    for _ in 0..4 {
        assert_eq!(browser.sign_in("bob", "still wrong").await.status, 401);
    }
    // Five failures for bob: locked, even with the right password now.
    let locked = browser.sign_in("bob", PASSWORD).await;
    assert_eq!(locked.status, 401, "locked out");
    assert!(!browser.cookies.contains_key("__Host-guard_session"));

    let trail = all_records(&server).await;
    let refusals: Vec<String> = trail
        .iter()
        .filter(|r| r.comment.as_deref().is_some_and(|c| c.starts_with("console sign-in refused")))
        .map(|r| format!("{} {}", r.approver.clone().unwrap_or_default(), r.comment.clone().unwrap()))
        .collect();
    assert!(refusals.iter().any(|r| r.starts_with("nobody ") && r.contains("no such user")), "{refusals:#?}");
    assert!(refusals.iter().any(|r| r.starts_with("bob ") && r.contains("wrong password (1 of 5")), "{refusals:#?}");
    assert!(refusals.iter().any(|r| r.contains("the account is locked until")), "{refusals:#?}");
    assert!(trail.iter().any(|r| r.state.as_deref() == Some("locked")), "the lockout itself is a record");
    server.stop().await;
}

#[tokio::test]
async fn approve_once_through_the_console_completes_the_agents_hold() {
    let site = console_site();
    let server = site.start(None).await;
    add_users(&site, &[("bob", Role::Approver)]).await;
    let mut browser = Browser::new(&site, &server);
    let token = browser.signed_in("bob").await;

    let mut operation = op("etc-writes", "100-1", "dev", 2000, "/usr/bin/vi");
    operation.cwd = "/home/dev/project".into();
    operation.stated_reason = Some(StatedReason {
        tool: "Bash".into(),
        call_id: "c1".into(),
        reason: "fix the config".into(),
        session: "s".into(),
    });
    operation.ancestry.push(Process {
        pid: 4200,
        ppid: 1,
        exe: "/usr/bin/bash".into(),
        argv: vec!["bash".into(), "-c".into(), "vi".into()],
        argv_from_proc: true,
        ..Default::default()
    });
    let (created, mut stream) = hold(&server, operation).await;

    let page = browser.get("/").await;
    for fact in [
        created.id.as_str(),
        "h1",
        "etc-writes",
        "/usr/bin/vi",
        "/home/dev/project",
        "tree owner",
        "The agent's claim (unverified",
        "fix the config",
        "argv read from /proc",
        "approvals <b class=\"nofm\">0 of 1</b>",
        "data-until=",
        "Approve once",
        "Deny",
    ] {
        assert!(page.body.contains(fact), "{fact:?} missing from the card:\n{}", page.body);
    }
    let reply =
        browser.post(&format!("/requests/{}/review", created.id), &[("csrf", &token), ("action", "approve")]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body.contains("it is approved"), "{}", reply.body);

    let decided = next(&mut stream).await;
    assert_eq!(state(&decided), State::Approved, "the agent's hold is approved");
    assert_eq!(decided.decided_by, "bob");
    let review =
        records(&server, &created.id).await.into_iter().find(|r| r.kind == guard_api::RecordKind::Review).unwrap();
    assert_eq!(review.verified_by.as_deref(), Some("password"), "the review record says how bob was verified");

    // The same operation again: its card lists the earlier decision.
    let (again, _again_stream) = hold(&server, op("etc-writes", "100-9", "dev", 2000, "/usr/bin/vi")).await;
    let page = browser.get("/").await;
    let card = page.body.split(&format!("id=\"req-{}\"", again.id)).nth(1).expect("the new card");
    let earlier = card.split("Earlier decisions on this operation").nth(1).unwrap();
    assert!(earlier.contains("<b>approved</b> by bob"), "{earlier}");
    server.stop().await;
}

#[tokio::test]
async fn a_post_without_the_token_or_from_another_origin_is_refused_and_changes_nothing() {
    let site = console_site();
    let server = site.start(None).await;
    add_users(&site, &[("bob", Role::Approver)]).await;
    let mut browser = Browser::new(&site, &server);
    let token = browser.signed_in("bob").await;
    let (created, _stream) = hold(&server, op("etc-writes", "100-1", "dev", 2000, "/usr/bin/vi")).await;
    let path = format!("/requests/{}/review", created.id);

    let no_token = browser.post(&path, &[("action", "approve")]).await;
    assert_eq!(no_token.status, 403);
    assert!(no_token.body.contains("security token is missing"), "{}", no_token.body);
    let bad_token = browser.post(&path, &[("csrf", "0123"), ("action", "approve")]).await;
    assert_eq!(bad_token.status, 403);
    let elsewhere =
        browser.post_from(&path, &[("csrf", &token), ("action", "approve")], Some("https://evil.example")).await;
    assert_eq!(elsewhere.status, 403);
    assert!(elsewhere.body.contains("https://evil.example"), "{}", elsewhere.body);
    let no_origin = browser.post_from(&path, &[("csrf", &token), ("action", "approve")], None).await;
    assert_eq!(no_origin.status, 403, "neither Origin nor Referer");

    let now = server.approver("alice").await;
    let mut now = now;
    let current =
        now.get_request(guard_proto::v1::GetRequestRequest { id: created.id.clone() }).await.unwrap().into_inner();
    assert_eq!(state(&current), State::Pending, "still pending");
    assert!(current.reviews.is_empty(), "no review recorded");
    server.stop().await;
}

#[tokio::test]
async fn approve_for_minutes_makes_a_grant_that_the_grants_page_shows_and_revoke_ends() {
    let site = console_site();
    let server = site.start(None).await;
    add_users(&site, &[("bob", Role::Approver)]).await;
    let mut browser = Browser::new(&site, &server);
    let token = browser.signed_in("bob").await;
    let (created, mut stream) = hold(&server, op("etc-writes", "100-1", "dev", 2000, "/usr/bin/vi")).await;

    let reply = browser
        .post(
            &format!("/requests/{}/review", created.id),
            &[("csrf", &token), ("action", "approve_for"), ("minutes", "15")],
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(state(&next(&mut stream).await), State::Approved);
    // The same operation again: the grant decides it at once, and it counts as a firing.
    let (again, _) = {
        let mut agent = server.agent("h1").await;
        let mut s = agent
            .submit(submit(op("etc-writes", "100-1", "dev", 2000, "/usr/bin/vi"), 30, ""))
            .await
            .unwrap()
            .into_inner();
        (next(&mut s).await, s)
    };
    assert_eq!((state(&again), again.reason.as_str()), (State::Approved, "grant"));

    let grants = browser.get("/grants").await;
    assert_eq!(grants.status, 200);
    assert!(grants.body.contains("/usr/bin/vi") && grants.body.contains("100-1"), "{}", grants.body);
    assert!(grants.body.contains("1 times"), "fired once: {}", grants.body);
    let action = grants.body.split("action=\"/grants/").nth(1).expect("a revoke form").split('"').next().unwrap();
    let grant_id = action.trim_end_matches("/revoke").to_string();

    let revoked = browser.post(&format!("/grants/{grant_id}/revoke"), &[("csrf", &token)]).await;
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    assert!(revoked.body.contains("revoked"), "{}", revoked.body);
    assert!(!revoked.body.contains(&format!("grant-{grant_id}")), "no longer listed");
    let twice = browser.post(&format!("/grants/{grant_id}/revoke"), &[("csrf", &token)]).await;
    assert_eq!(twice.status, 409, "already ended: {}", twice.body);

    let trail = all_records(&server).await;
    let ended = trail
        .iter()
        .find(|r| r.kind == guard_api::RecordKind::Grant && r.state.as_deref() == Some("ended"))
        .expect("the revocation is recorded");
    assert_eq!(ended.comment.as_deref(), Some(format!("grant {grant_id} ended: revoked by bob").as_str()));
    // And the next identical operation asks again.
    let mut agent = server.agent("h1").await;
    let mut s =
        agent.submit(submit(op("etc-writes", "100-1", "dev", 2000, "/usr/bin/vi"), 30, "")).await.unwrap().into_inner();
    assert_eq!(state(&next(&mut s).await), State::Pending, "the revoked grant covers nothing");
    server.stop().await;
}

#[tokio::test]
async fn deny_needs_a_reason_and_self_approval_auditors_and_decided_requests_are_refused() {
    let site = console_site();
    let server = site.start(None).await;
    add_users(&site, &[("alice", Role::Approver), ("bob", Role::Approver), ("dana", Role::Auditor)]).await;
    let mut alice = Browser::new(&site, &server);
    let alice_token = alice.signed_in("alice").await;
    let mut bob = Browser::new(&site, &server);
    let bob_token = bob.signed_in("bob").await;

    // alice's own tree (uid 1000 is among her unix users).
    let (own, _own_stream) = hold(&server, op("etc-writes", "7-1", "alice", 1000, "/usr/bin/vi")).await;
    let refused =
        alice.post(&format!("/requests/{}/review", own.id), &[("csrf", &alice_token), ("action", "approve")]).await;
    assert_eq!(refused.status, 403);
    assert!(refused.body.contains("which is alice's own: another approver must decide it"), "{}", refused.body);

    // An auditor reads but does not decide.
    let mut dana = Browser::new(&site, &server);
    let dana_token = dana.signed_in("dana").await;
    let queue = dana.get("/").await;
    assert!(queue.body.contains(&own.id) && !queue.body.contains("Approve once"), "read-only queue");
    let auditor =
        dana.post(&format!("/requests/{}/review", own.id), &[("csrf", &dana_token), ("action", "approve")]).await;
    assert_eq!(auditor.status, 403);
    assert!(auditor.body.contains("dana is an auditor and does not decide requests"), "{}", auditor.body);

    // Deny without a reason: refused; with one: denied.
    let path = format!("/requests/{}/review", own.id);
    let no_reason = bob.post(&path, &[("csrf", &bob_token), ("action", "deny"), ("reason", "  ")]).await;
    assert_eq!(no_reason.status, 400);
    assert!(no_reason.body.contains("a denial needs a reason"));
    let denied =
        bob.post(&path, &[("csrf", &bob_token), ("action", "deny"), ("reason", "not during the freeze")]).await;
    assert_eq!(denied.status, 200, "{}", denied.body);
    assert!(denied.body.contains("it is denied"), "{}", denied.body);
    let decision =
        records(&server, &own.id).await.into_iter().find(|r| r.kind == guard_api::RecordKind::Decision).unwrap();
    assert_eq!(decision.comment.as_deref(), Some("not during the freeze"));

    // Already decided: refused with the server's reason, and the refusal is recorded.
    let late = alice.post(&path, &[("csrf", &alice_token), ("action", "approve")]).await;
    assert_eq!(late.status, 409, "{}", late.body);
    assert!(late.body.contains("is denied, no longer pending"), "{}", late.body);
    let bob_again = bob.post(&path, &[("csrf", &bob_token), ("action", "approve")]).await;
    assert_eq!(bob_again.status, 409);
    assert!(
        bob_again.body.contains("no longer pending") || bob_again.body.contains("already reviewed"),
        "{}",
        bob_again.body
    );
    let trail = records(&server, &own.id).await;
    assert!(
        trail.iter().any(|r| r.reason == Some(guard_api::Reason::Refused) && r.approver.as_deref() == Some("alice")),
        "alice's refused self-approval is in the trail"
    );
    server.stop().await;
}

#[tokio::test]
async fn hostile_argv_is_escaped_and_a_long_one_is_cut() {
    let site = console_site();
    let server = site.start(None).await;
    add_users(&site, &[("bob", Role::Approver)]).await;
    let mut browser = Browser::new(&site, &server);
    browser.signed_in("bob").await;

    let mut hostile = op("etc-writes", "100-1", "dev", 2000, "/tmp/<script>alert(1)</script>");
    hostile.ancestry[0].argv = vec![
        "<script>alert(1)</script>".into(),
        "\"><img src=x onerror=alert(1)>".into(),
        "\u{1b}]52;c;ZXZpbA==\u{7}".into(),
    ];
    hostile.stated_reason =
        Some(StatedReason { reason: "</blockquote><script>x()</script>".into(), ..Default::default() });
    let (bad, _s1) = hold(&server, hostile).await;
    let mut long = op("etc-writes", "100-2", "dev", 2000, "/usr/bin/long");
    // 100 KiB of argv: 25 arguments of 4 KiB (the most one argument may hold).
    long.ancestry[0].argv = std::iter::once("long".to_string()).chain((0..25).map(|_| "A".repeat(4096))).collect();
    let (big, _s2) = hold(&server, long).await;

    let page = browser.get("/").await;
    assert!(page.body.contains(&bad.id) && page.body.contains(&big.id));
    for raw in ["<script>alert", "<img src=x", "\u{1b}", "\u{7}", "</blockquote><script>"] {
        assert!(!page.body.contains(raw), "{raw:?} reached the page raw");
    }
    assert!(page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "escaped as text");
    assert!(page.body.contains("&lt;img src=x onerror=alert(1)&gt;"));
    assert!(page.body.contains("\\x1b]52;c;ZXZpbA==\\x07"), "the terminal escape is shown visibly");
    assert!(!page.body.contains(&"A".repeat(4096)), "100 KiB of argv is not all on the page");
    assert!(page.body.contains("26 arguments, 102404 bytes in all"), "the full length is shown");
    let link = format!("/requests/{}/argv/0", big.id);
    assert!(page.body.contains(&link), "a way to see all of it");
    let all = browser.get(&link).await;
    assert_eq!(all.status, 200);
    assert!(all.headers["content-type"].to_str().unwrap().starts_with("text/plain"));
    assert_eq!(all.body.lines().filter(|l| *l == "A".repeat(4096)).count(), 25, "every argument, whole");

    // The SSE card of a hostile request is escaped the same way.
    let mut events = browser.events().await;
    let snapshot = events.next_of("snapshot").await;
    let html = snapshot["cards"].as_array().unwrap().iter().map(|c| c["html"].as_str().unwrap()).collect::<String>();
    assert!(html.contains("&lt;script&gt;") && !html.contains("<script>"), "{html}");

    // A hostile deny reason is escaped in the history too.
    let token = csrf(&page.body);
    let denied = browser
        .post(
            &format!("/requests/{}/review", bad.id),
            &[("csrf", &token), ("action", "deny"), ("reason", "<script>steal()</script>\u{1b}[2J")],
        )
        .await;
    assert_eq!(denied.status, 200, "{}", denied.body);
    let history = browser.get("/history").await;
    assert!(history.body.contains("&lt;script&gt;steal()&lt;/script&gt;\\x1b[2J"), "{}", history.body);
    assert!(!history.body.contains("<script>steal") && !history.body.contains('\u{1b}'));

    server.stop().await;
}

#[tokio::test]
async fn events_announce_new_requests_and_decisions_on_every_open_console() {
    let site = console_site();
    let server = site.start(None).await;
    add_users(&site, &[("bob", Role::Approver), ("carol", Role::Approver)]).await;
    let mut bob = Browser::new(&site, &server);
    let token = bob.signed_in("bob").await;
    let mut carol = Browser::new(&site, &server);
    carol.signed_in("carol").await;
    let mut bob_events = bob.events().await;
    let mut carol_events = carol.events().await;
    assert_eq!(bob_events.next_of("snapshot").await["ids"], serde_json::json!([]));
    carol_events.next_of("snapshot").await;

    let (created, _stream) = hold(&server, op("etc-writes", "100-1", "dev", 2000, "/usr/bin/vi")).await;
    for events in [&mut bob_events, &mut carol_events] {
        let event = events.next_of("created").await;
        assert_eq!(event["id"], created.id.as_str());
        assert!(event["html"].as_str().unwrap().contains("/usr/bin/vi"));
    }
    let reply = bob.post(&format!("/requests/{}/review", created.id), &[("csrf", &token), ("action", "approve")]).await;
    assert_eq!(reply.status, 200);
    for events in [&mut bob_events, &mut carol_events] {
        let event = events.next_of("decided").await;
        assert_eq!(
            (event["id"].as_str().unwrap(), event["state"].as_str().unwrap()),
            (created.id.as_str(), "approved")
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn history_filters_paginates_exports_and_shows_chain_positions() {
    let site = console_site();
    let server = site.start(None).await;
    add_users(&site, &[("bob", Role::Approver), ("dana", Role::Auditor)]).await;
    let mut bob = Browser::new(&site, &server);
    let token = bob.signed_in("bob").await;
    for tree in ["1-1", "2-2", "3-3"] {
        let (r, _s) = hold(&server, op("etc-writes", tree, "dev", 2000, "/usr/bin/vi")).await;
        bob.post(&format!("/requests/{}/review", r.id), &[("csrf", &token), ("action", "deny"), ("reason", "no")])
            .await;
    }
    let mut dana = Browser::new(&site, &server);
    dana.signed_in("dana").await;
    let denied = dana.get("/history?decision=deny&approver=bob&limit=2").await;
    assert_eq!(denied.status, 200, "{}", denied.body);
    assert_eq!(denied.body.matches("<tr><td>").count(), 2, "two per page");
    assert!(denied.body.contains("Next page"), "{}", denied.body);
    let next_link =
        denied.body.split("class=\"next\" href=\"").nth(1).unwrap().split('"').next().unwrap().replace("&amp;", "&");
    let second = dana.get(&next_link).await;
    assert!(second.body.matches("<tr><td>").count() >= 1, "{}", second.body);
    let tree = dana.get("/history?tree=2-2&decision=deny").await;
    assert!(tree.body.contains("tree 2-2"), "{}", tree.body);
    assert!(!tree.body.contains("tree 1-1") && !tree.body.contains("tree 3-3"), "other trees filtered out");
    assert!(tree.body.contains("Audit chains") && tree.body.contains("Server chain: head at seq"));
    let bad = dana.get("/history?decision=maybe&since=yesterday").await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("decision") && bad.body.contains("since"), "{}", bad.body);

    let export = dana.get("/export?format=jsonl&decision=deny&approver=bob").await;
    assert_eq!(export.status, 200);
    assert!(export.headers["content-disposition"].to_str().unwrap().contains("attachment"));
    let lines: Vec<&str> = export.body.lines().collect();
    assert!(lines.len() >= 3, "{}", export.body);
    assert!(lines.iter().all(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["decision"] == "deny"));
    for format in ["ocsf", "ecs", "cef"] {
        let e = dana.get(&format!("/export?format={format}&decision=deny")).await;
        assert_eq!(e.status, 200, "{format}");
        assert!(!e.body.is_empty(), "{format}");
    }
    assert_eq!(dana.get("/export?format=xml").await.status, 400);
    server.stop().await;
}

#[tokio::test]
async fn the_user_command_adds_a_user_who_can_sign_in() {
    let site = console_site();
    let server = site.start(None).await;
    let config = site.dir.path().join("server.toml");
    let run = |args: &[&str], stdin: &str| {
        use std::io::Write;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_guard-server"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A command that fails early may not read its stdin: its exit status says why.
        let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
        child.wait_with_output().unwrap()
    };
    let added = run(&["user", "add", "erin", "--role", "approver"], &format!("{PASSWORD}\n"));
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let short = run(&["user", "add", "frank", "--role", "approver"], "short\n");
    assert!(!short.status.success());
    assert!(
        String::from_utf8_lossy(&short.stderr).contains("shorter than 10"),
        "{}",
        String::from_utf8_lossy(&short.stderr)
    );
    let role = run(&["user", "add", "gina", "--role", "root"], &format!("{PASSWORD}\n"));
    assert!(String::from_utf8_lossy(&role.stderr).contains("approver, admin or auditor"));
    let twice = run(&["user", "add", "erin", "--role", "approver"], &format!("{PASSWORD}\n"));
    assert!(String::from_utf8_lossy(&twice.stderr).contains("exists already"));
    let list = run(&["user", "list"], "");
    assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), "erin\tapprover");

    let mut browser = Browser::new(&site, &server);
    assert_eq!(browser.sign_in("erin", PASSWORD).await.status, 303);
    assert!(run(&["user", "disable", "erin"], "").status.success());
    assert_eq!(browser.get("/").await.status, 303, "disabling ends the session");
    assert_eq!(browser.sign_in("erin", PASSWORD).await.status, 401);
    server.stop().await;
}

#[tokio::test]
async fn no_console_table_means_no_console_listener() {
    let site = Site::new();
    let server = site.start(None).await;
    let config = guard_server::config::ServerConfig::load(&site.dir.path().join("server.toml")).unwrap();
    assert!(config.console.is_none());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(has_postgres), ignore = "SKIPPED: no PostgreSQL (initdb/pg_ctl) on the build machine")]
async fn on_postgresql_sign_in_lockout_review_grant_and_revoke_work_the_same() {
    use guard_server::testing::pg::PgCluster;
    let pg_dir = tempfile::tempdir().expect("tempdir");
    let cluster = PgCluster::start(pg_dir.path(), 5432).expect("PostgreSQL starts");
    let url = cluster.url();
    let site = console_site();
    let server = site.start(Some(&url)).await;
    add_users_to(&url, &[("bob", Role::Approver), ("carol", Role::Approver)]).await;

    let mut carol = Browser::new(&site, &server);
    for _ in 0..5 {
        assert_eq!(carol.sign_in("carol", "wrong password").await.status, 401);
    }
    assert_eq!(carol.sign_in("carol", PASSWORD).await.status, 401, "locked on PostgreSQL too");

    let mut bob = Browser::new(&site, &server);
    let token = bob.signed_in("bob").await;
    let (created, mut stream) = hold(&server, op("etc-writes", "100-1", "dev", 2000, "/usr/bin/vi")).await;
    let reply = bob
        .post(
            &format!("/requests/{}/review", created.id),
            &[("csrf", &token), ("action", "approve_for"), ("minutes", "5")],
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(state(&next(&mut stream).await), State::Approved);
    let grants = bob.get("/grants").await;
    let action = grants.body.split("action=\"/grants/").nth(1).expect("a revoke form").split('"').next().unwrap();
    let revoked = bob.post(&format!("/grants/{action}"), &[("csrf", &token)]).await;
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    let history = bob.get("/history?approver=bob").await;
    assert!(
        history.body.contains("revoked by bob") && history.body.contains("verified by password"),
        "{}",
        history.body
    );
    server.stop().await;
    drop(cluster);
}

#[tokio::test]
async fn n_of_m_progress_is_shown_and_streamed_until_the_second_approval_decides() {
    let site = console_site();
    let server = site.start(None).await;
    add_users(&site, &[("bob", Role::Approver), ("carol", Role::Approver)]).await;
    let mut bob = Browser::new(&site, &server);
    let bob_token = bob.signed_in("bob").await;
    let mut carol = Browser::new(&site, &server);
    let carol_token = carol.signed_in("carol").await;
    let mut carol_events = carol.events().await;
    carol_events.next_of("snapshot").await;

    // prod-deploy needs 2 of alice, bob, carol.
    let (created, mut stream) = hold(&server, op("prod-deploy", "5-5", "dev", 2000, "/usr/bin/deploy")).await;
    assert!(carol_events.next_of("created").await["html"].as_str().unwrap().contains("0 of 2"));
    let first =
        bob.post(&format!("/requests/{}/review", created.id), &[("csrf", &bob_token), ("action", "approve")]).await;
    assert_eq!(first.status, 200);
    assert!(first.body.contains("1 of 2 approvals, it waits for more"), "{}", first.body);
    let reviewed = carol_events.next_of("reviewed").await;
    let html = reviewed["html"].as_str().unwrap();
    assert!(
        html.contains("1 of 2") && html.contains("bob <b>approved</b>") && html.contains("verified by password"),
        "{html}"
    );
    let page = carol.get("/").await;
    assert!(page.body.contains("approvals <b class=\"nofm\">1 of 2</b>"), "{}", page.body);

    let second =
        carol.post(&format!("/requests/{}/review", created.id), &[("csrf", &carol_token), ("action", "approve")]).await;
    assert!(second.body.contains("it is approved"), "{}", second.body);
    assert_eq!(carol_events.next_of("decided").await["id"], created.id.as_str());
    assert_eq!(state(&next(&mut stream).await), State::Approved);
    server.stop().await;
}

#[tokio::test]
async fn approvers_see_only_their_hosts_and_only_admins_revoke_any_grant() {
    let toml = guard_server::testing::config::ServerToml::new("pki")
        .default_timeout("30s")
        .approver_in("bob", &["bob"], &["one"])
        .approver_in("carol", &[], &["two"])
        .extra("[[host_group]]\nname = \"one\"\nhosts = [\"h1\"]\n[[host_group]]\nname = \"two\"\nhosts = [\"h2\"]\n")
        .extra("[console]\nlisten = \"127.0.0.1:0\"\n");
    let site = Site::with(toml);
    let server = site.start(None).await;
    add_users(
        &site,
        &[("bob", Role::Approver), ("carol", Role::Approver), ("dana", Role::Auditor), ("root", Role::Admin)],
    )
    .await;
    let mut bob = Browser::new(&site, &server);
    let bob_token = bob.signed_in("bob").await;
    let mut carol = Browser::new(&site, &server);
    let carol_token = carol.signed_in("carol").await;

    let (created, mut stream) = hold(&server, op("etc-writes", "100-1", "dev", 2000, "/usr/bin/vi")).await;
    assert!(bob.get("/").await.body.contains(&created.id), "h1 is bob's");
    assert!(!carol.get("/").await.body.contains(&created.id), "h1 is not carol's");
    let refused =
        carol.post(&format!("/requests/{}/review", created.id), &[("csrf", &carol_token), ("action", "approve")]).await;
    assert_eq!(refused.status, 403);
    assert!(refused.body.contains("carol is not assigned to host h1"), "{}", refused.body);
    let history = carol.get("/history?host=h1").await;
    assert_eq!(history.status, 403, "{}", history.body);
    assert!(!carol.get("/history").await.body.contains(&created.id), "no h1 record for carol");

    let approved = bob
        .post(
            &format!("/requests/{}/review", created.id),
            &[("csrf", &bob_token), ("action", "approve_for"), ("minutes", "60")],
        )
        .await;
    assert_eq!(approved.status, 200, "{}", approved.body);
    assert_eq!(state(&next(&mut stream).await), State::Approved);
    let grants = bob.get("/grants").await;
    let grant = grants.body.split("action=\"/grants/").nth(1).unwrap().split('/').next().unwrap().to_string();
    assert!(!carol.get("/grants").await.body.contains(&grant), "carol does not see h1's grant");
    let by_carol = carol.post(&format!("/grants/{grant}/revoke"), &[("csrf", &carol_token)]).await;
    assert_eq!(by_carol.status, 403, "{}", by_carol.body);
    let mut dana = Browser::new(&site, &server);
    let dana_token = dana.signed_in("dana").await;
    let seen = dana.get("/grants").await;
    assert!(
        seen.body.contains(&format!("grant-{grant}")) && !seen.body.contains("Revoke"),
        "auditors read, never revoke"
    );
    assert_eq!(dana.post(&format!("/grants/{grant}/revoke"), &[("csrf", &dana_token)]).await.status, 403);
    let mut root = Browser::new(&site, &server);
    let root_token = root.signed_in("root").await;
    let by_admin = root.post(&format!("/grants/{grant}/revoke"), &[("csrf", &root_token)]).await;
    assert_eq!(by_admin.status, 200, "{}", by_admin.body);
    assert!(by_admin.body.contains("revoked"));
    server.stop().await;
}

#[tokio::test]
async fn an_idle_session_ends() {
    let site = Site::with(config().extra("[console]\nlisten = \"127.0.0.1:0\"\nsession_idle = \"1s\"\n"));
    let server = site.start(None).await;
    add_users(&site, &[("bob", Role::Approver)]).await;
    let mut bob = Browser::new(&site, &server);
    bob.signed_in("bob").await;
    assert_eq!(bob.get("/").await.status, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = bob.get("/").await;
    assert_eq!((after.status, after.headers["location"].to_str().unwrap()), (303, "/login"), "idle for longer than 1s");
    server.stop().await;
}

#[tokio::test]
async fn an_approval_that_needs_a_passkey_is_refused_without_a_valid_one_and_the_ceremony_is_wired() {
    // A host name origin (passkeys refuse IP addresses), on a port picked now.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let site = Site::with(config().extra(&format!(
        "[passkeys]\nrequired = \"always\"\n[console]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"https://localhost:{port}\"\n"
    )));
    let server = site.start(None).await;
    add_users(&site, &[("bob", Role::Approver)]).await;
    let mut bob = Browser::new(&site, &server);
    let token = bob.signed_in("bob").await;
    let (created, _stream) = hold(&server, op("etc-writes", "100-1", "dev", 2000, "/usr/bin/vi")).await;

    let page = bob.get("/").await;
    let start = format!("/requests/{}/passkey/start", created.id);
    assert!(
        page.body.contains("data-passkey-approve") && page.body.contains(&format!("data-start=\"{start}\"")),
        "{}",
        page.body
    );
    assert!(page.body.contains("<meta name=\"csrf-token\""), "the script's token");
    let script = bob.get("/static/guard-passkey.js").await;
    assert_eq!(script.status, 200);
    assert!(script.body.contains("navigator.credentials.get"));

    // Without a passkey: the server's backstop refuses the approval.
    let path = format!("/requests/{}/review", created.id);
    let plain = bob.post(&path, &[("csrf", &token), ("action", "approve")]).await;
    assert_eq!(plain.status, 409, "{}", plain.body);
    assert!(plain.body.contains("passkey"), "{}", plain.body);
    // A forged step-up: refused, nothing recorded.
    let forged = bob
        .post(
            &path,
            &[("csrf", &token), ("action", "approve"), ("passkey_ceremony", "00ff"), ("passkey_credential", "{}")],
        )
        .await;
    assert_eq!(forged.status, 409, "{}", forged.body);
    assert!(forged.body.contains("passkey confirmation was refused"), "{}", forged.body);

    // The ceremony endpoints: the token is required, and bob has no passkey to confirm with.
    let no_token = bob.post_json(&start, serde_json::json!({"action": "approve"}), None).await;
    assert_eq!(no_token.status, 403, "{}", no_token.body);
    let none = bob.post_json(&start, serde_json::json!({"action": "approve"}), Some(&token)).await;
    assert_eq!(none.status, 409, "{}", none.body);
    assert!(none.body.contains("has no passkey registered"), "{}", none.body);
    let register = bob.post_json("/passkeys/register/start", serde_json::json!({}), Some(&token)).await;
    assert_eq!(register.status, 200, "{}", register.body);
    let options: serde_json::Value = serde_json::from_str(&register.body).unwrap();
    assert!(options["ceremony"].as_str().is_some_and(|c| !c.is_empty()));
    assert_eq!(options["options"]["publicKey"]["rp"]["id"], "localhost");
    assert_eq!(options["options"]["publicKey"]["authenticatorSelection"]["userVerification"], "required");
    assert_eq!(bob.get("/passkeys").await.status, 200);

    let current = server
        .approver("carol")
        .await
        .get_request(guard_proto::v1::GetRequestRequest { id: created.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&current), State::Pending, "no approval was recorded");
    assert!(current.reviews.is_empty());
    // A denial never needs a passkey.
    let denied = bob.post(&path, &[("csrf", &token), ("action", "deny"), ("reason", "no")]).await;
    assert_eq!(denied.status, 200, "{}", denied.body);
    server.stop().await;
}
