//! Chat approvals (Slack, Teams, the signed webhook) against a real guard-server on SQLite.
//! The chat services are local receivers that check what the real ones would: the fake Slack
//! Web API wants `Authorization: Bearer xoxb-...`, a JSON body with a channel, `text` and
//! Block Kit `blocks` within Slack's limits, and answers `{ok, channel, ts}`; the Teams
//! receiver wants a message whose attachment is an Adaptive Card 1.5; the webhook receiver
//! checks `X-Guard-Signature`. Callbacks are signed as Slack signs them (v0 HMAC-SHA256 with
//! the signing secret), as the Bot Framework does (RS256 JWT; the test keys are in
//! tests/fixtures/chat), and as the webhook's format says.
mod common;

use axum::extract::State as AxState;
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use common::*;
use guard_proto::v1::agent_service_client::AgentServiceClient;
use guard_proto::v1::audit_service_client::AuditServiceClient;
use guard_proto::v1::review_service_client::ReviewServiceClient;
use guard_proto::v1::{AuditQuery, GetRequestRequest, Process, Request, ReviewRequest, State};
use guard_server::config::ServerConfig;
use guard_server::server::{self, ServerHandle};
use http::HeaderMap;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Streaming;

const BOT_TOKEN: &str = "xoxb-test-0000-token";
const SIGNING_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const HOOK_SECRET: &str = "webhook-shared-secret-for-tests";
const APP_ID: &str = "6a7b8c9d-app-id";
const ISSUER: &str = "https://api.botframework.com";

// ---------------------------------------------------------------------------------------------
// The receivers.

/// What the receivers were sent, and what they would have refused.
#[derive(Default)]
struct Seen {
    /// chat.postMessage bodies taken.
    slack_posts: Vec<Value>,
    /// chat.postMessage calls, failed ones included.
    slack_attempts: usize,
    /// Answer the next this many chat.postMessage calls with a 500 (Slack down).
    slack_fail: usize,
    slack_updates: Vec<Value>,
    /// Messages posted to the interactions' response_url.
    slack_responses: Vec<Value>,
    /// Adaptive Cards posted to the Teams webhook.
    teams: Vec<Value>,
    /// Webhook events, with whether their signature checked out.
    hooks: Vec<(bool, Value)>,
    /// What Slack or Teams would have refused.
    problems: Vec<String>,
}

type Log = Arc<Mutex<Seen>>;

fn bearer_ok(headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {BOT_TOKEN}"))
        && headers.get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|c| c.starts_with("application/json"))
}

/// Slack's limits on what a message may hold (Block Kit reference).
fn slack_shape_problems(body: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    if body.get("channel").and_then(Value::as_str).is_none_or(str::is_empty) {
        problems.push("no channel".to_string());
    }
    if body.get("text").and_then(Value::as_str).is_none_or(|t| t.is_empty() || t.chars().count() > 40_000) {
        problems.push("no fallback text".to_string());
    }
    let blocks = body.get("blocks").and_then(Value::as_array).cloned().unwrap_or_default();
    if blocks.is_empty() || blocks.len() > 50 {
        problems.push(format!("{} blocks", blocks.len()));
    }
    for b in &blocks {
        if let Some(t) = b.pointer("/text/text").and_then(Value::as_str) {
            if t.chars().count() > 3000 {
                problems.push(format!("a block text of {} characters", t.chars().count()));
            }
        }
        for f in b.get("fields").and_then(Value::as_array).into_iter().flatten() {
            if f.get("text").and_then(Value::as_str).is_some_and(|t| t.chars().count() > 2000) {
                problems.push("a field over 2000 characters".into());
            }
        }
        for e in b.get("elements").and_then(Value::as_array).into_iter().flatten() {
            if e.get("type").and_then(Value::as_str) == Some("button") {
                let id = e.get("action_id").and_then(Value::as_str).unwrap_or_default();
                let value_ok = e.get("value").and_then(Value::as_str).is_some_and(|v| !v.is_empty() && v.len() <= 2000);
                if id.is_empty() || (!value_ok && e.get("url").is_none()) {
                    problems.push(format!("a button without action_id/value: {e}"));
                }
            }
        }
    }
    problems
}

async fn slack_post(
    AxState(log): AxState<Log>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (http::StatusCode, Json<Value>) {
    let mut seen = log.lock().unwrap();
    seen.slack_attempts += 1;
    if seen.slack_fail > 0 {
        seen.slack_fail -= 1;
        return (http::StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"ok": false, "error": "fatal_error"})));
    }
    if !bearer_ok(&headers) {
        seen.problems.push("chat.postMessage without the bot token".into());
        return (http::StatusCode::OK, Json(json!({"ok": false, "error": "invalid_auth"})));
    }
    let problems = slack_shape_problems(&body);
    if !problems.is_empty() {
        seen.problems.extend(problems);
        return (http::StatusCode::OK, Json(json!({"ok": false, "error": "invalid_blocks"})));
    }
    let channel = body["channel"].as_str().unwrap_or_default().to_string();
    let ts = format!("1700000000.{:06}", seen.slack_posts.len() + 1);
    seen.slack_posts.push(json!({"channel": channel, "ts": ts, "body": body}));
    (http::StatusCode::OK, Json(json!({"ok": true, "channel": channel, "ts": ts})))
}

async fn slack_update(AxState(log): AxState<Log>, headers: HeaderMap, Json(body): Json<Value>) -> Json<Value> {
    let mut seen = log.lock().unwrap();
    if !bearer_ok(&headers) {
        seen.problems.push("chat.update without the bot token".into());
        return Json(json!({"ok": false, "error": "invalid_auth"}));
    }
    let known = seen.slack_posts.iter().any(|p| p["channel"] == body["channel"] && p["ts"] == body["ts"]);
    if !known {
        seen.problems.push(format!("chat.update of a message never posted: {}", body["ts"]));
        return Json(json!({"ok": false, "error": "message_not_found"}));
    }
    seen.problems.extend(slack_shape_problems(&body));
    seen.slack_updates.push(body.clone());
    Json(json!({"ok": true, "channel": body["channel"], "ts": body["ts"]}))
}

async fn slack_response(AxState(log): AxState<Log>, Json(body): Json<Value>) -> Json<Value> {
    log.lock().unwrap().slack_responses.push(body);
    Json(json!({"ok": true}))
}

async fn teams_post(AxState(log): AxState<Log>, Json(body): Json<Value>) -> http::StatusCode {
    let mut seen = log.lock().unwrap();
    let card = &body["attachments"][0]["content"];
    let ok = body["type"] == "message"
        && body["attachments"][0]["contentType"] == "application/vnd.microsoft.card.adaptive"
        && card["type"] == "AdaptiveCard"
        && card["version"] == "1.5"
        && card["body"].as_array().is_some_and(|b| !b.is_empty())
        && card["actions"].is_array();
    if !ok {
        seen.problems.push(format!("not an Adaptive Card 1.5 message: {body}"));
        return http::StatusCode::BAD_REQUEST;
    }
    seen.teams.push(card.clone());
    // Workflows answer 202 Accepted.
    http::StatusCode::ACCEPTED
}

