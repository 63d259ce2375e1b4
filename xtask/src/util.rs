//! Small helpers shared by the tasks: paths, running commands, version sorting.
use anyhow::{bail, Context, Result};
use std::cmp::Ordering;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The workspace root: xtask lives one level below it. Taken at compile time so
/// it does not depend on how or from where the binary is started.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask has a parent directory").to_path_buf()
}

/// Where kernels and the bpf-linker LLVM prefix are kept: `$GUARD_CACHE` or `~/.cache/guard`.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("GUARD_CACHE").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME").context("neither GUARD_CACHE nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache/guard"))
}

/// Human-readable form of a command for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs a command with inherited stdio and fails (naming it) unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("could not start `{}`", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed: {status}", describe(cmd));
    }
    Ok(())
}

/// Runs a command, returning its stdout; stderr goes to ours.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.stderr(Stdio::inherit()).output().with_context(|| format!("could not start `{}`", describe(cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed: {}", describe(cmd), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// True if the command starts and exits 0; output is discarded. For probes.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Removes variables set by an outer `cargo run` that would make a nested cargo
/// use the wrong toolchain, flags or target dir (guard-ebpf needs its own
/// nightly toolchain and target). CARGO_HOME is kept: it locates the registry.
pub fn clean_cargo_env(cmd: &mut Command) -> &mut Command {
    const EXACT: &[&str] =
        &["RUSTUP_TOOLCHAIN", "RUSTC", "RUSTC_WRAPPER", "RUSTC_WORKSPACE_WRAPPER", "RUSTDOC", "RUSTFLAGS"];
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let cargo_var = key.starts_with("CARGO") && key != "CARGO_HOME";
        if cargo_var || EXACT.contains(&key) {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// `sudo` prefix when not root, so setup also works for a normal user with sudo.
pub fn privileged(program: &str) -> Command {
    static IS_ROOT: OnceLock<bool> = OnceLock::new();
    let root = *IS_ROOT.get_or_init(|| output(Command::new("id").arg("-u")).is_ok_and(|uid| uid.trim() == "0"));
    if root {
        Command::new(program)
    } else {
        let mut cmd = Command::new("sudo");
        cmd.arg(program);
        cmd
    }
}

/// `apt-get update` at most once per run: it is slow and one refresh suffices.
pub fn apt_update_once() -> Result<()> {
    static DONE: OnceLock<()> = OnceLock::new();
    if DONE.get().is_none() {
        run(privileged("apt-get").arg("update"))?;
        let _ = DONE.set(());
    }
    Ok(())
}

/// Version ordering like `sort -V`: digit runs compare numerically, the rest bytewise.
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    while !a.is_empty() && !b.is_empty() {
        let (ca, ra) = split_chunk(a);
        let (cb, rb) = split_chunk(b);
        let ord = if ca[0].is_ascii_digit() && cb[0].is_ascii_digit() { cmp_numeric(ca, cb) } else { ca.cmp(cb) };
        if ord != Ordering::Equal {
            return ord;
        }
        (a, b) = (ra, rb);
    }
    a.len().cmp(&b.len())
}

/// Splits off the leading run of digits or of non-digits.
fn split_chunk(s: &[u8]) -> (&[u8], &[u8]) {
    let digit = s[0].is_ascii_digit();
    let end = s.iter().position(|c| c.is_ascii_digit() != digit).unwrap_or(s.len());
    s.split_at(end)
}

fn cmp_numeric(a: &[u8], b: &[u8]) -> Ordering {
    let trim = |s: &[u8]| -> Vec<u8> { s.iter().skip_while(|&&c| c == b'0').copied().collect() };
    let (a, b) = (trim(a), trim(b));
    a.len().cmp(&b.len()).then_with(|| a.cmp(&b))
}

/// Quotes a string for POSIX sh (single quotes, with embedded ones escaped).
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// All regular files below `dir` (recursively), symlinks not followed.
pub fn walk_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let entry = entry?;
            let ty = entry.file_type()?;
            if ty.is_dir() {
                stack.push(entry.path());
            } else if ty.is_file() {
                files.push(entry.path());
            }
        }
    }
    Ok(files)
}

/// Removes a directory tree, treating "already absent" as success.
pub fn remove_dir_if_exists(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// The file name as UTF-8 (lossy), for matching by name.
pub fn file_name(path: &Path) -> String {
    path.file_name().map(OsStr::to_string_lossy).unwrap_or_default().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_like_sort_v() {
        assert_eq!(
            version_cmp(
                "linux-image-6.12.117+deb12-cloud-amd64-unsigned",
                "linux-image-6.12.99+deb12-cloud-amd64-unsigned"
            ),
            Ordering::Greater
        );
        assert_eq!(version_cmp("6.1.0-9", "6.1.0-57"), Ordering::Less);
        assert_eq!(version_cmp("a1", "a1"), Ordering::Equal);
        assert_eq!(version_cmp("a1", "a1b"), Ordering::Less);
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }
}
