//! argv at exec: captured from the exec syscall's own arguments for the records and for argv
//! conditions, and the exec rules with argv conditions.
use aya_ebpf::helpers::{
    bpf_get_current_task_btf,
    generated::{bpf_loop, bpf_probe_read_user, bpf_probe_read_user_str},
};
use core::ffi::c_void;
use guard_common::{
    fnv1a_cstr, reason, Argv, RuleRef, SipHash, Watched, ARG_LEN, MAX_ARGS, MAX_ARGV_RULES, MAX_ARGV_TOKENS,
};

use crate::arch::exec_argv_reg;
use crate::decide::keyed;
use crate::maps::{policy_slot, Scratch, ARGV, ARGV_RULES, ZERO_ARGV};
use crate::resolve::path_hashes;
use crate::task::{current_tid, off, offsets, read_kernel, syscall_nr, syscall_reg};

/// Captures argv of the current exec (execve or execveat) into `ARGV` for this thread.
/// Read from the syscall's own arguments (pt_regs) at `bprm_creds_for_exec`, once per exec
/// and before the binary handlers run (`bprm_check_security` reads the entry), while the old
/// memory is still mapped: a syscall tracepoint would put every task on the host on the slow
/// syscall path. When the caller's memory cannot be read although the kernel's own copy of it
/// succeeded (pages dropped or remapped meanwhile), the entry says `unreadable` and the exec is
/// denied (`argv_unreadable`), since its arguments are unknown. When no entry could be
/// allocated, argv conditions apply to the exec (see [`match_argv_rules`]).
///
/// The caller's memory can change after the kernel copied it (another thread of the caller):
/// [`check_new_argv`] compares the capture with the new image's argv once the exec is done.
/// For that the entry also keeps the kernel's own count of what it copied (`bprm->argc`).
#[inline(always)]
pub fn capture_exec_argv(bprm: *const u8) {
    let Some(reg) = exec_argv_reg(syscall_nr()) else {
        // An exec by another syscall (a 32-bit execve through int 0x80): no capture, so argv
        // conditions apply to it, and an entry left by an earlier exec that failed must not
        // stand for this one.
        ARGV.remove(current_tid()).ok();
        return;
    };
    capture_argv(syscall_reg(reg));
    if let Some(a) = ARGV.get_ptr_mut(current_tid()) {
        // SAFETY: `bprm` is the exec's linux_binprm (read through bpf_probe_read_kernel); `a`
        // is this thread's ARGV entry, just written by this program.
        unsafe {
            let kargc: i32 = read_kernel(bprm.add(off(&offsets().binprm_argc)));
            (*a).kargc = kargc as u32;
        }
    }
}

/// Whether this thread's captured argv could be read (true when none was captured: then argv
/// conditions apply, see [`match_argv_rules`]).
#[inline(always)]
pub fn argv_readable() -> bool {
    match ARGV.get_ptr(current_tid()) {
        // SAFETY: this thread's ARGV entry, a map value valid for the program's run.
        Some(a) => unsafe { (*a).unreadable == 0 },
        None => true,
    }
}

/// Captures the user argv array at `argv` (at most MAX_ARGS arguments of ARG_LEN bytes), with
/// its keyed digest. When a pointer or a string cannot be read, the entry is marked truncated
/// and unreadable. One argument per `bpf_loop` iteration (see `match_argv_rules` for why
/// callbacks).
#[inline(always)]
fn capture_argv(argv: u64) {
    let tid = current_tid();
    let Some(zero) = ZERO_ARGV.get(0) else { return };
    if ARGV.insert(tid, zero, 0).is_err() {
        ARGV.remove(tid).ok();
        return;
    }
    let Some(a) = ARGV.get_ptr_mut(tid) else { return };
    let mut walk = CaptureWalk { digest: keyed(), a, argv };
    // SAFETY: `capture_arg` is a callback of the shape bpf_loop expects, and `walk` lives on
    // this stack for the whole call; `a` is this thread's ARGV entry, just inserted and used by
    // this program only.
    unsafe {
        bpf_loop(
            MAX_ARGS as u32 + 1,
            capture_arg as *const () as *mut c_void,
            &mut walk as *mut CaptureWalk as *mut c_void,
            0,
        );
        walk.digest.write((*a).argc as u64 | ((*a).truncated as u64) << 32);
        (*a).digest = walk.digest.finish(1 + (*a).argc as u64 * (ARG_LEN / 8) as u64);
    }
}

/// `capture_argv`'s state, on the program's stack for the `bpf_loop` callback.
#[repr(C)]
struct CaptureWalk {
    digest: SipHash,
    a: *mut Argv,
    /// The user address of the argv array.
    argv: u64,
}

