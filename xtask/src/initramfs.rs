//! Builds the guest's initramfs: static busybox, the guard binaries with their
//! shared libraries, the network modules, an /init script and the command file.
use crate::kernel::Kernel;
use crate::util::{self, file_name, remove_dir_if_exists, sh_quote, workspace_root};
use anyhow::{bail, Context, Result};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const BUSYBOX: &str = "/bin/busybox";
/// Binaries copied from target/release when present.
const GUARD_BINARIES: &[&str] = &["guard-agent", "guard-e2e", "guard-server", "guardctl"];
/// Printed by /init after the command; the host parses the exit code from it.
pub const EXIT_MARKER: &str = "GUARD-VM-EXIT=";

/// What the guest should do.
pub struct Guest<'a> {
    /// Shell text: the arguments joined by spaces and run by `sh /cmd`.
    pub cmd: &'a [String],
    /// Variables the command gets, over the host's `GUARD_*` ones.
    pub env: &'a [(String, String)],
    /// Load virtio-net and configure eth0.
    pub network: bool,
    /// Host files or directories to place at guest paths.
    pub copy: &'a [(PathBuf, String)],
}

/// Stages the tree in `dir/root` and writes `dir/initramfs.gz`, returning its path.
pub fn build(dir: &Path, kernel: &Kernel, guest: &Guest) -> Result<PathBuf> {
    let root = dir.join("root");
    remove_dir_if_exists(&root)?;
    fs::create_dir_all(root.join("bin"))?;
    add_busybox(&root)?;
    add_guard_binaries(&root)?;
    add_modules(&root, kernel)?;
    for (host, guest_path) in guest.copy {
        copy_tree(host, &root.join(guest_path.trim_start_matches('/')))?;
    }
    write_script(&root.join("init"), &init_script(guest.network))?;
    write_script(&root.join("cmd"), &cmd_script(guest.cmd, guest.env))?;
    let out = dir.join("initramfs.gz");
    pack(&root, &out)?;
    Ok(out)
}

/// busybox plus a /bin symlink per applet, so /init and commands can use plain names.
fn add_busybox(root: &Path) -> Result<()> {
    add_executable(root, Path::new(BUSYBOX))?;
    let list = util::output(Command::new(BUSYBOX).arg("--list"))?;
    for applet in list.lines().map(str::trim).filter(|a| !a.is_empty()) {
        let link = root.join("bin").join(applet);
        if !link.exists() {
            symlink("busybox", &link).with_context(|| format!("linking {}", link.display()))?;
        }
    }
    Ok(())
}

fn add_guard_binaries(root: &Path) -> Result<()> {
    let release = workspace_root().join("target/release");
    for name in GUARD_BINARIES {
        let path = release.join(name);
        if is_executable_elf(&path) {
            add_executable(root, &path)?;
        }
    }
    Ok(())
}

fn is_executable_elf(path: &Path) -> bool {
    let executable = fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    let mut magic = [0u8; 4];
    let elf = fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == b"\x7fELF";
    executable && elf
}

/// Copies a binary to /bin and its shared libraries (per ldd) to the same
/// absolute paths, so the dynamic loader finds them as on the host.
fn add_executable(root: &Path, path: &Path) -> Result<()> {
    copy_to(path, &root.join("bin").join(file_name(path)))?;
    for lib in shared_libraries(path)? {
        copy_to(&lib, &root.join(lib.strip_prefix("/")?))?;
    }
    Ok(())
}

/// Absolute library paths from `ldd` (including the loader); none for static binaries.
fn shared_libraries(path: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(path).output().context("could not start ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // ldd exits non-zero with "not a dynamic executable" for static binaries.
        return Ok(Vec::new());
    }
    if let Some(line) = text.lines().find(|l| l.contains("not found")) {
        bail!("ldd {}: missing library: {}", path.display(), line.trim());
    }
    Ok(text.lines().flat_map(str::split_whitespace).filter(|t| t.starts_with('/')).map(PathBuf::from).collect())
}

/// Copies file contents (following symlinks), creating parent directories.
fn copy_to(src: &Path, dest: &Path) -> Result<()> {
    if let Some(dir) = dest.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::copy(src, dest).with_context(|| format!("copying {} to {}", src.display(), dest.display()))?;
    Ok(())
}

