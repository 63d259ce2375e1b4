//! Chat approvals: a card per pending request in Slack, Microsoft Teams and a generic signed
//! JSON webhook, with Approve / Deny buttons, and the endpoints their callbacks come to.
//!
//! - `config.rs`: `[chat]` of the server config.
//! - `notify.rs`: one task per channel posts each new pending request's card and, when the
//!   request is decided (by anyone, anywhere), updates every copy. Retries with backoff, each
//!   post in its own task: a dead chat service delays nothing else and never a decision.
//! - `cards.rs`: the cards, with everything from the watched tree escaped.
//! - `slack.rs`, `teams.rs`, `webhook.rs`: each service's posting and its callback endpoint,
//!   which checks the service's proof (signature, token), refuses replays, maps the service's
//!   user to an approver, and decides through `service::approvals::review` like every channel.
//! - `http.rs`: the HTTP client.
//!
//! The buttons carry an opaque random token per (request, channel), never the request id: a
//! callback can only act on a card that was actually posted, and the store keeps only the
//! token's SHA-256.
//!
//! The endpoints are an `axum::Router` (`ChatService::router`) that the console nests under
//! `/chat` on its HTTPS listener: no listener of its own.
pub mod cards;
pub mod config;
use crate::http_client as http;
mod notify;
mod slack;
mod teams;
mod webhook;

pub use config::ChatConfig;

use crate::audit::{refused, Attempt};
use crate::error::GuardError;
use crate::lifecycle::now_ms;
use crate::service::approvals::{self, Verified};
use crate::service::Shared;
use ::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use guard_proto::v1::{Request, ReviewRequest};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How old a signed callback may be (Slack's own rule; the webhook's too).
pub const REPLAY_WINDOW: Duration = Duration::from_secs(5 * 60);
/// Largest callback body taken (Slack's interaction payloads are a few KB).
const MAX_BODY: usize = 256 * 1024;

/// What the chat channels share: the server's state, the config, the HTTP client, and how
/// many callbacks were refused before any request could be named.
pub struct Chat {
    pub(crate) shared: Shared,
    pub(crate) config: ChatConfig,
    pub(crate) http: http::Client,
    /// Callbacks refused for their proof (signature, timestamp, token, replay). They are
    /// logged and counted, not written to the audit trail: anyone on the network can send
    /// them, and a trail row per forged post would let them flood it; a refusal on a real
    /// request after the proof was checked is recorded (`approvals::review` does it).
    forged: AtomicU64,
}

impl Chat {
    /// The request's card in the console, when the console's URL is configured: the queue
    /// (`GET /`, the console has no page per request) scrolled to the card, whose element id
    /// is `req-<id>` (console/render.rs).
    pub(crate) fn console_link(&self, id: &str) -> Option<String> {
        self.config.console_url.as_ref().map(|base| format!("{base}/#req-{id}"))
    }

    /// Counts and logs a callback refused for its proof; the answer says why.
    pub(crate) fn forged(&self, channel: &str, why: String) -> Refusal {
        self.forged.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("chat {channel}: callback refused: {why}");
        Refusal::new(StatusCode::UNAUTHORIZED, why)
    }

    /// Records the refusal of `who`'s attempt on request `request` (a callback whose proof was
    /// good, refused before reaching `approvals::review`, e.g. an unmapped user).
    async fn record_refusal(&self, request: &Request, who: &str, message: &str) {
        let record = refused(Attempt::Review, now_ms(), &request.id, Some(request), &request.host, who, message);
        if let Err(e) = self.shared.store.append_server(vec![record]).await {
            tracing::error!("cannot record the refused chat review of {} by {who}: {e}", request.id);
        }
    }

