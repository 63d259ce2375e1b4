//! Reads of kernel memory and of the current task. Kernel struct offsets are not compiled in:
//! the agent reads them from the running kernel's BTF and writes them into `OFFSETS` (frozen
//! .rodata) before loading, since Rust eBPF cannot emit CO-RE relocations.
use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid, bpf_get_current_task_btf,
    generated::{bpf_probe_read_kernel, bpf_task_pt_regs},
};
use core::ffi::c_void;
use guard_common::Offsets;

#[no_mangle]
static OFFSETS: Offsets = Offsets {
    file_f_path: 0,
    file_f_mode: 0,
    binprm_file: 0,
    task_pid: 0,
    task_tgid: 0,
    task_real_parent: 0,
    task_flags: 0,
    path_mnt: 0,
    path_dentry: 0,
    dentry_parent: 0,
    dentry_name: 0,
    mount_mnt: 0,
    mount_parent: 0,
    mount_mountpoint: 0,
    vfsmount_root: 0,
    regs_si: 0,
    regs_dx: 0,
    regs_orig_ax: 0,
    _pad: 0,
    mount_mnt_ns: 0,
    mnt_ns_seq: 0,
    unix_sock_path: 0,
    socket_sk: 0,
    msghdr_name: 0,
    msghdr_namelen: 0,
    dentry_sb: 0,
    sb_mounts: 0,
    mount_instance: 0,
    task_nsproxy: 0,
    nsproxy_mnt_ns: 0,
    mount_next: 0,
    sb_mounts_layout: 0,
    dentry_hash_pprev: 0,
    binprm_argc: 0,
    binprm_filename: 0,
    binprm_interp: 0,
    task_mm: 0,
    mm_arg_start: 0,
    mm_start_stack: 0,
    mm_exe_file: 0,
};

/// Upper bound of tasks reserved by all watched trees, set by the agent below WATCHED's
/// capacity: a fork past it is refused (task_alloc), so no child can escape because the map is
/// full.
#[no_mangle]
static MAX_TASKS: u64 = 0;

/// Upper bound of tasks in one tree (`--max-tree-tasks`), so one tree cannot use up another's
/// budget.
#[no_mangle]
static MAX_TREE_TASKS: u64 = 0;

/// Task flag of io_uring worker threads: a hold there cannot restart anything.
pub const PF_IO_WORKER: u32 = 0x10;

/// One offset from `OFFSETS`. A volatile read: the static is all zeros at compile time and
/// only the loader fills it in, so the compiler must not fold the value.
#[inline(always)]
pub fn off(f: &u32) -> usize {
    // SAFETY: `f` is a reference, so valid and aligned for a read.
    unsafe { core::ptr::read_volatile(f) as usize }
}

#[inline(always)]
pub fn offsets() -> &'static Offsets {
    &OFFSETS
}

/// The task limit the agent set (see `MAX_TASKS`).
#[inline(always)]
pub fn max_tasks() -> u64 {
    // SAFETY: a reference to a static: valid and aligned. Volatile for the reason given at `off`.
    unsafe { core::ptr::read_volatile(&MAX_TASKS) }
}

/// The per-tree task limit the agent set (see `MAX_TREE_TASKS`).
#[inline(always)]
pub fn max_tree_tasks() -> u64 {
    // SAFETY: a reference to a static: valid and aligned. Volatile for the reason given at `off`.
    unsafe { core::ptr::read_volatile(&MAX_TREE_TASKS) }
}

/// Reads a `T` from kernel memory at `src` with `bpf_probe_read_kernel`; all zeros if the read
/// faults.
///
/// # Safety
/// `T` must be valid for any bit pattern (plain integers, arrays of them).
#[inline(always)]
pub unsafe fn read_kernel<T: Copy>(src: *const u8) -> T {
    let mut v = core::mem::MaybeUninit::<T>::zeroed();
    // SAFETY: the helper writes at most size_of::<T>() bytes into `v`, and checks `src` itself.
    unsafe {
        bpf_probe_read_kernel(v.as_mut_ptr() as *mut c_void, core::mem::size_of::<T>() as u32, src as *const c_void);
    }
    // SAFETY: `v` is zeroed or filled by the read; the caller guarantees any bytes are a `T`.
    unsafe { v.assume_init() }
}

#[inline(always)]
pub fn current_tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

/// The current thread group id (the process id).
#[inline(always)]
pub fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// The thread group id of the current task's real parent.
#[inline(always)]
pub fn parent_tgid() -> u32 {
    // SAFETY: the current task is valid while its program runs; both reads go through
    // bpf_probe_read_kernel and read plain integers.
    unsafe {
        let task = bpf_get_current_task_btf() as *const u8;
        let parent: u64 = read_kernel(task.add(off(&offsets().task_real_parent)));
        read_kernel((parent as *const u8).add(off(&offsets().task_tgid)))
    }
}

/// The current syscall's registers (as the task entered the kernel).
#[inline(always)]
pub fn user_regs() -> *const u8 {
    // SAFETY: bpf_task_pt_regs accepts the BTF pointer of the current task.
    unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) as *const u8 }
}

/// The number of the syscall being served (orig_ax).
#[inline(always)]
pub fn syscall_nr() -> u64 {
    // SAFETY: reads a plain integer through bpf_probe_read_kernel.
    unsafe { read_kernel(user_regs().add(off(&offsets().regs_orig_ax))) }
}

/// A syscall argument register of the current syscall, at `reg` in `struct pt_regs`.
#[inline(always)]
pub fn syscall_reg(reg: usize) -> u64 {
    // SAFETY: reads a plain integer through bpf_probe_read_kernel.
    unsafe { read_kernel(user_regs().add(reg)) }
}

#[inline(always)]
pub fn task_flags() -> u32 {
    // SAFETY: the current task is valid while its program runs; reads a plain integer.
    unsafe {
        let task = bpf_get_current_task_btf() as *const u8;
        read_kernel(task.add(off(&offsets().task_flags)))
    }
}
