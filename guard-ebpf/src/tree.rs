//! Which tasks are watched: children join their parent's tree at fork, an exec keeps the tree
//! (or starts one by a selector, see `select`), an exit leaves it; and the task limit that
//! keeps WATCHED from filling up: a reservation per tree, taken at task_alloc and given back at
//! task_free.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated::bpf_send_signal_thread},
    macros::{btf_tracepoint, lsm},
    programs::{BtfTracePointContext, LsmContext},
};
use guard_common::{kind, reason, Action, Argv, Event, Hook, Watched, BPF_NOEXIST, SIGKILL};

use crate::argv::check_new_argv;
use crate::decide::{emit, Op, Outcome};
use crate::maps::{
    bump, scratch, watched, watched_task, APPROVED, ARGV, EVENTS, GRACE, HOLDS, RESERVED, RESERVED_SLOT, TASK_COUNT,
    TREE_TASKS, VERDICTS, WATCHED,
};
use crate::resolve::{label, program_object};
use crate::select::select_new_tree;
use crate::task::{current_tid, max_tasks, max_tree_tasks, off, offsets, read_kernel};

/// errno for a refused fork (what the kernel returns when it is out of tasks).
const EAGAIN: i32 = 11;

/// Adds `delta` to the task count (wrapping: `u64::MAX` subtracts one).
#[inline(always)]
fn count_add(delta: u64) {
    if let Some(c) = TASK_COUNT.get_ptr_mut(0) {
        #[cfg(target_arch = "bpf")]
        // SAFETY: a map value lives as long as the map. core has no atomic RMW for the BPF
        // target, so this is the instruction itself (BPF_ATOMIC add, "XADD").
        unsafe {
            core::arch::asm!("lock *(u64 *)({0} + 0) += {1}", in(reg) c, in(reg) delta)
        };
        // The host build is only type-checked (see main.rs); it has no use for the count.
        #[cfg(not(target_arch = "bpf"))]
        let _ = (c, delta);
    }
}

#[inline(always)]
fn watch_task(tid: u32, w: &Watched) -> bool {
    if WATCHED.insert(tid, w, BPF_NOEXIST).is_ok() {
        count_add(1);
        return true;
    }
    false
}

#[inline(always)]
fn unwatch_task(tid: u32) -> bool {
    if WATCHED.remove(tid).is_ok() {
        count_add(u64::MAX); // -1
        return true;
    }
    false
}

/// Atomically adds `delta` to the u64 at `p` (a map value) and returns the value before.
#[inline(always)]
fn fetch_add(p: *mut u64, delta: u64) -> u64 {
    #[cfg(target_arch = "bpf")]
    {
        let mut v = delta;
        // SAFETY: `p` is a map value, valid for the program's run. core has no atomic RMW for
        // the BPF target, so this is the instruction itself (BPF_ATOMIC | BPF_FETCH add).
        unsafe { core::arch::asm!("{0} = atomic_fetch_add((u64 *)({1} + 0), {0})", inout(reg) v, in(reg) p) };
        v
    }
    // The host build is only type-checked (see main.rs).
    #[cfg(not(target_arch = "bpf"))]
    {
        let _ = (p, delta);
        0
    }
}

/// Takes one task slot for the tree of `w` and one of the global budget, for the task being
/// allocated at `task`; Err(count) when either is exhausted (nothing is left taken).
///
/// The slot is taken here, with an atomic add whose result decides, not checked here and
/// counted later: concurrent forks cannot all pass one check. It is given back at task_free
/// (the task's last reference, or copy_process failing after this hook), found by the task's
/// address in `RESERVED`. The root of a tree was not allocated in it and holds no slot: it
/// counts as one, so a tree holds at most `max_tree_tasks` tasks.
#[inline(always)]
fn reserve(w: &Watched, task: u64) -> Result<(), u64> {
    let Some(global) = TASK_COUNT.get_ptr_mut(RESERVED_SLOT) else { return Err(0) };
    let g = fetch_add(global, 1);
    if g >= max_tasks() {
        fetch_add(global, u64::MAX);
        return Err(g);
    }
    TREE_TASKS.insert(w.root, 0, BPF_NOEXIST).ok();
    let Some(tree) = TREE_TASKS.get_ptr_mut(w.root) else {
        fetch_add(global, u64::MAX);
        return Err(0);
    };
    let t = fetch_add(tree, 1) + 1;
    if t >= max_tree_tasks() || RESERVED.insert(task, w.root, BPF_NOEXIST).is_err() {
        fetch_add(tree, u64::MAX);
        fetch_add(global, u64::MAX);
        return Err(t);
    }
    Ok(())
}

