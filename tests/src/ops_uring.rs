//! `guard-e2e do uring MODE OP ARGS...`: operations submitted through a raw io_uring (no
//! liburing in the VM), the way an agent would try to get around the syscall hooks.
//!
//! MODE is where the request runs:
//! - `inline`: flags 0, completed inside io_uring_enter on the calling thread (when it can);
//! - `async`: IOSQE_ASYNC (SQE flags byte 0x10), punted to an io-wq worker (`iou-wrk-*`);
//! - `sqpoll`: an IORING_SETUP_SQPOLL ring, issued by the SQPOLL thread (`iou-sqp-*`).
//!
//! OP: `open PATH` (O_RDONLY), `unlink PATH`, `rename OLD NEW`, `connect IP:PORT` (TCP).

use crate::ops::cstr;
use nix::errno::Errno;
use std::{ffi::CString, net::SocketAddr, os::fd::AsRawFd};

const IORING_OP_CONNECT: u8 = 16;
const IORING_OP_OPENAT: u8 = 18;
const IORING_OP_RENAMEAT: u8 = 35;
const IORING_OP_UNLINKAT: u8 = 36;
const IOSQE_ASYNC: u8 = 0x10;
const IORING_SETUP_SQPOLL: u32 = 1 << 1;
const IORING_ENTER_GETEVENTS: u32 = 1;
const IORING_ENTER_SQ_WAKEUP: u32 = 2;

#[repr(C)]
#[derive(Default)]
pub(crate) struct SqOff {
    pub head: u32,
    pub tail: u32,
    pub ring_mask: u32,
    pub ring_entries: u32,
    pub flags: u32,
    pub dropped: u32,
    pub array: u32,
    pub resv1: u32,
    pub user_addr: u64,
}

#[repr(C)]
#[derive(Default)]
pub(crate) struct CqOff {
    pub head: u32,
    pub tail: u32,
    pub ring_mask: u32,
    pub ring_entries: u32,
    pub overflow: u32,
    pub cqes: u32,
    pub flags: u32,
    pub resv1: u32,
    pub user_addr: u64,
}

#[repr(C)]
#[derive(Default)]
pub(crate) struct Params {
    pub sq_entries: u32,
    pub cq_entries: u32,
    pub flags: u32,
    pub sq_thread_cpu: u32,
    pub sq_thread_idle: u32,
    pub features: u32,
    pub wq_fd: u32,
    pub resv: [u32; 3],
    pub sq_off: SqOff,
    pub cq_off: CqOff,
}

/// The fields of one SQE this module uses (the rest stay zero).
#[derive(Default)]
struct Sqe {
    opcode: u8,
    fd: i32,
    /// `off` / `addr2` (offset 8).
    off: u64,
    addr: u64,
    len: u32,
    /// `open_flags`, `rename_flags`, `unlink_flags` (offset 28).
    op_flags: u32,
}

