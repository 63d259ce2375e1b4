//! `exec-released` is `run`'s internal helper: started by hand (no go pipe set up), it refuses
//! rather than read an fd it does not own.

use std::process::Command;

#[test]
fn exec_released_by_hand_refuses_and_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let out = Command::new(env!("CARGO_BIN_EXE_guard-agent"))
        .args(["exec-released", "--", "touch", marker.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(126), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("internal to `guard-agent run`"));
    assert!(!marker.exists());
}
