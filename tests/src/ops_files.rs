//! Workload ops of the file escape tests (`tests/src/escape_files.rs`): the ways an agent
//! would try to reach a protected object by another name, mount or root.

use crate::ops::{check, cstr};
use nix::errno::Errno;

/// The ops this module runs (dispatched from `ops::run`).
pub const OPS: &[&str] = &[
    "link",
    "symlink",
    "exchange",
    "chmod",
    "chown",
    "chroot-open",
    "tree-open",
    "setxattr",
    "fsetxattr",
    "removexattr",
    "setacl",
];

/// A POSIX ACL in its xattr form (`system.posix_acl_access`): version 2, then (tag, perm, id)
/// entries: the owner rw, user 65534 r, the group r, the mask r, others nothing.
fn acl_blob() -> Vec<u8> {
    let mut b = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in
        [(0x01u16, 6u16, u32::MAX), (0x02, 4, 65534), (0x04, 4, u32::MAX), (0x10, 4, u32::MAX), (0x20, 0, u32::MAX)]
    {
        b.extend(tag.to_le_bytes());
        b.extend(perm.to_le_bytes());
        b.extend(id.to_le_bytes());
    }
    b
}

/// Opens `path` read-only relative to `dir` and closes it.
fn open_at(dir: i32, path: &str) -> Result<(), Errno> {
    // SAFETY: the path is a NUL-terminated CString that lives until the call returns.
    let fd = unsafe { libc::openat(dir, cstr(path).as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: fd was just returned by openat and is closed once, here.
    unsafe { libc::close(fd) };
    Ok(())
}

/// Every unsafe block below: the pointers are NUL-terminated CStrings (or a C string literal)
/// that live until the call returns, and raw syscalls get the argument types the kernel
/// expects.
pub fn run(args: &[String]) -> Result<(), Errno> {
    let a = |i: usize| cstr(args.get(i).map(String::as_str).unwrap_or(""));
    let (c1, c2) = (a(1), a(2));
    let (p1, p2) = (c1.as_ptr(), c2.as_ptr());
    match args[0].as_str() {
        // SAFETY: see above.
        "link" => check(unsafe { libc::link(p1, p2) } as i64),
        // SAFETY: see above.
        "symlink" => check(unsafe { libc::symlink(p1, p2) } as i64),
        // SAFETY: see above.
        "exchange" => check(unsafe {
            libc::syscall(libc::SYS_renameat2, libc::AT_FDCWD, p1, libc::AT_FDCWD, p2, libc::RENAME_EXCHANGE)
        }),
        // SAFETY: see above.
        "chmod" => check(unsafe { libc::chmod(p1, 0o777) } as i64),
        // SAFETY: see above.
        "chown" => check(unsafe { libc::chown(p1, 65534, 65534) } as i64),
        // chroot(DIR), then open PATH (a name relative to the new root).
        "chroot-open" => {
            // SAFETY: see above.
            check(unsafe { libc::chroot(p1) } as i64)?;
            // SAFETY: see above.
            check(unsafe { libc::chdir(c"/".as_ptr()) } as i64)?;
            open_at(libc::AT_FDCWD, args.get(2).map(String::as_str).unwrap_or(""))
        }
        // open_tree(DIR, OPEN_TREE_CLONE): a detached copy of the mount at DIR, then openat
        // NAME through it (its d_path would be "/NAME").
        "tree-open" => {
            const OPEN_TREE_CLONE: libc::c_long = 1;
            // SAFETY: see above.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_open_tree,
                    libc::AT_FDCWD,
                    p1,
                    OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_long,
                )
            };
            check(fd)?;
            let r = open_at(fd as i32, args.get(2).map(String::as_str).unwrap_or(""));
            // SAFETY: fd was returned by open_tree and is closed once, here.
            unsafe { libc::close(fd as i32) };
            r
        }
        // setxattr PATH NAME VALUE
        "setxattr" => {
            let value = args.get(3).map(String::as_str).unwrap_or("");
            // SAFETY: see above; value is a live slice of its length.
            check(unsafe { libc::setxattr(p1, p2, value.as_ptr() as *const libc::c_void, value.len(), 0) } as i64)
        }
        // fsetxattr through a descriptor opened read-only: PATH NAME VALUE
        "fsetxattr" => {
            let value = args.get(3).map(String::as_str).unwrap_or("");
            // SAFETY: see above.
            let fd = unsafe { libc::open(p1, libc::O_RDONLY | libc::O_CLOEXEC) };
            check(fd as i64)?;
            // SAFETY: fd was just opened; value is a live slice of its length.
            let r =
                check(unsafe { libc::fsetxattr(fd, p2, value.as_ptr() as *const libc::c_void, value.len(), 0) } as i64);
            // SAFETY: fd was returned by open and is closed once, here.
            unsafe { libc::close(fd) };
            r
        }
        // SAFETY: see above.
        "removexattr" => check(unsafe { libc::removexattr(p1, p2) } as i64),
        // setacl PATH: a POSIX access ACL that lets user 65534 read the file.
        "setacl" => {
            let acl = acl_blob();
            // SAFETY: see above; acl is a live buffer of its length.
            check(unsafe {
                libc::setxattr(
                    p1,
                    c"system.posix_acl_access".as_ptr(),
                    acl.as_ptr() as *const libc::c_void,
                    acl.len(),
                    0,
                )
            } as i64)
        }
        _ => Err(Errno::EINVAL),
    }
}
