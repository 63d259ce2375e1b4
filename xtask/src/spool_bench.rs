//! `cargo xtask bench`'s spool numbers: the agent's audit spool append on this host's disk
//! (records/s and the p99 of one batch's seal + write + fdatasync), from guard-agent's
//! `spool_bench` example in a release build. Reported, never asserted.

use crate::util::{self, workspace_root};
use anyhow::Result;
use std::process::Command;

pub fn run() -> Result<()> {
    let root = workspace_root();
    // Under target/, on the disk a spool would be on (a tmpfs would make fdatasync free).
    let dir = root.join("target/spool-bench");
    let mut cmd = Command::new("cargo");
    cmd.args(["run", "--release", "-q", "-p", "guard-agent", "--example", "spool_bench", "--"])
        .arg(&dir)
        .current_dir(&root);
    let r = util::run(&mut cmd);
    util::remove_dir_if_exists(&dir)?;
    r
}