async fn hook_post(AxState(log): AxState<Log>, headers: HeaderMap, body: Bytes) -> http::StatusCode {
    let header = headers.get("x-guard-signature").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let verified = verify_guard_signature(&header, &body);
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    log.lock().unwrap().hooks.push((verified, value));
    if verified {
        http::StatusCode::OK
    } else {
        http::StatusCode::UNAUTHORIZED
    }
}

/// What a webhook receiver does with guard's post: t within 5 minutes, v1 the HMAC of "t.body".
fn verify_guard_signature(header: &str, body: &[u8]) -> bool {
    let parts: std::collections::HashMap<&str, &str> = header.split(',').filter_map(|p| p.split_once('=')).collect();
    let (Some(t), Some(v1)) = (parts.get("t"), parts.get("v1")) else { return false };
    let Ok(t) = t.parse::<i64>() else { return false };
    if (unix_now() - t).abs() > 300 {
        return false;
    }
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(body);
    hmac_hex(HOOK_SECRET.as_bytes(), &signed) == *v1
}

async fn receivers(log: Log) -> SocketAddr {
    let app = Router::new()
        .route("/api/chat.postMessage", post(slack_post))
        .route("/api/chat.update", post(slack_update))
        .route("/response", post(slack_response))
        .route("/teams", post(teams_post))
        .route("/hook", post(hook_post))
        .with_state(log);
    serve(app).await
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

// ---------------------------------------------------------------------------------------------
// The server under test.

struct Env {
    site: Site,
    handle: Option<ServerHandle>,
    log: Log,
    /// Where the chat router is served (the console nests it under /chat in production).
    chat: SocketAddr,
    receivers: SocketAddr,
    agent: AgentServiceClient<Channel>,
}

fn chat_toml(receivers: SocketAddr) -> String {
    format!(
        r#"
[chat]
console_url = "https://guard.example.com"

[chat.slack]
bot_token_file = "secrets/slack-bot-token"
signing_secret_file = "secrets/slack-signing-secret"
channel = ["C0APPROVE", "C0SECOPS"]
api_base = "http://{receivers}/api"
users = {{ "UALICE" = "alice", "UBOB" = "bob", "UCAROL" = "carol", "UMALLORY" = "mallory" }}

[chat.teams]
post_url = "http://{receivers}/teams"
app_id = "{APP_ID}"
issuer = "{ISSUER}"
jwks_file = "teams-jwks.json"
users = {{ "aad-alice" = "alice", "aad-bob" = "bob" }}

[chat.webhook]
url = "http://{receivers}/hook"
secret_file = "secrets/hook-secret"
"#
    )
}

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/chat"))
}

fn write_secrets(dir: &Path) {
    std::fs::create_dir_all(dir.join("secrets")).unwrap();
    std::fs::write(dir.join("secrets/slack-bot-token"), format!("{BOT_TOKEN}\n")).unwrap();
    std::fs::write(dir.join("secrets/slack-signing-secret"), SIGNING_SECRET).unwrap();
    std::fs::write(dir.join("secrets/hook-secret"), HOOK_SECRET).unwrap();
    std::fs::copy(fixtures().join("teams-jwks.json"), dir.join("teams-jwks.json")).unwrap();
}

/// A server on `site` (on `database_url` when given) and where its chat router is served.
async fn replica(site: &Site, database_url: Option<String>) -> (ServerHandle, SocketAddr) {
    let mut config = ServerConfig::load(&site.dir.path().join("server.toml")).expect("config with [chat] loads");
    if let Some(url) = database_url {
        config.database_url = url;
    }
    let handle = server::start(&config).await.expect("server starts");
    let chat = serve(handle.chat().expect("chat configured").router()).await;
    (handle, chat)
}

impl Env {
    /// A server with all three channels; Slack fails its first `slack_fail` posts.
    async fn start(slack_fail: usize) -> Env {
        Env::start_on(slack_fail, None).await
    }

    /// As `start`, on the database at `database_url` (the config's SQLite when None).
    async fn start_on(slack_fail: usize, database_url: Option<String>) -> Env {
        Env::start_with(slack_fail, database_url, "").await
    }

    /// As `start_on`, with `extra` added to the server config (e.g. a `[passkeys]` section).
    async fn start_with(slack_fail: usize, database_url: Option<String>, extra: &str) -> Env {
        let log: Log = Arc::new(Mutex::new(Seen { slack_fail, ..Default::default() }));
        let receivers = receivers(log.clone()).await;
        let site = Site::with(config().extra(&chat_toml(receivers)).extra(extra));
        write_secrets(site.dir.path());
        let (handle, chat) = replica(&site, database_url).await;
        let pki = site.pki();
        let mut agent = AgentServiceClient::new(channel_with(handle.addr(), &pki, &pki, "agent-h1").await.unwrap());
        agent.register(registration(&[("test", POLICY_HASH)])).await.expect("register");
        Env { site, handle: Some(handle), log, chat, receivers, agent }
    }

    fn handle(&self) -> &ServerHandle {
        self.handle.as_ref().unwrap()
    }

    async fn approver(&self, name: &str) -> ReviewServiceClient<Channel> {
        let pki = self.site.pki();
        ReviewServiceClient::new(
            channel_with(self.handle().addr(), &pki, &pki, &format!("approver-{name}")).await.unwrap(),
        )
    }

    async fn auditor(&self) -> AuditServiceClient<Channel> {
        let pki = self.site.pki();
        AuditServiceClient::new(channel_with(self.handle().addr(), &pki, &pki, "approver-carol").await.unwrap())
    }

    /// Submits `operation`; the request as created (pending) and the agent's stream.
    async fn submit(&mut self, operation: guard_proto::v1::Operation) -> (Request, Streaming<Request>) {
        let mut stream = self.agent.submit(submit(operation, 60, "")).await.unwrap().into_inner();
        let first = next(&mut stream).await;
        assert_eq!(state(&first), State::Pending, "{first:?}");
        (first, stream)
    }

    async fn get(&self, id: &str) -> Request {
        self.approver("carol").await.get_request(GetRequestRequest { id: id.into() }).await.unwrap().into_inner()
    }

