//! Workload ops for the namespace, mount and exec-object escapes (`escape_ns`): each tries
//! one way to change what a path means, or to run a program without exec'ing it by name, and
//! prints `RESULT ok|errno=N OP` followed by ` | ` and what it can see afterwards (the effect
//! the test asserts did not happen).

use crate::ops::check;
use crate::ops::cstr;
use nix::errno::Errno;
use std::{ffi::CString, io::Write, os::fd::AsRawFd};

/// The ops of this module (dispatched from `ops::run`).
pub const OPS: &[&str] = &[
    "userns-unshare",
    "userns-clone",
    "chroot",
    "chroot-dot",
    "umount2",
    "mount-bind",
    "remount-ro",
    "pivot-root",
    "pivot-root-dot",
    "memfd-exec",
    "memfd-exec-proc",
    "deleted-exec",
    "run-status",
    "run-status-memfd",
    "marker",
    "chroot-run",
];

/// Runs `argv` (the program first) and reports its exit status (`exit=N`, -1 for a signal).
fn run_status(op: &str, argv: &[String]) -> i32 {
    let Some((prog, rest)) = argv.split_first() else { return report(op, Err(Errno::EINVAL), "no program") };
    let after = match std::process::Command::new(prog).args(rest).status() {
        Ok(s) => format!("exit={}", s.code().unwrap_or(-1)),
        Err(e) => format!("spawn-error={e}"),
    };
    report(op, Ok(()), &after)
}

fn report(op: &str, r: Result<(), Errno>, after: &str) -> i32 {
    let line = match r {
        Ok(()) => format!("RESULT ok {op} | {after}"),
        Err(e) => format!("RESULT errno={} {op} | {after}", e as i32),
    };
    println!("{line}");
    std::io::stdout().flush().ok();
    i32::from(r.is_err())
}

/// The first line of this process's uid_map: "0 0 4294967295" in the initial user namespace.
fn uid_map() -> String {
    let m = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    let first = m.lines().next().unwrap_or("").split_whitespace().collect::<Vec<_>>().join(" ");
    format!("uid_map={first}")
}

/// Whether `probe` (a path outside the new root) can still be opened: it can as long as the
/// root did not change.
fn probe(path: &str) -> String {
    format!("probe={}", if std::path::Path::new(path).exists() { "visible" } else { "gone" })
}

/// Drops to `uid` (and gid) unless it is "-".
fn become_uid(uid: &str) -> Result<(), Errno> {
    if uid == "-" {
        return Ok(());
    }
    let id: u32 = uid.parse().map_err(|_| Errno::EINVAL)?;
    // SAFETY: plain syscalls on integers.
    unsafe {
        check(libc::setgroups(0, std::ptr::null()) as i64)?;
        check(libc::setresgid(id, id, id) as i64)?;
        check(libc::setresuid(id, id, id) as i64)
    }
}

/// Forks; the child runs `child` (which should exec) and reports its errno through a pipe.
/// Ok when the child exec'd (the pipe closed on exec), the exec's errno otherwise.
pub(crate) fn spawn_exec(child: impl FnOnce() -> Errno) -> Result<(), Errno> {
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: the child only execs, writes to a pipe and calls _exit.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => {
            drop(rd);
            let e = child() as i32;
            let mut f = std::fs::File::from(wr);
            f.write_all(&e.to_ne_bytes()).ok();
            // SAFETY: _exit ends the forked child without running the parent's destructors.
            unsafe { libc::_exit(127) };
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(wr);
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::fs::File::from(rd), &mut buf).ok();
            nix::sys::wait::waitpid(child, None).ok();
            match buf.get(..4) {
                Some(b) => Err(Errno::from_raw(i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))),
                None => Ok(()),
            }
        }
    }
}

