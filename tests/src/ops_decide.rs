//! Workload ops of the decide/hold escape tests (`escape_decide`): a held syscall whose
//! arguments the caller rewrites before the restart, syscalls that meet two asks, and a flood
//! of audited opens. Each prints `RESULT ok|errno=N OP` like the ops in `ops.rs`.

use crate::ops::cstr;
use nix::errno::Errno;
use std::{io::Write, time::Duration};

fn report(op: &str, r: Result<(), Errno>) -> i32 {
    match r {
        Ok(()) => println!("RESULT ok {op}"),
        Err(e) => println!("RESULT errno={} {op}", e as i32),
    }
    std::io::stdout().flush().ok();
    i32::from(r.is_err())
}

/// `guard-e2e do dec-... ARGS`.
pub fn run(args: &[String]) -> i32 {
    let a = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let op = args.join(" ");
    let r = match a(0) {
        "dec-exec-rewrite" => exec_rewrite(a(1), a(2), a(3), a(4)),
        "dec-create-rewrite" => create_rewrite(a(1), a(2)),
        "dec-open-trunc" => {
            let p = cstr(a(1));
            // SAFETY: p is a NUL-terminated path that lives until the call returns.
            let fd = unsafe { libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_TRUNC) };
            if fd >= 0 {
                // SAFETY: the fd the kernel just returned, closed once.
                unsafe { libc::close(fd) };
                Ok(())
            } else {
                Err(Errno::last())
            }
        }
        "dec-flood" => return flood(a(1), a(2).parse().unwrap_or(32)),
        other => {
            eprintln!("guard-e2e do: unknown op {other:?}");
            return 2;
        }
    };
    report(&op, r)
}

/// One shared, writable page: the memory the held syscall reads its arguments from, and that
/// the parent rewrites while the child is stopped (what a SIGCONT handler would do).
pub(crate) fn shared_page() -> Result<*mut u8, Errno> {
    // SAFETY: an anonymous shared mapping of one page; the result is checked against MAP_FAILED.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if mem == libc::MAP_FAILED {
        return Err(Errno::last());
    }
    Ok(mem as *mut u8)
}

/// Writes `s` and a NUL at `mem + at`.
///
/// # Safety
/// `mem` is a 4096-byte writable mapping and `at + s.len() < 4096`.
unsafe fn put(mem: *mut u8, at: usize, s: &str) {
    // SAFETY: in bounds of the mapping by the caller's promise; `s` does not overlap it.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), mem.add(at), s.len());
        *mem.add(at + s.len()) = 0;
    }
}

/// Forks a child that runs `child` (which must only make async-signal-safe calls and return
/// an exit code); after 1.5 s (the child is held by then) rewrites the shared page with
/// `rewrite`, prints REWRITTEN, and returns the child's outcome (exit code = errno).
fn held_child(child: impl FnOnce() -> i32, rewrite: impl FnOnce()) -> Result<(), Errno> {
    // SAFETY: the child only runs `child` (async-signal-safe calls) and _exit.
    match unsafe { libc::fork() } {
        0 => {
            let code = child();
            // SAFETY: _exit ends the forked child without unwinding into the parent's state.
            unsafe { libc::_exit(code) };
        }
        pid if pid > 0 => {
            std::thread::sleep(Duration::from_millis(1500));
            rewrite();
            println!("REWRITTEN");
            std::io::stdout().flush().ok();
            let mut status = 0;
            // SAFETY: pid is our own child and status a valid, writable int.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            match libc::WEXITSTATUS(status) {
                0 => Ok(()),
                code => Err(Errno::from_raw(code)),
            }
        }
        _ => Err(Errno::last()),
    }
}

/// execve(prog, ["busybox", applet, from]) with the last argument in shared memory, rewritten
/// to `to` (same length or shorter) while the exec is held.
fn exec_rewrite(prog: &str, applet: &str, from: &str, to: &str) -> Result<(), Errno> {
    if from.len() > 1000 || to.len() > 1000 || applet.len() > 1000 {
        return Err(Errno::EINVAL);
    }
    let mem = shared_page()?;
    // SAFETY: offsets and lengths within the 4096-byte page (checked above).
    unsafe {
        put(mem, 0, "busybox");
        put(mem, 1024, applet);
        put(mem, 2048, from);
    }
    let prog = cstr(prog);
    held_child(
        || {
            // SAFETY: the strings are NUL-terminated in the shared page; the array ends in NULL.
            let argv: [*const libc::c_char; 4] =
                unsafe { [mem as _, mem.add(1024) as _, mem.add(2048) as _, std::ptr::null()] };
            let envp: [*const libc::c_char; 1] = [std::ptr::null()];
            // SAFETY: prog is NUL-terminated; argv and envp are NULL-terminated arrays.
            unsafe { libc::execve(prog.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            Errno::last() as i32
        },
        // SAFETY: `to` fits the page (checked above).
        || unsafe { put(mem, 2048, to) },
    )
}

/// open(from, O_WRONLY|O_CREAT|O_EXCL, 0644) with the path in shared memory, rewritten to
/// `to` while the creation is held.
fn create_rewrite(from: &str, to: &str) -> Result<(), Errno> {
    if from.len() > 4000 || to.len() > 4000 {
        return Err(Errno::EINVAL);
    }
    let mem = shared_page()?;
    // SAFETY: within the page (checked above).
    unsafe { put(mem, 0, from) };
    held_child(
        || {
            // SAFETY: mem holds a NUL-terminated path.
            let fd =
                unsafe { libc::open(mem as *const libc::c_char, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o644) };
            if fd >= 0 {
                0
            } else {
                Errno::last() as i32
            }
        },
        // SAFETY: within the page (checked above).
        || unsafe { put(mem, 0, to) },
    )
}

/// Opens `path` read-only `n` times; prints `FLOOD ok=A eperm=B other=C`.
fn flood(path: &str, n: usize) -> i32 {
    let p = cstr(path);
    let (mut ok, mut eperm, mut other) = (0, 0, 0);
    for _ in 0..n {
        // SAFETY: p is a NUL-terminated path that lives until the call returns.
        let fd = unsafe { libc::open(p.as_ptr(), libc::O_RDONLY) };
        if fd >= 0 {
            ok += 1;
            // SAFETY: the fd the kernel just returned, closed once.
            unsafe { libc::close(fd) };
        } else if Errno::last() == Errno::EPERM {
            eperm += 1;
        } else {
            other += 1;
        }
    }
    println!("FLOOD ok={ok} eperm={eperm} other={other}");
    std::io::stdout().flush().ok();
    0
}
