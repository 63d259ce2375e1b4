//! The tamper baseline (issue 10 item 1): what no watched task may do to guard itself, checked
//! before any policy rule, so that no rule (allow, audit or ask) can permit it. Every refusal
//! is a deny recorded with `reason::TAMPER`.
//!
//! - Signals to guard's processes (`task_kill`: kill, tkill, tgkill, pidfd_send_signal, a
//!   process group that includes the agent) and ptrace, `process_vm_*`, `/proc/PID/mem` and
//!   `pidfd_getfd` on them (`ptrace_access_check`, called from `hooks::privileged`). The agent
//!   puts its thread group id in `GUARD_PIDS`. Signal 0 (an existence probe) is allowed.
//! - guard's BPF objects. A map, program or link can only be acted on through a file
//!   descriptor, so the baseline refuses every way of getting one:
//!   - `bpf_map` (every new map fd: BPF_OBJ_GET of a pin, BPF_MAP_GET_FD_BY_ID): the map is
//!     compared by address with each of this object's own maps (a map's address in a program
//!     is the kernel's `struct bpf_map *`), so the check is on the object whatever path or id
//!     named it, and needs no struct offset;
//!   - `bpf(BPF_{PROG,MAP,LINK}_GET_FD_BY_ID)` of an id in `GUARD_IDS` (the agent lists its
//!     programs, maps and links there). Programs are never pinned, so an id is the only way to
//!     one. A link pin opened with BPF_OBJ_GET reaches no LSM hook on 6.1 or 6.12; a link fd
//!     gives nothing there either: tracing and raw_tp links implement neither LINK_DETACH nor
//!     LINK_UPDATE on these kernels, and only removing every pin (below) would detach them.
//!
//!   Other bpf() use stays a policy decision (the `bpf` rule).
//! - The pins: no unmount of the bpffs that holds them or of any mount above them
//!   (`sb_umount`: `umount -l /sys/fs/bpf` and `umount -l /sys` both release the pins), no
//!   mount, remount or move on them or on a directory above them (`sb_mount`, `move_mount`;
//!   propagation changes alone stay a policy decision), and no unlink or rename under the pin
//!   directory (the file hooks, as for guard's files). `mount_setattr(2)` (read-only) reaches
//!   no LSM hook on these kernels; a read-only bpffs keeps every pin and link in place.
//! - guard's files: binaries, configuration, policies, keys, spool, audit log, pin directory
//!   and admin socket, as `GUARD_PATHS` entries (exact files or directory prefixes) written
//!   by the agent. Creation, write opens, truncation, rename, link, unlink, chmod and chown of
//!   them, and a rename of a directory above them, are refused; keys (`SECRET`) are not even
//!   readable. A unix connect to a protected socket (the admin socket) is refused in the
//!   kernel, so whether the caller is in a tree is decided at connect time, by the connecting
//!   task, with no pid to race (the reason socket is not protected: it is meant for trees).
//! - Loading kernel code: module loading (init_module, finit_module), module autoload
//!   (`request_module`, which runs modprobe as root outside every tree) and kexec.
use aya_ebpf::{macros::lsm, programs::LsmContext};
use guard_common::{guard_id, guard_path, reason, Action, Hook, Watched, EPERM};

use crate::decide::{emit, Op, Outcome};
use crate::maps::{
    scratch, watched, Scratch, ARGV, ARGV_RULES, CAP_RULES, COUNTERS, EVENTS, GRACE, GUARD_IDS, GUARD_PATHS,
    GUARD_PIDS, HEARTBEAT, HOLDS, NET_RULES, PATH_RULES, PENDING_SEL, POLICIES, RESERVED, SCRATCH, SELECTORS, SEL_CONF,
    TASK_COUNT, TREE_TASKS, VERDICTS, WATCHED, ZERO_ARGV,
};
use crate::resolve::{fill_key, label};
use crate::task::{off, offsets, read_kernel};

/// bpf(2) commands that turn an id into a file descriptor (enum bpf_cmd).
const BPF_PROG_GET_FD_BY_ID: i32 = 13;
const BPF_MAP_GET_FD_BY_ID: i32 = 14;
const BPF_LINK_GET_FD_BY_ID: i32 = 30;
/// ptrace mode: the kernel's own probe; refused without a record.
const PTRACE_MODE_NOAUDIT: u32 = 0x04;
/// mount(2) flags that only change propagation (MS_UNBINDABLE, MS_PRIVATE, MS_SLAVE,
/// MS_SHARED): they move or hide nothing.
const MS_PROPAGATION: u64 = (1 << 17) | (1 << 18) | (1 << 19) | (1 << 20);

