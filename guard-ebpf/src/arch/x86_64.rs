//! x86-64: syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl), syscall argument
//! registers (rdi, rsi, rdx, ...) and `struct qstr` on a 64-bit little-endian kernel.
use crate::task::{off, offsets};

const NR_EXECVE: u64 = 59;
const NR_EXECVEAT: u64 = 322;
/// An ask inside io_uring_enter (inline submission) cannot be held: the -ERESTARTNOINTR would
/// land in the completion queue.
pub const NR_IO_URING_ENTER: u64 = 426;

/// `struct qstr { union { struct { u32 hash; u32 len; }; u64 hash_len; }; const unsigned char
/// *name; }`: where `len` and `name` are inside it.
pub const QSTR_LEN: usize = 4;
pub const QSTR_NAME: usize = 8;

/// Whether `nr` is execve or execveat (the kernel maps the new program and its interpreter
/// inside them, after bprm_check_security decided the exec).
#[inline(always)]
pub fn is_exec_syscall(nr: u64) -> bool {
    nr == NR_EXECVE || nr == NR_EXECVEAT
}

/// Offset in `struct pt_regs` of the register that holds the user `argv` pointer of the exec
/// syscall `nr`: execve(filename, argv, envp) -> 2nd argument (rsi); execveat(dirfd, filename,
/// argv, envp, flags) -> 3rd (rdx). None for another syscall.
#[inline(always)]
pub fn exec_argv_reg(nr: u64) -> Option<usize> {
    if nr == NR_EXECVE {
        Some(off(&offsets().regs_si))
    } else if nr == NR_EXECVEAT {
        Some(off(&offsets().regs_dx))
    } else {
        None
    }
}