fn add_modules(root: &Path, kernel: &Kernel) -> Result<()> {
    let dest = root.join("lib/modules");
    fs::create_dir_all(&dest)?;
    for entry in fs::read_dir(kernel.modules_dir())? {
        let src = entry?.path();
        copy_to(&src, &dest.join(file_name(&src)))?;
    }
    Ok(())
}

fn write_script(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn init_script(network: bool) -> String {
    let net = if network { NETWORK_SETUP } else { "" };
    format!("{INIT_HEAD}{net}{INIT_TAIL}")
}

const INIT_HEAD: &str = r#"#!/bin/busybox sh
# Generated by `cargo xtask vm`.
export PATH=/bin
mkdir -p /proc /sys /dev /tmp /run
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# Make sure our output reaches the serial console even if the kernel could not
# open /dev/console before devtmpfs was mounted.
exec </dev/console >/dev/console 2>&1
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t securityfs securityfs /sys/kernel/security || echo "init: securityfs mount failed"
mount -t bpf bpffs /sys/fs/bpf || echo "init: bpffs mount failed"
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
hostname guard-vm
# Accounts, so tools show user names as on a real host (and tests can check them).
mkdir -p /etc
echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd
echo 'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' >> /etc/passwd
echo 'root:x:0:' > /etc/group
echo 'nogroup:x:65534:' >> /etc/group
ip link set lo up
"#;

/// Modules load in the order recorded at setup (dependencies first). eth0
/// appears asynchronously after probing, hence the short waits.
const NETWORK_SETUP: &str = r#"for m in $(cat /lib/modules/load-order); do
    insmod /lib/modules/$m.ko || echo "init: insmod $m failed"
done
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
# Commands may connect right away; wait (briefly) for the link to report carrier.
i=0
while [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" != 1 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
"#;

const INIT_TAIL: &str = r#"cd /
sh /cmd
code=$?
echo "GUARD-VM-EXIT=$code"
sync
poweroff -f
"#;

/// The command file: GUARD_* variables from the host overlaid with `env`, then the
/// command text. Arguments are joined unquoted so `vm -- 'exit 3'` or `vm -- 'a && b'` work
/// as shell code; the file keeps any quoting within them intact.
fn cmd_script(cmd: &[String], env: &[(String, String)]) -> String {
    let mut script = String::from("# Generated by `cargo xtask vm`.\n");
    let mut vars: std::collections::BTreeMap<String, String> =
        std::env::vars().filter(|(k, _)| k.starts_with("GUARD_")).collect();
    vars.extend(env.iter().cloned());
    for (key, value) in vars {
        script.push_str(&format!("export {key}={}\n", sh_quote(&value)));
    }
    script.push_str(&cmd.join(" "));
    script.push('\n');
    script
}

fn copy_tree(src: &Path, dest: &Path) -> Result<()> {
    if src.is_dir() {
        fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
        for entry in fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
            let entry = entry?;
            copy_tree(&entry.path(), &dest.join(entry.file_name()))?;
        }
        Ok(())
    } else {
        copy_to(src, dest)
    }
}

/// `cpio -o -H newc | gzip` over the staged tree, entries owned by root.
fn pack(root: &Path, out: &Path) -> Result<()> {
    let entries = tree_entries(root, root)?;
    let mut cpio = Command::new("cpio")
        .args(["-o", "-H", "newc", "-R", "0:0", "--quiet"])
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("could not start cpio")?;
    let archive = cpio.stdout.take().context("cpio stdout")?;
    let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut gzip =
        Command::new("gzip").arg("-c").stdin(archive).stdout(file).spawn().context("could not start gzip")?;
    let mut stdin = cpio.stdin.take().context("cpio stdin")?;
    stdin.write_all(entries.join("\n").as_bytes())?;
    drop(stdin);
    check_exit("cpio", cpio.wait()?)?;
    check_exit("gzip", gzip.wait()?)
}

fn check_exit(what: &str, status: std::process::ExitStatus) -> Result<()> {
    if !status.success() {
        bail!("{what} (packing the initramfs) failed: {status}");
    }
    Ok(())
}

/// Every path below `dir`, relative to `root`, parents before children.
fn tree_entries(root: &Path, dir: &Path) -> Result<Vec<String>> {
    let mut entries = Vec::new();
    let mut children: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    children.sort_by_key(|e| e.file_name());
    for child in children {
        let path = child.path();
        entries.push(path.strip_prefix(root)?.to_string_lossy().into_owned());
        if child.file_type()?.is_dir() {
            entries.extend(tree_entries(root, &path)?);
        }
    }
    Ok(entries)
}
