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

/// `guard-e2e do argv-race MODE VARIANT TRIES PROG DIR` or `argv-honest DIR`.
pub fn run(args: &[String]) -> i32 {
    let a = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let code = match a(0) {
        "argv-race" => race(a(1), a(2), a(3).parse().unwrap_or(150), a(4), a(5)),
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

/// Starts a second thread of the exec'ing process that runs `work`, and waits until it runs.
fn second_thread(work: impl FnOnce() + Send + 'static) {
    static STARTED: AtomicBool = AtomicBool::new(false);
    std::thread::spawn(move || {
        STARTED.store(true, Ordering::SeqCst);
        work();
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

/// What the attacking thread changes: one byte of a string, or one pointer of the array.
#[derive(Clone, Copy)]
struct Flip {
    at: usize,
    /// The values that make the argv say A (refused by the rule) and B (allowed).
    a: usize,
    b: usize,
    word: bool,
}

impl Flip {
    fn set(self, to_a: bool) {
        let v = if to_a { self.a } else { self.b };
        // SAFETY: `at` is a byte (or an aligned pointer slot when `word`) of the exec'ing
        // process's own page, which lives until it execs or exits.
        unsafe {
            if self.word {
                std::ptr::write_volatile(self.at as *mut usize, v);
            } else {
                std::ptr::write_volatile(self.at as *mut u8, v as u8);
            }
        }
    }
}

// userfaultfd(2), for the stalled variant (not in the libc crate: linux/userfaultfd.h).
const UFFD_API: u64 = 0xaa;
/// _IOWR(0xaa, 0x3f, struct uffdio_api), _IOWR(0xaa, 0x00, struct uffdio_register),
/// _IOWR(0xaa, 0x03, struct uffdio_copy).
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
const UFFDIO_COPY: libc::c_ulong = 0xc028_aa03;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;

/// A page whose first touch stops the toucher (the kernel's copy of argv, here) until the
/// returned userfaultfd fills it: Err when userfaultfd cannot catch kernel faults here.
fn stalling_page() -> Result<(*mut u8, i32), i32> {
    // SAFETY: userfaultfd and ioctls on the descriptor it returned, with structs of the sizes
    // the ioctl numbers encode; an anonymous private mapping checked against MAP_FAILED.
    unsafe {
        let fd = libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) as i32;
        if fd < 0 {
            return Err(nix::errno::Errno::last() as i32);
        }
        let mut api = [UFFD_API, 0, 0];
        if libc::ioctl(fd, UFFDIO_API, api.as_mut_ptr()) != 0 {
            return Err(nix::errno::Errno::last() as i32);
        }
        let page = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if page == libc::MAP_FAILED {
            return Err(nix::errno::Errno::last() as i32);
        }
        let mut reg = [page as u64, 4096, UFFDIO_REGISTER_MODE_MISSING, 0];
        if libc::ioctl(fd, UFFDIO_REGISTER, reg.as_mut_ptr()) != 0 {
            return Err(nix::errno::Errno::last() as i32);
        }
        Ok((page as *mut u8, fd))
    }
}

/// Waits for the first fault on `page` (registered on `fd`), runs `then`, and fills the page
/// with `fill`, which wakes the faulting thread.
fn serve_fault(fd: i32, page: usize, fill: [u8; 4096], then: impl FnOnce()) {
    let mut msg = [0u8; 32];
    // SAFETY: a read of one struct uffd_msg (32 bytes) into a buffer of that size.
    if unsafe { libc::read(fd, msg.as_mut_ptr() as *mut libc::c_void, 32) } != 32 {
        return;
    }
    then();
    let mut copy = [page as u64, fill.as_ptr() as u64, 4096, 0, 0];
    // SAFETY: UFFDIO_COPY of one page from `fill` (alive for the call) to the registered page.
    unsafe { libc::ioctl(fd, UFFDIO_COPY, copy.as_mut_ptr()) };
}

/// One exec of `prog` (busybox's `touch`, or a script that touches $1) whose argv names DIR/A
/// (refused by an argv rule) or DIR/B (allowed). What a second thread changes, by `mode`:
/// - `strings`: argv = [touch, DIR/?], the last byte of the string;
/// - `pointers`: the same, argv[1] pointing at the string DIR/A or at DIR/B;
/// - `hide`: argv = [touch, DIR/B, DIR/A], argv[2] or the NULL that ends the array (the
///   capture then sees two arguments where the kernel copied three);
/// - `script`: prog is a script, argv = [script, DIR/?], the last byte.
///
/// `variant`:
/// - `free`: the thread flips between A and B in a tight loop while the exec runs (a race an
///   SMP host gives; a uniprocessor VM rarely preempts the exec inside its window);
/// - `stall`: the window made long: argv[0] is on a page the kernel's copy faults on (the
///   kernel copies argv last to first, so the other arguments are already copied) and the
///   thread, woken by the fault (userfaultfd), flips to B when `attack`, then lets the copy
///   go on: the kernel copied the start value, the capture reads the flipped one.
fn race_once(mode: &str, variant: &str, start_a: bool, attack: bool, prog: &CString, dir: &str) -> i32 {
    let Ok(mem) = crate::ops_decide::shared_page() else { return EXEC_FAILED };
    let (a, b) = (format!("{dir}/A"), format!("{dir}/B"));
    if a.len() > 1000 {
        return EXEC_FAILED;
    }
    let arg0 = if mode == "script" { "script" } else { "touch" };
    let stall = if variant == "stall" {
        match stalling_page() {
            Ok(p) => Some(p),
            Err(errno) => return 210 + errno.min(40),
        }
    } else {
        None
    };
    // SAFETY: offsets and lengths within the page (checked above).
    let (name, sa, sb) = unsafe { (put(mem, 0, arg0), put(mem, 1024, &a), put(mem, 2048, &b)) };
    // argv[0] on the stalling page (filled with the same string when the fault is served).
    let mut fill = [0u8; 4096];
    fill[..arg0.len()].copy_from_slice(arg0.as_bytes());
    let name = stall.map_or(name, |(page, _)| page as *const libc::c_char);
    // The argv array lives in the shared page: its slots are what `pointers` and `hide` flip.
    let argv = (mem as usize + 3072) as *mut *const libc::c_char;
    let slots: &[*const libc::c_char] = match mode {
        "strings" | "pointers" | "script" => &[name, sa, std::ptr::null()],
        "hide" => &[name, sb, sa, std::ptr::null()],
        _ => return EXEC_FAILED,
    };
    // SAFETY: at most 4 pointers at offset 3072 of the 4096-byte page.
    unsafe { std::ptr::copy_nonoverlapping(slots.as_ptr(), argv, slots.len()) };
    let flip = match mode {
        "strings" | "script" => Flip { at: sa as usize + a.len() - 1, a: b'A' as usize, b: b'B' as usize, word: false },
        "pointers" => Flip { at: argv as usize + 8, a: sa as usize, b: sb as usize, word: true },
        _ => Flip { at: argv as usize + 16, a: sa as usize, b: 0, word: true },
    };
    flip.set(start_a);
    match stall {
        None => second_thread(move || loop {
            flip.set(true);
            flip.set(false);
        }),
        Some((page, fd)) => {
            let page = page as usize;
            second_thread(move || {
                serve_fault(fd, page, fill, || {
                    if attack {
                        flip.set(false);
                    }
                })
            })
        }
    }
    // SAFETY: `argv` holds `slots.len()` pointers ending in NULL (a flipped slot always holds
    // a string of the page or NULL).
    exec(prog, unsafe { std::slice::from_raw_parts(argv, slots.len()) })
}

/// `tries` execs of `race_once`; prints `RACE mode=M variant=V tries=N attacks=T denied=D
/// killed=K ran_b=B ran_a=A other=O`: denied (the capture saw A: the argv rule refused it),
/// killed (the kernel's copy and the capture differed: the check after the exec), ran_b (B
/// ran), ran_a (A ran: DIR/A was created, the hole). `stall` cycles through three execs: A
/// untouched (refused), B untouched (runs), A flipped to B after the kernel's copy (the
/// attack, counted in `attacks`); `free` starts each exec at A with the thread flipping.
fn race(mode: &str, variant: &str, tries: u32, prog: &str, dir: &str) -> i32 {
    if variant == "stall" {
        if let Err(errno) = stalling_page() {
            println!("RACE mode={mode} variant={variant} unavailable: userfaultfd errno {errno}");
            return 0;
        }
    }
    let prog = cstr(prog);
    let marker = format!("{dir}/A");
    let (mut attacks, mut denied, mut killed, mut ran_b, mut ran_a, mut other) = (0, 0, 0, 0, 0, 0);
    for i in 0..tries {
        let (start_a, attack) = match (variant, i % 3) {
            ("stall", 0) => (true, false),
            ("stall", 1) => (false, false),
            _ => (true, true),
        };
        attacks += u32::from(attack && variant == "stall");
        let end = fork_wait(|| race_once(mode, variant, start_a, attack, &prog, dir));
        if std::path::Path::new(&marker).exists() {
            ran_a += 1;
            std::fs::remove_file(&marker).ok();
            continue;
        }
        match end {
            End::Exited(EXEC_EPERM) => denied += 1,
            End::Exited(0) => ran_b += 1,
            End::Signaled(libc::SIGKILL) => killed += 1,
            End::Exited(code) => {
                other += 1;
                eprintln!("argv-race: exit {code}");
            }
            End::Signaled(sig) => {
                other += 1;
                eprintln!("argv-race: signal {sig}");
            }
        }
    }
    println!(
        "RACE mode={mode} variant={variant} tries={tries} attacks={attacks} denied={denied} killed={killed} \
         ran_b={ran_b} ran_a={ran_a} other={other}"
    );
    0
}

/// Honest execs, each in a forked child, each printing `HONEST name exit=N` or `HONEST name
/// signal=N`: none may be killed. DIR/bin/tool is busybox, DIR/bin/plain a `#!/bin/sh`
/// script touching $1, DIR/bin/script a `#!/bin/sh -e` one touching $1, DIR/bin/nested a
/// script whose interpreter is DIR/bin/plain, DIR/bin/elf32 a 32-bit program that exits 0.
fn honest(dir: &str) -> i32 {
    let tool = format!("{dir}/bin/tool");
    let long = |c: char, n: usize| c.to_string().repeat(n);
    let sh = |marker: &str, extra: Vec<String>| {
        let mut v = vec!["sh".to_string(), "-c".into(), format!("touch {dir}/{marker}"), "x".into()];
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
    // A 32-bit program: 4-byte argc and argv pointers on its stack.
    let elf32 = cstr(&format!("{dir}/bin/elf32"));
    let argv: Vec<CString> = ["elf32", "one", "two"].iter().map(|s| cstr(s)).collect();
    let end = fork_wait(|| {
        let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|s| s.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        exec(&elf32, &ptrs)
    });
    say("elf32", end);
    // An empty argv: the kernel runs the program with one empty argument.
    let prog = cstr(&tool);
    say("empty-argv", fork_wait(|| exec(&prog, &[std::ptr::null()])));
    // An exec from a second thread (it takes over the leader's pid).
    let argv: Vec<CString> = sh("h-thread", vec![]).iter().map(|s| cstr(s)).collect();
    let end = fork_wait(|| {
        let ptrs: Vec<usize> = argv.iter().map(|s| s.as_ptr() as usize).chain(std::iter::once(0)).collect::<Vec<_>>();
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
