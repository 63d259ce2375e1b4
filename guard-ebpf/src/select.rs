//! Tree selectors: an exec by a task outside every tree may start a new watched tree. The
//! match happens in the exec itself, so the new program never runs an instruction unwatched.
use aya_ebpf::{
    helpers::{bpf_get_current_uid_gid, generated::bpf_get_current_ancestor_cgroup_id},
    programs::LsmContext,
};
use guard_common::{selector, Fnv1a, PendingSel, SelKey, Selector, Watched, MAX_CGROUP_LEVELS};

use crate::argv::{capture_exec_argv, tokens_all_seen};
use crate::maps::{scratch, Scratch, ARGV, BUF_LEN, PENDING_SEL, SELECTORS, SEL_CONF};
use crate::resolve::file_path_into;
use crate::task::{current_tgid, current_tid, off, offsets};

const NO_RANK: u32 = u32::MAX;

/// `fnv1a` of the whole path in `s.buf` and of its last component, in one pass.
#[inline(always)]
fn path_hashes(s: &Scratch) -> (u64, u64) {
    let (mut full, mut name) = (Fnv1a::NEW, Fnv1a::NEW);
    let mut i = 0usize;
    while i < BUF_LEN {
        if i as u64 >= s.len {
            break;
        }
        let b = s.buf[i];
        full = full.write(b);
        name = if b == b'/' { Fnv1a::NEW } else { name.write(b) };
        i += 1;
    }
    (full.finish(), name.finish())
}

/// Whether the exec's arguments contain every token of `sel`. Arguments that could not all be
/// captured count as a match: a selector errs on the side of watching.
#[inline(always)]
fn argv_selects(sel: &Selector) -> bool {
    if sel.ntok == 0 {
        return true;
    }
    let tid = current_tid();
    capture_exec_argv();
    let Some(a) = ARGV.get_ptr(tid) else { return true };
    // SAFETY: this thread's ARGV entry, just captured; valid for the program's run.
    let all = unsafe { (*a).truncated != 0 || tokens_all_seen(&*a, &sel.tokens, sel.ntok) };
    ARGV.remove(tid).ok();
    all
}

/// The selector stored under (`kind`, `value`), if any.
#[inline(always)]
fn selector(kind: u8, value: u64) -> Option<&'static Selector> {
    let key = SelKey { kind, _pad: [0; 7], value };
    // SAFETY: a map value stays valid for the program's run (a concurrent delete frees it only
    // after an RCU grace period).
    unsafe { SELECTORS.get(key) }
}

/// At bprm_check_security of an unwatched task: remembers the best exe selector matching the
/// resolved program path (a script's own path, or the binary's), for sched_process_exec.
#[inline(always)]
pub fn select_by_exe(ctx: &LsmContext) {
    let Some(conf) = SEL_CONF.get(0) else { return };
    if conf.exe == 0 {
        return;
    }
    let Some(s) = scratch() else { return };
    let bprm: *const u8 = ctx.arg(0);
    // SAFETY: `file` is the file the kernel opened for the exec; bpf_d_path is allowed in
    // bprm_check_security.
    let resolved = unsafe {
        let file = *(bprm.add(off(&offsets().binprm_file)) as *const *const u8);
        file_path_into(s, file)
    };
    if !resolved {
        return;
    }
    let (full, name) = path_hashes(s);
    let mut rank = NO_RANK;
    let mut policy = 0u8;
    if let Some(sel) = selector(selector::EXE_PATH, full) {
        let sel = *sel;
        if argv_selects(&sel) {
            rank = sel.rank;
            policy = sel.policy;
        }
    }
    if let Some(sel) = selector(selector::EXE_NAME, name) {
        let sel = *sel;
        if sel.rank < rank && argv_selects(&sel) {
            rank = sel.rank;
            policy = sel.policy;
        }
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
