//! Decisions typed by a person on this host through `guard-agent approve|deny` (the admin
//! socket).

use super::{Decision, DecisionSource, HoldInfo};
use guard_api::Reason;
use std::{collections::HashMap, future::Future, pin::Pin};
use tokio::sync::oneshot;

#[derive(Default)]
pub struct LocalDecisions {
    waiting: std::sync::Mutex<HashMap<String, oneshot::Sender<Decision>>>,
}

impl LocalDecisions {
    /// Delivers a decision; false when no hold with this id waits.
    pub fn answer(&self, id: &str, d: Decision) -> bool {
        let tx = self.waiting.lock().expect("lock").remove(id);
        tx.map(|tx| tx.send(d).is_ok()).unwrap_or(false)
    }

    /// A person's decision on this host: approved or denied, by `local:uid=N`.
    pub fn by_person(allow: bool, uid: u32, comment: Option<String>) -> Decision {
        Decision {
            request_id: None,
            allow,
            reason: if allow { Reason::Approved } else { Reason::Denied },
            approver: Some(format!("local:uid={uid}")),
            comment,
        }
    }
}

impl DecisionSource for LocalDecisions {
    fn decide(&self, hold: HoldInfo) -> Pin<Box<dyn Future<Output = Decision> + Send>> {
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().expect("lock").insert(hold.id.clone(), tx);
        let limit = std::time::Duration::from_secs(hold.timeout_secs);
        // A dropped sender (agent shutting down) is a deny.
        Box::pin(async move {
            match tokio::time::timeout(limit, rx).await {
                Err(_) => Decision::expired(),
                Ok(d) => d.unwrap_or_else(|_| Decision::deny(Reason::Denied, Some("agent stopped".into()))),
            }
        })
    }
}
