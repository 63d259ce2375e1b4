//! Developer tasks for guard: host/toolchain setup, eBPF and workspace builds,
//! QEMU runs of the agent against real kernels, and the end-to-end test matrix.
mod central;
mod compile;
mod demo;
mod e2e;
mod fuzz;
mod initramfs;
mod kernel;
mod server_bench;
mod services;
mod setup;
mod spool_bench;
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
    /// The whole loop in a VM: a scripted AI agent under guard, its held operations approved
    /// and denied by a scripted approver, and the audit trail.
    Demo(DemoArgs),
    /// guard's overhead inside the VM: no agent, unwatched, watched (no match / allow rules);
    /// then guard-server's decision latency and throughput under load (SQLite, PostgreSQL).
    Bench(BenchArgs),
    /// The cargo-fuzz targets (fuzz/), each for a bounded time; `--smoke` is CI's short run.
    Fuzz(fuzz::FuzzArgs),
    /// (internal) joins one forwarded guest connection to 127.0.0.1:PORT; QEMU runs it.
    #[command(hide = true)]
    Relay { port: u16 },
}

#[derive(clap::Args)]
struct DemoArgs {
    #[arg(long, value_enum, default_value = "6.12")]
    kernel: kernel::Series,
    /// A person decides each held operation at this terminal (instead of the scripted approver).
    #[arg(long)]
    interactive: bool,
}

#[derive(clap::Args)]
struct BenchArgs {
    #[arg(long, value_enum, default_value = "6.12")]
    kernel: kernel::Series,
    /// Rounds of every mode, alternating.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Guest CPUs: 2 by default, as in the platform's floor measurements (the agent and the
    /// workload do not then share one emulated CPU; the 2-vCPU crash risk is for tests).
    #[arg(long, default_value_t = 2)]
    smp: u32,
    #[command(flatten)]
    server: server_bench::ServerBenchArgs,
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
        Cmd::Relay { port } => vm::relay(port),
        Cmd::Test(args) => e2e::run(&args),
        Cmd::Fuzz(a) => fuzz::run(&a),
        Cmd::Demo(a) => demo::run(a.kernel, a.interactive),
        Cmd::Bench(a) => {
            // The VM bench, then guard-server under load on the host (or only one of them).
            let code = if a.server.server_only {
                0
            } else {
                in_vm(a.kernel, a.smp, vec!["/bin/guard-e2e".into(), "bench".into(), a.rounds.to_string()], 5400)?
            };
            if !a.server.server_only {
                // On the host: the spool's disk cost does not need the VM.
                if let Err(e) = spool_bench::run() {
                    eprintln!("\n!!!!!!!! xtask: the spool bench failed: {e:#} !!!!!!!!\n");
                }
            }
            if !a.server.no_server {
                server_bench::run(&a.server)?;
            }
            Ok(code)
        }
    }
}

/// Sets up, builds, and runs one guard-e2e command in a VM.
fn in_vm(kernel: kernel::Series, smp: u32, cmd: Vec<String>, timeout: u64) -> Result<u8> {
    setup::run()?;
    compile::build()?;
    vm::run(&vm::VmArgs {
        kernel,
        smp,
        forward: Vec::new(),
        copy: Vec::new(),
        timeout,
        no_build: true,
        cmd,
        env: Vec::new(),
        label: None,
    })
}
