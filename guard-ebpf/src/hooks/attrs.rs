//! Changes of mode, owner, extended attributes and ACLs of an object: writes of that object.
//!
//! The xattr and ACL hooks are inode hooks: they get a dentry, not a `struct path`, so there is
//! no mount to build the global path from. The mount is found on the object: the dentry's
//! superblock lists every mount of it (`s_mounts`), and the ones in the caller's mount
//! namespace are the ways the caller can reach the object. Each is walked to its global path
//! and looked up; the first that a rule does not allow decides (a bind mount cannot be used to
//! reach a protected object by a name no rule covers). An object with no mount in the caller's
//! namespace (an overlayfs upper layer written during a copy-up, a memfd) has no path a rule
//! could name: the default decides it, as for pipes. A list too long to walk is unresolvable.
use aya_ebpf::{
    helpers::{bpf_get_current_task_btf, generated::bpf_loop},
    macros::lsm,
    programs::LsmContext,
};
use core::ffi::c_void;
use guard_common::{class, sb_mounts_layout, Action, Hook, RuleRef, EPERM};

use super::{files::decide_path, tamper};
use crate::decide::{decide, Op};
use crate::maps::{scratch, watched, Scratch};
use crate::resolve::{label, lookup_path, unresolvable, unresolved, walk_into, NO_RULE};
use crate::task::{off, offsets, read_kernel};

/// Mounts of one superblock looked at, at most (every namespace's copies are in the list).
const MAX_MOUNTS: u32 = 4096;

/// path_chmod(const struct path *path, umode_t mode)
#[lsm(hook = "path_chmod")]
pub fn path_chmod(ctx: LsmContext) -> i32 {
    decide_path(&ctx, Hook::PathChmod, class::WRITE)
}

/// path_chown(const struct path *path, kuid_t uid, kgid_t gid)
#[lsm(hook = "path_chown")]
pub fn path_chown(ctx: LsmContext) -> i32 {
    decide_path(&ctx, Hook::PathChown, class::WRITE)
}

/// inode_setxattr(idmap or userns, struct dentry *dentry, const char *name, const void
/// *value, size_t size, int flags). On 6.1 a POSIX ACL is set here too.
#[lsm(hook = "inode_setxattr")]
pub fn inode_setxattr(ctx: LsmContext) -> i32 {
    decide_dentry(&ctx, Hook::InodeSetxattr)
}

/// inode_removexattr(idmap or userns, struct dentry *dentry, const char *name)
#[lsm(hook = "inode_removexattr")]
pub fn inode_removexattr(ctx: LsmContext) -> i32 {
    decide_dentry(&ctx, Hook::InodeRemovexattr)
}

/// inode_set_acl(struct mnt_idmap *idmap, struct dentry *dentry, const char *acl_name, struct
/// posix_acl *kacl): 6.2 on (loaded only where the kernel has it).
#[lsm(hook = "inode_set_acl")]
pub fn inode_set_acl(ctx: LsmContext) -> i32 {
    decide_dentry(&ctx, Hook::InodeSetAcl)
}

/// inode_remove_acl(struct mnt_idmap *idmap, struct dentry *dentry, const char *acl_name): 6.2
/// on.
#[lsm(hook = "inode_remove_acl")]
pub fn inode_remove_acl(ctx: LsmContext) -> i32 {
    decide_dentry(&ctx, Hook::InodeRemoveAcl)
}

