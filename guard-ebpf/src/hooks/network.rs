//! Network: `socket_connect` and `socket_sendmsg` (a send that names its destination:
//! unconnected UDP, TCP Fast Open's `sendto(MSG_FASTOPEN)`), matched against the policy's
//! network rules (IPv4/IPv6 address and port) or, for abstract unix sockets, against its unix
//! rules by name. Unix sockets with a path are decided on the socket the kernel resolved, in
//! `unix` (`unix_stream_connect`, `unix_may_send`), never on the caller's spelling here.
use aya_ebpf::{helpers::generated::bpf_probe_read_kernel, macros::lsm, programs::LsmContext};
use core::ffi::c_void;
use guard_common::{class, Hook, RuleRef, Watched, MAX_NET_RULES};

use crate::decide::{decide, Op};
use crate::maps::{policy_slot, scratch, watched, Scratch, BUF_LEN, NET_RULES};
use crate::resolve::{lookup_path, NO_RULE};
use crate::task::{off, offsets, read_kernel};

const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// `sizeof(((struct sockaddr_un *)0)->sun_path)`.
const UNIX_PATH_MAX: i32 = 108;

/// socket_connect(struct socket *sock, struct sockaddr *address, int addrlen)
#[lsm(hook = "socket_connect")]
pub fn socket_connect(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let Some(s) = scratch() else { return -guard_common::EPERM };
    let (addr, addrlen): (*const u8, i32) = (ctx.arg(1), ctx.arg(2));
    decide_address(s, &w, Hook::Connect, addr, addrlen)
}

/// socket_sendmsg(struct socket *sock, struct msghdr *msg, int size): a send that names an
/// address is a connect to it (UDP `sendto`, TCP Fast Open, which connects inside
/// `tcp_sendmsg` and never passes `socket_connect`). `msg_name` is the kernel's copy of the
/// caller's address (`move_addr_to_kernel`), so it cannot change after this check. A send
/// without an address goes to the peer that `socket_connect` already decided.
#[lsm(hook = "socket_sendmsg")]
pub fn socket_sendmsg(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let msg: *const u8 = ctx.arg(1);
    let o = offsets();
    // SAFETY: `msg` is the msghdr the kernel passed this hook; plain integers read through
    // bpf_probe_read_kernel.
    let (name, namelen): (u64, i32) =
        unsafe { (read_kernel(msg.add(off(&o.msghdr_name))), read_kernel(msg.add(off(&o.msghdr_namelen)))) };
    if name == 0 || namelen <= 0 {
        return 0;
    }
    let Some(s) = scratch() else { return -guard_common::EPERM };
    decide_address(s, &w, Hook::SocketSendmsg, name as *const u8, namelen)
}

/// A connect or send to the kernel-copied `struct sockaddr` at `addr` (`addrlen` bytes; the
/// address buffer is a whole `sockaddr_storage`, and a short address is refused by the
/// protocol itself, so the fields are read whatever `addrlen` says).
#[inline(always)]
fn decide_address(s: &mut Scratch, w: &Watched, hook: Hook, addr: *const u8, addrlen: i32) -> i32 {
    // SAFETY: a plain integer read through bpf_probe_read_kernel.
    let family: u16 = unsafe { read_kernel(addr) };
    if family == AF_UNIX {
        return connect_unix(s, w, hook, addr, addrlen);
    }
    // Object: family (2) | port, network order (2) | IPv6 or IPv4-mapped address (16).
    s.buf = [0; BUF_LEN];
    // SAFETY: a plain integer read through bpf_probe_read_kernel.
    let port_be: u16 = unsafe { read_kernel(addr.add(2)) };
    s.buf[0] = family as u8;
    s.buf[2] = port_be as u8;
    s.buf[3] = (port_be >> 8) as u8;
    if family == AF_INET {
        s.buf[14] = 0xff;
        s.buf[15] = 0xff;
        // SAFETY: 4 bytes into s.buf[16..20]; the helper checks the source.
        unsafe { bpf_probe_read_kernel(s.buf.as_mut_ptr().add(16) as *mut c_void, 4, addr.add(4) as *const c_void) };
    } else if family == AF_INET6 {
        // SAFETY: 16 bytes into s.buf[4..20]; the helper checks the source.
        unsafe { bpf_probe_read_kernel(s.buf.as_mut_ptr().add(4) as *mut c_void, 16, addr.add(8) as *const c_void) };
    } else {
        return 0;
    }
    s.len = 20;
    s.truncated = 0;
    let port = u16::from_be(port_be);
    let found = match_net_rules(s, w, port);
    let op = Op { hook, aux: port as u64, holdable: true, always_record: false };
    decide(s, w, &op, found)
}

/// The first network rule of the tree's policy that matches the address in `s.buf[4..20]` and
/// `port`.
#[inline(always)]
fn match_net_rules(s: &Scratch, w: &Watched, port: u16) -> RuleRef {
    let base = policy_slot(w) * MAX_NET_RULES;
    for i in 0..MAX_NET_RULES {
        let Some(r) = NET_RULES.get(base + i) else { break };
        if r.used == 0 {
            break;
        }
        if r.port != 0 && r.port != port {
            continue;
        }
        let a0 = u64::from_ne_bytes(s.buf[4..12].try_into().unwrap_or([0; 8]));
        let a1 = u64::from_ne_bytes(s.buf[12..20].try_into().unwrap_or([0; 8]));
        let r0 = u64::from_ne_bytes(r.addr[0..8].try_into().unwrap_or([0; 8]));
        let r1 = u64::from_ne_bytes(r.addr[8..16].try_into().unwrap_or([0; 8]));
        let m0 = u64::from_ne_bytes(r.mask[0..8].try_into().unwrap_or([0; 8]));
        let m1 = u64::from_ne_bytes(r.mask[8..16].try_into().unwrap_or([0; 8]));
        if a0 & m0 == r0 && a1 & m1 == r1 {
            return RuleRef { rule: r.rule, action: r.action, _pad: [0; 3] };
        }
    }
    NO_RULE
}

/// A unix socket address. An abstract one ("@name", no filesystem object) is matched here by
/// its name. One with a path is left to `unix_stream_connect` / `unix_may_send`, which see the
/// socket the kernel resolved (see `hooks::unix`); deciding it here too would match the
/// caller's spelling and ask twice.
#[inline(always)]
fn connect_unix(s: &mut Scratch, w: &Watched, hook: Hook, addr: *const u8, addrlen: i32) -> i32 {
    let n = addrlen - 2;
    if n <= 1 || n > UNIX_PATH_MAX {
        // Unnamed (autobind) or malformed: af_unix refuses or autobinds; no peer named.
        return 0;
    }
    // SAFETY: a plain integer read through bpf_probe_read_kernel.
    let first: u8 = unsafe { read_kernel(addr.add(2)) };
    if first != 0 {
        return 0;
    }
    s.buf = [0; BUF_LEN];
    // Abstract socket: shown and matched as "@name".
    s.buf[0] = b'@';
    // SAFETY: at most 127 bytes into s.buf[1..]; the helper checks the source.
    unsafe {
        bpf_probe_read_kernel(
            s.buf.as_mut_ptr().add(1) as *mut c_void,
            // n <= UNIX_PATH_MAX; the mask shows the verifier a bound.
            (n as u32 - 1) & 127,
            addr.add(3) as *const c_void,
        )
    };
    s.len = n as u64;
    s.truncated = 0;
    let found = lookup_path(s, w.policy, class::UNIX);
    let op = Op { hook, aux: 0, holdable: true, always_record: false };
    decide(s, w, &op, found)
}
