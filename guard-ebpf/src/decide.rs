//! The decision: a matched rule or the policy default becomes allow, deny, a record, or a hold
//! (the thread stops until the agent's verdict), and each outcome becomes an event on the
//! ring buffer.
use aya_ebpf::{
    bindings::BPF_RB_FORCE_WAKEUP,
    helpers::generated::{bpf_loop, bpf_send_signal_thread},
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns, generated::bpf_probe_read_kernel},
    maps::ring_buf::RingBufEntry,
};
use core::ffi::c_void;
use guard_common::{
    kind, object_bytes_mask, reason, Action, Approved, Event, Hold, Hook, RuleRef, SipHash, Watched, APPROVED_SLOTS,
    ARG_LEN, EPERM, ERESTARTNOINTR, IO_URING_DENY, MAX_ARGS, OBJECT_LEN, SIGSTOP,
};

use crate::arch::NR_IO_URING_ENTER;
use crate::hooks::agent_alive;
use crate::maps::{bump, bump_lost, policy, Scratch, APPROVED, ARGV, BUF_LEN, EVENTS, GRACE, HOLDS, VERDICTS};
use crate::task::{current_tid, parent_tgid, syscall_nr, task_flags, PF_IO_WORKER};

/// An approved creation also covers the open that follows it for this long; approvals given
/// in one syscall last this long after the last of them (see `APPROVED`).
const GRACE_NS: u64 = 2_000_000_000;

/// The SipHash key of hold bindings, drawn by the agent at each load and written into frozen
/// .rodata (like `OFFSETS`): the watched tree cannot read it (unprivileged; a root tree's
/// access to guard's own maps is the self-protection issue), so it cannot compute bindings.
#[no_mangle]
static HOLD_KEY: [u64; 2] = [0, 0];

/// The SipHash of the key (see [`HOLD_KEY`]).
#[inline(always)]
pub fn keyed() -> SipHash {
    // SAFETY: references to a static: valid and aligned. Volatile for the reason given at
    // `task::off` (only the loader fills the value in).
    let (k0, k1) = unsafe { (core::ptr::read_volatile(&HOLD_KEY[0]), core::ptr::read_volatile(&HOLD_KEY[1])) };
    SipHash::new(k0, k1)
}

/// A keyed digest of the object in `s`: its length, whether it was truncated, and every one of
/// its bytes. Computed once per hold.
///
/// The words are hashed in a `bpf_loop` callback (kernel 5.17+), which the verifier checks as
/// one function rather than walking a bounded loop once per iteration for every state a hold
/// is entered in: with an inline loop, the digest alone was 60,000-700,000 verified
/// instructions per program, and loading took 20 s on 6.12 at every agent start.
/// The length written first makes the message self-delimiting, so `finish` is given a
/// constant rather than the count of words hashed.
#[inline(always)]
fn object_digest(s: &Scratch) -> u64 {
    let mut walk = DigestWalk { h: keyed(), s: s as *const Scratch, len: s.len };
    walk.h.write(s.len | (s.truncated << 32));
    // SAFETY: `digest_word` is a callback of the shape bpf_loop expects, and `walk` lives on
    // this stack for the whole call. Its only failure (too many loops) cannot happen with this
    // constant, and would only leave the digest shorter, never skip the hold.
    unsafe {
        bpf_loop(
            (BUF_LEN / 8) as u32,
            digest_word as *const () as *mut c_void,
            &mut walk as *mut DigestWalk as *mut c_void,
            0,
        )
    };
    walk.h.finish(0)
}

/// `object_digest`'s state, on the program's stack for the `bpf_loop` callback.
#[repr(C)]
struct DigestWalk {
    h: SipHash,
    s: *const Scratch,
    len: u64,
}

/// Hashes word `i` of the object (bytes past its end masked to zero); 1 ends the loop.
extern "C" fn digest_word(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `DigestWalk` `object_digest` passed to bpf_loop, on its stack.
    let walk = unsafe { &mut *(ctx as *mut DigestWalk) };
    if i >= (BUF_LEN / 8) as u64 || 8 * i >= walk.len {
        return 1;
    }
    // SAFETY: `s` is the scratch map value `object_digest` was given, valid for the program's
    // run; i < BUF_LEN / 8, so the 8 bytes are inside `buf`.
    let word = unsafe { core::ptr::read_unaligned((*walk.s).buf.as_ptr().add(i as usize * 8) as *const u64) };
    walk.h.write(word & object_bytes_mask(walk.len, i));
    0
}

