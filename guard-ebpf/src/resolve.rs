//! The object of an operation: a path resolved into `Scratch::buf` (by `bpf_d_path`, or by
//! walking dentries where the kernel refuses `bpf_d_path`), a short label for operations
//! without one, and the path rule lookup.
use aya_ebpf::helpers::generated::{bpf_d_path, bpf_loop, bpf_probe_read_kernel};
use core::ffi::c_void;
use guard_common::{reason, Action, Fnv1a, RuleRef, Watched, EPERM, OBJECT_LEN, PATH_LEN};

use crate::arch::{QSTR_LEN, QSTR_NAME};
use crate::decide::{emit, Op, Outcome};
use crate::maps::{Scratch, BUF_LEN, PATH_RULES, WALK_END};
use crate::task::{off, offsets, read_kernel};

/// Components walked from a dentry up to the root; deeper paths are cut (and marked).
const MAX_DEPTH: u32 = 40;
/// Masks an index into `Scratch::buf`/the walk's first half (a bound the verifier can see).
const BUF_MASK: u64 = BUF_LEN as u64 - 1;
/// A dentry name's length is at most NAME_MAX (255): the mask keeps the read bounded.
const NAME_MASK: u32 = 0xff;
/// Bytes of a label (see [`label`]).
const MAX_LABEL: usize = 64;

/// "No rule matched". A plain value, not an Option: LLVM may fill the payload of a `None`
/// with whatever a register holds (even a pointer), which the verifier rightly rejects.
pub const NO_RULE: RuleRef = RuleRef { rule: 0, action: 0, _pad: [0; 3] };

/// Resolves `struct path *` with `bpf_d_path` into `s.buf`; sets `s.len` (without the NUL).
///
/// # Safety
/// `path` must point to a `struct path` the kernel gave this hook (bpf_d_path's own rule: the
/// hook must be on its allow list).
#[inline(always)]
pub unsafe fn d_path_into(s: &mut Scratch, path: *const u8) -> bool {
    // SAFETY: `s.buf` has BUF_LEN bytes; `path` is valid by the caller's contract.
    let n = unsafe { bpf_d_path(path as *mut _, s.buf.as_mut_ptr() as *mut _, BUF_LEN as u32) };
    if n <= 0 {
        return false;
    }
    s.len = (n - 1) as u64;
    s.truncated = 0;
    true
}

/// Resolves the `struct file *` at `file` (its `f_path`) with `bpf_d_path`.
///
/// # Safety
/// As [`d_path_into`]: `file` is a file the kernel gave this hook.
#[inline(always)]
pub unsafe fn file_path_into(s: &mut Scratch, file: *const u8) -> bool {
    // SAFETY: `f_path` is inside the file, by the offset the kernel's BTF gave.
    unsafe { d_path_into(s, file.add(off(&offsets().file_f_path))) }
}

