//! Embeds the eBPF object built by `cargo xtask build-ebpf` (target/bpf/guard-ebpf.o).
//! Without it (a plain `cargo build` on a fresh clone) an empty object is embedded and the
//! agent says at run time how to build the real one.
use std::{env, fs, path::PathBuf};

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("..");
    let src = root.join("target/bpf/guard-ebpf.o");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("guard-ebpf.o");
    println!("cargo:rerun-if-changed={}", src.display());
    match fs::read(&src) {
        Ok(bytes) => fs::write(&out, bytes).unwrap(),
        Err(_) => fs::write(&out, []).unwrap(),
    }
}