/// The write rules for the dentry in argument 1, through every mount of it in the caller's
/// namespace (see the module's comment).
#[inline(always)]
fn decide_dentry(ctx: &LsmContext, hook: Hook) -> i32 {
    let Some(w) = watched() else { return 0 };
    let Some(s) = scratch() else { return -EPERM };
    let op = Op { hook, aux: 0, holdable: true, always_record: false };
    let dentry: u64 = ctx.arg(1);
    let o = offsets();
    // SAFETY: plain integers read through bpf_probe_read_kernel from the hook's dentry and the
    // current task (valid while the program runs).
    let (mounts, ns) = unsafe {
        let sb: u64 = read_kernel((dentry as *const u8).add(off(&o.dentry_sb)));
        let task = bpf_get_current_task_btf() as *const u8;
        let nsproxy: u64 = read_kernel(task.add(off(&o.task_nsproxy)));
        let ns: u64 = read_kernel((nsproxy as *const u8).add(off(&o.nsproxy_mnt_ns)));
        (sb + off(&o.sb_mounts) as u64, ns)
    };
    // SAFETY: a plain integer: the layout the agent read from the kernel's BTF.
    let layout = unsafe { core::ptr::read_volatile(&o.sb_mounts_layout) };
    if layout == sb_mounts_layout::UNKNOWN {
        label(s, b"extended attributes: mounts of this kernel not known");
        return unresolvable(s, &w, &op);
    }
    // A list ends back at its head inside the superblock; a chain at a null pointer.
    let head = if layout == sb_mounts_layout::LIST { mounts } else { 0 };
    // SAFETY: `s_mounts` is inside the superblock: the first node (list) or mount (chain).
    let first: u64 = unsafe { read_kernel(mounts as *const u8) };
    let mut walk = MountWalk {
        head,
        next: first,
        ns,
        dentry,
        s: s as *mut Scratch,
        policy: w.policy as u64,
        found: NO_RULE,
        seen: 0,
        state: WALKING,
        last: 0,
    };
    // SAFETY: `mount_step` is a callback of the shape bpf_loop expects, and `walk` lives on
    // this stack for the whole call; `s` is this program's scratch value.
    unsafe {
        bpf_loop(MAX_MOUNTS, mount_step as *const () as *mut c_void, &mut walk as *mut MountWalk as *mut c_void, 0)
    };
    if walk.state == UNRESOLVED || (walk.state == WALKING && walk.next != head) {
        // A walk that failed, or more mounts than walked: which one the caller used is unknown.
        if walk.state == WALKING {
            label(s, b"extended attributes: too many mounts");
        }
        return unresolvable(s, &w, &op);
    }
    if walk.seen == 0 {
        label(s, b"extended attributes outside the mount namespace");
        return decide(s, &w, &op, NO_RULE);
    }
    if walk.state == WALKING {
        // No rule refused: the record names the object by the last mount that reaches it (a
        // later mount of the filesystem that does not reach it may have overwritten `s.buf`).
        // SAFETY: `last` is a `struct mount *` from the superblock's list; the walk reads
        // through bpf_probe_read_kernel only.
        unsafe { walk_into(s, (walk.last as *const u8).add(off(&o.mount_mnt)), dentry as *const u8) };
    }
    if unresolved(s) {
        return unresolvable(s, &w, &op);
    }
    if let Some(r) = tamper::check_path(s, &w, hook, 0, false) {
        return r;
    }
    decide(s, &w, &op, walk.found)
}

/// The walk is going on (or reached the end of the list).
const WALKING: u32 = 0;
/// A mount's walk stopped at a rule that does not allow: `s.buf` is its path.
const DECIDED: u32 = 1;
/// A mount's path could not be resolved.
const UNRESOLVED: u32 = 2;

/// `decide_dentry`'s state, on the program's stack for the `bpf_loop` callback.
#[repr(C)]
struct MountWalk {
    /// Where the walk ends: `&sb->s_mounts` (a list), or 0 (a chain).
    head: u64,
    /// The next `mnt_instance` node to look at.
    next: u64,
    /// The caller's mount namespace.
    ns: u64,
    dentry: u64,
    s: *mut Scratch,
    policy: u64,
    /// The rule found so far (an allow), or the one that stopped the walk.
    found: RuleRef,
    /// Mounts in the caller's namespace through which the object has a global path.
    seen: u32,
    state: u32,
    /// The last of those mounts.
    last: u64,
}

/// One node of the superblock's mount list; 1 ends the loop.
extern "C" fn mount_step(_i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `MountWalk` `decide_dentry` passed to bpf_loop, on its stack; `s`
    // is that program's scratch value; kernel memory is read with bpf_probe_read_kernel only.
    unsafe {
        let walk = &mut *(ctx as *mut MountWalk);
        let node = walk.next;
        if node == walk.head || node == 0 {
            return 1;
        }
        let o = offsets();
        walk.next = read_kernel((node as *const u8).add(off(&o.mount_next)));
        let mount = (node as *const u8).sub(off(&o.mount_instance));
        let ns: u64 = read_kernel(mount.add(off(&o.mount_mnt_ns)));
        if ns != walk.ns {
            return 0;
        }
        let s = &mut *walk.s;
        walk_into(s, mount.add(off(&o.mount_mnt)), walk.dentry as *const u8);
        if s.truncated == 2 {
            // The object is not below this mount's root (a bind mount of another directory of
            // the same filesystem): not a way to reach it.
            return 0;
        }
        if unresolved(s) {
            walk.state = UNRESOLVED;
            return 1;
        }
        walk.seen += 1;
        walk.last = mount as u64;
        let found = lookup_path(s, walk.policy as u8, class::WRITE);
        if found.rule != 0 && found.action != Action::Allow as u8 {
            walk.found = found;
            walk.state = DECIDED;
            return 1;
        }
        if found.rule != 0 {
            walk.found = found;
        }
    }
    0
}
