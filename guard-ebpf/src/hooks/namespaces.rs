//! Namespaces and mounts: operations that change what a path means for the tree (issue 9
//! item 3). A user namespace (`userns_create`), `chroot` (`path_chroot`), `pivot_root`
//! (`sb_pivotroot`), unmounts, lazy or not (`sb_umount`), and mounts of every kind including
//! bind mounts, remounts and moves (`sb_mount`, whose flags are in the record's `aux`, and
//! `move_mount`) are each decided by one rule of the policy. With no rule, they are denied
//! for a watched tree whatever the policy's default (`reason::SAFE_DEFAULT`): path rules are
//! only meaningful while the tree sees the same mount table and root as the agent.
//!
//! The new mount API: `fsmount` and `open_tree(OPEN_TREE_CLONE)` reach no LSM hook of their
//! own on 6.1 and 6.12; a detached mount only becomes reachable by path through `move_mount`
//! (decided here), and by file descriptor only with CAP_SYS_ADMIN over a mount namespace,
//! which an unprivileged tree can only get from a user namespace (decided here). Paths on a
//! detached mount are the path resolver's (`unresolvable`).
use aya_ebpf::{macros::lsm, programs::LsmContext};
use guard_common::{reason, Action, Hook, PolicyConf, RuleRef, Watched, EPERM};

use super::tamper;
use crate::decide::{decide, emit, Op, Outcome};
use crate::maps::{policy, scratch, watched, Scratch};
use crate::resolve::{label, walk_into, walk_path_into};
use crate::task::{off, offsets, read_kernel};

/// Decides an operation that must be allowed by a rule: the rule's action if one matches,
/// else a deny recorded as `safe_default`.
#[inline(always)]
pub fn guarded(s: &mut Scratch, w: &Watched, op: &Op, found: RuleRef) -> i32 {
    if found.rule != 0 {
        return decide(s, w, op, found);
    }
    emit(s, w, op, Outcome::decision(Action::Deny as u8, reason::SAFE_DEFAULT, 0, 0));
    -EPERM
}

/// The rule `pick` of the tree's policy (none if the policy slot cannot be read: then the
/// safe default denies).
#[inline(always)]
fn rule_of(w: &Watched, pick: fn(&PolicyConf) -> RuleRef) -> RuleRef {
    match policy(w) {
        Some(conf) => pick(conf),
        None => RuleRef { rule: 0, action: Action::Deny as u8, _pad: [0; 3] },
    }
}

#[inline(always)]
fn op(hook: Hook, aux: u64) -> Op {
    Op { hook, aux, holdable: true, always_record: true }
}

/// userns_create(const struct cred *cred): unshare(CLONE_NEWUSER), clone(CLONE_NEWUSER).
#[lsm(hook = "userns_create")]
pub fn userns_create(_ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let Some(s) = scratch() else { return -EPERM };
    label(s, b"user namespace");
    guarded(s, &w, &op(Hook::UsernsCreate, 0), rule_of(&w, |c| c.userns))
}

/// path_chroot(const struct path *path): the new root, by the dentry walk.
#[lsm(hook = "path_chroot")]
pub fn path_chroot(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let Some(s) = scratch() else { return -EPERM };
    // SAFETY: argument 0 is the `struct path *` of the new root the kernel resolved.
    unsafe { walk_path_into(s, ctx.arg(0)) };
    guarded(s, &w, &op(Hook::PathChroot, 0), rule_of(&w, |c| c.chroot))
}

/// sb_pivotroot(const struct path *old_path, const struct path *new_path): the new root.
#[lsm(hook = "sb_pivotroot")]
pub fn sb_pivotroot(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let Some(s) = scratch() else { return -EPERM };
    // SAFETY: argument 1 is the `struct path *` of the new root the kernel resolved.
    unsafe { walk_path_into(s, ctx.arg(1)) };
    guarded(s, &w, &op(Hook::SbPivotroot, 0), rule_of(&w, |c| c.pivot_root))
}

/// sb_umount(struct vfsmount *mnt, int flags): the mount's root, by the dentry walk; the
/// flags (MNT_FORCE 1, MNT_DETACH 2 for `umount -l`, MNT_EXPIRE 4) go in `aux`.
#[lsm(hook = "sb_umount")]
pub fn sb_umount(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let Some(s) = scratch() else { return -EPERM };
    let mnt: *const u8 = ctx.arg(0);
    let flags: i32 = ctx.arg(1);
    // SAFETY: `mnt` is the vfsmount the kernel is about to unmount; its root dentry is read
    // through bpf_probe_read_kernel, and the walk reads only through it too.
    unsafe {
        let root: u64 = read_kernel(mnt.add(off(&offsets().vfsmount_root)));
        walk_into(s, mnt, root as *const u8);
    }
    // The bpffs holding guard's pins, or any mount above guard's paths: unmounting it would
    // release the pins (and detach every program).
    if let Some(r) = tamper::check_path(s, &w, Hook::SbUmount, flags as u32 as u64, true) {
        return r;
    }
    guarded(s, &w, &op(Hook::SbUmount, flags as u32 as u64), rule_of(&w, |c| c.umount))
}

/// sb_mount(const char *dev_name, const struct path *path, const char *type, unsigned long
/// flags, void *data): every mount(2): new mounts, bind mounts (MS_BIND 0x1000), remounts
/// (MS_REMOUNT 0x20), moves (MS_MOVE 0x2000) and propagation changes. The object is the
/// mount point, the flags go in `aux`.
#[lsm(hook = "sb_mount")]
pub fn sb_mount(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let Some(s) = scratch() else { return -EPERM };
    let flags: u64 = ctx.arg(3);
    // SAFETY: argument 1 is the `struct path *` of the mount point the kernel resolved.
    unsafe { walk_path_into(s, ctx.arg(1)) };
    if let Some(r) = tamper::check_mount(s, &w, flags) {
        return r;
    }
    guarded(s, &w, &op(Hook::Mount, flags), rule_of(&w, |c| c.mount))
}

/// move_mount(const struct path *from_path, const struct path *to_path): attaching a mount
/// (also one made detached by open_tree or fsmount) somewhere. The object is the target.
#[lsm(hook = "move_mount")]
pub fn move_mount(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let Some(s) = scratch() else { return -EPERM };
    // The mount being moved: guard's pins, or a mount above them, must stay where they are.
    // SAFETY: argument 0 is the `struct path *` of the mount the kernel resolved.
    unsafe { walk_path_into(s, ctx.arg(0)) };
    if let Some(r) = tamper::check_path(s, &w, Hook::MoveMount, 0, true) {
        return r;
    }
    // SAFETY: argument 1 is the `struct path *` of the target the kernel resolved.
    unsafe { walk_path_into(s, ctx.arg(1)) };
    if let Some(r) = tamper::check_path(s, &w, Hook::MoveMount, 0, true) {
        return r;
    }
    guarded(s, &w, &op(Hook::MoveMount, 0), rule_of(&w, |c| c.mount))
}
