//! On the development machines the kernel refuses BPF trampolines: doctor and run must say so
//! in words, not with a bare EPERM.

use std::process::Command;

const AGENT: &str = env!("CARGO_BIN_EXE_guard-agent");

fn built_without_programs(text: &str) -> bool {
    if text.contains("built without its eBPF programs") {
        eprintln!(
            "SKIPPED: guard-agent was built without its eBPF object; run `cargo xtask test`, which builds it first"
        );
        return true;
    }
    false
}

#[test]
fn doctor_explains_what_is_missing() {
    if !nix_is_root() {
        eprintln!("SKIPPED: doctor needs root to try loading programs");
        return;
    }
    let out = Command::new(AGENT).arg("doctor").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if built_without_programs(&text) {
        return;
    }
    if out.status.success() {
        assert!(text.contains("can enforce"), "{text}");
    } else {
        assert!(
            text.contains("does not allow BPF trampolines") || text.contains("BPF LSM is not active"),
            "unexplained failure: {text}"
        );
        assert!(text.contains("lsm="), "no fix offered: {text}");
    }
}

#[test]
fn run_fails_with_the_same_explanation_and_runs_nothing() {
    if !nix_is_root() {
        eprintln!("SKIPPED: run needs root");
        return;
    }
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
    if built_without_programs(&text) {
        return;
    }
    if out.status.success() {
        eprintln!("this host can enforce; nothing to check here");
        return;
    }
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("does not allow BPF trampolines") || text.contains("BPF LSM is not active"), "{text}");
    assert!(!marker.exists(), "the command ran although nothing could be enforced");
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

fn nix_is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}
