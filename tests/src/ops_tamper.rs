//! Workload ops of the tamper tests (`tests/src/tamper.rs`): what a root tree would do to
//! switch guard off. Also the test side's reading of guard's BPF object ids from its pins.

use crate::ops::{check, cstr};
use nix::errno::Errno;

/// An fd closed on drop.
struct Fd(i32);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: the fd was returned by the kernel to this process and is closed once.
        unsafe { libc::close(self.0) };
    }
}

const BPF_OBJ_GET: i64 = 7;
const BPF_PROG_GET_FD_BY_ID: i64 = 13;
const BPF_MAP_GET_FD_BY_ID: i64 = 14;
const BPF_OBJ_GET_INFO_BY_FD: i64 = 15;
const BPF_LINK_GET_FD_BY_ID: i64 = 30;

fn bpf(cmd: i64, attr: &mut [u64; 16]) -> Result<Fd, Errno> {
    // SAFETY: attr is a readable, writable buffer of the size passed, zeroed past the fields
    // the command reads.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(attr)) };
    check(rc)?;
    Ok(Fd(rc as i32))
}

/// BPF_OBJ_GET of a pin.
fn obj_get(path: &str) -> Result<Fd, Errno> {
    let p = cstr(path);
    let mut attr = [0u64; 16];
    attr[0] = p.as_ptr() as u64;
    bpf(BPF_OBJ_GET, &mut attr)
}

/// BPF_{PROG,MAP,LINK}_GET_FD_BY_ID.
fn get_fd_by_id(kind: &str, id: u32) -> Result<Fd, Errno> {
    let cmd = match kind {
        "prog" => BPF_PROG_GET_FD_BY_ID,
        "map" => BPF_MAP_GET_FD_BY_ID,
        "link" => BPF_LINK_GET_FD_BY_ID,
        _ => return Err(Errno::EINVAL),
    };
    let mut attr = [0u64; 16];
    attr[0] = id as u64;
    bpf(cmd, &mut attr)
}

/// The first `N` u32 of an object's info (map: type, id; link: type, id, prog_id).
fn info<const N: usize>(fd: &Fd) -> Result<[u32; N], Errno> {
    let mut out = [0u32; 64];
    let mut attr = [0u64; 16];
    attr[0] = fd.0 as u64 | ((std::mem::size_of_val(&out) as u64) << 32);
    attr[1] = out.as_mut_ptr() as u64;
    // SAFETY: attr names `out`, which is writable for the length given and outlives the call.
    check(unsafe {
        libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, attr.as_mut_ptr(), std::mem::size_of_val(&attr))
    })?;
    let mut r = [0u32; N];
    r.copy_from_slice(&out[..N]);
    Ok(r)
}

/// Test side (outside every tree): (map id of WATCHED, link id and program id of one link)
/// from a pin directory.
pub fn object_ids(pin_dir: &str) -> anyhow::Result<(u32, u32, u32)> {
    let map = obj_get(&format!("{pin_dir}/WATCHED")).map_err(|e| anyhow::anyhow!("BPF_OBJ_GET WATCHED: {e}"))?;
    let [_, map_id] = info::<2>(&map).map_err(|e| anyhow::anyhow!("map info: {e}"))?;
    let link = std::fs::read_dir(pin_dir)?
        .flatten()
        .map(|f| f.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("link_")))
        .ok_or_else(|| anyhow::anyhow!("no link pin in {pin_dir}"))?;
    let link = obj_get(&link.to_string_lossy()).map_err(|e| anyhow::anyhow!("BPF_OBJ_GET link: {e}"))?;
    let [_, link_id, prog_id] = info::<3>(&link).map_err(|e| anyhow::anyhow!("link info: {e}"))?;
    Ok((map_id, link_id, prog_id))
}

