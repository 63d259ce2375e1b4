//! The one place where the kernel's u8 codes (guard-common) become the audit vocabulary
//! (guard-api's typed enums).

use guard_api::{Action, Decision, Hook, Reason};
use guard_common::{class, reason, Action as KAction, Hook as KHook};

/// The hook of a kernel event; None for a code this agent does not know.
pub fn hook(code: u8) -> Option<Hook> {
    Some(match KHook::from_u8(code)? {
        KHook::Exec => Hook::BprmCheckSecurity,
        KHook::FileOpen => Hook::FileOpen,
        KHook::PathMknod => Hook::PathMknod,
        KHook::PathMkdir => Hook::PathMkdir,
        KHook::PathUnlink => Hook::PathUnlink,
        KHook::PathRmdir => Hook::PathRmdir,
        KHook::PathRename => Hook::PathRename,
        KHook::PathTruncate => Hook::PathTruncate,
        KHook::Connect => Hook::SocketConnect,
        KHook::Capable => Hook::Capable,
        KHook::Mount => Hook::SbMount,
        KHook::MoveMount => Hook::MoveMount,
        KHook::KernelReadFile => Hook::KernelReadFile,
        KHook::KernelLoadData => Hook::KernelLoadData,
        KHook::Ptrace => Hook::PtraceAccessCheck,
        KHook::Bpf => Hook::Bpf,
        KHook::TaskAlloc => Hook::TaskAlloc,
        KHook::UsernsCreate => Hook::UsernsCreate,
        KHook::PathChroot => Hook::PathChroot,
        KHook::SbPivotroot => Hook::SbPivotroot,
        KHook::SbUmount => Hook::SbUmount,
        KHook::MmapFile => Hook::MmapFile,
        KHook::PathLink => Hook::PathLink,
        KHook::PathSymlink => Hook::PathSymlink,
        KHook::PathChmod => Hook::PathChmod,
        KHook::PathChown => Hook::PathChown,
        KHook::TaskNew => Hook::TaskNewtask,
        KHook::UringSqpoll => Hook::UringSqpoll,
        KHook::UringCreds => Hook::UringOverrideCreds,
        KHook::UnixStreamConnect => Hook::UnixStreamConnect,
        KHook::UnixMaySend => Hook::UnixMaySend,
        KHook::SocketSendmsg => Hook::SocketSendmsg,
        KHook::KernelModuleRequest => Hook::KernelModuleRequest,
        KHook::TaskKill => Hook::TaskKill,
        KHook::BpfMap => Hook::BpfMap,
        KHook::FileReceive => Hook::FileReceive,
        KHook::InodeSetxattr => Hook::InodeSetxattr,
        KHook::InodeRemovexattr => Hook::InodeRemovexattr,
        KHook::InodeSetAcl => Hook::InodeSetAcl,
        KHook::InodeRemoveAcl => Hook::InodeRemoveAcl,
    })
}

/// The action of a rule or default, as the kernel wrote it (an unknown code reads as deny,
/// which is what the kernel does with it).
pub fn action(code: u8) -> Action {
    from_kernel_action(KAction::from_u8(code).unwrap_or(KAction::Deny))
}

pub fn from_kernel_action(a: KAction) -> Action {
    match a {
        KAction::Allow => Action::Allow,
        KAction::Deny => Action::Deny,
        KAction::Audit => Action::Audit,
        KAction::Ask => Action::Ask,
    }
}

/// The reason the kernel gave; None for a code this agent does not know.
pub fn reason(code: u8) -> Option<Reason> {
    Some(match code {
        reason::RULE => Reason::Rule,
        reason::DEFAULT => Reason::Default,
        reason::APPROVED => Reason::Approved,
        reason::DENIED => Reason::Denied,
        reason::EXPIRED => Reason::Expired,
        reason::UNHOLDABLE => Reason::Unholdable,
        reason::SAFE_DEFAULT => Reason::SafeDefault,
        reason::EXEC_UNRESOLVED => Reason::ExecUnresolved,
        reason::UNRESOLVABLE => Reason::Unresolvable,
        reason::TREE_LIMIT => Reason::TreeLimit,
        reason::IO_URING => Reason::IoUring,
        reason::UNRESOLVED_PEER => Reason::UnresolvedPeer,
        reason::OTHER_TREE => Reason::OtherTree,
        reason::RING_FULL => Reason::RingFull,
        reason::HOLD_TABLE_FULL => Reason::HoldTableFull,
        reason::ARGV_UNREADABLE => Reason::ArgvUnreadable,
        reason::TAMPER => Reason::Tamper,
        reason::AGENT_GONE => Reason::AgentGone,
        reason::ARGV_CHANGED => Reason::ArgvChanged,
        _ => return None,
    })
}

