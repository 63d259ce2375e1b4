//! Files: opens (read and write rules), and creation, deletion, rename and truncation through
//! the path_* hooks (write and delete rules).
use aya_ebpf::{macros::lsm, programs::LsmContext};
use guard_common::{class, Hook, Watched};

use crate::decide::{decide, Op};
use crate::maps::{scratch, watched, Scratch};
use crate::resolve::{file_path_into, lookup_path, walk_entry_into, walk_path_into};
use crate::task::{off, offsets};

/// `f_mode` bits (include/linux/fs.h).
const FMODE_READ: u32 = 0x1;
const FMODE_WRITE: u32 = 0x2;
/// The open is the exec itself (decided at bprm_check_security).
const FMODE_EXEC: u32 = 0x20;

#[lsm(hook = "file_open")]
pub fn file_open(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let Some(s) = scratch() else { return 0 };
    let file: *const u8 = ctx.arg(0);
    // SAFETY: `f_mode` is a u32 inside that file, by the offset from the kernel's BTF.
    let mode = unsafe { *(file.add(off(&offsets().file_f_mode)) as *const u32) };
    if mode & FMODE_EXEC != 0 {
        return 0;
    }
    // SAFETY: the file the kernel gave this hook; bpf_d_path is allowed in file_open.
    if !unsafe { file_path_into(s, file) } {
        return 0;
    }
    let op = Op {
        hook: Hook::FileOpen,
        aux: (mode & (FMODE_READ | FMODE_WRITE)) as u64,
        holdable: true,
        always_record: false,
    };
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
    let Some(s) = scratch() else { return 0 };
    decide_entry(ctx, &w, s, hook, class, 0, 1, aux)
}

/// The rules of `class` for the entry whose directory (a `struct path *`) and dentry are the
/// hook's arguments `dir_arg` and `dentry_arg`. `aux` is part of what an approval covers (the
/// creation mode and device, the rename direction).
#[inline(always)]
#[expect(clippy::too_many_arguments, reason = "inlined into each hook; the arguments are the hook's own")]
fn decide_entry(
    ctx: &LsmContext,
    w: &Watched,
    s: &mut Scratch,
    hook: Hook,
    class: u8,
    dir_arg: usize,
    dentry_arg: usize,
    aux: u64,
) -> i32 {
    // SAFETY: the callers name the arguments that are the directory's path and the entry's
    // dentry of their hook; the walk reads them through bpf_probe_read_kernel only.
    let walked = unsafe { walk_entry_into(s, ctx.arg(dir_arg), ctx.arg(dentry_arg)) };
    if !walked {
        return 0;
    }
    let found = lookup_path(s, w.policy, class);
    let op = Op { hook, aux, holdable: true, always_record: false };
    decide(s, w, &op, found)
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
    let Some(s) = scratch() else { return 0 };
    // Renaming away from a protected prefix is a delete there... (the class is the aux: an
    // approval of one direction does not cover the other)
    let r = decide_entry(&ctx, &w, s, Hook::PathRename, class::DELETE, 0, 1, class::DELETE as u64);
    if r != 0 {
        return r;
    }
    // ...and renaming into one is a write there.
    decide_entry(&ctx, &w, s, Hook::PathRename, class::WRITE, 2, 3, class::WRITE as u64)
}

/// path_truncate(const struct path *path)
#[lsm(hook = "path_truncate")]
pub fn path_truncate(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let Some(s) = scratch() else { return 0 };
    // SAFETY: argument 0 of path_truncate is the file's path; walked with helper reads only.
    if !unsafe { walk_path_into(s, ctx.arg(0)) } {
        return 0;
    }
    let found = lookup_path(s, w.policy, class::WRITE);
    let op = Op { hook: Hook::PathTruncate, aux: 0, holdable: true, always_record: false };
    decide(s, &w, &op, found)
}
