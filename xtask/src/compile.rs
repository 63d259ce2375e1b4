//! `build-ebpf` and `build`.
use crate::util::{self, clean_cargo_env, workspace_root};
use anyhow::{Context, Result};
use std::fs;
use std::path::Path;
use std::process::Command;

/// Where guard-agent's build.rs expects the object, relative to the workspace root.
const BPF_OBJECT: &str = "target/bpf/guard-ebpf.o";

/// Where the bpf build puts its artifacts: apart from the host's target/release, since it uses
/// another toolchain (nightly) and other flags.
const BPF_TARGET_DIR: &str = "target/ebpf";

/// The kernel architecture the programs are built for (syscall numbers, pt_regs layout: see
/// guard-ebpf/src/arch).
const BPF_TARGET_ARCH: &str = "x86_64";

/// The bpf build's profile. Set here rather than in the workspace's Cargo.toml: `lto` and
/// `panic` cannot be set per package, and the host crates keep their own profile (unwinding).
/// Debug info is what bpf-linker's `--btf` builds the object's BTF from: the kernel needs BTF
/// function info for `bpf_loop` callbacks (guard-ebpf's loops, see `decide::object_digest`).
const BPF_PROFILE: &[&str] = &[
    "profile.release.opt-level=3",
    "profile.release.lto=true",
    "profile.release.codegen-units=1",
    "profile.release.debug=2",
    "profile.release.panic=\"abort\"",
];

/// Builds guard-ebpf for bpfel-unknown-none (nightly, `core` built from source) and copies the
/// object to target/bpf/guard-ebpf.o.
pub fn build_ebpf() -> Result<()> {
    let root = workspace_root();
    let mut cargo = Command::new("cargo");
    cargo
        .args(["+nightly", "build", "--release", "--package", "guard-ebpf", "--target", "bpfel-unknown-none"])
        .args(["-Z", "build-std=core", "--target-dir", BPF_TARGET_DIR])
        .args(BPF_PROFILE.iter().flat_map(|setting| ["--config", setting]))
        .env("RUSTFLAGS", format!("--cfg bpf_target_arch=\"{BPF_TARGET_ARCH}\" -C link-arg=--btf"))
        .current_dir(&root);
    // The outer `cargo xtask` exports its toolchain, flags and target dir; inherited, they
    // would override the toolchain and flags chosen here.
    util::run(clean_cargo_env(&mut cargo))?;
    let built = root.join(BPF_TARGET_DIR).join("bpfel-unknown-none/release/guard-ebpf");
    copy_if_changed(&built, &root.join(BPF_OBJECT))
}

/// build-ebpf, then every workspace binary in release mode (guard-ebpf's host build is only a
/// stub, see guard-ebpf/src/main.rs).
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