/// Submits one SQE on a fresh ring and waits for its completion; the CQE's result as a
/// Result (a negative res is the errno).
fn submit(mode: &str, sqe: Sqe) -> Result<i32, Errno> {
    let (setup_flags, sqe_flags) = match mode {
        "inline" => (0, 0),
        "async" => (0, IOSQE_ASYNC),
        "sqpoll" => (IORING_SETUP_SQPOLL, 0),
        _ => return Err(Errno::EINVAL),
    };
    let mut p = Params { flags: setup_flags, sq_thread_idle: 2000, ..Default::default() };
    // SAFETY: p is a valid, writable io_uring_params of the layout the kernel expects.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4, &mut p as *mut Params) };
    if fd < 0 {
        return Err(Errno::last());
    }
    let fd = fd as i32;
    // SAFETY: maps regions of the io_uring fd at the offsets the kernel defines; results are
    // checked below.
    let map = |len: usize, off: i64| unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            fd,
            off,
        ) as *mut u8
    };
    let sq_len = p.sq_off.array as usize + p.sq_entries as usize * 4;
    let cq_len = p.cq_off.cqes as usize + p.cq_entries as usize * 16;
    let sq = map(sq_len, 0);
    let cq = map(cq_len, 0x8000000);
    let sqes = map(p.sq_entries as usize * 64, 0x10000000);
    if [sq, cq, sqes].iter().any(|m| *m as isize == -1) {
        let e = Errno::last();
        // SAFETY: fd is the ring this function opened, closed once.
        unsafe { libc::close(fd) };
        return Err(e);
    }
    // SAFETY: the rings were mapped with the sizes the kernel reported in p; every offset used
    // is one of p's, within those sizes; the memory the SQE points to (paths, sockaddr) is
    // owned by the caller and outlives this call, which waits for the completion.
    let res = unsafe {
        let e = sqes;
        std::ptr::write_bytes(e, 0, 64);
        *e = sqe.opcode;
        *e.add(1) = sqe_flags;
        *(e.add(4) as *mut i32) = sqe.fd;
        *(e.add(8) as *mut u64) = sqe.off;
        *(e.add(16) as *mut u64) = sqe.addr;
        *(e.add(24) as *mut u32) = sqe.len;
        *(e.add(28) as *mut u32) = sqe.op_flags;
        let tail = sq.add(p.sq_off.tail as usize) as *mut u32;
        let mask = *(sq.add(p.sq_off.ring_mask as usize) as *const u32);
        let t = std::ptr::read_volatile(tail);
        *(sq.add(p.sq_off.array as usize) as *mut u32).add((t & mask) as usize) = 0;
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        std::ptr::write_volatile(tail, t + 1);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let (to_submit, flags) = if setup_flags & IORING_SETUP_SQPOLL != 0 {
            // The SQPOLL thread takes the entry; wake it in case it went idle, and wait.
            (0, IORING_ENTER_GETEVENTS | IORING_ENTER_SQ_WAKEUP)
        } else {
            (1, IORING_ENTER_GETEVENTS)
        };
        let rc = libc::syscall(libc::SYS_io_uring_enter, fd, to_submit, 1, flags, std::ptr::null::<u8>(), 0);
        if rc < 0 {
            let e = Errno::last();
            libc::close(fd);
            return Err(e);
        }
        let ctail = cq.add(p.cq_off.tail as usize) as *const u32;
        let head = std::ptr::read_volatile(cq.add(p.cq_off.head as usize) as *const u32);
        if std::ptr::read_volatile(ctail) == head {
            libc::close(fd);
            return Err(Errno::ETIME);
        }
        let cmask = *(cq.add(p.cq_off.ring_mask as usize) as *const u32);
        let cqe = cq.add(p.cq_off.cqes as usize + (head & cmask) as usize * 16);
        let res = std::ptr::read_volatile(cqe.add(8) as *const i32);
        libc::close(fd);
        res
    };
    if res < 0 {
        return Err(Errno::from_raw(-res));
    }
    Ok(res)
}

/// `guard-e2e do uring MODE OP ARGS...`
pub fn run(args: &[String]) -> Result<(), Errno> {
    let a = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let mode = a(0);
    match a(1) {
        "open" => {
            let path = cstr(a(2));
            let fd = submit(
                mode,
                Sqe {
                    opcode: IORING_OP_OPENAT,
                    fd: libc::AT_FDCWD,
                    addr: path.as_ptr() as u64,
                    op_flags: libc::O_RDONLY as u32,
                    ..Default::default()
                },
            )?;
            // SAFETY: fd is the file io_uring just opened for this process, closed once.
            unsafe { libc::close(fd) };
            Ok(())
        }
        "unlink" => {
            let path = cstr(a(2));
            submit(
                mode,
                Sqe {
                    opcode: IORING_OP_UNLINKAT,
                    fd: libc::AT_FDCWD,
                    addr: path.as_ptr() as u64,
                    ..Default::default()
                },
            )
            .map(drop)
        }
        "rename" => {
            let (old, new) = (cstr(a(2)), cstr(a(3)));
            submit(
                mode,
                Sqe {
                    opcode: IORING_OP_RENAMEAT,
                    fd: libc::AT_FDCWD,
                    addr: old.as_ptr() as u64,
                    len: libc::AT_FDCWD as u32,
                    off: new.as_ptr() as u64,
                    ..Default::default()
                },
            )
            .map(drop)
        }
        "connect" => {
            let Ok(SocketAddr::V4(addr)) = a(2).parse::<SocketAddr>() else { return Err(Errno::EINVAL) };
            // SAFETY: plain socket(2); the fd is owned below.
            let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
            if s < 0 {
                return Err(Errno::last());
            }
            // SAFETY: s is a fresh socket fd owned by nobody else.
            let s = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(s) };
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: addr.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from(*addr.ip()).to_be() },
                sin_zero: [0; 8],
            };
            submit(
                mode,
                Sqe {
                    opcode: IORING_OP_CONNECT,
                    fd: s.as_raw_fd(),
                    addr: &sin as *const libc::sockaddr_in as u64,
                    off: std::mem::size_of::<libc::sockaddr_in>() as u64,
                    ..Default::default()
                },
            )
            .map(drop)
        }
        _ => Err(Errno::EINVAL),
    }
}

