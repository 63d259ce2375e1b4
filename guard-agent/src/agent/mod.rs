//! The agent's state and what it does with each kernel event: [`handle`] decides (a pure
//! function of the state and the event), [`effects`] carries its answer out (writes records,
//! asks decision sources, writes verdicts, resumes held threads).

pub mod effects;
pub mod handle;

use crate::{
    audit::AuditLog,
    hold::HoldTable,
    kernel::KernelMaps,
    policy::Policy,
    tree::{
        proc::{self, Proc},
        selector::SelectorConf,
    },
};
use guard_api::{StatedReason, Timestamp};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

/// What the agent knows of a watched process, from its exec or from /proc.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcInfo {
    pub exe: Option<String>,
    pub argv: Vec<String>,
    pub ppid: u32,
    /// argv came from /proc/PID/cmdline (which the process can rewrite), not the kernel's
    /// copy at exec; approvers are told.
    pub argv_from_proc: bool,
}

/// Who owns a watched tree, for the approval server's separation of duties.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Owner {
    pub uid: u32,
    /// The user's name, or the uid as text when it has none.
    pub name: String,
    /// loginuid: the audit login uid of the tree's root (set at login, kept across sudo and
    /// setuid); starter: none was set, the uid that started the tree.
    pub source: &'static str,
}

/// What the agent asks of the host outside the kernel maps: /proc and the user database.
/// The handler sees it through this trait, so tests give it a fake host.
pub trait System: Send + Sync {
    /// What /proc says about `pid`, while it lives.
    fn proc(&self, pid: u32) -> Option<Proc>;
    fn cwd(&self, pid: u32) -> Option<String>;
    /// A user's name, or the uid as text when it has none.
    fn user_name(&self, uid: u32) -> String;
    /// "<pid>-<start time in clock ticks>": unique on this host even when pids are reused.
    fn tree_id(&self, root: u32) -> String;
    /// The owner of the tree rooted at `root`, read while it lives: its login uid, else its
    /// real uid. None when the process is gone.
    fn owner(&self, root: u32) -> Option<Owner>;
}

/// This host.
pub struct Host;

impl System for Host {
    fn proc(&self, pid: u32) -> Option<Proc> {
        proc::read_proc(pid)
    }

    fn cwd(&self, pid: u32) -> Option<String> {
        proc::cwd(pid)
    }

    fn user_name(&self, uid: u32) -> String {
        nix::unistd::User::from_uid(uid.into()).ok().flatten().map(|u| u.name).unwrap_or_else(|| uid.to_string())
    }

    fn tree_id(&self, root: u32) -> String {
        format!("{root}-{}", proc::start_time(root).unwrap_or(0))
    }

    fn owner(&self, root: u32) -> Option<Owner> {
        let (uid, source) = match proc::loginuid(root) {
            Some(uid) => (uid, "loginuid"),
            None => (proc::read_proc(root)?.uid, "starter"),
        };
        Some(Owner { uid, name: self.user_name(uid), source })
    }
}

pub struct State {
    pub kernel: Box<dyn KernelMaps>,
    pub policy: Policy,
    pub holds: HoldTable,
    /// Watched processes by pid; an entry goes when its process exits.
    pub procs: HashMap<u32, ProcInfo>,
    pub host: String,
    /// Shown on requests: the policy file's name.
    pub policy_name: String,
    pub lost_reported: u64,
    /// The kernel's count of `ring_full` denials already recorded.
    pub ring_full_reported: u64,
    /// What the daemon adds: several policies, trees started by selectors, stated reasons.
    pub trees: TreeState,
    /// Each tree's owner by root pid, taken when the tree started (a tree whose start the
    /// agent did not see is asked of /proc at its first hold).
    pub owners: HashMap<u32, Owner>,
}

/// The daemon's view of its trees. Under `run` it stays empty and `State::policy` applies.
#[derive(Default)]
pub struct TreeState {
    /// Policies by kernel id: (name, policy).
    pub policies: HashMap<u8, (String, Policy)>,
    /// Selectors by rank, i.e. in winning order (the kernel reports rank + 1 on the exec
    /// that starts a tree).
    pub selectors: Vec<SelectorConf>,
    /// Watched trees by root pid.
    pub trees: HashMap<u32, TreeInfo>,
    /// The latest reason each tree stated, by root pid.
    pub reasons: HashMap<u32, StatedReason>,
}

/// One watched tree, as `status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TreeInfo {
    pub root: u32,
    pub tree_id: String,
    /// How it came to be watched: the selector's description, "registered", "adopted".
    pub selector: String,
    pub policy_id: u8,
    /// Other selectors the root matched too, which lost (see config.rs for the rule).
    pub also_matched: Vec<String>,
    pub exe: Option<String>,
    pub since: Timestamp,
}

impl State {
    /// A state with no trees, holds or processes yet.
    pub fn new(kernel: Box<dyn KernelMaps>, policy: Policy, policy_name: String, host: String) -> Self {
        State {
            kernel,
            policy,
            holds: HoldTable::default(),
            procs: HashMap::new(),
            host,
            policy_name,
            lost_reported: 0,
            ring_full_reported: 0,
            trees: TreeState::default(),
            owners: HashMap::new(),
        }
    }

    /// The policy with kernel id `id`: the daemon's, or under `run` the only one.
    pub fn policy_of(&self, id: u8) -> (&Policy, &str) {
        match self.trees.policies.get(&id) {
            Some((name, p)) => (p, name.as_str()),
            None => (&self.policy, self.policy_name.as_str()),
        }
    }

    /// The root of the tree a task belongs to, from the kernel's map while it lives.
    pub fn tree_root(&self, tid: u32) -> Option<u32> {
        self.kernel.tree_root(tid)
    }
}

/// The agent: its state, and the audit log beside it (records are written without the state
/// locked). Lock order: `state` before `audit`, never the reverse.
pub struct Agent {
    state: Mutex<State>,
    audit: Mutex<AuditLog>,
    pub system: Box<dyn System>,
}

pub type Shared = Arc<Agent>;

impl Agent {
    pub fn new(state: State, audit: AuditLog, system: Box<dyn System>) -> Shared {
        Arc::new(Agent { state: Mutex::new(state), audit: Mutex::new(audit), system })
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("state lock")
    }

    pub fn audit(&self) -> MutexGuard<'_, AuditLog> {
        self.audit.lock().expect("audit lock")
    }
}
