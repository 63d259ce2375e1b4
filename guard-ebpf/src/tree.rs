//! Which tasks are watched: children join their parent's tree at fork, an exec keeps the tree
//! (or starts one by a selector, see `select`), an exit leaves it; and the task limit that
//! keeps WATCHED from filling up.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated::bpf_send_signal_thread},
    macros::{btf_tracepoint, lsm},
    programs::{BtfTracePointContext, LsmContext},
};
use guard_common::{kind, reason, Action, Argv, Event, Hook, Watched, BPF_NOEXIST, SIGKILL};

use crate::decide::{emit, Op, Outcome};
use crate::maps::{scratch, watched, watched_task, ARGV, EVENTS, GRACE, HOLDS, TASK_COUNT, VERDICTS, WATCHED};
use crate::resolve::{label, walk_path_into};
use crate::select::select_new_tree;
use crate::task::{current_tid, max_tasks, off, offsets, read_kernel};

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

/// Refuses a fork or clone in a watched tree that is at its task limit: past it, the child
/// could not be tracked and would run unwatched.
#[lsm(hook = "task_alloc")]
pub fn task_alloc(_ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let count = TASK_COUNT.get(0).copied().unwrap_or(0);
    if count < max_tasks() {
        return 0;
    }
    if let Some(s) = scratch() {
        label(s, b"fork: tree at its task limit");
        let op = Op { hook: Hook::TaskAlloc, aux: count, holdable: false, always_record: true };
        emit(s, &w, &op, Outcome::decision(Action::Deny as u8, reason::TREE_LIMIT, 0, 0));
    }
    -EAGAIN
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
        // argv was captured under the thread's old id.
        if let Some(a) = ARGV.get_ptr(old_pid) {
            // SAFETY: a map value, valid for the program's run. Passed by reference: an Argv
            // does not fit on the BPF stack.
            let a: &Argv = unsafe { &*a };
            ARGV.insert(tid, a, 0).ok();
        }
        ARGV.remove(old_pid).ok();
    }
    if let Some(s) = scratch() {
        // SAFETY: `bprm` is the exec's linux_binprm; its file is read through
        // bpf_probe_read_kernel and walked with the helper-only reads of `walk_path_into`.
        unsafe {
            let file: u64 = read_kernel(bprm.add(off(&offsets().binprm_file)));
            let fpath = (file as *const u8).add(off(&offsets().file_f_path));
            if !walk_path_into(s, fpath) {
                return 0;
            }
        }
        // aux: 0 for an exec inside a tree, selector rank + 1 for the exec that starts one.
        let op = Op { hook: Hook::Exec, aux: new_tree as u64, holdable: false, always_record: true };
        let exec = Outcome { kind: kind::EXEC, action: 0, reason: 0, rule: 0, seq: 0, hash: 0 };
        emit(s, &w, &op, exec);
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
