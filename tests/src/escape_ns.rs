//! Escape suite, issue 9 items 3 and 8: namespaces and mounts cannot change what a path means,
//! and exec rules mean programs. Each test tries the escape the way an agent would, in at
//! least two variants, and asserts both that the effect did not happen (what the workload
//! could see afterwards) and that a record says what was refused and why.

use crate::harness::{self, Agent, Skip};
use crate::{has, is};
use anyhow::{ensure, Context, Result};
use guard_api::{AuditRecord, Decision, Hook, Reason};

pub const TESTS: &[crate::Test] = &[
    ("escape_ns_user_namespaces_refused_unless_allowed", userns),
    ("escape_ns_chroot_refused", chroot),
    ("escape_ns_unmounts_lazy_or_not_refused", umount),
    ("escape_ns_bind_mounts_and_remounts_refused", bind_mounts),
    ("escape_ns_pivot_root_refused", pivot_root),
    ("escape_ns_memfd_exec_is_a_policy_decision", memfd_exec),
    ("escape_ns_deleted_binary_exec_refused", deleted_exec),
    ("escape_ns_loader_cannot_run_an_exec_denied_program", loader),
    ("escape_ns_exec_rule_on_a_symlink_protects_the_target", symlink_rule),
    ("escape_ns_chroot_does_not_rename_a_denied_program", chroot_deny),
    ("escape_ns_chroot_does_not_borrow_an_allow_rule", chroot_allow),
    ("escape_ns_loader_in_a_chroot_cannot_run_an_exec_denied_program", chroot_loader),
    ("escape_ns_a_program_named_deleted_is_decided_by_its_path", named_deleted),
    ("escape_ns_an_elf_interpreter_is_decided_as_a_program", elf_interpreter),
];

/// A policy that allows everything by default: the operations tested here must be refused
/// anyway (safe defaults), not because the default denies.
const OPEN_POLICY: &str = "default = \"allow\"\n";

/// A safe-default refusal of `hook` is recorded.
fn refused(r: &[AuditRecord], hook: Hook) -> bool {
    has(r, |x| x.hook == Some(hook) && x.decision == Some(Decision::Deny) && x.reason == Some(Reason::SafeDefault))
}

fn busybox() -> String {
    std::fs::canonicalize("/bin/sh").map(|p| p.display().to_string()).unwrap_or_else(|_| "/bin/busybox".into())
}

/// A tmpfs mounted (by the test, outside every tree) at `at`, unmounted when dropped.
struct Tmpfs(&'static str);

impl Tmpfs {
    fn mount(at: &'static str) -> Result<Self> {
        std::fs::create_dir_all(at)?;
        nix::mount::umount2(at, nix::mount::MntFlags::MNT_DETACH).ok();
        nix::mount::mount(Some("none"), at, Some("tmpfs"), nix::mount::MsFlags::empty(), None::<&str>)
            .with_context(|| format!("mounting a tmpfs on {at}"))?;
        Ok(Tmpfs(at))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        nix::mount::umount2(self.0, nix::mount::MntFlags::MNT_DETACH).ok();
    }
}

fn mounted(at: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.lines().any(|l| l.split_whitespace().nth(4) == Some(at)))
        .unwrap_or(false)
}

/// Debian can turn unprivileged user namespaces off before any LSM runs; the test needs them
/// on, so that the refusal seen is guard's.
fn enable_unprivileged_userns() {
    std::fs::write("/proc/sys/kernel/unprivileged_userns_clone", "1").ok();
    std::fs::write("/proc/sys/user/max_user_namespaces", "1000").ok();
}

/// Unprivileged (uid 1000) `unshare(CLONE_NEWUSER)` and `clone(CLONE_NEWUSER)`, and root's
/// unshare: refused, still in the initial user namespace (uid_map unchanged), recorded at
/// userns_create as safe_default. With a `userns = true` allow rule, the same unshare works
/// (and the uid_map shows the new namespace), recorded with the rule.
fn userns() -> Result<()> {
    enable_unprivileged_userns();
    let init = "uid_map=0 0 4294967295";
    let a = Agent::start(
        "ns-userns",
        OPEN_POLICY,
        "guard-e2e do userns-unshare 1000; guard-e2e do userns-clone 1000; guard-e2e do userns-unshare -",
    )?;
    for v in ["unshare as uid 1000", "clone as uid 1000", "unshare as root"] {
        let r = a.result()?;
        ensure!(r.starts_with("RESULT errno=1 ") && r.ends_with(init), "{v}: a user namespace was made: {r}");
    }
    let out = a.finish()?;
    let r = &out.records()?;
    ensure!(
        has(r, |x| x.hook == Some(Hook::UsernsCreate)
            && x.decision == Some(Decision::Deny)
            && x.reason == Some(Reason::SafeDefault)
            && x.uid == Some(1000)),
        "no safe_default record of uid 1000's user namespace: {r:#?}"
    );
    ensure!(
        has(r, |x| refused(std::slice::from_ref(x), Hook::UsernsCreate) && x.uid == Some(0)),
        "no record of root's user namespace"
    );

    let allow = "[[rule]]\nname = \"userns-ok\"\naction = \"allow\"\nuserns = true\n";
    let a = Agent::start("ns-userns-allow", allow, "guard-e2e do userns-unshare 1000")?;
    let r = a.result()?;
    ensure!(r.starts_with("RESULT ok ") && !r.ends_with(init), "an allowed user namespace: {r}");
    let out = a.finish()?;
    let r = &out.records()?;
    ensure!(
        has(r, |x| x.hook == Some(Hook::UsernsCreate)
            && is(&x.rule, "userns-ok")
            && x.decision == Some(Decision::Allow)),
        "no record of the allowed user namespace: {r:#?}"
    );
    Ok(())
}

