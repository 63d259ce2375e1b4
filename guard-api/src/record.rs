//! The audit record: one decision, request, review or event, the same type everywhere.
//!
//! Every field is always written, `null` where it does not apply, so each consumer (the agent's
//! JSONL file, guard-server's audit rows, a SIEM) sees one schema. Unknown fields are refused
//! when a record is read, so a record that does not match this type is an error, not silently
//! a different shape.

use crate::chain::{ChainLink, SignedHead};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::fmt;

/// What a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// An agent's decision on a watched tree's operation, or the end of one of its holds.
    Enforcement,
    /// Something the agent itself noticed about enforcement (lost kernel events).
    Agent,
    /// guard-server: a request for approval was created.
    Request,
    /// guard-server: an approver reviewed a request.
    Review,
    /// guard-server: a request reached its final state.
    Decision,
    /// guard-server: a grant ("approve for N minutes") was created, revoked or ended.
    Grant,
    /// A policy was loaded or reloaded (`policy`: its name, `object`: its "sha256:<hex>").
    Policy,
    /// A signed checkpoint of a hash chain (`checkpoint`: the head it signs).
    Checkpoint,
}

/// What happened to the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Deny,
}

/// The action of the rule (or of the policy's default) that matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Allow,
    Deny,
    Audit,
    Ask,
}

/// Why a decision came out the way it did. The complete vocabulary: the README lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// A rule matched and its action decided (allow, deny, audit).
    Rule,
    /// No rule matched; the policy's default decided.
    Default,
    /// A person approved the hold.
    Approved,
    /// A person denied the hold.
    Denied,
    /// Nobody decided before the deadline (the agent's ask timeout, or the kernel's own
    /// deadline when the agent was gone).
    Expired,
    /// An ask from a context that cannot be held (an io_uring worker): denied at once.
    Unholdable,
    /// The held process exited before a decision arrived.
    Exited,
    /// The kernel's ring buffer was full, so events were lost; holds among them were denied.
    EventsLost,
    /// guard-server could not be reached before the deadline.
    Unreachable,
    /// guard-server refused the request (a misconfigured certificate, a bad message).
    Refused,
    /// An approver or the agent withdrew the request.
    Cancelled,
    /// An earlier approval "for N minutes" covered the operation.
    Grant,
    /// A server `[[auto]]` rule decided at once.
    Auto,
    /// An operation that changes what paths mean (a user namespace, chroot, pivot_root, a
    /// mount or unmount) or runs a program with no name (a memfd, a deleted file), and no rule
    /// allows it: denied for a watched tree whatever the policy's default.
    SafeDefault,
    /// The program being executed, or mapped executable, could not be resolved to its global
    /// path.
    ExecUnresolved,
    /// The kernel could not resolve the object to its global path (longer than its buffer,
    /// deeper than its walk, on a detached mount, or a failed `bpf_d_path`): denied whatever
    /// the rules say.
    Unresolvable,
    /// A fork refused because the tree is at its task limit, or a new task the kernel could
    /// not track (its creator is killed).
    TreeLimit,
    /// The policy refuses io_uring (`io_uring = "deny"`).
    IoUring,
    /// The unix socket a connect or send reaches could not be resolved to its path: denied.
    UnresolvedPeer,
    /// A ptrace access of a process in another watched tree, which no rule allowed: denied
    /// (a tree may trace only inside itself).
    OtherTree,
    /// The kernel's ring buffer was full, so an `audit` or `ask` operation that could not be
    /// recorded or reported was denied (counted in the kernel, recorded by the agent).
    RingFull,
    /// An ask found the kernel's hold table full: denied.
    HoldTableFull,
    /// The exec's arguments could not be read: from the caller's memory (denied), or from the
    /// new image after the exec (the process is killed before it runs).
    ArgvUnreadable,
    /// The arguments the kernel copied for an exec differ from those guard captured from the
    /// caller's memory, decided on and showed (another thread changed them during the exec):
    /// the process is killed before the program runs, and the record shows the arguments the
    /// kernel copied.
    ArgvChanged,
    /// An operation against guard itself (signals or ptrace of its processes, its BPF objects,
    /// pins and files, its admin socket, loading kernel code): refused by the tamper baseline,
    /// which no policy rule can allow.
    Tamper,
    /// An ask while no agent was alive to answer (its heartbeat was stale): denied at once by
    /// the kernel instead of stopping a thread nobody would resume.
    AgentGone,
}

