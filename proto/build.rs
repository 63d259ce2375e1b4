// Generates the guard.v1 messages and both client and server stubs from proto/guard/v1.
// protoc comes from Debian's protobuf-compiler (installed by `cargo xtask setup`).
//
// Every message and enum also derives serde, so JSON forms of the messages (the server's
// `requests.operation` column, guardctl's `--json`) come from the one definition here rather
// than from hand-written mirrors. JSON field names are the proto field names; enum-typed
// fields are their i32 numbers (prost keeps them as i32); a missing field reads as its
// proto3 default, as on the wire.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["guard/v1/types.proto", "guard/v1/agent.proto", "guard/v1/review.proto", "guard/v1/audit.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    tonic_prost_build::configure()
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        .message_attribute(".", "#[serde(default)]")
        .compile_protos(&files, &["."])?;
    Ok(())
}