/// The binding of an operation: what an approval covers. A keyed hash of the object's digest,
/// the hook, its aux (access mode, rename direction, creation mode...), and for exec the argv
/// as captured (argc, truncation, the argument bytes). A restart whose object, access or argv
/// differs in any byte gets another binding, so a new request.
#[inline(always)]
fn binding(object: u64, hook: u8, aux: u64) -> u64 {
    let mut h = keyed();
    h.write(object);
    h.write(hook as u64);
    h.write(aux);
    let mut total = 3;
    if hook == Hook::Exec as u8 {
        // The argv as captured, by its keyed digest (see `Argv::digest`); no entry (it could
        // not be allocated) binds as a value no digest is.
        let digest = match ARGV.get_ptr(current_tid()) {
            // SAFETY: this thread's ARGV entry, a map value valid for the program's run.
            Some(a) => unsafe { (*a).digest },
            None => u64::MAX,
        };
        h.write(digest);
        total += 1;
    }
    h.finish(total)
}

/// What the hook knows about the operation, for the decision and its event.
pub struct Op {
    pub hook: Hook,
    pub aux: u64,
    /// Holding is possible only where the hook's error reaches the syscall's return.
    pub holdable: bool,
    /// Record even a default allow (the operation is privileged in itself).
    pub always_record: bool,
}

/// What an event says about the operation's outcome (the rest comes from the `Op`, the
/// current task and the object in `Scratch`).
#[derive(Clone, Copy)]
pub struct Outcome {
    /// `guard_common::kind`.
    pub kind: u8,
    /// `guard_common::Action` as u8.
    pub action: u8,
    /// `guard_common::reason`; 0 where none applies (exec records).
    pub reason: u8,
    /// Rule index + 1; 0 = the default.
    pub rule: u32,
    /// The hold's sequence number; 0 when there is no hold.
    pub seq: u64,
    /// The hold hash; 0 when not computed.
    pub hash: u64,
}

impl Outcome {
    /// A decision the kernel made on its own.
    #[inline(always)]
    pub fn decision(action: u8, reason: u8, rule: u32, hash: u64) -> Self {
        Self { kind: kind::DECISION, action, reason, rule, seq: 0, hash }
    }

    /// A hold that ended (approved, denied or expired).
    #[inline(always)]
    fn resolved(reason: u8, rule: u32, seq: u64, hash: u64) -> Self {
        Self { kind: kind::RESOLVED, action: Action::Ask as u8, reason, rule, seq, hash }
    }
}

/// Sends one event; `s` supplies the object. Returns false when the ring buffer is full.
#[inline(always)]
pub fn emit(s: &Scratch, w: &Watched, op: &Op, out: Outcome) -> bool {
    let Some(entry) = EVENTS.reserve::<Event>(0) else {
        bump_lost();
        return false;
    };
    fill_and_submit(entry, s, w, op, out);
    true
}

/// Fills a reserved event and submits it.
#[inline(always)]
fn fill_and_submit(mut entry: RingBufEntry<Event>, s: &Scratch, w: &Watched, op: &Op, out: Outcome) {
    let e = entry.as_mut_ptr();
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: `e` points to a reserved ring buffer record of size_of::<Event>() bytes that only
    // this program writes until it submits it. The copies are bounded by the field sizes.
    unsafe {
        (*e).kind = out.kind;
        (*e).hook = op.hook as u8;
        (*e).action = out.action;
        (*e).reason = out.reason;
        (*e).policy = w.policy;
        (*e).truncated = s.truncated as u8;
        (*e).argc = 0;
        (*e)._pad = 0;
        (*e).tgid = (pid_tgid >> 32) as u32;
        (*e).tid = pid_tgid as u32;
        (*e).ppid = parent_tgid();
        (*e).uid = bpf_get_current_uid_gid() as u32;
        (*e).rule = out.rule;
        (*e)._pad2 = 0;
        (*e).aux = op.aux;
        (*e).seq = out.seq;
        (*e).hash = out.hash;
        (*e).time_ns = bpf_ktime_get_ns();
        bpf_probe_read_kernel(
            (*e).object.as_mut_ptr() as *mut c_void,
            OBJECT_LEN as u32,
            s.buf.as_ptr() as *const c_void,
        );
        if op.hook as u8 == Hook::Exec as u8 {
            if let Some(a) = ARGV.get_ptr(pid_tgid as u32) {
                (*e).argc = (*a).argc as u8;
                bpf_probe_read_kernel(
                    (*e).argv.as_mut_ptr() as *mut c_void,
                    (MAX_ARGS * ARG_LEN) as u32,
                    (*a).args.as_ptr() as *const c_void,
                );
            } else {
                (*e).argv[0][0] = 0;
            }
        } else {
            (*e).argv[0][0] = 0;
        }
    }
    // A hold must wake the agent at once; other records can ride along.
    let flags = if out.kind == kind::HOLD { BPF_RB_FORCE_WAKEUP as u64 } else { 0 };
    entry.submit(flags);
}