    /// Takes a signature once: a second callback with it is a replay.
    pub(crate) async fn first_seen(&self, channel: &str, signature: &str) -> Result<(), Refusal> {
        let keep = 2 * REPLAY_WINDOW.as_millis() as i64;
        match self.shared.store.chat_first_seen(&format!("{channel}:{signature}"), now_ms(), keep).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.forged(channel, "this callback was already taken (a replay): refused".into())),
            Err(e) => Err(Refusal::new(StatusCode::SERVICE_UNAVAILABLE, format!("cannot check for a replay: {e}"))),
        }
    }

    /// The decision of a verified callback: the card's token names the request (and must be
    /// one posted on `channel`), `user` is mapped to an approver by `users`, and the review
    /// goes through `approvals::review` with every server rule.
    pub(crate) async fn decide(&self, action: Action<'_>) -> Result<Decided, Refusal> {
        let Action { channel, verified, token, user, users, approve, comment } = action;
        let found = match self.shared.store.chat_token(&token_sha256(token)).await {
            Ok(found) => found,
            Err(e) => {
                return Err(Refusal::new(StatusCode::SERVICE_UNAVAILABLE, format!("cannot look the card up: {e}")))
            }
        };
        let Some(card) = found.filter(|c| c.channel == channel) else {
            return Err(self.forged(channel, "unknown or expired card token: refused".into()));
        };
        let request = match self.shared.store.get(&card.request_id, now_ms()).await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(Refusal::new(StatusCode::NOT_FOUND, format!("no request {}", card.request_id))),
            Err(e) => return Err(Refusal::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
        };
        let approver = match users {
            Some(users) => match users.get(user) {
                Some(a) => a.clone(),
                None => {
                    let message = format!(
                        "{channel} user {user:?} is not mapped to a guard approver (chat.{channel}.users in the server config)"
                    );
                    self.record_refusal(&request, &format!("{channel}:{user}"), &message).await;
                    return Err(Refusal::new(StatusCode::FORBIDDEN, message));
                }
            },
            None => user.to_string(),
        };
        // `[passkeys]` (the server's one answer, as the console asks it): a chat button cannot
        // run a WebAuthn ceremony, so an approval that needs a passkey is sent to the console
        // and nothing is recorded. A deny never needs one and goes on to the review. So does
        // an approval the rules refuse anyway (not pending, not this approver's to decide):
        // the review refuses it with its own reason and records the attempt.
        let decidable = request.state == guard_proto::v1::State::Pending as i32
            && crate::lifecycle::may_decide(&self.shared.policy, &approver, &request).is_ok();
        if approve && decidable && self.shared.policy.passkeys.needs_passkey(&request, &approver) {
            return Ok(Decided::StepUp { id: request.id.clone(), link: self.console_link(&request.id) });
        }
        let input = ReviewRequest { id: request.id.clone(), approve, comment, grant_seconds: 0 };
        match approvals::review(&self.shared, &approver, verified, input).await {
            Ok(r) => Ok(Decided::Reviewed { request: Box::new(r), approver }),
            Err(e) => Err(Refusal::from_guard(e)),
        }
    }
}

/// One button press, as a channel verified it.
pub(crate) struct Action<'a> {
    pub channel: &'static str,
    pub verified: Verified,
    pub token: &'a str,
    /// The service's user id.
    pub user: &'a str,
    /// The service's users -> approvers; None: `user` is the approver's name.
    pub users: Option<&'a std::collections::BTreeMap<String, String>>,
    pub approve: bool,
    pub comment: String,
}

pub(crate) enum Decided {
    Reviewed {
        request: Box<Request>,
        approver: String,
    },
    /// The rule needs a passkey: approve in the console (`link`: the request's card there,
    /// when `[chat] console_url` is set). Nothing was recorded.
    StepUp {
        id: String,
        link: Option<String>,
    },
}

impl Decided {
    /// What the approver is told.
    pub fn message(&self) -> String {
        match self {
            Decided::Reviewed { request, approver } => {
                let state = guard_proto::v1::State::try_from(request.state).unwrap_or_default().label();
                format!("guard: {approver}'s review of request {} is recorded; the request is {state}", request.id)
            }
            Decided::StepUp { id, link: Some(link) } => format!(
                "guard: approving request {id} needs your passkey, which chat cannot check: approve it in the \
                 console, {link} (nothing was recorded)"
            ),
            Decided::StepUp { id, link: None } => format!(
                "guard: approving request {id} needs your passkey, which chat cannot check: approve it in the \
                 guard console (nothing was recorded)"
            ),
        }
    }
}

