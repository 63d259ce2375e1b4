//! argv at exec: captured from the exec syscall's own arguments for the records and for argv
//! conditions, and the exec rules with argv conditions.
use aya_ebpf::helpers::generated::{bpf_probe_read_user, bpf_probe_read_user_str};
use core::ffi::c_void;
use guard_common::{
    fnv1a_bounded, fnv1a_cstr, Argv, RuleRef, Watched, ARG_LEN, MAX_ARGS, MAX_ARGV_RULES, MAX_ARGV_TOKENS,
};

use crate::arch::exec_argv_reg;
use crate::decide::keyed;
use crate::maps::{policy_slot, Scratch, ARGV, ARGV_RULES, ZERO_ARGV};
use crate::task::{current_tid, syscall_nr, syscall_reg};

/// Captures argv of the current exec (execve or execveat) into `ARGV` for this thread.
/// Read from the syscall's own arguments (pt_regs) at `bprm_creds_for_exec`, once per exec
/// and before the binary handlers run (`bprm_check_security` reads the entry), while the old
/// memory is still mapped: a syscall tracepoint would put every task on the host on the slow
/// syscall path. When the caller's memory cannot be read although the kernel's own copy of it
/// succeeded (pages dropped or remapped meanwhile), the entry says `unreadable` and the exec is
/// denied (`argv_unreadable`), since its arguments are unknown. When no entry could be
/// allocated, argv conditions apply to the exec (see [`match_argv_rules`]).
#[inline(always)]
pub fn capture_exec_argv() {
    if let Some(reg) = exec_argv_reg(syscall_nr()) {
        capture_argv(syscall_reg(reg));
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
/// and unreadable.
#[inline(always)]
fn capture_argv(argv: u64) {
    let tid = current_tid();
    let Some(zero) = ZERO_ARGV.get(0) else { return };
    if ARGV.insert(tid, zero, 0).is_err() {
        ARGV.remove(tid).ok();
        return;
    }
    let Some(a) = ARGV.get_ptr_mut(tid) else { return };
    let mut digest = keyed();
    // SAFETY: `a` is this thread's ARGV entry, just inserted and used by this program only;
    // user memory is read with the probe helpers, bounded by the destination sizes.
    unsafe {
        for i in 0..=MAX_ARGS {
            let mut p: u64 = 0;
            if bpf_probe_read_user(&mut p as *mut u64 as *mut c_void, 8, (argv + 8 * i as u64) as *const c_void) != 0 {
                // Not the end of argv: what follows is unknown.
                (*a).truncated = 1;
                (*a).unreadable = 1;
                break;
            }
            if p == 0 {
                break;
            }
            if i == MAX_ARGS {
                // More arguments than captured: argv conditions cannot see them all.
                (*a).truncated = 1;
                break;
            }
            if bpf_probe_read_user_str((*a).args[i].as_mut_ptr() as *mut c_void, ARG_LEN as u32, p as *const c_void) < 0
            {
                (*a).truncated = 1;
                (*a).unreadable = 1;
                break;
            }
            (*a).hashes[i] = fnv1a_cstr(&(*a).args[i]);
            // Every byte of the argument's slot: past its NUL they are the zeroes the entry
            // started with, so equal arguments give equal words.
            let words = (*a).args[i].as_ptr() as *const u64;
            for j in 0..ARG_LEN / 8 {
                digest.write(core::ptr::read_unaligned(words.add(j)));
            }
            (*a).argc = i as u32 + 1;
        }
        digest.write((*a).argc as u64 | ((*a).truncated as u64) << 32);
        (*a).digest = digest.finish(1 + (*a).argc as u64 * (ARG_LEN / 8) as u64);
    }
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
#[inline(always)]
pub fn match_argv_rules(s: &Scratch, w: &Watched, found: RuleRef) -> RuleRef {
    // No captured argv (allocation failed): as with too many arguments, the condition applies.
    let a = ARGV.get_ptr(current_tid());
    let path_hash = fnv1a_bounded(&s.buf, s.len as usize);
    let base = policy_slot(w) * MAX_ARGV_RULES;
    for i in 0..MAX_ARGV_RULES {
        let Some(r) = ARGV_RULES.get(base + i) else { break };
        if r.used == 0 || (found.rule != 0 && r.rule > found.rule) {
            break;
        }
        if r.path_hash != path_hash {
            continue;
        }
        let applies = match a {
            // SAFETY: this thread's ARGV entry, valid for the program's run.
            Some(a) => unsafe { (*a).truncated != 0 || tokens_all_seen(&*a, &r.tokens, r.ntok) },
            None => true,
        };
        if applies {
            return RuleRef { rule: r.rule, action: r.action, _pad: [0; 3] };
        }
    }
    found
}
