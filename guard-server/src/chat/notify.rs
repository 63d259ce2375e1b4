//! One notifier task per channel: follows the server's fan-out of request changes (as the
//! gRPC WatchPending stream does), posts a card for each new pending request, and sends the
//! decision to every copy once the request ends, whoever decided it. Each post runs in its own
//! task with bounded retries: a chat service that is down delays only its own cards, and a
//! decision never waits for any of them.
//!
//! Replicas sharing a database each run a notifier; the store's claims (`chat_claim`,
//! `chat_claim_decided`) make one of them post each card and one send each decision.
use super::{new_token, token_sha256, Chat};
use crate::fanout::Change;
use crate::lifecycle::{is_final, now_ms};
use crate::store::ListFilter;
use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use guard_proto::v1::{Request, State};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinSet;

/// How a failed post is retried: exponential backoff from `first` to `max`, `times` retries,
/// then given up (logged; the card is missing from that channel, the request is not affected).
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub first: Duration,
    pub max: Duration,
    pub times: usize,
}

impl Default for Retry {
    fn default() -> Self {
        Retry { first: Duration::from_millis(500), max: Duration::from_secs(30), times: 8 }
    }
}

impl Retry {
    fn delays(&self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::default()
            .with_min_delay(self.first)
            .with_max_delay(self.max)
            .with_jitter()
            .with_max_times(self.times)
            .build()
    }
}

/// One chat service's way of posting cards.
#[async_trait]
pub(crate) trait Poster: Send + Sync + 'static {
    fn channel(&self) -> &'static str;
    /// Where copies of each card go (Slack: each channel; others: one place, "").
    fn targets(&self, chat: &Chat) -> Vec<String>;
    /// Posts the card to `target`; the copy's reference, to update it later.
    async fn post(&self, chat: &Chat, request: &Request, token: &str, target: &str) -> anyhow::Result<String>;
    /// Sends the decision for the copy `message_ref` (Slack: updates it in place; Teams: posts
    /// the decided card, as an incoming webhook cannot edit; webhook: a `decided` event).
    async fn decided(&self, chat: &Chat, request: &Request, message_ref: &str) -> anyhow::Result<()>;
}

pub(crate) async fn run(chat: Arc<Chat>, poster: Arc<dyn Poster>, retry: Retry) {
    let mut rx = chat.shared.fanout.subscribe();
    let mut shutdown = chat.shared.shutdown.clone();
    let mut jobs = JoinSet::new();
    catch_up(&chat, &poster, retry, &mut jobs).await;
    loop {
        // The select's futures live until its arm's end: nothing is awaited inside the arms.
        enum Wake {
            Change(Result<Change, RecvError>),
            Job,
            Stop,
        }
        let wake = tokio::select! {
            change = rx.recv() => Wake::Change(change),
            Some(_) = jobs.join_next() => Wake::Job,
            _ = shutdown.wait_for(|stop| *stop) => Wake::Stop,
        };
        match wake {
            Wake::Change(Ok(Change::Request(id))) => {
                jobs.spawn(handle(chat.clone(), poster.clone(), retry, id.to_string()));
            }
            Wake::Change(Ok(Change::Resync) | Err(RecvError::Lagged(_))) => {
                catch_up(&chat, &poster, retry, &mut jobs).await
            }
            Wake::Change(Err(RecvError::Closed)) | Wake::Stop => return,
            Wake::Job => {}
        }
    }
}

/// After a start or missed changes: every pending request, and every posted card whose
/// decision was not sent.
async fn catch_up(chat: &Arc<Chat>, poster: &Arc<dyn Poster>, retry: Retry, jobs: &mut JoinSet<()>) {
    let filter = ListFilter { states: vec![State::Pending], host: None, limit: 0 };
    let mut ids: Vec<String> = match chat.shared.store.list(&filter).await {
        Ok(pending) => pending.into_iter().map(|r| r.id).collect(),
        Err(e) => {
            tracing::warn!("chat {}: listing pending requests: {e}", poster.channel());
            Vec::new()
        }
    };
    match chat.shared.store.chat_undecided(poster.channel()).await {
        Ok(undecided) => ids.extend(undecided),
        Err(e) => tracing::warn!("chat {}: listing cards to update: {e}", poster.channel()),
    }
    for id in ids {
        jobs.spawn(handle(chat.clone(), poster.clone(), retry, id));
    }
}

async fn handle(chat: Arc<Chat>, poster: Arc<dyn Poster>, retry: Retry, id: String) {
    let request = match chat.shared.store.get(&id, now_ms()).await {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!("chat {}: reading request {id}: {e}", poster.channel());
            return;
        }
    };
    if is_final(request.state) {
        send_decision(&chat, &poster, retry, &request).await;
    } else if request.state == State::Pending as i32 {
        post_card(&chat, &poster, retry, request).await;
    }
}

async fn post_card(chat: &Chat, poster: &Arc<dyn Poster>, retry: Retry, request: Request) {
    let channel = poster.channel();
    let store = &chat.shared.store;
    let token = new_token();
    match store.chat_claim(&request.id, channel, &token_sha256(&token), now_ms()).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            tracing::warn!("chat {channel}: claiming the card of {}: {e}", request.id);
            return;
        }
    }
    for target in poster.targets(chat) {
        let what = format!("posting the card of {} to {target:?}", request.id);
        let posted = with_retries(channel, &what, retry, || poster.post(chat, &request, &token, &target)).await;
        if let Some(message_ref) = posted {
            if let Err(e) = store.chat_add_message(&request.id, channel, &message_ref).await {
                tracing::error!("chat {channel}: recording the copy {message_ref} of {}: {e}", request.id);
            }
        }
    }
    if let Err(e) = store.chat_posted(&request.id, channel).await {
        tracing::error!("chat {channel}: marking the card of {} posted: {e}", request.id);
        return;
    }
    // Decided while the card was on its way: the decided event found it unposted.
    match store.get(&request.id, now_ms()).await {
        Ok(Some(now)) if is_final(now.state) => send_decision(chat, poster, retry, &now).await,
        Ok(_) => {}
        Err(e) => tracing::warn!("chat {channel}: reading request {}: {e}", request.id),
    }
}

async fn send_decision(chat: &Chat, poster: &Arc<dyn Poster>, retry: Retry, request: &Request) {
    let channel = poster.channel();
    let store = &chat.shared.store;
    match store.chat_claim_decided(&request.id, channel).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            tracing::warn!("chat {channel}: claiming the decision of {}: {e}", request.id);
            return;
        }
    }
    let refs = match store.chat_messages(&request.id, channel).await {
        Ok(refs) => refs,
        Err(e) => {
            tracing::error!("chat {channel}: reading the copies of {}: {e}", request.id);
            return;
        }
    };
    for message_ref in refs {
        let what = format!("sending the decision of {} to {message_ref:?}", request.id);
        with_retries(channel, &what, retry, || poster.decided(chat, request, &message_ref)).await;
    }
}

/// Runs `op` until it succeeds or the retries are spent (then None, logged).
async fn with_retries<T, F, Fut>(channel: &str, what: &str, retry: Retry, mut op: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut delays = retry.delays();
    loop {
        match op().await {
            Ok(v) => return Some(v),
            Err(e) => match delays.next() {
                Some(delay) => {
                    tracing::warn!("chat {channel}: {what}: {e:#} (again in {delay:?})");
                    tokio::time::sleep(delay).await;
                }
                None => {
                    tracing::error!("chat {channel}: {what}: {e:#}; giving up after {} retries", retry.times);
                    return None;
                }
            },
        }
    }
}
