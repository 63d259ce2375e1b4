//! Files: opens (read and write rules), and creation, deletion, rename and truncation through
//! the path_* hooks (write and delete rules). Links and attribute changes are in `links` and
//! `attrs`; they share the helpers here.
//!
//! Objects, not names: a rule protects the object whatever name reaches it. Renaming or
//! linking the object (or renaming any directory above it) would give it a name no rule
//! covers, so the source of a rename or link is decided as the object itself: its delete
//! rules, and also every read or write rule on it that does not allow, plus for renames the
//! strictest rule *below* a directory (the `ANCESTOR` keys the agent emits for every proper
//! ancestor of a rule path).
//!
//! Why names and not inode labels (BPF inode storage): labels must be set on inodes that
//! exist when the policy loads (userspace cannot reach inodes under a path it has not opened,
//! and new files under a protected directory need labels as they are created, in every hook
//! that creates one); a label also follows the inode into places the rule did not name (a
//! copy of a read-denied file made before the policy loaded, a hard link made by someone
//! else). With the walk giving global paths, every hook that can give an object a new name
//! (rename of it or of an ancestor, link, symlink into a protected prefix) deciding on the
//! rules of the old name closes the same holes on 6.1 and 6.12 with the maps that exist.
use aya_ebpf::{macros::lsm, programs::LsmContext};
use guard_common::{class, Action, Hook, Watched, EPERM};

use super::tamper;
use crate::decide::{decide, Op};
use crate::maps::{policy, scratch, watched, Scratch};
use crate::resolve::{file_object, lookup_path, unresolvable, unresolved, walk_entry_into, walk_path_into};
use crate::task::{off, offsets};

/// `f_mode` bits (include/linux/fs.h).
const FMODE_READ: u32 = 0x1;
const FMODE_WRITE: u32 = 0x2;
/// The open is the exec itself (decided at bprm_check_security).
const FMODE_EXEC: u32 = 0x20;
/// renameat2's flag: the two names swap objects.
const RENAME_EXCHANGE: u64 = 2;

#[lsm(hook = "file_open")]
pub fn file_open(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let Some(s) = scratch() else { return -EPERM };
    let file: *const u8 = ctx.arg(0);
    // SAFETY: `f_mode` is a u32 inside that file, by the offset from the kernel's BTF.
    let mode = unsafe { *(file.add(off(&offsets().file_f_mode)) as *const u32) };
    if mode & FMODE_EXEC != 0 {
        return 0;
    }
    let op = Op {
        hook: Hook::FileOpen,
        aux: (mode & (FMODE_READ | FMODE_WRITE)) as u64,
        holdable: true,
        always_record: false,
    };
    // SAFETY: the file the kernel gave this hook; bpf_d_path is allowed in file_open.
    if !unsafe { file_object(s, file) } {
        return unresolvable(s, &w, &op);
    }
    // The tamper baseline first: no rule may open guard's files for writing (or its keys).
    if let Some(r) = tamper::check_open(s, &w, op.aux, mode & FMODE_WRITE != 0) {
        return r;
    }
    // Write rules decide first, then the read rules for read-write opens.
    if mode & FMODE_WRITE != 0 {
        let found = lookup_path(s, w.policy, class::WRITE);
        if found.rule != 0 || mode & FMODE_READ == 0 {
            return decide(s, &w, &op, found);
        }
    }
    let found = lookup_path(s, w.policy, class::READ);
    decide(s, &w, &op, found)
}

/// A path_* hook on one entry: the prologue of [`decide_entry`].
#[inline(always)]
fn path_hook(ctx: &LsmContext, hook: Hook, class: u8, aux: u64) -> i32 {
    let Some(w) = watched() else { return 0 };
    let Some(s) = scratch() else { return -EPERM };
    decide_entry(ctx, &w, s, hook, class, 0, 1, aux)
}

/// The rules of `class` for the entry whose directory (a `struct path *`) and dentry are the
/// hook's arguments `dir_arg` and `dentry_arg`. `aux` is part of what an approval covers (the
/// creation mode and device, the rename direction).
#[inline(always)]
#[expect(clippy::too_many_arguments, reason = "inlined into each hook; the arguments are the hook's own")]
pub(super) fn decide_entry(
    ctx: &LsmContext,
    w: &Watched,
    s: &mut Scratch,
    hook: Hook,
    class: u8,
    dir_arg: usize,
    dentry_arg: usize,
    aux: u64,
) -> i32 {
    let op = Op { hook, aux, holdable: true, always_record: false };
    // SAFETY: the callers name the arguments that are the directory's path and the entry's
    // dentry of their hook; the walk reads them through bpf_probe_read_kernel only.
    unsafe { walk_entry_into(s, ctx.arg(dir_arg), ctx.arg(dentry_arg)) };
    if unresolved(s) {
        return unresolvable(s, w, &op);
    }
    if let Some(r) = tamper::check_path(s, w, hook, 0, false) {
        return r;
    }
    let found = lookup_path(s, w.policy, class);
    decide(s, w, &op, found)
}