/// The operation comes through io_uring: from an io-wq worker or the SQPOLL thread (both are
/// PF_IO_WORKER tasks, tracked into the tree at task_newtask), or inline in io_uring_enter.
/// Nothing restarts such a request, so it cannot be held.
#[inline(always)]
pub fn via_io_uring() -> bool {
    task_flags() & PF_IO_WORKER != 0 || syscall_nr() == NR_IO_URING_ENTER
}

/// Applies a matched rule (or the policy default) to the operation described by `op` and `s`.
#[inline(always)]
pub fn decide(s: &mut Scratch, w: &Watched, op: &Op, found: RuleRef) -> i32 {
    // A watched task whose policy slot cannot be read is denied, never allowed (an array
    // lookup within bounds does not fail: this is the fail-closed branch, not a path).
    let Some(conf) = policy(w) else { return -EPERM };
    if conf.io_uring == IO_URING_DENY && via_io_uring() {
        emit(s, w, op, Outcome::decision(Action::Deny as u8, reason::IO_URING, found.rule, 0));
        return -EPERM;
    }
    let (action, rule, reason) = if found.rule != 0 {
        (found.action, found.rule, reason::RULE)
    } else {
        (conf.default_action, 0, reason::DEFAULT)
    };
    let record = rule != 0 || op.always_record || action != Action::Allow as u8;
    if action == Action::Allow as u8 || action == Action::Audit as u8 {
        if record && !emit(s, w, op, Outcome::decision(action, reason, rule, 0)) && action == Action::Audit as u8 {
            // An audit rule promises a record: without room for it, the operation does not
            // happen. The agent records these from the counter (the ring has no room).
            bump(reason::RING_FULL as u32);
            return -EPERM;
        }
        return 0;
    }
    if action == Action::Deny as u8 {
        emit(s, w, op, Outcome::decision(action, reason, rule, 0));
        return -EPERM;
    }
    hold(s, w, op, rule, conf.hold_deadline_ns)
}

