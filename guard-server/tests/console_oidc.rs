//! OpenID sign-in to the web console (`[console.oidc]`) over real HTTPS against a real
//! guard-server on SQLite, with a local OpenID provider written here (axum, plain HTTP on
//! loopback, which the config allows for loopback issuers only): discovery, an authorize
//! endpoint that redirects back with a code, a token endpoint that checks the client secret
//! and the PKCE verifier and answers an RS256 ID token signed with a test key
//! (tests/fixtures/chat), and the JWKS. Each case can make the provider misbehave.
mod common;

use axum::extract::{Form, Query, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use bytes::Bytes;
use common::*;
use guard_proto::v1::State;
use guard_server::console::accounts::{self, Role};
use guard_server::fanout::Fanout;
use guard_server::store;
use http_body_util::{BodyExt, Full};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio_rustls::TlsConnector;

const PASSWORD: &str = "correct horse battery";
const CLIENT_ID: &str = "guard-console";
const CLIENT_SECRET: &str = "s3cret-of-the-console-client";
const LABEL: &str = "Test IdP";

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/chat"))
}

/// How the provider misbehaves in one case.
#[derive(Clone, Default)]
struct Twist {
    /// The user the provider signs in (preferred_username).
    user: String,
    wrong_nonce: bool,
    wrong_audience: bool,
    wrong_issuer: bool,
    /// Sign with a key that is not in the JWKS (its kid is the JWKS key's).
    other_key: bool,
}

struct Code {
    challenge: String,
    nonce: String,
    redirect_uri: String,
}

/// The provider's state: what it issued, and what it saw (for the assertions).
#[derive(Default)]
struct Provider {
    issuer: String,
    twist: Mutex<Twist>,
    codes: Mutex<HashMap<String, Code>>,
    /// Token requests whose client secret and PKCE verifier both checked out.
    good_exchanges: Mutex<u32>,
    /// Token requests refused (bad secret, bad verifier, unknown code), with why.
    refused_exchanges: Mutex<Vec<String>>,
    /// Discovery says client_secret_post only (else basic and post).
    post_only: bool,
    /// How each token request authenticated the client: "basic" or "post".
    client_auth: Mutex<Vec<&'static str>>,
}