/// A memfd holding a copy of `src`.
fn memfd_copy(src: &str, cloexec: bool) -> Result<std::fs::File, Errno> {
    let flags = if cloexec { libc::MFD_CLOEXEC } else { 0 };
    // SAFETY: the name is a NUL-terminated CString that lives until the call returns.
    let fd = unsafe { libc::memfd_create(cstr("guard-anon").as_ptr(), flags) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: fd was just returned by memfd_create and is owned by the File from here.
    let mut f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let bytes = std::fs::read(src).map_err(|_| Errno::EIO)?;
    f.write_all(&bytes).map_err(|_| Errno::EIO)?;
    Ok(f)
}

fn fexecve(fd: i32, argv: &[String]) -> Errno {
    let argv: Vec<CString> = argv.iter().map(|s| cstr(s)).collect();
    let env: Vec<CString> = vec![];
    nix::unistd::fexecve(fd, &argv, &env).unwrap_err()
}

pub fn run(args: &[String]) -> i32 {
    let a = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let op = args.join(" ");
    match a(0) {
        // userns-unshare UID: unshare(CLONE_NEWUSER) as UID ("-" = stay root).
        "userns-unshare" => {
            let r = become_uid(a(1)).and_then(|()| nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER));
            report(&op, r, &uid_map())
        }
        // userns-clone UID: a child made by clone(CLONE_NEWUSER), as UID.
        "userns-clone" => {
            let r = become_uid(a(1)).and_then(|()| {
                // SAFETY: a fork-like clone (no new stack): the child only calls _exit.
                let pid = unsafe {
                    libc::syscall(libc::SYS_clone, (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong, 0, 0, 0, 0)
                };
                if pid == 0 {
                    // SAFETY: in the child, _exit ends it at once.
                    unsafe { libc::_exit(0) };
                }
                check(pid)?;
                // SAFETY: pid is our own child; a null status pointer is allowed.
                unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), 0) };
                Ok(())
            });
            report(&op, r, &uid_map())
        }
        // chroot DIR PROBE: chroot(DIR), then whether PROBE (outside DIR) is still reachable.
        "chroot" => {
            let r = nix::unistd::chroot(a(1));
            report(&op, r, &probe(a(2)))
        }
        // chroot-dot DIR PROBE: chdir(DIR); chroot(".").
        "chroot-dot" => {
            let r = nix::unistd::chdir(a(1)).and_then(|()| nix::unistd::chroot("."));
            report(&op, r, &probe(a(2)))
        }
        // umount2 PATH FLAGS PROBE: umount2 (FLAGS 2 = MNT_DETACH, `umount -l`); PROBE is a file
        // on the mount.
        "umount2" => {
            let flags: i32 = a(2).parse().unwrap_or(0);
            // SAFETY: the path is a NUL-terminated CString that lives until the call returns.
            let r = check(unsafe { libc::umount2(cstr(a(1)).as_ptr(), flags) } as i64);
            report(&op, r, &probe(a(3)))
        }
        // mount-bind SRC DST rec|plain PROBE: a bind mount of SRC on DST.
        "mount-bind" => {
            let mut flags = nix::mount::MsFlags::MS_BIND;
            if a(3) == "rec" {
                flags |= nix::mount::MsFlags::MS_REC;
            }
            let r = nix::mount::mount(Some(a(1)), a(2), None::<&str>, flags, None::<&str>);
            report(&op, r, &probe(a(4)))
        }
        // remount-ro PATH: remount a mount read-only (MS_REMOUNT|MS_BIND|MS_RDONLY); after, whether
        // a file can still be created on it.
        "remount-ro" => {
            use nix::mount::MsFlags;
            let flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
            let r = nix::mount::mount(None::<&str>, a(1), None::<&str>, flags, None::<&str>);
            let w = std::fs::write(format!("{}/w", a(1)), b"x").is_ok();
            report(&op, r, if w { "writable" } else { "read-only" })
        }
        // pivot-root NEW OLD PROBE: in a new mount namespace, pivot_root(NEW, OLD).
        "pivot-root" => {
            let r = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
                .and_then(|()| nix::unistd::pivot_root(a(1), a(2)));
            report(&op, r, &probe(a(3)))
        }
        // pivot-root-dot NEW PROBE: in a new mount namespace, chdir(NEW); pivot_root(".", ".").
        "pivot-root-dot" => {
            let r = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
                .and_then(|()| nix::unistd::chdir(a(1)))
                .and_then(|()| nix::unistd::pivot_root(".", "."));
            report(&op, r, &probe(a(2)))
        }
        // memfd-exec SRC ARGV...: a copy of SRC in a memfd, run by fexecve.
        "memfd-exec" => {
            let r = memfd_copy(a(1), true).and_then(|f| spawn_exec(|| fexecve(f.as_raw_fd(), &args[2..])));
            report(&op, r, "")
        }
        // memfd-exec-proc SRC ARGV...: the same memfd run by execve("/proc/self/fd/N").
        "memfd-exec-proc" => {
            let r = memfd_copy(a(1), false).and_then(|f| {
                let path = format!("/proc/self/fd/{}", f.as_raw_fd());
                spawn_exec(|| {
                    let argv: Vec<CString> = args[2..].iter().map(|s| cstr(s)).collect();
                    nix::unistd::execv(&cstr(&path), &argv).unwrap_err()
                })
            });
            report(&op, r, "")
        }
        // deleted-exec SRC COPY fd|proc ARGV...: SRC copied to COPY, opened, COPY unlinked, then
        // run by fexecve (fd) or by execve("/proc/self/fd/N") (proc).
        "deleted-exec" => {
            let r = (|| {
                std::fs::copy(a(1), a(2)).map_err(|_| Errno::EIO)?;
                let f = std::fs::File::open(a(2)).map_err(|_| Errno::EIO)?;
                std::fs::remove_file(a(2)).map_err(|_| Errno::EIO)?;
                if a(3) == "proc" {
                    // The fd must survive the exec for /proc/self/fd/N to name it.
                    nix::fcntl::fcntl(f.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()))?;
                    let path = format!("/proc/self/fd/{}", f.as_raw_fd());
                    return spawn_exec(|| {
                        let argv: Vec<CString> = args[4..].iter().map(|s| cstr(s)).collect();
                        nix::unistd::execv(&cstr(&path), &argv).unwrap_err()
                    });
                }
                spawn_exec(|| fexecve(f.as_raw_fd(), &args[4..]))
            })();
            report(&op, r, "")
        }
        // run-status ARGV...: runs ARGV and reports its exit status (`exit=N`): for a loader,
        // whose own exec succeeds even when the program it loads is refused.
        "run-status" => run_status(&op, &args[1..]),
        // run-status-memfd FD SRC ARGV...: a memfd holding a copy of SRC at descriptor FD
        // (inherited: no close-on-exec), then as run-status.
        "run-status-memfd" => {
            let r = (|| -> Result<(), Errno> {
                let f = memfd_copy(a(2), true)?;
                let at: i32 = a(1).parse().map_err(|_| Errno::EINVAL)?;
                // SAFETY: dup2 of a descriptor this process owns onto a number it chose; the
                // copy has no close-on-exec flag, on purpose (the child's exec opens it).
                check(unsafe { libc::dup2(f.as_raw_fd(), at) } as i64)?;
                Ok(())
            })();
            if let Err(e) = r {
                return report(&op, Err(e), "memfd");
            }
            run_status(&op, &args[3..])
        }
        // chroot-run DIR exec|fexec|status PROG ARGV...: chroot(DIR) and chdir("/") (DIR "-": no
        // chroot), then runs PROG (a name inside the new root) with ARGV (argv[0] first): by
        // execve (exec), by fexecve of a descriptor opened inside the root (fexec), or by
        // spawning it and reporting its exit status (status, for a loader: `exit=N`).
        "chroot-run" => {
            let rooted =
                if a(1) == "-" { Ok(()) } else { nix::unistd::chroot(a(1)).and_then(|()| nix::unistd::chdir("/")) };
            let argv = &args[4.min(args.len())..];
            let mut after = String::new();
            let r = rooted.and_then(|()| match a(2) {
                "exec" => spawn_exec(|| {
                    let argv: Vec<CString> = argv.iter().map(|s| cstr(s)).collect();
                    nix::unistd::execv(&cstr(a(3)), &argv).unwrap_err()
                }),
                "fexec" => {
                    let f = std::fs::File::open(a(3)).map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(5)))?;
                    spawn_exec(|| fexecve(f.as_raw_fd(), argv))
                }
                "status" => {
                    use std::os::unix::process::CommandExt;
                    let st = std::process::Command::new(a(3))
                        .arg0(argv.first().map(String::as_str).unwrap_or(a(3)))
                        .args(argv.iter().skip(1))
                        .status();
                    after = match st {
                        Ok(s) => format!("exit={}", s.code().unwrap_or(-1)),
                        Err(e) => format!("spawn-error={e}"),
                    };
                    Ok(())
                }
                _ => Err(Errno::EINVAL),
            });
            report(&op, r, &after)
        }
        // marker PATH: creates PATH (proof that a program ran).
        "marker" => {
            let r = std::fs::write(a(1), b"ran\n").map_err(|_| Errno::EIO);
            report(&op, r, "")
        }
        other => {
            eprintln!("guard-e2e do: unknown op {other:?}");
            2
        }
    }
}
