//! Sign-in through an OpenID provider (`[console.oidc]`), next to passwords: the
//! authorization code flow with PKCE (S256). `/oidc/start` sends the browser to the provider;
//! `/oidc/callback` takes the code back, exchanges it at the token endpoint with the client
//! secret and the PKCE verifier, checks the ID token (signature from the provider's JWKS,
//! RS256 or ES256; iss, aud, exp, iat, nonce), and signs in the EXISTING console user the
//! configured claim names (`accounts::sign_in_oidc`: the role stays local).
//!
//! Each attempt's `state`, `nonce` and PKCE verifier stay on the server, in memory, keyed by
//! `state`: nothing secret travels through the browser, an attempt is taken out of the map
//! when its callback arrives (single use) and lives 10 minutes at most. The attempt is also
//! bound to the browser that started it by a random token in a short-lived HttpOnly cookie
//! (SameSite=Lax: the callback is a top-level navigation from the provider's site, which a
//! Strict cookie would not come with), so a callback URL planted in someone else's browser
//! cannot sign them in as the planter. The cost of keeping attempts in memory: with several
//! replicas behind one console name, the callback must reach the replica that started it
//! (sticky sessions), and a restart forgets the attempts in flight (the user starts again).
//!
//! The discovery document and the JWKS are fetched from the issuer when first needed and
//! cached; the JWKS again when a token names a key it lacks (key rotation), at most once a
//! minute.
use super::accounts::{self, Refusal};
use super::config::{Claim, OidcSettings};
use super::render;
use super::web::{self, cookie, SESSION_COOKIE};
use super::ConsoleState;
use crate::http_client;
use crate::lifecycle::now_ms;
use axum::extract::{Query, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The cookie binding an attempt to the browser that started it.
pub const ATTEMPT_COOKIE: &str = "__Host-guard_oidc";
/// How long an attempt may take at the provider.
const ATTEMPT_TTL: Duration = Duration::from_secs(10 * 60);
/// Attempts kept at once: `/oidc/start` needs no account, so its memory is bounded.
const MAX_ATTEMPTS: usize = 10_000;
/// The JWKS is fetched again for an unknown key at most this often.
const JWKS_REFRESH: Duration = Duration::from_secs(60);
/// Clock skew allowed on exp and iat.
const LEEWAY_SECS: u64 = 60;

/// One sign-in in flight at the provider.
struct Attempt {
    browser: String,
    nonce: String,
    verifier: String,
    started: Instant,
}

/// What the provider's discovery document says (only what the flow uses).
#[derive(Debug, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
}

struct Keys {
    set: JwkSet,
    fetched: Instant,
}

/// The console's side of the provider: settings, the cached discovery and keys, the attempts.
pub struct Oidc {
    settings: OidcSettings,
    http: http_client::Client,
    discovery: tokio::sync::Mutex<Option<Arc<Discovery>>>,
    keys: tokio::sync::Mutex<Option<Keys>>,
    attempts: Mutex<HashMap<String, Attempt>>,
}

