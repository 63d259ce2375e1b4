//! Workload ops of the argv escape tests (`escape_argv`): execs whose argv a second thread
//! rewrites while the kernel copies it (the strings, a pointer, the array's end), and honest
//! execs the check must never kill (many and long arguments, an empty argv, scripts, an exec
//! from a thread, execveat of a descriptor).

use crate::ops::cstr;
use std::{
    ffi::CString,
    io::Write,
    os::fd::AsRawFd,
    sync::atomic::{AtomicBool, Ordering},
};

pub const OPS: &[&str] = &["argv-race", "argv-honest"];

/// Exit code of a forked child whose exec failed with EPERM (a decision refused it).
const EXEC_EPERM: i32 = 200;
/// Exit code of a forked child whose exec failed otherwise.
const EXEC_FAILED: i32 = 201;

/// `guard-e2e do argv-race MODE TRIES PROG DIR` or `argv-honest DIR`.
pub fn run(args: &[String]) -> i32 {
    let a = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let code = match a(0) {
        "argv-race" => race(a(1), a(2).parse().unwrap_or(200), a(3), a(4)),
        "argv-honest" => honest(a(1)),
        other => {
            eprintln!("guard-e2e do: unknown op {other:?}");
            2
        }
    };
    std::io::stdout().flush().ok();
    code
}

/// How a forked child ended.
enum End {
    Exited(i32),
    Signaled(i32),
}

/// Forks a child that runs `child` (async-signal-safe calls, threads of its own, an exec)
/// and _exits with its result; waits for it.
fn fork_wait(child: impl FnOnce() -> i32) -> End {
    // SAFETY: this process is single-threaded (a `guard-e2e do` op), so the child may run any
    // code, threads included, before it execs or _exits.
    match unsafe { libc::fork() } {
        0 => {
            let code = child();
            // SAFETY: _exit ends the forked child without unwinding into the parent's state.
            unsafe { libc::_exit(code) };
        }
        pid if pid > 0 => {
            let mut status = 0;
            // SAFETY: pid is our own child and status a valid, writable int.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            if libc::WIFSIGNALED(status) {
                End::Signaled(libc::WTERMSIG(status))
            } else {
                End::Exited(libc::WEXITSTATUS(status))
            }
        }
        _ => End::Exited(EXEC_FAILED),
    }
}