/// Root `chroot(dir)` and `chdir(dir); chroot(".")`: refused, the old root still visible,
/// recorded at path_chroot with the new root as the object.
fn chroot() -> Result<()> {
    harness::write_files(&["/tmp/t/ns-jail/secret", "/tmp/t/ns-probe"])?;
    let a = Agent::start(
        "ns-chroot",
        OPEN_POLICY,
        "guard-e2e do chroot /tmp/t/ns-jail /tmp/t/ns-probe; guard-e2e do chroot-dot /tmp/t/ns-jail /tmp/t/ns-probe",
    )?;
    for v in ["chroot", "chroot ."] {
        let r = a.result()?;
        ensure!(r.starts_with("RESULT errno=1 ") && r.ends_with("probe=visible"), "{v}: {r}");
    }
    let out = a.finish()?;
    let r = &out.records()?;
    ensure!(
        has(r, |x| refused(std::slice::from_ref(x), Hook::PathChroot) && is(&x.object, "/tmp/t/ns-jail")),
        "no safe_default record of the chroot naming /tmp/t/ns-jail: {r:#?}"
    );
    ensure!(
        r.iter().filter(|x| refused(std::slice::from_ref(x), Hook::PathChroot)).count() >= 2,
        "one chroot unrecorded"
    );
    Ok(())
}

/// A tmpfs mounted from outside the tree; the tree tries `umount -l` (MNT_DETACH) and a plain
/// umount: refused, the mount still there, recorded at sb_umount.
fn umount() -> Result<()> {
    let m = Tmpfs::mount("/tmp/t/ns-m")?;
    std::fs::write("/tmp/t/ns-m/marker", b"on the mount\n")?;
    let a = Agent::start(
        "ns-umount",
        OPEN_POLICY,
        "guard-e2e do umount2 /tmp/t/ns-m 2 /tmp/t/ns-m/marker; guard-e2e do umount2 /tmp/t/ns-m 0 /tmp/t/ns-m/marker",
    )?;
    for v in ["umount -l", "umount"] {
        let r = a.result()?;
        ensure!(r.starts_with("RESULT errno=1 ") && r.ends_with("probe=visible"), "{v}: {r}");
    }
    let out = a.finish()?;
    ensure!(mounted(m.0), "the mount is gone");
    let r = &out.records()?;
    ensure!(
        r.iter().filter(|x| refused(std::slice::from_ref(x), Hook::SbUmount) && is(&x.object, "/tmp/t/ns-m")).count()
            >= 2,
        "not two safe_default sb_umount records naming /tmp/t/ns-m: {r:#?}"
    );
    Ok(())
}

/// Bind mounts (plain and recursive) of a directory onto another, and a read-only remount of
/// a mount: refused, nothing visible at the target, the mount still writable, recorded at
/// sb_mount.
fn bind_mounts() -> Result<()> {
    harness::write_files(&["/tmp/t/ns-secret/a"])?;
    std::fs::create_dir_all("/tmp/t/ns-bind")?;
    let _m = Tmpfs::mount("/tmp/t/ns-m")?;
    let a = Agent::start(
        "ns-bind",
        OPEN_POLICY,
        "guard-e2e do mount-bind /tmp/t/ns-secret /tmp/t/ns-bind plain /tmp/t/ns-bind/a; \
         guard-e2e do mount-bind /tmp/t/ns-secret /tmp/t/ns-bind rec /tmp/t/ns-bind/a; \
         guard-e2e do remount-ro /tmp/t/ns-m",
    )?;
    for v in ["bind", "rbind"] {
        let r = a.result()?;
        ensure!(r.starts_with("RESULT errno=1 ") && r.ends_with("probe=gone"), "{v}: {r}");
    }
    let r = a.result()?;
    ensure!(r.starts_with("RESULT errno=1 ") && r.ends_with("writable"), "remount: {r}");
    let out = a.finish()?;
    ensure!(!mounted("/tmp/t/ns-bind"), "a bind mount is in place");
    let r = &out.records()?;
    ensure!(
        r.iter().filter(|x| refused(std::slice::from_ref(x), Hook::SbMount) && is(&x.object, "/tmp/t/ns-bind")).count()
            >= 2,
        "not two safe_default sb_mount records of the bind mounts: {r:#?}"
    );
    ensure!(
        has(r, |x| refused(std::slice::from_ref(x), Hook::SbMount) && is(&x.object, "/tmp/t/ns-m")),
        "no safe_default record of the remount: {r:#?}"
    );
    Ok(())
}