/// The ID token's claims the console reads (jsonwebtoken checks exp, iss and aud itself).
#[derive(Debug, Deserialize)]
struct IdClaims {
    #[serde(default)]
    nonce: Option<String>,
    iat: i64,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    aud: Audience,
    #[serde(default)]
    preferred_username: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum Audience {
    // jsonwebtoken has checked the audience itself; only how many there are matters here.
    One(#[allow(dead_code)] String),
    Many(Vec<String>),
    #[default]
    None,
}

impl Audience {
    fn len(&self) -> usize {
        match self {
            Audience::One(_) => 1,
            Audience::Many(v) => v.len(),
            Audience::None => 0,
        }
    }
}

/// Why a callback was refused: shown on the sign-in page, and recorded when it got as far as
/// the provider's token.
struct Refused {
    status: StatusCode,
    message: String,
    /// Some: record it in the audit trail, with the name the token claimed ("" if none).
    audit: Option<String>,
}

fn refused(status: StatusCode, message: impl Into<String>) -> Refused {
    Refused { status, message: message.into(), audit: None }
}

fn token_refused(tried: &str, message: impl Into<String>) -> Refused {
    Refused { status: StatusCode::UNAUTHORIZED, message: message.into(), audit: Some(tried.to_string()) }
}

/// An endpoint the provider names: https, or plain http to this machine (as the issuer).
fn endpoint_ok(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else { return false };
    let host = uri.host().unwrap_or_default();
    match uri.scheme_str() {
        Some("https") => !host.is_empty(),
        Some("http") => ["127.0.0.1", "localhost", "[::1]", "::1"].contains(&host),
        _ => false,
    }
}

impl Oidc {
    pub fn new(settings: OidcSettings) -> Oidc {
        let http = http_client::Client::new(&settings.ca_file);
        Oidc {
            settings,
            http,
            discovery: tokio::sync::Mutex::new(None),
            keys: tokio::sync::Mutex::new(None),
            attempts: Mutex::new(HashMap::new()),
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str, what: &str) -> Result<T, String> {
        let (status, body) = self
            .http
            .get(url, &[("accept", "application/json".to_string())])
            .await
            .map_err(|e| format!("cannot fetch the provider's {what} ({url}): {e:#}"))?;
        if !status.is_success() {
            return Err(format!("the provider's {what} ({url}) answered {status}"));
        }
        serde_json::from_slice(&body)
            .map_err(|e| format!("the provider's {what} ({url}) is not what was expected: {e}"))
    }

    /// The discovery document, fetched once (a failure is not cached: the next sign-in tries
    /// again).
    async fn discovery(&self) -> Result<Arc<Discovery>, String> {
        let mut cached = self.discovery.lock().await;
        if let Some(d) = cached.as_ref() {
            return Ok(d.clone());
        }
        let url = format!("{}/.well-known/openid-configuration", self.settings.issuer.trim_end_matches('/'));
        let d: Discovery = self.get_json(&url, "discovery document").await?;
        // OpenID Connect Discovery 1.0 §4.3: the document's issuer must be the one asked.
        if d.issuer != self.settings.issuer {
            return Err(format!(
                "the discovery document names issuer {:?}, not the configured {:?}",
                d.issuer, self.settings.issuer
            ));
        }
        for (name, url) in [
            ("authorization_endpoint", &d.authorization_endpoint),
            ("token_endpoint", &d.token_endpoint),
            ("jwks_uri", &d.jwks_uri),
        ] {
            if !endpoint_ok(url) {
                return Err(format!("the provider's {name} {url:?} is not https:// (or http:// to this machine)"));
            }
        }
        let d = Arc::new(d);
        *cached = Some(d.clone());
        Ok(d)
    }

    /// The key `kid` names (or the only key, for a token without kid), fetching the JWKS when
    /// it is not cached or lacks that key.
    async fn key(&self, discovery: &Discovery, kid: Option<&str>) -> Result<Option<DecodingKey>, String> {
        let mut keys = self.keys.lock().await;
        let find = |set: &JwkSet| -> Result<Option<DecodingKey>, String> {
            let jwk = match kid {
                Some(kid) => set.find(kid),
                None if set.keys.len() == 1 => set.keys.first(),
                None => None,
            };
            jwk.map(|j| DecodingKey::from_jwk(j).map_err(|e| format!("the provider's key {kid:?}: {e}"))).transpose()
        };
        if let Some(k) = keys.as_ref() {
            if let Some(key) = find(&k.set)? {
                return Ok(Some(key));
            }
            if k.fetched.elapsed() < JWKS_REFRESH {
                return Ok(None);
            }
        }
        let set: JwkSet = self.get_json(&discovery.jwks_uri, "JWKS").await?;
        let key = find(&set)?;
        *keys = Some(Keys { set, fetched: Instant::now() });
        Ok(key)
    }

    /// Keeps a new attempt; false when too many are in flight.
    fn remember(&self, state: String, attempt: Attempt) -> bool {
        let mut attempts = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        attempts.retain(|_, a| a.started.elapsed() < ATTEMPT_TTL);
        if attempts.len() >= MAX_ATTEMPTS {
            return false;
        }
        attempts.insert(state, attempt);
        true
    }

    /// Takes the attempt `state` names out (it is used once, whatever comes of it).
    fn take(&self, state: &str) -> Option<Attempt> {
        let mut attempts = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        attempts.remove(state).filter(|a| a.started.elapsed() < ATTEMPT_TTL)
    }

    /// Exchanges `code` at the token endpoint; the ID token.
    async fn exchange(
        &self,
        discovery: &Discovery,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
    ) -> Result<String, String> {
        let s = &self.settings;
        // RFC 6749 §2.3.1: client_secret_basic is the default and must be supported; use post
        // only when the provider says it takes post and not basic.
        let methods = discovery.token_endpoint_auth_methods_supported.as_deref().unwrap_or_default();
        let basic = methods.is_empty() || methods.iter().any(|m| m == "client_secret_basic");
        let mut headers = vec![("accept", "application/json".to_string())];
        // The serializer is not Send: the body is made before any await.
        let form = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "authorization_code")
                .append_pair("code", code)
                .append_pair("redirect_uri", redirect_uri)
                .append_pair("code_verifier", verifier);
            if basic {
                // §2.3.1: each part form-encoded before they are joined and base64-encoded.
                let enc = |v: &str| form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
                let pair = format!("{}:{}", enc(&s.client_id), enc(&s.client_secret));
                headers.push(("authorization", format!("Basic {}", STANDARD.encode(pair))));
                form.append_pair("client_id", &s.client_id);
            } else {
                form.append_pair("client_id", &s.client_id).append_pair("client_secret", &s.client_secret);
            }
            form.finish()
        };
        let (status, body) = self
            .http
            .post_form(&discovery.token_endpoint, &headers, form)
            .await
            .map_err(|e| format!("cannot reach the provider's token endpoint: {e:#}"))?;
        #[derive(Deserialize)]
        struct TokenAnswer {
            id_token: Option<String>,
            error: Option<String>,
            error_description: Option<String>,
        }
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|e| format!("the token endpoint answered {status} with no JSON token response: {e}"))?;
        if !status.is_success() || answer.error.is_some() {
            return Err(format!(
                "the token endpoint refused the code ({status}): {} {}",
                answer.error.unwrap_or_default(),
                answer.error_description.unwrap_or_default()
            ));
        }
        answer.id_token.ok_or_else(|| "the token endpoint's answer has no id_token".to_string())
    }