impl Reason {
    /// Every reason, in the order the README lists them.
    pub const ALL: [Reason; 26] = [
        Reason::Rule,
        Reason::Default,
        Reason::Approved,
        Reason::Denied,
        Reason::Expired,
        Reason::Unholdable,
        Reason::Exited,
        Reason::EventsLost,
        Reason::Unreachable,
        Reason::Refused,
        Reason::Cancelled,
        Reason::Grant,
        Reason::Auto,
        Reason::SafeDefault,
        Reason::ExecUnresolved,
        Reason::Unresolvable,
        Reason::TreeLimit,
        Reason::IoUring,
        Reason::UnresolvedPeer,
        Reason::OtherTree,
        Reason::RingFull,
        Reason::HoldTableFull,
        Reason::ArgvUnreadable,
        Reason::ArgvChanged,
        Reason::Tamper,
        Reason::AgentGone,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Reason::Rule => "rule",
            Reason::Default => "default",
            Reason::Approved => "approved",
            Reason::Denied => "denied",
            Reason::Expired => "expired",
            Reason::Unholdable => "unholdable",
            Reason::Exited => "exited",
            Reason::EventsLost => "events_lost",
            Reason::Unreachable => "unreachable",
            Reason::Refused => "refused",
            Reason::Cancelled => "cancelled",
            Reason::Grant => "grant",
            Reason::Auto => "auto",
            Reason::SafeDefault => "safe_default",
            Reason::ExecUnresolved => "exec_unresolved",
            Reason::Unresolvable => "unresolvable",
            Reason::TreeLimit => "tree_limit",
            Reason::IoUring => "io_uring",
            Reason::UnresolvedPeer => "unresolved_peer",
            Reason::OtherTree => "other_tree",
            Reason::RingFull => "ring_full",
            Reason::HoldTableFull => "hold_table_full",
            Reason::ArgvUnreadable => "argv_unreadable",
            Reason::ArgvChanged => "argv_changed",
            Reason::Tamper => "tamper",
            Reason::AgentGone => "agent_gone",
        }
    }

    /// The reason named `name`, as written in records.
    pub fn from_name(name: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.name() == name)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The kernel hook that decided, by its LSM (or tracepoint) name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    BprmCheckSecurity,
    FileOpen,
    PathMknod,
    PathMkdir,
    PathUnlink,
    PathRmdir,
    PathRename,
    PathTruncate,
    SocketConnect,
    Capable,
    SbMount,
    MoveMount,
    KernelReadFile,
    KernelLoadData,
    PtraceAccessCheck,
    Bpf,
    TaskAlloc,
    UsernsCreate,
    PathChroot,
    SbPivotroot,
    SbUmount,
    MmapFile,
    PathLink,
    PathSymlink,
    PathChmod,
    PathChown,
    /// The tracepoint where every new task (io_uring's threads too) joins its creator's tree.
    TaskNewtask,
    UringSqpoll,
    UringOverrideCreds,
    UnixStreamConnect,
    UnixMaySend,
    SocketSendmsg,
    KernelModuleRequest,
    /// A signal to one of guard's processes (the tamper baseline).
    TaskKill,
    /// A file descriptor for one of guard's BPF maps (the tamper baseline).
    BpfMap,
    /// A file descriptor received over a unix socket or by pidfd_getfd (decided by the file rules).
    FileReceive,
    /// An extended attribute set on a file (a POSIX ACL too on 6.1): a write of it.
    InodeSetxattr,
    /// An extended attribute removed from a file: a write of it.
    InodeRemovexattr,
    /// A POSIX ACL set on a file (6.2 on): a write of it.
    InodeSetAcl,
    /// A POSIX ACL removed from a file (6.2 on): a write of it.
    InodeRemoveAcl,
    /// Not a hook: the agent's reading of the kernel's ring buffer (lost events).
    RingBuffer,
}