async fn discovery(AxState(p): AxState<Arc<Provider>>) -> Json<serde_json::Value> {
    let i = &p.issuer;
    Json(json!({
        "issuer": i,
        "authorization_endpoint": format!("{i}/authorize"),
        "token_endpoint": format!("{i}/token"),
        "jwks_uri": format!("{i}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported":
            if p.post_only { json!(["client_secret_post"]) } else { json!(["client_secret_basic", "client_secret_post"]) },
    }))
}

async fn authorize(AxState(p): AxState<Arc<Provider>>, Query(q): Query<HashMap<String, String>>) -> Response {
    let want = |k: &str, v: &str| q.get(k).map(String::as_str) == Some(v);
    if !want("response_type", "code")
        || !want("client_id", CLIENT_ID)
        || !want("code_challenge_method", "S256")
        || !q.get("scope").is_some_and(|s| s.split(' ').any(|x| x == "openid"))
    {
        return (StatusCode::BAD_REQUEST, format!("bad authorization request {q:?}")).into_response();
    }
    let code = accounts::random_hex(16);
    let redirect_uri = q["redirect_uri"].clone();
    p.codes.lock().unwrap().insert(
        code.clone(),
        Code { challenge: q["code_challenge"].clone(), nonce: q["nonce"].clone(), redirect_uri: redirect_uri.clone() },
    );
    Redirect::to(&format!("{redirect_uri}?code={code}&state={}", q["state"])).into_response()
}

async fn token(
    AxState(p): AxState<Arc<Provider>>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let refuse = |why: String| {
        p.refused_exchanges.lock().unwrap().push(why.clone());
        (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_grant", "error_description": why}))).into_response()
    };
    // client_secret_basic or client_secret_post.
    let basic = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Basic "));
    p.client_auth.lock().unwrap().push(if basic.is_some() { "basic" } else { "post" });
    let (id, secret) = match basic {
        Some(b) => {
            let pair = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b).unwrap()).unwrap();
            let (id, secret) = pair.split_once(':').unwrap();
            (id.to_string(), secret.to_string())
        }
        None => (f.get("client_id").cloned().unwrap_or_default(), f.get("client_secret").cloned().unwrap_or_default()),
    };
    if id != CLIENT_ID || secret != CLIENT_SECRET {
        return refuse(format!("client authentication failed for {id:?}"));
    }
    if f.get("grant_type").map(String::as_str) != Some("authorization_code") {
        return refuse("grant_type".into());
    }
    let Some(code) = p.codes.lock().unwrap().remove(f.get("code").map(String::as_str).unwrap_or_default()) else {
        return refuse("unknown or used code".into());
    };
    if f.get("redirect_uri") != Some(&code.redirect_uri) {
        return refuse("redirect_uri differs from the authorization request's".into());
    }
    let verifier = f.get("code_verifier").cloned().unwrap_or_default();
    let s256 = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()));
    if verifier.len() < 43 || s256 != code.challenge {
        return refuse("PKCE verifier does not match the challenge".into());
    }
    *p.good_exchanges.lock().unwrap() += 1;
    let twist = p.twist.lock().unwrap().clone();
    let now = guard_server::lifecycle::now_ms() / 1000;
    let claims = json!({
        "iss": if twist.wrong_issuer { "http://127.0.0.1:1/evil".to_string() } else { p.issuer.clone() },
        "sub": format!("sub-{}", twist.user),
        "aud": if twist.wrong_audience { "another-client" } else { CLIENT_ID },
        "exp": now + 300,
        "iat": now,
        "nonce": if twist.wrong_nonce { "0".repeat(64) } else { code.nonce },
        "preferred_username": twist.user,
    });
    let key_file = if twist.other_key { "other-key.pem" } else { "teams-key.pem" };
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(fixtures().join(key_file)).unwrap()).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("teams-test-key".into());
    let id_token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    Json(json!({"access_token": "at", "token_type": "Bearer", "expires_in": 300, "id_token": id_token})).into_response()
}

async fn jwks() -> Response {
    let body = std::fs::read_to_string(fixtures().join("teams-jwks.json")).unwrap();
    ([("content-type", "application/json")], body).into_response()
}

/// Starts the provider on loopback; it and its issuer URL.
async fn provider() -> Arc<Provider> {
    provider_with(false).await
}

async fn provider_with(post_only: bool) -> Arc<Provider> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let p = Arc::new(Provider { issuer, post_only, ..Default::default() });
    p.twist.lock().unwrap().user = "bob".into();
    let app = Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/authorize", get(authorize))
        .route("/token", post(token))
        .route("/jwks", get(jwks))
        .with_state(p.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    p
}

/// A console site whose `[console.oidc]` names `p`, with console users bob (approver) and
/// dave (disabled).
async fn oidc_site(p: &Provider) -> (Site, tempfile::TempDir) {
    oidc_site_with_secret(p, CLIENT_SECRET).await
}

async fn oidc_site_with_secret(p: &Provider, client_secret: &str) -> (Site, tempfile::TempDir) {
    let secrets = tempfile::tempdir().unwrap();
    let secret = secrets.path().join("client-secret");
    std::fs::write(&secret, format!("{client_secret}\n")).unwrap();
    let toml = format!(
        "[console]\nlisten = \"127.0.0.1:0\"\n\n[console.oidc]\nissuer = \"{}\"\nclient_id = \"{CLIENT_ID}\"\n\
         client_secret_file = \"{}\"\nlabel = \"{LABEL}\"\n",
        p.issuer,
        secret.display()
    );
    let site = Site::with(config().extra(&toml));
    (site, secrets)
}