/// Captures argument `i`; 1 ends the loop (the end of argv, or one that cannot be read).
extern "C" fn capture_arg(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `CaptureWalk` `capture_argv` passed to bpf_loop, on its stack; `a`
    // is this thread's ARGV entry; user memory is read with the probe helpers, bounded by the
    // destination sizes.
    unsafe {
        let walk = &mut *(ctx as *mut CaptureWalk);
        let a = walk.a;
        if i > MAX_ARGS as u64 {
            return 1;
        }
        let mut p: u64 = 0;
        if bpf_probe_read_user(&mut p as *mut u64 as *mut c_void, 8, (walk.argv + 8 * i) as *const c_void) != 0 {
            // Not the end of argv: what follows is unknown.
            (*a).truncated = 1;
            (*a).unreadable = 1;
            return 1;
        }
        if p == 0 {
            return 1;
        }
        if i >= MAX_ARGS as u64 {
            // More arguments than captured: argv conditions cannot see them all.
            (*a).truncated = 1;
            return 1;
        }
        let i = i as usize;
        if bpf_probe_read_user_str((*a).args[i].as_mut_ptr() as *mut c_void, ARG_LEN as u32, p as *const c_void) < 0 {
            (*a).truncated = 1;
            (*a).unreadable = 1;
            return 1;
        }
        // Every byte of the argument's slot: past its NUL they are the zeroes the entry
        // started with, so equal arguments give equal words.
        let words = (*a).args[i].as_ptr() as *const u64;
        for j in 0..ARG_LEN / 8 {
            walk.digest.write(core::ptr::read_unaligned(words.add(j)));
        }
        (*a).argc = i as u32 + 1;
        // Last: the hash loop ends at the NUL, and the verifier walks what follows a loop once
        // per iteration it can leave from.
        (*a).hashes[i] = fnv1a_cstr(&(*a).args[i]);
    }
    0
}

/// Whether every one of the first `ntok` tokens is among the captured arguments argv[1..]
/// (argv[0] is the program's own name, not an argument).
#[inline(always)]
#[expect(
    clippy::needless_range_loop,
    reason = "index loops with constant bounds: the shape the verifier is known to accept here"
)]
pub fn tokens_all_seen(a: &Argv, tokens: &[u64; MAX_ARGV_TOKENS], ntok: u8) -> bool {
    let mut all = true;
    for t in 0..MAX_ARGV_TOKENS {
        if t >= ntok as usize {
            break;
        }
        let mut seen = false;
        for j in 1..MAX_ARGS {
            if j < a.argc as usize && a.hashes[j] == tokens[t] {
                seen = true;
            }
        }
        if !seen {
            all = false;
        }
    }
    all
}

/// The first exec rule with argv conditions that matches, if it comes before `found` in the
/// policy. A program given more arguments than were captured matches any argv condition on
/// its path: what cannot be seen is not assumed harmless (allow rules cannot have argv).
///
/// Both loops (the path's hash, then the rules) are `bpf_loop` callbacks: the verifier checks
/// a callback as one function, where it walked a bounded loop once per iteration for every
/// state the loop was entered in (bprm_check_security verified 390,000 instructions).
#[inline(always)]
pub fn match_argv_rules(s: &Scratch, w: &Watched, found: RuleRef) -> RuleRef {
    let mut walk = RuleWalk {
        base: policy_slot(w) * MAX_ARGV_RULES,
        found_rule: found.rule,
        path_hash: path_hashes(s).0,
        matched: RuleRef { rule: 0, action: 0, _pad: [0; 3] },
    };
    // SAFETY: `argv_rule` is a callback of the shape bpf_loop expects, and `walk` lives on
    // this stack for the whole call.
    unsafe {
        bpf_loop(MAX_ARGV_RULES, argv_rule as *const () as *mut c_void, &mut walk as *mut RuleWalk as *mut c_void, 0)
    };
    if walk.matched.rule != 0 {
        walk.matched
    } else {
        found
    }
}

/// `match_argv_rules`' state, on the program's stack for the `bpf_loop` callback.
#[repr(C)]
struct RuleWalk {
    /// The policy's first slot in ARGV_RULES.
    base: u32,
    /// The rule the path matched (0: none); argv rules after it do not apply.
    found_rule: u32,
    path_hash: u64,
    /// The argv rule that matched; rule 0 while none has.
    matched: RuleRef,
}

