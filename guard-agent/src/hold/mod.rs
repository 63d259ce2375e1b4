//! Holds: an `ask` rule stopped a thread in the kernel, and a person decides. The hold table
//! ([`HoldTable`]) knows every hold from its HOLD event until the kernel reports it resolved;
//! a [`DecisionSource`] answers it: [`local`] (the admin socket) or [`remote`] (guard-server).

pub mod local;
pub mod remote;

use guard_api::{Hook, Reason, StatedReason};
use serde::Serialize;
use std::{collections::HashMap, future::Future, pin::Pin, time::Instant};

/// How a hold ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    /// approved, denied, expired, cancelled, refused or unreachable.
    pub reason: Reason,
    pub approver: Option<String>,
    pub comment: Option<String>,
    /// The central server's id for the request, when it decided.
    pub request_id: Option<String>,
}

impl Decision {
    /// A deny for `reason`, with nobody named as its author.
    pub fn deny(reason: Reason, comment: Option<String>) -> Self {
        Decision { request_id: None, allow: false, reason, approver: None, comment }
    }

    pub fn expired() -> Self {
        Self::deny(Reason::Expired, None)
    }
}

/// What an approver sees of a held operation.
#[derive(Debug, Clone, Serialize)]
pub struct HoldInfo {
    pub id: String,
    pub hook: Option<Hook>,
    pub object: String,
    /// For file hooks: read, write, delete or create, when the event says.
    pub access: Option<String>,
    pub rule: Option<String>,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub exe: Option<String>,
    pub argv: Vec<String>,
    /// `argv` was read from /proc/PID/cmdline, which the process can rewrite.
    pub argv_from_proc: bool,
    /// The kernel cut the acting process's argv to fit (it does not say so today: false).
    pub argv_truncated: bool,
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
    /// "sha256:<hex>" of that policy's text.
    pub policy_hash: String,
    /// Who owns the tree (separation of duties); None when it could not be told.
    pub owner: Option<crate::agent::Owner>,
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
    /// argv from /proc/PID/cmdline, which the process can rewrite.
    pub argv_from_proc: bool,
}

/// A source of decisions for holds: a person on this host, or guard-server.
pub trait DecisionSource: Send + Sync {
    fn decide(&self, hold: HoldInfo) -> Pin<Box<dyn Future<Output = Decision> + Send>>;
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

    /// Whether hold `id` is known and still waits: None when unknown.
    pub fn is_waiting(&self, id: &str) -> Option<bool> {
        self.by_id.get(id).map(|h| h.decision.is_none())
    }

    /// Ids of the holds still waiting.
    pub fn waiting_ids(&self) -> Vec<String> {
        self.by_id.iter().filter(|(_, h)| h.decision.is_none()).map(|(id, _)| id.clone()).collect()
    }
}
