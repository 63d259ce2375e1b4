//! Unix sockets with a path: `unix_stream_connect` and `unix_may_send`, matched against the
//! policy's unix rules on the socket the kernel found, not on the caller's spelling.
//!
//! By the time these hooks run the kernel has resolved the caller's `sun_path` (relative to the
//! cwd, through symlinks, `//` and `..`, in the caller's mount namespace) to the listening or
//! receiving socket. Its bound path (`unix_sk(other)->path`, a `struct path` like any file's)
//! is walked into the global path the rules are written in, so `/var/run/x.sock` through the
//! `/var/run -> /run` link, `./x.sock`, `//x.sock` and a symlink to the socket all reach the same
//! rule. `bpf_d_path` is not allowed in these hooks, hence the dentry walk.
//!
//! Abstract sockets (`@name`) have no path: their name is the object, and `socket_connect` /
//! `socket_sendmsg` decide them (see `network`). A socket with a path whose path cannot be read
//! or does not fit is denied for a watched task, recorded as `unresolved_peer`.
use aya_ebpf::{helpers::generated::bpf_probe_read_kernel, macros::lsm, programs::LsmContext};
use core::ffi::c_void;
use guard_common::{class, reason, Action, Hook, Watched};

use super::tamper;
use crate::decide::{decide, emit, Op, Outcome};
use crate::maps::{scratch, watched};
use crate::resolve::{label, lookup_path, walk_path_into};
use crate::task::{off, offsets};
use guard_common::EPERM;

/// Reads a kernel pointer at `src`; None if the read failed.
///
/// # Safety
/// None beyond the helper's: `bpf_probe_read_kernel` checks `src` itself.
#[inline(always)]
unsafe fn read_ptr(src: *const u8) -> Option<u64> {
    let mut v: u64 = 0;
    // SAFETY: 8 bytes into a local u64; the helper checks the source.
    let rc = unsafe { bpf_probe_read_kernel(&mut v as *mut u64 as *mut c_void, 8, src as *const c_void) };
    if rc != 0 {
        None
    } else {
        Some(v)
    }
}

/// Decides a unix connect or send whose peer is the `struct sock *` (a `unix_sock`) at `other`.
#[inline(always)]
fn decide_peer(w: &Watched, hook: Hook, other: *const u8) -> i32 {
    let Some(s) = scratch() else { return -EPERM };
    let o = offsets();
    // `struct unix_sock` starts with its `struct sock`, so `other` is the unix_sock.
    // SAFETY: `other` is a socket the kernel passed this hook (holding a reference and its
    // state lock); the offset comes from the kernel's BTF.
    let path = unsafe { other.add(off(&o.unix_sock_path)) };
    // SAFETY: reads a pointer field through bpf_probe_read_kernel.
    let dentry = unsafe { read_ptr(path.add(off(&o.path_dentry))) };
    let op = Op { hook, aux: 0, holdable: true, always_record: false };
    let Some(dentry) = dentry else {
        label(s, b"unix socket (unreadable)");
        emit(s, w, &op, Outcome::decision(Action::Deny as u8, reason::UNRESOLVED_PEER, 0, 0));
        return -EPERM;
    };
    if dentry == 0 {
        // An abstract (or autobound) socket: no path; decided by its name at socket_connect /
        // socket_sendmsg.
        return 0;
    }
    // SAFETY: `path` is the peer's `struct path`, read only through bpf_probe_read_kernel.
    let ok = unsafe { walk_path_into(s, path) };
    if !ok || s.truncated != 0 {
        emit(s, w, &op, Outcome::decision(Action::Deny as u8, reason::UNRESOLVED_PEER, 0, 0));
        return -EPERM;
    }
    // guard's admin socket: refused to every watched task at connect time (no pid to race).
    if let Some(r) = tamper::check_path(s, w, hook, 0, false) {
        return r;
    }
    let found = lookup_path(s, w.policy, class::UNIX);
    decide(s, w, &op, found)
}

/// unix_stream_connect(struct sock *sock, struct sock *other, struct sock *newsk)
#[lsm(hook = "unix_stream_connect")]
pub fn unix_stream_connect(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    decide_peer(&w, Hook::UnixStreamConnect, ctx.arg::<*const u8>(1))
}

/// unix_may_send(struct socket *sock, struct socket *other): a datagram connect, or a send to
/// an address or to the connected peer.
#[lsm(hook = "unix_may_send")]
pub fn unix_may_send(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let other: *const u8 = ctx.arg(1);
    // SAFETY: `other` is the peer's `struct socket`; its `sk` is read through
    // bpf_probe_read_kernel.
    let sk = unsafe { read_ptr(other.add(off(&offsets().socket_sk))) };
    match sk {
        Some(sk) if sk != 0 => decide_peer(&w, Hook::UnixMaySend, sk as *const u8),
        _ => {
            let Some(s) = scratch() else { return -EPERM };
            label(s, b"unix socket (unreadable)");
            let op = Op { hook: Hook::UnixMaySend, aux: 0, holdable: false, always_record: true };
            emit(s, &w, &op, Outcome::decision(Action::Deny as u8, reason::UNRESOLVED_PEER, 0, 0));
            -EPERM
        }
    }
}
