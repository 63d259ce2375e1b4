//! `guard-e2e do OP ARGS...`: the operations a watched "AI agent" performs in the tests.
//!
//! Each prints one line `RESULT ok` or `RESULT errno=N` (plus the op) and exits 0 or 1, so a
//! test can run several in one shell and read every outcome.

use nix::errno::Errno;
use std::{
    ffi::CString,
    io::Write,
    net::{SocketAddr, TcpStream},
    os::unix::net::UnixStream,
    time::Duration,
};

fn report(op: &str, r: Result<(), Errno>) -> i32 {
    let line = match r {
        Ok(()) => format!("RESULT ok {op}"),
        Err(e) => format!("RESULT errno={} {op}", e as i32),
    };
    println!("{line}");
    std::io::stdout().flush().ok();
    if r.is_ok() {
        0
    } else {
        1
    }
}

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

pub(crate) fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL in test paths")
}

fn open(path: &str, flags: i32) -> Result<(), Errno> {
    // SAFETY: the path is a NUL-terminated CString that lives until the call returns.
    let fd = unsafe { libc::open(cstr(path).as_ptr(), flags | libc::O_CLOEXEC, 0o644) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: fd was just returned by open and is closed once, here.
    unsafe { libc::close(fd) };
    Ok(())
}

pub(crate) fn check(rc: i64) -> Result<(), Errno> {
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

fn connect_unix(path: &str) -> Result<(), Errno> {
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).map_err(io_errno)?;
        return UnixStream::connect_addr(&addr).map(|_| ()).map_err(io_errno);
    }
    UnixStream::connect(path).map(|_| ()).map_err(io_errno)
}