/// Refuses the operation: a deny recorded as `tamper`. `s.buf` holds the object.
#[inline(always)]
pub fn refuse(s: &Scratch, w: &Watched, hook: Hook, aux: u64) -> i32 {
    let op = Op { hook, aux, holdable: false, always_record: true };
    emit(s, w, &op, Outcome::decision(Action::Deny as u8, reason::TAMPER, 0, 0));
    -EPERM
}

/// Whether thread group `tgid` is one of guard's processes.
#[inline(always)]
pub fn is_guard_pid(tgid: u32) -> bool {
    // SAFETY: only the presence of the entry is used.
    unsafe { GUARD_PIDS.get(tgid).is_some() }
}

/// Whether the path in `s.buf` has a `GUARD_PATHS` key of `class` (longest prefix).
#[inline(always)]
fn guard_path_has(s: &mut Scratch, class: u8) -> bool {
    fill_key(s, 0, class);
    GUARD_PATHS.get(&s.key).is_some()
}

/// Whether the resolved path in `s.buf` is one of guard's files (or under one of its
/// directories).
#[inline(always)]
pub fn protected(s: &mut Scratch) -> bool {
    guard_path_has(s, guard_path::PROTECTED) || guard_path_has(s, guard_path::SECRET)
}

/// As [`protected`], or a directory above one of guard's paths.
#[inline(always)]
pub fn protected_or_above(s: &mut Scratch) -> bool {
    protected(s) || guard_path_has(s, guard_path::ANCESTOR)
}

/// For a hook whose object (a resolved, whole global path) is in `s.buf`: refuses it if it is
/// guard's (`above`: or a directory above guard's paths). None: the policy decides.
#[inline(always)]
pub fn check_path(s: &mut Scratch, w: &Watched, hook: Hook, aux: u64, above: bool) -> Option<i32> {
    if s.truncated != 0 {
        return None;
    }
    let hit = if above { protected_or_above(s) } else { protected(s) };
    if hit {
        Some(refuse(s, w, hook, aux))
    } else {
        None
    }
}

/// An open of the resolved file in `s.buf`: writes to guard's files and reads of its keys.
#[inline(always)]
pub fn check_open(s: &mut Scratch, w: &Watched, aux: u64, write: bool) -> Option<i32> {
    if s.truncated != 0 {
        return None;
    }
    let hit = if write { protected(s) } else { guard_path_has(s, guard_path::SECRET) };
    if hit {
        Some(refuse(s, w, Hook::FileOpen, aux))
    } else {
        None
    }
}

/// A mount(2) on the mount point in `s.buf` with `flags`: a new mount, bind, remount or move on
/// the pins or above them is refused; propagation changes alone are left to the policy.
#[inline(always)]
pub fn check_mount(s: &mut Scratch, w: &Watched, flags: u64) -> Option<i32> {
    if flags & MS_PROPAGATION != 0 {
        return None;
    }
    check_path(s, w, Hook::Mount, flags, true)
}

/// ptrace-family access (attach, read, /proc/PID/mem, process_vm_*, pidfd_getfd) to the task
/// `target`: refused if it belongs to guard.
#[inline(always)]
pub fn check_ptrace(w: &Watched, target: *const u8, mode: u32) -> Option<i32> {
    // SAFETY: `target` is the task the kernel passed the hook; its tgid is read through
    // bpf_probe_read_kernel at the offset the kernel's BTF gave.
    let tgid: u32 = unsafe { read_kernel(target.add(off(&offsets().task_tgid))) };
    if !is_guard_pid(tgid) {
        return None;
    }
    if mode & PTRACE_MODE_NOAUDIT != 0 {
        return Some(-EPERM);
    }
    let Some(s) = scratch() else { return Some(-EPERM) };
    label(s, b"ptrace of guard-agent");
    Some(refuse(s, w, Hook::Ptrace, tgid as u64))
}

