//! Privileged operations without a path: capabilities, kernel modules (loading, autoload
//! requests, kexec), ptrace (attach and read) and the bpf() syscall. All but capabilities are
//! one rule per policy (`PolicyConf`). Mounts are in `namespaces`.
use aya_ebpf::{helpers::bpf_probe_read_kernel_str_bytes, macros::lsm, programs::LsmContext};
use guard_common::{reason, Action, Hook, PolicyConf, RuleRef, Watched, EPERM, MAX_CAPS};

use super::tamper;
use crate::decide::{decide, emit, Op, Outcome};
use crate::maps::{policy, policy_slot, scratch, watched, watched_task, CAP_RULES};
use crate::resolve::label;
use crate::task::{off, offsets, read_kernel, syscall_nr};

/// enum kernel_read_file_id / kernel_load_data_id: READING_MODULE = LOADING_MODULE = 2,
/// READING_KEXEC_IMAGE = LOADING_KEXEC_IMAGE = 3, READING_KEXEC_INITRAMFS = 4.
const MODULE_ID: u32 = 2;
const KEXEC_IMAGE_ID: u32 = 3;
const KEXEC_INITRAMFS_ID: u32 = 4;
/// ptrace modes (include/linux/ptrace.h).
const PTRACE_MODE_ATTACH: u32 = 0x02;
/// The kernel's own probe of access (e.g. whether /proc/PID/stat may show wchan), not an
/// access the caller asked for.
const PTRACE_MODE_NOAUDIT: u32 = 0x04;
/// x86-64 `ptrace` syscall: the only caller that returns this hook's error as is (mm_access,
/// /proc and pidfd_getfd turn it into a bool), so the only one a hold can restart.
const NR_PTRACE: u64 = 101;

/// An operation decided by one rule of the policy (`pick`), recorded under `name`.
#[inline(always)]
fn singleton(w: &Watched, hook: Hook, aux: u64, name: &[u8], pick: fn(&PolicyConf) -> RuleRef) -> i32 {
    // Fail closed: a watched task is never allowed because working memory or its policy
    // could not be read.
    let Some(s) = scratch() else { return -EPERM };
    let Some(conf) = policy(w) else { return -EPERM };
    label(s, name);
    let op = Op { hook, aux, holdable: true, always_record: true };
    decide(s, w, &op, pick(conf))
}

/// capable(const struct cred *cred, struct user_namespace *ns, int cap, unsigned int opts)
#[lsm(hook = "capable")]
pub fn capable(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let Some(s) = scratch() else { return -EPERM };
    let cap: i32 = ctx.arg(2);
    let cap = (cap as u32) % MAX_CAPS;
    let Some(r) = CAP_RULES.get(policy_slot(&w) * MAX_CAPS + cap) else { return -EPERM };
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

/// What a kernel_read_file / kernel_load_data id loads into the kernel: modules, and kexec
/// images (a new kernel replaces this one and every LSM). The tamper baseline refuses them
/// for every watched task whatever the policy's `module` rule says (see `tamper`).
#[inline(always)]
fn module_label(id: u32) -> Option<&'static [u8]> {
    match id {
        MODULE_ID => Some(b"kernel module"),
        KEXEC_IMAGE_ID => Some(b"kexec image"),
        KEXEC_INITRAMFS_ID => Some(b"kexec initramfs"),
        _ => None,
    }
}

/// kernel_read_file(struct file *file, enum kernel_read_file_id id, bool contents)
#[lsm(hook = "kernel_read_file")]
pub fn kernel_read_file(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let id: u32 = ctx.arg(1);
    let Some(name) = module_label(id) else { return 0 };
    tamper::refuse_kernel_code(&w, Hook::KernelReadFile, id as u64, name)
}

/// kernel_load_data(enum kernel_load_data_id id, bool contents)
#[lsm(hook = "kernel_load_data")]
pub fn kernel_load_data(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let id: u32 = ctx.arg(0);
    let Some(name) = module_label(id) else { return 0 };
    tamper::refuse_kernel_code(&w, Hook::KernelLoadData, id as u64, name)
}

