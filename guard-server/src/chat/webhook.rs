//! The generic signed JSON webhook, for anything that is not Slack or Teams. Both ways the
//! body is signed with the shared secret: `X-Guard-Signature: t=<unix seconds>,v1=<hex
//! HMAC-SHA256(secret, "<t>.<raw body>")>`. guard posts `{"event": "created", "request": {..},
//! "token": ".."}` and later `{"event": "decided", "request": {..}}`; the receiver calls back
//! `POST /chat/webhook/actions` with `{"token", "action": "approve"|"deny", "user", "comment"?}`,
//! signed the same way, within 5 minutes, each signature once.
use super::notify::Poster as PosterTrait;
use super::{fresh, hmac_hex, hmac_ok, Action, Chat, Decided, Refusal};
use crate::lifecycle::now_ms;
use crate::service::approvals::Verified;
use anyhow::{bail, Context};
use async_trait::async_trait;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use guard_proto::v1::Request;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

pub const SIGNATURE_HEADER: &str = "x-guard-signature";

/// The header value signing `body` with `secret` at unix time `t`.
pub fn signature(secret: &[u8], t: i64, body: &[u8]) -> String {
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(body);
    format!("t={t},v1={}", hmac_hex(secret, &signed))
}

pub(crate) struct Poster;

impl Poster {
    async fn send(&self, chat: &Chat, event: Value) -> anyhow::Result<()> {
        let hook = chat.config.webhook.as_ref().context("the webhook is not configured")?;
        let body = event.to_string();
        let sig = signature(hook.secret.0.as_bytes(), now_ms() / 1000, body.as_bytes());
        let (status, answer) = chat.http.post_json(&hook.url, &[(SIGNATURE_HEADER, sig)], body).await?;
        if !status.is_success() {
            bail!("HTTP {status}: {}", String::from_utf8_lossy(&answer[..answer.len().min(300)]));
        }
        Ok(())
    }
}

/// The request as guard.v1 has it, with its state by label; the receiver escapes it for
/// wherever it shows it (everything from the watched tree is hostile).
fn request_json(r: &Request) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut v {
        let state = guard_proto::v1::State::try_from(r.state).unwrap_or_default().label();
        map.insert("state".into(), state.into());
    }
    v
}

#[async_trait]
impl PosterTrait for Poster {
    fn channel(&self) -> &'static str {
        "webhook"
    }

    fn targets(&self, _chat: &Chat) -> Vec<String> {
        vec![String::new()]
    }

    async fn post(&self, chat: &Chat, request: &Request, token: &str, _target: &str) -> anyhow::Result<String> {
        let console = chat.console_link(&request.id);
        self.send(
            chat,
            json!({"event": "created", "request": request_json(request), "token": token, "console_url": console}),
        )
        .await?;
        Ok("event".into())
    }

    async fn decided(&self, chat: &Chat, request: &Request, _message_ref: &str) -> anyhow::Result<()> {
        self.send(chat, json!({"event": "decided", "request": request_json(request)})).await
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Callback {
    token: String,
    action: String,
    user: String,
    #[serde(default)]
    comment: String,
}

/// `POST /webhook/actions`: the receiver's decision.
pub(crate) async fn actions(State(chat): State<Arc<Chat>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(hook) = chat.config.webhook.as_ref() else {
        return Refusal::new(StatusCode::NOT_FOUND, "the webhook is not configured on this server".into())
            .into_response();
    };
    let header = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => t = Some(value),
            Some(("v1", value)) => v1 = Some(value),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return chat
            .forged("webhook", "no X-Guard-Signature: t=<unix>,v1=<hex> header: refused".into())
            .into_response();
    };
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(&body);
    if !hmac_ok(hook.secret.0.as_bytes(), &signed, v1) {
        return chat
            .forged("webhook", "X-Guard-Signature does not match the body and the secret: refused".into())
            .into_response();
    }
    if let Err(why) = fresh(t) {
        return chat.forged("webhook", format!("X-Guard-Signature: {why}")).into_response();
    }
    if let Err(r) = chat.first_seen("webhook", v1).await {
        return r.into_response();
    }
    let callback: Callback = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            let why = format!("the body is not {{\"token\", \"action\", \"user\", \"comment\"?}}: {e}");
            return Refusal::new(StatusCode::BAD_REQUEST, why).into_response();
        }
    };
    let approve = match callback.action.as_str() {
        "approve" => true,
        "deny" => false,
        other => {
            return Refusal::new(StatusCode::BAD_REQUEST, format!("action {other:?}: \"approve\" or \"deny\""))
                .into_response();
        }
    };
    let comment = if callback.comment.is_empty() {
        format!("{} through the webhook", if approve { "approved" } else { "denied" })
    } else {
        callback.comment.clone()
    };
    let decided = chat
        .decide(Action {
            channel: "webhook",
            verified: Verified::Webhook,
            token: &callback.token,
            user: &callback.user,
            users: (!hook.users.is_empty()).then_some(&hook.users),
            approve,
            comment,
        })
        .await;
    match decided {
        Ok(d) => {
            let message = d.message();
            let (status, body) = match d {
                Decided::Reviewed { .. } => (StatusCode::OK, json!({"ok": true, "message": message})),
                // Not decided: the approval needs a passkey, which only the console can check. A
                // JSON error (409, as the server's own passkey refusal) with the card's link.
                Decided::StepUp { link, .. } => (
                    StatusCode::CONFLICT,
                    json!({"ok": false, "error": "passkey_required", "message": message, "console_url": link}),
                ),
            };
            (status, axum::Json(body)).into_response()
        }
        Err(r) => r.into_response(),
    }
}
