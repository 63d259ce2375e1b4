//! The three gRPC services. Each call starts by taking the caller's identity from its
//! certificate (`identity::require`), then does one thing with the store.
pub mod agent;
pub mod audit;
pub mod review;
mod streams;

use crate::config::Policy;
use crate::fanout::Fanout;
use crate::store::Store;
use std::sync::Arc;
use tokio::sync::watch;

/// What every service shares.
#[derive(Clone)]
pub struct Shared {
    pub store: Arc<dyn Store>,
    pub policy: Arc<Policy>,
    pub fanout: Fanout,
    /// Becomes true when the server drains: long streams end so connections can close.
    pub shutdown: watch::Receiver<bool>,
}
