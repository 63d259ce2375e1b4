//! Developer tasks for guard: host/toolchain setup, eBPF and workspace builds,
//! QEMU runs of the agent against real kernels, and the end-to-end test matrix.
mod compile;
mod e2e;
mod initramfs;
mod kernel;
mod setup;
mod util;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "guard developer tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install host packages, the BPF toolchain and the test kernels (idempotent).
    Setup,
    /// Build the eBPF object into target/bpf/guard-ebpf.o.
    BuildEbpf,
    /// build-ebpf, then build all workspace binaries in release mode.
    Build,
    /// Boot a test kernel in QEMU with the guard binaries and run a command.
    Vm(vm::VmArgs),
    /// Host tests, then the e2e suite inside QEMU on every test kernel.
    Test(e2e::TestArgs),
    /// Interactive demo (not yet implemented).
    Demo(Passthrough),
    /// Benchmarks (not yet implemented).
    Bench(Passthrough),
}

/// Accepts any arguments so placeholder commands do not fail on parsing.
#[derive(clap::Args)]
struct Passthrough {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.cmd) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a subcommand; the Ok value is the process exit code (the guest's for `vm`).
fn dispatch(cmd: Cmd) -> Result<u8> {
    match cmd {
        Cmd::Setup => setup::run().map(|()| 0),
        Cmd::BuildEbpf => compile::build_ebpf().map(|()| 0),
        Cmd::Build => compile::build().map(|()| 0),
        Cmd::Vm(args) => vm::run(&args),
        Cmd::Test(args) => e2e::run(&args),
        Cmd::Demo(_) | Cmd::Bench(_) => {
            eprintln!("not yet implemented");
            Ok(2)
        }
    }
}
