//! `file_receive`: a file descriptor arriving over a unix socket (SCM_RIGHTS) or taken with
//! pidfd_getfd. A process outside the tree can open what the tree may not and hand it over;
//! the received file is decided by the file rules as an open of the same object with the
//! file's own access mode (read and/or write from `f_mode`; an O_PATH descriptor as a read).
//!
//! Not holdable: the hook runs inside recvmsg after the message has left the socket queue, and
//! its error only drops the descriptor (the kernel sets MSG_CTRUNC and recvmsg succeeds), so a
//! restarted syscall would not see the same message again. An ask is denied at once and
//! recorded as `unholdable`.
//!
//! The object is the file's global path by the dentry walk (`bpf_d_path` is not allowed in
//! this hook). Kernel-internal objects (pipes, sockets, memfds, anon inodes: their mount is
//! one of the kernel's internal mounts) have no path any rule can name: the policy's default
//! decides them, as an open of `/proc/self/fd/N` of a pipe is. A file on a detached mount, or
//! a path too long or deep to walk whole, is denied as `unresolvable`.
use aya_ebpf::{macros::lsm, programs::LsmContext};
use guard_common::{class, Hook, EPERM};

use super::tamper;
use crate::decide::{decide, Op};
use crate::maps::{scratch, watched};
use crate::resolve::{label, lookup_path, unresolvable, walk_path_into, MNT_NS_INTERNAL, NO_RULE};
use crate::task::{off, offsets, read_kernel};

/// `f_mode` bits (include/linux/fs.h).
const FMODE_READ: u32 = 0x1;
const FMODE_WRITE: u32 = 0x2;

/// file_receive(struct file *file)
#[lsm(hook = "file_receive")]
pub fn file_receive(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let Some(s) = scratch() else { return -EPERM };
    let file: *const u8 = ctx.arg(0);
    let o = offsets();
    // SAFETY: `f_mode` is a u32 inside the file the kernel passed, by the offset from its BTF
    // (read through bpf_probe_read_kernel).
    let mode: u32 = unsafe { read_kernel(file.add(off(&o.file_f_mode))) };
    let write = mode & FMODE_WRITE != 0;
    let op = Op {
        hook: Hook::FileReceive,
        aux: (mode & (FMODE_READ | FMODE_WRITE)) as u64,
        holdable: false,
        always_record: false,
    };
    // SAFETY: `f_path` is inside the file, by the BTF offset; the walk reads kernel memory
    // through bpf_probe_read_kernel only.
    let f_path = unsafe { file.add(off(&o.file_f_path)) };
    // SAFETY: as above: `f_path` is the received file's `struct path`.
    unsafe { walk_path_into(s, f_path) };
    if s.truncated == 2 {
        // The walk ended outside every mount namespace: a kernel-internal object, or a file on
        // a detached mount (whose path there is not a global path: unresolvable).
        // SAFETY: pointer fields read through bpf_probe_read_kernel at the BTF offsets; the
        // `struct mount` contains the `struct vfsmount` at `mount_mnt`.
        let ns: u64 = unsafe {
            let vfsmnt: u64 = read_kernel(f_path.add(off(&o.path_mnt)));
            let m = (vfsmnt as *const u8).wrapping_sub(off(&o.mount_mnt));
            read_kernel(m.add(off(&o.mount_mnt_ns)))
        };
        if ns != MNT_NS_INTERNAL {
            return unresolvable(s, &w, &op);
        }
        label(s, b"(kernel-internal file: pipe, socket, memfd or anon inode)");
        return decide(s, &w, &op, NO_RULE);
    }
    if s.truncated != 0 {
        return unresolvable(s, &w, &op);
    }
    // The tamper baseline: no writable descriptor of guard's own files, whoever opened it.
    if write {
        if let Some(r) = tamper::check_path(s, &w, Hook::FileReceive, op.aux, false) {
            return r;
        }
        let found = lookup_path(s, w.policy, class::WRITE);
        if found.rule != 0 || mode & FMODE_READ == 0 {
            return decide(s, &w, &op, found);
        }
    }
    let found = lookup_path(s, w.policy, class::READ);
    decide(s, &w, &op, found)
}
