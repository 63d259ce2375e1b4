//! The three gRPC services. Each call starts by taking the caller's identity from its
//! certificate (`identity::require`), then does one thing with the store.
pub mod agent;
pub mod approvals;
pub mod audit;
pub mod review;
mod streams;

use crate::audit::{refused, Attempt};
use crate::config::Policy;
use crate::error::GuardError;
use crate::fanout::Fanout;
use crate::ratelimit::Limiter;
use crate::store::Store;
use std::sync::Arc;
use tokio::sync::watch;
use tonic::{Response, Status};

/// What every service shares.
#[derive(Clone)]
pub struct Shared {
    pub store: Arc<dyn Store>,
    pub policy: Arc<Policy>,
    /// Submissions per host and per tree.
    pub limiter: Arc<Limiter>,
    pub fanout: Fanout,
    /// Becomes true when the server drains: long streams end so connections can close.
    pub shutdown: watch::Receiver<bool>,
}

/// What every RPC answers.
type Reply<T> = Result<Response<T>, Status>;

/// NOT_FOUND for request `id`; `scope` says where it was looked for ("" or " from this host").
fn not_found(id: &str, scope: &str) -> Status {
    GuardError::NotFound(format!("no request {id:?}{scope}")).into()
}

/// Records `err`, the refusal of `who`'s `attempt` on request `id`, in the audit trail (a
/// refused attempt changes nothing, but that someone tried is part of the trail), then gives
/// it back for the caller. Only refusals are recorded (a bad argument, a failed precondition,
/// a permission denied, and a host withdrawing another host's request); a request that exists
/// nowhere or a storage failure is not an attempt on anything (and recording every unknown id
/// would let a caller fill the trail with noise). A refusal the store cannot record is logged:
/// the caller still gets the refusal it earned.
async fn refuse(shared: &Shared, attempt: Attempt, id: &str, host: &str, who: &str, err: GuardError) -> GuardError {
    let only_if_exists = match &err {
        GuardError::InvalidArgument(_) | GuardError::FailedPrecondition { .. } | GuardError::PermissionDenied(_) => {
            Some(false)
        }
        GuardError::NotFound(_) if attempt == Attempt::Withdraw => Some(true),
        _ => None,
    };
    if let Some(only_if_exists) = only_if_exists {
        record_refusal(shared, attempt, id, host, who, &err.to_string(), only_if_exists).await;
    }
    err
}

/// Appends the record of a refused attempt (see `refuse`); `host` is where it goes when the
/// request is not one the caller may name (a withdraw of another host's id), and then the
/// record names the id only, nothing of the other host's request. `only_if_exists`: nothing
/// is recorded when no request has this id.
async fn record_refusal(
    shared: &Shared,
    attempt: Attempt,
    id: &str,
    host: &str,
    who: &str,
    message: &str,
    only_if_exists: bool,
) {
    let now = crate::lifecycle::now_ms();
    let found = match shared.store.get(id, now).await {
        Ok(found) => found,
        Err(e) => {
            tracing::error!("cannot read request {id} to record a refused {attempt:?}: {e}");
            None
        }
    };
    if only_if_exists && found.is_none() {
        return;
    }
    let request = found.filter(|r| attempt != Attempt::Withdraw || r.host == host);
    let record = refused(attempt, now, id, request.as_ref(), host, who, message);
    if let Err(e) = shared.store.append_server(vec![record]).await {
        tracing::error!("cannot record the refused {attempt:?} of request {id} by {who}: {e}");
    }
}
