//! The long streams: one request followed to its end (Submit, Await), and the pending
//! queue (WatchPending). Both subscribe to the fan-out *before* reading the database, and
//! re-read rows on every wake-up, so no change is lost between the read and the wait and
//! a change seen twice is sent once.
use super::Shared;
use crate::fanout::Change;
use crate::lifecycle::{is_final, now_ms};
use crate::store::ListFilter;
use guard_proto::v1::{Request, RequestEvent, State};
use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::broadcast::{error::RecvError, Receiver};
use tokio_stream::Stream;
use tonic::Status;

/// Why a stream woke up. (`?` cannot be used inside `select!` arms within `try_stream!`.)
enum Wake {
    Change(Result<Change, RecvError>),
    Timer,
    Stop,
}

pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Sends `first` (read after `rx` subscribed), then the request's final state, then ends.
pub fn follow(shared: Shared, mut rx: Receiver<Change>, first: Request) -> BoxStream<Request> {
    let mut shutdown = shared.shutdown.clone();
    Box::pin(async_stream::try_stream! {
        let id = first.id.clone();
        let mut last = first.state;
        let mut expires_ms = first.expires_ms;
        yield first;
        while !is_final(last) {
            // Wake at expiry too: the sweeper would get there, this is just sooner.
            let wait_ms = expires_ms.saturating_sub(now_ms()).clamp(0, 3_600_000) as u64 + 20;
            let wake = tokio::select! {
                change = rx.recv() => Wake::Change(change),
                _ = tokio::time::sleep(Duration::from_millis(wait_ms)) => Wake::Timer,
                _ = shutdown.wait_for(|stop| *stop) => Wake::Stop,
            };
            let wake = match wake {
                Wake::Change(Ok(Change::Request(changed))) => *changed == *id,
                Wake::Change(Ok(Change::Resync) | Err(RecvError::Lagged(_))) | Wake::Timer => true,
                Wake::Change(Err(RecvError::Closed)) | Wake::Stop => {
                    Err(Status::unavailable("server shutting down: call Await on another replica"))?
                }
            };
            if !wake {
                continue;
            }
            let now = now_ms();
            let request = shared.store.get(&id, now).await.map_err(Status::from)?
                .ok_or_else(|| Status::not_found(format!("request {id} vanished")))?;
            if request.state == State::Pending as i32 && request.expires_ms <= now {
                // Not yet expired under the lock; retry soon rather than spin.
                expires_ms = now + 200;
            } else {
                expires_ms = request.expires_ms;
            }
            if request.state != last {
                last = request.state;
                yield request;
            }
        }
    })
}

/// WatchPending: every pending request ("snapshot"), then "created", "reviewed" and
/// "decided" events. Decisions are only sent for requests the watcher saw pending, so
/// requests decided at creation (grants, auto rules) do not flood approvers.
///
/// The snapshot is read before the call is answered: a request submitted after the caller
/// has its stream comes as "created", never folded into the snapshot.
pub async fn watch_pending(shared: Shared, approver: String) -> Result<BoxStream<RequestEvent>, Status> {
    let mut rx = shared.fanout.subscribe();
    let mut shutdown = shared.shutdown.clone();
    let snapshot = pending(&shared, &approver).await?;
    Ok(Box::pin(async_stream::try_stream! {
        // Pending ids this watcher has sent, with how many reviews it showed.
        let mut seen: HashMap<String, usize> = HashMap::new();
        for request in snapshot {
            seen.insert(request.id.clone(), request.reviews.len());
            yield event("snapshot", request);
        }
        loop {
            let wake = tokio::select! {
                change = rx.recv() => Wake::Change(change),
                _ = shutdown.wait_for(|stop| *stop) => Wake::Stop,
            };
            let changed: Vec<Request> = match wake {
                Wake::Change(Ok(Change::Request(id))) => {
                    shared.store.get(&id, now_ms()).await.map_err(Status::from)?.into_iter().collect()
                }
                Wake::Change(Ok(Change::Resync) | Err(RecvError::Lagged(_))) | Wake::Timer => {
                    // Re-read everything: what is pending now, and what we showed that no longer is.
                    let now_pending = pending(&shared, &approver).await?;
                    let mut all = Vec::new();
                    for id in seen.keys() {
                        if !now_pending.iter().any(|r| &r.id == id) {
                            all.extend(shared.store.get(id, now_ms()).await.map_err(Status::from)?);
                        }
                    }
                    all.extend(now_pending);
                    all
                }
                Wake::Change(Err(RecvError::Closed)) | Wake::Stop => Err(Status::unavailable("server shutting down"))?,
            };
            // Only the hosts this approver is assigned to.
            for request in changed.into_iter().filter(|r| shared.policy.sees_host(&approver, &r.host)) {
                let reviews = request.reviews.len();
                let kind = if is_final(request.state) {
                    if seen.remove(&request.id).is_none() { continue; }
                    "decided"
                } else {
                    match seen.insert(request.id.clone(), reviews) {
                        None => "created",
                        Some(before) if before != reviews => "reviewed",
                        Some(_) => continue,
                    }
                };
                yield event(kind, request);
            }
        }
    }))
}

async fn pending(shared: &Shared, approver: &str) -> Result<Vec<Request>, Status> {
    let filter = ListFilter { states: vec![State::Pending], host: None, limit: 0 };
    let mut requests = shared.store.list(&filter).await.map_err(Status::from)?;
    requests.retain(|r| shared.policy.sees_host(approver, &r.host));
    // Oldest first: the order they arrived in.
    requests.reverse();
    Ok(requests)
}

fn event(kind: &str, request: Request) -> RequestEvent {
    RequestEvent { kind: kind.into(), request: Some(request) }
}
