//! What depends on the kernel's architecture: syscall numbers, which pt_regs register holds
//! which syscall argument, and the layout of `struct qstr` (the dentry name), which the dentry
//! walk reads without BTF.
//!
//! Only x86-64 is written. `bpf_target_arch` is set by `cargo xtask build-ebpf`
//! (`--cfg bpf_target_arch="x86_64"`) and, for host builds, by build.rs. A host build of
//! another architecture still type-checks the x86-64 module (it never runs).

#[cfg(any(bpf_target_arch = "x86_64", not(target_arch = "bpf")))]
mod x86_64;
#[cfg(any(bpf_target_arch = "x86_64", not(target_arch = "bpf")))]
pub use x86_64::*;

#[cfg(all(target_arch = "bpf", not(bpf_target_arch = "x86_64")))]
compile_error!(
    "guard-ebpf supports x86-64 kernels only: add an arch module with this kernel's syscall \
     numbers, pt_regs argument registers and struct qstr layout"
);