/// Rule `i` of the policy's argv rules; 1 ends the loop (no more rules, or one matched).
extern "C" fn argv_rule(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `RuleWalk` `match_argv_rules` passed to bpf_loop, on its stack.
    let walk = unsafe { &mut *(ctx as *mut RuleWalk) };
    let Some(r) = ARGV_RULES.get(walk.base + i as u32) else { return 1 };
    if r.used == 0 || (walk.found_rule != 0 && r.rule > walk.found_rule) {
        return 1;
    }
    if r.path_hash != walk.path_hash {
        return 0;
    }
    // No captured argv (allocation failed): as with too many arguments, the condition applies.
    let applies = match ARGV.get_ptr(current_tid()) {
        // SAFETY: this thread's ARGV entry, valid for the program's run.
        Some(a) => unsafe { (*a).truncated != 0 || tokens_all_seen(&*a, &r.tokens, r.ntok) },
        None => true,
    };
    if !applies {
        return 0;
    }
    walk.matched = RuleRef { rule: r.rule, action: r.action, _pad: [0; 3] };
    1
}

/// After the exec's point of no return (sched_process_exec, before the new program runs an
/// instruction): compares the argv the kernel copied, read back from the new image, with the
/// capture at `a` (what was decided, recorded, shown to an approver and bound by a hold).
/// 0 when they agree; else the reason to kill the process: `ARGV_CHANGED` (another thread
/// changed the caller's memory between the kernel's copy and the capture) or
/// `ARGV_UNREADABLE` (the new image's argv could not be read: nothing says what runs). On
/// `ARGV_CHANGED` the entry is overwritten with the new image's argv, for the record.
///
/// The same rules as the capture: at most MAX_ARGS arguments, each its first ARG_LEN - 1
/// bytes in a zero-filled slot; the count compared is the kernel's (`kargc`, kept at
/// capture), so a changed pointer array (an argument added or hidden) is caught too.
///
/// Where the new argv is: `mm->start_stack` points at argc, followed by the argv pointer
/// array (create_elf_tables; the final handler is always ELF on x86-64: a script or
/// binfmt_misc program runs its ELF interpreter). 8-byte slots for a 64-bit program, 4-byte
/// ones for a 32-bit one: the layout is the one whose argc is `bprm->argc` and whose first
/// pointer is `mm->arg_start`; neither (a non-ELF handler) counts as unreadable.
///
/// Scripts and binfmt_misc (`bprm->interp != bprm->filename`): the kernel dropped argv[0] and
/// put the interpreter, its optional argument and the script's name in front (once per level
/// of nesting), so the captured argv[1..] are the new argv's last kargc - 1 (binfmt_misc's
/// preserve-argv0 flag keeps argv[0] just before them: not compared).
#[inline(always)]
pub fn check_new_argv(bprm: *const u8, a: *mut Argv) -> u8 {
    // SAFETY: `bprm` is the exec's linux_binprm and `mm` the current task's new mm, read with
    // bpf_probe_read_kernel (plain integers and pointers compared, never dereferenced
    // directly); user memory is read with the probe helpers; `a` is this thread's ARGV entry.
    unsafe {
        let nargc: i32 = read_kernel(bprm.add(off(&offsets().binprm_argc)));
        let nargc = nargc as u32 as u64;
        let interp: u64 = read_kernel(bprm.add(off(&offsets().binprm_interp)));
        let filename: u64 = read_kernel(bprm.add(off(&offsets().binprm_filename)));
        let task = bpf_get_current_task_btf() as *const u8;
        let mm: u64 = read_kernel(task.add(off(&offsets().task_mm)));
        if mm == 0 {
            return reason::ARGV_UNREADABLE;
        }
        let arg_start: u64 = read_kernel((mm as *const u8).add(off(&offsets().mm_arg_start)));
        let sp: u64 = read_kernel((mm as *const u8).add(off(&offsets().mm_start_stack)));
        let mut head = [0u64; 2];
        if bpf_probe_read_user(head.as_mut_ptr() as *mut c_void, 16, sp as *const c_void) != 0 {
            return reason::ARGV_UNREADABLE;
        }
        let stride = if head[0] == nargc && head[1] == arg_start {
            8
        } else if head[0] & 0xffff_ffff == nargc && head[0] >> 32 == arg_start {
            4
        } else {
            return reason::ARGV_UNREADABLE;
        };
        let kargc = (*a).kargc as u64;
        let truncated = (*a).truncated != 0;
        // An empty argv: the kernel ran it with one empty argument (the slot is all zeros).
        let argc = match (*a).argc as u64 {
            0 if !truncated => 1,
            n => n,
        };
        // The kernel's count against the capture's: more than MAX_ARGS when cut short.
        let counts_agree = if truncated { kargc > argc } else { kargc == argc };
        let scripted = interp != filename;
        let shape_agrees = if scripted { nargc > kargc } else { nargc == kargc };
        let mut walk = CheckWalk {
            a,
            sp,
            stride,
            shift: if scripted { nargc - kargc } else { 0 },
            first: scripted as u64,
            end: argc,
            result: 0,
        };
        if !counts_agree || !shape_agrees {
            walk.result = reason::ARGV_CHANGED;
        } else {
            // SAFETY (bpf_loop): `check_arg` is a callback of the shape bpf_loop expects, and
            // `walk` lives on this stack for the whole call.
            bpf_loop(
                MAX_ARGS as u32,
                check_arg as *const () as *mut c_void,
                &mut walk as *mut CheckWalk as *mut c_void,
                0,
            );
        }
        if walk.result == reason::ARGV_CHANGED {
            // The record shows what the kernel really ran, from its argv[0].
            walk.shift = 0;
            walk.end = nargc;
            bpf_loop(
                MAX_ARGS as u32,
                load_new_arg as *const () as *mut c_void,
                &mut walk as *mut CheckWalk as *mut c_void,
                0,
            );
            (*a).argc = if nargc < MAX_ARGS as u64 { nargc as u32 } else { MAX_ARGS as u32 };
            (*a).truncated = (nargc > MAX_ARGS as u64) as u32;
        }
        walk.result
    }
}

