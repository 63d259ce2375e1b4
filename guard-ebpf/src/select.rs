//! Tree selectors: an exec by a task outside every tree may start a new watched tree. The
//! match happens in the exec itself, so the new program never runs an instruction unwatched.
use aya_ebpf::helpers::{bpf_get_current_uid_gid, generated::bpf_get_current_ancestor_cgroup_id};
use guard_common::{selector, PendingSel, SelKey, Selector, Watched, MAX_CGROUP_LEVELS};

use crate::argv::{capture_exec_argv, tokens_all_seen};
use crate::maps::{Scratch, ARGV, PENDING_SEL, SELECTORS, SEL_CONF};
use crate::resolve::{path_hashes, Program};
use crate::task::{current_tgid, current_tid};

const NO_RANK: u32 = u32::MAX;

/// Whether the captured argv (see `select_by_exe`) has every token `sel` requires.
#[inline(always)]
fn argv_selects(sel: &Selector) -> bool {
    if sel.ntok == 0 {
        return true;
    }
    let Some(a) = ARGV.get_ptr(current_tid()) else { return true };
    // SAFETY: this thread's ARGV entry, just captured; valid for the program's run.
    unsafe { (*a).truncated != 0 || tokens_all_seen(&*a, &sel.tokens, sel.ntok) }
}

#[inline(always)]
fn selector(kind: u8, value: u64) -> Option<&'static Selector> {
    let key = SelKey { kind, _pad: [0; 7], value };
    // SAFETY: a map value stays valid for the program's run (a concurrent delete frees it only
    // after an RCU grace period).
    unsafe { SELECTORS.get(key) }
}

/// Whether any exe selector is loaded (so bprm_check_security of an unwatched task has a
/// program to resolve).
#[inline(always)]
pub fn exe_selectors() -> bool {
    SEL_CONF.get(0).is_some_and(|c| c.exe != 0)
}

/// At bprm_check_security of an unwatched task: remembers the best exe selector matching the
/// program (a script's own path, or the binary's), for sched_process_exec. `s.buf` holds the
/// program as `resolve::program_object` resolved it: the global path, as the exec rules see
/// it, so a chroot cannot start a tree (or avoid one) by a chroot-relative name. A path
/// selector matches only a whole global path; a name selector matches the last component,
/// which the walk reads first and so has even when the path is too long or on a detached
/// mount. A program with no name left (a memfd, a deleted file) is selected by neither.
#[inline(always)]
pub fn select_by_exe(s: &mut Scratch, bprm: *const u8, program: Program) {
    let (full, name) = path_hashes(s);
    let by_path = if program == Program::Path { selector(selector::EXE_PATH, full) } else { None };
    let by_name = if program != Program::Anonymous { selector(selector::EXE_NAME, name) } else { None };
    // argv is captured once, only when a selector has argv tokens, and dropped after: the
    // task is not watched (yet).
    let needs_argv = by_path.is_some_and(|s| s.ntok != 0) || by_name.is_some_and(|s| s.ntok != 0);
    if needs_argv {
        capture_exec_argv(bprm);
    }
    let mut rank = NO_RANK;
    let mut policy = 0u8;
    if let Some(sel) = by_path {
        if argv_selects(sel) {
            rank = sel.rank;
            policy = sel.policy;
        }
    }
    if let Some(sel) = by_name {
        if sel.rank < rank && argv_selects(sel) {
            rank = sel.rank;
            policy = sel.policy;
        }
    }
    if needs_argv {
        ARGV.remove(current_tid()).ok();
    }
    if rank == NO_RANK {
        return;
    }
    let tid = current_tid();
    if let Some(p) = PENDING_SEL.get_ptr(tid) {
        // SAFETY: a map value, copied out at once.
        let p = unsafe { *p };
        // An earlier check of the same exec (the script before its interpreter) that won.
        if p.bprm == bprm as u64 && p.rank <= rank {
            return;
        }
    }
    PENDING_SEL.insert(tid, PendingSel { bprm: bprm as u64, rank, policy, _pad: [0; 3] }, 0).ok();
}

/// At sched_process_exec of an unwatched task: the selector that starts a tree here, if any
/// (exe, cgroup and user selectors; the lowest rank wins). Returns the tree and rank + 1.
#[inline(always)]
pub fn select_new_tree(old_pid: u32, bprm: u64) -> Option<(Watched, u32)> {
    let conf = *SEL_CONF.get(0)?;
    let mut rank = NO_RANK;
    let mut policy = 0u8;
    if conf.exe != 0 {
        if let Some(p) = PENDING_SEL.get_ptr(old_pid) {
            // SAFETY: a map value, copied out at once.
            let p = unsafe { *p };
            PENDING_SEL.remove(old_pid).ok();
            if p.bprm == bprm {
                rank = p.rank;
                policy = p.policy;
            }
        }
    }
    if conf.cgroup != 0 {
        let mut level = 1;
        while level < MAX_CGROUP_LEVELS {
            // SAFETY: a helper without pointer arguments.
            let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
            if id == 0 {
                break;
            }
            if let Some(sel) = selector(selector::CGROUP, id) {
                if sel.rank < rank {
                    rank = sel.rank;
                    policy = sel.policy;
                }
            }
            level += 1;
        }
    }
    if conf.user != 0 {
        let uid = bpf_get_current_uid_gid() as u32;
        if let Some(sel) = selector(selector::USER, uid as u64) {
            if sel.rank < rank {
                rank = sel.rank;
                policy = sel.policy;
            }
        }
    }
    if rank == NO_RANK {
        return None;
    }
    Some((Watched { policy, _pad: [0; 3], root: current_tgid() }, rank.wrapping_add(1)))
}
