//! Passkeys for approvals, in Debian's real chromium (headless) with a W3C virtual
//! authenticator: registration, an approval step-up bound to its request, and the refusals
//! (replay for another request, the same ceremony twice, no user verification).
//!
//! The console is not here yet, so the test serves a minimal HTTPS app of its own around
//! `guard_server::passkey::Passkeys` and its browser script (`passkey::SCRIPT`), with the same
//! strict Content-Security-Policy the console will send (no inline script).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use guard_server::fanout::Fanout;
use guard_server::passkey::{CeremonyError, PasskeyApproval, PasskeyError, Passkeys, SCRIPT};
use guard_server::store::{self, Store};
use guard_server::testing::browser::{self, Authenticator, Browser};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The console's user in this app (the console proper gets it from its session).
const USER: &str = "alice";
const CSRF: &str = "test-csrf-token";
const CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; form-action 'self'; style-src 'self'";

struct App {
    passkeys: Passkeys,
    /// Every (ceremony, credential) an approval form posted, to replay them.
    posted: Mutex<Vec<(String, String)>>,
    /// Approvals that passed the step-up.
    approved: Mutex<Vec<PasskeyApproval>>,
}

fn query(uri: &Uri) -> HashMap<String, String> {
    url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()).into_owned().collect()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

fn page(body: String, status: StatusCode) -> Response {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"csrf-token\" content=\"{CSRF}\"><title>guard passkeys (test)</title>\
         <script src=\"/guard-passkey.js\" defer></script></head><body>{body}</body></html>"
    );
    (status, [(header::CONTENT_SECURITY_POLICY, CSP)], Html(html)).into_response()
}

/// `/?start=A&finish=B&lax=1`: a registration button, and an approval form whose passkey
/// ceremony is started for request `start` and whose post claims request `finish`.
async fn index(uri: Uri) -> Response {
    let q = query(&uri);
    let start = escape(q.get("start").map(String::as_str).unwrap_or("req-a"));
    let finish = escape(q.get("finish").map(String::as_str).unwrap_or(&start));
    let lax = if q.contains_key("lax") { "?lax=1" } else { "" };
    let lax_amp = if q.contains_key("lax") { "&amp;lax=1" } else { "" };
    page(
        format!(
            "<h1>guard</h1>\
             <section id=\"register\"><h2>Passkeys</h2>\
             <input data-passkey-label value=\"test laptop\" aria-label=\"name\">\
             <button id=\"register-button\" data-passkey-register data-start=\"/register/start{lax}\" \
             data-finish=\"/register/finish\">Register a passkey</button>\
             <output data-passkey-status></output></section>\
             <form id=\"approve\" data-passkey-approve data-start=\"/approve/start?request={start}{lax_amp}\" \
             method=\"post\" action=\"/approve?request={finish}\"><h2>Request {start}</h2>\
             <input type=\"hidden\" name=\"decision\" value=\"approve once\">\
             <button id=\"approve-button\" type=\"submit\">Approve once (passkey)</button>\
             <output data-passkey-status></output></form>"
        ),
        StatusCode::OK,
    )
}

async fn script() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT).into_response()
}

