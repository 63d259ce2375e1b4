//! Holds in flight and where their decisions come from.

use serde::Serialize;
use std::{collections::HashMap, future::Future, pin::Pin, time::Instant};
use tokio::sync::oneshot;

/// How a hold ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    /// approved | denied | expired | unreachable
    pub reason: &'static str,
    pub approver: Option<String>,
    pub comment: Option<String>,
    /// The central server's id for the request, when it decided.
    pub request_id: Option<String>,
}

impl Decision {
    pub fn expired() -> Self {
        Decision { request_id: None, allow: false, reason: "expired", approver: None, comment: None }
    }
}

/// What an approver sees of a held operation.
#[derive(Debug, Clone, Serialize)]
pub struct HoldInfo {
    pub id: String,
    pub hook: &'static str,
    pub object: String,
    pub rule: Option<String>,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub exe: Option<String>,
    pub argv: Vec<String>,
    /// Ancestry inside the watched tree, nearest first: "pid exe".
    pub ancestry: Vec<String>,
    /// The same ancestry with each level's argv, nearest first (the acting process first).
    pub lineage: Vec<Lineage>,
    pub cwd: Option<String>,
    /// The acting process's user, by name when it has one.
    pub user: String,
    /// The watched tree on this host, "<root pid>-<root start time>": grants are scoped to it.
    pub tree_id: String,
    /// Name of the policy in force for the tree.
    pub policy: String,
    /// What the agent inside the tree said about why it acts; shown, never decides.
    pub stated_reason: Option<StatedReason>,
    pub held_secs: u64,
    pub timeout_secs: u64,
}

/// One level of a held process's ancestry.
#[derive(Debug, Clone, Serialize)]
pub struct Lineage {
    pub pid: u32,
    pub ppid: u32,
    pub exe: Option<String>,
    pub argv: Vec<String>,
}

/// A reason an AI agent gave for its next actions (tool, call id, one line, session).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct StatedReason {
    #[serde(default)]
    pub tool: String,
    #[serde(default)]
    pub call_id: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub session: String,
}

/// A source of decisions for holds: local (admin socket) here; the central server later.
pub trait DecisionSource: Send + Sync {
    fn decide(&self, hold: HoldInfo) -> Pin<Box<dyn Future<Output = Decision> + Send>>;
}

/// Decisions typed by a person on this host through `guard-agent approve|deny`.
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
                Ok(d) => d.unwrap_or(Decision {
                    request_id: None,
                    allow: false,
                    reason: "denied",
                    approver: None,
                    comment: Some("agent stopped".into()),
                }),
            }
        })
    }
}

/// A hold the agent knows about, from its HOLD event until the kernel reports it resolved.
pub struct PendingHold {
    pub info: HoldInfo,
    pub seq: u64,
    pub hash: u64,
    pub started: Instant,
    pub decision: Option<Decision>,
}

#[derive(Default)]
pub struct HoldTable {
    next: u64,
    pub by_id: HashMap<String, PendingHold>,
}

impl HoldTable {
    pub fn new_id(&mut self) -> String {
        self.next += 1;
        self.next.to_string()
    }

    pub fn find(&self, tid: u32, seq: u64) -> Option<&String> {
        self.by_id.iter().find(|(_, h)| h.info.tid == tid && h.seq == seq).map(|(id, _)| id)
    }

    /// Holds that still wait for a decision, oldest first.
    pub fn waiting(&self) -> Vec<HoldInfo> {
        let mut v: Vec<&PendingHold> = self.by_id.values().filter(|h| h.decision.is_none()).collect();
        v.sort_by_key(|h| h.started);
        v.into_iter()
            .map(|h| {
                let mut i = h.info.clone();
                i.held_secs = h.started.elapsed().as_secs();
                i
            })
            .collect()
    }
}