    /// Waits (20 s at most: retries back off, and the machine may be busy) until `done` holds
    /// of what the receivers saw.
    async fn until(&self, what: &str, done: impl Fn(&Seen) -> bool) {
        for _ in 0..400 {
            if done(&self.log.lock().unwrap()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let seen = self.log.lock().unwrap();
        panic!(
            "timed out waiting for {what}: {} slack posts ({} attempts), {} updates, {} teams, {} hooks, problems {:?}",
            seen.slack_posts.len(),
            seen.slack_attempts,
            seen.slack_updates.len(),
            seen.teams.len(),
            seen.hooks.len(),
            seen.problems
        );
    }

    /// The Slack cards posted for request `id` (one per channel).
    fn slack_cards(&self, id: &str) -> Vec<Value> {
        self.log.lock().unwrap().slack_posts.iter().filter(|p| p["body"].to_string().contains(id)).cloned().collect()
    }

    /// The token the Slack card of `id` carries on its buttons.
    fn slack_token(&self, id: &str) -> String {
        let cards = self.slack_cards(id);
        let card = cards.first().expect("a Slack card");
        button(&card["body"], "guard_approve")["value"].as_str().unwrap().to_string()
    }

    fn teams_cards(&self, id: &str) -> Vec<Value> {
        self.log.lock().unwrap().teams.iter().filter(|c| c.to_string().contains(id)).cloned().collect()
    }

    fn problems(&self) -> Vec<String> {
        self.log.lock().unwrap().problems.clone()
    }

    /// POSTs a Slack interaction (`payload=<json>`) signed at `ts` with `secret`.
    async fn slack_action(&self, body: &str, ts: i64, secret: &str) -> (u16, String) {
        let sig = slack_signature(secret, ts, body);
        self.slack_raw(body, ts, &sig).await
    }

    async fn slack_raw(&self, body: &str, ts: i64, signature: &str) -> (u16, String) {
        http_post(
            &format!("http://{}/slack/actions", self.chat),
            &[
                ("content-type", "application/x-www-form-urlencoded".into()),
                ("x-slack-request-timestamp", ts.to_string()),
                ("x-slack-signature", signature.to_string()),
            ],
            body.as_bytes().to_vec(),
        )
        .await
    }

    fn slack_body(&self, user: &str, action_id: &str, token: &str) -> String {
        let payload = json!({
            "type": "block_actions",
            "user": {"id": user, "username": user.to_lowercase(), "team_id": "T0TEAM"},
            "api_app_id": "A0APP",
            "container": {"type": "message", "channel_id": "C0APPROVE"},
            "response_url": format!("http://{}/response", self.receivers),
            "actions": [{"type": "button", "action_id": action_id, "block_id": "guard_actions", "value": token,
                         "action_ts": "1700000000.000100"}],
        });
        form_urlencoded::Serializer::new(String::new()).append_pair("payload", &payload.to_string()).finish()
    }

    async fn stop(mut self) {
        assert!(self.problems().is_empty(), "what Slack/Teams would refuse: {:?}", self.problems());
        if let Some(h) = self.handle.take() {
            h.shutdown(Duration::from_secs(5)).await.expect("clean shutdown");
        }
    }
}

fn button<'a>(slack_body: &'a Value, action_id: &str) -> &'a Value {
    slack_body["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["elements"].as_array().into_iter().flatten())
        .find(|e| e["action_id"] == action_id)
        .unwrap_or_else(|| panic!("no {action_id} button in {slack_body}"))
}

fn has_buttons(slack_body: &Value) -> bool {
    slack_body["blocks"].as_array().unwrap().iter().any(|b| b["type"] == "actions")
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn hmac_hex(key: &[u8], message: &[u8]) -> String {
    let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), message);
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// As Slack signs: `v0=` hex HMAC-SHA256(signing secret, "v0:{ts}:{body}").
fn slack_signature(secret: &str, ts: i64, body: &str) -> String {
    format!("v0={}", hmac_hex(secret.as_bytes(), format!("v0:{ts}:{body}").as_bytes()))
}

fn guard_signature(secret: &str, t: i64, body: &str) -> String {
    format!("t={t},v1={}", hmac_hex(secret.as_bytes(), format!("{t}.{body}").as_bytes()))
}

async fn http_post(url: &str, headers: &[(&str, String)], body: Vec<u8>) -> (u16, String) {
    let uri: http::Uri = url.parse().unwrap();
    let tcp = tokio::net::TcpStream::connect((uri.host().unwrap(), uri.port_u16().unwrap())).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let mut request = http::Request::post(uri.path()).header("host", uri.authority().unwrap().as_str());
    for (k, v) in headers {
        request = request.header(*k, v);
    }
    let response = sender.send_request(request.body(Full::new(Bytes::from(body))).unwrap()).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A pending request's operation from user `dev` (nobody's own) unless said otherwise.
fn deploy() -> guard_proto::v1::Operation {
    let mut op = op("deploy", "1-1", "dev", 2000, "/usr/bin/kubectl");
    op.access = "exec".into();
    op.cwd = "/srv/app".into();
    op.stated_reason =
        Some(guard_proto::v1::StatedReason { reason: "rolling out the fix".into(), ..Default::default() });
    op.ancestry.push(Process {
        pid: 4200,
        ppid: 1,
        uid: 2000,
        exe: "/usr/bin/bash".into(),
        argv: vec!["bash".into()],
        ..Default::default()
    });
    op
}

/// The review records and refusals of request `id` in the audit trail.
async fn trail(env: &Env, id: &str) -> Vec<guard_api::AuditRecord> {
    let query = AuditQuery { request_id: id.into(), ..Default::default() };
    let rows: Vec<_> = env.auditor().await.query(query).await.unwrap().into_inner().collect().await;
    rows.into_iter()
        .map(|r| guard_api::AuditRecord::from_json(&r.unwrap().json).expect("an audit record"))
        .filter(|r| r.kind == guard_api::RecordKind::Review)
        .collect()
}

fn refusals(records: &[guard_api::AuditRecord]) -> Vec<&guard_api::AuditRecord> {
    records.iter().filter(|r| r.reason == Some(guard_api::Reason::Refused)).collect()
}

// ---------------------------------------------------------------------------------------------
// Bearer tokens as the Bot Framework sends them.

fn jwt(key_file: &str, aud: &str, exp_in: i64) -> String {
    let key = std::fs::read(fixtures().join(key_file)).unwrap();
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&key).expect("test RSA key");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("teams-test-key".into());
    let now = unix_now();
    let claims = json!({"iss": ISSUER, "aud": aud, "nbf": now - 10, "exp": now + exp_in,
                        "serviceUrl": "https://smba.trafficmanager.net/teams/"});
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

fn teams_activity(id: &str, user: &str, verb: &str, token: &str) -> String {
    json!({
        "type": "invoke",
        "name": "adaptiveCard/action",
        "id": id,
        "serviceUrl": "https://smba.trafficmanager.net/teams/",
        "from": {"id": "29:1abc", "aadObjectId": user},
        "value": {"action": {"type": "Action.Execute", "verb": verb, "data": {"token": token}}},
    })
    .to_string()
}

async fn teams_action(env: &Env, bearer: &str, body: String) -> (u16, String) {
    http_post(
        &format!("http://{}/teams/actions", env.chat),
        &[("content-type", "application/json".into()), ("authorization", format!("Bearer {bearer}"))],
        body.into_bytes(),
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[tokio::test]
async fn a_request_gets_cards_everywhere_and_a_signed_slack_approve_decides_and_updates_every_copy() {
    let mut env = Env::start(0).await;
    let (request, mut stream) = env.submit(deploy()).await;
    let id = request.id.clone();
    env.until("a Slack card in both channels, a Teams card, a webhook event", |s| {
        s.slack_posts.len() == 2 && s.teams.len() == 1 && s.hooks.len() == 1
    })
    .await;

    // Slack: one copy per channel, the facts, Approve/Deny carrying an opaque token.
    let cards = env.slack_cards(&id);
    let channels: Vec<&str> = cards.iter().map(|c| c["channel"].as_str().unwrap()).collect();
    assert_eq!(channels, ["C0APPROVE", "C0SECOPS"]);
    let card = &cards[0]["body"];
    let text = card.to_string();
    for fact in [
        "h1",
        "/usr/bin/kubectl",
        "--now",
        "/usr/bin/bash",
        "/srv/app",
        "deploy",
        "exec",
        "dev (uid 2000)",
        "The agent's claim (unverified):* rolling out the fix",
        "0 of 1",
        "Expires",
    ] {
        assert!(text.contains(fact), "{fact:?} missing from the Slack card {text}");
    }
    let token = button(card, "guard_approve")["value"].as_str().unwrap().to_string();
    assert_eq!(button(card, "guard_deny")["value"], token.as_str());
    assert!(token.len() >= 26 && !token.contains(&id), "the token is opaque and 128+ bits: {token}");
    assert_eq!(button(card, "guard_console")["url"], format!("https://guard.example.com/#req-{id}").as_str());

    // Teams: the same facts on an Adaptive Card 1.5 with Action.Execute buttons.
    let teams = env.teams_cards(&id);
    assert_eq!(teams.len(), 1);
    let verbs: Vec<&str> = teams[0]["actions"].as_array().unwrap().iter().filter_map(|a| a["verb"].as_str()).collect();
    assert_eq!(verbs, ["approve", "deny"]);
    assert!(teams[0]["actions"][0]["type"] == "Action.Execute" && teams[0]["actions"][0]["data"]["token"].is_string());
    assert!(teams[0].to_string().contains("/usr/bin/kubectl"), "{}", teams[0]);

    // The webhook: a signed "created" event the receiver verified.
    let (verified, event) = env.log.lock().unwrap().hooks[0].clone();
    assert!(verified, "the receiver could not verify X-Guard-Signature");
    assert_eq!(event["event"], "created");
    assert_eq!(event["request"]["id"], id.as_str());

    // Alice approves in Slack, signed as Slack signs.
    let body = env.slack_body("UALICE", "guard_approve", &token);
    let ts = unix_now();
    let (status, answer) = env.slack_action(&body, ts, SIGNING_SECRET).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("approved"), "{answer}");
    let decided = next(&mut stream).await;
    assert_eq!(state(&decided), State::Approved, "the agent's stream sees the approval");
    let reviewed = env.get(&id).await;
    assert_eq!(reviewed.reviews.len(), 1);
    assert_eq!((reviewed.reviews[0].approver.as_str(), reviewed.reviews[0].verified_by.as_str()), ("alice", "slack"));
    let records = trail(&env, &id).await;
    assert!(
        records.iter().any(|r| r.approver.as_deref() == Some("alice") && r.verified_by.as_deref() == Some("slack")),
        "the review's audit record says verified_by slack: {records:?}"
    );

    // The same post again is a replay, whatever it asks.
    let (status, answer) = env.slack_action(&body, ts, SIGNING_SECRET).await;
    assert_eq!(status, 401, "{answer}");
    assert!(answer.contains("replay"), "{answer}");

    // Every copy is updated: both Slack messages in place (no buttons, who decided), a
    // decided Teams card, a "decided" webhook event.
    env.until("both Slack copies updated, the decided Teams card and webhook event", |s| {
        s.slack_updates.len() == 2 && s.teams.len() == 2 && s.hooks.len() == 2
    })
    .await;
    {
        let seen = env.log.lock().unwrap();
        let mut updated: Vec<(String, String)> = seen
            .slack_updates
            .iter()
            .map(|u| (u["channel"].as_str().unwrap().into(), u["ts"].as_str().unwrap().into()))
            .collect();
        updated.sort();
        let mut posted: Vec<(String, String)> = seen
            .slack_posts
            .iter()
            .map(|p| (p["channel"].as_str().unwrap().into(), p["ts"].as_str().unwrap().into()))
            .collect();
        posted.sort();
        assert_eq!(updated, posted, "each (channel, ts) posted is updated");
        for update in &seen.slack_updates {
            assert!(!has_buttons(update), "a decided card has no buttons: {update}");
            assert!(update.to_string().contains("approved by alice"), "{update}");
        }
        assert!(seen.teams[1]["actions"].as_array().unwrap().iter().all(|a| a["type"] != "Action.Execute"));
        assert!(seen.teams[1].to_string().contains("approved by alice"));
        assert!(
            seen.hooks[1].0
                && seen.hooks[1].1["event"] == "decided"
                && seen.hooks[1].1["request"]["state"] == "approved"
        );
    }
    env.stop().await;
}

#[tokio::test]
async fn forged_stale_replayed_unknown_and_unmapped_slack_callbacks_change_nothing() {
    let mut env = Env::start(0).await;
    let (request, _stream) = env.submit(deploy()).await;
    let id = request.id.clone();
    env.until("the Slack cards", |s| s.slack_posts.len() == 2).await;
    let token = env.slack_token(&id);
    let body = env.slack_body("UALICE", "guard_approve", &token);

    // Signed with another secret.
    let (status, answer) = env.slack_action(&body, unix_now(), "not-the-signing-secret").await;
    assert_eq!(status, 401, "{answer}");
    assert!(answer.contains("X-Slack-Signature does not match"), "{answer}");
    // No signature at all, and one for another body.
    let (status, _) = env.slack_raw(&body, unix_now(), "").await;
    assert_eq!(status, 401);
    let other = env.slack_body("UALICE", "guard_approve", "x");
    let (status, _) = env.slack_raw(&body, unix_now(), &slack_signature(SIGNING_SECRET, unix_now(), &other)).await;
    assert_eq!(status, 401);
    // Correctly signed, 6 minutes old.
    let (status, answer) = env.slack_action(&body, unix_now() - 360, SIGNING_SECRET).await;
    assert_eq!(status, 401, "{answer}");
    assert!(answer.contains("window"), "{answer}");
    // Correctly signed, a token no card carries (the request id itself included).
    for bogus in ["abcdefghijklmnopqrstuvwxyz234567", id.as_str()] {
        let (status, answer) =
            env.slack_action(&env.slack_body("UALICE", "guard_approve", bogus), unix_now(), SIGNING_SECRET).await;
        assert_eq!(status, 401, "{answer}");
        assert!(answer.contains("unknown or expired card token"), "{answer}");
    }
    // Correctly signed, the token of this request's Teams card: not a Slack card's.
    env.until("the Teams card", |s| s.teams.len() == 1).await;
    let teams_token = env.teams_cards(&id)[0]["actions"][0]["data"]["token"].as_str().unwrap().to_string();
    assert_ne!(teams_token, token, "a token per channel");
    let (status, answer) =
        env.slack_action(&env.slack_body("UALICE", "guard_approve", &teams_token), unix_now(), SIGNING_SECRET).await;
    assert_eq!(status, 401, "{answer}");
    assert!(answer.contains("unknown or expired card token"), "{answer}");
    // Correctly signed by a Slack user who is no approver: told so, in Slack too.
    let stranger = env.slack_body("UNOBODY", "guard_approve", &token);
    let ts = unix_now();
    let (status, answer) = env.slack_action(&stranger, ts, SIGNING_SECRET).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("not mapped to a guard approver"), "{answer}");
    env.until("the refusal posted to the response_url", |s| !s.slack_responses.is_empty()).await;
    let response = env.log.lock().unwrap().slack_responses[0].clone();
    assert_eq!(response["response_type"], "ephemeral");
    assert!(response["text"].as_str().unwrap().contains("not mapped"), "{response}");
    // ...and the same post again is a replay.
    let (status, answer) = env.slack_action(&stranger, ts, SIGNING_SECRET).await;
    assert_eq!(status, 401, "{answer}");
    assert!(answer.contains("replay"), "{answer}");

    let after = env.get(&id).await;
    assert_eq!(state(&after), State::Pending, "nothing changed the request");
    assert!(after.reviews.is_empty(), "{:?}", after.reviews);
    assert_eq!(env.handle().chat().unwrap().forged_count(), 8, "forged posts are counted");
    // The unmapped user's attempt on a real request is in the trail; forged posts are not.
    let records = trail(&env, &id).await;
    let refused = refusals(&records);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].approver.as_deref(), Some("slack:UNOBODY"));
    env.stop().await;
}