/// A refused callback: an HTTP status and a message naming the problem.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
}

impl Refusal {
    pub fn new(status: StatusCode, message: String) -> Self {
        Refusal { status, message }
    }

    fn from_guard(e: GuardError) -> Self {
        let status = e.http_status();
        Refusal { status, message: format!("refused: {e}") }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status, [(::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], self.message).into_response()
    }
}

/// A new card token: 128 random bits, base32 (as request ids are written).
pub(crate) fn new_token() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 20];
    // The OS's CSPRNG; it fails only on a broken system, where no token is better than a weak one.
    ring::rand::SystemRandom::new().fill(&mut bytes).expect("the system's random number generator");
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::with_capacity(32);
    let mut acc = 0u32;
    let mut bits = 0;
    for b in bytes {
        acc = (acc << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    out
}

pub(crate) fn token_sha256(token: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// HMAC-SHA256 of `message` with `key`, hex.
pub(crate) fn hmac_hex(key: &[u8], message: &[u8]) -> String {
    hex(ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), message).as_ref())
}

/// Whether `signature_hex` is the HMAC-SHA256 of `message` with `key` (compared in constant
/// time by ring).
pub(crate) fn hmac_ok(key: &[u8], message: &[u8], signature_hex: &str) -> bool {
    let Some(tag) = unhex(signature_hex) else { return false };
    ring::hmac::verify(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), message, &tag).is_ok()
}

/// Whether the unix time `t` (seconds, as text) is within the replay window of now.
pub(crate) fn fresh(t: &str) -> Result<i64, String> {
    let t: i64 = t.trim().parse().map_err(|_| format!("timestamp {t:?} is not a number"))?;
    let now = now_ms() / 1000;
    let window = REPLAY_WINDOW.as_secs() as i64;
    if (now - t).abs() > window {
        return Err(format!("timestamp {t} is {}s from now, outside the {window}s window: refused", now - t));
    }
    Ok(t)
}

/// The running chat channels: their notifier tasks, and the callbacks' router.
pub struct ChatService {
    chat: Arc<Chat>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for ChatService {
    fn drop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl ChatService {
    /// Starts a notifier per configured channel; None when no channel is configured.
    pub fn start(shared: Shared, config: &ChatConfig) -> Option<ChatService> {
        if config.is_off() {
            return None;
        }
        Some(Self::start_with(shared, config, notify::Retry::default()))
    }

    /// As `start`, with the retry schedule given (tests shorten it).
    pub fn start_with(shared: Shared, config: &ChatConfig, retry: notify::Retry) -> ChatService {
        let chat = Arc::new(Chat {
            shared,
            config: config.clone(),
            http: http::Client::new(&config.ca_file),
            forged: AtomicU64::new(0),
        });
        let mut tasks = Vec::new();
        if chat.config.slack.is_some() {
            tasks.push(tokio::spawn(notify::run(chat.clone(), Arc::new(slack::Poster), retry)));
        }
        if chat.config.teams.is_some() {
            tasks.push(tokio::spawn(notify::run(chat.clone(), Arc::new(teams::Poster), retry)));
        }
        if chat.config.webhook.is_some() {
            tasks.push(tokio::spawn(notify::run(chat.clone(), Arc::new(webhook::Poster), retry)));
        }
        ChatService { chat, tasks }
    }

    /// `POST /slack/actions`, `/teams/actions`, `/webhook/actions` (the console nests this
    /// under `/chat`). A channel that is not configured answers 404.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/slack/actions", axum::routing::post(slack::actions))
            .route("/teams/actions", axum::routing::post(teams::actions))
            .route("/webhook/actions", axum::routing::post(webhook::actions))
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
            .with_state(self.chat.clone())
    }

    /// Callbacks refused for their proof (forged, stale, replayed, unknown token) so far.
    pub fn forged_count(&self) -> u64 {
        self.chat.forged.load(Ordering::Relaxed)
    }
}

pub use notify::Retry;