/// Decides the object whose global path is in `s.buf` as one that is about to be reached by
/// another name (the source of a rename or link): by the strictest of its delete rule (or the
/// default), any read or write rule on it, and (`ancestors`, for renames of directories) the
/// strictest rule on anything below it. One decision, so that an ask is one hold: two holds
/// with the same object and hook would have the same hash and never finish.
#[inline(always)]
pub(super) fn decide_moved(s: &mut Scratch, w: &Watched, hook: Hook, ancestors: bool) -> i32 {
    // The source side (aux): an approval of moving the object away does not cover moving
    // something onto its name.
    let op = Op { hook, aux: class::DELETE as u64, holdable: true, always_record: false };
    if unresolved(s) {
        return unresolvable(s, w, &op);
    }
    // guard's own files, or (a rename) a directory above them.
    if let Some(r) = tamper::check_path(s, w, hook, 0, ancestors) {
        return r;
    }
    let default = match policy(w) {
        Some(c) => c.default_action,
        None => Action::Deny as u8,
    };
    let mut best = lookup_path(s, w.policy, class::DELETE);
    let mut best_rank = rank(if best.rule != 0 { best.action } else { default });
    let found = lookup_path(s, w.policy, class::READ);
    if found.rule != 0 && rank(found.action) > best_rank {
        best = found;
        best_rank = rank(found.action);
    }
    let found = lookup_path(s, w.policy, class::WRITE);
    if found.rule != 0 && rank(found.action) > best_rank {
        best = found;
        best_rank = rank(found.action);
    }
    if ancestors {
        let found = lookup_path(s, w.policy, class::ANCESTOR);
        if found.rule != 0 && rank(found.action) > best_rank {
            best = found;
        }
    }
    decide(s, w, &op, best)
}

/// How strict an action is: allow < audit < ask < deny.
#[inline(always)]
fn rank(action: u8) -> u8 {
    if action == Action::Deny as u8 {
        3
    } else if action == Action::Ask as u8 {
        2
    } else if action == Action::Audit as u8 {
        1
    } else {
        0
    }
}

/// path_mknod(const struct path *dir, struct dentry *dentry, umode_t mode, unsigned int dev)
#[lsm(hook = "path_mknod")]
pub fn path_mknod(ctx: LsmContext) -> i32 {
    // The mode (type and permission bits) and device are what the approver approves.
    let mode: u64 = ctx.arg::<u64>(2) & 0xffff;
    let dev: u64 = ctx.arg::<u64>(3) & 0xffff_ffff;
    path_hook(&ctx, Hook::PathMknod, class::WRITE, mode | dev << 32)
}

/// path_mkdir(const struct path *dir, struct dentry *dentry, umode_t mode)
#[lsm(hook = "path_mkdir")]
pub fn path_mkdir(ctx: LsmContext) -> i32 {
    let mode: u64 = ctx.arg::<u64>(2) & 0xffff;
    path_hook(&ctx, Hook::PathMkdir, class::WRITE, mode)
}

/// path_unlink(const struct path *dir, struct dentry *dentry)
#[lsm(hook = "path_unlink")]
pub fn path_unlink(ctx: LsmContext) -> i32 {
    path_hook(&ctx, Hook::PathUnlink, class::DELETE, 0)
}

/// path_rmdir(const struct path *dir, struct dentry *dentry)
#[lsm(hook = "path_rmdir")]
pub fn path_rmdir(ctx: LsmContext) -> i32 {
    path_hook(&ctx, Hook::PathRmdir, class::DELETE, 0)
}

/// path_rename(const struct path *old_dir, struct dentry *old_dentry, const struct path
/// *new_dir, struct dentry *new_dentry, unsigned int flags)
#[lsm(hook = "path_rename")]
pub fn path_rename(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let Some(s) = scratch() else { return -EPERM };
    // The source moves away from its name: the object itself, or everything below it.
    // SAFETY: arguments 0 and 1 are the old directory's path and the old entry's dentry.
    unsafe { walk_entry_into(s, ctx.arg(0), ctx.arg(1)) };
    let r = decide_moved(s, &w, Hook::PathRename, true);
    if r != 0 {
        return r;
    }
    let flags: u64 = ctx.arg(4);
    if flags & RENAME_EXCHANGE != 0 {
        // An exchange moves the target's object to the source's name as well.
        // SAFETY: arguments 2 and 3 are the new directory's path and the new entry's dentry.
        unsafe { walk_entry_into(s, ctx.arg(2), ctx.arg(3)) };
        let r = decide_moved(s, &w, Hook::PathRename, true);
        if r != 0 {
            return r;
        }
    }
    // Renaming into a protected prefix is a write there.
    decide_entry(&ctx, &w, s, Hook::PathRename, class::WRITE, 2, 3, class::WRITE as u64)
}

/// path_truncate(const struct path *path)
#[lsm(hook = "path_truncate")]
pub fn path_truncate(ctx: LsmContext) -> i32 {
    decide_path(&ctx, Hook::PathTruncate, class::WRITE)
}

/// A hook whose argument 0 is the object's `struct path *`: the rules of `class` on it.
#[inline(always)]
pub(super) fn decide_path(ctx: &LsmContext, hook: Hook, class: u8) -> i32 {
    let Some(w) = watched() else { return 0 };
    let Some(s) = scratch() else { return -EPERM };
    let op = Op { hook, aux: 0, holdable: true, always_record: false };
    // SAFETY: argument 0 of these hooks is the object's path; walked with helper reads only.
    unsafe { walk_path_into(s, ctx.arg(0)) };
    if unresolved(s) {
        return unresolvable(s, &w, &op);
    }
    if let Some(r) = tamper::check_path(s, &w, hook, 0, false) {
        return r;
    }
    let found = lookup_path(s, w.policy, class);
    decide(s, &w, &op, found)
}
