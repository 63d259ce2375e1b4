//! Slack: cards through the Web API (`chat.postMessage`, `chat.update`, bot token), and the
//! interactivity endpoint. A Slack callback is proven by `X-Slack-Signature`: `v0=` and the
//! hex HMAC-SHA256, keyed with the app's signing secret, of `v0:{X-Slack-Request-Timestamp}:{raw
//! body}`; the timestamp must be within 5 minutes, and a signature is taken once.
use super::cards::{self, APPROVE, DENY};
use super::notify::Poster as PosterTrait;
use super::{fresh, hmac_ok, Action, Chat, Refusal};
use crate::service::approvals::Verified;
use anyhow::{bail, Context};
use async_trait::async_trait;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use guard_proto::v1::Request;
use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;

pub(crate) struct Poster;

impl Poster {
    async fn call(&self, chat: &Chat, method: &str, body: Value) -> anyhow::Result<Value> {
        let slack = chat.config.slack.as_ref().context("Slack is not configured")?;
        let url = format!("{}/{method}", slack.api_base);
        let auth = format!("Bearer {}", slack.bot_token.0);
        let (status, answer) = chat.http.post_json(&url, &[("authorization", auth)], body.to_string()).await?;
        if !status.is_success() {
            bail!("{method}: HTTP {status}: {}", String::from_utf8_lossy(&answer[..answer.len().min(300)]));
        }
        let answer: Value =
            serde_json::from_slice(&answer).with_context(|| format!("{method}: the answer is not JSON"))?;
        if answer.get("ok").and_then(Value::as_bool) != Some(true) {
            bail!("{method}: Slack says {}", answer.get("error").cloned().unwrap_or(Value::Null));
        }
        Ok(answer)
    }
}

#[async_trait]
impl PosterTrait for Poster {
    fn channel(&self) -> &'static str {
        "slack"
    }

    fn targets(&self, chat: &Chat) -> Vec<String> {
        chat.config.slack.as_ref().map(|s| s.channels.clone()).unwrap_or_default()
    }

    async fn post(&self, chat: &Chat, request: &Request, token: &str, target: &str) -> anyhow::Result<String> {
        let (text, blocks) = cards::slack(request, Some(token), chat.console_link(&request.id).as_deref());
        let body =
            json!({"channel": target, "text": text, "blocks": blocks, "unfurl_links": false, "unfurl_media": false});
        let answer = self.call(chat, "chat.postMessage", body).await?;
        let channel = answer.get("channel").and_then(Value::as_str).unwrap_or(target);
        let ts = answer.get("ts").and_then(Value::as_str).context("chat.postMessage: no ts in the answer")?;
        Ok(format!("{channel} {ts}"))
    }

    async fn decided(&self, chat: &Chat, request: &Request, message_ref: &str) -> anyhow::Result<()> {
        let (channel, ts) = message_ref.split_once(' ').context("bad message reference")?;
        let (text, blocks) = cards::slack(request, None, chat.console_link(&request.id).as_deref());
        self.call(chat, "chat.update", json!({"channel": channel, "ts": ts, "text": text, "blocks": blocks})).await?;
        Ok(())
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Checks the post is Slack's: signature, timestamp, first time seen.
async fn verify(chat: &Chat, secret: &str, headers: &HeaderMap, body: &[u8]) -> Result<(), Refusal> {
    let Some(ts) = header(headers, "x-slack-request-timestamp") else {
        return Err(chat.forged("slack", "no X-Slack-Request-Timestamp header: refused".into()));
    };
    let Some(signature) = header(headers, "x-slack-signature") else {
        return Err(chat.forged("slack", "no X-Slack-Signature header: refused".into()));
    };
    let Some(hex) = signature.strip_prefix("v0=") else {
        return Err(chat.forged("slack", "X-Slack-Signature is not a v0 signature: refused".into()));
    };
    let mut signed = format!("v0:{ts}:").into_bytes();
    signed.extend_from_slice(body);
    if !hmac_ok(secret.as_bytes(), &signed, hex) {
        return Err(
            chat.forged("slack", "X-Slack-Signature does not match the body and the signing secret: refused".into())
        );
    }
    fresh(ts).map_err(|why| chat.forged("slack", format!("X-Slack-Request-Timestamp: {why}")))?;
    chat.first_seen("slack", hex).await
}

/// `POST /slack/actions`: a button press on a card.
pub(crate) async fn actions(State(chat): State<Arc<Chat>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(slack) = chat.config.slack.as_ref() else {
        return Refusal::new(StatusCode::NOT_FOUND, "Slack is not configured on this server".into()).into_response();
    };
    if let Err(refusal) = verify(&chat, &slack.signing_secret.0, &headers, &body).await {
        return refusal.into_response();
    }
    let payload = form_urlencoded::parse(&body).find(|(k, _)| k == "payload").map(|(_, v)| v.into_owned());
    let Some(payload) = payload.and_then(|p| serde_json::from_str::<Value>(&p).ok()) else {
        return Refusal::new(StatusCode::BAD_REQUEST, "no JSON `payload` field in the form body".into())
            .into_response();
    };
    if payload.get("type").and_then(Value::as_str) != Some("block_actions") {
        // Other interactions (shortcuts, view submissions) are not ours: taken, nothing done.
        return StatusCode::OK.into_response();
    }
    let user = payload.pointer("/user/id").and_then(Value::as_str).unwrap_or_default();
    let response_url = payload.get("response_url").and_then(Value::as_str).map(str::to_string);
    let action = payload.pointer("/actions/0");
    let action_id = action.and_then(|a| a.get("action_id")).and_then(Value::as_str).unwrap_or_default();
    let token = action.and_then(|a| a.get("value")).and_then(Value::as_str).unwrap_or_default();
    let approve = match action_id {
        APPROVE => true,
        DENY => false,
        // The console link button, or another app's: nothing to decide.
        _ => return StatusCode::OK.into_response(),
    };
    let decided = chat
        .decide(Action {
            channel: "slack",
            verified: Verified::Slack,
            token,
            user,
            users: Some(&slack.users),
            approve,
            comment: format!("{} in Slack by user {user}", if approve { "approved" } else { "denied" }),
        })
        .await;
    let (status, text) = match decided {
        Ok(d) => (StatusCode::OK, d.message()),
        // A bad proof is answered as such; a refusal of a proven approver goes back to Slack
        // as a message they read (Slack shows nothing of a non-200 answer but an error icon).
        Err(r) if r.status == StatusCode::UNAUTHORIZED => return r.into_response(),
        Err(r) => (StatusCode::OK, format!("guard: {}", r.message)),
    };
    let message =
        json!({"response_type": "ephemeral", "replace_original": false, "text": cards::slack_escape(&text, 2900)});
    if let Some(url) = response_url.filter(|u| response_url_ok(&slack.api_base, u)) {
        let http = chat.http.clone();
        let body = message.to_string();
        tokio::spawn(async move {
            if let Err(e) = http.post_json(&url, &[], body).await {
                tracing::warn!("chat slack: answering through response_url: {e:#}");
            }
        });
    }
    (status, axum::Json(message)).into_response()
}

/// Slack's response URLs are on hooks.slack.com (or the configured API's host, for a proxy
/// or a test receiver): nothing else is posted to, whatever the payload says.
fn response_url_ok(api_base: &str, url: &str) -> bool {
    let origin =
        |u: &str| u.parse::<http::Uri>().ok().map(|u| (u.scheme_str().map(str::to_string), u.authority().cloned()));
    url.starts_with("https://hooks.slack.com/") || (origin(url).is_some() && origin(url) == origin(api_base))
}
