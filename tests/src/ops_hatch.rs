//! Workload ops of the escape-hatch tests (issue 10 item 5): writing a value into a file
//! (a sysctl, a spool entry), and receiving a file descriptor over a unix socket from a
//! process outside the tree. Each prints `RESULT ok|errno=N OP` like the ops in `ops`.

use nix::{
    errno::Errno,
    sys::socket::{recvmsg, ControlMessageOwned, MsgFlags},
};
use std::{
    io::{IoSliceMut, Read, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::net::UnixStream,
    },
};

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Runs the op `args[0]` if it is one of these; None for an op this module does not know.
pub fn run(args: &[String]) -> Option<Result<(), Errno>> {
    let a = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    Some(match a(0) {
        "hatch-write" => write_file(a(1), a(2)),
        "hatch-recv-read" => recv_fd(a(1)).and_then(read_all),
        "hatch-recv-write" => recv_fd(a(1)).and_then(|fd| {
            std::fs::File::from(fd).write_all(b"written through a received descriptor\n").map_err(io_errno)
        }),
        "hatch-recv-openat" => recv_fd(a(1)).and_then(|fd| openat_read(&fd, a(2))),
        _ => return None,
    })
}

/// open(O_WRONLY|O_CREAT|O_TRUNC) and write `content` (the shell's `echo content > path`).
fn write_file(path: &str, content: &str) -> Result<(), Errno> {
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(path).map_err(io_errno)?;
    f.write_all(content.as_bytes()).map_err(io_errno)
}

/// Connects to the unix socket at `path` and receives one descriptor (SCM_RIGHTS). Prints
/// `RECV ctrunc=B fds=N`; no descriptor is EPERM (the kernel refused to install it).
fn recv_fd(path: &str) -> Result<OwnedFd, Errno> {
    let s = UnixStream::connect(path).map_err(io_errno)?;
    let mut data = [0u8; 16];
    let mut iov = [IoSliceMut::new(&mut data)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(s.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty())?;
    let ctrunc = msg.flags.contains(MsgFlags::MSG_CTRUNC);
    let mut fds = vec![];
    // nix refuses to walk a truncated control buffer; the kernel installed nothing then.
    if !ctrunc {
        for c in msg.cmsgs().map_err(|_| Errno::EINVAL)? {
            if let ControlMessageOwned::ScmRights(r) = c {
                fds.extend(r);
            }
        }
    }
    println!("RECV ctrunc={} fds={}", ctrunc as u8, fds.len());
    let Some(&fd) = fds.first() else { return Err(Errno::EPERM) };
    // SAFETY: the kernel just installed `fd` in this process for this message; nothing else
    // owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads the received file; prints `CONTENT <text>`.
fn read_all(fd: OwnedFd) -> Result<(), Errno> {
    let mut text = String::new();
    std::fs::File::from(fd).read_to_string(&mut text).map_err(io_errno)?;
    println!("CONTENT {}", text.trim_end());
    Ok(())
}

/// openat(dirfd, rel, O_RDONLY) relative to a received directory descriptor.
fn openat_read(dir: &OwnedFd, rel: &str) -> Result<(), Errno> {
    let c = crate::ops::cstr(rel);
    // SAFETY: a valid descriptor and a NUL-terminated path.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), libc::O_RDONLY) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: `fd` was just returned by openat; the OwnedFd closes it once.
    read_all(unsafe { OwnedFd::from_raw_fd(fd) })
}
