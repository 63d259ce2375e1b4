//! Exec: `bprm_check_security` decides exec rules (path, then argv conditions) for watched
//! threads, and looks for a selector that starts a new tree for the others.
use aya_ebpf::{macros::lsm, programs::LsmContext};
use guard_common::{class, reason, Action, Hook, EPERM};

use crate::argv::{capture_exec_argv, match_argv_rules};
use crate::decide::{decide, emit, Op, Outcome};
use crate::maps::{bump, scratch, watched};
use crate::resolve::{file_path_into, lookup_path};
use crate::select::select_by_exe;
use crate::task::{off, offsets};

#[lsm(hook = "bprm_check_security")]
pub fn bprm_check_security(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else {
        select_by_exe(&ctx);
        return 0;
    };
    let Some(s) = scratch() else { return 0 };
    let bprm: *const u8 = ctx.arg(0);
    let argv_read = capture_exec_argv();
    // SAFETY: `file` is the file the kernel opened for the exec; bpf_d_path is allowed in
    // bprm_check_security.
    let resolved = unsafe {
        let file = *(bprm.add(off(&offsets().binprm_file)) as *const *const u8);
        file_path_into(s, file)
    };
    if !resolved {
        return 0;
    }
    let op = Op { hook: Hook::Exec, aux: 0, holdable: true, always_record: false };
    if !argv_read {
        // Arguments that cannot be read cannot be decided on or shown to an approver.
        bump(reason::ARGV_UNREADABLE as u32);
        emit(s, &w, &op, Outcome::decision(Action::Deny as u8, reason::ARGV_UNREADABLE, 0, 0));
        return -EPERM;
    }
    let found = lookup_path(s, w.policy, class::EXEC);
    let found = match_argv_rules(s, &w, found);
    decide(s, &w, &op, found)
}
