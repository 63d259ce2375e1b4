//! `cargo xtask test`: host tests, then the guard-e2e runner inside QEMU on each
//! test kernel, retrying a kernel once if the guest kernel itself crashed.
use crate::kernel::Series;
use crate::util::{self, sh_quote, workspace_root};
use crate::vm::{self, GuestCrash, VmArgs};
use crate::{central, compile, setup};
use anyhow::{bail, Result};
use std::process::Command;

#[derive(clap::Args)]
pub struct TestArgs {
    /// Run only this kernel (default: all).
    #[arg(long, value_enum)]
    pub kernel: Option<Series>,
    /// Skip setup, the build and the host tests (for iterating on VM tests).
    #[arg(long)]
    pub vm_only: bool,
    /// Arguments for guard-e2e (e.g. a test name filter).
    #[arg(last = true)]
    pub e2e_args: Vec<String>,
}

const E2E: &str = "/bin/guard-e2e";

pub fn run(args: &TestArgs) -> Result<u8> {
    if !args.vm_only {
        setup::run()?;
        compile::build()?;
        util::run(Command::new("cargo").args(["test", "--workspace"]).current_dir(workspace_root()))?;
    }
    if !workspace_root().join("target/release/guard-e2e").exists() {
        bail!("target/release/guard-e2e was not built; cannot run the VM tests");
    }
    let kernels = match args.kernel {
        Some(k) => vec![k],
        None => Series::ALL.to_vec(),
    };
    let results: Vec<(Series, Result<(), String>)> =
        kernels.into_iter().map(|k| (k, run_kernel(k, &args.e2e_args))).collect();
    Ok(summarize(&results))
}

/// One kernel's e2e run; a guest kernel crash earns one retry.
fn run_kernel(series: Series, e2e_args: &[String]) -> Result<(), String> {
    let mut cmd = vec![E2E.to_owned()];
    // /cmd is shell text, so quote the filter arguments to pass them verbatim.
    cmd.extend(e2e_args.iter().map(|a| sh_quote(a)));
    for attempt in 1..=2 {
        // Fresh services per boot: a retried kernel must not see the first attempt's requests.
        let central = central::start(true).map_err(|e| format!("starting guard-server on the host: {e:#}"))?;
        let vm_args = VmArgs {
            kernel: series,
            smp: 1,
            forward: central.ports.clone(),
            copy: central.copies.clone(),
            timeout: 2400,
            no_build: true,
            cmd: cmd.clone(),
        };
        eprintln!("xtask: e2e on kernel {} (attempt {attempt})", series.name());
        match vm::run(&vm_args) {
            Ok(0) => return Ok(()),
            Ok(code) => return Err(format!("guard-e2e exited with {code}")),
            Err(err) if err.is::<GuestCrash>() && attempt == 1 => {
                eprintln!("\n!!!!!!!! WARNING: kernel {} crashed ({err:#}); retrying once !!!!!!!!\n", series.name());
            }
            Err(err) => return Err(format!("{err:#}")),
        }
    }
    unreachable!("the second attempt always returns")
}

/// Prints one line per kernel and the `N passed, N failed` total; returns the exit code.
fn summarize(results: &[(Series, Result<(), String>)]) -> u8 {
    println!("\n== e2e summary ==");
    for (series, result) in results {
        match result {
            Ok(()) => println!("kernel {}: PASSED", series.name()),
            Err(why) => println!("kernel {}: FAILED ({why})", series.name()),
        }
    }
    let failed = results.iter().filter(|(_, r)| r.is_err()).count();
    println!("{} passed, {failed} failed", results.len() - failed);
    u8::from(failed > 0)
}