/// execve(prog, argv, no environment); returns the exit code for a failure.
fn exec(prog: &CString, argv: &[*const libc::c_char]) -> i32 {
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: prog is NUL-terminated; argv ends in NULL (the callers' arrays) and its strings
    // are NUL-terminated; envp is an empty NULL-terminated array.
    unsafe { libc::execve(prog.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    if nix::errno::Errno::last() == nix::errno::Errno::EPERM {
        EXEC_EPERM
    } else {
        EXEC_FAILED
    }
}

/// A second thread of the exec'ing process that stores `one`, then `two`, at `at`, without
/// pause, until the exec ends it (de_thread kills it) or the exec fails (the child _exits).
fn flip(at: usize, one: usize, two: usize, word: bool) {
    static STARTED: AtomicBool = AtomicBool::new(false);
    std::thread::spawn(move || {
        STARTED.store(true, Ordering::SeqCst);
        loop {
            // SAFETY: `at` is a writable byte (or an aligned usize when `word`) of the child's
            // own page, which lives until the process execs or exits.
            unsafe {
                if word {
                    std::ptr::write_volatile(at as *mut usize, one);
                    std::ptr::write_volatile(at as *mut usize, two);
                } else {
                    std::ptr::write_volatile(at as *mut u8, one as u8);
                    std::ptr::write_volatile(at as *mut u8, two as u8);
                }
            }
        }
    });
    while !STARTED.load(Ordering::SeqCst) {
        std::hint::spin_loop();
    }
}

/// Writes `s` and a NUL at `mem + at`; returns its address.
///
/// # Safety
/// `mem` is a 4096-byte writable mapping and `at + s.len() < 4096`.
unsafe fn put(mem: *mut u8, at: usize, s: &str) -> *const libc::c_char {
    // SAFETY: in bounds of the mapping by the caller's promise; `s` does not overlap it.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), mem.add(at), s.len());
        *mem.add(at + s.len()) = 0;
        mem.add(at) as *const libc::c_char
    }
}

/// One exec of `prog` whose argv names DIR/A (refused by an argv rule) or DIR/B (allowed),
/// while a second thread flips between the two:
/// - `strings`: argv = [tool, touch, DIR/?], the last byte of the string flipped;
/// - `pointers`: the same, argv[2] pointing at the string DIR/A or at DIR/B;
/// - `hide`: argv = [tool, touch, DIR/B, DIR/A], argv[3] flipped with the NULL that ends the
///   array (the capture sees three arguments where the kernel copied four);
/// - `script`: prog is a script, argv = [script, DIR/?], the last byte flipped.
fn race_once(mode: &str, prog: &CString, dir: &str) -> i32 {
    let Ok(mem) = crate::ops_decide::shared_page() else { return EXEC_FAILED };
    let (a, b) = (format!("{dir}/A"), format!("{dir}/B"));
    if a.len() > 1000 {
        return EXEC_FAILED;
    }
    // SAFETY: offsets and lengths within the page (checked above).
    let (tool, touch, sa, sb) = unsafe { (put(mem, 0, "tool"), put(mem, 16, "touch"), put(mem, 1024, &a), put(mem, 2048, &b)) };
    let last = a.len() - 1;
    // The argv array lives in the same page: its slots are what `pointers` and `hide` flip.
    let argv = (mem as usize + 3072) as *mut *const libc::c_char;
    let slots: &[*const libc::c_char] = match mode {
        "strings" => &[tool, touch, sa, std::ptr::null()],
        "pointers" => &[tool, touch, sa, std::ptr::null()],
        "hide" => &[tool, touch, sb, sa, std::ptr::null()],
        "script" => &[tool, sa, std::ptr::null()],
        _ => return EXEC_FAILED,
    };
    // SAFETY: at most 5 pointers at offset 3072 of the 4096-byte page.
    unsafe { std::ptr::copy_nonoverlapping(slots.as_ptr(), argv, slots.len()) };
    match mode {
        "strings" | "script" => flip(sa as usize + last, b'A' as usize, b'B' as usize, false),
        "pointers" => flip(argv as usize + 16, sa as usize, sb as usize, true),
        _ => flip(argv as usize + 24, sa as usize, 0, true),
    }
    // SAFETY: `argv` holds `slots.len()` pointers ending in NULL (a flipped slot always holds
    // a string of the page or NULL).
    exec(prog, unsafe { std::slice::from_raw_parts(argv, slots.len()) })
}

/// `tries` execs of `race_once`; prints `RACE mode=M tries=N denied=D killed=K ran_b=B
/// ran_a=A other=O`: denied (the capture saw A: the argv rule refused it), killed (the
/// kernel's copy and the capture differed: the check after the exec), ran_b (B ran), ran_a
/// (A ran: DIR/A was created, the hole).
fn race(mode: &str, tries: u32, prog: &str, dir: &str) -> i32 {
    let prog = cstr(prog);
    let marker = format!("{dir}/A");
    let (mut denied, mut killed, mut ran_b, mut ran_a, mut other) = (0, 0, 0, 0, 0);
    for _ in 0..tries {
        let end = fork_wait(|| race_once(mode, &prog, dir));
        if std::path::Path::new(&marker).exists() {
            ran_a += 1;
            std::fs::remove_file(&marker).ok();
            continue;
        }
        match end {
            End::Exited(EXEC_EPERM) => denied += 1,
            End::Exited(0) => ran_b += 1,
            End::Signaled(libc::SIGKILL) => killed += 1,
            _ => other += 1,
        }
    }
    println!("RACE mode={mode} tries={tries} denied={denied} killed={killed} ran_b={ran_b} ran_a={ran_a} other={other}");
    0
}

/// Honest execs, each in a forked child, each printing `HONEST name exit=N` or `HONEST name
/// signal=N`: none may be killed. DIR/bin/tool is busybox, DIR/bin/plain a `#!/bin/sh`
/// script touching $1, DIR/bin/script a `#!/bin/sh -e` one touching $1, DIR/bin/nested a
/// script whose interpreter is DIR/bin/plain.
fn honest(dir: &str) -> i32 {
    let tool = format!("{dir}/bin/tool");
    let long = |c: char, n: usize| c.to_string().repeat(n);
    let sh = |marker: &str, extra: Vec<String>| {
        let mut v = vec!["tool".to_string(), "sh".into(), "-c".into(), format!("touch {dir}/{marker}"), "x".into()];
        v.extend(extra);
        v
    };
    let many: Vec<String> = (1..=12).map(|i| i.to_string()).collect();
    let longs: Vec<String> = vec![long('a', 300), long('b', 64), long('c', 63), long('d', 65)];
    let script_args = |marker: &str| {
        let mut v = vec!["script".to_string(), format!("{dir}/{marker}")];
        v.extend((0..10).map(|i| long(char::from(b'a' + i), 100)));
        v
    };
    let cases: Vec<(&str, String, Vec<String>)> = vec![
        ("many-args", tool.clone(), sh("h-many", many)),
        ("long-args", tool.clone(), sh("h-long", longs)),
        ("plain-script", format!("{dir}/bin/plain"), script_args("h-plain")),
        ("script-with-interpreter-arg", format!("{dir}/bin/script"), script_args("h-script")),
        ("nested-script", format!("{dir}/bin/nested"), script_args("h-nested")),
    ];
    for (name, prog, argv) in cases {
        let prog = cstr(&prog);
        let argv: Vec<CString> = argv.iter().map(|s| cstr(s)).collect();
        let end = fork_wait(|| {
            let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|s| s.as_ptr()).collect();
            ptrs.push(std::ptr::null());
            exec(&prog, &ptrs)
        });
        say(name, end);
    }
    // An empty argv: the kernel runs the program with one empty argument.
    let prog = cstr(&tool);
    say("empty-argv", fork_wait(|| exec(&prog, &[std::ptr::null()])));
    // An exec from a second thread (it takes over the leader's pid).
    let argv: Vec<CString> = sh("h-thread", vec![]).iter().map(|s| cstr(s)).collect();
    let end = fork_wait(|| {
        let ptrs: Vec<usize> =
            argv.iter().map(|s| s.as_ptr() as usize).chain(std::iter::once(0)).collect::<Vec<_>>();
        let prog = prog.clone();
        let t = std::thread::spawn(move || {
            let p: Vec<*const libc::c_char> = ptrs.iter().map(|&p| p as *const libc::c_char).collect();
            exec(&prog, &p)
        });
        t.join().unwrap_or(EXEC_FAILED)
    });
    say("thread-exec", end);
    // execveat of a descriptor (the kernel's filename is /dev/fd/N).
    let argv: Vec<CString> = sh("h-fd", vec![]).iter().map(|s| cstr(s)).collect();
    let end = fork_wait(|| {
        let Ok(f) = std::fs::File::open(&tool) else { return EXEC_FAILED };
        let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|s| s.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        let envp: [*const libc::c_char; 1] = [std::ptr::null()];
        // SAFETY: an open fd, an empty NUL-terminated path, NULL-terminated argv and envp.
        unsafe {
            libc::syscall(
                libc::SYS_execveat,
                f.as_raw_fd(),
                c"".as_ptr(),
                ptrs.as_ptr(),
                envp.as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        };
        EXEC_FAILED
    });
    say("execveat-fd", end);
    0
}

fn say(name: &str, end: End) {
    match end {
        End::Exited(code) => println!("HONEST {name} exit={code}"),
        End::Signaled(sig) => println!("HONEST {name} signal={sig}"),
    }
    std::io::stdout().flush().ok();
}
