//! Types shared by the eBPF programs and userspace.
//!
//! Every struct is `#[repr(C)]` with explicit padding so that its layout is the same on both
//! sides and the verifier never sees uninitialised padding bytes.
#![no_std]

/// Bytes of a path or address kept in keys and events. LPM trie keys are limited to 256 bytes of
/// data by the kernel; two of them hold the policy id and the object class.
pub const OBJECT_LEN: usize = 256;
/// Bytes of the path itself inside a path key (after policy id and class).
pub const PATH_LEN: usize = OBJECT_LEN - 2;
/// argv captured at exec: this many arguments, each cut to ARG_LEN bytes.
pub const MAX_ARGS: usize = 8;
pub const ARG_LEN: usize = 64;
/// Exec rules with argv conditions, checked in order, per policy; tokens per rule.
pub const MAX_ARGV_RULES: u32 = 16;
pub const MAX_ARGV_TOKENS: usize = 4;
/// Network rules checked in order, per policy.
pub const MAX_NET_RULES: u32 = 64;
/// Capabilities known to the kernel (CAP_LAST_CAP is 40 on 6.x).
pub const MAX_CAPS: u32 = 64;
/// Policy slots in the kernel: the per-policy arrays hold this many policies.
pub const MAX_POLICIES: u32 = 16;
/// Capacity of the WATCHED map: the most tasks all watched trees can hold.
pub const WATCHED_CAPACITY: u32 = 65_536;
/// `BPF_NOEXIST`: a map update that only inserts (fails if the key exists).
pub const BPF_NOEXIST: u64 = 1;

/// Names of the maps in guard-ebpf (`#[map]` statics, named after the static; aya-ebpf's
/// `#[map(name = ...)]` takes a string literal only, so the kernel side cannot use these
/// constants directly: the test `map_names_match_the_kernel` checks guard-ebpf/src/maps.rs).
pub mod map_name {
    pub const WATCHED: &str = "WATCHED";
    pub const TASK_COUNT: &str = "TASK_COUNT";
    pub const PATH_RULES: &str = "PATH_RULES";
    pub const NET_RULES: &str = "NET_RULES";
    pub const ARGV_RULES: &str = "ARGV_RULES";
    pub const CAP_RULES: &str = "CAP_RULES";
    pub const POLICIES: &str = "POLICIES";
    pub const HOLDS: &str = "HOLDS";
    pub const VERDICTS: &str = "VERDICTS";
    pub const GRACE: &str = "GRACE";
    pub const APPROVED: &str = "APPROVED";
    pub const ZERO_ARGV: &str = "ZERO_ARGV";
    pub const ARGV: &str = "ARGV";
    pub const EVENTS: &str = "EVENTS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const SELECTORS: &str = "SELECTORS";
    pub const SEL_CONF: &str = "SEL_CONF";
    pub const PENDING_SEL: &str = "PENDING_SEL";
    pub const SCRATCH: &str = "SCRATCH";
    pub const TREE_TASKS: &str = "TREE_TASKS";
    pub const RESERVED: &str = "RESERVED";
    /// The tamper baseline (issue 10): guard's own processes, files and BPF objects, and the
    /// agent's heartbeat.
    pub const GUARD_PIDS: &str = "GUARD_PIDS";
    pub const GUARD_PATHS: &str = "GUARD_PATHS";
    pub const GUARD_IDS: &str = "GUARD_IDS";
    pub const HEARTBEAT: &str = "HEARTBEAT";

    /// Every map of guard-ebpf.
    pub const ALL: &[&str] = &[
        WATCHED,
        TASK_COUNT,
        PATH_RULES,
        NET_RULES,
        ARGV_RULES,
        CAP_RULES,
        POLICIES,
        HOLDS,
        VERDICTS,
        GRACE,
        APPROVED,
        ZERO_ARGV,
        ARGV,
        EVENTS,
        COUNTERS,
        SELECTORS,
        SEL_CONF,
        PENDING_SEL,
        SCRATCH,
        TREE_TASKS,
        RESERVED,
        GUARD_PIDS,
        GUARD_PATHS,
        GUARD_IDS,
        HEARTBEAT,
    ];

    /// The maps a daemon pins, so that a restarted daemon (and the programs left attached
    /// while none runs) share them. Not pinned: ZERO_ARGV (a constant) and SCRATCH (per-CPU
    /// working memory).
    pub const PINNED: &[&str] = &[
        WATCHED,
        TASK_COUNT,
        PATH_RULES,
        NET_RULES,
        ARGV_RULES,
        CAP_RULES,
        POLICIES,
        HOLDS,
        VERDICTS,
        GRACE,
        APPROVED,
        ARGV,
        EVENTS,
        COUNTERS,
        SELECTORS,
        SEL_CONF,
        PENDING_SEL,
        TREE_TASKS,
        RESERVED,
        GUARD_PIDS,
        GUARD_PATHS,
        GUARD_IDS,
        HEARTBEAT,
    ];
}

