//! New names for objects: hard links and symlinks (see `files` for why the source of a link
//! is decided as the object itself).
use aya_ebpf::{macros::lsm, programs::LsmContext};
use guard_common::{class, Hook, EPERM};

use super::files::{decide_entry, decide_moved};
use crate::maps::{scratch, watched};
use crate::resolve::walk_entry_into;

/// path_link(struct dentry *old_dentry, const struct path *new_dir, struct dentry *new_dentry)
///
/// The new name is a write where it is created; the old name exposes the object under a new
/// name, so its read, write and delete rules apply (a link to a read-denied file is refused).
#[lsm(hook = "path_link")]
pub fn path_link(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let Some(s) = scratch() else { return -EPERM };
    let r = decide_entry(&ctx, &w, s, Hook::PathLink, class::WRITE, 1, 2, class::WRITE as u64);
    if r != 0 {
        return r;
    }
    // A hard link never crosses a mount (EXDEV before this hook), so the old dentry is in the
    // new directory's mount.
    // SAFETY: argument 1 is the new directory's path, argument 0 the old entry's dentry.
    unsafe { walk_entry_into(s, ctx.arg(1), ctx.arg(0)) };
    decide_moved(s, &w, Hook::PathLink, false)
}

/// path_symlink(const struct path *dir, struct dentry *dentry, const char *old_name)
///
/// A symlink is a new entry: a write where it is created (`ln -s /tmp/x /etc/ld.so.preload`).
/// What it points to is decided when it is followed (opens resolve it).
#[lsm(hook = "path_symlink")]
pub fn path_symlink(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let Some(s) = scratch() else { return -EPERM };
    decide_entry(&ctx, &w, s, Hook::PathSymlink, class::WRITE, 0, 1, 0)
}