/// Whether the operation went ahead: a deny action, or a hold the kernel ended without an
/// approval, failed it.
pub fn decision(action_code: u8, reason_code: u8) -> Decision {
    let denied = matches!(action(action_code), Action::Deny)
        || matches!(
            reason_code,
            reason::DENIED
                | reason::EXPIRED
                | reason::UNHOLDABLE
                | reason::SAFE_DEFAULT
                | reason::EXEC_UNRESOLVED
                | reason::UNRESOLVABLE
                | reason::TREE_LIMIT
                | reason::IO_URING
                | reason::UNRESOLVED_PEER
                | reason::OTHER_TREE
                | reason::RING_FULL
                | reason::HOLD_TABLE_FULL
                | reason::ARGV_UNREADABLE
                | reason::TAMPER
                | reason::AGENT_GONE
                | reason::ARGV_CHANGED
        );
    if denied {
        Decision::Deny
    } else {
        Decision::Allow
    }
}

/// For file hooks, what the operation does to the file: read, write, delete or create. From
/// the hook, and for `file_open` from the open mode the kernel puts in `aux`. None where the
/// event does not say. A rename is a delete of its source and a write of its target.
pub fn access(hook_code: u8, aux: u64) -> Option<&'static str> {
    const FMODE_READ: u64 = 1;
    const FMODE_WRITE: u64 = 2;
    match KHook::from_u8(hook_code)? {
        KHook::FileOpen if aux & FMODE_WRITE != 0 => Some("write"),
        KHook::FileOpen if aux & FMODE_READ != 0 => Some("read"),
        KHook::PathMknod | KHook::PathMkdir => Some("create"),
        KHook::PathUnlink | KHook::PathRmdir => Some("delete"),
        KHook::PathTruncate
        | KHook::PathLink
        | KHook::PathSymlink
        | KHook::PathChmod
        | KHook::PathChown
        | KHook::InodeSetxattr
        | KHook::InodeRemovexattr
        | KHook::InodeSetAcl
        | KHook::InodeRemoveAcl => Some("write"),
        // The kernel puts the side in aux: the source is a delete, the target a write.
        KHook::PathRename if aux == class::DELETE as u64 => Some("delete"),
        KHook::PathRename if aux == class::WRITE as u64 => Some("write"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_hook_has_its_audit_name() {
        for code in (1..=20u8).chain(24..=27).chain(34..=37).chain(42..=46).chain(50..=51) {
            let k = KHook::from_u8(code).unwrap();
            assert_eq!(hook(code).unwrap().name(), k.name(), "code {code}");
        }
        assert_eq!(hook(0), None);
        assert_eq!(hook(200), None);
    }

    #[test]
    fn decisions_reasons_and_access() {
        assert_eq!(decision(KAction::Allow as u8, reason::RULE), Decision::Allow);
        assert_eq!(decision(KAction::Ask as u8, reason::EXPIRED), Decision::Deny);
        assert_eq!(decision(KAction::Deny as u8, reason::DEFAULT), Decision::Deny);
        assert_eq!(reason(reason::UNHOLDABLE), Some(Reason::Unholdable));
        assert_eq!(reason(reason::UNRESOLVABLE), Some(Reason::Unresolvable));
        assert_eq!(decision(KAction::Allow as u8, reason::UNRESOLVABLE), Decision::Deny);
        assert_eq!(reason(99), None);
        assert_eq!(reason(reason::UNRESOLVED_PEER), Some(Reason::UnresolvedPeer));
        assert_eq!(decision(KAction::Deny as u8, reason::OTHER_TREE), Decision::Deny);
        assert_eq!(reason(reason::TAMPER), Some(Reason::Tamper));
        assert_eq!(reason(reason::RING_FULL), Some(Reason::RingFull));
        assert_eq!(decision(KAction::Audit as u8, reason::RING_FULL), Decision::Deny);
        assert_eq!(decision(KAction::Ask as u8, reason::HOLD_TABLE_FULL), Decision::Deny);
        assert_eq!(decision(KAction::Allow as u8, reason::ARGV_UNREADABLE), Decision::Deny);
        assert_eq!(reason(reason::ARGV_CHANGED), Some(Reason::ArgvChanged));
        assert_eq!(decision(KAction::Deny as u8, reason::ARGV_CHANGED), Decision::Deny);
        assert_eq!(access(KHook::PathRename as u8, class::DELETE as u64), Some("delete"));
        assert_eq!(access(KHook::PathRename as u8, class::WRITE as u64), Some("write"));
        assert_eq!(decision(KAction::Ask as u8, reason::AGENT_GONE), Decision::Deny);
        assert_eq!(access(KHook::FileOpen as u8, 1), Some("read"));
        assert_eq!(access(KHook::FileOpen as u8, 3), Some("write"));
        assert_eq!(access(KHook::PathUnlink as u8, 0), Some("delete"));
        assert_eq!(access(KHook::PathRename as u8, 0), None);
        assert_eq!(access(KHook::Connect as u8, 443), None);
    }
}