/// Errno values returned by the hooks.
pub const EPERM: i32 = 1;
/// -ERESTARTNOINTR: the kernel restarts the syscall once the task is resumed.
pub const ERESTARTNOINTR: i32 = 513;
pub const SIGSTOP: u32 = 19;
/// SIGKILL, for a creator whose new task could not be tracked.
pub const SIGKILL: u32 = 9;

/// What a rule or the default does with an operation.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Allow = 0,
    Deny = 1,
    Audit = 2,
    Ask = 3,
}

impl Action {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Allow),
            1 => Some(Self::Deny),
            2 => Some(Self::Audit),
            3 => Some(Self::Ask),
            _ => None,
        }
    }
}

/// The LSM hook that saw an operation.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Exec = 1,
    FileOpen = 2,
    PathMknod = 3,
    PathUnlink = 4,
    PathRmdir = 5,
    PathRename = 6,
    PathTruncate = 7,
    Connect = 8,
    Capable = 9,
    Mount = 10,
    MoveMount = 11,
    KernelReadFile = 12,
    KernelLoadData = 13,
    Ptrace = 14,
    Bpf = 15,
    PathMkdir = 16,
    TaskAlloc = 17,
    // Namespaces, mounts and exec objects (issue 9 items 3 and 8): codes 42-51.
    UsernsCreate = 42,
    PathChroot = 43,
    SbPivotroot = 44,
    SbUmount = 45,
    MmapFile = 46,
    PathLink = 24,
    PathSymlink = 25,
    PathChmod = 26,
    PathChown = 27,
    /// A new task of a watched tree could not be tracked (task_newtask).
    TaskNew = 18,
    /// io_uring_setup with IORING_SETUP_SQPOLL.
    UringSqpoll = 19,
    /// An io_uring request run with registered credentials (a personality).
    UringCreds = 20,
    /// A unix stream connect, matched on the listening socket the kernel found (issue 9).
    UnixStreamConnect = 34,
    /// A unix datagram connect or send, matched on the receiving socket the kernel found.
    UnixMaySend = 35,
    /// A send with an address (unconnected UDP, TCP Fast Open), matched like a connect.
    SocketSendmsg = 36,
    /// A module autoload (`request_module`), matched by the module rule.
    KernelModuleRequest = 37,
    // The tamper baseline (issue 10 item 1): codes 50-59.
    /// A signal (kill, tgkill, pidfd_send_signal...) to one of guard's processes.
    TaskKill = 50,
    /// A file descriptor for one of guard's BPF maps (BPF_OBJ_GET of a pin, BPF_MAP_GET_FD_BY_ID).
    BpfMap = 51,
    // Escape hatches (issue 10 item 5): codes 52-55.
    /// A file descriptor received over a unix socket (SCM_RIGHTS) or by pidfd_getfd.
    FileReceive = 52,
    // Extended attributes and ACLs of a protected object: writes of it (issue 9 item 2).
    /// setxattr/lsetxattr/fsetxattr (and on 6.1 a POSIX ACL, which is an xattr there).
    InodeSetxattr = 28,
    /// removexattr/lremovexattr/fremovexattr.
    InodeRemovexattr = 29,
    /// A POSIX ACL set (6.2 on: ACLs no longer pass inode_setxattr).
    InodeSetAcl = 30,
    /// A POSIX ACL removed (6.2 on).
    InodeRemoveAcl = 31,
}