/// In a new mount namespace, `pivot_root(new, new/old)` and `pivot_root(".", ".")`: refused
/// (EPERM from guard, before the kernel's own checks), the old root still visible, recorded at
/// sb_pivotroot.
fn pivot_root() -> Result<()> {
    harness::write_files(&["/tmp/t/ns-probe"])?;
    let _m = Tmpfs::mount("/tmp/t/ns-m")?;
    std::fs::create_dir_all("/tmp/t/ns-m/old")?;
    let a = Agent::start(
        "ns-pivot",
        OPEN_POLICY,
        "guard-e2e do pivot-root /tmp/t/ns-m /tmp/t/ns-m/old /tmp/t/ns-probe; \
         guard-e2e do pivot-root-dot /tmp/t/ns-m /tmp/t/ns-probe",
    )?;
    for v in ["pivot_root(new, old)", "pivot_root(., .)"] {
        let r = a.result()?;
        ensure!(r.starts_with("RESULT errno=1 ") && r.ends_with("probe=visible"), "{v}: {r}");
    }
    let out = a.finish()?;
    let r = &out.records()?;
    ensure!(
        r.iter().filter(|x| refused(std::slice::from_ref(x), Hook::SbPivotroot)).count() >= 2,
        "not two safe_default sb_pivotroot records: {r:#?}"
    );
    Ok(())
}

/// A copy of busybox in a memfd, run by fexecve and by execve("/proc/self/fd/N"): refused by
/// default (safe_default at bprm_check_security, the object the memfd); run when the policy
/// has an `exec_anonymous = true` allow rule.
fn memfd_exec() -> Result<()> {
    let bb = busybox();
    let script = format!(
        "guard-e2e do memfd-exec {bb} touch /tmp/t/ns-memfd-ran; guard-e2e do memfd-exec-proc {bb} touch /tmp/t/ns-memfd-ran"
    );
    std::fs::remove_file("/tmp/t/ns-memfd-ran").ok();
    let a = Agent::start("ns-memfd", OPEN_POLICY, &script)?;
    for v in ["fexecve", "execve /proc/self/fd"] {
        let r = a.result()?;
        ensure!(r.starts_with("RESULT errno=1 "), "{v} of a memfd: {r}");
    }
    let out = a.finish()?;
    ensure!(!std::path::Path::new("/tmp/t/ns-memfd-ran").exists(), "the memfd program ran");
    let r = &out.records()?;
    ensure!(
        r.iter()
            .filter(|x| refused(std::slice::from_ref(x), Hook::BprmCheckSecurity)
                && x.object.as_deref().is_some_and(|o| o.starts_with("/memfd:guard-anon")))
            .count()
            >= 2,
        "not two safe_default exec records of the memfd: {r:#?}"
    );

    let allow = "[[rule]]\nname = \"anon-ok\"\naction = \"allow\"\nexec_anonymous = true\n";
    let a = Agent::start("ns-memfd-allow", allow, &script)?;
    for v in ["fexecve", "execve /proc/self/fd"] {
        let r = a.result()?;
        ensure!(r.starts_with("RESULT ok "), "{v} of a memfd under an allow rule: {r}");
    }
    let out = a.finish()?;
    ensure!(std::path::Path::new("/tmp/t/ns-memfd-ran").exists(), "the allowed memfd program did not run");
    let r = &out.records()?;
    ensure!(
        has(r, |x| x.hook == Some(Hook::BprmCheckSecurity)
            && is(&x.rule, "anon-ok")
            && x.decision == Some(Decision::Allow)),
        "no record of the allowed memfd exec: {r:#?}"
    );
    Ok(())
}

