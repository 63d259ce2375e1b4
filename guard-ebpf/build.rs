//! `bpf_target_arch`: the architecture of the kernel the programs run on (syscall numbers and
//! pt_regs layout, see src/arch.rs). `cargo xtask build-ebpf` passes it with
//! `--cfg bpf_target_arch="x86_64"`; host builds (clippy) get the host's architecture.
fn main() -> aya_build::Result<()> {
    aya_build::emit_bpf_target_arch_cfg()
}