impl Hook {
    pub const ALL: [Hook; 41] = [
        Hook::BprmCheckSecurity,
        Hook::FileOpen,
        Hook::PathMknod,
        Hook::PathMkdir,
        Hook::PathUnlink,
        Hook::PathRmdir,
        Hook::PathRename,
        Hook::PathTruncate,
        Hook::SocketConnect,
        Hook::Capable,
        Hook::SbMount,
        Hook::MoveMount,
        Hook::KernelReadFile,
        Hook::KernelLoadData,
        Hook::PtraceAccessCheck,
        Hook::Bpf,
        Hook::TaskAlloc,
        Hook::UsernsCreate,
        Hook::PathChroot,
        Hook::SbPivotroot,
        Hook::SbUmount,
        Hook::MmapFile,
        Hook::PathLink,
        Hook::PathSymlink,
        Hook::PathChmod,
        Hook::PathChown,
        Hook::TaskNewtask,
        Hook::UringSqpoll,
        Hook::UringOverrideCreds,
        Hook::UnixStreamConnect,
        Hook::UnixMaySend,
        Hook::SocketSendmsg,
        Hook::KernelModuleRequest,
        Hook::TaskKill,
        Hook::BpfMap,
        Hook::FileReceive,
        Hook::InodeSetxattr,
        Hook::InodeRemovexattr,
        Hook::InodeSetAcl,
        Hook::InodeRemoveAcl,
        Hook::RingBuffer,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Hook::BprmCheckSecurity => "bprm_check_security",
            Hook::FileOpen => "file_open",
            Hook::PathMknod => "path_mknod",
            Hook::PathMkdir => "path_mkdir",
            Hook::PathUnlink => "path_unlink",
            Hook::PathRmdir => "path_rmdir",
            Hook::PathRename => "path_rename",
            Hook::PathTruncate => "path_truncate",
            Hook::SocketConnect => "socket_connect",
            Hook::Capable => "capable",
            Hook::SbMount => "sb_mount",
            Hook::MoveMount => "move_mount",
            Hook::KernelReadFile => "kernel_read_file",
            Hook::KernelLoadData => "kernel_load_data",
            Hook::PtraceAccessCheck => "ptrace_access_check",
            Hook::Bpf => "bpf",
            Hook::TaskAlloc => "task_alloc",
            Hook::UsernsCreate => "userns_create",
            Hook::PathChroot => "path_chroot",
            Hook::SbPivotroot => "sb_pivotroot",
            Hook::SbUmount => "sb_umount",
            Hook::MmapFile => "mmap_file",
            Hook::PathLink => "path_link",
            Hook::PathSymlink => "path_symlink",
            Hook::PathChmod => "path_chmod",
            Hook::PathChown => "path_chown",
            Hook::TaskNewtask => "task_newtask",
            Hook::UringSqpoll => "uring_sqpoll",
            Hook::UringOverrideCreds => "uring_override_creds",
            Hook::UnixStreamConnect => "unix_stream_connect",
            Hook::UnixMaySend => "unix_may_send",
            Hook::SocketSendmsg => "socket_sendmsg",
            Hook::KernelModuleRequest => "kernel_module_request",
            Hook::TaskKill => "task_kill",
            Hook::BpfMap => "bpf_map",
            Hook::FileReceive => "file_receive",
            Hook::InodeSetxattr => "inode_setxattr",
            Hook::InodeRemovexattr => "inode_removexattr",
            Hook::InodeSetAcl => "inode_set_acl",
            Hook::InodeRemoveAcl => "inode_remove_acl",
            Hook::RingBuffer => "ring_buffer",
        }
    }

    /// The hook named `name`, as written in records and in `Operation.hook`.
    pub fn from_name(name: &str) -> Option<Hook> {
        Hook::ALL.into_iter().find(|h| h.name() == name)
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What an AI agent inside the tree said about why it acts. Shown to people; never decides.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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

/// One audit record. See the module documentation for the rules of its JSON form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    pub time: Timestamp,
    /// The host the operation ran on (on the server: the agent certificate's CN).
    pub host: String,
    pub kind: RecordKind,
    /// allow or deny; null for a request that is still pending and for a review's own row
    /// when it decided nothing yet.
    pub decision: Option<Decision>,
    pub reason: Option<Reason>,
    /// The matching rule's (or the default's) action.
    pub action: Option<Action>,
    pub rule: Option<String>,
    /// The policy in force for the tree.
    pub policy: Option<String>,
    pub hook: Option<Hook>,
    /// The resolved kernel object: a path, "addr:port", "@abstract", a capability name.
    pub object: Option<String>,
    /// For files: read | write | delete | create.
    pub access: Option<String>,
    /// The acting process (thread group id), its thread, its parent.
    pub pid: Option<u32>,
    pub tid: Option<u32>,
    pub ppid: Option<u32>,
    pub uid: Option<u32>,
    /// The acting user, by name when it has one.
    pub user: Option<String>,
    pub exe: Option<String>,
    pub argv: Vec<String>,
    /// The watched tree on its host, "<root pid>-<root start time>".
    pub tree_id: Option<String>,
    /// guard-server's id of the request, for holds decided there.
    pub request_id: Option<String>,
    /// guard-server's state of the request: pending, approved, denied, expired, cancelled.
    pub state: Option<String>,
    /// Who decided: an approver's name, `local:uid=N`, a grant or an auto rule.
    pub approver: Option<String>,
    pub comment: Option<String>,
    /// For an approval "for N seconds": how long the grant lasts.
    pub grant_seconds: Option<u64>,
    /// For a review: how the approver proved who they are ("client certificate", "password",
    /// "password+passkey", "slack", ...). Left out of the JSON when absent, so records written
    /// before the field existed keep their canonical form, and with it their chain hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_by: Option<String>,
    /// How long the operation was held.
    pub held_ms: Option<u64>,
    /// For lost kernel events: how many.
    pub lost: Option<u64>,
    pub stated_reason: Option<StatedReason>,
    /// The record's place in its hash chain (the agent's spool, per host and stream); None for
    /// a record that is not chained by its writer (the server chains its rows itself).
    pub chain: Option<ChainLink>,
    /// For a checkpoint: the signed head of the chain it closes.
    pub checkpoint: Option<SignedHead>,
}