/// A binary opened, unlinked, then run by fexecve, or by execve("/proc/self/fd/N"): refused
/// (safe_default), the object its old path marked "(deleted)".
fn deleted_exec() -> Result<()> {
    let bb = busybox();
    std::fs::remove_file("/tmp/t/ns-deleted-ran").ok();
    let a = Agent::start(
        "ns-deleted",
        OPEN_POLICY,
        &format!(
            "guard-e2e do deleted-exec {bb} /tmp/t/bin/ns-del fd touch /tmp/t/ns-deleted-ran; \
             guard-e2e do deleted-exec {bb} /tmp/t/bin/ns-del2 proc touch /tmp/t/ns-deleted-ran"
        ),
    )?;
    for v in ["fexecve of a deleted file", "execve /proc/self/fd of a deleted file"] {
        let r = a.result()?;
        ensure!(r.starts_with("RESULT errno=1 "), "{v}: {r}");
    }
    let out = a.finish()?;
    ensure!(!std::path::Path::new("/tmp/t/ns-deleted-ran").exists(), "the deleted program ran");
    let r = &out.records()?;
    for obj in ["/tmp/t/bin/ns-del (deleted)", "/tmp/t/bin/ns-del2 (deleted)"] {
        ensure!(
            has(r, |x| refused(std::slice::from_ref(x), Hook::BprmCheckSecurity) && is(&x.object, obj)),
            "no safe_default record of the deleted binary {obj}: {r:#?}"
        );
    }
    Ok(())
}

/// The ELF interpreter named by a binary (PT_INTERP), if it is dynamic.
fn interpreter(bin: &str) -> Option<String> {
    let data = std::fs::read(bin).ok()?;
    let u16_at = |o: usize| Some(u16::from_le_bytes(data.get(o..o + 2)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(data.get(o..o + 8)?.try_into().ok()?));
    let (phoff, phentsize, phnum) = (u64_at(0x20)? as usize, u16_at(0x36)? as usize, u16_at(0x38)? as usize);
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32::from_le_bytes(data.get(ph..ph + 4)?.try_into().ok()?) == 3 {
            let (off, len) = (u64_at(ph + 8)? as usize, u64_at(ph + 0x20)? as usize);
            let s = data.get(off..off + len)?;
            return Some(String::from_utf8_lossy(s).trim_end_matches('\0').to_string());
        }
    }
    None
}

/// `ld.so /tmp/t/bin/X` where X is exec-denied, directly and through a symlink: the loader
/// runs but cannot map X executable (refused at mmap_file with X's exec rule), so X never
/// runs; a copy with no rule runs the same way (the control).
fn loader() -> Result<()> {
    let me = std::env::current_exe()?.display().to_string();
    let Some(ld) = interpreter(&me).filter(|l| std::path::Path::new(l).exists()) else {
        return Err(Skip("guard-e2e is not dynamically linked here: no loader to run".into()).into());
    };
    std::fs::copy(&me, "/tmp/t/bin/ns-dyn-denied")?;
    std::fs::copy(&me, "/tmp/t/bin/ns-dyn-ok")?;
    std::fs::remove_file("/tmp/t/bin/ns-dyn-link").ok();
    std::os::unix::fs::symlink("/tmp/t/bin/ns-dyn-denied", "/tmp/t/bin/ns-dyn-link")?;
    for m in ["/tmp/t/ns-ld-1", "/tmp/t/ns-ld-2", "/tmp/t/ns-ld-ok"] {
        std::fs::remove_file(m).ok();
    }
    let policy = "[[rule]]\nname = \"no-dyn\"\naction = \"deny\"\nexec = { path = \"/tmp/t/bin/ns-dyn-denied\" }\n";
    let a = Agent::start(
        "ns-loader",
        policy,
        &format!(
            "guard-e2e do run-status {ld} /tmp/t/bin/ns-dyn-denied do marker /tmp/t/ns-ld-1; \
             guard-e2e do run-status {ld} /tmp/t/bin/ns-dyn-link do marker /tmp/t/ns-ld-2; \
             guard-e2e do run-status {ld} /tmp/t/bin/ns-dyn-ok do marker /tmp/t/ns-ld-ok"
        ),
    )?;
    for v in ["ld.so X", "ld.so link-to-X"] {
        let r = a.line_starting("RESULT ok run-status")?;
        ensure!(!r.ends_with("exit=0"), "{v}: the denied program ran: {r}");
    }
    let r = a.line_starting("RESULT ok run-status")?;
    ensure!(r.ends_with("exit=0"), "the control program did not run under the loader: {r}");
    let out = a.finish()?;
    ensure!(!std::path::Path::new("/tmp/t/ns-ld-1").exists(), "X ran under ld.so");
    ensure!(!std::path::Path::new("/tmp/t/ns-ld-2").exists(), "X ran under ld.so through a link");
    ensure!(std::path::Path::new("/tmp/t/ns-ld-ok").exists(), "the control did not run");
    let r = &out.records()?;
    ensure!(
        r.iter()
            .filter(|x| x.hook == Some(Hook::MmapFile)
                && is(&x.rule, "no-dyn")
                && is(&x.object, "/tmp/t/bin/ns-dyn-denied")
                && x.decision == Some(Decision::Deny))
            .count()
            >= 2,
        "not two mmap_file deny records naming X: {r:#?}"
    );
    Ok(())
}

