//! The three gRPC services. Each call starts by taking the caller's identity from its
//! certificate (`identity::require`), then does one thing with the store.
pub mod agent;
pub mod audit;
pub mod review;
mod streams;

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

/// PERMISSION_DENIED unless `approver` is assigned to `host` (host groups).
fn check_sees(shared: &Shared, approver: &str, host: &str) -> Result<(), Status> {
    if shared.policy.sees_host(approver, host) {
        Ok(())
    } else {
        Err(GuardError::PermissionDenied(format!(
            "{approver} is not assigned to host {host} (host groups in the server config)"
        ))
        .into())
    }
}

/// NOT_FOUND for request `id`; `scope` says where it was looked for ("" or " from this host").
fn not_found(id: &str, scope: &str) -> Status {
    GuardError::NotFound(format!("no request {id:?}{scope}")).into()
}