    /// Checks `id_token` and answers the console user name its claim gives.
    async fn verify(&self, discovery: &Discovery, id_token: &str, nonce: &str) -> Result<String, Refused> {
        let s = &self.settings;
        let header = jsonwebtoken::decode_header(id_token)
            .map_err(|e| token_refused("", format!("the provider's ID token is malformed: {e}")))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(token_refused(
                "",
                format!("the ID token is signed with {:?}; only RS256 and ES256 are accepted", header.alg),
            ));
        }
        let key = self
            .key(discovery, header.kid.as_deref())
            .await
            .map_err(|e| refused(StatusCode::BAD_GATEWAY, e))?
            .ok_or_else(|| {
                token_refused("", format!("the ID token's key {:?} is not in the provider's JWKS", header.kid))
            })?;
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[&s.client_id]);
        validation.set_issuer(&[&s.issuer]);
        validation.leeway = LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<IdClaims>(id_token, &key, &validation)
            .map_err(|e| token_refused("", format!("the ID token was refused: {e}")))?
            .claims;
        let name = match s.claim {
            Claim::PreferredUsername => claims.preferred_username.clone(),
            Claim::Email => claims.email.clone(),
        }
        .unwrap_or_default();
        let fail = |m: String| Err(token_refused(&name, m));
        if claims.nonce.as_deref().is_none_or(|n| !accounts::same(n, nonce)) {
            return fail("the ID token's nonce is not this sign-in's (a replayed or substituted token)".into());
        }
        let now = now_ms() / 1000;
        if claims.iat > now + LEEWAY_SECS as i64 {
            return fail("the ID token was issued in the future (iat): check the clocks".into());
        }
        // OpenID Connect Core §3.1.3.7: several audiences need azp, and it must be us.
        if claims.aud.len() > 1 && claims.azp.as_deref() != Some(s.client_id.as_str()) {
            return fail("the ID token has several audiences and its azp is not this console".into());
        }
        if s.claim == Claim::Email && claims.email_verified == Some(false) {
            return fail("the provider says the email address is not verified".into());
        }
        if name.is_empty() {
            return fail(format!("the ID token has no {} claim", s.claim.name()));
        }
        Ok(name)
    }
}

/// The console's callback URL, registered with the provider.
fn redirect_uri(state: &ConsoleState) -> String {
    format!("{}/oidc/callback", state.origin)
}

/// A Set-Cookie of the attempt cookie: like the session's, but SameSite=Lax (see the module
/// comment) and for the attempt's life only.
fn attempt_cookie(value: &str, max_age_secs: u64) -> HeaderValue {
    let text = format!("{ATTEMPT_COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age_secs}");
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("invalid=; Max-Age=0"))
}

fn not_configured() -> Response {
    render::message_page(StatusCode::NOT_FOUND, "Not found", "No OpenID provider is configured on this console.")
}

/// PKCE's S256 challenge of `verifier` (RFC 7636 §4.2).
pub fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()))
}

