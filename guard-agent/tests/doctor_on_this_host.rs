//! What `doctor` and `run` say on the host the tests run on. Every host gives one of a few
//! answers (not root; built without the eBPF programs; a kernel that cannot enforce; a kernel
//! that can), and each test asserts the answer this host gives: none passes without checking.
//! On the development machines the kernel refuses BPF trampolines: doctor and run must say so
//! in words, not with a bare EPERM.

use std::process::Command;

const AGENT: &str = env!("CARGO_BIN_EXE_guard-agent");
const NO_PROGRAMS: &str = "built without its eBPF programs";
const NOT_ROOT: &str = "must run as root";

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The kernel's refusal, explained with a fix.
fn explains_the_kernel(text: &str) -> bool {
    (text.contains("does not allow BPF trampolines") || text.contains("BPF LSM is not active")) && text.contains("lsm=")
}

#[test]
fn doctor_says_what_this_host_can_do() {
    let out = Command::new(AGENT).arg("doctor").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !is_root() {
        assert!(!out.status.success(), "{text}");
        assert!(text.contains(NOT_ROOT), "not root, and doctor does not say so: {text}");
    } else if text.contains(NO_PROGRAMS) {
        assert!(!out.status.success(), "{text}");
        assert!(text.contains("cargo xtask build"), "no way to build them offered: {text}");
    } else if out.status.success() {
        assert!(text.contains("can enforce"), "{text}");
    } else {
        assert!(explains_the_kernel(&text), "unexplained failure: {text}");
    }
}

#[test]
fn run_runs_the_command_only_where_it_can_enforce() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.toml");
    std::fs::write(&policy, "default = \"allow\"\n").unwrap();
    let marker = dir.path().join("ran");
    let out = Command::new(AGENT)
        .args([
            "run",
            "--policy",
            policy.to_str().unwrap(),
            "--audit-log",
            dir.path().join("a.jsonl").to_str().unwrap(),
            "--admin-socket",
            dir.path().join("s").to_str().unwrap(),
            "--",
            "touch",
            marker.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    if out.status.success() {
        assert!(marker.exists(), "run succeeded but the command did not run: {text}");
        return;
    }
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(!marker.exists(), "the command ran although nothing could be enforced");
    if !is_root() {
        assert!(text.contains(NOT_ROOT) || text.contains("Operation not permitted"), "{text}");
    } else if !text.contains(NO_PROGRAMS) {
        assert!(explains_the_kernel(&text), "unexplained failure: {text}");
    }
}

#[test]
fn bad_policy_is_reported_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.toml");
    std::fs::write(&policy, "[[rule]]\nname = \"x\"\naction = \"deny\"\nconnect = { cidr = \"10.0.0.0/33\" }\n")
        .unwrap();
    let out = Command::new(AGENT).args(["check-policy", policy.to_str().unwrap()]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2));
    assert!(text.contains("p.toml:4:20: bad cidr \"10.0.0.0/33\""), "{text}");
}

#[test]
fn unreadable_policy_is_reported_as_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("missing.toml");
    let out = Command::new(AGENT).args(["check-policy", policy.to_str().unwrap()]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2));
    assert!(text.contains("missing.toml: cannot read the policy file"), "{text}");
    assert!(!text.contains("missing.toml:0:0"), "{text}");
}