/// Connects on a socket made before a fork, from a child that exits at once (so the socket's
/// peer pid names a process that is gone), then asks for an approval on it: the review's
/// fork-connect-exit trick against the admin socket.
fn fork_connect_approve(path: &str) -> Result<(), Errno> {
    use std::io::{BufRead, BufReader, Write};
    use std::os::fd::{FromRawFd, IntoRawFd};
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::Stream,
        nix::sys::socket::SockFlag::empty(),
        None,
    )?;
    let addr = nix::sys::socket::UnixAddr::new(path)?;
    // SAFETY: the child only calls connect(2) and _exit(2), both async-signal-safe.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => {
            use std::os::fd::AsRawFd;
            let rc = nix::sys::socket::connect(sock.as_raw_fd(), &addr);
            // SAFETY: _exit ends the child at once.
            unsafe { libc::_exit(rc.map(|_| 0).unwrap_or_else(|e| e as i32)) };
        }
        nix::unistd::ForkResult::Parent { child } => {
            let code = match nix::sys::wait::waitpid(child, None)? {
                nix::sys::wait::WaitStatus::Exited(_, c) => c,
                _ => libc::EIO,
            };
            if code != 0 {
                return Err(Errno::from_raw(code));
            }
        }
    }
    // SAFETY: the socket fd is owned here and moved into the stream.
    let mut s = unsafe { std::os::unix::net::UnixStream::from_raw_fd(sock.into_raw_fd()) };
    s.write_all(b"{\"cmd\":\"approve\",\"id\":\"1\"}\n").map_err(|_| Errno::EIO)?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).map_err(|_| Errno::EIO)?;
    println!("ADMIN-ANSWER {}", line.trim());
    if line.contains("\"ok\":true") {
        Ok(())
    } else {
        Err(Errno::EACCES)
    }
}

/// The ops of this module, or None for an op it does not know (dispatched from `ops::run`).
pub fn run(args: &[String]) -> Option<Result<(), Errno>> {
    let a = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let num = |i: usize| a(i).parse::<i32>().unwrap_or(0);
    Some(match a(0) {
        // kill SIG PID
        // SAFETY: plain integer arguments.
        "kill" => check(unsafe { libc::kill(num(2), num(1)) } as i64),
        // pidfd-kill SIG PID: pidfd_open + pidfd_send_signal.
        "pidfd-kill" => (|| {
            // SAFETY: plain integer arguments.
            let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, num(2), 0) };
            check(pidfd)?;
            let pidfd = Fd(pidfd as i32);
            // SAFETY: a null siginfo is allowed (the kernel fills in a SI_USER one).
            check(unsafe {
                libc::syscall(libc::SYS_pidfd_send_signal, pidfd.0, num(1), std::ptr::null::<libc::siginfo_t>(), 0)
            })
        })(),
        // vm-read PID: process_vm_readv of one byte at an arbitrary address (EFAULT if the
        // access itself were allowed).
        "vm-read" => {
            let mut buf = [0u8; 1];
            let local = libc::iovec { iov_base: buf.as_mut_ptr() as *mut _, iov_len: 1 };
            let remote = libc::iovec { iov_base: 0x10000 as *mut _, iov_len: 1 };
            // SAFETY: one local iovec over `buf`, one remote iovec the kernel checks.
            check(unsafe { libc::process_vm_readv(num(1), &local, 1, &remote, 1, 0) } as i64)
        }
        "bpf-obj-get" => obj_get(a(1)).map(|_| ()),
        "bpf-get-fd-by-id" => get_fd_by_id(a(1), a(2).parse().unwrap_or(0)).map(|_| ()),
        "umount-lazy" => nix::mount::umount2(a(1), nix::mount::MntFlags::MNT_DETACH),
        "remount-ro-plain" => nix::mount::mount(
            None::<&str>,
            a(1),
            None::<&str>,
            nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_RDONLY,
            None::<&str>,
        ),
        "fork-connect-approve" => fork_connect_approve(a(1)),
        _ => return None,
    })
}