impl Hook {
    pub fn from_u8(v: u8) -> Option<Self> {
        use Hook::*;
        Some(match v {
            1 => Exec,
            2 => FileOpen,
            3 => PathMknod,
            4 => PathUnlink,
            5 => PathRmdir,
            6 => PathRename,
            7 => PathTruncate,
            8 => Connect,
            9 => Capable,
            10 => Mount,
            11 => MoveMount,
            12 => KernelReadFile,
            13 => KernelLoadData,
            14 => Ptrace,
            15 => Bpf,
            16 => PathMkdir,
            17 => TaskAlloc,
            42 => UsernsCreate,
            43 => PathChroot,
            44 => SbPivotroot,
            45 => SbUmount,
            46 => MmapFile,
            24 => PathLink,
            25 => PathSymlink,
            26 => PathChmod,
            27 => PathChown,
            18 => TaskNew,
            19 => UringSqpoll,
            20 => UringCreds,
            34 => UnixStreamConnect,
            35 => UnixMaySend,
            36 => SocketSendmsg,
            37 => KernelModuleRequest,
            50 => TaskKill,
            51 => BpfMap,
            52 => FileReceive,
            28 => InodeSetxattr,
            29 => InodeRemovexattr,
            30 => InodeSetAcl,
            31 => InodeRemoveAcl,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        use Hook::*;
        match self {
            Exec => "bprm_check_security",
            FileOpen => "file_open",
            PathMknod => "path_mknod",
            PathUnlink => "path_unlink",
            PathRmdir => "path_rmdir",
            PathRename => "path_rename",
            PathTruncate => "path_truncate",
            Connect => "socket_connect",
            Capable => "capable",
            Mount => "sb_mount",
            MoveMount => "move_mount",
            KernelReadFile => "kernel_read_file",
            KernelLoadData => "kernel_load_data",
            Ptrace => "ptrace_access_check",
            Bpf => "bpf",
            PathMkdir => "path_mkdir",
            TaskAlloc => "task_alloc",
            UsernsCreate => "userns_create",
            PathChroot => "path_chroot",
            SbPivotroot => "sb_pivotroot",
            SbUmount => "sb_umount",
            MmapFile => "mmap_file",
            PathLink => "path_link",
            PathSymlink => "path_symlink",
            PathChmod => "path_chmod",
            PathChown => "path_chown",
            TaskNew => "task_newtask",
            UringSqpoll => "uring_sqpoll",
            UringCreds => "uring_override_creds",
            UnixStreamConnect => "unix_stream_connect",
            UnixMaySend => "unix_may_send",
            SocketSendmsg => "socket_sendmsg",
            KernelModuleRequest => "kernel_module_request",
            TaskKill => "task_kill",
            BpfMap => "bpf_map",
            FileReceive => "file_receive",
            InodeSetxattr => "inode_setxattr",
            InodeRemovexattr => "inode_removexattr",
            InodeSetAcl => "inode_set_acl",
            InodeRemoveAcl => "inode_remove_acl",
        }
    }
}

/// The class byte of a path key: which kind of operation a path rule covers.
pub mod class {
    pub const EXEC: u8 = 1;
    pub const READ: u8 = 2;
    pub const WRITE: u8 = 3;
    pub const DELETE: u8 = 4;
    pub const UNIX: u8 = 5;
    /// Exact keys `dir\0` for every proper ancestor directory of a file rule's path, valued
    /// with the strictest rule below it: renaming an ancestor moves every object below.
    /// (24: from the escape-files numeric range, so that other new classes cannot collide.)
    pub const ANCESTOR: u8 = 24;
}

/// Key data of the path LPM trie: `[policy, class, path bytes..., 0]`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PathKey {
    pub policy: u8,
    pub class: u8,
    pub path: [u8; PATH_LEN],
}

/// A matched rule: its index in the policy (file order) and its action.
/// The value stored for each key is the earliest rule among the key and its ancestors, so one
/// longest-prefix lookup gives the first matching rule in file order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleRef {
    /// Rule index + 1; 0 means "no rule".
    pub rule: u32,
    pub action: u8,
    pub _pad: [u8; 3],
}

/// One network rule. Addresses are IPv6 (IPv4 stored as ::ffff:a.b.c.d).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NetRule {
    pub addr: [u8; 16],
    pub mask: [u8; 16],
    /// 0 = any port.
    pub port: u16,
    pub used: u8,
    pub action: u8,
    pub rule: u32,
}

/// Per-policy settings (default action, rules for singleton operations).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PolicyConf {
    pub default_action: u8,
    pub _pad: [u8; 3],
    /// Rule refs for operations without an object to match.
    pub mount: RuleRef,
    pub module: RuleRef,
    pub bpf: RuleRef,
    pub ptrace: RuleRef,
    /// Explicit padding: `hold_deadline_ns` is 8-aligned.
    pub _pad2: [u8; 4],
    /// Kernel-side limit of a hold, in nanoseconds: past it the hook denies on its own.
    pub hold_deadline_ns: u64,
    /// `fnv1a` of the policy's name; 0 = slot unused. A restarted daemon reads it back from
    /// the pinned map to find which id each named policy has (trees keep their ids).
    pub name_hash: u64,
    /// Operations that change what a path means, and programs without a name. With no rule
    /// (`rule == 0`) they are denied for a watched tree whatever `default_action` says
    /// (`reason::SAFE_DEFAULT`): the policy must allow them explicitly.
    pub userns: RuleRef,
    pub chroot: RuleRef,
    pub pivot_root: RuleRef,
    pub umount: RuleRef,
    /// Exec (or PROT_EXEC mapping) of a file with no name left: a memfd, a deleted file.
    pub exec_anonymous: RuleRef,
    /// `IO_URING_DENY`: every hooked operation that comes through io_uring is refused.
    pub io_uring: u8,
    pub _pad3: [u8; 7],
}

/// `PolicyConf::io_uring`: io_uring requests are decided by the rules like syscalls.
pub const IO_URING_ALLOW: u8 = 0;
/// `PolicyConf::io_uring`: refused (hooked operations from io_uring, SQPOLL setup, personalities).
pub const IO_URING_DENY: u8 = 1;

/// Most tree selectors the kernel checks.
pub const MAX_SELECTORS: u32 = 256;
/// Cgroup levels checked for cgroup selectors (ancestors of the task's cgroup, root = 0).
pub const MAX_CGROUP_LEVELS: i32 = 12;

/// What a selector key matches on.
pub mod selector {
    /// `fnv1a` of the resolved path of the program (or script) being executed.
    pub const EXE_PATH: u8 = 1;
    /// `fnv1a` of the program's file name (last path component).
    pub const EXE_NAME: u8 = 2;
    /// A cgroup v2 id (the cgroup directory's inode number): the task's cgroup or an ancestor.
    pub const CGROUP: u8 = 3;
    /// The task's real uid after the exec.
    pub const USER: u8 = 4;
}