/// task_alloc(struct task_struct *task, unsigned long clone_flags): refuses a fork, clone or
/// io_uring thread of a watched tree that is at its task limit (or when the host-wide budget,
/// kept below WATCHED's capacity, is used up): past it the child could not be tracked.
#[lsm(hook = "task_alloc")]
pub fn task_alloc(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let task: u64 = ctx.arg(0);
    let Err(count) = reserve(&w, task) else { return 0 };
    if let Some(s) = scratch() {
        label(s, b"fork: tree at its task limit");
        let op = Op { hook: Hook::TaskAlloc, aux: count, holdable: false, always_record: true };
        emit(s, &w, &op, Outcome::decision(Action::Deny as u8, reason::TREE_LIMIT, 0, 0));
    }
    -EAGAIN
}

/// task_free(struct task_struct *task): gives back the slot `reserve` took for this task. For
/// every task of the host: one lookup, by the task's address.
#[lsm(hook = "task_free")]
pub fn task_free(ctx: LsmContext) -> i32 {
    let task: u64 = ctx.arg(0);
    // SAFETY: the value is copied out at once (see `watched_task`).
    let Some(root) = (unsafe { RESERVED.get(task).copied() }) else { return 0 };
    // Only the caller whose delete succeeds gives the slot back.
    if RESERVED.remove(task).is_ok() {
        if let Some(tree) = TREE_TASKS.get_ptr_mut(root) {
            fetch_add(tree, u64::MAX);
        }
        if let Some(global) = TASK_COUNT.get_ptr_mut(RESERVED_SLOT) {
            fetch_add(global, u64::MAX);
        }
    }
    0
}

/// task_newtask(struct task_struct *task, unsigned long clone_flags): copy_process emits it for
/// every new task, once its pid exists and past the last point where the fork can fail, before
/// the task first runs. Unlike `sched_process_fork` (kernel_clone only), it also sees the
/// threads io_uring creates with create_io_thread: the io-wq workers (`iou-wrk-*`) and the
/// SQPOLL thread (`iou-sqp-*`). The current task is the creator (for io_uring: the submitting
/// task, its task_work, or the SQPOLL thread, which is in the tree by then), so the new task
/// joins the creator's tree.
#[btf_tracepoint(function = "task_newtask")]
pub fn task_newtask(ctx: BtfTracePointContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let child: *const u8 = ctx.arg(0);
    // SAFETY: a plain integer read through bpf_probe_read_kernel.
    let pid: u32 = unsafe { read_kernel(child.add(off(&offsets().task_pid))) };
    if watch_task(pid, &w) {
        return 0;
    }
    // The child would run unwatched. It cannot be refused here (a tracepoint), so the creating
    // thread is killed: SIGKILL takes its whole thread group, a new thread (or io_uring thread,
    // which exits with its ring's task) included. A new *process* survives its parent; the
    // task limit (task_alloc) keeps WATCHED from filling up, so this is a last resort.
    if let Some(s) = scratch() {
        label(s, b"new task: not tracked, creator killed");
        let op = Op { hook: Hook::TaskNew, aux: pid as u64, holdable: false, always_record: true };
        emit(s, &w, &op, Outcome::decision(Action::Deny as u8, reason::TREE_LIMIT, 0, 0));
    }
    // SAFETY: signals the current thread only.
    unsafe { bpf_send_signal_thread(SIGKILL) };
    0
}

/// sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec(ctx: BtfTracePointContext) -> i32 {
    // A non-leader thread that execs takes over the leader's pid: move its entry.
    let old_pid: u32 = ctx.arg(1);
    let tid = current_tid();
    let w = watched_task(old_pid);
    let bprm: *const u8 = ctx.arg(2);
    // A task already in a tree stays in it; a selector only starts new trees.
    let (w, new_tree) = match w.or_else(watched) {
        Some(w) => (w, 0),
        None => match select_new_tree(old_pid, bprm as u64) {
            Some((w, rank1)) => {
                watch_task(tid, &w);
                if old_pid != tid {
                    ARGV.remove(old_pid).ok();
                }
                (w, rank1)
            }
            None => return 0,
        },
    };
    if old_pid != tid && new_tree == 0 {
        unwatch_task(old_pid);
        watch_task(tid, &w);
        // argv was captured under the thread's old id; an entry left under the leader's id
        // is not this exec's.
        ARGV.remove(tid).ok();
        if let Some(a) = ARGV.get_ptr(old_pid) {
            // SAFETY: a map value, valid for the program's run. Passed by reference: an Argv
            // does not fit on the BPF stack.
            let a: &Argv = unsafe { &*a };
            ARGV.insert(tid, a, 0).ok();
        }
        ARGV.remove(old_pid).ok();
    }
    // The argv that was decided is the one the kernel copied, or the program never runs: the
    // capture read the caller's memory, which another thread may have changed since the
    // kernel's copy. Past the point of no return the exec cannot fail, so the process is
    // killed (SIGKILL is handled before the return to user space: not one instruction of the
    // new program runs). A tree's first exec has no capture (its task was not watched yet).
    let mut refused = 0;
    if new_tree == 0 {
        if let Some(a) = ARGV.get_ptr_mut(tid) {
            refused = check_new_argv(bprm, a);
            if refused != 0 {
                // SAFETY: signals the current thread only (after the exec: the only one left).
                unsafe { bpf_send_signal_thread(SIGKILL) };
                bump(refused as u32);
            }
        }
    }
    if let Some(s) = scratch() {
        // The program as bprm_check_security resolved it (its global path; a memfd or deleted
        // file marked " (deleted)"), so the record names what the rules decided.
        // SAFETY: `bprm` is the exec's linux_binprm; its file is read through
        // bpf_probe_read_kernel and walked with the helper-only reads of `program_object`.
        unsafe {
            let file: u64 = read_kernel(bprm.add(off(&offsets().binprm_file)));
            program_object(s, file as *const u8);
        }
        if refused != 0 {
            // Recorded with the new image's argv (what really ran; the argv that was decided
            // is in the decision's own record); no exec record: the program never ran.
            let op = Op { hook: Hook::Exec, aux: 0, holdable: false, always_record: true };
            emit(s, &w, &op, Outcome::decision(Action::Deny as u8, refused, 0, 0));
        } else {
            // aux: 0 for an exec inside a tree, selector rank + 1 for the exec that starts one.
            let op = Op { hook: Hook::Exec, aux: new_tree as u64, holdable: false, always_record: true };
            let exec = Outcome { kind: kind::EXEC, action: 0, reason: 0, rule: 0, seq: 0, hash: 0 };
            emit(s, &w, &op, exec);
        }
    }
    ARGV.remove(tid).ok();
    0
}

#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(_ctx: BtfTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    if unwatch_task(tid) {
        HOLDS.remove(tid).ok();
        VERDICTS.remove(tid).ok();
        GRACE.remove(tid).ok();
        APPROVED.remove(tid).ok();
        ARGV.remove(tid).ok();
        if tid == (pid_tgid >> 32) as u32 {
            if let Some(mut e) = EVENTS.reserve::<Event>(0) {
                // SAFETY: a reserved ring buffer record of size_of::<Event>() bytes, written
                // only here until it is submitted; all-zero is a valid Event.
                unsafe {
                    let p = e.as_mut_ptr();
                    p.write_bytes(0, 1);
                    (*p).kind = kind::EXIT;
                    (*p).tgid = tid;
                    (*p).tid = tid;
                    (*p).time_ns = bpf_ktime_get_ns();
                }
                e.submit(0);
            }
        }
    }
    0
}