#[tokio::test]
async fn a_self_approval_and_a_review_of_a_decided_request_are_refused_through_slack() {
    let mut env = Env::start(0).await;
    // Alice's own tree (unix user alice, uid 1000 in the config): not hers to approve.
    let (request, mut stream) = env.submit(op("deploy", "7-1", "alice", 1000, "/usr/bin/kubectl")).await;
    let id = request.id.clone();
    env.until("the Slack cards", |s| s.slack_posts.len() == 2).await;
    let token = env.slack_token(&id);

    let (status, answer) =
        env.slack_action(&env.slack_body("UALICE", "guard_approve", &token), unix_now(), SIGNING_SECRET).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("refused") && answer.contains("alice"), "{answer}");
    let after = env.get(&id).await;
    assert_eq!(state(&after), State::Pending);
    assert!(after.reviews.is_empty());

    // Bob denies; then alice's approve (a new, correctly signed post) finds it decided.
    let (status, answer) =
        env.slack_action(&env.slack_body("UBOB", "guard_deny", &token), unix_now(), SIGNING_SECRET).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(state(&next(&mut stream).await), State::Denied);
    tokio::time::sleep(Duration::from_millis(1100)).await; // a new timestamp: a new signature
    let (status, answer) =
        env.slack_action(&env.slack_body("UCAROL", "guard_approve", &token), unix_now(), SIGNING_SECRET).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("refused") && answer.contains("no longer pending"), "{answer}");
    let after = env.get(&id).await;
    assert_eq!(state(&after), State::Denied, "still denied");
    assert_eq!(after.reviews.len(), 1);
    assert_eq!((after.reviews[0].approver.as_str(), after.reviews[0].verified_by.as_str()), ("bob", "slack"));
    let records = trail(&env, &id).await;
    let refused: Vec<Option<&str>> = refusals(&records).iter().map(|r| r.approver.as_deref()).collect();
    assert_eq!(refused, [Some("alice"), Some("carol")], "both refusals are in the trail");
    env.stop().await;
}