/// Key of the SELECTORS map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SelKey {
    pub kind: u8,
    pub _pad: [u8; 7],
    pub value: u64,
}

/// A tree selector: an exec by an unwatched task that matches starts a new watched tree.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Selector {
    /// Lower wins when a task matches several (userspace orders by kind, then file order).
    pub rank: u32,
    pub policy: u8,
    /// Argument tokens (hashes, as for exec rules) that must all appear in argv[1..].
    pub ntok: u8,
    pub _pad: [u8; 2],
    pub tokens: [u64; MAX_ARGV_TOKENS],
}

/// Which selector kinds exist, so that an exec on a host without them costs one lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SelConf {
    pub exe: u32,
    pub cgroup: u32,
    pub user: u32,
    pub _pad: u32,
}

/// An exe selector matched at bprm_check_security, taken up at sched_process_exec if the
/// exec is the same (same linux_binprm) and succeeded.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PendingSel {
    pub bprm: u64,
    pub rank: u32,
    pub policy: u8,
    pub _pad: [u8; 3],
}

/// A watched task (thread id key).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Watched {
    pub policy: u8,
    pub _pad: [u8; 3],
    /// Thread group id of the tree's root process.
    pub root: u32,
}

/// A hold in flight for a thread.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Hold {
    pub seq: u64,
    pub hash: u64,
    pub deadline_ns: u64,
}

/// Bindings approved in one syscall, per thread: a syscall that meets two asks (a rename
/// between two ask prefixes, an O_TRUNC open at file_open and path_truncate) is restarted after
/// each approval, and the approvals already given must hold for its restarts.
pub const APPROVED_SLOTS: usize = 4;

/// The approvals of a thread's current syscall (see [`APPROVED_SLOTS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Approved {
    /// The syscall they were given in; another syscall drops them.
    pub nr: u64,
    /// They end at this time (extended while a further hold of the same syscall waits).
    pub until_ns: u64,
    /// Keyed bindings (see `SipHash`); 0 = free slot.
    pub bindings: [u64; APPROVED_SLOTS],
}

/// A decision for a held thread, written by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Verdict {
    pub seq: u64,
    pub hash: u64,
    /// 1 = allow, 0 = deny.
    pub allow: u8,
    pub _pad: [u8; 7],
}

/// Why a decision came out the way it did (in events).
pub mod reason {
    pub const RULE: u8 = 1;
    pub const DEFAULT: u8 = 2;
    pub const APPROVED: u8 = 3;
    pub const DENIED: u8 = 4;
    /// The kernel's own deadline passed with no verdict (agent gone).
    pub const EXPIRED: u8 = 5;
    /// An ask from a context that cannot be held (io_uring worker): denied at once.
    pub const UNHOLDABLE: u8 = 6;
    /// An operation that changes what paths mean (user namespace, chroot, pivot_root, mount,
    /// umount), runs a program without a name (memfd, deleted file), or traces or reads a
    /// process outside every tree, with no rule allowing it: denied for a watched tree
    /// whatever the policy's default.
    pub const SAFE_DEFAULT: u8 = 16;
    /// The program being executed or mapped executable could not be resolved to its global path.
    pub const EXEC_UNRESOLVED: u8 = 17;
    /// The object could not be resolved to its global path (too long, too deep, a detached
    /// mount, a failed `bpf_d_path`): denied for a watched task whatever the rules say.
    pub const UNRESOLVABLE: u8 = 12;
    /// A fork refused at the tree's task limit, or a new task that could not be tracked.
    pub const TREE_LIMIT: u8 = 7;
    /// The policy refuses io_uring (`io_uring = "deny"`).
    pub const IO_URING: u8 = 8;
    /// The socket a unix connect or send reaches could not be resolved to a path (a read of
    /// its kernel fields failed, or the path did not fit): denied for a watched task.
    pub const UNRESOLVED_PEER: u8 = 14;
    /// A ptrace access (attach or read) of a process in another watched tree, with no rule
    /// that allows it: a tree may trace only inside itself.
    pub const OTHER_TREE: u8 = 15;
    /// The ring buffer was full: an `audit` or `ask` that could not be recorded was denied
    /// (recorded by the agent from the counter of the same index in `COUNTERS`).
    pub const RING_FULL: u8 = 9;
    /// An ask found the hold table (`HOLDS`) full: denied.
    pub const HOLD_TABLE_FULL: u8 = 10;
    /// The exec's argv could not be read from the caller's memory: denied.
    pub const ARGV_UNREADABLE: u8 = 11;
    /// The tamper baseline: an operation against guard itself (its processes, BPF objects,
    /// pins, files and admin socket, or loading kernel code). No policy rule can allow it.
    pub const TAMPER: u8 = 20;
    /// An ask while no agent is alive to answer (its heartbeat is stale): denied at once
    /// instead of stopping a thread nobody would resume.
    pub const AGENT_GONE: u8 = 21;
    /// The argv the kernel copied into the new image differs from the one captured from the
    /// caller's memory (and decided, recorded, shown to an approver): another thread changed
    /// it during the exec. Found after the point of no return: the process is killed before
    /// it runs an instruction.
    pub const ARGV_CHANGED: u8 = 22;
}

