//! The console's side of passkeys (`crate::passkey` does the WebAuthn): the Passkeys page
//! (register, list, remove), the JSON endpoints the browser script (`passkey::SCRIPT`) calls,
//! and the step-up of an approval that `[passkeys]` says needs one: the approve forms of such
//! a request run `navigator.credentials.get` for a challenge bound to this approver, this
//! request and this decision, and the review is recorded as `password+passkey` only when
//! `Passkeys::finish_approval` accepts the assertion for exactly that.
use super::accounts::{Account, Role};
use super::render::{self, layout, respond, shown, when};
use super::web::{check_post, Signed, TokenForm};
use super::ConsoleState;
use crate::passkey::{PasskeyError, Passkeys};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use maud::html;
use serde::Deserialize;
use serde_json::json;

/// The relying party id of `origin` (`https://host:port` -> `host`).
pub fn rp_id(origin: &str) -> String {
    let host = origin.trim_start_matches("https://");
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default().to_string();
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.chars().all(|c| c.is_ascii_digit()) => h.to_string(),
        _ => host.to_string(),
    }
}

/// The WebAuthn side for the console's origin; None (with the reason logged) when the origin
/// cannot carry passkeys (browsers refuse an IP address as the relying party).
pub fn for_origin(origin: &str, store: std::sync::Arc<dyn crate::store::Store>) -> Option<std::sync::Arc<Passkeys>> {
    match Passkeys::new(&rp_id(origin), origin, store) {
        Ok(p) => Some(std::sync::Arc::new(p)),
        Err(e) => {
            tracing::warn!("console: no passkeys on {origin}: {e} (set [console] public_url to a host name)");
            None
        }
    }
}