#[tokio::test]
async fn n_of_m_and_eligibility_apply_across_chat_channels() {
    let mut env = Env::start(0).await;
    // prod-deploy: 2 approvals of alice, bob, carol (tests/common's config).
    let (request, mut stream) = env.submit(op("prod-deploy", "3-1", "dev", 2000, "/usr/bin/helm")).await;
    let id = request.id.clone();
    assert_eq!(request.approvals_required, 2);
    env.until("the cards", |s| s.slack_posts.len() == 2 && s.teams.len() == 1).await;
    let token = env.slack_token(&id);
    assert!(env.slack_cards(&id)[0].to_string().contains("0 of 2"));

    // Mallory is mapped in Slack but is not one of this rule's approvers.
    let (status, answer) =
        env.slack_action(&env.slack_body("UMALLORY", "guard_approve", &token), unix_now(), SIGNING_SECRET).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("refused") && answer.contains("mallory"), "{answer}");
    // Alice in Slack: one of two.
    let (status, answer) =
        env.slack_action(&env.slack_body("UALICE", "guard_approve", &token), unix_now(), SIGNING_SECRET).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("pending"), "{answer}");
    let after = env.get(&id).await;
    assert_eq!((state(&after), after.reviews.len()), (State::Pending, 1));
    // Bob in Teams: two of two.
    let teams_token = env.teams_cards(&id)[0]["actions"][0]["data"]["token"].as_str().unwrap().to_string();
    let good = jwt("teams-key.pem", APP_ID, 600);
    let (status, answer) = teams_action(&env, &good, teams_activity("act-1", "aad-bob", "approve", &teams_token)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(state(&next(&mut stream).await), State::Approved);
    let after = env.get(&id).await;
    let reviews: Vec<(&str, &str)> =
        after.reviews.iter().map(|r| (r.approver.as_str(), r.verified_by.as_str())).collect();
    assert_eq!(reviews, [("alice", "slack"), ("bob", "teams")]);
    let records = trail(&env, &id).await;
    let refused: Vec<Option<&str>> = refusals(&records).iter().map(|r| r.approver.as_deref()).collect();
    assert_eq!(refused, [Some("mallory")]);
    env.until("the Slack copies updated", |s| s.slack_updates.len() == 2).await;
    env.stop().await;
}