/// Entries of the per-CPU `COUNTERS` array: [0] is every event lost to a full ring buffer;
/// the fail-closed denials are counted at the index of their `reason` code.
pub mod counter {
    pub const EVENTS_LOST: u32 = 0;
    /// Size of `COUNTERS`: room for every reason code.
    pub const LEN: u32 = 32;
}

/// The tamper baseline (issue 10): classes of `GUARD_PATHS` keys (`PathKey.class`, policy 0).
pub mod guard_path {
    /// guard's own file, or a directory prefix ("/dir/"): no watched task may create, write,
    /// truncate, rename, link, unlink, chmod or chown it, or connect to it (the admin socket).
    pub const PROTECTED: u8 = 1;
    /// As PROTECTED, and no read either (private keys).
    pub const SECRET: u8 = 2;
    /// Exact keys "dir\0" for every proper ancestor directory of a protected path: renaming,
    /// unmounting or mounting over one of them moves or hides guard's files.
    pub const ANCESTOR: u8 = 3;
}

/// `GUARD_IDS` keys: `(kind << 32) | id` of guard's own BPF objects.
pub mod guard_id {
    pub const PROG: u64 = 1 << 32;
    pub const MAP: u64 = 2 << 32;
    pub const LINK: u64 = 3 << 32;
}

/// The agent writes `bpf_ktime_get_ns()`'s clock (CLOCK_MONOTONIC) into `HEARTBEAT[0]` this
/// often; a hold finds the agent gone when the last beat is older than `HEARTBEAT_STALE_NS`.
pub const HEARTBEAT_INTERVAL_MS: u64 = 250;
pub const HEARTBEAT_STALE_NS: u64 = 3_000_000_000;

/// Event kinds on the ring buffer.
pub mod kind {
    /// A decision the kernel made on its own (allow/audit/deny by rule or default).
    pub const DECISION: u8 = 1;
    /// A new hold: the thread is stopping and waits for a verdict.
    pub const HOLD: u8 = 2;
    /// A held operation completed with the agent's verdict.
    pub const RESOLVED: u8 = 3;
    /// A watched process executed a new program.
    pub const EXEC: u8 = 4;
    /// A watched process exited (thread group leader).
    pub const EXIT: u8 = 5;
}

/// One event from the kernel.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Event {
    pub kind: u8,
    pub hook: u8,
    pub action: u8,
    pub reason: u8,
    pub policy: u8,
    /// 1 when the object was cut to fit.
    pub truncated: u8,
    pub argc: u8,
    pub _pad: u8,
    pub tgid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub rule: u32,
    /// Explicit padding: `aux` is 8-aligned.
    pub _pad2: u32,
    /// Capability number, port, mount flags, module id or ptrace target, by hook.
    pub aux: u64,
    pub seq: u64,
    pub hash: u64,
    pub time_ns: u64,
    pub object: [u8; OBJECT_LEN],
    pub argv: [[u8; ARG_LEN]; MAX_ARGS],
}

/// argv captured at exec for a watched thread.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Argv {
    pub argc: u32,
    /// 1 when the program was given more arguments than were captured.
    pub truncated: u32,
    pub args: [[u8; ARG_LEN]; MAX_ARGS],
    /// `fnv1a` of each captured argument, for argv conditions.
    pub hashes: [u64; MAX_ARGS],
    /// Keyed digest (SipHash with the hold key) of argc, truncation and every captured
    /// argument's bytes: what an exec's hold binds (computed as the arguments are read, where
    /// the verifier walks the loop once, rather than in every decision path).
    pub digest: u64,
    /// 1 when the caller's memory could not be read (a pointer or a string failed).
    pub unreadable: u32,
    /// The kernel's own count of the arguments it copied (`linux_binprm.argc` at
    /// bprm_creds_for_exec, before a script handler rewrites argv): what the check of the new
    /// image's argv compares `argc` with, and how it finds a script's arguments.
    pub kargc: u32,
}

/// An exec rule with argv conditions: the binary's exact resolved path (as its hash) and
/// tokens that must all appear among argv[1..] (as hashes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ArgvRule {
    pub path_hash: u64,
    pub tokens: [u64; MAX_ARGV_TOKENS],
    pub rule: u32,
    pub ntok: u8,
    pub action: u8,
    pub used: u8,
    pub _pad: u8,
}

/// FNV-1a, 64 bits: the hash both sides compute over paths and arguments (rule and selector
/// keys are built by userspace, matched by the kernel). This type is its one implementation;
/// [`fnv1a`], [`fnv1a_bounded`] and [`fnv1a_cstr`] are the forms each side needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fnv1a(u64);

