//! Microsoft Teams: Adaptive Cards posted to an incoming webhook or a Workflows URL, and the
//! bot's action endpoint. A Teams callback (an `invoke` activity for Action.Execute, or a
//! `message` activity with `value` for Action.Submit) is proven by the Bot Framework's bearer
//! token: RS256, signed by a key of the configured JWKS file, `aud` the bot's app id, `iss`
//! the configured issuer, within `nbf`/`exp`. Each activity id is taken once.
use super::cards;
use super::notify::Poster as PosterTrait;
use super::{Action, Chat, Refusal};
use crate::service::approvals::Verified;
use anyhow::{bail, Context};
use async_trait::async_trait;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use guard_proto::v1::Request;
use http::{HeaderMap, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

pub(crate) struct Poster;

impl Poster {
    async fn send(&self, chat: &Chat, card: Value) -> anyhow::Result<()> {
        let teams = chat.config.teams.as_ref().context("Teams is not configured")?;
        let body = cards::teams_message(card).to_string();
        let (status, answer) = chat.http.post_json(&teams.post_url, &[], body).await?;
        if !status.is_success() {
            bail!("HTTP {status}: {}", String::from_utf8_lossy(&answer[..answer.len().min(300)]));
        }
        Ok(())
    }
}

#[async_trait]
impl PosterTrait for Poster {
    fn channel(&self) -> &'static str {
        "teams"
    }

    fn targets(&self, _chat: &Chat) -> Vec<String> {
        vec![String::new()]
    }

    async fn post(&self, chat: &Chat, request: &Request, token: &str, _target: &str) -> anyhow::Result<String> {
        self.send(chat, cards::teams(request, Some(token), chat.console_link(&request.id).as_deref())).await?;
        // An incoming webhook gives no id to edit the card by: the decision is a new card.
        Ok("card".into())
    }

    async fn decided(&self, chat: &Chat, request: &Request, _message_ref: &str) -> anyhow::Result<()> {
        self.send(chat, cards::teams(request, None, chat.console_link(&request.id).as_deref())).await
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(rename = "serviceUrl", default)]
    service_url: Option<String>,
}

/// Checks the bearer token; its claims.
fn verify_token(chat: &Chat, headers: &HeaderMap) -> Result<Claims, Refusal> {
    let teams = chat
        .config
        .teams
        .as_ref()
        .ok_or_else(|| Refusal::new(StatusCode::NOT_FOUND, "Teams is not configured".into()))?;
    let forged = |why: String| chat.forged("teams", why);
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let Some(jwt) = auth.strip_prefix("Bearer ") else {
        return Err(forged("no `Authorization: Bearer` token: refused".into()));
    };
    let header = jsonwebtoken::decode_header(jwt).map_err(|e| forged(format!("bearer token: {e}: refused")))?;
    if header.alg != Algorithm::RS256 {
        return Err(forged(format!("bearer token signed with {:?}, not RS256: refused", header.alg)));
    }
    let jwk = match &header.kid {
        Some(kid) => teams.jwks.find(kid),
        None if teams.jwks.keys.len() == 1 => teams.jwks.keys.first(),
        None => None,
    };
    let Some(jwk) = jwk else {
        return Err(forged(format!("bearer token key {:?} is not in the JWKS file: refused", header.kid)));
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| forged(format!("JWKS key {:?}: {e}", header.kid)))?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[&teams.app_id]);
    validation.set_issuer(&[&teams.issuer]);
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud"]);
    jsonwebtoken::decode::<Claims>(jwt, &key, &validation)
        .map(|t| t.claims)
        .map_err(|e| forged(format!("bearer token refused: {e}")))
}

/// The answer Teams shows for an Action.Execute.
fn answer(text: &str) -> Response {
    let body = json!({"statusCode": 200, "type": "application/vnd.microsoft.activity.message", "value": text});
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// `POST /teams/actions`: a button press on a card, as the Bot Framework delivers it.
pub(crate) async fn actions(State(chat): State<Arc<Chat>>, headers: HeaderMap, body: Bytes) -> Response {
    let claims = match verify_token(&chat, &headers) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let Some(teams) = chat.config.teams.as_ref() else { return StatusCode::NOT_FOUND.into_response() };
    let Ok(activity) = serde_json::from_slice::<Value>(&body) else {
        return Refusal::new(StatusCode::BAD_REQUEST, "the body is not a JSON activity".into()).into_response();
    };
    if let (Some(claimed), Some(actual)) = (&claims.service_url, activity.get("serviceUrl").and_then(Value::as_str)) {
        if claimed.trim_end_matches('/') != actual.trim_end_matches('/') {
            return chat
                .forged("teams", "the activity's serviceUrl is not the token's: refused".into())
                .into_response();
        }
    }
    // The Bot Framework's token is reused for an hour: replays are told apart by activity.
    let id = activity.get("id").and_then(Value::as_str).filter(|s| !s.is_empty());
    let seen = id.map(str::to_string).unwrap_or_else(|| super::token_sha256(&String::from_utf8_lossy(&body)));
    if let Err(r) = chat.first_seen("teams", &seen).await {
        return r.into_response();
    }
    let user = activity.pointer("/from/aadObjectId").and_then(Value::as_str).unwrap_or_default();
    // Action.Execute: value.action.{verb,data}; Action.Submit: the data is the value.
    let (verb, data) = match activity.pointer("/value/action") {
        Some(a) => (a.get("verb").and_then(Value::as_str), a.get("data")),
        None => (activity.pointer("/value/verb").and_then(Value::as_str), activity.get("value")),
    };
    let token = data.and_then(|d| d.get("token")).and_then(Value::as_str).unwrap_or_default();
    let approve = match verb {
        Some("approve") => true,
        Some("deny") => false,
        other => {
            return Refusal::new(StatusCode::BAD_REQUEST, format!("unknown action verb {other:?}")).into_response();
        }
    };
    let decided = chat
        .decide(Action {
            channel: "teams",
            verified: Verified::Teams,
            token,
            user,
            users: Some(&teams.users),
            approve,
            comment: format!("{} in Teams by user {user}", if approve { "approved" } else { "denied" }),
        })
        .await;
    match decided {
        Ok(d) => answer(&d.message()),
        Err(r) if r.status == StatusCode::UNAUTHORIZED => r.into_response(),
        // The Universal Actions error answer: Teams shows its message to the approver.
        Err(r) => {
            let body = json!({"statusCode": r.status.as_u16(), "type": "application/vnd.microsoft.error",
                              "value": {"code": r.status.canonical_reason().unwrap_or("refused"), "message": format!("guard: {}", r.message)}});
            (StatusCode::OK, axum::Json(body)).into_response()
        }
    }
}
