//! Every map of the programs, and the accessors the hooks start with. The names (the statics'
//! names) are listed in `guard_common::map_name`, which the agent uses to pin them; a
//! guard-common test checks that the two lists agree.
use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use guard_common::{
    counter, Approved, Argv, ArgvRule, Hold, NetRule, PathKey, PendingSel, PolicyConf, RuleRef, SelConf, SelKey,
    Selector, Verdict, Watched, MAX_ARGV_RULES, MAX_CAPS, MAX_NET_RULES, MAX_POLICIES, MAX_SELECTORS, WATCHED_CAPACITY,
};

use crate::task::current_tid;

/// Index in `TASK_COUNT` of the host-wide reservation count.
pub const RESERVED_SLOT: u32 = 1;

/// `BPF_F_NO_PREALLOC`: hash map entries allocated on insert.
const BPF_F_NO_PREALLOC: u32 = 1;

#[map]
pub static WATCHED: HashMap<u32, Watched> = HashMap::with_max_entries(WATCHED_CAPACITY, 0);
/// [0] = entries in WATCHED, kept with every insert and remove; [`RESERVED_SLOT`] = task slots
/// reserved by all trees (see `tree::reserve`).
#[map]
pub static TASK_COUNT: Array<u64> = Array::with_max_entries(2, 0);
/// Task slots each tree holds, by the tree's root (tasks allocated in it and not yet freed).
/// Entries are not removed: a count is only ever changed by atomic adds.
#[map]
pub static TREE_TASKS: HashMap<u32, u64> = HashMap::with_max_entries(WATCHED_CAPACITY, BPF_F_NO_PREALLOC);
/// The tree (root) each reserved task was counted against, by the task_struct's address, from
/// task_alloc to task_free.
#[map]
pub static RESERVED: HashMap<u64, u32> = HashMap::with_max_entries(WATCHED_CAPACITY, 0);
#[map]
pub static PATH_RULES: LpmTrie<PathKey, RuleRef> = LpmTrie::with_max_entries(8192, 0);
#[map]
pub static NET_RULES: Array<NetRule> = Array::with_max_entries(MAX_POLICIES * MAX_NET_RULES, 0);
#[map]
pub static ARGV_RULES: Array<ArgvRule> = Array::with_max_entries(MAX_POLICIES * MAX_ARGV_RULES, 0);
#[map]
pub static CAP_RULES: Array<RuleRef> = Array::with_max_entries(MAX_POLICIES * MAX_CAPS, 0);
#[map]
pub static POLICIES: Array<PolicyConf> = Array::with_max_entries(MAX_POLICIES, 0);
#[map]
pub static HOLDS: HashMap<u32, Hold> = HashMap::with_max_entries(8192, 0);
#[map]
pub static VERDICTS: HashMap<u32, Verdict> = HashMap::with_max_entries(8192, 0);
/// Path hash of an approved creation, per thread, with its end time (see `decide::GRACE_NS`).
#[map]
pub static GRACE: HashMap<u32, [u64; 2]> = HashMap::with_max_entries(8192, 0);
/// Approvals valid for the restarts of one syscall, per thread (see `guard_common::Approved`).
#[map]
pub static APPROVED: LruHashMap<u32, Approved> = LruHashMap::with_max_entries(8192, 0);
/// One all-zero Argv to initialise entries from (it does not fit on the stack).
#[map]
pub static ZERO_ARGV: Array<Argv> = Array::with_max_entries(1, 0);
/// One entry per watched thread that execs; as large as WATCHED and allocated on demand, so
/// that a full map can never make argv conditions silently not apply.
#[map]
pub static ARGV: HashMap<u32, Argv> = HashMap::with_max_entries(WATCHED_CAPACITY, BPF_F_NO_PREALLOC);
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);
/// [0] events lost because the ring buffer was full; [reason code] denials that failed closed
/// (`guard_common::counter`).
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::LEN, 0);
/// Tree selectors (host daemon): an unwatched task whose exec matches one starts a new tree.
#[map]
pub static SELECTORS: HashMap<SelKey, Selector> = HashMap::with_max_entries(MAX_SELECTORS * 4, 0);
/// [0] = how many selectors of each kind exist.
#[map]
pub static SEL_CONF: Array<SelConf> = Array::with_max_entries(1, 0);
/// Exe selector matched at bprm_check_security, per thread, until sched_process_exec. LRU:
/// an exec that failed after the check leaves an entry nobody takes.
#[map]
pub static PENDING_SEL: LruHashMap<u32, PendingSel> = LruHashMap::with_max_entries(8192, 0);
#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Size of `Scratch::buf`, the resolved object.
pub const BUF_LEN: usize = 512;
/// Index of the last byte of `Scratch::walk`'s first half: the dentry walk writes the path
/// leftwards from here.
pub const WALK_END: u64 = 511;