async fn add_users(site: &Site) {
    let store = store::open(&site.db_url(), Fanout::default()).await.expect("store");
    let now = guard_server::lifecycle::now_ms();
    accounts::add_user(store.as_ref(), "bob", Role::Approver, PASSWORD, now).await.unwrap();
    accounts::add_user(store.as_ref(), "dave", Role::Approver, PASSWORD, now).await.unwrap();
    assert!(store.set_user_disabled("dave", true).await.unwrap());
}

struct Reply {
    status: u16,
    headers: hyper::HeaderMap,
    body: String,
}

impl Reply {
    fn location(&self) -> String {
        self.headers.get("location").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
    }
}

/// A browser: one cookie jar, the console over TLS checked against the site's CA, the
/// provider over plain HTTP.
struct Browser {
    addr: SocketAddr,
    tls: TlsConnector,
    cookies: BTreeMap<String, String>,
}

impl Browser {
    fn new(site: &Site, server: &Server) -> Browser {
        let (addr, _origin) = server.console();
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(site.pki().join("ca.crt")).unwrap() {
            roots.add(ca.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Browser { addr, tls: TlsConnector::from(Arc::new(config)), cookies: BTreeMap::new() }
    }

    fn request(&self, method: &str, host: &str, path: &str, body: String, origin: bool) -> hyper::Request<Full<Bytes>> {
        let mut b = hyper::Request::builder().method(method).uri(path).header("host", host);
        if !self.cookies.is_empty() {
            let jar = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
            b = b.header("cookie", jar);
        }
        if origin {
            b = b.header("origin", format!("https://{}", self.addr));
        }
        if method == "POST" {
            b = b.header("content-type", "application/x-www-form-urlencoded");
        }
        b.body(Full::new(Bytes::from(body))).unwrap()
    }

    async fn reply(response: hyper::Response<hyper::body::Incoming>) -> Reply {
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Reply { status: parts.status.as_u16(), headers: parts.headers, body: String::from_utf8_lossy(&body).into() }
    }

    /// A request to the console (cookies kept as a browser keeps them).
    async fn console(&mut self, method: &str, path: &str, body: String) -> Reply {
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let tls = self.tls.connect(ServerName::from(self.addr.ip()), tcp).await.expect("TLS with the site's CA");
        let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        let request = self.request(method, &self.addr.to_string(), path, body, method == "POST");
        let reply = Browser::reply(send.send_request(request).await.unwrap()).await;
        for v in reply.headers.get_all("set-cookie") {
            let v = v.to_str().unwrap();
            let (pair, attrs) = v.split_once(';').unwrap_or((v, ""));
            let (k, val) = pair.split_once('=').unwrap();
            if attrs.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_string(), val.to_string());
            }
        }
        reply
    }

    /// A GET of an absolute http:// URL at the provider (no console cookies sent there).
    async fn provider_get(&self, url: &str) -> Reply {
        let uri: hyper::Uri = url.parse().unwrap();
        let authority = uri.authority().unwrap().to_string();
        let tcp = tokio::net::TcpStream::connect(&authority).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(conn);
        let request = hyper::Request::get(uri.path_and_query().unwrap().as_str())
            .header("host", authority)
            .body(Full::new(Bytes::new()))
            .unwrap();
        Browser::reply(send.send_request(request).await.unwrap()).await
    }

    /// /login's link, /oidc/start, the provider's authorize: the callback path (with code
    /// and state) the provider sends the browser back to.
    async fn through_the_provider(&mut self) -> String {
        let login = self.console("GET", "/login", String::new()).await;
        assert!(login.body.contains("href=\"/oidc/start\""), "the sign-in page links to the provider");
        assert!(login.body.contains(&format!("Sign in with {LABEL}")), "{}", login.body);
        let start = self.console("GET", "/oidc/start", String::new()).await;
        assert_eq!(start.status, 303, "{}", start.body);
        let cookie = start
            .headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .find(|c| c.starts_with("__Host-guard_oidc="))
            .expect("the attempt cookie");
        for flag in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/", "Max-Age=600"] {
            assert!(cookie.contains(flag), "{flag} missing: {cookie}");
        }
        let authorize = start.location();
        for part in ["code_challenge_method=S256", "code_challenge=", "nonce=", "state=", "client_id=guard-console"] {
            assert!(authorize.contains(part), "{part} missing from {authorize}");
        }
        let back = self.provider_get(&authorize).await;
        assert_eq!(back.status, 303, "{}", back.body);
        let callback = back.location();
        let prefix = format!("https://{}/oidc/callback?", self.addr);
        assert!(callback.starts_with(&prefix), "{callback}");
        callback[prefix.len() - "/oidc/callback?".len()..].to_string()
    }

    fn signed_in(&self) -> bool {
        self.cookies.contains_key("__Host-guard_session")
    }
}