/// bpf(2) `cmd` with its (kernel copy of the) attributes at `attr`: the GET_FD_BY_ID commands
/// for one of guard's ids are refused.
#[inline(always)]
pub fn check_bpf(w: &Watched, cmd: i32, attr: *const u8) -> Option<i32> {
    let kind = match cmd {
        BPF_PROG_GET_FD_BY_ID => guard_id::PROG,
        BPF_MAP_GET_FD_BY_ID => guard_id::MAP,
        BPF_LINK_GET_FD_BY_ID => guard_id::LINK,
        _ => return None,
    };
    // SAFETY: `attr` is the kernel's copy of the syscall's attributes; the id is its first u32
    // for these commands, read through bpf_probe_read_kernel.
    let id: u32 = unsafe { read_kernel(attr) };
    let key = kind | id as u64;
    // SAFETY: only the presence of the entry is used.
    if unsafe { GUARD_IDS.get(key).is_none() } {
        return None;
    }
    let Some(s) = scratch() else { return Some(-EPERM) };
    label(
        s,
        match cmd {
            BPF_PROG_GET_FD_BY_ID => b"guard bpf program",
            BPF_MAP_GET_FD_BY_ID => b"guard bpf map",
            _ => b"guard bpf link",
        },
    );
    Some(refuse(s, w, Hook::Bpf, key))
}

/// Loading kernel code (a module, its autoload, a kexec image): refused for every watched
/// task, labelled `what`.
#[inline(always)]
pub fn refuse_kernel_code(w: &Watched, hook: Hook, aux: u64, what: &[u8]) -> i32 {
    let Some(s) = scratch() else { return -EPERM };
    label(s, what);
    refuse(s, w, hook, aux)
}

/// Whether the agent is alive: its last heartbeat is recent. 0 (never written) counts as gone.
#[inline(always)]
pub fn agent_alive(now: u64) -> bool {
    match HEARTBEAT.get(0) {
        Some(&beat) => beat != 0 && now < beat.saturating_add(guard_common::HEARTBEAT_STALE_NS),
        None => false,
    }
}

/// Whether the `struct bpf_map *` `map` is one of this object's maps.
#[inline(always)]
fn is_guard_map(map: u64) -> bool {
    macro_rules! any_of {
        ($($m:ident),* $(,)?) => { false $(|| map == &$m as *const _ as u64)* };
    }
    any_of!(
        WATCHED,
        TASK_COUNT,
        TREE_TASKS,
        RESERVED,
        PATH_RULES,
        NET_RULES,
        ARGV_RULES,
        CAP_RULES,
        POLICIES,
        HOLDS,
        VERDICTS,
        GRACE,
        ZERO_ARGV,
        ARGV,
        EVENTS,
        COUNTERS,
        SELECTORS,
        SEL_CONF,
        PENDING_SEL,
        SCRATCH,
        GUARD_PIDS,
        GUARD_PATHS,
        GUARD_IDS,
        HEARTBEAT,
    )
}

/// task_kill(struct task_struct *p, struct kernel_siginfo *info, int sig, const struct cred
/// *cred): a signal to `p` from the current task.
#[lsm(hook = "task_kill")]
pub fn task_kill(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let sig: i32 = ctx.arg(2);
    if sig == 0 {
        return 0;
    }
    // SAFETY: argument 0 is the target task; its tgid is read through bpf_probe_read_kernel.
    let tgid: u32 = unsafe { read_kernel(ctx.arg::<*const u8>(0).add(off(&offsets().task_tgid))) };
    if !is_guard_pid(tgid) {
        return 0;
    }
    let Some(s) = scratch() else { return -EPERM };
    label(s, b"signal to guard-agent");
    refuse(s, &w, Hook::TaskKill, ((sig as u32 as u64) << 32) | tgid as u64)
}

/// bpf_map(struct bpf_map *map, fmode_t fmode): a new file descriptor for `map`.
#[lsm(hook = "bpf_map")]
pub fn bpf_map(ctx: LsmContext) -> i32 {
    let Some(w) = watched() else { return 0 };
    let map: u64 = ctx.arg(0);
    if !is_guard_map(map) {
        return 0;
    }
    let Some(s) = scratch() else { return -EPERM };
    label(s, b"guard bpf map");
    refuse(s, &w, Hook::BpfMap, 0)
}
