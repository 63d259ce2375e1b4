//! Changes of mode and owner of an object: writes of that object.
use aya_ebpf::{macros::lsm, programs::LsmContext};
use guard_common::{class, Hook};

use super::files::decide_path;

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