/// `guard-e2e do fork-hold N GOFILE`: forks N children that stay alive until GOFILE exists,
/// prints how many forks succeeded and how many failed with EAGAIN (the tree's task limit),
/// then waits for GOFILE and reaps them.
pub fn fork_hold(n: usize, go: &str) -> i32 {
    let (mut forked, mut eagain, mut other) = (0, 0, 0);
    let mut children = vec![];
    let go_c = CString::new(go).unwrap_or_default();
    for _ in 0..n {
        // SAFETY: the child only calls access, usleep and _exit (async-signal-safe).
        match unsafe { libc::fork() } {
            0 => loop {
                // SAFETY: go_c is a NUL-terminated string inherited from the parent.
                if unsafe { libc::access(go_c.as_ptr(), libc::F_OK) } == 0 {
                    // SAFETY: ends the forked child without the parent's destructors.
                    unsafe { libc::_exit(0) };
                }
                // SAFETY: plain sleep.
                unsafe { libc::usleep(50_000) };
            },
            pid if pid > 0 => {
                forked += 1;
                children.push(pid);
            }
            _ if Errno::last() == Errno::EAGAIN => eagain += 1,
            _ => other += 1,
        }
    }
    println!("RESULT ok fork-hold forked={forked} eagain={eagain} other={other}");
    std::io::Write::flush(&mut std::io::stdout()).ok();
    for pid in children {
        // SAFETY: pid is our own child; a null status pointer is allowed.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    }
    0
}

/// `guard-e2e do fork-burst THREADS N PATH`: THREADS threads fork N children each, all at
/// once; every child tries to open PATH (read-denied) at once and reports by its exit status
/// whether it was refused (EPERM), opened it (an unwatched child), or failed otherwise.
pub fn fork_burst(threads: usize, n: usize, path: &str) -> i32 {
    let path = CString::new(path).unwrap_or_default();
    let path = std::sync::Arc::new(path);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (path, barrier) = (path.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let mut pids = vec![];
                let (mut eagain, mut other) = (0u32, 0u32);
                for _ in 0..n {
                    // SAFETY: the child only calls open, close and _exit (async-signal-safe).
                    match unsafe { libc::fork() } {
                        0 => {
                            // SAFETY: path is a NUL-terminated string inherited from the parent.
                            let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY) };
                            let code = if fd >= 0 {
                                1
                            } else if Errno::last() == Errno::EPERM {
                                0
                            } else {
                                2
                            };
                            // SAFETY: ends the forked child without the parent's destructors.
                            unsafe { libc::_exit(code) };
                        }
                        pid if pid > 0 => pids.push(pid),
                        _ if Errno::last() == Errno::EAGAIN => eagain += 1,
                        _ => other += 1,
                    }
                }
                let (mut denied, mut escaped) = (0u32, 0u32);
                for pid in pids {
                    let mut st = 0;
                    // SAFETY: pid is a child of this process; st is a valid int.
                    unsafe { libc::waitpid(pid, &mut st, 0) };
                    match libc::WEXITSTATUS(st) {
                        0 => denied += 1,
                        1 => escaped += 1,
                        _ => other += 1,
                    }
                }
                (denied, escaped, eagain, other)
            })
        })
        .collect();
    let (mut denied, mut escaped, mut eagain, mut other) = (0, 0, 0, 0);
    for h in handles {
        if let Ok((d, e, a, o)) = h.join() {
            denied += d;
            escaped += e;
            eagain += a;
            other += o;
        }
    }
    println!("RESULT ok fork-burst denied={denied} escaped={escaped} eagain={eagain} other={other}");
    0
}