#[tokio::test]
async fn teams_actions_need_a_bot_framework_token_from_the_configured_key_and_app() {
    let mut env = Env::start(0).await;
    let (request, mut stream) = env.submit(deploy()).await;
    let id = request.id.clone();
    env.until("the Teams card", |s| s.teams.len() == 1).await;
    let token = env.teams_cards(&id)[0]["actions"][0]["data"]["token"].as_str().unwrap().to_string();

    let cases = [
        ("a key the JWKS does not hold", jwt("other-key.pem", APP_ID, 600), "InvalidSignature"),
        ("another bot's audience", jwt("teams-key.pem", "some-other-app", 600), "InvalidAudience"),
        ("an expired token", jwt("teams-key.pem", APP_ID, -600), "ExpiredSignature"),
        ("no token", String::new(), "Bearer"),
    ];
    for (i, (what, bearer, why)) in cases.iter().enumerate() {
        let (status, answer) =
            teams_action(&env, bearer, teams_activity(&format!("act-{i}"), "aad-alice", "approve", &token)).await;
        assert_eq!(status, 401, "{what}: {answer}");
        assert!(answer.contains(why), "{what}: {answer}");
    }
    // A good token, but the user is not mapped: Universal Actions' error answer.
    let good = jwt("teams-key.pem", APP_ID, 600);
    let (status, answer) = teams_action(&env, &good, teams_activity("act-x", "aad-mallory", "approve", &token)).await;
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["statusCode"], 403, "{answer}");
    assert!(answer["value"]["message"].as_str().unwrap().contains("not mapped"), "{answer}");
    assert_eq!(state(&env.get(&id).await), State::Pending, "nothing changed");

    let (status, answer) = teams_action(&env, &good, teams_activity("act-ok", "aad-bob", "approve", &token)).await;
    assert_eq!(status, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["statusCode"], 200, "{answer}");
    assert_eq!(state(&next(&mut stream).await), State::Approved);
    let after = env.get(&id).await;
    assert_eq!((after.reviews[0].approver.as_str(), after.reviews[0].verified_by.as_str()), ("bob", "teams"));
    // The same activity again is a replay.
    let (status, answer) = teams_action(&env, &good, teams_activity("act-ok", "aad-bob", "approve", &token)).await;
    assert_eq!(status, 401, "{answer}");
    env.stop().await;
}

#[tokio::test]
async fn the_webhook_posts_signed_events_and_a_signed_callback_decides() {
    let mut env = Env::start(0).await;
    let (request, mut stream) = env.submit(deploy()).await;
    let id = request.id.clone();
    env.until("the webhook's created event", |s| s.hooks.len() == 1).await;
    let (verified, event) = env.log.lock().unwrap().hooks[0].clone();
    assert!(verified, "the receiver verifies guard's signature");
    let token = event["token"].as_str().unwrap().to_string();
    let url = format!("http://{}/webhook/actions", env.chat);
    let callback = json!({"token": token, "action": "deny", "user": "bob", "comment": "not today"}).to_string();
    let post = |sig: String, body: String| {
        let url = url.clone();
        async move { http_post(&url, &[("x-guard-signature", sig)], body.into_bytes()).await }
    };

    let (status, answer) = post(guard_signature("wrong-secret", unix_now(), &callback), callback.clone()).await;
    assert_eq!(status, 401, "{answer}");
    let (status, answer) = post(guard_signature(HOOK_SECRET, unix_now() - 360, &callback), callback.clone()).await;
    assert_eq!(status, 401, "{answer}");
    assert!(answer.contains("window"), "{answer}");
    let (status, _) = post(String::new(), callback.clone()).await;
    assert_eq!(status, 401);
    assert_eq!(state(&env.get(&id).await), State::Pending);

    let sig = guard_signature(HOOK_SECRET, unix_now(), &callback);
    let (status, answer) = post(sig.clone(), callback.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(state(&next(&mut stream).await), State::Denied);
    let after = env.get(&id).await;
    assert_eq!((after.reviews[0].approver.as_str(), after.reviews[0].verified_by.as_str()), ("bob", "webhook"));
    assert_eq!(after.reviews[0].comment, "not today");
    let (status, answer) = post(sig, callback).await;
    assert_eq!(status, 401, "a replay: {answer}");
    env.until("the decided event", |s| s.hooks.len() == 2).await;
    let (verified, event) = env.log.lock().unwrap().hooks[1].clone();
    assert!(verified && event["event"] == "decided" && event["request"]["state"] == "denied", "{event}");
    env.stop().await;
}

#[tokio::test]
async fn a_dead_slack_is_retried_and_never_holds_up_a_decision() {
    // Slack answers 500 to the first three posts.
    let mut env = Env::start(3).await;
    let (request, mut stream) = env.submit(deploy()).await;
    let id = request.id.clone();
    env.until("Slack's first (failed) post", |s| s.slack_attempts >= 1).await;
    // Decided in guardctl at once, while the Slack cards are still failing.
    let review = ReviewRequest { id: id.clone(), approve: true, comment: String::new(), grant_seconds: 0 };
    env.approver("bob").await.review(review).await.expect("the review does not wait for Slack");
    let decided = next(&mut stream).await;
    assert_eq!(state(&decided), State::Approved);
    assert!(
        env.log.lock().unwrap().slack_posts.is_empty(),
        "decided while Slack was still failing (its retries back off 0.5 + 1 + 2 s)"
    );
    // The cards get there in the end, and are then updated with the decision.
    env.until("both Slack cards posted after retries, then updated", |s| {
        s.slack_posts.len() == 2 && s.slack_updates.len() == 2
    })
    .await;
    {
        let seen = env.log.lock().unwrap();
        assert_eq!(seen.slack_attempts, 5, "three failures retried");
        assert!(seen.slack_updates.iter().all(|u| u.to_string().contains("approved by bob")));
    }
    env.stop().await;
}

#[tokio::test]
async fn hostile_argv_is_escaped_in_every_card() {
    let mut env = Env::start(0).await;
    let mut operation = deploy();
    let hostile =
        "<!here> <https://evil.example|click here> `code` *bold* <script>alert(1)</script> \x1b[2J\u{202e}txt.exe";
    // Very long: each argument within the agent's 4096 bytes, 20 000 in all.
    let mut argv = vec!["sh".to_string(), "-c".into(), hostile.into()];
    argv.extend((0..5).map(|i| format!("{i}").repeat(4000)));
    operation.ancestry[0].argv = argv;
    operation.cwd = "<!channel>".into();
    operation.stated_reason = Some(guard_proto::v1::StatedReason {
        reason: "<!everyone> trust me & <@U0ADMIN>".into(),
        ..Default::default()
    });
    let (request, _stream) = env.submit(operation).await;
    env.until("the cards", |s| s.slack_posts.len() == 2 && s.teams.len() == 1).await;

    let slack = env.slack_cards(&request.id)[0]["body"].clone();
    let texts: Vec<String> = slack["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| {
            let mut t: Vec<String> =
                b.pointer("/text/text").and_then(Value::as_str).map(str::to_string).into_iter().collect();
            t.extend(
                b["fields"].as_array().into_iter().flatten().filter_map(|f| f["text"].as_str().map(str::to_string)),
            );
            t.extend(
                b["elements"].as_array().into_iter().flatten().filter_map(|e| e["text"].as_str().map(str::to_string)),
            );
            t
        })
        .collect();
    let all = texts.join("\n");
    for bad in ["<!here>", "<!channel>", "<!everyone>", "<@U0ADMIN>", "<https://evil", "<script>", "\x1b", "\u{202e}"] {
        assert!(!all.contains(bad), "{bad:?} reached the Slack card: {all}");
    }
    // Backticks: only the card's own code spans, in pairs, around exe and argv.
    for t in &texts {
        assert_eq!(t.matches('`').count() % 2, 0, "an unbalanced code span: {t}");
    }
    assert!(all.contains("&lt;!here&gt;") && all.contains("&amp;"), "shown escaped, not dropped: {all}");
    assert!(all.contains("\\x1b[2J"), "the escape is made visible: {all}");
    assert!(all.contains("characters shown)"), "the cut says how much: {all}");
    assert!(texts.iter().all(|t| t.chars().count() <= 3000), "within Slack's block limit");

    let teams = env.teams_cards(&request.id)[0].to_string();
    for bad in ["<script>", "<!here>", "](https://evil", "\\u001b"] {
        assert!(!teams.contains(bad), "{bad:?} reached the Teams card: {teams}");
    }
    assert!(teams.contains("characters shown)"), "{teams}");
    env.stop().await;
}