/// kernel_module_request(char *kmod_name): an autoload (`request_module`, e.g. by
/// `socket(AF_<rare>)`) makes the kernel run modprobe outside the tree. Refused for every
/// watched task (the tamper baseline, see `tamper`); the object is the requested name
/// ("net-pf-5").
#[lsm(hook = "kernel_module_request")]
pub fn kernel_module_request(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let Some(s) = scratch() else { return -EPERM };
    let name: *const u8 = ctx.arg(0);
    s.buf[0] = 0;
    // SAFETY: the helper checks the kernel source address; the destination is a slice of buf.
    let r = unsafe { bpf_probe_read_kernel_str_bytes(name, &mut s.buf[..64]) };
    match r {
        Ok(b) if !b.is_empty() => {
            s.len = b.len() as u64;
            s.truncated = 0;
        }
        _ => label(s, b"module request"),
    }
    // The tamper baseline: no watched tree gets kernel code loaded, whatever its module rule.
    tamper::refuse(s, &w, Hook::KernelModuleRequest, 0)
}

/// ptrace_access_check(struct task_struct *child, unsigned int mode): attaching (ptrace,
/// pidfd_getfd, process_vm_*) and reading (/proc/PID/environ, mem, maps, fd, ...).
///
/// - A target in the caller's own tree (same `Watched.root`): allowed, ordinary debugging.
/// - A target in another watched tree: the policy's `ptrace` rule if it has one, else denied
///   (`other_tree`); a tree never reaches into another tree, whose policy may be looser.
/// - A target outside every tree: the `ptrace` rule, else denied whatever the policy default
///   (`safe_default`). A tree may trace only inside itself: an attach to the user's shell or
///   editor would let it run code outside every tree, and a read of their environment takes
///   the tokens held there, so neither may follow a permissive default. Reads are recorded
///   when not allowed (they are frequent: `lsof`), attaches always.
///
/// The kernel's own probes (`PTRACE_MODE_NOAUDIT`) get the same decision without a record.
/// Only the ptrace syscall can be held; elsewhere an ask is denied at once (`unholdable`).
#[lsm(hook = "ptrace_access_check")]
pub fn ptrace_access_check(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let mode: u32 = ctx.arg(1);
    // The tamper baseline first: guard's own processes, whatever the rules say.
    if let Some(r) = tamper::check_ptrace(&w, ctx.arg::<*const u8>(0), mode) {
        return r;
    }
    // SAFETY: argument 0 is the target task; its pid is read through bpf_probe_read_kernel.
    let target: u32 = unsafe { read_kernel(ctx.arg::<*const u8>(0).add(off(&offsets().task_pid))) };
    let other_tree = match watched_task(target) {
        Some(t) if t.root == w.root => return 0,
        Some(_) => true,
        None => false,
    };
    let Some(s) = scratch() else { return -EPERM };
    let Some(conf) = policy(&w) else { return -EPERM };
    let rule = conf.ptrace;
    let attach = mode & PTRACE_MODE_ATTACH != 0;
    if mode & PTRACE_MODE_NOAUDIT != 0 {
        // Outside the caller's tree and no rule: denied (see above), quietly.
        let action = if rule.rule != 0 { rule.action } else { Action::Deny as u8 };
        return if action == Action::Allow as u8 || action == Action::Audit as u8 { 0 } else { -EPERM };
    }
    label(s, if attach { b"ptrace attach" } else { b"ptrace read" });
    let op = Op {
        hook: Hook::Ptrace,
        aux: target as u64,
        holdable: attach && syscall_nr() == NR_PTRACE,
        always_record: attach || other_tree,
    };
    if rule.rule == 0 {
        let why = if other_tree { reason::OTHER_TREE } else { reason::SAFE_DEFAULT };
        emit(s, &w, &op, Outcome::decision(Action::Deny as u8, why, 0, 0));
        return -EPERM;
    }
    decide(s, &w, &op, rule)
}

/// bpf(int cmd, union bpf_attr *attr, unsigned int size, bool kernel)
#[lsm(hook = "bpf")]
pub fn bpf(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let cmd: i32 = ctx.arg(0);
    if let Some(r) = tamper::check_bpf(&w, cmd, ctx.arg::<*const u8>(1)) {
        return r;
    }
    singleton(&w, Hook::Bpf, cmd as u64, b"bpf", |c| c.bpf)
}