/// An ask: consumes the agent's verdict if one is waiting for this very operation, else stops
/// the thread (SIGSTOP, -ERESTARTNOINTR) and sends the hold to the agent.
#[inline(always)]
fn hold(s: &mut Scratch, w: &Watched, op: &Op, rule: u32, deadline_ns: u64) -> i32 {
    let tid = current_tid();
    let object = object_digest(s);
    let hash = binding(object, op.hook as u8, op.aux);
    let nr = syscall_nr();
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };

    // An approved creation covers the open of the file it created (O_CREAT opens pass
    // path_mknod, then file_open on the new file), and nothing else: the same object, by its
    // keyed binding.
    if op.hook as u8 == Hook::FileOpen as u8 {
        if let Some(g) = GRACE.get_ptr(tid) {
            // SAFETY: a map value, copied out at once.
            let g = unsafe { *g };
            if now < g[1] && g[0] == object {
                GRACE.remove(tid).ok();
                emit(s, w, op, Outcome::decision(Action::Ask as u8, reason::APPROVED, rule, hash));
                return 0;
            }
        }
    }

    // Approvals already given in this syscall: a syscall that meets two asks is restarted
    // after each approval and passes the first check again.
    if let Some(a) = APPROVED.get_ptr(tid) {
        // SAFETY: a map value, copied out at once.
        let a = unsafe { *a };
        if a.nr == nr && now < a.until_ns {
            let mut i = 0;
            while i < APPROVED_SLOTS {
                if a.bindings[i] == hash {
                    emit(s, w, op, Outcome::decision(Action::Ask as u8, reason::APPROVED, rule, hash));
                    return 0;
                }
                i += 1;
            }
        } else {
            APPROVED.remove(tid).ok();
        }
    }

    if let Some(h) = HOLDS.get_ptr(tid) {
        // SAFETY: a map value, copied out at once.
        let h = unsafe { *h };
        if h.hash == hash {
            if let Some(v) = VERDICTS.get_ptr(tid) {
                // SAFETY: a map value, copied out at once.
                let v = unsafe { *v };
                VERDICTS.remove(tid).ok();
                if v.seq == h.seq && v.hash == hash {
                    HOLDS.remove(tid).ok();
                    if v.allow == 1 {
                        if op.hook as u8 == Hook::PathMknod as u8 {
                            GRACE.insert(tid, [object, now + GRACE_NS], 0).ok();
                        }
                        remember_approval(tid, nr, hash, now);
                        emit(s, w, op, Outcome::resolved(reason::APPROVED, rule, h.seq, hash));
                        return 0;
                    }
                    APPROVED.remove(tid).ok();
                    emit(s, w, op, Outcome::resolved(reason::DENIED, rule, h.seq, hash));
                    return -EPERM;
                }
            }
            if now > h.deadline_ns {
                HOLDS.remove(tid).ok();
                APPROVED.remove(tid).ok();
                emit(s, w, op, Outcome::resolved(reason::EXPIRED, rule, h.seq, hash));
                return -EPERM;
            }
            if !agent_alive(now) {
                // Woken (by anyone) while no agent is left to answer: never stop again.
                HOLDS.remove(tid).ok();
                emit(s, w, op, Outcome::resolved(reason::AGENT_GONE, rule, h.seq, hash));
                return -EPERM;
            }
            // Woken without a verdict (a stray SIGCONT): stop again, no new request.
            // SAFETY: signals the current thread only.
            unsafe { bpf_send_signal_thread(SIGSTOP) };
            return -ERESTARTNOINTR;
        }
    }

    let unholdable = Outcome::decision(Action::Deny as u8, reason::UNHOLDABLE, rule, hash);
    if !op.holdable || via_io_uring() {
        emit(s, w, op, unholdable);
        return -EPERM;
    }

    // A hold whose agent is gone (no heartbeat for HEARTBEAT_STALE_NS: killed, crashed,
    // stopped) would stop a thread nobody resumes: denied at once instead, and recorded (the
    // event waits in the ring for the next agent).
    if !agent_alive(now) {
        emit(s, w, op, Outcome::decision(Action::Deny as u8, reason::AGENT_GONE, rule, hash));
        return -EPERM;
    }

    // A new request. A verdict left for an earlier hold of this thread (whose restart asked
    // for something else) must not meet this one.
    VERDICTS.remove(tid).ok();
    let seq = now;
    let entry = Hold { seq, hash, deadline_ns: now + deadline_ns };
    if HOLDS.insert(tid, entry, 0).is_err() {
        bump(reason::HOLD_TABLE_FULL as u32);
        emit(s, w, op, Outcome::decision(Action::Deny as u8, reason::HOLD_TABLE_FULL, rule, hash));
        return -EPERM;
    }
    // Reserve first, stop, then submit: the agent cannot answer before the stop is pending.
    let Some(ev) = EVENTS.reserve::<Event>(0) else {
        bump_lost();
        bump(reason::RING_FULL as u32);
        HOLDS.remove(tid).ok();
        return -EPERM;
    };
    // SAFETY: signals the current thread only.
    if unsafe { bpf_send_signal_thread(SIGSTOP) } != 0 {
        ev.discard(0);
        HOLDS.remove(tid).ok();
        emit(s, w, op, unholdable);
        return -EPERM;
    }
    // Approvals given earlier in this syscall last while this hold waits.
    if let Some(a) = APPROVED.get_ptr_mut(tid) {
        // SAFETY: this thread's map value; only this thread's programs write it.
        unsafe {
            if (*a).nr == nr {
                (*a).until_ns = now + deadline_ns + GRACE_NS;
            }
        }
    }
    let held = Outcome { kind: kind::HOLD, action: Action::Ask as u8, reason: reason::RULE, rule, seq, hash };
    fill_and_submit(ev, s, w, op, held);
    -ERESTARTNOINTR
}

/// Adds an approved binding to the thread's approvals for syscall `nr` (a fresh set when the
/// thread's set was for another syscall).
#[inline(always)]
fn remember_approval(tid: u32, nr: u64, hash: u64, now: u64) {
    let mut a = Approved { nr, until_ns: 0, bindings: [0; APPROVED_SLOTS] };
    if let Some(old) = APPROVED.get_ptr(tid) {
        // SAFETY: a map value, copied out at once.
        let old = unsafe { *old };
        if old.nr == nr {
            a = old;
        }
    }
    a.until_ns = now + GRACE_NS;
    let mut placed = false;
    let mut i = 0;
    while i < APPROVED_SLOTS {
        if !placed && (a.bindings[i] == 0 || a.bindings[i] == hash) {
            a.bindings[i] = hash;
            placed = true;
        }
        i += 1;
    }
    if !placed {
        // More asks in one syscall than slots: the oldest approval makes room (at worst it
        // is asked again; nothing passes unasked).
        a.bindings[0] = hash;
    }
    // Failure only costs a repeated request, never an unasked operation.
    APPROVED.insert(tid, a, 0).ok();
}