impl Fnv1a {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    /// The hash of no bytes.
    pub const NEW: Self = Self(Self::OFFSET_BASIS);

    /// Mixes in one byte.
    #[inline(always)]
    #[must_use]
    pub const fn write(self, byte: u8) -> Self {
        Self((self.0 ^ byte as u64).wrapping_mul(Self::PRIME))
    }

    #[inline(always)]
    pub const fn finish(self) -> u64 {
        self.0
    }
}

/// `fnv1a` of a slice (userspace: rule and selector keys).
pub const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = Fnv1a::NEW;
    let mut i = 0;
    while i < bytes.len() {
        h = h.write(bytes[i]);
        i += 1;
    }
    h.finish()
}

/// `fnv1a` of the first `len` bytes of a fixed-size buffer (all of it if `len >= N`). The loop
/// is bounded by `N`, so the eBPF verifier accepts it whatever `len` is.
#[inline(always)]
pub fn fnv1a_bounded<const N: usize>(buf: &[u8; N], len: usize) -> u64 {
    let mut h = Fnv1a::NEW;
    let mut i = 0;
    while i < N {
        if i >= len {
            break;
        }
        h = h.write(buf[i]);
        i += 1;
    }
    h.finish()
}

/// `fnv1a` of a NUL-terminated string in a fixed-size buffer, up to its NUL (or all of it).
#[inline(always)]
pub fn fnv1a_cstr<const N: usize>(buf: &[u8; N]) -> u64 {
    let mut h = Fnv1a::NEW;
    let mut i = 0;
    while i < N {
        let b = buf[i];
        if b == 0 {
            break;
        }
        h = h.write(b);
        i += 1;
    }
    h.finish()
}

/// The mask of the bytes of word `i` (bytes 8i..8i+8 of the buffer) that belong to an object
/// of `len` bytes: all ones for a word inside it, zero past it, the low bytes for the last.
/// Arithmetic without a branch (guard-ebpf's `object_digest` explains why); the volatile read keeps LLVM from
/// turning the clamp back into compare-and-branch.
#[inline(always)]
pub fn object_bytes_mask(len: u64, i: u64) -> u64 {
    // SAFETY: a read of a local.
    let rest = unsafe { core::ptr::read_volatile(&(len as i64 - 8 * i as i64)) };
    // clamp(rest, 0, 8) without branches: arithmetic shifts give all-ones for negatives.
    let r = rest & !(rest >> 63);
    let over = (8 - r) >> 63;
    let bytes = ((r & !over) | (8 & over)) as u64;
    let bits = bytes * 8;
    // (1 << bits) - 1 for bits in 0..=64, in two shifts of at most 32 each (one shift by 64
    // would be out of range).
    ((1u64 << (bits / 2)) << (bits - bits / 2)).wrapping_sub(1)
}

/// SipHash-2-4 over 64-bit words, with the key the agent draws at each load: the binding of a
/// hold (what an approval covers) is a keyed hash the watched tree cannot compute, so it
/// cannot search for another object with the approved one's hash. For messages whose length
/// is a multiple of 8 bytes, fed as little-endian words, the result is standard SipHash-2-4.
///
/// The caller passes the message length to [`SipHash::finish`] rather than the hasher counting
/// words: in the kernel a count known at each loop iteration would make the verifier see a
/// different state after every early exit of a bounded loop, and verify the rest of the
/// program once per iteration.
#[derive(Clone, Copy, Debug)]
pub struct SipHash {
    v: [u64; 4],
}

impl SipHash {
    #[inline(always)]
    pub const fn new(k0: u64, k1: u64) -> Self {
        Self {
            v: [
                k0 ^ 0x736f_6d65_7073_6575,
                k1 ^ 0x646f_7261_6e64_6f6d,
                k0 ^ 0x6c79_6765_6e65_7261,
                k1 ^ 0x7465_6462_7974_6573,
            ],
        }
    }

    #[inline(always)]
    fn round(&mut self) {
        let v = &mut self.v;
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }

    /// Mixes in one 8-byte word.
    #[inline(always)]
    pub fn write(&mut self, m: u64) {
        self.v[3] ^= m;
        self.round();
        self.round();
        self.v[0] ^= m;
    }

    /// The hash of the `words` words written.
    #[inline(always)]
    pub fn finish(mut self, words: u64) -> u64 {
        let b = (words.wrapping_mul(8) & 0xff) << 56;
        self.v[3] ^= b;
        self.round();
        self.round();
        self.v[0] ^= b;
        self.v[2] ^= 0xff;
        self.round();
        self.round();
        self.round();
        self.round();
        self.v[0] ^ self.v[1] ^ self.v[2] ^ self.v[3]
    }
}