/// An exec rule written on a symlink is resolved at load (with a warning naming the rule's
/// place): the target is protected, run by its own name or through the link.
fn symlink_rule() -> Result<()> {
    harness::copy_busybox("/tmp/t/bin/ns-real-tool")?;
    std::fs::remove_file("/tmp/t/bin/ns-tool-link").ok();
    std::os::unix::fs::symlink("/tmp/t/bin/ns-real-tool", "/tmp/t/bin/ns-tool-link")?;
    std::fs::remove_file("/tmp/t/ns-tool-ran").ok();
    let policy = "[[rule]]\nname = \"link-rule\"\naction = \"deny\"\nexec = { path = \"/tmp/t/bin/ns-tool-link\" }\n";
    let a = Agent::start(
        "ns-symlink-rule",
        policy,
        "guard-e2e do exec /tmp/t/bin/ns-real-tool touch /tmp/t/ns-tool-ran; \
         guard-e2e do exec /tmp/t/bin/ns-tool-link touch /tmp/t/ns-tool-ran",
    )?;
    for v in ["the target by its name", "the target through the link"] {
        let r = a.result()?;
        ensure!(r.starts_with("RESULT errno=1 "), "{v}: {r}");
    }
    let out = a.finish()?;
    ensure!(!std::path::Path::new("/tmp/t/ns-tool-ran").exists(), "the protected program ran");
    ensure!(
        out.stderr.contains("goes through a symbolic link") && out.stderr.contains("/tmp/t/bin/ns-real-tool"),
        "no warning about the rule on a symlink: {}",
        out.stderr
    );
    let r = &out.records()?;
    ensure!(
        r.iter()
            .filter(|x| is(&x.rule, "link-rule")
                && is(&x.object, "/tmp/t/bin/ns-real-tool")
                && x.decision == Some(Decision::Deny))
            .count()
            >= 2,
        "not two deny records of the target: {r:#?}"
    );
    Ok(())
}

/// Exec and mmap_file decide on the bprm_check_security record: a deny of `object` by `rule`.
fn exec_denied(r: &[AuditRecord], hook: Hook, object: &str, reason: Reason, rule: Option<&str>) -> usize {
    r.iter()
        .filter(|x| {
            x.hook == Some(hook)
                && x.decision == Some(Decision::Deny)
                && x.reason == Some(reason)
                && is(&x.object, object)
                && rule.is_none_or(|n| is(&x.rule, n))
        })
        .count()
}

/// A jail for the chroot tests: `dir` emptied, with busybox copied to each of `programs`
/// (names inside the jail).
fn jail(dir: &str, programs: &[&str]) -> Result<()> {
    std::fs::remove_dir_all(dir).ok();
    for p in programs {
        let at = format!("{dir}{p}");
        std::fs::create_dir_all(std::path::Path::new(&at).parent().context("a program path has a parent")?)?;
        harness::copy_busybox(&at)?;
    }
    Ok(())
}

/// A policy that allows chroot has a deny rule on the real path of `<jail>/bin/evil`. Inside
/// the chroot the tree runs `/bin/evil` by execve and by fexecve of a descriptor it opened
/// there (bpf_d_path would name both `/bin/evil`): refused by the rule, the record naming the
/// global path, the marker it would write absent. `/bin/ok` in the same jail runs (the chroot
/// itself works).
fn chroot_deny() -> Result<()> {
    let jail_dir = "/tmp/t/nsj1";
    jail(jail_dir, &["/bin/evil", "/bin/ok"])?;
    let policy = r#"
default = "allow"
[[rule]]
name = "jail"
action = "allow"
chroot = true
[[rule]]
name = "no-evil"
action = "deny"
exec = { path = "/tmp/t/nsj1/bin/evil" }
"#;
    let a = Agent::start(
        "ns-chroot-deny",
        policy,
        "guard-e2e do chroot-run /tmp/t/nsj1 exec /bin/evil touch /evil-1; \
         guard-e2e do chroot-run /tmp/t/nsj1 fexec /bin/evil touch /evil-2; \
         guard-e2e do chroot-run /tmp/t/nsj1 exec /bin/ok touch /ok",
    )?;
    for v in ["execve in the chroot", "fexecve in the chroot"] {
        let r = a.result()?;
        ensure!(r.starts_with("RESULT errno=1 "), "{v}: {r}");
    }
    let r = a.result()?;
    ensure!(r.starts_with("RESULT ok "), "the control program in the chroot: {r}");
    let out = a.finish()?;
    for m in ["evil-1", "evil-2"] {
        ensure!(!std::path::Path::new(&format!("{jail_dir}/{m}")).exists(), "the denied program ran ({m})");
    }
    ensure!(std::path::Path::new(&format!("{jail_dir}/ok")).exists(), "the control program did not run");
    let r = &out.records()?;
    let n = exec_denied(r, Hook::BprmCheckSecurity, "/tmp/t/nsj1/bin/evil", Reason::Rule, Some("no-evil"));
    ensure!(n >= 2, "not two deny records naming the global path /tmp/t/nsj1/bin/evil: {r:#?}");
    ensure!(!has(r, |x| is(&x.object, "/bin/evil")), "a record names the chroot-relative path: {r:#?}");
    Ok(())
}