fn json_error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn status_of(e: &PasskeyError) -> StatusCode {
    match e {
        PasskeyError::Config(_) | PasskeyError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        PasskeyError::NoPasskey(_) | PasskeyError::AlreadyRegistered => StatusCode::CONFLICT,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// The CSRF checks of the script's JSON POSTs: the Origin, and the session's token in the
/// X-CSRF-Token header.
fn check_json(state: &ConsoleState, headers: &HeaderMap, account: &Account) -> Option<Response> {
    let token = headers.get("x-csrf-token").and_then(|v| v.to_str().ok()).unwrap_or_default();
    check_post(state, headers, Some(&account.session.csrf), token)
}

fn unavailable() -> Response {
    json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "passkeys are not available on this console: its public_url must be a host name, not an IP address".into(),
    )
}

pub async fn page(State(state): State<ConsoleState>, Signed(account): Signed) -> Response {
    passkeys_page(&state, &account, StatusCode::OK, None).await
}

async fn passkeys_page(
    state: &ConsoleState,
    account: &Account,
    status: StatusCode,
    banner: Option<String>,
) -> Response {
    let Some(passkeys) = &state.passkeys else {
        let body = html! { h1 { "Passkeys" } (render::notice(false, "Passkeys are not available on this console: its public_url must be a host name (browsers refuse an IP address).")) };
        return respond(StatusCode::OK, layout("Passkeys", Some(account), body));
    };
    let list = match passkeys.list(&account.name).await {
        Ok(list) => list,
        Err(e) => return render::message_page(status_of(&e), "Passkeys", &e.to_string()),
    };
    let body = html! {
        @if let Some(b) = &banner { (render::notice(status.is_success(), b)) }
        h1 { "Passkeys" }
        p.small { "A passkey confirms an approval that the server's [passkeys] rules require: your authenticator verifies you (PIN or biometric) for that one request." }
        @if list.is_empty() { p { "You have no passkey yet." } }
        ul.passkeys {
            @for k in &list {
                li {
                    b { (shown(&k.label)) } " · added " (when(k.created_ms))
                    " · last used " (if k.last_used_ms > 0 { when(k.last_used_ms) } else { "never".into() })
                    form.inline method="post" action=(format!("/passkeys/{}/remove", k.credential_id)) {
                        input type="hidden" name="csrf" value=(account.session.csrf);
                        button type="submit" { "Remove" }
                    }
                }
            }
        }
        section.register {
            label { "Name for the new passkey " input data-passkey-label maxlength="64" value="passkey"; }
            button.approve type="button" data-passkey-register data-start="/passkeys/register/start" data-finish="/passkeys/register/finish" { "Register a passkey" }
            p data-passkey-status role="status" {}
        }
    };
    respond(status, layout("Passkeys", Some(account), body))
}

pub async fn register_start(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Signed(account): Signed,
) -> Response {
    if let Some(refused) = check_json(&state, &headers, &account) {
        return refused;
    }
    let Some(passkeys) = &state.passkeys else { return unavailable() };
    match passkeys.start_registration(&account.name).await {
        Ok((options, ceremony)) => Json(json!({ "ceremony": ceremony, "options": options })).into_response(),
        Err(e) => json_error(status_of(&e), e.to_string()),
    }
}

#[derive(Deserialize)]
pub struct RegisterFinish {
    ceremony: String,
    credential: serde_json::Value,
    #[serde(default)]
    label: String,
}

pub async fn register_finish(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Signed(account): Signed,
    Json(body): Json<RegisterFinish>,
) -> Response {
    if let Some(refused) = check_json(&state, &headers, &account) {
        return refused;
    }
    let Some(passkeys) = &state.passkeys else { return unavailable() };
    let label = if body.label.trim().is_empty() { "passkey" } else { body.label.trim() };
    match passkeys.finish_registration(&account.name, &body.ceremony, &body.credential.to_string(), label).await {
        Ok(r) => Json(json!({ "message": format!("Passkey {:?} registered.", shown(&r.label)) })).into_response(),
        Err(e) => json_error(status_of(&e), e.to_string()),
    }
}

pub async fn remove(
    State(state): State<ConsoleState>,
    Path(credential): Path<String>,
    headers: HeaderMap,
    Signed(account): Signed,
    Form(form): Form<TokenForm>,
) -> Response {
    if let Some(refused) = check_post(&state, &headers, Some(&account.session.csrf), &form.csrf) {
        return refused;
    }
    let Some(passkeys) = &state.passkeys else { return unavailable() };
    let (status, message) = match passkeys.remove(&account.name, &credential).await {
        Ok(true) => (StatusCode::OK, "Passkey removed.".to_string()),
        Ok(false) => (StatusCode::NOT_FOUND, "Refused: you have no such passkey. Nothing was changed.".to_string()),
        Err(e) => (status_of(&e), format!("Refused: {e}")),
    };
    passkeys_page(&state, &account, status, Some(message)).await
}

/// The approve form's fields, as the script sends them (JSON).
#[derive(Deserialize)]
pub struct ApprovalStart {
    #[serde(default)]
    action: String,
    #[serde(default)]
    minutes: Option<String>,
}

/// The decision a passkey confirms, as the ceremony remembers it and the review must repeat.
pub fn decision_summary(action: &str, minutes: Option<&str>) -> String {
    match action {
        "approve_for" => format!("approve for {} minutes", minutes.unwrap_or_default()),
        other => other.to_string(),
    }
}

pub async fn approval_start(
    State(state): State<ConsoleState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Signed(account): Signed,
    Json(body): Json<ApprovalStart>,
) -> Response {
    if let Some(refused) = check_json(&state, &headers, &account) {
        return refused;
    }
    if account.role != Role::Approver {
        return json_error(StatusCode::FORBIDDEN, format!("{} is not an approver", account.name));
    }
    if !matches!(body.action.as_str(), "approve" | "approve_for") {
        return json_error(StatusCode::BAD_REQUEST, "only an approval is confirmed with a passkey".into());
    }
    // The request must be one this approver sees (the review applies every other rule).
    if let Err(e) = crate::service::approvals::get(&state.shared, &account.name, &id).await {
        return json_error(e.http_status(), e.to_string());
    }
    let Some(passkeys) = &state.passkeys else { return unavailable() };
    let decision = decision_summary(&body.action, body.minutes.as_deref());
    match passkeys.start_approval(&account.name, &id, &decision).await {
        Ok((options, ceremony)) => Json(json!({ "ceremony": ceremony, "options": options })).into_response(),
        Err(e) => json_error(status_of(&e), e.to_string()),
    }
}

pub async fn script() -> Response {
    let mut response = crate::passkey::SCRIPT.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/javascript; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=3600"));
    response
}

#[cfg(test)]
mod tests {
    use super::rp_id;

    #[test]
    fn the_relying_party_is_the_origins_host() {
        assert_eq!(rp_id("https://guard.example:8443"), "guard.example");
        assert_eq!(rp_id("https://guard.example"), "guard.example");
        assert_eq!(rp_id("https://localhost:1234"), "localhost");
        assert_eq!(rp_id("https://[::1]:8443"), "::1");
    }
}