/// Kernel struct offsets read from the running kernel's BTF at load time, passed as frozen
/// .rodata. Rust eBPF cannot emit CO-RE relocations, so nothing may be baked in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Offsets {
    pub file_f_path: u32,
    pub file_f_mode: u32,
    pub binprm_file: u32,
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_real_parent: u32,
    pub task_flags: u32,
    pub path_mnt: u32,
    pub path_dentry: u32,
    pub dentry_parent: u32,
    pub dentry_name: u32,
    pub mount_mnt: u32,
    pub mount_parent: u32,
    pub mount_mountpoint: u32,
    pub vfsmount_root: u32,
    pub regs_si: u32,
    pub regs_dx: u32,
    pub regs_orig_ax: u32,
    pub _pad: u32,
    /// `struct mount.mnt_ns` and `struct mnt_namespace.seq` (0 for the anonymous namespace of
    /// a detached mount tree): where a dentry walk ended.
    pub mount_mnt_ns: u32,
    pub mnt_ns_seq: u32,
    /// `struct unix_sock.path` (the bound path of a unix socket).
    pub unix_sock_path: u32,
    /// `struct socket.sk`.
    pub socket_sk: u32,
    /// `struct msghdr.msg_name` / `msg_namelen`.
    pub msghdr_name: u32,
    pub msghdr_namelen: u32,
    // The mount of a dentry, for the inode hooks that get no `struct path` (xattrs): the
    // dentry's superblock (`dentry.d_sb`), its mounts (`super_block.s_mounts`), and the
    // caller's mount namespace (`task_struct.nsproxy`, `nsproxy.mnt_ns`). Up to 6.14 the
    // mounts are a list_head through `mount.mnt_instance`; from 6.15 `s_mounts` points at the
    // first mount and each at the next (`mount.mnt_next_for_sb`). See `sb_mounts_layout`.
    pub dentry_sb: u32,
    pub sb_mounts: u32,
    /// From a node of the list to its mount: `mnt_instance` (list), 0 (chain).
    pub mount_instance: u32,
    pub task_nsproxy: u32,
    pub nsproxy_mnt_ns: u32,
    /// From a node to the next node's pointer: 0 (list_head.next), `mnt_next_for_sb` (chain).
    pub mount_next: u32,
    /// [`sb_mounts_layout`]: how this kernel links a superblock's mounts.
    pub sb_mounts_layout: u32,
    // Exec resolution (issue 9 item 3, exec half).
    /// `struct dentry.d_hash` + `struct hlist_bl_node.pprev`: NULL when the dentry is unhashed,
    /// which with a parent other than itself is the kernel's `d_unlinked` (a deleted file, an
    /// O_TMPFILE never linked).
    pub dentry_hash_pprev: u32,
    // The new image's argv, checked after the exec (issue 9 item 5: argv as the kernel copied
    // it): `linux_binprm.{argc,filename,interp}`, `task_struct.mm` and
    // `mm_struct.{arg_start,start_stack}`.
    pub binprm_argc: u32,
    pub binprm_filename: u32,
    pub binprm_interp: u32,
    pub task_mm: u32,
    pub mm_arg_start: u32,
    pub mm_start_stack: u32,
    /// `mm_struct.exe_file`: inside execve, the new program (set before its mappings), to tell
    /// it from the interpreter its ELF header names (issue 9 item 8).
    pub mm_exe_file: u32,
}

/// How a kernel links the mounts of a superblock (`Offsets::sb_mounts_layout`).
pub mod sb_mounts_layout {
    /// Neither layout guard knows: xattr changes by watched tasks are unresolvable (denied).
    pub const UNKNOWN: u32 = 0;
    /// `s_mounts` is a list_head, the mounts linked through `mount.mnt_instance` (up to 6.14).
    pub const LIST: u32 = 1;
    /// `s_mounts` points at the first mount, each at the next by `mnt_next_for_sb` (6.15 on).
    pub const CHAIN: u32 = 2;
}

