//! guard's kernel side: LSM hooks that decide privileged operations of watched process trees.
//!
//! Every hook starts with one hash lookup of the current thread in `WATCHED`; a thread outside
//! every tree returns at once. For watched threads the hook resolves the object the kernel is
//! about to act on (a path from `bpf_d_path` or a dentry walk, an address, a capability...),
//! finds the first matching rule, and allows, denies, records, or holds the syscall.
//!
//! A hold sends SIGSTOP to the calling thread and returns -ERESTARTNOINTR: the thread stops
//! before it reaches user space, and when the agent resumes it the kernel restarts the same
//! syscall, which comes back here and consumes the verdict the agent left in `VERDICTS`.
//!
//! Trees start in two ways: userspace puts a root in `WATCHED` (`run`, registrations, adopting
//! what already runs), or an exec by a task outside every tree matches a selector of the host
//! daemon (`SELECTORS`: resolved program path or name at bprm_check_security, cgroup and uid
//! at sched_process_exec), and the exec's task becomes the root of a new tree before the new
//! program runs. With no selector configured this costs one array lookup per exec.
#![no_std]
#![no_main]
#![allow(static_mut_refs)]
#![feature(asm_experimental_arch)]

use aya_ebpf::{
    bindings::BPF_RB_FORCE_WAKEUP,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_get_current_uid_gid, bpf_ktime_get_ns,
        generated::{
            bpf_d_path, bpf_get_current_ancestor_cgroup_id, bpf_probe_read_kernel, bpf_probe_read_user, bpf_probe_read_user_str, bpf_send_signal_thread,
            bpf_task_pt_regs,
        },
    },
    macros::{btf_tracepoint, lsm, map},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, LsmContext},
};
use core::ffi::c_void;
use guard_common::*;

const MAX_POLICIES: u32 = 16;
/// Components walked from a dentry up to the root; deeper paths are cut (and marked).
const MAX_DEPTH: u32 = 40;
/// Task flag of io_uring worker threads: a hold there cannot restart anything.
const PF_IO_WORKER: u32 = 0x10;
/// enum kernel_read_file_id / kernel_load_data_id: READING_MODULE = LOADING_MODULE = 2.
const MODULE_ID: u32 = 2;
/// ptrace modes: only attaching (not /proc reads) is a privileged operation.
const PTRACE_MODE_ATTACH: u32 = 0x02;
const NR_EXECVE: u64 = 59;
const NR_EXECVEAT: u64 = 322;
/// An ask inside io_uring_enter (inline submission) cannot be held: the -ERESTARTNOINTR would
/// land in the completion queue.
const NR_IO_URING_ENTER: u64 = 426;
const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// An approved creation also covers the open that follows it for this long.
const GRACE_NS: u64 = 2_000_000_000;

#[no_mangle]
static OFFSETS: Offsets = Offsets {
    file_f_path: 0,
    file_f_mode: 0,
    binprm_file: 0,
    task_pid: 0,
    task_tgid: 0,
    task_real_parent: 0,
    task_flags: 0,
    path_mnt: 0,
    path_dentry: 0,
    dentry_parent: 0,
    dentry_name: 0,
    mount_mnt: 0,
    mount_parent: 0,
    mount_mountpoint: 0,
    vfsmount_root: 0,
    regs_si: 0,
    regs_dx: 0,
    regs_orig_ax: 0,
    _pad: 0,
};

/// Upper bound of tasks in all watched trees, set by the agent below WATCHED's capacity: a
/// fork past it is refused (task_alloc), so no child can escape because the map is full.
#[no_mangle]
static MAX_TASKS: u64 = 0;

#[map]
static WATCHED: HashMap<u32, Watched> = HashMap::with_max_entries(65536, 0);
/// [0] = entries in WATCHED, kept with every insert and remove.
#[map]
static TASK_COUNT: Array<u64> = Array::with_max_entries(1, 0);
#[map]
static PATH_RULES: LpmTrie<PathKey, RuleRef> = LpmTrie::with_max_entries(8192, 0);
#[map]
static NET_RULES: Array<NetRule> = Array::with_max_entries(MAX_POLICIES * MAX_NET_RULES, 0);
#[map]
static ARGV_RULES: Array<ArgvRule> = Array::with_max_entries(MAX_POLICIES * MAX_ARGV_RULES, 0);
#[map]
static CAP_RULES: Array<RuleRef> = Array::with_max_entries(MAX_POLICIES * MAX_CAPS, 0);
#[map]
static POLICIES: Array<PolicyConf> = Array::with_max_entries(MAX_POLICIES, 0);
#[map]
static HOLDS: HashMap<u32, Hold> = HashMap::with_max_entries(8192, 0);
#[map]
static VERDICTS: HashMap<u32, Verdict> = HashMap::with_max_entries(8192, 0);
/// Path hash of an approved creation, per thread, with its end time (see GRACE_NS).
#[map]
static GRACE: HashMap<u32, [u64; 2]> = HashMap::with_max_entries(8192, 0);
/// One all-zero Argv to initialise entries from (it does not fit on the stack).
#[map]
static ZERO_ARGV: Array<Argv> = Array::with_max_entries(1, 0);
/// One entry per watched thread that execs; as large as WATCHED and allocated on demand, so
/// that a full map can never make argv conditions silently not apply.
#[map]
static ARGV: HashMap<u32, Argv> = HashMap::with_max_entries(65536, BPF_F_NO_PREALLOC);
const BPF_F_NO_PREALLOC: u32 = 1;
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);
/// [0] events lost because the ring buffer was full.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(4, 0);
/// Tree selectors (host daemon): an unwatched task whose exec matches one starts a new tree.
#[map]
static SELECTORS: HashMap<SelKey, Selector> = HashMap::with_max_entries(MAX_SELECTORS * 4, 0);
/// [0] = how many selectors of each kind exist.
#[map]
static SEL_CONF: Array<SelConf> = Array::with_max_entries(1, 0);
/// Exe selector matched at bprm_check_security, per thread, until sched_process_exec. LRU:
/// an exec that failed after the check leaves an entry nobody takes.
#[map]
static PENDING_SEL: LruHashMap<u32, PendingSel> = LruHashMap::with_max_entries(8192, 0);
#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU working memory: far too large for the 512-byte stack.
#[repr(C)]
struct Scratch {
    key: Key<PathKey>,
    /// The resolved object, NUL-terminated for paths.
    buf: [u8; 512],
    /// Dentry walk area: the path grows leftwards from WALK_END.
    walk: [u8; 1024],
    /// Walk state lives in map memory so the verifier cannot tell iterations apart by it and
    /// prunes equivalent states (keeps the loop linear to verify).
    pos: u64,
    dentry: u64,
    mnt: u64,
    len: u64,
    truncated: u64,
}
const WALK_END: u64 = 511;

