//! Privileged operations without a path: capabilities, kernel modules, ptrace attach and the
//! bpf() syscall. All but capabilities are one rule per policy (`PolicyConf`). Mounts are in
//! `namespaces`.
use aya_ebpf::{macros::lsm, programs::LsmContext};
use guard_common::{Hook, PolicyConf, RuleRef, Watched, MAX_CAPS};

use crate::decide::{decide, Op};
use crate::maps::{policy, policy_slot, scratch, watched, watched_task, CAP_RULES};
use crate::resolve::label;
use crate::task::{off, offsets, read_kernel};

/// enum kernel_read_file_id / kernel_load_data_id: READING_MODULE = LOADING_MODULE = 2.
const MODULE_ID: u32 = 2;
/// ptrace modes: only attaching (not /proc reads) is a privileged operation.
const PTRACE_MODE_ATTACH: u32 = 0x02;

/// An operation decided by one rule of the policy (`pick`), recorded under `name`.
#[inline(always)]
fn singleton(w: &Watched, hook: Hook, aux: u64, name: &[u8], pick: fn(&PolicyConf) -> RuleRef) -> i32 {
    let Some(s) = scratch() else { return 0 };
    let Some(conf) = policy(w) else { return 0 };
    label(s, name);
    let op = Op { hook, aux, holdable: true, always_record: true };
    decide(s, w, &op, pick(conf))
}

/// capable(const struct cred *cred, struct user_namespace *ns, int cap, unsigned int opts)
#[lsm(hook = "capable")]
pub fn capable(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let Some(s) = scratch() else { return 0 };
    let cap: i32 = ctx.arg(2);
    let cap = (cap as u32) % MAX_CAPS;
    let Some(r) = CAP_RULES.get(policy_slot(&w) * MAX_CAPS + cap) else { return 0 };
    if r.rule == 0 {
        // No rule names this capability: the kernel's own checks decide (no record; capable()
        // is called far too often for that).
        return 0;
    }
    let r = *r;
    label(s, b"capability");
    // capable() returns a bool to its callers, so -ERESTARTNOINTR would become a plain
    // failure: an ask here is decided at once (denied, recorded as unholdable).
    let op = Op { hook: Hook::Capable, aux: cap as u64, holdable: false, always_record: true };
    decide(s, &w, &op, r)
}

/// kernel_read_file(struct file *file, enum kernel_read_file_id id, bool contents)
#[lsm(hook = "kernel_read_file")]
pub fn kernel_read_file(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let id: u32 = ctx.arg(1);
    if id != MODULE_ID {
        return 0;
    }
    singleton(&w, Hook::KernelReadFile, id as u64, b"kernel module", |c| c.module)
}

/// kernel_load_data(enum kernel_load_data_id id, bool contents)
#[lsm(hook = "kernel_load_data")]
pub fn kernel_load_data(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let id: u32 = ctx.arg(0);
    if id != MODULE_ID {
        return 0;
    }
    singleton(&w, Hook::KernelLoadData, id as u64, b"kernel module", |c| c.module)
}

/// ptrace_access_check(struct task_struct *child, unsigned int mode)
#[lsm(hook = "ptrace_access_check")]
pub fn ptrace_access_check(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let mode: u32 = ctx.arg(1);
    if mode & PTRACE_MODE_ATTACH == 0 {
        return 0;
    }
    // SAFETY: argument 0 is the target task; its pid is read through bpf_probe_read_kernel.
    let target: u32 = unsafe { read_kernel(ctx.arg::<*const u8>(0).add(off(&offsets().task_pid))) };
    // Tracing inside one's own tree is ordinary debugging, not an escape.
    if watched_task(target).is_some() {
        return 0;
    }
    singleton(&w, Hook::Ptrace, target as u64, b"ptrace", |c| c.ptrace)
}

/// bpf(int cmd, union bpf_attr *attr, unsigned int size, bool kernel)
#[lsm(hook = "bpf")]
pub fn bpf(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let cmd: i32 = ctx.arg(0);
    singleton(&w, Hook::Bpf, cmd as u64, b"bpf", |c| c.bpf)
}