/// Sizes of the types that cross the kernel boundary, and so of the maps and ring buffer
/// records: a field that opens a hole (implicit padding) or changes the layout fails the build.
/// Every hole is an explicit `_pad` field, so `aya::Pod` copies no uninitialised bytes.
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<PathKey>() == 256);
    assert!(size_of::<RuleRef>() == 8);
    assert!(size_of::<NetRule>() == 40);
    assert!(size_of::<PolicyConf>() == 104);
    assert!(offset_of!(PolicyConf, userns) == 56);
    assert!(offset_of!(PolicyConf, exec_anonymous) == 88);
    assert!(offset_of!(PolicyConf, io_uring) == 96);
    assert!(offset_of!(PolicyConf, ptrace) == 28);
    assert!(offset_of!(PolicyConf, hold_deadline_ns) == 40);
    assert!(offset_of!(PolicyConf, name_hash) == 48);
    assert!(size_of::<SelKey>() == 16);
    assert!(size_of::<Selector>() == 40);
    assert!(size_of::<SelConf>() == 16);
    assert!(size_of::<PendingSel>() == 16);
    assert!(size_of::<Watched>() == 8);
    assert!(size_of::<Hold>() == 24);
    assert!(size_of::<Verdict>() == 24);
    assert!(size_of::<Approved>() == 48);
    assert!(size_of::<Event>() == 832);
    assert!(offset_of!(Event, rule) == 24);
    assert!(offset_of!(Event, aux) == 32);
    assert!(offset_of!(Event, seq) == 40);
    assert!(offset_of!(Event, hash) == 48);
    assert!(offset_of!(Event, time_ns) == 56);
    assert!(offset_of!(Event, object) == 64);
    assert!(offset_of!(Event, argv) == 320);
    assert!(size_of::<Argv>() == 600);
    assert!(offset_of!(Argv, hashes) == 520);
    assert!(offset_of!(Argv, kargc) == 596);
    assert!(size_of::<ArgvRule>() == 48);
    assert!(size_of::<Offsets>() == 160);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;

    macro_rules! pod {
        ($($t:ty),* $(,)?) => {$(
            // SAFETY: `#[repr(C)]`, only integer fields and arrays of them, no implicit padding
            // (see the size assertions above): every bit pattern is a valid value.
            unsafe impl aya::Pod for $t {}
        )*};
    }

    pod!(
        PathKey, RuleRef, NetRule, PolicyConf, Watched, Hold, Verdict, Offsets, ArgvRule, SelKey, Selector, SelConf,
        PendingSel
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLES: &[&[u8]] = &[b"", b"/", b"/usr/bin/curl", b"curl", b"--upload-file", &[0xff; 64], &[b'a'; 300]];

    #[test]
    fn bounded_hash_agrees_with_slice_hash() {
        for sample in SAMPLES {
            let mut buf = [0u8; 512];
            buf[..sample.len()].copy_from_slice(sample);
            assert_eq!(fnv1a_bounded(&buf, sample.len()), fnv1a(sample), "{sample:?}");
            // A length past the buffer hashes the whole buffer.
            assert_eq!(fnv1a_bounded(&buf, 10_000), fnv1a(&buf));
        }
    }

    #[test]
    fn cstr_hash_agrees_with_slice_hash() {
        for sample in SAMPLES.iter().filter(|s| s.len() < ARG_LEN && !s.contains(&0)) {
            let mut arg = [0u8; ARG_LEN];
            arg[..sample.len()].copy_from_slice(sample);
            assert_eq!(fnv1a_cstr(&arg), fnv1a(sample), "{sample:?}");
        }
        // No NUL: the whole buffer.
        assert_eq!(fnv1a_cstr(&[0xff; ARG_LEN]), fnv1a(&[0xff; ARG_LEN]));
    }

    #[test]
    fn object_bytes_mask_keeps_exactly_the_objects_bytes() {
        for len in 0..=40u64 {
            for i in 0..6u64 {
                let inside = len.saturating_sub(8 * i).min(8);
                let expected = if inside == 8 { u64::MAX } else { (1u64 << (inside * 8)) - 1 };
                assert_eq!(object_bytes_mask(len, i), expected, "len {len} word {i}");
            }
        }
        assert_eq!(object_bytes_mask(512, 63), u64::MAX);
        assert_eq!(object_bytes_mask(0, 63), 0);
    }

    #[test]
    #[allow(deprecated)]
    fn siphash_is_siphash_2_4() {
        extern crate std;
        use std::hash::Hasher;
        let (k0, k1) = (0x0706_0504_0302_0100u64, 0x0f0e_0d0c_0b0a_0908u64);
        for words in 0..5u64 {
            let bytes: std::vec::Vec<u8> = (0..words * 8).map(|b| b as u8).collect();
            let mut std_h = std::hash::SipHasher::new_with_keys(k0, k1);
            std_h.write(&bytes);
            let mut h = SipHash::new(k0, k1);
            for w in bytes.chunks(8) {
                h.write(u64::from_le_bytes(w.try_into().expect("8 bytes")));
            }
            assert_eq!(h.finish(words), std_h.finish(), "{words} words");
        }
        // The published vector for 8 bytes 00..07.
        let mut h = SipHash::new(k0, k1);
        h.write(0x0706_0504_0302_0100);
        assert_eq!(h.finish(1), 0x93f5_f579_9a93_2462);
    }

    #[test]
    fn fnv1a_known_values() {
        // Published FNV-1a 64 test vectors: the values must never change (keys in pinned maps).
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn map_names_match_the_kernel() {
        let maps = include_str!("../../guard-ebpf/src/maps.rs");
        let mut declared = 0;
        let mut lines = maps.lines().map(str::trim);
        while let Some(line) = lines.next() {
            if line != "#[map]" {
                continue;
            }
            let item = lines.next().unwrap_or_default();
            let name = item
                .strip_prefix("pub static ")
                .and_then(|rest| rest.split(':').next())
                .unwrap_or_else(|| panic!("unexpected item after #[map]: {item}"));
            assert!(map_name::ALL.contains(&name), "map {name} is missing from guard_common::map_name::ALL");
            declared += 1;
        }
        assert_eq!(declared, map_name::ALL.len(), "map_name::ALL names a map guard-ebpf does not declare");
        for name in map_name::PINNED {
            assert!(map_name::ALL.contains(name));
        }
    }
}