/// Under a default-deny policy with an allow rule on `/tmp/t/bin/nsj-tool` (and on the shell
/// and guard-e2e, which the workload needs), a tree in a chroot runs its own
/// `<jail>/tmp/t/bin/nsj-tool` (another file) by execve and fexecve, and `<jail>/bin/sh`'s
/// target by the path the shell's allow rule names: each is refused by the default, recorded
/// with its global path. The real nsj-tool runs outside the chroot (the control).
fn chroot_allow() -> Result<()> {
    let jail_dir = "/tmp/t/nsj2";
    let bb = busybox();
    jail(jail_dir, &["/tmp/t/bin/nsj-tool", &bb])?;
    harness::copy_busybox("/tmp/t/bin/nsj-tool")?;
    std::fs::remove_file("/tmp/t/nsj2-ok").ok();
    let me = std::fs::canonicalize(std::env::current_exe()?)?.display().to_string();
    let policy = format!(
        r#"
default = "deny"
[[rule]]
name = "files"
action = "allow"
file = {{ path = "/", access = "any" }}
[[rule]]
name = "jail"
action = "allow"
chroot = true
[[rule]]
name = "shell"
action = "allow"
exec = {{ path = "{bb}" }}
[[rule]]
name = "e2e"
action = "allow"
exec = {{ path = "{me}" }}
[[rule]]
name = "tool"
action = "allow"
exec = {{ path = "/tmp/t/bin/nsj-tool" }}
"#
    );
    let a = Agent::start(
        "ns-chroot-allow",
        &policy,
        &format!(
            "guard-e2e do chroot-run /tmp/t/nsj2 exec /tmp/t/bin/nsj-tool touch /tool-1; \
             guard-e2e do chroot-run /tmp/t/nsj2 fexec /tmp/t/bin/nsj-tool touch /tool-2; \
             guard-e2e do chroot-run /tmp/t/nsj2 exec {bb} touch /shell; \
             guard-e2e do chroot-run - exec /tmp/t/bin/nsj-tool touch /tmp/t/nsj2-ok"
        ),
    )?;
    for v in ["execve of the jail's tool", "fexecve of the jail's tool", "execve of the jail's shell"] {
        let r = a.result()?;
        ensure!(r.starts_with("RESULT errno=1 "), "{v}: {r}");
    }
    let r = a.result()?;
    ensure!(r.starts_with("RESULT ok "), "the allowed tool outside the chroot: {r}");
    let out = a.finish()?;
    for m in ["tool-1", "tool-2", "shell"] {
        ensure!(!std::path::Path::new(&format!("{jail_dir}/{m}")).exists(), "a jail program ran ({m})");
    }
    ensure!(std::path::Path::new("/tmp/t/nsj2-ok").exists(), "the allowed tool did not run");
    let r = &out.records()?;
    let n = exec_denied(r, Hook::BprmCheckSecurity, "/tmp/t/nsj2/tmp/t/bin/nsj-tool", Reason::Default, None);
    ensure!(n >= 2, "not two default deny records naming /tmp/t/nsj2/tmp/t/bin/nsj-tool: {r:#?}");
    let shell = format!("{jail_dir}{bb}");
    ensure!(
        exec_denied(r, Hook::BprmCheckSecurity, &shell, Reason::Default, None) >= 1,
        "no default deny record naming {shell}: {r:#?}"
    );
    ensure!(
        has(r, |x| x.hook == Some(Hook::BprmCheckSecurity)
            && is(&x.rule, "tool")
            && is(&x.object, "/tmp/t/bin/nsj-tool")
            && x.decision == Some(Decision::Allow)),
        "no allow record of the real tool: {r:#?}"
    );
    Ok(())
}

/// The loader's libraries as `ld.so --list` names them (absolute paths).
fn libraries(ld: &str, bin: &str) -> Result<Vec<String>> {
    let out = std::process::Command::new(ld).args(["--list", bin]).output()?;
    ensure!(out.status.success(), "{ld} --list {bin}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/') && std::path::Path::new(w).exists())
        .map(str::to_string)
        .collect())
}