/// Per-CPU working memory: far too large for the 512-byte stack.
#[repr(C)]
pub struct Scratch {
    pub key: Key<PathKey>,
    /// The resolved object, NUL-terminated for paths.
    pub buf: [u8; BUF_LEN],
    /// Dentry walk area: the path grows leftwards from WALK_END.
    pub walk: [u8; 1024],
    /// Walk state lives in map memory so the verifier cannot tell iterations apart by it and
    /// prunes equivalent states (keeps the loop linear to verify).
    pub pos: u64,
    pub dentry: u64,
    pub mnt: u64,
    /// Bytes of the object in `buf` (without the NUL).
    pub len: u64,
    /// 1 when the object was cut to fit.
    pub truncated: u64,
}

/// The tree of the current thread, if it is watched.
#[inline(always)]
pub fn watched() -> Option<Watched> {
    watched_task(current_tid())
}

/// The tree of thread `tid`, if it is watched.
#[inline(always)]
pub fn watched_task(tid: u32) -> Option<Watched> {
    // SAFETY: the value is copied out at once; a concurrent delete frees it only after an RCU
    // grace period, which cannot end while this program runs.
    unsafe { WATCHED.get(tid).copied() }
}

/// This CPU's scratch area, for the rest of the program's run.
#[inline(always)]
pub fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: a per-CPU map value lives as long as the map. Each program takes it once and
    // drops it when it returns; the programs never call one another, so within one run the
    // reference is the only one. (A program preempted on a preemptible kernel could see
    // another task's program reuse this CPU's copy: a wrong object in that record, as in the
    // single-file version; memory safety does not depend on it, the map value stays valid.)
    SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// The settings of the tree's policy.
#[inline(always)]
pub fn policy(w: &Watched) -> Option<&'static PolicyConf> {
    POLICIES.get(policy_slot(w))
}

/// The policy's index in the per-policy arrays (bounded for the verifier).
#[inline(always)]
pub fn policy_slot(w: &Watched) -> u32 {
    w.policy as u32 % MAX_POLICIES
}

/// Counts one event lost to a full ring buffer.
#[inline(always)]
pub fn bump_lost() {
    bump(counter::EVENTS_LOST);
}

/// Counts one more at `COUNTERS[index]`.
#[inline(always)]
pub fn bump(index: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU map value, valid for the program's run and used by this CPU only.
        unsafe { *c += 1 };
    }
}

// The tamper baseline (issue 10; see `hooks::tamper`). Filled by the agent at start.

/// guard's own processes (thread group ids): no watched task may signal or trace them.
#[map]
pub static GUARD_PIDS: HashMap<u32, u32> = HashMap::with_max_entries(64, 0);
/// guard's own files, directories and sockets (`guard_common::guard_path` classes, policy 0).
#[map]
pub static GUARD_PATHS: LpmTrie<PathKey, u8> = LpmTrie::with_max_entries(1024, 0);
/// guard's own BPF programs, maps and links by id (`guard_common::guard_id`).
#[map]
pub static GUARD_IDS: HashMap<u64, u8> = HashMap::with_max_entries(512, 0);
/// [0] = the agent's last heartbeat (`bpf_ktime_get_ns` clock); 0 = never.
#[map]
pub static HEARTBEAT: Array<u64> = Array::with_max_entries(1, 0);
