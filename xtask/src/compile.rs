//! `build-ebpf` and `build`.
use crate::util::{self, clean_cargo_env, workspace_root};
use anyhow::{Context, Result};
use std::fs;
use std::path::Path;
use std::process::Command;

/// Where guard-agent's build.rs expects the object, relative to the workspace root.
const BPF_OBJECT: &str = "target/bpf/guard-ebpf.o";

/// Builds guard-ebpf (its own cargo project: nightly, bpfel-unknown-none) and
/// copies the object to target/bpf/guard-ebpf.o.
pub fn build_ebpf() -> Result<()> {
    let root = workspace_root();
    let project = root.join("guard-ebpf");
    let mut cargo = Command::new("cargo");
    cargo.args(["build", "--release"]).current_dir(&project);
    // The outer `cargo xtask` exports its toolchain, flags and target dir;
    // inherited, they would override guard-ebpf's rust-toolchain.toml and target.
    util::run(clean_cargo_env(&mut cargo))?;
    let built = project.join("target/bpfel-unknown-none/release/guard-ebpf");
    copy_if_changed(&built, &root.join(BPF_OBJECT))
}

/// build-ebpf, then every workspace binary in release mode.
pub fn build() -> Result<()> {
    build_ebpf()?;
    // guard-server with its `testing` feature: the VM tests and the demo run `dev-postgres`.
    crate::services::build_release_binaries(&[])
}

/// guard-agent's build.rs reruns on the object's mtime, so an identical object
/// is not rewritten: that would rebuild the agent on every invocation.
fn copy_if_changed(src: &Path, dest: &Path) -> Result<()> {
    let new = fs::read(src).with_context(|| format!("reading built object {}", src.display()))?;
    if fs::read(dest).is_ok_and(|old| old == new) {
        return Ok(());
    }
    if let Some(dir) = dest.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(dest, new).with_context(|| format!("writing {}", dest.display()))
}