#[test]
fn chat_config_errors_name_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.toml");
    let tls = "[tls]\nca = \"pki/ca.crt\"\ncert = \"pki/server.crt\"\nkey = \"pki/server.key\"\n";
    let slack = |extra: &str| {
        format!(
            "{tls}[chat.slack]\nbot_token_file = \"bot\"\nsigning_secret_file = \"signing\"\nchannel = \"C1\"\n{extra}"
        )
    };
    let err = ServerConfig::parse(&path, &slack("")).unwrap_err().to_string();
    assert!(
        err.contains("chat.slack.bot_token_file") && err.contains(&dir.path().join("bot").display().to_string()),
        "{err}"
    );
    std::fs::write(dir.path().join("bot"), "xoxb-1").unwrap();
    std::fs::write(dir.path().join("signing"), "\n").unwrap();
    let err = ServerConfig::parse(&path, &slack("")).unwrap_err().to_string();
    assert!(err.contains("chat.slack.signing_secret_file") && err.contains("is empty"), "{err}");
    std::fs::write(dir.path().join("signing"), "s3cret").unwrap();
    let ok = ServerConfig::parse(&path, &slack("")).expect("valid");
    let slack_config = ok.chat.slack.expect("slack on");
    assert_eq!(slack_config.api_base, "https://slack.com/api");
    assert!(!format!("{slack_config:?}").contains("s3cret"), "secrets are never printed");
    let err = ServerConfig::parse(&path, &slack("api_base = \"http://slack.example.com/api\"\n")).unwrap_err();
    assert!(err.to_string().contains("chat.slack.api_base") && err.at.line == 9, "{err}");
    let err = ServerConfig::parse(&path, &slack("signing_secret = \"inline\"\n")).unwrap_err().to_string();
    assert!(err.contains("signing_secret"), "unknown keys are refused: {err}");
    let teams = format!("{tls}[chat.teams]\npost_url = \"https://example.webhook.office.com/x\"\napp_id = \"a\"\njwks_file = \"jwks\"\n");
    std::fs::write(dir.path().join("jwks"), "{\"keys\": 3}").unwrap();
    let err = ServerConfig::parse(&path, &teams).unwrap_err().to_string();
    assert!(err.contains("chat.teams.jwks_file") && err.contains("not a JWKS"), "{err}");
    assert!(ServerConfig::parse(&path, tls).unwrap().chat.is_off(), "off by default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(has_postgres), ignore = "SKIPPED: no PostgreSQL (initdb/pg_ctl) on the build machine")]
async fn replicas_on_postgresql_post_each_card_once_and_update_it_once() {
    use guard_server::testing::pg::{find_bindir, PgCluster};
    if let Err(why) = find_bindir() {
        panic!("PostgreSQL was installed at build time but is not now: {why}");
    }
    let pg_dir = tempfile::tempdir().expect("tempdir");
    let cluster = PgCluster::start(pg_dir.path(), 5447).expect("PostgreSQL starts");
    let mut env = Env::start_on(0, Some(cluster.url())).await;
    // A second replica on the same database, with the same chat config.
    let (two, two_chat) = replica(&env.site, Some(cluster.url())).await;
    let (request, mut stream) = env.submit(deploy()).await;
    env.until("the cards", |s| s.slack_posts.len() == 2 && s.teams.len() == 1 && s.hooks.len() == 1).await;
    // Both replicas saw the request; give the other one time to (wrongly) post it again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    {
        let seen = env.log.lock().unwrap();
        assert_eq!((seen.slack_posts.len(), seen.teams.len(), seen.hooks.len()), (2, 1, 1), "each card posted once");
    }
    // Approved through the other replica's endpoint.
    let token = env.slack_token(&request.id);
    env.chat = two_chat;
    let (status, answer) =
        env.slack_action(&env.slack_body("UALICE", "guard_approve", &token), unix_now(), SIGNING_SECRET).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(state(&next(&mut stream).await), State::Approved);
    env.until("the updates", |s| s.slack_updates.len() == 2 && s.teams.len() == 2 && s.hooks.len() == 2).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    {
        let seen = env.log.lock().unwrap();
        assert_eq!((seen.slack_updates.len(), seen.teams.len(), seen.hooks.len()), (2, 2, 2), "each copy updated once");
    }
    two.shutdown(Duration::from_secs(5)).await.expect("clean shutdown");
    env.stop().await;
    drop(cluster);
}

#[tokio::test]
async fn an_expired_request_updates_its_cards_and_its_buttons_then_refuse() {
    let mut env = Env::start(0).await;
    let mut stream = env.agent.submit(submit(deploy(), 1, "")).await.unwrap().into_inner();
    let request = next(&mut stream).await;
    env.until("the Slack cards", |s| s.slack_posts.len() == 2).await;
    let token = env.slack_token(&request.id);
    assert_eq!(state(&next(&mut stream).await), State::Expired);
    env.until("both copies updated", |s| s.slack_updates.len() == 2).await;
    {
        let seen = env.log.lock().unwrap();
        assert!(seen.slack_updates.iter().all(|u| !has_buttons(u) && u.to_string().contains("guard: expired")));
    }
    let (status, answer) =
        env.slack_action(&env.slack_body("UALICE", "guard_approve", &token), unix_now(), SIGNING_SECRET).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("no longer pending"), "{answer}");
    assert_eq!(state(&env.get(&request.id).await), State::Expired);
    env.stop().await;
}

/// `[passkeys]` covering the rules named.
fn passkeys_for(rules: &str) -> String {
    format!("[passkeys]\nrequired = \"rules\"\nrules = [{rules}]\n")
}