pub fn run(args: &[String]) -> i32 {
    let a = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let op = args.join(" ");
    if let Some(r) = crate::ops_net::run(args) {
        return report(&op, r);
    }
    if let Some(r) = crate::ops_tamper::run(args) {
        return report(&op, r);
    }
    if let Some(r) = crate::ops_hatch::run(args) {
        return report(&op, r);
    }
    let r = match a(0) {
        "open-read" => open(a(1), libc::O_RDONLY),
        "open-write" => open(a(1), libc::O_WRONLY),
        "create-excl" => open(a(1), libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL),
        // SAFETY: the path(s) are NUL-terminated CStrings that live until the call returns.
        "unlink" => check(unsafe { libc::unlink(cstr(a(1)).as_ptr()) } as i64),
        // SAFETY: the path(s) are NUL-terminated CStrings that live until the call returns.
        "rmdir" => check(unsafe { libc::rmdir(cstr(a(1)).as_ptr()) } as i64),
        // SAFETY: the path(s) are NUL-terminated CStrings that live until the call returns.
        "mkdir" => check(unsafe { libc::mkdir(cstr(a(1)).as_ptr(), 0o755) } as i64),
        // SAFETY: the path(s) are NUL-terminated CStrings that live until the call returns.
        "rename" => check(unsafe { libc::rename(cstr(a(1)).as_ptr(), cstr(a(2)).as_ptr()) } as i64),
        // SAFETY: the path(s) are NUL-terminated CStrings that live until the call returns.
        "truncate" => check(unsafe { libc::truncate(cstr(a(1)).as_ptr(), 0) } as i64),
        "exec" => exec_child(&args[1..]),
        "connect" => match a(1).parse::<SocketAddr>() {
            Ok(addr) => TcpStream::connect_timeout(&addr, Duration::from_secs(60)).map(|_| ()).map_err(io_errno),
            Err(_) => Err(Errno::EINVAL),
        },
        "connect-unix" => connect_unix(a(1)),
        "sethostname" => nix::unistd::sethostname(a(1)),
        "settime" => {
            let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: ts is a valid, writable timespec.
            unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
            // SAFETY: ts is a valid timespec, filled in just above.
            check(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } as i64)
        }
        "mount" => nix::mount::mount(Some("none"), a(1), Some("tmpfs"), nix::mount::MsFlags::empty(), None::<&str>),
        "umount" => nix::mount::umount(a(1)),
        "module" => {
            // finit_module: decided at kernel_read_file (READING_MODULE).
            match std::fs::File::open(a(1)) {
                Ok(f) => {
                    use std::os::fd::AsRawFd;
                    let p = cstr("");
                    // SAFETY: the fd is open (f lives on) and p is an empty NUL-terminated parameter string.
                    let rc = unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), p.as_ptr(), 0) };
                    match check(rc) {
                        // Already loaded means the kernel let us get as far as loading.
                        Err(Errno::EEXIST) => Ok(()),
                        r => r,
                    }
                }
                Err(e) => Err(io_errno(e)),
            }
        }
        "bpf" => {
            // BPF_MAP_CREATE of a tiny array.
            let mut attr = [0u32; 30];
            attr[0] = 2; // BPF_MAP_TYPE_ARRAY
            attr[1] = 4;
            attr[2] = 4;
            attr[3] = 1;
            // SAFETY: attr is a readable buffer of the size passed, zeroed past the fields BPF_MAP_CREATE reads.
            let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, attr.as_ptr(), std::mem::size_of_val(&attr)) };
            if fd >= 0 {
                // SAFETY: fd is the map fd the kernel just returned, closed once.
                unsafe { libc::close(fd as i32) };
            }
            check(fd)
        }
        "ptrace" => {
            let pid = nix::unistd::Pid::from_raw(a(1).parse().unwrap_or(0));
            match nix::sys::ptrace::attach(pid) {
                Ok(()) => {
                    nix::sys::wait::waitpid(pid, None).ok();
                    nix::sys::ptrace::detach(pid, None).ok();
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        "threads-open" => return threads_open(a(1).parse().unwrap_or(2), a(2)),
        "spawn-many" => return spawn_many(a(1).parse().unwrap_or(1000)),
        "fork-wide" => return fork_wide(a(1).parse().unwrap_or(10)),
        "redirect-open" => redirect_open(a(1), a(2)),
        "uring-open" => io_uring_open(a(1)),
        "uring" => crate::ops_uring::run(&args[1..]),
        "fork-hold" => return crate::ops_uring::fork_hold(a(1).parse().unwrap_or(10), a(2)),
        "fork-burst" => {
            return crate::ops_uring::fork_burst(a(1).parse().unwrap_or(8), a(2).parse().unwrap_or(50), a(3))
        }
        "sleep" => {
            std::thread::sleep(Duration::from_millis(a(1).parse().unwrap_or(100)));
            Ok(())
        }
        dec if dec.starts_with("dec-") => return crate::ops_decide::run(args),
        ns if crate::ops_ns::OPS.contains(&ns) => return crate::ops_ns::run(args),
        argv if crate::ops_argv::OPS.contains(&argv) => return crate::ops_argv::run(args),
        op if crate::ops_files::OPS.contains(&op) => crate::ops_files::run(args),
        other => {
            eprintln!("guard-e2e do: unknown op {other:?}");
            return 2;
        }
    };
    report(&op, r)
}

/// N threads open the same path at once: each is held and decided on its own.
fn threads_open(n: usize, path: &str) -> i32 {
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let p = format!("{path}{i}");
            std::thread::spawn(move || (p.clone(), open(&p, libc::O_RDONLY)))
        })
        .collect();
    let mut failed = 0;
    for h in handles {
        let (p, r) = h.join().expect("thread");
        failed += report(&format!("open-read {p}"), r);
    }
    failed.min(1)
}

/// Creates and reaps N short-lived children (for the map-leak test). Most are vforks, which
/// go through the same fork and exit tracepoints at a fraction of a fork's cost under
/// emulation; every tenth is a full fork.
fn spawn_many(n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: this process is single-threaded here; the child only calls _exit.
        let pid = if i % 10 == 0 { unsafe { libc::fork() } } else { vfork_and_exit() };
        match pid {
            // SAFETY: in the child, _exit ends it at once without running Rust destructors or atexit handlers.
            0 => unsafe { libc::_exit(0) },
            // SAFETY: pid is our own child; a null status pointer is allowed.
            pid if pid > 0 => unsafe {
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            },
            _ => return report("spawn-many", Err(Errno::last())),
        }
    }
    report(&format!("spawn-many {n}"), Ok(()))
}

