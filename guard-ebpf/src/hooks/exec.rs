//! Exec: `bprm_check_security` decides exec rules (path, then argv conditions) for watched
//! threads, and looks for a selector that starts a new tree for the others.
//!
//! Exec rules mean programs (issue 9 items 3 and 8):
//! - a program is its global path (the dentry walk, as for opens: `resolve::program_object`),
//!   not the path relative to the task's root, so a chroot does not rename it;
//! - a program with no name left (a memfd run by `fexecve`, a deleted or never-linked file),
//!   recognised on the object, is decided by the policy's `exec_anonymous` rule, denied with
//!   none (`safe_default`);
//! - a program that cannot be resolved to its global path is denied (`exec_unresolved`);
//! - a program mapped executable by the dynamic loader (`ld.so /usr/bin/X` maps X, it does not
//!   exec it) is decided at `mmap_file`: a PROT_EXEC mapping of a file an exec rule denies (or
//!   asks for: a mapping cannot be held) is refused, and so is one of an anonymous file; so is
//!   the interpreter an ELF names (PT_INTERP), which the kernel maps inside execve.
use aya_ebpf::{macros::lsm, programs::LsmContext};
use guard_common::{class, reason, Action, Hook, Watched, EPERM};

use super::namespaces::guarded;
use crate::arch::is_exec_syscall;
use crate::argv::{argv_readable, capture_exec_argv, match_argv_rules};
use crate::decide::{decide, emit, Op, Outcome};
use crate::maps::{bump, policy, scratch, watched, Scratch};
use crate::resolve::{lookup_path, program_object, Program, NO_RULE};
use crate::select::{exe_selectors, select_by_exe};
use crate::task::{off, offsets, read_kernel, syscall_nr};

/// `PROT_EXEC` of mmap(2).
const PROT_EXEC: u64 = 0x4;
/// A deny of a program that could not be resolved to its global path. The record's object is
/// what the walk got (a tail, or a path on a detached mount), marked truncated.
#[inline(always)]
fn unresolved(s: &mut Scratch, w: &Watched, op: &Op) -> i32 {
    if s.truncated == 0 {
        s.truncated = 1;
    }
    emit(s, w, op, Outcome::decision(Action::Deny as u8, reason::EXEC_UNRESOLVED, 0, 0));
    -EPERM
}

/// Whether `file` is the program the current execve installed (the new mm's `exe_file`).
#[inline(always)]
fn is_new_program(file: *const u8) -> bool {
    // SAFETY: the current task is valid while the program runs; plain pointers read through
    // bpf_probe_read_kernel.
    let exe: u64 = unsafe {
        let task = aya_ebpf::helpers::bpf_get_current_task_btf() as *const u8;
        let mm: u64 = read_kernel(task.add(off(&offsets().task_mm)));
        read_kernel((mm as *const u8).add(off(&offsets().mm_exe_file)))
    };
    exe == file as u64
}

/// The policy's rule for anonymous programs.
#[inline(always)]
fn anonymous_rule(w: &Watched) -> guard_common::RuleRef {
    match policy(w) {
        Some(c) => c.exec_anonymous,
        None => NO_RULE,
    }
}

/// bprm_creds_for_exec(struct linux_binprm *bprm): once per execve, before the binary
/// handlers (and so before every `bprm_check_security` of this exec, scripts included).
/// Captures argv here rather than in `bprm_check_security`: the capture loop and the decision
/// are then verified as two programs, not one whose every path repeats the other.
#[lsm(hook = "bprm_creds_for_exec")]
pub fn bprm_creds_for_exec(ctx: LsmContext) -> i32 {
    if watched().is_some() {
        capture_exec_argv(ctx.arg(0));
    }
    0
}

/// bprm_check_security(struct linux_binprm *bprm): the program about to run (for a script,
/// once for the script and once for its interpreter). The program is resolved once, here, for
/// both uses: the exec rules of a watched task, and the exe selectors of an unwatched one (so
/// a tree starts, or not, by the same global path its rules see).
#[lsm(hook = "bprm_check_security")]
pub fn bprm_check_security(ctx: LsmContext) -> i32 {
    let w = watched();
    if w.is_none() && !exe_selectors() {
        return 0;
    }
    let Some(s) = scratch() else {
        return if w.is_some() { -EPERM } else { 0 };
    };
    let bprm: *const u8 = ctx.arg(0);
    // SAFETY: `file` is the file the kernel opened for the exec; the walk reads it through
    // bpf_probe_read_kernel only.
    let program = unsafe {
        let file = *(bprm.add(off(&offsets().binprm_file)) as *const *const u8);
        program_object(s, file)
    };
    let Some(w) = w else {
        select_by_exe(s, bprm, program);
        return 0;
    };
    let argv_read = argv_readable();
    let op = Op { hook: Hook::Exec, aux: 0, holdable: true, always_record: false };
    if program == Program::Unresolved {
        return unresolved(s, &w, &op);
    }
    if !argv_read {
        // Arguments that cannot be read cannot be decided on or shown to an approver.
        bump(reason::ARGV_UNREADABLE as u32);
        emit(s, &w, &op, Outcome::decision(Action::Deny as u8, reason::ARGV_UNREADABLE, 0, 0));
        return -EPERM;
    }
    if program == Program::Anonymous {
        let op = Op { always_record: true, ..op };
        return guarded(s, &w, &op, anonymous_rule(&w));
    }
    let found = lookup_path(s, w.policy, class::EXEC);
    let found = match_argv_rules(s, &w, found);
    decide(s, &w, &op, found)
}

/// mmap_file(struct file *file, unsigned long reqprot, unsigned long prot, unsigned long
/// flags): code mapped from a file. The dynamic loader run as a program (`ld.so X`) maps X
/// without an exec of X, so exec rules are applied here too, but only their refusals (deny,
/// and ask, which cannot be held here): an allow or a default still leaves the libraries every
/// program maps alone.
///
/// Inside execve the kernel maps the new program (decided at bprm_check_security, not again
/// here) and the interpreter its ELF header names (PT_INTERP), which no other hook decides:
/// the kernel opens it for exec (file_open leaves exec opens to bprm_check_security), and it
/// is never a bprm. A crafted ELF whose PT_INTERP names an exec-denied program, or a memfd
/// (`/proc/self/fd/N`), would run it. So inside execve only the new program is skipped; by
/// then the new mm is current and its `exe_file` is the new program. A refusal there comes
/// after the point of no return: the kernel kills the process, which is what a refusal means.
#[lsm(hook = "mmap_file")]
pub fn mmap_file(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let file: *const u8 = ctx.arg(0);
    let prot: u64 = ctx.arg(2);
    if file.is_null() || prot & PROT_EXEC == 0 || (is_exec_syscall(syscall_nr()) && is_new_program(file)) {
        return 0;
    }
    let Some(s) = scratch() else { return -EPERM };
    let op = Op { hook: Hook::MmapFile, aux: prot, holdable: false, always_record: true };
    // SAFETY: `file` is the file the kernel is about to map; the walk reads it through
    // bpf_probe_read_kernel only.
    match unsafe { program_object(s, file) } {
        Program::Path => {}
        Program::Unresolved => return unresolved(s, &w, &op),
        Program::Anonymous => return guarded(s, &w, &op, anonymous_rule(&w)),
    }
    let found = lookup_path(s, w.policy, class::EXEC);
    if found.rule != 0 && (found.action == Action::Deny as u8 || found.action == Action::Ask as u8) {
        return decide(s, &w, &op, found);
    }
    0
}