/// In a chroot holding a loader, its libraries and two copies of guard-e2e, the tree runs
/// `ld.so /bin/dyn-denied` (exec-denied by its real path) and `ld.so /bin/dyn-ok`: the
/// loader cannot map the denied one executable (mmap_file, the record naming the global
/// path), so it never runs; the other one does.
fn chroot_loader() -> Result<()> {
    let me = std::env::current_exe()?.display().to_string();
    let Some(ld) = interpreter(&me).filter(|l| std::path::Path::new(l).exists()) else {
        return Err(Skip("guard-e2e is not dynamically linked here: no loader to run".into()).into());
    };
    let jail_dir = "/tmp/t/nsj3";
    std::fs::remove_dir_all(jail_dir).ok();
    std::fs::create_dir_all(format!("{jail_dir}/libs"))?;
    std::fs::create_dir_all(format!("{jail_dir}/bin"))?;
    let jail_ld = format!("{jail_dir}/ld.so");
    std::fs::copy(&ld, &jail_ld)?;
    for lib in libraries(&ld, &me)? {
        let name = std::path::Path::new(&lib).file_name().context("a library has a name")?.to_owned();
        std::fs::copy(&lib, std::path::Path::new(jail_dir).join("libs").join(name))?;
    }
    std::fs::copy(&me, format!("{jail_dir}/bin/dyn-denied"))?;
    std::fs::copy(&me, format!("{jail_dir}/bin/dyn-ok"))?;
    let policy = r#"
default = "allow"
[[rule]]
name = "jail"
action = "allow"
chroot = true
[[rule]]
name = "no-dyn"
action = "deny"
exec = { path = "/tmp/t/nsj3/bin/dyn-denied" }
"#;
    let a = Agent::start(
        "ns-chroot-loader",
        policy,
        "guard-e2e do chroot-run /tmp/t/nsj3 status /ld.so ld.so --library-path /libs /bin/dyn-denied do marker /m-denied; \
         guard-e2e do chroot-run /tmp/t/nsj3 status /ld.so ld.so --library-path /libs /bin/dyn-ok do marker /m-ok",
    )?;
    // The control prints its own RESULT line (`marker`): wait for the reports of chroot-run.
    let r = a.line_starting("RESULT ok chroot-run")?;
    ensure!(!r.ends_with("exit=0"), "ld.so X in the chroot: {r}");
    let r = a.line_starting("RESULT ok chroot-run")?;
    ensure!(r.ends_with("exit=0"), "the control under the loader in the chroot: {r}");
    let out = a.finish()?;
    ensure!(!std::path::Path::new("/tmp/t/nsj3/m-denied").exists(), "X ran under ld.so in the chroot");
    ensure!(std::path::Path::new("/tmp/t/nsj3/m-ok").exists(), "the control did not run");
    let r = &out.records()?;
    ensure!(
        exec_denied(r, Hook::MmapFile, "/tmp/t/nsj3/bin/dyn-denied", Reason::Rule, Some("no-dyn")) >= 1,
        "no mmap_file deny record naming the global path of X: {r:#?}"
    );
    Ok(())
}

/// Programs whose real names end in " (deleted)" are ordinary programs: with no
/// `exec_anonymous` rule one runs (the default allows it), and another is refused by the deny
/// rule on its path (reason `rule`, not `safe_default`). A program with no name left is told
/// by the object, not by the spelling.
fn named_deleted() -> Result<()> {
    let ok = "/tmp/t/bin/ns-named (deleted)";
    let denied = "/tmp/t/bin/ns-named2 (deleted)";
    harness::copy_busybox(ok)?;
    harness::copy_busybox(denied)?;
    for m in ["/tmp/t/ns-named-ran", "/tmp/t/ns-named2-ran"] {
        std::fs::remove_file(m).ok();
    }
    let policy = format!(
        "default = \"allow\"\n[[rule]]\nname = \"no-named2\"\naction = \"deny\"\nexec = {{ path = \"{denied}\" }}\n"
    );
    let a = Agent::start(
        "ns-named-deleted",
        &policy,
        &format!(
            "guard-e2e do chroot-run - exec '{ok}' touch /tmp/t/ns-named-ran; \
             guard-e2e do chroot-run - exec '{denied}' touch /tmp/t/ns-named2-ran"
        ),
    )?;
    let r = a.result()?;
    ensure!(r.starts_with("RESULT ok "), "a program named \"... (deleted)\" under a default allow: {r}");
    let r = a.result()?;
    ensure!(r.starts_with("RESULT errno=1 "), "a program named \"... (deleted)\" under a deny rule: {r}");
    let out = a.finish()?;
    ensure!(std::path::Path::new("/tmp/t/ns-named-ran").exists(), "the allowed program did not run");
    ensure!(!std::path::Path::new("/tmp/t/ns-named2-ran").exists(), "the denied program ran");
    let r = &out.records()?;
    ensure!(
        exec_denied(r, Hook::BprmCheckSecurity, denied, Reason::Rule, Some("no-named2")) >= 1,
        "no rule deny record of {denied}: {r:#?}"
    );
    ensure!(
        !has(r, |x| x.reason == Some(Reason::SafeDefault)),
        "a program named \"... (deleted)\" was taken for an anonymous one: {r:#?}"
    );
    Ok(())
}