/// vfork whose child exits at once without touching memory: written in assembly because a
/// vfork child running compiled code would share (and could clobber) the parent's stack.
fn vfork_and_exit() -> i32 {
    let ret: i64;
    // SAFETY: clone(CLONE_VM|CLONE_VFORK) suspends the parent until the child exits; the child
    // only executes the exit syscall, in registers.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "mov eax, 60",
            "xor edi, edi",
            "syscall",
            "2:",
            inlateout("rax") libc::SYS_clone => ret,
            in("rdi") (libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD) as i64,
            in("rsi") 0i64,
            in("rdx") 0i64,
            in("r10") 0i64,
            in("r8") 0i64,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    ret as i32
}

/// A child opens the path held in shared memory; while it is held, the parent rewrites that
/// memory to another path. An approval of the first path must not let the second one through.
fn redirect_open(first: &str, second: &str) -> Result<(), Errno> {
    let mem = crate::ops_decide::shared_page()?;
    // SAFETY: callers pass paths under 4095 bytes, so the copy and its NUL fit in the 4096-byte mapping.
    let write_path = |p: &str| unsafe {
        std::ptr::copy_nonoverlapping(p.as_ptr(), mem, p.len());
        *mem.add(p.len()) = 0;
    };
    write_path(first);
    // SAFETY: the child only calls open (async-signal-safe) on the shared mapping and _exit.
    match unsafe { libc::fork() } {
        0 => {
            // SAFETY: mem holds a NUL-terminated path written by write_path.
            let fd = unsafe { libc::open(mem as *const libc::c_char, libc::O_RDONLY) };
            // SAFETY: _exit ends the forked child without unwinding into the parent's state.
            unsafe { libc::_exit(if fd >= 0 { 0 } else { Errno::last() as i32 }) };
        }
        pid if pid > 0 => {
            std::thread::sleep(Duration::from_millis(1500));
            write_path(second);
            println!("REWRITTEN");
            std::io::stdout().flush().ok();
            let mut status = 0;
            // SAFETY: pid is our own child and status a valid, writable int.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            let code = libc::WEXITSTATUS(status);
            if code == 0 {
                Ok(())
            } else {
                Err(Errno::from_raw(code))
            }
        }
        _ => Err(Errno::last()),
    }
}

/// Execs in a child and reports the exec itself: a close-on-exec pipe carries the errno back
/// if execv fails, and closes empty if it succeeded (whatever the program then does).
fn exec_child(argv: &[String]) -> Result<(), Errno> {
    let argv: Vec<CString> = argv.iter().map(|s| cstr(s)).collect();
    crate::ops_ns::spawn_exec(|| nix::unistd::execv(&argv[0], &argv).unwrap_err())
}

/// One IORING_OP_OPENAT through a raw io_uring (no liburing in the VM). The hook runs inside
/// io_uring_enter or an io-wq worker, where a hold cannot restart anything: guard must decide
/// at once.
pub fn io_uring_open(path: &str) -> Result<(), Errno> {
    crate::ops_uring::run(&["inline".into(), "open".into(), path.into()])
}

/// Forks N children that all stay alive at once, then releases and reaps them; reports how many
/// forks succeeded and how many failed with EAGAIN (the tree's task limit).
fn fork_wide(n: usize) -> i32 {
    let Ok((rd, wr)) = nix::unistd::pipe() else { return report("fork-wide", Err(Errno::last())) };
    let (mut forked, mut eagain, mut other) = (0, 0, 0);
    let mut children = vec![];
    for _ in 0..n {
        // SAFETY: the child only reads a pipe and calls _exit.
        match unsafe { libc::fork() } {
            0 => {
                drop(wr);
                let mut b = [0u8; 1];
                let _ = std::io::Read::read(&mut std::fs::File::from(rd), &mut b);
                // SAFETY: _exit ends the forked child without running the parent's destructors.
                unsafe { libc::_exit(0) };
            }
            pid if pid > 0 => {
                forked += 1;
                children.push(pid);
            }
            _ => {
                if Errno::last() == Errno::EAGAIN {
                    eagain += 1
                } else {
                    other += 1
                }
            }
        }
    }
    drop(wr);
    drop(rd);
    for pid in children {
        // SAFETY: pid is our own child; a null status pointer is allowed.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    }
    println!("RESULT ok fork-wide forked={forked} eagain={eagain} other={other}");
    0
}