/// `GET /oidc/start`: a new attempt, and the browser sent to the provider.
pub async fn start(State(state): State<ConsoleState>) -> Response {
    let Some(oidc) = state.oidc.clone() else { return not_configured() };
    let discovery = match oidc.discovery().await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!("console OpenID sign-in: {e}");
            return render::message_page(
                StatusCode::BAD_GATEWAY,
                "Sign-in unavailable",
                &format!("Sign-in with {} is unavailable: {e}", oidc.settings.label),
            );
        }
    };
    let (id, browser, nonce) = (accounts::random_hex(32), accounts::random_hex(32), accounts::random_hex(32));
    // 32 random bytes: a 64-character verifier, within RFC 7636's 43 to 128.
    let verifier = accounts::random_hex(32);
    let code_challenge = challenge(&verifier);
    let attempt = Attempt { browser: browser.clone(), nonce: nonce.clone(), verifier, started: Instant::now() };
    if !oidc.remember(id.clone(), attempt) {
        return render::message_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in busy",
            "Too many sign-ins are in progress; try again in a few minutes.",
        );
    }
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("response_type", "code")
        .append_pair("client_id", &oidc.settings.client_id)
        .append_pair("redirect_uri", &redirect_uri(&state))
        .append_pair("scope", "openid profile email")
        .append_pair("state", &id)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &code_challenge)
        .append_pair("code_challenge_method", "S256")
        .finish();
    let joiner = if discovery.authorization_endpoint.contains('?') { '&' } else { '?' };
    let mut response = Redirect::to(&format!("{}{joiner}{query}", discovery.authorization_endpoint)).into_response();
    response.headers_mut().append(header::SET_COOKIE, attempt_cookie(&browser, ATTEMPT_TTL.as_secs()));
    response
}

#[derive(Deserialize)]
pub struct Callback {
    #[serde(default)]
    code: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

/// `GET /oidc/callback`: the provider's answer; a session, or the sign-in page saying why
/// not (and no session).
pub async fn callback(State(state): State<ConsoleState>, headers: HeaderMap, Query(q): Query<Callback>) -> Response {
    let Some(oidc) = state.oidc.clone() else { return not_configured() };
    let outcome = finish(&state, &oidc, &headers, &q).await;
    let label = &oidc.settings.label;
    let mut response = match outcome {
        Ok((_, Ok((id, _account)))) => {
            let mut response = Redirect::to("/").into_response();
            let max_age = state.settings.session_max.as_secs();
            response.headers_mut().append(header::SET_COOKIE, web::set_cookie(SESSION_COOKIE, &id, max_age));
            response
        }
        Ok((name, Err(refusal))) => {
            let why = match refusal {
                Refusal::Disabled => "is disabled",
                _ => "is not a console user",
            };
            let message = format!(
                "Sign-in with {label} refused: the provider's user {} {why} (an admin adds console users with \
                 `guard-server user add`). You are not signed in.",
                guard_api::screen::escape(&name)
            );
            web::login_form(&state, StatusCode::FORBIDDEN, Some(&message))
        }
        Err(r) => {
            if let Some(tried) = &r.audit {
                accounts::record_oidc_refusal(state.shared.store.as_ref(), tried, &r.message, now_ms()).await;
            }
            tracing::warn!("console OpenID sign-in refused: {}", r.message);
            let message = format!("Sign-in with {label} refused: {} You are not signed in.", sentence(&r.message));
            web::login_form(&state, r.status, Some(&message))
        }
    };
    // The attempt is over whatever came of it.
    response.headers_mut().append(header::SET_COOKIE, attempt_cookie("", 0));
    response
}

fn sentence(text: &str) -> String {
    if text.ends_with('.') {
        text.to_string()
    } else {
        format!("{text}.")
    }
}

/// The name the token claimed and what came of signing it in; or why the callback was refused.
type Outcome = Result<(String, Result<(String, accounts::Account), Refusal>), Refused>;

async fn finish(state: &ConsoleState, oidc: &Oidc, headers: &HeaderMap, q: &Callback) -> Outcome {
    // Unknown state: not worth an audit record (anyone can send one; the log has it).
    let attempt = oidc.take(&q.state).ok_or_else(|| {
        refused(
            StatusCode::BAD_REQUEST,
            "this sign-in attempt is unknown, was already used, or is older than 10 minutes; start again",
        )
    })?;
    let browser = cookie(headers, ATTEMPT_COOKIE).unwrap_or_default();
    if !accounts::same(browser, &attempt.browser) {
        return Err(refused(StatusCode::BAD_REQUEST, "this sign-in was started in another browser; start again"));
    }
    if !q.error.is_empty() {
        return Err(refused(
            StatusCode::UNAUTHORIZED,
            format!("the provider answered {:?}: {:?}", q.error, q.error_description),
        ));
    }
    if q.code.is_empty() {
        return Err(refused(StatusCode::BAD_REQUEST, "the provider's answer has no code"));
    }
    let discovery = oidc.discovery().await.map_err(|e| refused(StatusCode::BAD_GATEWAY, e))?;
    let id_token = oidc
        .exchange(&discovery, &q.code, &attempt.verifier, &redirect_uri(state))
        .await
        .map_err(|e| token_refused("", e))?;
    let name = oidc.verify(&discovery, &id_token, &attempt.nonce).await?;
    let store = state.shared.store.as_ref();
    let outcome = accounts::sign_in_oidc(store, &state.settings, &name, now_ms())
        .await
        .map_err(|e| refused(StatusCode::INTERNAL_SERVER_ERROR, format!("the console's store failed: {e}")))?;
    Ok((name, outcome))
}