/// A copy of the ELF `bin` whose PT_INTERP names `interp` instead (padded with NULs: it must be
/// no longer than the original's). Made by the test, outside every tree.
fn with_interpreter(bin: &str, interp: &str, to: &str) -> Result<()> {
    let old = interpreter(bin).context("the program has no PT_INTERP")?;
    ensure!(interp.len() <= old.len(), "{interp} is longer than {old}");
    let mut data = std::fs::read(bin)?;
    let at = data.windows(old.len() + 1).position(|w| w[..old.len()] == *old.as_bytes() && w[old.len()] == 0);
    let at = at.context("PT_INTERP string not found")?;
    let mut new = interp.as_bytes().to_vec();
    new.resize(old.len(), 0);
    data[at..at + old.len()].copy_from_slice(&new);
    std::fs::write(to, &data)?;
    std::fs::set_permissions(to, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(())
}

/// Item 8, exec rules mean programs: the interpreter an ELF names in its header (PT_INTERP) is
/// run by the kernel inside execve, with no exec of its own. A crafted program whose PT_INTERP
/// names an exec-denied copy of the loader, or a memfd holding one (`/proc/self/fd/9`, a
/// program with no name), must not get it run: the kernel's mapping of it is refused at
/// mmap_file and the exec dies. The same crafted program pointing at an allowed copy runs (the
/// control).
fn elf_interpreter() -> Result<()> {
    let me = std::env::current_exe()?.display().to_string();
    let Some(ld) = interpreter(&me).filter(|l| std::path::Path::new(l).exists()) else {
        return Err(Skip("guard-e2e is not dynamically linked here: no loader to run".into()).into());
    };
    let dir = "/tmp/t/pi";
    std::fs::remove_dir_all(dir).ok();
    std::fs::create_dir_all(dir)?;
    // Loader copies whose paths are as long as the original's, so they fit in its PT_INTERP.
    let named = |tag: &str| format!("{dir}/{tag}{}", "x".repeat(ld.len().saturating_sub(dir.len() + 1 + tag.len())));
    let (denied, allowed) = (named("deny-"), named("okay-"));
    ensure!(denied.len() == ld.len() && allowed.len() == ld.len(), "the loader's path {ld} is too short");
    std::fs::copy(&ld, &denied)?;
    std::fs::copy(&ld, &allowed)?;
    with_interpreter(&me, &denied, &format!("{dir}/via-denied"))?;
    with_interpreter(&me, &allowed, &format!("{dir}/via-allowed"))?;
    with_interpreter(&me, "/proc/self/fd/9", &format!("{dir}/via-memfd"))?;
    let policy = format!("[[rule]]\nname = \"no-loader-copy\"\naction = \"deny\"\nexec = {{ path = \"{denied}\" }}\n");
    let a = Agent::start(
        "ns-pt-interp",
        &policy,
        &format!(
            "guard-e2e do run-status {dir}/via-denied do marker {dir}/m-denied; \
             guard-e2e do run-status-memfd 9 {ld} {dir}/via-memfd do marker {dir}/m-memfd; \
             guard-e2e do run-status {dir}/via-allowed do marker {dir}/m-allowed"
        ),
    )?;
    for v in ["the denied interpreter", "the memfd interpreter"] {
        let r = a.line_starting("RESULT ok run-status")?;
        ensure!(!r.ends_with("exit=0"), "{v} ran the program: {r}");
    }
    let out = a.finish()?;
    ensure!(!std::path::Path::new(&format!("{dir}/m-denied")).exists(), "the exec-denied interpreter ran");
    ensure!(!std::path::Path::new(&format!("{dir}/m-memfd")).exists(), "the memfd interpreter ran");
    ensure!(std::path::Path::new(&format!("{dir}/m-allowed")).exists(), "the control did not run");
    let r = &out.records()?;
    ensure!(
        has(r, |x| x.hook == Some(Hook::MmapFile)
            && is(&x.rule, "no-loader-copy")
            && is(&x.object, &denied)
            && x.decision == Some(Decision::Deny)),
        "no mmap_file deny record naming the denied interpreter: {r:#?}"
    );
    ensure!(
        has(r, |x| x.hook == Some(Hook::MmapFile)
            && x.reason == Some(Reason::SafeDefault)
            && x.decision == Some(Decision::Deny)),
        "no safe_default record for the memfd interpreter: {r:#?}"
    );
    Ok(())
}
