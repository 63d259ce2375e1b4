//! `cargo xtask fuzz`: the cargo-fuzz targets of fuzz/ (policy parser, agent and server
//! configuration, the server's gRPC message checks, the audit chain verifier), each for a
//! bounded time. A crash (a panic or a failed property) fails the run and names the input
//! libFuzzer saved under fuzz/artifacts/<target>/.
//!
//! The committed corpora (fuzz/corpus/<target>/) are seeds only: libFuzzer writes what it
//! finds to a scratch copy under target/fuzz-corpus/, so a run never changes the repository.
use crate::util::{self, clean_cargo_env, succeeds, workspace_root};
use anyhow::{bail, Context, Result};
use std::process::Command;

/// Every target, in the order they run.
pub const TARGETS: &[&str] = &["policy", "agent_config", "server_config", "grpc_validate", "audit_verify"];

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// CI's bounded run: every target for `--seconds` (default 20).
    #[arg(long)]
    smoke: bool,
    /// Seconds per target (default: 20 with --smoke, else 300).
    #[arg(long)]
    seconds: Option<u64>,
    /// Only these targets (default: all).
    targets: Vec<String>,
}

/// cargo-fuzz, installed if missing (it runs on the nightly toolchain setup installs).
pub fn ensure_cargo_fuzz() -> Result<String> {
    if succeeds(clean_cargo_env(&mut Command::new("cargo")).args(["fuzz", "--version"])) {
        return Ok("ok".into());
    }
    let mut install = Command::new("cargo");
    install.args(["install", "cargo-fuzz", "--locked"]).current_dir(util::cache_dir()?);
    util::run(clean_cargo_env(&mut install))?;
    Ok("installed".into())
}

pub fn run(args: &FuzzArgs) -> Result<u8> {
    ensure_cargo_fuzz()?;
    let seconds = args.seconds.unwrap_or(if args.smoke { 20 } else { 300 });
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        for t in &args.targets {
            if !TARGETS.contains(&t.as_str()) {
                bail!("no fuzz target {t:?}: expected one of {}", TARGETS.join(", "));
            }
        }
        args.targets.iter().map(String::as_str).collect()
    };
    let fuzz_dir = workspace_root().join("fuzz");
    // One build for every target (debug assertions on, as `cargo fuzz run` builds them).
    util::run(clean_cargo_env(Command::new("cargo").args(["+nightly", "fuzz", "build"]).current_dir(&fuzz_dir)))?;
    let mut failed = vec![];
    for target in targets {
        let scratch = workspace_root().join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
        let seeds = fuzz_dir.join("corpus").join(target);
        println!("xtask: fuzzing {target} for {seconds} s (seeds {})", seeds.display());
        let mut cmd = Command::new("cargo");
        cmd.args(["+nightly", "fuzz", "run", target])
            .arg(&scratch)
            .arg(&seeds)
            .args(["--", &format!("-max_total_time={seconds}"), "-timeout=10", "-rss_limit_mb=2048"])
            .args(["-print_final_stats=1"])
            .current_dir(&fuzz_dir);
        let status = clean_cargo_env(&mut cmd).status().with_context(|| format!("running cargo fuzz run {target}"))?;
        if !status.success() {
            eprintln!("xtask: fuzz target {target} FAILED; the input is under fuzz/artifacts/{target}/");
            failed.push(target);
        }
    }
    if !failed.is_empty() {
        bail!("fuzz targets failed: {}", failed.join(", "));
    }
    println!("xtask: fuzz: every target ran {seconds} s without a crash");
    Ok(0)
}