/// Builds the absolute path of `dentry` in mount `vfsmnt` into `s.buf` by walking d_parent and
/// crossing mount points. Used where the kernel refuses `bpf_d_path` (the path_* hooks), and
/// for opens and execs, because it is the *global* path: it ignores the task's root (chroot)
/// and goes up to the top of the mount tree.
///
/// Always leaves a path (possibly a tail) in `s.buf` for the record, and says in
/// `s.truncated` whether it is the object's whole global path: 0 yes; 1 the path was longer
/// than the buffer or deeper than MAX_DEPTH (never to be matched on its tail); 2 the walk
/// ended at the root of a detached or internal mount, not of a mount namespace, or at a dentry
/// with no parent that is not its mount's root (a pseudo-file, a disconnected dentry), with
/// `s.mnt` the mount where it ended. See [`unresolved`].
///
/// # Safety
/// `vfsmnt` and `dentry` must be kernel pointers a hook received (every read of them goes
/// through bpf_probe_read_kernel, so a stale pointer yields a wrong path, not a fault).
#[inline(always)]
pub unsafe fn walk_into(s: &mut Scratch, vfsmnt: *const u8, dentry: *const u8) -> bool {
    let o = offsets();
    let sp = s as *mut Scratch;
    // SAFETY: `sp` comes from the exclusive `s`; the walk state is accessed volatile through
    // it on purpose (see `Scratch::pos`). Kernel memory is read with bpf_probe_read_kernel into
    // plain integers, and every write into `s.walk`/`s.buf` is bounded by a mask or length.
    unsafe {
        core::ptr::write_volatile(&mut (*sp).pos, WALK_END);
        core::ptr::write_volatile(&mut (*sp).dentry, dentry as u64);
        core::ptr::write_volatile(&mut (*sp).mnt, (vfsmnt as u64).wrapping_sub(off(&o.mount_mnt) as u64));
        // 1 until the walk reaches a root: a walk that runs out of depth is unresolvable.
        core::ptr::write_volatile(&mut (*sp).truncated, 1);
        s.walk[WALK_END as usize] = 0;
        for _ in 0..MAX_DEPTH {
            let d = core::ptr::read_volatile(&(*sp).dentry) as *const u8;
            let m = core::ptr::read_volatile(&(*sp).mnt) as *const u8;
            let mnt_root: u64 = read_kernel(m.add(off(&o.mount_mnt) + off(&o.vfsmount_root)));
            let parent: u64 = read_kernel(d.add(off(&o.dentry_parent)));
            if d as u64 == mnt_root {
                let mparent: u64 = read_kernel(m.add(off(&o.mount_parent)));
                if mparent == m as u64 || mparent == 0 {
                    // The top of the mount tree. It is a real namespace's root only if that
                    // namespace has a sequence number: a detached tree (open_tree with
                    // OPEN_TREE_CLONE, fsmount) has an anonymous namespace (seq 0), and the
                    // kernel's internal mounts (pipes, sockets, memfd) a pointer that does not
                    // read. A path there is not a global path: `truncated` = 2.
                    let ns: u64 = read_kernel(m.add(off(&o.mount_mnt_ns)));
                    let seq: u64 = read_kernel((ns as *const u8).add(off(&o.mnt_ns_seq)));
                    let state = if seq == 0 { 2 } else { 0 };
                    core::ptr::write_volatile(&mut (*sp).truncated, state);
                    break;
                }
                let mp: u64 = read_kernel(m.add(off(&o.mount_mountpoint)));
                core::ptr::write_volatile(&mut (*sp).dentry, mp);
                core::ptr::write_volatile(&mut (*sp).mnt, mparent);
                continue;
            }
            let qstr = d.add(off(&o.dentry_name));
            let len: u32 = read_kernel(qstr.add(QSTR_LEN));
            let name: u64 = read_kernel(qstr.add(QSTR_NAME));
            let len = (len & NAME_MASK) as u64;
            let pos = core::ptr::read_volatile(&(*sp).pos);
            if len + 1 > pos {
                core::ptr::write_volatile(&mut (*sp).truncated, 1);
                break;
            }
            let npos = (pos - len - 1) & BUF_MASK;
            bpf_probe_read_kernel(
                s.walk.as_mut_ptr().add(npos as usize + 1) as *mut c_void,
                len as u32,
                name as *const c_void,
            );
            s.walk[npos as usize] = b'/';
            core::ptr::write_volatile(&mut (*sp).pos, npos);
            if parent == d as u64 {
                // A dentry that is its own parent but not its mount's root: a pseudo-file of
                // an internal mount (a pipe, a socket, a memfd: the name just written is all
                // it has), or a disconnected dentry (open_by_handle_at) or one moved out of a
                // bind mount's subtree. None has a global path: `truncated` = 2, `s.mnt`
                // the file's own mount.
                core::ptr::write_volatile(&mut (*sp).truncated, 2);
                break;
            }
            core::ptr::write_volatile(&mut (*sp).dentry, parent);
        }
        let pos = core::ptr::read_volatile(&(*sp).pos) & BUF_MASK;
        if pos == WALK_END {
            s.buf[0] = b'/';
            s.buf[1] = 0;
            s.len = 1;
            return true;
        }
        bpf_probe_read_kernel(
            s.buf.as_mut_ptr() as *mut c_void,
            BUF_LEN as u32,
            s.walk.as_ptr().add(pos as usize) as *const c_void,
        );
        s.len = WALK_END - pos;
    }
    true
}

