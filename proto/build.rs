// Generates the guard.v1 messages and both client and server stubs from proto/guard/v1.
// protoc comes from Debian's protobuf-compiler (installed by `cargo xtask setup`).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["guard/v1/types.proto", "guard/v1/agent.proto", "guard/v1/review.proto", "guard/v1/audit.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    tonic_prost_build::configure().compile_protos(&files, &["."])?;
    Ok(())
}
