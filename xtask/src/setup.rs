//! `cargo xtask setup`: idempotent install of everything the builds and VM runs
//! need. Each item is probed first so a fully set-up machine finishes quickly.
use crate::kernel::{self, Series};
use crate::util::{self, clean_cargo_env, file_name, succeeds};
use anyhow::{Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian packages: QEMU, the guest userland, initramfs packing, module
/// decompression, protoc for crates that generate protobuf code, PostgreSQL (the
/// guard-server replica tests and benchmarks start throwaway clusters with its binaries), and
/// rsyslog with its GnuTLS driver (the audit sink tests start a real rsyslogd on loopback),
/// OpenSSL's headers and pkg-config (webauthn-rs verifies passkey signatures with OpenSSL), and
/// chromium with chromedriver (the console's real-browser tests drive it headless).
const APT_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "xz-utils",
    "protobuf-compiler",
    "postgresql",
    "rsyslog",
    "rsyslog-gnutls",
    "libssl-dev",
    "pkg-config",
    "chromium",
    "chromium-driver",
];

pub fn run() -> Result<()> {
    report("apt packages", apt_packages())?;
    report("nightly rust-src", rust_src())?;
    report("bpf-linker", bpf_linker())?;
    report("cargo-fuzz", crate::fuzz::ensure_cargo_fuzz())?;
    for series in Series::ALL {
        report(&format!("kernel {}", series.name()), kernel::ensure(series))?;
    }
    Ok(())
}

fn report(item: &str, status: Result<String>) -> Result<()> {
    let status = status.with_context(|| format!("setup of {item} failed"))?;
    println!("{item}: {status}");
    Ok(())
}

fn apt_packages() -> Result<String> {
    let missing: Vec<&str> = APT_PACKAGES.iter().copied().filter(|p| !dpkg_installed(p)).collect();
    if missing.is_empty() {
        return Ok("ok".into());
    }
    util::apt_update_once()?;
    util::run(
        util::privileged("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    Ok(format!("installed {}", missing.join(" ")))
}

fn dpkg_installed(package: &str) -> bool {
    util::output(Command::new("dpkg-query").args(["-W", "-f=${db:Status-Status}", package]))
        .is_ok_and(|s| s.trim() == "installed")
}

/// guard-ebpf builds `core` itself (build-std), which needs nightly's rust-src.
fn rust_src() -> Result<String> {
    let mut list = Command::new("rustup");
    list.args(["component", "list", "--installed", "--toolchain", "nightly"]);
    let installed = util::output(clean_cargo_env(&mut list)).unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok("ok".into());
    }
    let mut add = Command::new("rustup");
    if installed.is_empty() {
        // No nightly toolchain at all (the listing failed).
        add.args(["toolchain", "install", "nightly", "--profile", "minimal"]);
        add.args(["--component", "rust-src"]);
    } else {
        add.args(["component", "add", "rust-src", "--toolchain", "nightly"]);
    }
    util::run(clean_cargo_env(&mut add))?;
    Ok("installed nightly rust-src".into())
}

/// bpf-linker must link against the same LLVM as nightly rustc. It also stops
/// working when a nightly update replaces that libLLVM, which `--version`
/// detects, so a failing probe means (re)install against the current nightly.
fn bpf_linker() -> Result<String> {
    if succeeds(Command::new("bpf-linker").arg("--version")) {
        return Ok("ok".into());
    }
    let (prefix, major) = llvm_prefix()?;
    let mut install = Command::new("cargo");
    install
        .args(["install", "--force", "bpf-linker", "--no-default-features"])
        .args(["--features", &format!("llvm-{major}")])
        .env("LLVM_PREFIX", &prefix)
        .current_dir(&util::cache_dir()?);
    util::run(clean_cargo_env(&mut install))?;
    Ok(format!("installed (llvm-{major})"))
}

/// Builds `<cache>/rust-llvm/lib` with symlinks to nightly's libLLVM, the
/// layout bpf-linker's build expects from LLVM_PREFIX. Returns it and the LLVM major.
fn llvm_prefix() -> Result<(PathBuf, String)> {
    let mut sysroot = Command::new("rustc");
    sysroot.args(["+nightly", "--print", "sysroot"]);
    let lib = PathBuf::from(util::output(clean_cargo_env(&mut sysroot))?.trim()).join("lib");
    let names: Vec<String> = fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok().map(|e| file_name(&e.path())))
        .collect();
    // libLLVM.so.<ver>-rust-...-nightly: the real library (soname).
    let versioned = names
        .iter()
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    // libLLVM-<major>-rust-...-nightly.so: carries the major version.
    let unversioned = names
        .iter()
        .find(|n| n.starts_with("libLLVM-") && n.ends_with(".so"))
        .with_context(|| format!("no libLLVM-*.so in {}", lib.display()))?;
    let major = unversioned["libLLVM-".len()..].split('-').next().unwrap_or_default().to_owned();
    let prefix = util::cache_dir()?.join("rust-llvm");
    // Recreated each time so links to a previous nightly's library do not linger.
    util::remove_dir_if_exists(&prefix)?;
    fs::create_dir_all(prefix.join("lib"))?;
    symlink(&lib.join(versioned), &prefix.join("lib").join(versioned))?;
    symlink(&lib.join(unversioned), &prefix.join("lib/libLLVM.so"))?;
    Ok((prefix, major))
}

fn symlink(target: &Path, link: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("symlinking {} -> {}", link.display(), target.display()))
}