/// `check_new_argv`'s state, on the program's stack for the `bpf_loop` callbacks.
#[repr(C)]
struct CheckWalk {
    a: *mut Argv,
    /// The new image's `mm->start_stack` (argc, then the argv pointers) and its slot size.
    sp: u64,
    stride: u64,
    /// Captured argument i is the new image's argument i + shift (the interpreter's prefix).
    shift: u64,
    /// The first captured argument compared (1 for a script: its argv[0] was dropped).
    first: u64,
    /// The captured arguments (for `load_new_arg`: the new image's).
    end: u64,
    /// 0, or the reason the arguments do not agree.
    result: u8,
}

/// Reads the new image's argument `j` into `slot` (zero-filled first, as the capture's
/// slots were); false when it cannot be read.
///
/// # Safety
/// `slot` must be valid for writes of ARG_LEN bytes.
#[inline(always)]
unsafe fn read_new_arg(walk: &CheckWalk, j: u64, slot: *mut u8) -> bool {
    let mut p: u64 = 0;
    // SAFETY: user memory of the current (new) image read through the probe helpers, into a
    // local and into `slot`, bounded by their sizes; `slot` by the caller's promise.
    unsafe {
        if bpf_probe_read_user(&mut p as *mut u64 as *mut c_void, 8, (walk.sp + walk.stride * (1 + j)) as *const c_void)
            != 0
        {
            return false;
        }
        if walk.stride == 4 {
            p &= 0xffff_ffff;
        }
        (slot as *mut [u64; ARG_LEN / 8]).write_unaligned([0; ARG_LEN / 8]);
        bpf_probe_read_user_str(slot as *mut c_void, ARG_LEN as u32, p as *const c_void) >= 0
    }
}

/// Compares captured argument `i` with the new image's argument `i + shift`; 1 ends the loop
/// (all compared, or a difference).
extern "C" fn check_arg(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `CheckWalk` `check_new_argv` passed to bpf_loop, on its stack.
    let walk = unsafe { &mut *(ctx as *mut CheckWalk) };
    if i >= MAX_ARGS as u64 || i >= walk.end {
        return 1;
    }
    if i < walk.first {
        return 0;
    }
    let mut new = [0u64; ARG_LEN / 8];
    // SAFETY: `new` is ARG_LEN bytes on this stack.
    if !unsafe { read_new_arg(walk, i + walk.shift, new.as_mut_ptr() as *mut u8) } {
        walk.result = reason::ARGV_UNREADABLE;
        return 1;
    }
    // SAFETY: `a` is this thread's ARGV entry, valid for the program's run; i < MAX_ARGS.
    let old = unsafe { (*walk.a).args[i as usize].as_ptr() as *const u64 };
    for (k, word) in new.iter().enumerate() {
        // SAFETY: k < ARG_LEN / 8: inside the slot.
        if unsafe { core::ptr::read_unaligned(old.add(k)) } != *word {
            walk.result = reason::ARGV_CHANGED;
            return 1;
        }
    }
    0
}

/// Overwrites captured argument `i` with the new image's argument `i`, for the record; 1
/// ends the loop.
extern "C" fn load_new_arg(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `CheckWalk` `check_new_argv` passed to bpf_loop, on its stack.
    let walk = unsafe { &mut *(ctx as *mut CheckWalk) };
    if i >= MAX_ARGS as u64 || i >= walk.end {
        return 1;
    }
    // SAFETY: `a` is this thread's ARGV entry, valid for the program's run; i < MAX_ARGS, so
    // the slot is ARG_LEN bytes inside it.
    let slot = unsafe { (*walk.a).args[i as usize].as_mut_ptr() };
    // SAFETY: as above. A failed read leaves the slot as read so far: the record says what
    // could be read.
    i64::from(!unsafe { read_new_arg(walk, i, slot) })
}