/// Walks a `struct path *` (its mount and dentry).
///
/// # Safety
/// As [`walk_into`]: `path` is a kernel pointer a hook received.
#[inline(always)]
pub unsafe fn walk_path_into(s: &mut Scratch, path: *const u8) -> bool {
    let o = offsets();
    // SAFETY: plain integers read through bpf_probe_read_kernel; `walk_into`'s contract is
    // the caller's.
    unsafe {
        let mnt: u64 = read_kernel(path.add(off(&o.path_mnt)));
        let dentry: u64 = read_kernel(path.add(off(&o.path_dentry)));
        walk_into(s, mnt as *const u8, dentry as *const u8)
    }
}

/// Walks the dentry `dentry` in the mount of the `struct path *` at `dir` (the path_* hooks get
/// the parent directory's path and the dentry of the entry).
///
/// # Safety
/// As [`walk_into`].
#[inline(always)]
pub unsafe fn walk_entry_into(s: &mut Scratch, dir: *const u8, dentry: *const u8) -> bool {
    // SAFETY: a plain integer read through bpf_probe_read_kernel; the rest is the caller's.
    unsafe {
        let mnt: u64 = read_kernel(dir.add(off(&offsets().path_mnt)));
        walk_into(s, mnt as *const u8, dentry)
    }
}

/// Fills `s.key` for a longest-prefix lookup of the path in `s.buf` (PATH_RULES and
/// GUARD_PATHS share the key's shape).
#[inline(always)]
pub fn fill_key(s: &mut Scratch, policy: u8, class: u8) {
    s.key.prefix_len = (OBJECT_LEN * 8) as u32;
    s.key.data.policy = policy;
    s.key.data.class = class;
    // SAFETY: copies PATH_LEN bytes between two buffers of this Scratch that are both at least
    // that long.
    unsafe {
        bpf_probe_read_kernel(
            s.key.data.path.as_mut_ptr() as *mut c_void,
            PATH_LEN as u32,
            s.buf.as_ptr() as *const c_void,
        );
    }
}

/// Looks up the first rule matching `s.buf` for `class` in the watched tree's policy.
#[inline(always)]
pub fn lookup_path(s: &mut Scratch, policy: u8, class: u8) -> RuleRef {
    fill_key(s, policy, class);
    match PATH_RULES.get(&s.key) {
        Some(r) => RuleRef { rule: r.rule, action: r.action, _pad: [0; 3] },
        None => NO_RULE,
    }
}

/// Fills `s.buf` with a short label for records of operations without an object.
#[inline(always)]
pub fn label(s: &mut Scratch, text: &[u8]) {
    let mut i = 0;
    while i < text.len() && i < MAX_LABEL {
        s.buf[i] = text[i];
        i += 1;
    }
    s.buf[i & BUF_MASK as usize] = 0;
    s.len = i as u64;
    s.truncated = 0;
}

/// What d_path appends to the path of a file with no name left (unlinked, or a memfd).
const DELETED: &[u8; 10] = b" (deleted)";