/// The message of a page's status notice.
fn notice(body: &str) -> String {
    body.split("role=\"status\">").nth(1).map(|s| s.split('<').next().unwrap().to_string()).unwrap_or_default()
}

async fn oidc_refusals(server: &Server) -> Vec<String> {
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
    events
        .into_iter()
        .map(|e| guard_api::AuditRecord::from_json(&e.unwrap().json).unwrap())
        .filter(|r| r.comment.as_deref().is_some_and(|c| c.starts_with("console sign-in refused (oidc)")))
        .map(|r| format!("{} {}", r.approver.unwrap_or_default(), r.comment.unwrap()))
        .collect()
}

#[tokio::test]
async fn a_good_sign_in_opens_a_session_whose_approvals_say_oidc() {
    let p = provider().await;
    let (site, _secrets) = oidc_site(&p).await;
    let server = site.start(None).await;
    add_users(&site).await;
    let mut browser = Browser::new(&site, &server);

    let callback = browser.through_the_provider().await;
    let done = browser.console("GET", &callback, String::new()).await;
    assert_eq!((done.status, done.location().as_str()), (303, "/"), "{}", done.body);
    assert!(browser.signed_in(), "a session cookie");
    assert!(!browser.cookies.contains_key("__Host-guard_oidc"), "the attempt cookie is cleared");
    assert_eq!(*p.good_exchanges.lock().unwrap(), 1, "the code was exchanged with the secret and PKCE verifier");
    assert!(p.refused_exchanges.lock().unwrap().is_empty());
    assert_eq!(*p.client_auth.lock().unwrap(), ["basic"], "client_secret_basic when the provider takes it");

    let page = browser.console("GET", "/", String::new()).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("bob (approver)"), "the local role: {}", page.body);
    let at = page.body.find("name=\"csrf\" value=\"").unwrap() + "name=\"csrf\" value=\"".len();
    let token = page.body[at..].split('"').next().unwrap().to_string();

    let mut agent = server.agent("h1").await;
    let mut stream =
        agent.submit(submit(op("etc-writes", "100-1", "dev", 2000, "/usr/bin/vi"), 30, "")).await.unwrap().into_inner();
    let created = next(&mut stream).await;
    let reply = browser
        .console("POST", &format!("/requests/{}/review", created.id), format!("csrf={token}&action=approve"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let decided = next(&mut stream).await;
    assert_eq!((state(&decided), decided.decided_by.as_str()), (State::Approved, "bob"));

    use tokio_stream::StreamExt;
    let query = guard_proto::v1::AuditQuery { request_id: created.id.clone(), ..Default::default() };
    let records: Vec<_> = server.auditor("bob").await.query(query).await.unwrap().into_inner().collect().await;
    let review = records
        .into_iter()
        .map(|e| guard_api::AuditRecord::from_json(&e.unwrap().json).unwrap())
        .find(|r| r.kind == guard_api::RecordKind::Review)
        .expect("a review record");
    assert_eq!(review.verified_by.as_deref(), Some("oidc"), "the review record says bob signed in through OIDC");
    server.stop().await;
}

#[tokio::test]
async fn a_provider_that_takes_only_client_secret_post_gets_it() {
    let p = provider_with(true).await;
    let (site, _secrets) = oidc_site(&p).await;
    let server = site.start(None).await;
    add_users(&site).await;
    let mut browser = Browser::new(&site, &server);
    let callback = browser.through_the_provider().await;
    let done = browser.console("GET", &callback, String::new()).await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert!(browser.signed_in());
    assert_eq!(*p.client_auth.lock().unwrap(), ["post"]);
    assert_eq!(*p.good_exchanges.lock().unwrap(), 1, "the secret in the form checked out");
    server.stop().await;
}

#[tokio::test]
async fn a_wrong_client_secret_is_refused_by_the_provider_and_opens_no_session() {
    let p = provider().await;
    let (site, _secrets) = oidc_site_with_secret(&p, "not-the-secret").await;
    let server = site.start(None).await;
    add_users(&site).await;
    let mut browser = Browser::new(&site, &server);
    let callback = browser.through_the_provider().await;
    let reply = browser.console("GET", &callback, String::new()).await;
    assert_eq!(reply.status, 401, "{}", reply.body);
    let message = notice(&reply.body);
    assert!(message.contains("the token endpoint refused the code"), "{message}");
    assert!(!browser.signed_in());
    assert_eq!(p.refused_exchanges.lock().unwrap().len(), 1);
    assert!(!reply.body.contains("not-the-secret"), "the secret is not shown");
    server.stop().await;
}

#[tokio::test]
async fn a_wrong_or_replayed_state_is_refused_without_a_session() {
    let p = provider().await;
    let (site, _secrets) = oidc_site(&p).await;
    let server = site.start(None).await;
    add_users(&site).await;

    // A state the console never issued.
    let mut browser = Browser::new(&site, &server);
    let callback = browser.through_the_provider().await;
    let forged = callback.replace("state=", &format!("state={}&was=", accounts::random_hex(32)));
    let reply = browser.console("GET", &forged, String::new()).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(notice(&reply.body).contains("unknown, was already used"), "{}", reply.body);
    assert!(!browser.signed_in());
    assert_eq!(*p.good_exchanges.lock().unwrap(), 0, "no code was exchanged for a forged state");

    // The right state, from another browser (no attempt cookie): refused, and the attempt is
    // spent.
    let mut other = Browser::new(&site, &server);
    let reply = other.console("GET", &callback, String::new()).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(notice(&reply.body).contains("started in another browser"), "{}", reply.body);
    assert!(!other.signed_in());

    // A good sign-in, then the same callback again (attempt cookie put back): used once only.
    let mut browser = Browser::new(&site, &server);
    let callback = browser.through_the_provider().await;
    let attempt = browser.cookies["__Host-guard_oidc"].clone();
    assert_eq!(browser.console("GET", &callback, String::new()).await.status, 303);
    assert!(browser.signed_in());
    let mut replay = Browser::new(&site, &server);
    replay.cookies.insert("__Host-guard_oidc".into(), attempt);
    let reply = replay.console("GET", &callback, String::new()).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(notice(&reply.body).contains("already used"), "{}", reply.body);
    assert!(!replay.signed_in(), "a replayed callback opens no session");
    assert_eq!(*p.good_exchanges.lock().unwrap(), 1, "the replay never reached the token endpoint");
    server.stop().await;
}

#[tokio::test]
async fn tokens_with_a_wrong_nonce_audience_issuer_or_key_are_refused_and_recorded() {
    let p = provider().await;
    let (site, _secrets) = oidc_site(&p).await;
    let server = site.start(None).await;
    add_users(&site).await;

    type Case = (&'static str, fn(&mut Twist), &'static str);
    let cases: [Case; 4] = [
        ("nonce", |t| t.wrong_nonce = true, "nonce is not this sign-in's"),
        ("audience", |t| t.wrong_audience = true, "InvalidAudience"),
        ("issuer", |t| t.wrong_issuer = true, "InvalidIssuer"),
        ("key", |t| t.other_key = true, "InvalidSignature"),
    ];
    for (name, twist, why) in cases {
        {
            let mut t = p.twist.lock().unwrap();
            *t = Twist { user: "bob".into(), ..Default::default() };
            twist(&mut t);
        }
        let mut browser = Browser::new(&site, &server);
        let callback = browser.through_the_provider().await;
        let reply = browser.console("GET", &callback, String::new()).await;
        assert_eq!(reply.status, 401, "{name}: {}", reply.body);
        let message = notice(&reply.body);
        assert!(message.starts_with(&format!("Sign-in with {LABEL} refused")), "{name}: {message}");
        assert!(message.contains(why), "{name}: {why:?} not in {message:?}");
        assert!(message.contains("You are not signed in"), "{name}: {message}");
        assert!(!browser.signed_in(), "{name}: no session");
    }
    let refusals = oidc_refusals(&server).await;
    assert_eq!(refusals.len(), 4, "each refusal is in the audit trail: {refusals:#?}");
    assert!(refusals.iter().any(|r| r.starts_with("bob ") && r.contains("nonce")), "{refusals:#?}");
    server.stop().await;
}

#[tokio::test]
async fn an_unknown_or_disabled_user_is_refused_and_recorded() {
    let p = provider().await;
    let (site, _secrets) = oidc_site(&p).await;
    let server = site.start(None).await;
    add_users(&site).await;

    for (user, why) in [("nobody", "is not a console user"), ("dave", "is disabled")] {
        p.twist.lock().unwrap().user = user.into();
        let mut browser = Browser::new(&site, &server);
        let callback = browser.through_the_provider().await;
        let reply = browser.console("GET", &callback, String::new()).await;
        assert_eq!(reply.status, 403, "{user}: {}", reply.body);
        let message = notice(&reply.body);
        assert!(message.contains(&format!("user {user} {why}")), "{user}: {message}");
        assert!(message.contains("guard-server user add"), "{message}");
        assert!(!browser.signed_in(), "{user}: no session");
    }
    let refusals = oidc_refusals(&server).await;
    assert!(refusals.iter().any(|r| r.starts_with("nobody ") && r.contains("no such user")), "{refusals:#?}");
    assert!(refusals.iter().any(|r| r.starts_with("dave ") && r.contains("disabled")), "{refusals:#?}");
    server.stop().await;
}

#[tokio::test]
async fn without_console_oidc_there_is_no_link_and_no_route() {
    let site = Site::with(config().extra("[console]\nlisten = \"127.0.0.1:0\"\n"));
    let server = site.start(None).await;
    let mut browser = Browser::new(&site, &server);
    let login = browser.console("GET", "/login", String::new()).await;
    assert_eq!(login.status, 200);
    assert!(!login.body.contains("/oidc/start") && !login.body.contains("Sign in with"), "{}", login.body);
    assert_eq!(browser.console("GET", "/oidc/start", String::new()).await.status, 404);
    assert_eq!(browser.console("GET", "/oidc/callback?code=x&state=y", String::new()).await.status, 404);
    assert!(!browser.signed_in());
    server.stop().await;
}

#[test]
fn config_errors_name_the_key_and_the_place() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "x\n").unwrap();
    let cases = [
        (
            format!(
                "issuer = \"http://idp.example\"\nclient_id = \"c\"\nclient_secret_file = \"{}\"\n",
                secret.display()
            ),
            "console.oidc.issuer",
        ),
        (
            "issuer = \"https://idp.example\"\nclient_id = \"c\"\nclient_secret_file = \"/nonexistent/secret\"\n"
                .to_string(),
            "console.oidc.client_secret_file",
        ),
        (
            format!(
                "issuer = \"https://idp.example\"\nclient_id = \"c\"\nclient_secret_file = \"{}\"\nclaim = \"sub\"\n",
                secret.display()
            ),
            "console.oidc.claim",
        ),
    ];
    for (table, key) in cases {
        let site =
            Site::with(config().extra(&format!("[console]\nlisten = \"127.0.0.1:0\"\n\n[console.oidc]\n{table}")));
        let err =
            guard_server::config::ServerConfig::load(&site.dir.path().join("server.toml")).unwrap_err().to_string();
        assert!(err.contains(key), "{key} not named: {err}");
        assert!(err.contains("server.toml:"), "no file:line:col: {err}");
    }
}
