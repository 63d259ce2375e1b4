//! The live queue's Server-Sent Events. Fed by the server's fan-out as WatchPending is
//! (`service/streams.rs`): subscribe first, then read, and re-read rows on every wake-up, so no
//! change is lost between the page and the stream. Events (JSON data):
//! - `snapshot` {ids, cards}: every pending request the user sees, on (re)connect;
//! - `created` / `reviewed` {id, html}: a card to add or replace;
//! - `decided` {id, state}: a card to remove, on every open console.
//!
//! Cards are rendered here, by the server, escaped like the page's: the script inserts them
//! as they are and never builds markup from a request's fields.
use super::accounts::{still_signed_in, Account};
use super::queue::{card_of, pending, sees};
use super::web::Signed;
use super::ConsoleState;
use crate::fanout::Change;
use crate::lifecycle::{is_final, now_ms};
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use guard_proto::v1::Request;
use serde_json::json;
use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// How often an idle stream checks that its session still stands.
const SESSION_CHECK: Duration = Duration::from_secs(30);

pub async fn stream(State(state): State<ConsoleState>, Signed(account): Signed) -> Response {
    let mut rx = state.shared.fanout.subscribe();
    let mut shutdown = state.shared.shutdown.clone();
    let events = async_stream::stream! {
        // Pending ids this console shows, with how many reviews each card shows.
        let mut seen: HashMap<String, usize> = HashMap::new();
        match snapshot(&state, &account, &mut seen).await {
            Ok(event) => yield Ok::<Event, Infallible>(event),
            Err(e) => { tracing::warn!("console events: {e}"); return; }
        }
        let mut check = tokio::time::interval(SESSION_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let change = tokio::select! {
                change = rx.recv() => Some(change),
                _ = check.tick() => None,
                _ = stopped(&mut shutdown) => return,
            };
            // Signed out, expired or disabled since the stream began: it ends, and sends
            // nothing more (the browser's reconnect then meets the sign-in page).
            if !still_signed_in(state.shared.store.as_ref(), &state.settings, &account, now_ms()).await {
                return;
            }
            let Some(change) = change else { continue };
            let changed: Vec<Request> = match change {
                Ok(Change::Request(id)) => match state.shared.store.get(&id, now_ms()).await {
                    Ok(found) => found.into_iter().collect(),
                    Err(e) => { tracing::warn!("console events: {e}"); continue; }
                },
                Ok(Change::Resync) | Err(RecvError::Lagged(_)) => {
                    // Changes were missed: send the whole queue again.
                    match snapshot(&state, &account, &mut seen).await {
                        Ok(event) => { yield Ok(event); continue; }
                        Err(e) => { tracing::warn!("console events: {e}"); return; }
                    }
                }
                Err(RecvError::Closed) => return,
            };
            for r in changed.into_iter().filter(|r| sees(&state, &account, &r.host)) {
                if is_final(r.state) {
                    if seen.remove(&r.id).is_some() {
                        let data = json!({"id": r.id, "state": super::render::state_of(&r).label()});
                        yield Ok(Event::default().event("decided").data(data.to_string()));
                    }
                    continue;
                }
                let kind = match seen.insert(r.id.clone(), r.reviews.len()) {
                    None => "created",
                    Some(before) if before != r.reviews.len() => "reviewed",
                    Some(_) => continue,
                };
                match card_of(&state, &account, &r).await {
                    Ok(card) => {
                        let data = json!({"id": r.id, "html": card.into_string()});
                        yield Ok(Event::default().event(kind).data(data.to_string()));
                    }
                    Err(e) => tracing::warn!("console events: {e}"),
                }
            }
        }
    };
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}

async fn snapshot(
    state: &ConsoleState,
    account: &Account,
    seen: &mut HashMap<String, usize>,
) -> crate::error::GuardResult<Event> {
    let requests = pending(state, account).await?;
    seen.clear();
    let mut cards = Vec::with_capacity(requests.len());
    for r in &requests {
        seen.insert(r.id.clone(), r.reviews.len());
        cards.push(json!({"id": r.id, "html": card_of(state, account, r).await?.into_string()}));
    }
    let ids: Vec<&str> = requests.iter().map(|r| r.id.as_str()).collect();
    Ok(Event::default().event("snapshot").data(json!({"ids": ids, "cards": cards}).to_string()))
}

async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