impl AuditRecord {
    /// A record of `kind` on `host` now, with every optional field empty.
    pub fn new(kind: RecordKind, host: impl Into<String>) -> Self {
        Self::at(Timestamp::now(), kind, host)
    }

    /// A record of `kind` on `host` at `time`, with every optional field empty.
    pub fn at(time: Timestamp, kind: RecordKind, host: impl Into<String>) -> Self {
        AuditRecord {
            time,
            host: host.into(),
            kind,
            decision: None,
            reason: None,
            action: None,
            rule: None,
            policy: None,
            hook: None,
            object: None,
            access: None,
            pid: None,
            tid: None,
            ppid: None,
            uid: None,
            user: None,
            exe: None,
            argv: Vec::new(),
            tree_id: None,
            request_id: None,
            state: None,
            approver: None,
            comment: None,
            grant_seconds: None,
            verified_by: None,
            held_ms: None,
            lost: None,
            stated_reason: None,
            chain: None,
            checkpoint: None,
        }
    }

    /// The record as one line of JSON (no newline).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an AuditRecord always serialises")
    }

    /// Reads one record; the error names the field that does not fit.
    pub fn from_json(line: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AuditRecord {
        let mut r = AuditRecord::at(Timestamp::from_unix_ms(1_796_002_226_007), RecordKind::Enforcement, "web1");
        r.decision = Some(Decision::Deny);
        r.reason = Some(Reason::Rule);
        r.action = Some(Action::Deny);
        r.hook = Some(Hook::FileOpen);
        r.object = Some("/etc/shadow".into());
        r.pid = Some(42);
        r.argv = vec!["cat".into(), "/etc/shadow".into()];
        r
    }

    #[test]
    fn every_field_is_written_and_reads_back() {
        let r = sample();
        let json = r.to_json();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 29, "{keys:?}");
        assert_eq!(v["hook"], "file_open");
        assert_eq!(v["reason"], "rule");
        assert_eq!(v["time"], "2026-11-30T01:30:26.007Z");
        assert!(v["request_id"].is_null());
        assert_eq!(AuditRecord::from_json(&json).unwrap(), r);
    }

    #[test]
    fn a_record_of_another_shape_is_refused_with_the_field_named() {
        let mut v: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        v["reason"] = "because".into();
        let e = AuditRecord::from_json(&v.to_string()).unwrap_err().to_string();
        assert!(e.contains("because"), "{e}");
        v["reason"] = "rule".into();
        v.as_object_mut().unwrap().insert("colour".into(), "red".into());
        let e = AuditRecord::from_json(&v.to_string()).unwrap_err().to_string();
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn vocabularies_name_and_parse_the_same() {
        for r in Reason::ALL {
            assert_eq!(Reason::from_name(r.name()), Some(r));
            assert_eq!(serde_json::to_value(r).unwrap(), r.name());
        }
        for h in Hook::ALL {
            assert_eq!(Hook::from_name(h.name()), Some(h));
            assert_eq!(serde_json::to_value(h).unwrap(), h.name());
        }
    }
}