#[inline(always)]
fn off(f: &u32) -> usize {
    unsafe { core::ptr::read_volatile(f) as usize }
}

#[inline(always)]
fn offsets() -> &'static Offsets {
    &OFFSETS
}

#[inline(always)]
unsafe fn read_kernel<T: Copy>(src: *const u8) -> T {
    let mut v = core::mem::MaybeUninit::<T>::zeroed();
    bpf_probe_read_kernel(v.as_mut_ptr() as *mut c_void, core::mem::size_of::<T>() as u32, src as *const c_void);
    v.assume_init()
}

#[inline(always)]
fn current_tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

#[inline(always)]
fn watched() -> Option<Watched> {
    unsafe { WATCHED.get(&current_tid()).copied() }
}

#[inline(always)]
fn scratch() -> Option<&'static mut Scratch> {
    SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

#[inline(always)]
fn policy(w: &Watched) -> Option<&'static PolicyConf> {
    POLICIES.get(w.policy as u32 % MAX_POLICIES)
}

/// FNV-1a over the first `len` bytes of `buf`, mixed with `salt` (the hook).
#[inline(always)]
fn hash_bytes(buf: &[u8; 512], len: u64, salt: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut i = 0usize;
    while i < 512 {
        if i as u64 >= len {
            break;
        }
        h ^= buf[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

/// Resolves `struct path *` with `bpf_d_path` into `s.buf`; sets `s.len` (without the NUL).
#[inline(always)]
unsafe fn d_path_into(s: &mut Scratch, path: *const u8) -> bool {
    let n = bpf_d_path(path as *mut _, s.buf.as_mut_ptr() as *mut _, 512);
    if n <= 0 {
        return false;
    }
    s.len = (n - 1) as u64;
    s.truncated = 0;
    true
}

/// Builds the absolute path of `dentry` in mount `vfsmnt` into `s.buf` by walking d_parent and
/// crossing mount points. Used where the kernel refuses `bpf_d_path` (the path_* hooks).
#[inline(always)]
unsafe fn walk_into(s: &mut Scratch, vfsmnt: *const u8, dentry: *const u8) -> bool {
    let o = offsets();
    let sp = s as *mut Scratch;
    core::ptr::write_volatile(&mut (*sp).pos, WALK_END);
    core::ptr::write_volatile(&mut (*sp).dentry, dentry as u64);
    core::ptr::write_volatile(&mut (*sp).mnt, (vfsmnt as u64).wrapping_sub(off(&o.mount_mnt) as u64));
    core::ptr::write_volatile(&mut (*sp).truncated, 0);
    s.walk[WALK_END as usize] = 0;
    for _ in 0..MAX_DEPTH {
        let d = core::ptr::read_volatile(&(*sp).dentry) as *const u8;
        let m = core::ptr::read_volatile(&(*sp).mnt) as *const u8;
        let mnt_root: u64 = read_kernel(m.add(off(&o.mount_mnt) + off(&o.vfsmount_root)));
        let parent: u64 = read_kernel(d.add(off(&o.dentry_parent)));
        if d as u64 == mnt_root || d as u64 == parent {
            let mparent: u64 = read_kernel(m.add(off(&o.mount_parent)));
            if mparent == m as u64 || mparent == 0 {
                break;
            }
            let mp: u64 = read_kernel(m.add(off(&o.mount_mountpoint)));
            core::ptr::write_volatile(&mut (*sp).dentry, mp);
            core::ptr::write_volatile(&mut (*sp).mnt, mparent);
            continue;
        }
        let qstr = d.add(off(&o.dentry_name));
        let len: u32 = read_kernel(qstr.add(4));
        let name: u64 = read_kernel(qstr.add(8));
        let len = (len & 0xff) as u64;
        let pos = core::ptr::read_volatile(&(*sp).pos);
        if len + 1 > pos {
            core::ptr::write_volatile(&mut (*sp).truncated, 1);
            break;
        }
        let npos = (pos - len - 1) & 511;
        bpf_probe_read_kernel(
            s.walk.as_mut_ptr().add(npos as usize + 1) as *mut c_void,
            len as u32,
            name as *const c_void,
        );
        s.walk[npos as usize] = b'/';
        core::ptr::write_volatile(&mut (*sp).pos, npos);
        core::ptr::write_volatile(&mut (*sp).dentry, parent);
    }
    let pos = core::ptr::read_volatile(&(*sp).pos) & 511;
    if pos == WALK_END {
        s.buf[0] = b'/';
        s.buf[1] = 0;
        s.len = 1;
        return true;
    }
    bpf_probe_read_kernel(s.buf.as_mut_ptr() as *mut c_void, 512, s.walk.as_ptr().add(pos as usize) as *const c_void);
    s.len = WALK_END - pos;
    true
}

/// Walks a `struct path *` (its mount and dentry).
#[inline(always)]
unsafe fn walk_path_into(s: &mut Scratch, path: *const u8) -> bool {
    let o = offsets();
    let mnt: u64 = read_kernel(path.add(off(&o.path_mnt)));
    let dentry: u64 = read_kernel(path.add(off(&o.path_dentry)));
    walk_into(s, mnt as *const u8, dentry as *const u8)
}

/// Looks up the first rule matching `s.buf` for `class` in the watched tree's policy.
#[inline(always)]
unsafe fn lookup_path(s: &mut Scratch, policy: u8, class: u8) -> RuleRef {
    s.key.prefix_len = (OBJECT_LEN * 8) as u32;
    s.key.data.policy = policy;
    s.key.data.class = class;
    bpf_probe_read_kernel(
        s.key.data.path.as_mut_ptr() as *mut c_void,
        PATH_LEN as u32,
        s.buf.as_ptr() as *const c_void,
    );
    match PATH_RULES.get(&s.key) {
        Some(r) => RuleRef { rule: r.rule, action: r.action, _pad: [0; 3] },
        None => NO_RULE,
    }
}

/// "No rule matched". A plain value, not an Option: LLVM may fill the payload of a `None`
/// with whatever a register holds (even a pointer), which the verifier rightly rejects.
const NO_RULE: RuleRef = RuleRef { rule: 0, action: 0, _pad: [0; 3] };

/// What the hook knows about the operation, for the decision and its event.
struct Op {
    hook: Hook,
    aux: u64,
    /// Holding is possible only where the hook's error reaches the syscall's return.
    holdable: bool,
    /// Record even a default allow (the operation is privileged in itself).
    always_record: bool,
}

#[inline(always)]
fn parent_tgid() -> u32 {
    unsafe {
        let task = bpf_get_current_task_btf() as *const u8;
        let parent: u64 = read_kernel(task.add(off(&offsets().task_real_parent)));
        read_kernel((parent as *const u8).add(off(&offsets().task_tgid)))
    }
}

/// The current syscall's registers (as the task entered the kernel).
#[inline(always)]
fn user_regs() -> *const u8 {
    unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) as *const u8 }
}

/// The number of the syscall being served (orig_ax).
#[inline(always)]
fn syscall_nr() -> u64 {
    unsafe { read_kernel(user_regs().add(off(&offsets().regs_orig_ax))) }
}

#[inline(always)]
fn task_flags() -> u32 {
    unsafe {
        let task = bpf_get_current_task_btf() as *const u8;
        read_kernel(task.add(off(&offsets().task_flags)))
    }
}

#[inline(always)]
fn bump_lost() {
    if let Some(c) = COUNTERS.get_ptr_mut(0) {
        unsafe { *c += 1 };
    }
}

/// Sends one event; `s` supplies the object. Returns false when the ring buffer is full.
#[inline(always)]
unsafe fn emit(
    s: &Scratch,
    w: &Watched,
    kind: u8,
    op: &Op,
    action: u8,
    reason: u8,
    rule: u32,
    seq: u64,
    hash: u64,
) -> bool {
    let Some(entry) = EVENTS.reserve::<Event>(0) else {
        bump_lost();
        return false;
    };
    fill_and_submit(entry, s, w, kind, op, action, reason, rule, seq, hash);
    true
}

/// Fills a reserved event and submits it.
#[inline(always)]
unsafe fn fill_and_submit(
    mut entry: aya_ebpf::maps::ring_buf::RingBufEntry<Event>,
    s: &Scratch,
    w: &Watched,
    kind: u8,
    op: &Op,
    action: u8,
    reason: u8,
    rule: u32,
    seq: u64,
    hash: u64,
) {
    let e = entry.as_mut_ptr();
    let pid_tgid = bpf_get_current_pid_tgid();
    (*e).kind = kind;
    (*e).hook = op.hook as u8;
    (*e).action = action;
    (*e).reason = reason;
    (*e).policy = w.policy;
    (*e).truncated = s.truncated as u8;
    (*e).argc = 0;
    (*e)._pad = 0;
    (*e).tgid = (pid_tgid >> 32) as u32;
    (*e).tid = pid_tgid as u32;
    (*e).ppid = parent_tgid();
    (*e).uid = bpf_get_current_uid_gid() as u32;
    (*e).rule = rule;
    (*e).aux = op.aux;
    (*e).seq = seq;
    (*e).hash = hash;
    (*e).time_ns = bpf_ktime_get_ns();
    bpf_probe_read_kernel((*e).object.as_mut_ptr() as *mut c_void, OBJECT_LEN as u32, s.buf.as_ptr() as *const c_void);
    if op.hook as u8 == Hook::Exec as u8 {
        if let Some(a) = ARGV.get_ptr(&(pid_tgid as u32)) {
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
    // A hold must wake the agent at once; other records can ride along.
    let flags = if kind == kind::HOLD { BPF_RB_FORCE_WAKEUP as u64 } else { 0 };
    entry.submit(flags);
}

/// Applies a matched rule (or the policy default) to the operation described by `op` and `s`.
#[inline(always)]
unsafe fn decide(s: &mut Scratch, w: &Watched, op: &Op, found: RuleRef) -> i32 {
    let Some(conf) = policy(w) else { return 0 };
    let (action, rule, reason) = if found.rule != 0 {
        (found.action, found.rule, reason::RULE)
    } else {
        (conf.default_action, 0, reason::DEFAULT)
    };
    let record = rule != 0 || op.always_record || action != Action::Allow as u8;
    if action == Action::Allow as u8 || action == Action::Audit as u8 {
        if record {
            emit(s, w, kind::DECISION, op, action, reason, rule, 0, 0);
        }
        return 0;
    }
    if action == Action::Deny as u8 {
        emit(s, w, kind::DECISION, op, action, reason, rule, 0, 0);
        return -EPERM;
    }
    hold(s, w, op, rule, conf.hold_deadline_ns)
}

#[inline(always)]
unsafe fn hold(s: &mut Scratch, w: &Watched, op: &Op, rule: u32, deadline_ns: u64) -> i32 {
    let tid = current_tid();
    let path_hash = hash_bytes(&s.buf, s.len, 0);
    let hash = path_hash ^ (op.hook as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ op.aux;
    let now = bpf_ktime_get_ns();
    let ask = Action::Ask as u8;

    // An approved creation covers the open of the file it created (O_CREAT opens pass
    // path_mknod, then file_open on the new file), and nothing else.
    if op.hook as u8 == Hook::FileOpen as u8 {
        if let Some(g) = GRACE.get_ptr(&tid) {
            let g = *g;
            if g[0] == path_hash && now < g[1] {
                GRACE.remove(&tid).ok();
                emit(s, w, kind::DECISION, op, ask, reason::APPROVED, rule, 0, hash);
                return 0;
            }
        }
    }

    if let Some(h) = HOLDS.get_ptr(&tid) {
        let h = *h;
        if h.hash == hash {
            if let Some(v) = VERDICTS.get_ptr(&tid) {
                let v = *v;
                VERDICTS.remove(&tid).ok();
                if v.seq == h.seq && v.hash == hash {
                    HOLDS.remove(&tid).ok();
                    if v.allow == 1 {
                        if op.hook as u8 == Hook::PathMknod as u8 {
                            GRACE.insert(&tid, &[path_hash, now + GRACE_NS], 0).ok();
                        }
                        emit(s, w, kind::RESOLVED, op, ask, reason::APPROVED, rule, h.seq, hash);
                        return 0;
                    }
                    emit(s, w, kind::RESOLVED, op, ask, reason::DENIED, rule, h.seq, hash);
                    return -EPERM;
                }
            }
            if now > h.deadline_ns {
                HOLDS.remove(&tid).ok();
                emit(s, w, kind::RESOLVED, op, ask, reason::EXPIRED, rule, h.seq, hash);
                return -EPERM;
            }
            // Woken without a verdict (a stray SIGCONT): stop again, no new request.
            bpf_send_signal_thread(SIGSTOP);
            return -ERESTARTNOINTR;
        }
    }

    if !op.holdable || task_flags() & PF_IO_WORKER != 0 || syscall_nr() == NR_IO_URING_ENTER {
        emit(s, w, kind::DECISION, op, Action::Deny as u8, reason::UNHOLDABLE, rule, 0, hash);
        return -EPERM;
    }

    let seq = now;
    let entry = Hold { seq, hash, deadline_ns: now + deadline_ns };
    if HOLDS.insert(&tid, &entry, 0).is_err() {
        return -EPERM;
    }
    // Reserve first, stop, then submit: the agent cannot answer before the stop is pending.
    let Some(ev) = EVENTS.reserve::<Event>(0) else {
        bump_lost();
        HOLDS.remove(&tid).ok();
        return -EPERM;
    };
    if bpf_send_signal_thread(SIGSTOP) != 0 {
        ev.discard(0);
        HOLDS.remove(&tid).ok();
        emit(s, w, kind::DECISION, op, Action::Deny as u8, reason::UNHOLDABLE, rule, 0, hash);
        return -EPERM;
    }
    fill_and_submit(ev, s, w, kind::HOLD, op, ask, reason::RULE, rule, seq, hash);
    -ERESTARTNOINTR
}

// ---------------------------------------------------------------------------------------------
// Process trees

#[inline(always)]
fn count_add(delta: u64) {
    if let Some(c) = TASK_COUNT.get_ptr_mut(0) {
        // SAFETY: a map value lives as long as the map. core has no atomic RMW for the BPF
        // target, so this is the instruction itself (BPF_ATOMIC add, "XADD").
        unsafe { core::arch::asm!("lock *(u64 *)({0} + 0) += {1}", in(reg) c, in(reg) delta) };
    }
}

#[inline(always)]
fn watch_task(tid: u32, w: &Watched) {
    if WATCHED.insert(&tid, w, BPF_NOEXIST).is_ok() {
        count_add(1);
    }
}

#[inline(always)]
fn unwatch_task(tid: u32) -> bool {
    if WATCHED.remove(&tid).is_ok() {
        count_add(u64::MAX); // -1
        return true;
    }
    false
}

const BPF_NOEXIST: u64 = 1;
const EAGAIN: i32 = 11;

/// Refuses a fork or clone in a watched tree that is at its task limit: past it, the child
/// could not be tracked and would run unwatched.
#[lsm(hook = "task_alloc")]
pub fn task_alloc(_ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let count = TASK_COUNT.get(0).copied().unwrap_or(0);
    if count < unsafe { core::ptr::read_volatile(&MAX_TASKS) } {
        return 0;
    }
    if let Some(s) = scratch() {
        label(s, b"fork: tree at its task limit");
        let op = Op { hook: Hook::TaskAlloc, aux: count, holdable: false, always_record: true };
        unsafe { emit(s, &w, kind::DECISION, &op, Action::Deny as u8, reason::DEFAULT, 0, 0, 0) };
    }
    -EAGAIN
}

#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let child: *const u8 = ctx.arg(1);
    let pid: u32 = unsafe { read_kernel(child.add(off(&offsets().task_pid))) };
    watch_task(pid, &w);
    0
}

#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec(ctx: BtfTracePointContext) -> i32 {
    // A non-leader thread that execs takes over the leader's pid: move its entry.
    let old_pid: u32 = ctx.arg(1);
    let tid = current_tid();
    let w = unsafe { WATCHED.get(&old_pid).copied() };
    let bprm: *const u8 = ctx.arg(2);
    // A task already in a tree stays in it; a selector only starts new trees.
    let (w, new_tree) = match w.or_else(watched) {
        Some(w) => (w, 0),
        None => match unsafe { select_new_tree(old_pid, bprm as u64) } {
            Some((w, rank1)) => {
                watch_task(tid, &w);
                if old_pid != tid {
                    ARGV.remove(&old_pid).ok();
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
        if let Some(a) = ARGV.get_ptr(&old_pid) {
            unsafe { ARGV.insert(&tid, &*a, 0).ok() };
        }
        ARGV.remove(&old_pid).ok();
    }
    if let Some(s) = scratch() {
        unsafe {
            let file: u64 = read_kernel(bprm.add(off(&offsets().binprm_file)));
            let fpath = (file as *const u8).add(off(&offsets().file_f_path));
            if !walk_path_into(s, fpath) {
                return 0;
            }
            // aux: 0 for an exec inside a tree, selector rank + 1 for the exec that starts one.
            let op = Op { hook: Hook::Exec, aux: new_tree as u64, holdable: false, always_record: true };
            emit(s, &w, kind::EXEC, &op, 0, 0, 0, 0, 0);
        }
    }
    ARGV.remove(&tid).ok();
    0
}

#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(_ctx: BtfTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    if unwatch_task(tid) {
        HOLDS.remove(&tid).ok();
        VERDICTS.remove(&tid).ok();
        GRACE.remove(&tid).ok();
        ARGV.remove(&tid).ok();
        if tid == (pid_tgid >> 32) as u32 {
            if let Some(mut e) = EVENTS.reserve::<Event>(0) {
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

// ---------------------------------------------------------------------------------------------
// Tree selectors: an exec by a task outside every tree may start a new watched tree. The
// match happens in the exec itself, so the new program never runs an instruction unwatched.

const NO_RANK: u32 = u32::MAX;

/// `fnv1a` of the whole path and of its last component, in one pass.
#[inline(always)]
fn path_hashes(buf: &[u8; 512], len: u64) -> (u64, u64) {
    let basis: u64 = 0xcbf2_9ce4_8422_2325;
    let prime: u64 = 0x0000_0100_0000_01b3;
    let (mut full, mut name) = (basis, basis);
    let mut i = 0usize;
    while i < 512 {
        if i as u64 >= len {
            break;
        }
        let b = buf[i] as u64;
        full = (full ^ b).wrapping_mul(prime);
        name = if b == b'/' as u64 { basis } else { (name ^ b).wrapping_mul(prime) };
        i += 1;
    }
    (full, name)
}

/// Whether the exec's arguments contain every token of `sel`. Arguments that could not all be
/// captured count as a match: a selector errs on the side of watching.
#[inline(always)]
unsafe fn argv_selects(sel: &Selector) -> bool {
    if sel.ntok == 0 {
        return true;
    }
    let tid = current_tid();
    let regs = user_regs();
    let nr: u64 = read_kernel(regs.add(off(&offsets().regs_orig_ax)));
    if nr == NR_EXECVE {
        capture_argv(read_kernel(regs.add(off(&offsets().regs_si))));
    } else if nr == NR_EXECVEAT {
        capture_argv(read_kernel(regs.add(off(&offsets().regs_dx))));
    }
    let Some(a) = ARGV.get_ptr(&tid) else { return true };
    let mut all = (*a).truncated != 0;
    if !all {
        all = true;
        for t in 0..MAX_ARGV_TOKENS {
            if t >= sel.ntok as usize {
                break;
            }
            let mut seen = false;
            for j in 1..MAX_ARGS {
                if j < (*a).argc as usize && (*a).hashes[j] == sel.tokens[t] {
                    seen = true;
                }
            }
            if !seen {
                all = false;
            }
        }
    }
    ARGV.remove(&tid).ok();
    all
}

/// At bprm_check_security of an unwatched task: remembers the best exe selector matching the
/// resolved program path (a script's own path, or the binary's), for sched_process_exec.
#[inline(always)]
unsafe fn select_by_exe(ctx: &LsmContext) {
    let Some(conf) = SEL_CONF.get(0) else { return };
    if conf.exe == 0 {
        return;
    }
    let Some(s) = scratch() else { return };
    let bprm: *const u8 = ctx.arg(0);
    let file = *(bprm.add(off(&offsets().binprm_file)) as *const *const u8);
    if !d_path_into(s, file.add(off(&offsets().file_f_path))) {
        return;
    }
    let (full, name) = path_hashes(&s.buf, s.len);
    let mut rank = NO_RANK;
    let mut policy = 0u8;
    let mut key = SelKey { kind: selector::EXE_PATH, _pad: [0; 7], value: full };
    if let Some(sel) = SELECTORS.get(&key) {
        let sel = *sel;
        if argv_selects(&sel) {
            rank = sel.rank;
            policy = sel.policy;
        }
    }
    key.kind = selector::EXE_NAME;
    key.value = name;
    if let Some(sel) = SELECTORS.get(&key) {
        let sel = *sel;
        if sel.rank < rank && argv_selects(&sel) {
            rank = sel.rank;
            policy = sel.policy;
        }
    }
    if rank == NO_RANK {
        return;
    }
    let tid = current_tid();
    if let Some(p) = PENDING_SEL.get_ptr(&tid) {
        let p = *p;
        // An earlier check of the same exec (the script before its interpreter) that won.
        if p.bprm == bprm as u64 && p.rank <= rank {
            return;
        }
    }
    PENDING_SEL.insert(&tid, &PendingSel { bprm: bprm as u64, rank, policy, _pad: [0; 3] }, 0).ok();
}

/// At sched_process_exec of an unwatched task: the selector that starts a tree here, if any
/// (exe, cgroup and user selectors; the lowest rank wins). Returns the tree and rank + 1.
#[inline(always)]
unsafe fn select_new_tree(old_pid: u32, bprm: u64) -> Option<(Watched, u32)> {
    let conf = *SEL_CONF.get(0)?;
    let mut rank = NO_RANK;
    let mut policy = 0u8;
    if conf.exe != 0 {
        if let Some(p) = PENDING_SEL.get_ptr(&old_pid) {
            let p = *p;
            PENDING_SEL.remove(&old_pid).ok();
            if p.bprm == bprm {
                rank = p.rank;
                policy = p.policy;
            }
        }
    }
    if conf.cgroup != 0 {
        let mut level = 1;
        while level < MAX_CGROUP_LEVELS {
            let id = bpf_get_current_ancestor_cgroup_id(level);
            if id == 0 {
                break;
            }
            let key = SelKey { kind: selector::CGROUP, _pad: [0; 7], value: id };
            if let Some(sel) = SELECTORS.get(&key) {
                if sel.rank < rank {
                    rank = sel.rank;
                    policy = sel.policy;
                }
            }
            level += 1;
        }
    }
    if conf.user != 0 {
        let uid = bpf_get_current_uid_gid() as u32;
        let key = SelKey { kind: selector::USER, _pad: [0; 7], value: uid as u64 };
        if let Some(sel) = SELECTORS.get(&key) {
            if sel.rank < rank {
                rank = sel.rank;
                policy = sel.policy;
            }
        }
    }
    if rank == NO_RANK {
        return None;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    Some((Watched { policy, _pad: [0; 3], root: tgid }, rank.wrapping_add(1)))
}

/// Captures argv of a watched thread's execve for the exec rule's event and the records.
/// Read from the syscall's own arguments (pt_regs) at bprm_check_security, while the old
/// memory is still mapped: a syscall tracepoint would put every task on the host on the slow
/// syscall path.
#[inline(always)]
fn capture_argv(argv: u64) {
    let tid = current_tid();
    let Some(zero) = ZERO_ARGV.get(0) else { return };
    if ARGV.insert(&tid, zero, 0).is_err() {
        return;
    }
    let Some(a) = ARGV.get_ptr_mut(&tid) else { return };
    unsafe {
        for i in 0..=MAX_ARGS {
            let mut p: u64 = 0;
            if bpf_probe_read_user(&mut p as *mut u64 as *mut c_void, 8, (argv + 8 * i as u64) as *const c_void) != 0
                || p == 0
            {
                break;
            }
            if i == MAX_ARGS {
                // More arguments than captured: argv conditions cannot see them all.
                (*a).truncated = 1;
                break;
            }
            bpf_probe_read_user_str((*a).args[i].as_mut_ptr() as *mut c_void, ARG_LEN as u32, p as *const c_void);
            (*a).hashes[i] = fnv_arg(&(*a).args[i]);
            (*a).argc = i as u32 + 1;
        }
    }
}

/// `fnv1a` of one captured argument, up to its NUL.
#[inline(always)]
fn fnv_arg(arg: &[u8; ARG_LEN]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0usize;
    while i < ARG_LEN {
        let b = arg[i];
        if b == 0 {
            break;
        }
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

/// The first exec rule with argv conditions that matches, if it comes before `found` in the
/// policy. A program given more arguments than were captured matches any argv condition on
/// its path: what cannot be seen is not assumed harmless (allow rules cannot have argv).
#[inline(always)]
unsafe fn match_argv_rules(s: &Scratch, w: &Watched, found: RuleRef) -> RuleRef {
    // No captured argv (allocation failed): as with too many arguments, the condition applies.
    let a = ARGV.get_ptr(&current_tid());
    let path_hash = hash_bytes(&s.buf, s.len, 0);
    let base = (w.policy as u32 % MAX_POLICIES) * MAX_ARGV_RULES;
    for i in 0..MAX_ARGV_RULES {
        let Some(r) = ARGV_RULES.get(base + i) else { break };
        if r.used == 0 || (found.rule != 0 && r.rule > found.rule) {
            break;
        }
        if r.path_hash != path_hash {
            continue;
        }
        let mut all = true;
        for t in 0..MAX_ARGV_TOKENS {
            if t >= r.ntok as usize {
                break;
            }
            let Some(a) = a else { break };
            let mut seen = false;
            // argv[0] is the program's own name, not an argument.
            for j in 1..MAX_ARGS {
                if j < (*a).argc as usize && (*a).hashes[j] == r.tokens[t] {
                    seen = true;
                }
            }
            if !seen {
                all = false;
            }
        }
        let unseen = match a {
            Some(a) => (*a).truncated != 0,
            None => true,
        };
        if all || unseen {
            return RuleRef { rule: r.rule, action: r.action, _pad: [0; 3] };
        }
    }
    found
}

// ---------------------------------------------------------------------------------------------
// Exec and files

#[lsm(hook = "bprm_check_security")]
pub fn bprm_check_security(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else {
        unsafe { select_by_exe(&ctx) };
        return 0;
    };
    let Some(s) = scratch() else { return 0 };
    unsafe {
        let bprm: *const u8 = ctx.arg(0);
        let regs = user_regs();
        let nr: u64 = read_kernel(regs.add(off(&offsets().regs_orig_ax)));
        if nr == NR_EXECVE {
            capture_argv(read_kernel(regs.add(off(&offsets().regs_si))));
        } else if nr == NR_EXECVEAT {
            capture_argv(read_kernel(regs.add(off(&offsets().regs_dx))));
        }
        let file = *(bprm.add(off(&offsets().binprm_file)) as *const *const u8);
        if !d_path_into(s, file.add(off(&offsets().file_f_path))) {
            return 0;
        }
        let found = lookup_path(s, w.policy, class::EXEC);
        let found = match_argv_rules(s, &w, found);
        let op = Op { hook: Hook::Exec, aux: 0, holdable: true, always_record: false };
        decide(s, &w, &op, found)
    }
}

#[lsm(hook = "file_open")]
pub fn file_open(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let Some(s) = scratch() else { return 0 };
    unsafe {
        let file: *const u8 = ctx.arg(0);
        let mode = *(file.add(off(&offsets().file_f_mode)) as *const u32);
        // FMODE_EXEC opens are the exec itself (decided at bprm_check_security).
        if mode & 0x20 != 0 {
            return 0;
        }
        if !d_path_into(s, file.add(off(&offsets().file_f_path))) {
            return 0;
        }
        let op = Op { hook: Hook::FileOpen, aux: (mode & 3) as u64, holdable: true, always_record: false };
        // FMODE_WRITE: the write rules decide first, then the read rules for read-write opens.
        if mode & 2 != 0 {
            let found = lookup_path(s, w.policy, class::WRITE);
            if found.rule != 0 || mode & 1 == 0 {
                return decide(s, &w, &op, found);
            }
        }
        let found = lookup_path(s, w.policy, class::READ);
        decide(s, &w, &op, found)
    }
}

#[inline(always)]
unsafe fn path_hook(
    hook: Hook,
    class: u8,
    w: &Watched,
    s: &mut Scratch,
    vfsmnt_path: *const u8,
    dentry: *const u8,
) -> i32 {
    let mnt: u64 = read_kernel(vfsmnt_path.add(off(&offsets().path_mnt)));
    if !walk_into(s, mnt as *const u8, dentry) {
        return 0;
    }
    let found = lookup_path(s, w.policy, class);
    let op = Op { hook, aux: 0, holdable: true, always_record: false };
    decide(s, w, &op, found)
}

#[lsm(hook = "path_mknod")]
pub fn path_mknod(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let Some(s) = scratch() else { return 0 };
    unsafe { path_hook(Hook::PathMknod, class::WRITE, &w, s, ctx.arg(0), ctx.arg(1)) }
}

#[lsm(hook = "path_mkdir")]
pub fn path_mkdir(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let Some(s) = scratch() else { return 0 };
    unsafe { path_hook(Hook::PathMkdir, class::WRITE, &w, s, ctx.arg(0), ctx.arg(1)) }
}

#[lsm(hook = "path_unlink")]
pub fn path_unlink(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let Some(s) = scratch() else { return 0 };
    unsafe { path_hook(Hook::PathUnlink, class::DELETE, &w, s, ctx.arg(0), ctx.arg(1)) }
}

#[lsm(hook = "path_rmdir")]
pub fn path_rmdir(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let Some(s) = scratch() else { return 0 };
    unsafe { path_hook(Hook::PathRmdir, class::DELETE, &w, s, ctx.arg(0), ctx.arg(1)) }
}

#[lsm(hook = "path_rename")]
pub fn path_rename(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let Some(s) = scratch() else { return 0 };
    unsafe {
        // Renaming away from a protected prefix is a delete there...
        let r = path_hook(Hook::PathRename, class::DELETE, &w, s, ctx.arg(0), ctx.arg(1));
        if r != 0 {
            return r;
        }
        // ...and renaming into one is a write there.
        path_hook(Hook::PathRename, class::WRITE, &w, s, ctx.arg(2), ctx.arg(3))
    }
}

#[lsm(hook = "path_truncate")]
pub fn path_truncate(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let Some(s) = scratch() else { return 0 };
    unsafe {
        let path: *const u8 = ctx.arg(0);
        if !walk_path_into(s, path) {
            return 0;
        }
        let found = lookup_path(s, w.policy, class::WRITE);
        let op = Op { hook: Hook::PathTruncate, aux: 0, holdable: true, always_record: false };
        decide(s, &w, &op, found)
    }
}

// ---------------------------------------------------------------------------------------------
// Network

#[lsm(hook = "socket_connect")]
pub fn socket_connect(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let Some(s) = scratch() else { return 0 };
    unsafe {
        let addr: *const u8 = ctx.arg(1);
        let addrlen: i32 = ctx.arg(2);
        let family: u16 = read_kernel(addr);
        if family == AF_UNIX {
            return connect_unix(s, &w, addr, addrlen);
        }
        // Object: family (2) | port, network order (2) | IPv6 or IPv4-mapped address (16).
        s.buf = [0; 512];
        let port_be: u16 = read_kernel(addr.add(2));
        s.buf[0] = family as u8;
        s.buf[2] = port_be as u8;
        s.buf[3] = (port_be >> 8) as u8;
        if family == AF_INET {
            s.buf[14] = 0xff;
            s.buf[15] = 0xff;
            bpf_probe_read_kernel(s.buf.as_mut_ptr().add(16) as *mut c_void, 4, addr.add(4) as *const c_void);
        } else if family == AF_INET6 {
            bpf_probe_read_kernel(s.buf.as_mut_ptr().add(4) as *mut c_void, 16, addr.add(8) as *const c_void);
        } else {
            return 0;
        }
        s.len = 20;
        s.truncated = 0;
        let port = u16::from_be(port_be);
        let mut found = NO_RULE;
        let base = (w.policy as u32 % MAX_POLICIES) * MAX_NET_RULES;
        for i in 0..MAX_NET_RULES {
            let Some(r) = NET_RULES.get(base + i) else { break };
            if r.used == 0 {
                break;
            }
            if r.port != 0 && r.port != port {
                continue;
            }
            let a0 = u64::from_ne_bytes(s.buf[4..12].try_into().unwrap_or([0; 8]));
            let a1 = u64::from_ne_bytes(s.buf[12..20].try_into().unwrap_or([0; 8]));
            let r0 = u64::from_ne_bytes(r.addr[0..8].try_into().unwrap_or([0; 8]));
            let r1 = u64::from_ne_bytes(r.addr[8..16].try_into().unwrap_or([0; 8]));
            let m0 = u64::from_ne_bytes(r.mask[0..8].try_into().unwrap_or([0; 8]));
            let m1 = u64::from_ne_bytes(r.mask[8..16].try_into().unwrap_or([0; 8]));
            if a0 & m0 == r0 && a1 & m1 == r1 {
                found = RuleRef { rule: r.rule, action: r.action, _pad: [0; 3] };
                break;
            }
        }
        let op = Op { hook: Hook::Connect, aux: port as u64, holdable: true, always_record: false };
        decide(s, &w, &op, found)
    }
}

#[inline(always)]
unsafe fn connect_unix(s: &mut Scratch, w: &Watched, addr: *const u8, addrlen: i32) -> i32 {
    let n = addrlen - 2;
    if n <= 0 || n > 108 {
        return 0;
    }
    s.buf = [0; 512];
    let first: u8 = read_kernel(addr.add(2));
    if first == 0 {
        // Abstract socket: shown and matched as "@name".
        s.buf[0] = b'@';
        bpf_probe_read_kernel(
            s.buf.as_mut_ptr().add(1) as *mut c_void,
            (n as u32 - 1) & 127,
            addr.add(3) as *const c_void,
        );
        s.len = n as u64;
    } else {
        let r = bpf_probe_read_kernel_str_bytes(addr.add(2), &mut s.buf[..109]);
        s.len = r.map(|b| b.len() as u64).unwrap_or(0);
    }
    s.truncated = 0;
    let found = lookup_path(s, w.policy, class::UNIX);
    let op = Op { hook: Hook::Connect, aux: 0, holdable: true, always_record: false };
    decide(s, w, &op, found)
}

#[inline(always)]
unsafe fn bpf_probe_read_kernel_str_bytes(src: *const u8, dst: &mut [u8]) -> Result<&[u8], i32> {
    aya_ebpf::helpers::bpf_probe_read_kernel_str_bytes(src, dst)
}

// ---------------------------------------------------------------------------------------------
// Privileged operations without a path

/// Fills `s.buf` with a short label for records of operations without an object.
#[inline(always)]
fn label(s: &mut Scratch, text: &[u8]) {
    let mut i = 0;
    while i < text.len() && i < 64 {
        s.buf[i] = text[i];
        i += 1;
    }
    s.buf[i & 511] = 0;
    s.len = i as u64;
    s.truncated = 0;
}

#[inline(always)]
unsafe fn singleton(
    w: &Watched,
    hook: Hook,
    aux: u64,
    name: &[u8],
    pick: fn(&PolicyConf) -> RuleRef,
    holdable: bool,
) -> i32 {
    let Some(s) = scratch() else { return 0 };
    let Some(conf) = policy(w) else { return 0 };
    label(s, name);
    let op = Op { hook, aux, holdable, always_record: true };
    decide(s, w, &op, pick(conf))
}

#[lsm(hook = "capable")]
pub fn capable(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let Some(s) = scratch() else { return 0 };
    let cap: i32 = ctx.arg(2);
    let cap = (cap as u32) % MAX_CAPS;
    let Some(r) = CAP_RULES.get((w.policy as u32 % MAX_POLICIES) * MAX_CAPS + cap) else { return 0 };
    if r.rule == 0 {
        // No rule names this capability: the kernel's own checks decide (no record; capable()
        // is called far too often for that).
        return 0;
    }
    let r = *r;
    label(s, b"capability");
    // capable() returns a bool to its callers, so -ERESTARTNOINTR would become a plain
    // failure: an ask here is decided at once (denied, recorded as unholdable).
    let op = Op { hook: Hook::Capable, aux: cap as u64, holdable: false, always_record: true };
    unsafe { decide(s, &w, &op, r) }
}

#[lsm(hook = "sb_mount")]
pub fn sb_mount(_ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    unsafe { singleton(&w, Hook::Mount, 0, b"mount", |c| c.mount, true) }
}

#[lsm(hook = "move_mount")]
pub fn move_mount(_ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    unsafe { singleton(&w, Hook::MoveMount, 0, b"move_mount", |c| c.mount, true) }
}

#[lsm(hook = "kernel_read_file")]
pub fn kernel_read_file(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let id: u32 = ctx.arg(1);
    if id != MODULE_ID {
        return 0;
    }
    unsafe { singleton(&w, Hook::KernelReadFile, id as u64, b"kernel module", |c| c.module, true) }
}

#[lsm(hook = "kernel_load_data")]
pub fn kernel_load_data(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let id: u32 = ctx.arg(0);
    if id != MODULE_ID {
        return 0;
    }
    unsafe { singleton(&w, Hook::KernelLoadData, id as u64, b"kernel module", |c| c.module, true) }
}

#[lsm(hook = "ptrace_access_check")]
pub fn ptrace_access_check(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let mode: u32 = ctx.arg(1);
    if mode & PTRACE_MODE_ATTACH == 0 {
        return 0;
    }
    let child: *const u8 = ctx.arg(0);
    let target: u32 = unsafe { read_kernel(child.add(off(&offsets().task_pid))) };
    // Tracing inside one's own tree is ordinary debugging, not an escape.
    if unsafe { WATCHED.get(&target).is_some() } {
        return 0;
    }
    unsafe { singleton(&w, Hook::Ptrace, target as u64, b"ptrace", |c| c.ptrace, true) }
}

#[lsm(hook = "bpf")]
pub fn bpf(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let cmd: i32 = ctx.arg(0);
    unsafe { singleton(&w, Hook::Bpf, cmd as u64, b"bpf", |c| c.bpf, true) }
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