/// Whether the path `bpf_d_path` left in `s.buf` is that of a file with no name left: d_path
/// appends " (deleted)" to an unlinked dentry and to every pseudo-file of an internal mount
/// (memfds). Used only by [`file_object`] on files whose walk ended on an internal mount, where
/// the kernel builds that name itself. Programs are not decided on this spelling: see
/// [`program_object`].
#[inline(always)]
pub fn anonymous(s: &Scratch) -> bool {
    let len = s.len as usize;
    if len < DELETED.len() || len >= BUF_LEN {
        return false;
    }
    let start = len - DELETED.len();
    let mut i = 0;
    while i < DELETED.len() {
        if s.buf[(start + i) & (BUF_LEN - 1)] != DELETED[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// `MNT_NS_INTERNAL` (fs/mount.h): the `mnt_ns` of the kernel's internal mounts (kern_mount:
/// pipefs, sockfs, anon_inodefs, and shm, where memfds live), `ERR_PTR(-EINVAL)`.
pub const MNT_NS_INTERNAL: u64 = -22i64 as u64;

/// What the file of an exec or of an executable mapping is, by [`program_object`].
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Program {
    /// Its whole global path is in `s.buf`: the exec rules decide.
    Path,
    /// It has no name left (a memfd, a deleted or never-linked file): the `exec_anonymous`
    /// rule decides. `s.buf` holds the name it had, followed by " (deleted)" as d_path writes it.
    Anonymous,
    /// Its global path could not be built (longer than the buffer, deeper than the walk, on a
    /// detached mount): denied. `s.buf` holds what the walk got, marked truncated.
    Unresolved,
}

/// Resolves the program `file` (the file of an exec, or one being mapped executable) to its
/// global path with the dentry walk, as opens are resolved: a chroot, or a fexecve of a
/// descriptor opened in one, does not change what the program is called, so a rule on the real
/// path holds and a rule on `/usr/bin/X` does not match `<jail>/usr/bin/X`. (`bpf_d_path`
/// would give the path relative to the task's root.)
///
/// A program with no name left is recognised on the object, not on its spelling:
/// - a deleted or never-linked (O_TMPFILE) file by the kernel's own `d_unlinked` test: its
///   dentry is unhashed and is not its own parent (a root dentry, or the pseudo-dentry of a
///   memfd, is its own parent, and is never hashed);
/// - a memfd by where the walk ends: on an internal mount (`MNT_NS_INTERNAL`), where no path
///   can name it.
///
/// So a file really named "x (deleted)" is an ordinary program, decided by its path.
///
/// # Safety
/// `file` must be a `struct file *` the kernel gave this hook (read through
/// bpf_probe_read_kernel only).
#[inline(always)]
pub unsafe fn program_object(s: &mut Scratch, file: *const u8) -> Program {
    let o = offsets();
    // SAFETY: `f_path` is inside the file by the BTF offset; every read below goes through
    // bpf_probe_read_kernel into plain integers.
    let unlinked = unsafe {
        let fpath = file.add(off(&o.file_f_path));
        let dentry: u64 = read_kernel(fpath.add(off(&o.path_dentry)));
        let pprev: u64 = read_kernel((dentry as *const u8).add(off(&o.dentry_hash_pprev)));
        let parent: u64 = read_kernel((dentry as *const u8).add(off(&o.dentry_parent)));
        walk_path_into(s, fpath);
        dentry != 0 && pprev == 0 && parent != dentry
    };
    let internal = s.truncated == 2 && {
        // SAFETY: `s.mnt` is the `struct mount *` where the walk ended; read through
        // bpf_probe_read_kernel.
        let ns: u64 = unsafe { read_kernel((s.mnt as *const u8).add(off(&o.mount_mnt_ns))) };
        ns == MNT_NS_INTERNAL
    };
    if unlinked || internal {
        // The name a memfd has (`memfd:x`) is all of it; a deleted file's path may still be a
        // tail (marked truncated).
        if internal {
            s.truncated = 0;
        }
        let len = s.len;
        if len + (DELETED.len() as u64) < BUF_LEN as u64 {
            let mut i = 0;
            while i < DELETED.len() {
                s.buf[(len as usize + i) & (BUF_LEN - 1)] = DELETED[i];
                i += 1;
            }
            s.buf[(len as usize + DELETED.len()) & (BUF_LEN - 1)] = 0;
            s.len = len + DELETED.len() as u64;
        }
        return Program::Anonymous;
    }
    if s.truncated != 0 {
        return Program::Unresolved;
    }
    Program::Path
}

/// Whether the last walk failed to give the object's whole global path (see [`walk_into`]).
#[inline(always)]
pub fn unresolved(s: &Scratch) -> bool {
    s.truncated != 0
}

/// Denies an operation whose object could not be resolved, and records it as `unresolvable`:
/// a watched task never gets an allow because a path was too long, too deep, on a detached
/// mount, or because `bpf_d_path` failed. Whatever the walk left in `s.buf` is the record's
/// object (at worst a tail, marked truncated).
#[inline(always)]
pub fn unresolvable(s: &mut Scratch, w: &Watched, op: &Op) -> i32 {
    if s.truncated == 0 {
        s.truncated = 1;
    }
    emit(s, w, op, Outcome::decision(Action::Deny as u8, reason::UNRESOLVABLE, 0, 0));
    -EPERM
}

/// Resolves the object of an open or exec (`file`, a `struct file *` the kernel gave the hook)
/// to its global path. Returns false when it cannot: then the caller denies with
/// [`unresolvable`].
///
/// The dentry walk gives the global path even for a task in a chroot (bpf_d_path would give
/// the chroot-relative one). Where the walk ends outside every mount namespace the object is
/// either a pseudo-file without a path (a pipe or socket reopened through /proc/self/fd:
/// bpf_d_path names it `pipe:[N]`, which no path rule can name, so the rules and default
/// decide as before) or a file reached through a detached mount or an internal filesystem
/// (bpf_d_path gives something starting with '/', which would be matched as if it were a
/// global path): unresolvable.
///
/// # Safety
/// As [`d_path_into`]: `file` is a file the kernel gave this hook, and the hook is on
/// bpf_d_path's allow list.
#[inline(always)]
pub unsafe fn file_object(s: &mut Scratch, file: *const u8) -> bool {
    // SAFETY: `f_path` is inside the file, by the offset the kernel's BTF gave; the walk reads
    // through bpf_probe_read_kernel only; bpf_d_path's contract is the caller's.
    unsafe {
        walk_path_into(s, file.add(off(&offsets().file_f_path)));
        if s.truncated != 2 {
            return s.truncated == 0;
        }
        if !file_path_into(s, file) {
            s.truncated = 2;
            return false;
        }
    }
    // A file with no name left (a memfd, reopened through /proc/self/fd, as an interpreter does
    // for a script run from a memfd) is its own anonymous object, not a name of some other one:
    // decided by its d_path name ("/memfd:x (deleted)", which only a "/" rule matches), as a
    // pipe is. Running one is decided by `exec_anonymous` at bprm_check_security.
    if s.buf[0] == b'/' && !anonymous(s) {
        s.truncated = 2;
        return false;
    }
    true
}

/// `fnv1a` of the whole path in `s.buf` and of its last component, in one pass (eight bytes
/// per `bpf_loop` iteration: see `argv::match_argv_rules` for why callbacks).
#[inline(always)]
pub fn path_hashes(s: &Scratch) -> (u64, u64) {
    let mut walk = NameWalk { full: Fnv1a::NEW, name: Fnv1a::NEW, s: s as *const Scratch, len: s.len };
    // SAFETY: `name_chunk` is a callback of the shape bpf_loop expects, and `walk` lives on
    // this stack for the whole call.
    unsafe {
        bpf_loop(
            (BUF_LEN / 8) as u32,
            name_chunk as *const () as *mut c_void,
            &mut walk as *mut NameWalk as *mut c_void,
            0,
        )
    };
    (walk.full.finish(), walk.name.finish())
}

/// `path_hashes`' state, on the program's stack for the `bpf_loop` callback.
#[repr(C)]
struct NameWalk {
    full: Fnv1a,
    name: Fnv1a,
    s: *const Scratch,
    len: u64,
}

/// Hashes bytes 8i..8i+8 of the path into both hashes; 1 ends the loop at its end.
extern "C" fn name_chunk(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `NameWalk` `path_hashes` passed to bpf_loop, on its stack.
    let walk = unsafe { &mut *(ctx as *mut NameWalk) };
    if i >= (BUF_LEN / 8) as u64 {
        return 1;
    }
    for b in 0..8u64 {
        let at = 8 * i + b;
        if at >= walk.len {
            return 1;
        }
        // SAFETY: `s` is the scratch map value `path_hashes` was given; at < 8 * (BUF_LEN / 8).
        let byte = unsafe { *(*walk.s).buf.as_ptr().add(at as usize) };
        walk.full = walk.full.write(byte);
        walk.name = if byte == b'/' { Fnv1a::NEW } else { walk.name.write(byte) };
    }
    0
}
