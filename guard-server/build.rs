// 1. `sqlx::migrate!` embeds migrations/ at build time: rebuild when a file there changes.
// 2. `cfg(has_postgres)` when PostgreSQL's server binaries are installed, so the replica test
//    (tests/postgres.rs) is reported as ignored, not as passed, on a machine without them.
//    With them it runs, and fails loudly if the cluster cannot start.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo::rustc-check-cfg=cfg(has_postgres)");
    println!("cargo:rerun-if-changed=/usr/lib/postgresql");
    let installed = std::fs::read_dir("/usr/lib/postgresql")
        .map(|versions| versions.filter_map(Result::ok).any(|v| v.path().join("bin/initdb").exists()))
        .unwrap_or(false);
    if installed {
        println!("cargo:rustc-cfg=has_postgres");
    }
}
