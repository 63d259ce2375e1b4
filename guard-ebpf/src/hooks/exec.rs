//! Exec: `bprm_check_security` decides exec rules (path, then argv conditions) for watched
//! threads, and looks for a selector that starts a new tree for the others.
use aya_ebpf::{macros::lsm, programs::LsmContext};
use guard_common::{class, Hook};

use crate::argv::{capture_exec_argv, match_argv_rules};
use crate::decide::{decide, Op};
use crate::maps::{scratch, watched};
use crate::resolve::{file_object, lookup_path, unresolvable};
use crate::select::select_by_exe;
use crate::task::{off, offsets};

#[lsm(hook = "bprm_check_security")]
pub fn bprm_check_security(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else {
        select_by_exe(&ctx);
        return 0;
    };
    let Some(s) = scratch() else { return -guard_common::EPERM };
    let bprm: *const u8 = ctx.arg(0);
    capture_exec_argv();
    let op = Op { hook: Hook::Exec, aux: 0, holdable: true, always_record: false };
    // SAFETY: `file` is the file the kernel opened for the exec; bpf_d_path is allowed in
    // bprm_check_security. The global path (a dentry walk, not the chroot-relative
    // bpf_d_path), or unresolvable: never allowed on a tail or a detached mount's name.
    let resolved = unsafe {
        let file = *(bprm.add(off(&offsets().binprm_file)) as *const *const u8);
        file_object(s, file)
    };
    if !resolved {
        return unresolvable(s, &w, &op);
    }
    let found = lookup_path(s, w.policy, class::EXEC);
    let found = match_argv_rules(s, &w, found);
    decide(s, &w, &op, found)
}
