//! guard's kernel side: LSM hooks that decide privileged operations of watched process trees.
//!
//! Every hook starts with one hash lookup of the current thread in `WATCHED`; a thread outside
//! every tree returns at once. For watched threads the hook resolves the object the kernel is
//! about to act on (a path from `bpf_d_path` or a dentry walk, an address, a capability...),
//! finds the first matching rule, and allows, denies, records, or holds the syscall.
//!
//! A hold sends SIGSTOP to the calling thread and returns -ERESTARTNOINTR: the thread stops
//! before it reaches user space, and when the agent resumes it the kernel restarts the same
//! syscall, which comes back here and consumes the verdict the agent left in `VERDICTS`.
//!
//! Trees start in two ways: userspace puts a root in `WATCHED` (`run`, registrations, adopting
//! what already runs), or an exec by a task outside every tree matches a selector of the host
//! daemon (`SELECTORS`: resolved program path or name at bprm_check_security, cgroup and uid
//! at sched_process_exec), and the exec's task becomes the root of a new tree before the new
//! program runs. With no selector configured this costs one array lookup per exec.
//!
//! Modules, along the data path:
//! - [`maps`]: every map, the per-CPU scratch area, the watched-thread lookup;
//! - [`task`]: reads of kernel memory and of the current task (offsets come from BTF);
//! - [`arch`]: what depends on the kernel's architecture (syscall numbers, registers);
//! - [`resolve`]: the object of an operation (path by `bpf_d_path` or a dentry walk) and the
//!   path rule lookup;
//! - [`decide`]: rule or default -> allow, deny, record or hold; events on the ring buffer;
//! - [`tree`]: which tasks are watched (every new task incl. io_uring threads, exec, exit, the
//!   task limit);
//! - [`uring`]: io_uring's own hooks (SQPOLL, personalities) for `io_uring = "deny"`;
//! - [`select`]: selectors that start a new tree at an exec;
//! - [`argv`]: argv capture at exec and the exec rules with argv conditions;
//! - [`hooks`]: the LSM programs, one module per family (exec, files, network, privileged).
//!
//! The crate is a workspace member so that rustfmt and clippy see it; only the build for
//! `bpfel-unknown-none` (`cargo xtask build-ebpf`) is the real object. On the host it compiles
//! to a stub binary.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

mod arch;
mod argv;
mod decide;
mod hooks;
mod maps;
mod resolve;
mod select;
mod task;
mod tree;
mod uring;

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The host build only type-checks the programs (for clippy); they run in the kernel only.
#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("guard-ebpf is an eBPF object: build it with `cargo xtask build-ebpf`");
    std::process::exit(1);
}
