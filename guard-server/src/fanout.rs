//! In-process fan-out of request changes to the streams (Submit, Await, WatchPending).
//! Only ids travel: a stream re-reads the row, so a message can never carry a stale state,
//! and a change announced twice (locally and back through PostgreSQL NOTIFY) is harmless.
use std::sync::Arc;
use tokio::sync::broadcast;

/// Enough for bursts; a receiver that falls further behind gets `Lagged` and re-reads all.
const CAPACITY: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// This request changed (created, reviewed, decided).
    Request(Arc<str>),
    /// Changes may have been missed (the database listener reconnected): re-read everything.
    Resync,
}

#[derive(Clone)]
pub struct Fanout {
    tx: broadcast::Sender<Change>,
}

impl Default for Fanout {
    fn default() -> Self {
        Fanout { tx: broadcast::channel(CAPACITY).0 }
    }
}

impl Fanout {
    pub fn publish(&self, change: Change) {
        // No receiver is fine: nobody is streaming right now.
        let _ = self.tx.send(change);
    }

    pub fn publish_id(&self, id: &str) {
        self.publish(Change::Request(Arc::from(id)));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.tx.subscribe()
    }
}