#[tokio::test]
async fn an_approve_that_needs_a_passkey_gets_the_console_link_in_slack_teams_and_the_webhook_and_changes_nothing() {
    let mut env = Env::start_with(0, None, &passkeys_for("\"dep*\"")).await;
    let (request, _stream) = env.submit(deploy()).await;
    let id = request.id.clone();
    let link = format!("https://guard.example.com/#req-{id}");
    env.until("the cards", |s| s.slack_posts.len() == 2 && s.teams.len() == 1 && s.hooks.len() == 1).await;

    // Slack: a correctly signed approve by a mapped, eligible approver is answered (ephemeral,
    // in the HTTP answer and through response_url) with the link to the request's card.
    let token = env.slack_token(&id);
    let (status, answer) =
        env.slack_action(&env.slack_body("UALICE", "guard_approve", &token), unix_now(), SIGNING_SECRET).await;
    assert_eq!(status, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["response_type"], "ephemeral", "{answer}");
    let text = answer["text"].as_str().unwrap();
    assert!(text.contains("needs your passkey") && text.contains(&link), "{text}");
    env.until("the ephemeral answer through response_url", |s| s.slack_responses.len() == 1).await;
    assert!(env.log.lock().unwrap().slack_responses[0]["text"].as_str().unwrap().contains(&link));

    // Teams: the same, as the Universal Actions message answer.
    let teams_token = env.teams_cards(&id)[0]["actions"][0]["data"]["token"].as_str().unwrap().to_string();
    let good = jwt("teams-key.pem", APP_ID, 600);
    let (status, answer) =
        teams_action(&env, &good, teams_activity("act-pk", "aad-bob", "approve", &teams_token)).await;
    assert_eq!(status, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["statusCode"], 200, "{answer}");
    let text = answer["value"].as_str().unwrap();
    assert!(text.contains("needs your passkey") && text.contains(&link), "{text}");

    // The webhook: a JSON error naming the problem, with the link.
    let hook_token = env.log.lock().unwrap().hooks[0].1["token"].as_str().unwrap().to_string();
    let callback = json!({"token": hook_token, "action": "approve", "user": "bob"}).to_string();
    let (status, answer) = http_post(
        &format!("http://{}/webhook/actions", env.chat),
        &[("x-guard-signature", guard_signature(HOOK_SECRET, unix_now(), &callback))],
        callback.into_bytes(),
    )
    .await;
    assert_eq!(status, 409, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!((answer["ok"].as_bool(), answer["error"].as_str()), (Some(false), Some("passkey_required")), "{answer}");
    assert_eq!(answer["console_url"], link.as_str(), "{answer}");

    // Nothing changed: still pending, no review, nothing in the trail, no card updated.
    let after = env.get(&id).await;
    assert_eq!(state(&after), State::Pending);
    assert!(after.reviews.is_empty(), "{:?}", after.reviews);
    assert!(trail(&env, &id).await.is_empty(), "no review or refusal was recorded");
    assert!(env.log.lock().unwrap().slack_updates.is_empty());
    env.stop().await;
}

#[tokio::test]
async fn a_deny_through_slack_needs_no_passkey_even_when_approving_would() {
    let mut env = Env::start_with(0, None, &passkeys_for("\"deploy\"")).await;
    let (request, mut stream) = env.submit(deploy()).await;
    let id = request.id.clone();
    env.until("the Slack cards", |s| s.slack_posts.len() == 2).await;
    let token = env.slack_token(&id);
    let (status, answer) =
        env.slack_action(&env.slack_body("UBOB", "guard_deny", &token), unix_now(), SIGNING_SECRET).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("denied") && !answer.contains("passkey"), "{answer}");
    assert_eq!(state(&next(&mut stream).await), State::Denied, "the agent's stream sees the deny");
    let after = env.get(&id).await;
    let reviews: Vec<(&str, &str, bool)> =
        after.reviews.iter().map(|r| (r.approver.as_str(), r.verified_by.as_str(), r.approve)).collect();
    assert_eq!(reviews, [("bob", "slack", false)]);
    env.until("both Slack copies updated", |s| s.slack_updates.len() == 2).await;
    env.stop().await;
}

#[tokio::test]
async fn passkeys_for_another_rule_leave_a_slack_approve_as_it_was() {
    let mut env = Env::start_with(0, None, &passkeys_for("\"prod-*\", \"ssh-keys\"")).await;
    let (request, mut stream) = env.submit(deploy()).await;
    let id = request.id.clone();
    env.until("the Slack cards", |s| s.slack_posts.len() == 2).await;
    let token = env.slack_token(&id);
    let (status, answer) =
        env.slack_action(&env.slack_body("UALICE", "guard_approve", &token), unix_now(), SIGNING_SECRET).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("approved") && !answer.contains("passkey"), "{answer}");
    assert_eq!(state(&next(&mut stream).await), State::Approved);
    let after = env.get(&id).await;
    assert_eq!((after.reviews[0].approver.as_str(), after.reviews[0].verified_by.as_str()), ("alice", "slack"));
    env.until("both Slack copies updated", |s| s.slack_updates.len() == 2).await;
    env.stop().await;
}

#[tokio::test]
async fn an_approve_the_rules_refuse_gets_their_reason_not_the_passkey_link() {
    // The rule needs a passkey, but alice may not approve her own tree, and a decided request
    // cannot be approved by anyone: each gets the rules' refusal (recorded), not the console link.
    let mut env = Env::start_with(0, None, &passkeys_for("\"dep*\"")).await;
    let (request, mut stream) = env.submit(op("deploy", "7-1", "alice", 1000, "/usr/bin/kubectl")).await;
    let id = request.id.clone();
    env.until("the Slack cards", |s| s.slack_posts.len() == 2).await;
    let token = env.slack_token(&id);
    let (status, answer) =
        env.slack_action(&env.slack_body("UALICE", "guard_approve", &token), unix_now(), SIGNING_SECRET).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("refused") && !answer.contains("passkey"), "{answer}");

    let (_, answer) = env.slack_action(&env.slack_body("UBOB", "guard_deny", &token), unix_now(), SIGNING_SECRET).await;
    assert!(answer.contains("denied"), "{answer}");
    assert_eq!(state(&next(&mut stream).await), State::Denied);
    tokio::time::sleep(Duration::from_millis(1100)).await; // a new timestamp: a new signature
    let (_, answer) =
        env.slack_action(&env.slack_body("UCAROL", "guard_approve", &token), unix_now(), SIGNING_SECRET).await;
    assert!(answer.contains("no longer pending") && !answer.contains("passkey"), "{answer}");
    let records = trail(&env, &id).await;
    let refused: Vec<Option<&str>> = refusals(&records).iter().map(|r| r.approver.as_deref()).collect();
    assert_eq!(refused, [Some("alice"), Some("carol")], "both refusals are in the trail");
    env.stop().await;
}
