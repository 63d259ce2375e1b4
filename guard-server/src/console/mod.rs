//! The web console: approvers decide held operations in a browser, auditors and admins read
//! the trail and the grants. Served by guard-server itself on its own TLS listener
//! (`[console]`), server-rendered HTML (maud escapes everything it prints) with one small
//! static script for the live queue (Server-Sent Events) and the countdowns. Every decision
//! goes through `service::approvals`, the same rules as guardctl and the chat channels.
//!
//! Module map: `config` ([console] settings), `accounts` (users, passwords, sessions, lockout),
//! `web` (cookies, CSRF, sign-in pages, headers), `render` (how requests and records look),
//! `queue` (the live queue and reviews), `events` (its SSE stream), `history` (trail, export,
//! chain status), `grants` (live grants, revoke), `oidc` (sign-in through an OpenID provider),
//! `passkeys` (registration and the approval
//! step-up, over `crate::passkey`), `serve` (TLS and HTTP/1.1).
pub mod accounts;
pub mod config;
mod events;
mod grants;
mod history;
pub mod oidc;
mod passkeys;
mod queue;
pub mod render;
mod serve;
pub mod web;

use crate::service::Shared;
use anyhow::{Context, Result};
use axum::routing::{get, post};
use axum::Router;
use config::ConsoleSettings;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinHandle;

/// What every console handler shares.
#[derive(Clone)]
pub struct ConsoleState {
    pub shared: Shared,
    pub settings: Arc<ConsoleSettings>,
    /// The origin browsers use (`public_url`, or https:// and the bound address): the only
    /// Origin a POST is accepted from.
    pub origin: Arc<str>,
    /// The WebAuthn side, bound to `origin`; None when the origin cannot carry passkeys (an IP
    /// address).
    pub passkeys: Option<Arc<crate::passkey::Passkeys>>,
    /// Sign-in through the OpenID provider, when `[console.oidc]` configures one.
    pub oidc: Option<Arc<oidc::Oidc>>,
}

/// The console's routes.
pub fn router(state: ConsoleState) -> Router {
    router_with(state, Router::new())
}

/// The console's routes and `extra`: the other channels served on the same listener behind
/// the same security headers (the chat callbacks under `/chat/...`, the passkey ceremonies
/// under `/passkeys/...`). They bring their own state and checks; the console's session is
/// read with `web::Signed` and the CSRF check is `web::check_post`.
pub fn router_with(state: ConsoleState, extra: Router) -> Router {
    Router::new()
        .route("/", get(queue::page))
        .route("/login", get(web::login_page).post(web::login))
        .route("/logout", post(web::logout))
        .route("/oidc/start", get(oidc::start))
        .route("/oidc/callback", get(oidc::callback))
        .route("/events", get(events::stream))
        .route("/requests/{id}/review", post(queue::review))
        .route("/requests/{id}/argv/{level}", get(queue::argv))
        .route("/history", get(history::page))
        .route("/export", get(history::export))
        .route("/grants", get(grants::page))
        .route("/grants/{id}/revoke", post(grants::revoke))
        .route("/passkeys", get(passkeys::page))
        .route("/passkeys/register/start", post(passkeys::register_start))
        .route("/passkeys/register/finish", post(passkeys::register_finish))
        .route("/passkeys/{id}/remove", post(passkeys::remove))
        .route("/requests/{id}/passkey/start", post(passkeys::approval_start))
        .route("/static/guard-passkey.js", get(passkeys::script))
        .route("/static/console.js", get(web::script))
        .route("/static/console.css", get(web::style))
        .with_state(state)
        .merge(extra)
        .layer(axum::middleware::from_fn(web::headers))
}

/// A running console listener.
pub struct ConsoleHandle {
    pub addr: SocketAddr,
    pub origin: String,
    pub task: JoinHandle<()>,
}

/// Binds `settings.listen` and serves the console (and `extra`) over TLS until `shared`'s
/// shutdown.
pub async fn start(settings: &ConsoleSettings, shared: Shared, extra: Router) -> Result<ConsoleHandle> {
    let tls = serve::tls_config(&settings.cert, &settings.key)?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {} for the console", settings.listen))?;
    let addr = listener.local_addr()?;
    let origin = settings.public_url.clone().unwrap_or_else(|| format!("https://{addr}"));
    let passkeys = passkeys::for_origin(&origin, shared.store.clone());
    let state = ConsoleState {
        shared: shared.clone(),
        settings: Arc::new(settings.clone()),
        origin: Arc::from(origin.as_str()),
        passkeys,
        oidc: settings.oidc.clone().map(|o| Arc::new(oidc::Oidc::new(o))),
    };
    let app = router_with(state, extra);
    let task = tokio::spawn(serve::serve(listener, tls, app, shared.shutdown.clone()));
    Ok(ConsoleHandle { addr, origin, task })
}
