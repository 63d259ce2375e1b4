//! Workload ops of the connect and outside-the-tree escape tests (issue 9 items 6 and 7):
//! sends that name their destination, unix datagrams, module autoload, kexec, pidfd_getfd.
//! Each prints `RESULT ok|errno=N OP` like the ops in `ops`.

use crate::ops::check;
use nix::errno::Errno;
use std::net::SocketAddr;

/// Runs the op `args[0]` if it is one of these; None for an op this module does not know.
pub fn run(args: &[String]) -> Option<Result<(), Errno>> {
    let a = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    Some(match a(0) {
        "tfo-sendto" => tfo_sendto(a(1)),
        "udp-sendto" => udp_sendto(a(1), false),
        "udp6-sendto" => udp_sendto(a(1), true),
        "udp-sendmsg" => udp_sendmsg(a(1)),
        "unix-sendto" => unix_sendto(a(1)),
        "socket-family" => socket_family(a(1).parse().unwrap_or(0)),
        "kexec-unload" => kexec_unload(),
        "pidfd-getfd" => pidfd_getfd(a(1).parse().unwrap_or(0), a(2).parse().unwrap_or(0)),
        _ => return None,
    })
}

/// `sockaddr_in`/`sockaddr_in6` bytes of `addr`; with `v6`, an IPv4 address is written as
/// IPv4-mapped IPv6 (another spelling of the same destination).
fn sockaddr(addr: SocketAddr, v6: bool) -> (libc::sockaddr_storage, libc::socklen_t, i32) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let p = &mut ss as *mut libc::sockaddr_storage as *mut u8;
    match addr {
        SocketAddr::V4(a) if !v6 => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write(p as *mut libc::sockaddr_in, sin) };
            (ss, std::mem::size_of::<libc::sockaddr_in>() as u32, libc::AF_INET)
        }
        _ => {
            let ip = match addr {
                SocketAddr::V4(a) => a.ip().to_ipv6_mapped(),
                SocketAddr::V6(a) => *a.ip(),
            };
            // SAFETY: all-zero is a valid sockaddr_in6.
            let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sin6.sin6_family = libc::AF_INET6 as u16;
            sin6.sin6_port = addr.port().to_be();
            sin6.sin6_addr.s6_addr = ip.octets();
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write(p as *mut libc::sockaddr_in6, sin6) };
            (ss, std::mem::size_of::<libc::sockaddr_in6>() as u32, libc::AF_INET6)
        }
    }
}

fn parse(addr: &str) -> Result<SocketAddr, Errno> {
    addr.parse().map_err(|_| Errno::EINVAL)
}

/// `socket(family, type)`, closed on drop.
struct Fd(i32);

impl Fd {
    fn socket(family: i32, ty: i32) -> Result<Fd, Errno> {
        // SAFETY: a plain syscall.
        let fd = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, 0) };
        check(fd as i64).map(|()| Fd(fd))
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: the fd was returned by the kernel and is closed once, here.
        unsafe { libc::close(self.0) };
    }
}

fn sendto(fd: &Fd, data: &[u8], flags: i32, ss: &libc::sockaddr_storage, len: libc::socklen_t) -> Result<(), Errno> {
    // SAFETY: data and ss are valid for the lengths passed.
    let rc = unsafe {
        libc::sendto(fd.0, data.as_ptr() as *const _, data.len(), flags, ss as *const _ as *const libc::sockaddr, len)
    };
    check(rc as i64)
}

/// TCP Fast Open: `sendto(MSG_FASTOPEN)` on a fresh TCP socket connects without `connect()`.
fn tfo_sendto(addr: &str) -> Result<(), Errno> {
    let addr = parse(addr)?;
    let (ss, len, family) = sockaddr(addr, false);
    let fd = Fd::socket(family, libc::SOCK_STREAM)?;
    sendto(&fd, b"GET / HTTP/1.0\r\n\r\n", libc::MSG_FASTOPEN, &ss, len)?;
    // Give the handshake a moment, so that a connection that got through reaches the listener.
    std::thread::sleep(std::time::Duration::from_millis(200));
    Ok(())
}

/// An unconnected UDP socket's `sendto`; with `v6`, from an IPv6 socket (IPv4 as mapped).
fn udp_sendto(addr: &str, v6: bool) -> Result<(), Errno> {
    let addr = parse(addr)?;
    let (ss, len, family) = sockaddr(addr, v6);
    let fd = Fd::socket(family, libc::SOCK_DGRAM)?;
    sendto(&fd, b"escape", 0, &ss, len)
}

/// `sendmsg` with `msg_name` on an unconnected UDP socket.
fn udp_sendmsg(addr: &str) -> Result<(), Errno> {
    let addr = parse(addr)?;
    let (mut ss, len, family) = sockaddr(addr, false);
    let fd = Fd::socket(family, libc::SOCK_DGRAM)?;
    let mut data = *b"escape";
    let mut iov = libc::iovec { iov_base: data.as_mut_ptr() as *mut _, iov_len: data.len() };
    // SAFETY: all-zero is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = &mut ss as *mut _ as *mut _;
    msg.msg_namelen = len;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    // SAFETY: msg points to valid buffers for its lengths.
    check(unsafe { libc::sendmsg(fd.0, &msg, 0) } as i64)
}

/// A datagram to the unix socket at `path` (any spelling) from an unbound socket.
fn unix_sendto(path: &str) -> Result<(), Errno> {
    let s = std::os::unix::net::UnixDatagram::unbound().map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(5)))?;
    s.send_to(b"escape", path).map(|_| ()).map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(5)))
}

/// `socket(family, SOCK_DGRAM)`: for a family no module registered, the kernel asks modprobe
/// for "net-pf-N" (request_module). The op reports the socket's own result.
fn socket_family(family: i32) -> Result<(), Errno> {
    Fd::socket(family, libc::SOCK_DGRAM).map(drop)
}

/// `kexec_load(0, 0, NULL, 0)`: unloads any loaded kexec image (harmless), after the kernel's
/// kernel_load_data(LOADING_KEXEC_IMAGE) check.
fn kexec_unload() -> Result<(), Errno> {
    // SAFETY: no segments: the kernel reads no user memory.
    check(unsafe { libc::syscall(libc::SYS_kexec_load, 0u64, 0u64, 0u64, 0u64) })
}

/// `pidfd_getfd(pidfd_open(pid), fd)`: takes a copy of another process's file descriptor.
fn pidfd_getfd(pid: i32, fd: i32) -> Result<(), Errno> {
    // SAFETY: plain syscalls on integers.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    check(pidfd)?;
    let pidfd = Fd(pidfd as i32);
    // SAFETY: plain syscall on integers.
    let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.0, fd, 0) };
    check(got)?;
    drop(Fd(got as i32));
    Ok(())
}
