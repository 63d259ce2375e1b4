//! The web side every page shares: the session cookie and who it signs in (`Signed`), the
//! CSRF checks of every POST (`check_post`: the Origin, then the session's token), the
//! security headers of every answer, the sign-in and sign-out pages, the static files.
use super::accounts::{self, Account, SIGN_IN_REFUSED};
use super::render;
use super::ConsoleState;
use crate::lifecycle::now_ms;
use axum::extract::{FromRequestParts, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

/// `__Host-`: the browser keeps it only if Secure, Path=/ and no Domain, so no sibling
/// subdomain can plant or read it.
pub const SESSION_COOKIE: &str = "__Host-guard_session";
/// The sign-in form's own CSRF token (double submit: cookie and field must agree), since
/// there is no session yet to hold one.
pub const LOGIN_COOKIE: &str = "__Host-guard_login";

/// The value of cookie `name` in the request's Cookie headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A Set-Cookie value: HttpOnly (no script reads it), Secure, SameSite=Strict (no other site's
/// page sends it), Path=/ (as `__Host-` requires). `max_age` 0 deletes it.
pub fn set_cookie(name: &str, value: &str, max_age_secs: u64) -> HeaderValue {
    let text = format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}");
    // Our names and hex values only: always a valid header value.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("invalid=; Max-Age=0"))
}

/// The signed-in account of a request; without a live session a page answers with the
/// sign-in page (GET: a redirect; anything else: 401).
pub struct Signed(pub Account);

impl FromRequestParts<ConsoleState> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &ConsoleState) -> Result<Self, Self::Rejection> {
        let id = cookie(&parts.headers, SESSION_COOKIE).unwrap_or_default();
        match accounts::authenticate(state.shared.store.as_ref(), &state.settings, id, now_ms()).await {
            Ok(Some(account)) => Ok(Signed(account)),
            Ok(None) if parts.method == Method::GET => Err(Redirect::to("/login").into_response()),
            Ok(None) => Err(render::message_page(
                StatusCode::UNAUTHORIZED,
                "Not signed in",
                "Your session has ended or never began: sign in again. Nothing was changed.",
            )),
            Err(e) => Err(render::error_page(&e)),
        }
    }
}

/// The CSRF checks of a POST, before anything is read or changed: the Origin header (or, when
/// a browser sends none, the Referer) must be the console's own origin, and when `token` is
/// given it must be the session's. Some(refusal): a 403 page naming the problem, to answer
/// instead of doing anything.
pub fn check_post(state: &ConsoleState, headers: &HeaderMap, expected: Option<&str>, token: &str) -> Option<Response> {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let referer = headers.get(header::REFERER).and_then(|v| v.to_str().ok());
    let ours = &*state.origin;
    let from_us = match (origin, referer) {
        (Some(o), _) => o == ours,
        (None, Some(r)) => r == ours || r.strip_prefix(ours).is_some_and(|rest| rest.starts_with('/')),
        (None, None) => false,
    };
    if !from_us {
        let sent = origin.map(|o| format!("Origin {o:?}")).or(referer.map(|r| format!("Referer {r:?}")));
        let message = format!(
            "Refused: this form was not sent from the console's own page ({} is not {ours}). Nothing was changed.",
            sent.unwrap_or_else(|| "no Origin or Referer".into())
        );
        return Some(render::message_page(StatusCode::FORBIDDEN, "Refused (CSRF)", &message));
    }
    if let Some(expected) = expected {
        if token.is_empty() || !accounts::same(token, expected) {
            return Some(render::message_page(
                StatusCode::FORBIDDEN,
                "Refused (CSRF)",
                "Refused: the form's security token is missing or is not this session's (reload the page and try \
                 again). Nothing was changed.",
            ));
        }
    }
    None
}

/// Every answer: a strict CSP (only our own script and style, no inline script, no framing),
/// no caching (pages hold argv and paths), no MIME sniffing, HSTS.
pub async fn headers(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    let set = |h: &mut HeaderMap, name: &'static str, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set(
        h,
        "content-security-policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; object-src 'none'; \
         base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    );
    set(h, "x-frame-options", "DENY");
    set(h, "x-content-type-options", "nosniff");
    set(h, "referrer-policy", "same-origin");
    set(h, "strict-transport-security", "max-age=31536000");
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, "cache-control", "no-store");
    }
    response
}

pub async fn login_page(State(state): State<ConsoleState>, headers: HeaderMap) -> Response {
    let signed_in = match cookie(&headers, SESSION_COOKIE) {
        Some(id) => accounts::authenticate(state.shared.store.as_ref(), &state.settings, id, now_ms()).await,
        None => Ok(None),
    };
    if let Ok(Some(_)) = signed_in {
        return Redirect::to("/").into_response();
    }
    login_form(&state, StatusCode::OK, None)
}

/// The sign-in page (with the OpenID provider's link when one is configured) and its CSRF
/// cookie.
pub fn login_form(state: &ConsoleState, status: StatusCode, error: Option<&str>) -> Response {
    let token = accounts::random_hex(32);
    let label = state.settings.oidc.as_ref().map(|o| o.label.as_str());
    let mut response = render::respond(status, render::login(&token, error, label));
    response.headers_mut().append(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, &token, 3600));
    response
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

pub async fn login(State(state): State<ConsoleState>, headers: HeaderMap, Form(form): Form<LoginForm>) -> Response {
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default().to_string();
    if let Some(refused) = check_post(&state, &headers, Some(&expected), &form.csrf) {
        return refused;
    }
    let store = state.shared.store.as_ref();
    match accounts::sign_in(store, &state.settings, &form.username, &form.password, now_ms()).await {
        Ok(Ok((id, _account))) => {
            let mut response = Redirect::to("/").into_response();
            let max_age = state.settings.session_max.as_secs();
            let h = response.headers_mut();
            h.append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, &id, max_age));
            h.append(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, "", 0));
            response
        }
        Ok(Err(_refusal)) => login_form(&state, StatusCode::UNAUTHORIZED, Some(SIGN_IN_REFUSED)),
        Err(e) => render::error_page(&e),
    }
}

#[derive(Deserialize)]
pub struct TokenForm {
    #[serde(default)]
    pub csrf: String,
}

pub async fn logout(
    State(state): State<ConsoleState>,
    Signed(account): Signed,
    headers: HeaderMap,
    Form(form): Form<TokenForm>,
) -> Response {
    if let Some(refused) = check_post(&state, &headers, Some(&account.session.csrf), &form.csrf) {
        return refused;
    }
    if let Err(e) = state.shared.store.delete_session(&account.session.id_hash).await {
        return render::error_page(&e);
    }
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", 0));
    response
}

/// Static files are the binary's own: cacheable for an hour (no secret in them).
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=3600"));
    response
}

pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("static/console.js"))
}

pub async fn style() -> Response {
    asset("text/css; charset=utf-8", include_str!("static/console.css"))
}