fn json_response(v: Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

fn refuse(status: StatusCode, message: String) -> Response {
    (status, message).into_response()
}

/// The refusal of a fetch without the page's CSRF token (the script sends it).
fn csrf_refusal(headers: &HeaderMap) -> Option<Response> {
    match headers.get("x-csrf-token").and_then(|v| v.to_str().ok()) {
        Some(CSRF) => None,
        _ => Some(refuse(StatusCode::FORBIDDEN, "missing or wrong CSRF token".into())),
    }
}

/// `lax`: the test's stand-in for a tampered client, asking the authenticator NOT to verify the
/// user; the server's ceremony state still requires it.
async fn register_start(State(app): State<Arc<App>>, uri: Uri, headers: HeaderMap) -> Response {
    if let Some(r) = csrf_refusal(&headers) {
        return r;
    }
    match app.passkeys.start_registration(USER).await {
        Ok((mut options, ceremony)) => {
            if query(&uri).contains_key("lax") {
                options["publicKey"]["authenticatorSelection"]["userVerification"] = json!("discouraged");
                // Chromium refuses credProtect "userVerificationRequired" next to "discouraged".
                if let Some(ext) = options["publicKey"]["extensions"].as_object_mut() {
                    ext.retain(|k, _| !k.to_ascii_lowercase().contains("credentialprotection"));
                }
            }
            json_response(json!({ "ceremony": ceremony, "options": options })).into_response()
        }
        Err(e) => refuse(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn register_finish(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = csrf_refusal(&headers) {
        return r;
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return refuse(StatusCode::BAD_REQUEST, "not JSON".into());
    };
    let ceremony = v["ceremony"].as_str().unwrap_or_default();
    let label = v["label"].as_str().unwrap_or_default();
    match app.passkeys.finish_registration(USER, ceremony, &v["credential"].to_string(), label).await {
        Ok(r) => json_response(json!({ "message": format!("Passkey \"{}\" registered.", r.label) })).into_response(),
        Err(e) => refuse(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn approve_start(State(app): State<Arc<App>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = csrf_refusal(&headers) {
        return r;
    }
    let q = query(&uri);
    let fields: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let decision = fields["decision"].as_str().unwrap_or("approve once");
    let request = q.get("request").cloned().unwrap_or_default();
    match app.passkeys.start_approval(USER, &request, decision).await {
        Ok((mut options, ceremony)) => {
            if q.contains_key("lax") {
                options["publicKey"]["userVerification"] = json!("discouraged");
            }
            json_response(json!({ "ceremony": ceremony, "options": options })).into_response()
        }
        Err(e) => refuse(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

/// The approval form's post: the step-up must hold for the request the post names.
async fn approve(State(app): State<Arc<App>>, uri: Uri, body: Bytes) -> Response {
    let request = query(&uri).get("request").cloned().unwrap_or_default();
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let ceremony = form.get("passkey_ceremony").cloned().unwrap_or_default();
    let credential = form.get("passkey_credential").cloned().unwrap_or_default();
    app.posted.lock().unwrap().push((ceremony.clone(), credential.clone()));
    let result = |state: &str, text: String| format!("<p id=\"result\" data-state=\"{state}\">{}</p>", escape(&text));
    match app.passkeys.finish_approval(USER, &ceremony, &request, &credential).await {
        Ok(ok) => {
            let text = format!("Approved {} ({}) with passkey {}", ok.request_id, ok.decision, ok.credential_id);
            app.approved.lock().unwrap().push(ok);
            page(result("ok", text), StatusCode::OK)
        }
        Err(e) => page(result("error", e.to_string()), StatusCode::BAD_REQUEST),
    }
}

/// Serves `router` over TLS on `listener` with a fresh self-signed certificate for localhost;
/// returns the certificate's SPKI pin (what the browser is told to trust).
fn serve_https(listener: tokio::net::TcpListener, router: Router) -> String {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let pin = browser::spki_pin(&rcgen::PublicKeyData::subject_public_key_info(&certified.signing_key));
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let acceptor = acceptor.clone();
            let router = router.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper_util::service::TowerToHyperService::new(router);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    pin
}

struct Served {
    app: Arc<App>,
    store: Arc<dyn Store>,
    base: String,
    pin: String,
    dir: tempfile::TempDir,
}

/// The test app on https://localhost:PORT with a fresh SQLite store. WebAuthn checks the exact
/// origin (port included), so the port is bound before `Passkeys` is made for it.
async fn serve() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("guard.db").display());
    let store = store::open(&url, Fanout::default()).await.expect("store");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("https://localhost:{}", listener.local_addr().unwrap().port());
    let passkeys = Passkeys::new("localhost", &base, store.clone()).expect("passkeys for localhost");
    let app = Arc::new(App { passkeys, posted: Mutex::default(), approved: Mutex::default() });
    let router = Router::new()
        .route("/", get(index))
        .route("/guard-passkey.js", get(script))
        .route("/register/start", post(register_start))
        .route("/register/finish", post(register_finish))
        .route("/approve/start", post(approve_start))
        .route("/approve", post(approve))
        .with_state(app.clone());
    let pin = serve_https(listener, router);
    Served { app, store, base, pin, dir }
}

fn approvals(app: &App) -> Vec<(String, String)> {
    app.approved.lock().unwrap().iter().map(|a| (a.request_id.clone(), a.decision.clone())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(has_chromium), ignore = "SKIPPED: no /usr/bin/chromium and /usr/bin/chromedriver on the build machine")]
async fn passkey_approval_in_chromium() {
    let s = serve().await;
    let b = Browser::start(std::slice::from_ref(&s.pin)).await;
    let shots = browser::screenshot_dir(s.dir.path());

    // Register: the page's script runs navigator.credentials.create with the server's options.
    b.goto(&format!("{}/?start=req-a", s.base)).await;
    let authenticator = b.add_authenticator(Authenticator::default()).await;
    // A label with markup: kept as text, and shown as text (the script never writes HTML).
    b.fill("[data-passkey-label]", "<img src=x onerror=alert(1)>laptop").await;
    b.click("#register-button").await;
    let (state, text) = b.settled("#register [data-passkey-status]").await;
    assert_eq!((state.as_str(), text.as_str()), ("ok", "Passkey \"<img src=x onerror=alert(1)>laptop\" registered."));
    let stored = s.store.passkeys_of(USER).await.unwrap();
    assert_eq!(stored.len(), 1, "one passkey stored for {USER}");
    assert_eq!(b.credentials(&authenticator).await.len(), 1, "the authenticator holds it");
    b.screenshot(&shots.join("passkey-registered.png")).await;

    // Approve request A with it: the form's post carries the assertion for A.
    b.click("#approve-button").await;
    let (state, text) = b.settled("#result").await;
    assert_eq!(state, "ok", "approval refused: {text}");
    assert!(text.starts_with("Approved req-a (approve once) with passkey "), "{text}");
    assert_eq!(approvals(&s.app), [("req-a".to_string(), "approve once".to_string())]);
    let after = s.store.passkeys_of(USER).await.unwrap();
    assert!(after[0].last_used_ms > 0, "the use is stored");
    let counter = |text: &str| serde_json::from_str::<Value>(text).unwrap()["cred"]["counter"].as_u64().unwrap();
    let sign_count = b.credentials(&authenticator).await[0]["signCount"].as_u64().unwrap();
    assert!(sign_count > counter(&stored[0].passkey), "the authenticator counted the approval");
    assert_eq!(counter(&after[0].passkey), sign_count, "the new signature counter is stored");
    b.screenshot(&shots.join("passkey-approved.png")).await;

    // The same ceremony and assertion a second time: refused, single use.
    let (ceremony, credential) = s.app.posted.lock().unwrap().last().cloned().unwrap();
    match s.app.passkeys.finish_approval(USER, &ceremony, "req-a", &credential).await {
        Err(PasskeyError::Ceremony(CeremonyError::Used(_))) => {}
        other => panic!("a replayed ceremony must be refused as used, got {other:?}"),
    }

    // A ceremony started for A, its assertion posted as the approval of B: refused.
    b.goto(&format!("{}/?start=req-a&finish=req-b", s.base)).await;
    b.click("#approve-button").await;
    let (state, text) = b.settled("#result").await;
    assert_eq!(
        (state.as_str(), text.as_str()),
        ("error", "this passkey confirmation was made for request req-a, not for req-b")
    );
    b.screenshot(&shots.join("passkey-wrong-request.png")).await;

    // The authenticator can no longer verify its user. Asked honestly (UV required), the
    // browser itself refuses; nothing reaches the approval.
    b.set_user_verified(&authenticator, false).await;
    b.goto(&format!("{}/?start=req-c", s.base)).await;
    b.click("#approve-button").await;
    let (state, text) = b.settled("#approve [data-passkey-status]").await;
    assert_eq!(state, "error", "{text}");
    assert!(text.starts_with("NotAllowedError"), "{text}");

    // A tampered client asks the authenticator not to verify: the assertion arrives without
    // UV and the server refuses it (approval and registration alike).
    b.goto(&format!("{}/?start=req-c&lax=1", s.base)).await;
    b.click("#approve-button").await;
    let (state, text) = b.settled("#result").await;
    assert_eq!(
        (state.as_str(), text.as_str()),
        ("error", "the authenticator did not verify the user (PIN or biometric): a passkey approval needs it")
    );
    // Registration, on a second device without user verification at all (a security key with
    // no PIN; the first device holds alice's passkey, which the server's excludeCredentials
    // makes it refuse to duplicate).
    b.remove_authenticator(&authenticator).await;
    b.add_authenticator(Authenticator { has_user_verification: false, is_user_verified: false }).await;
    b.goto(&format!("{}/?lax=1", s.base)).await;
    b.click("#register-button").await;
    let (state, text) = b.settled("#register [data-passkey-status]").await;
    assert_eq!(state, "error", "{text}");
    assert!(text.contains("did not verify the user"), "{text}");
    b.screenshot(&shots.join("passkey-uv-refused.png")).await;

    assert_eq!(approvals(&s.app).len(), 1, "nothing but the one good approval passed");
    assert_eq!(s.store.passkeys_of(USER).await.unwrap().len(), 1, "no passkey without user verification");
    b.close().await;
}

/// Without a browser: what reaches the server without a proper assertion is refused with a
/// clear error, and an approval needs a registered passkey.
#[tokio::test]
async fn approval_refusals_without_a_browser() {
    let s = serve().await;
    match s.app.passkeys.start_approval(USER, "req-a", "approve once").await {
        Err(PasskeyError::NoPasskey(u)) => assert_eq!(u, USER),
        other => panic!("no passkey registered: want NoPasskey, got {:?}", other.map(|(_, id)| id)),
    }
    // A registration answered with garbage: malformed, and the ceremony is used up.
    let (_, ceremony) = s.app.passkeys.start_registration(USER).await.unwrap();
    match s.app.passkeys.finish_registration(USER, &ceremony, "{\"id\": 1}", "x").await {
        Err(PasskeyError::Malformed(_)) => {}
        other => panic!("want Malformed, got {other:?}"),
    }
    match s.app.passkeys.finish_registration(USER, &ceremony, "{}", "x").await {
        Err(PasskeyError::Ceremony(CeremonyError::Used(_))) => {}
        other => panic!("want Used, got {other:?}"),
    }
    // Another user cannot finish alice's registration.
    let (_, ceremony) = s.app.passkeys.start_registration(USER).await.unwrap();
    match s.app.passkeys.finish_registration("mallory", &ceremony, "{}", "x").await {
        Err(PasskeyError::Ceremony(CeremonyError::WrongUser { .. })) => {}
        other => panic!("want WrongUser, got {other:?}"),
    }
    assert!(s.store.passkeys_of(USER).await.unwrap().is_empty());
}
