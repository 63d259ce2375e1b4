// 1. `sqlx::migrate!` embeds migrations/ at build time: rebuild when a file there changes.
// 2. `cfg(has_postgres)` when PostgreSQL's server binaries are installed, so the replica test
//    (tests/postgres.rs) is reported as ignored, not as passed, on a machine without them.
//    With them it runs, and fails loudly if the cluster cannot start.
// 3. `cfg(has_rsyslog)` when Debian's rsyslogd and its GnuTLS driver are installed (`cargo
//    xtask setup` installs them), for the syslog sink tests (tests/sinks.rs), likewise.
// 4. `cfg(has_chromium)` when Debian's chromium and chromedriver are installed (`cargo xtask
//    setup` installs them), for the real-browser tests (tests/browser/), likewise.
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
    println!("cargo::rustc-check-cfg=cfg(has_rsyslog)");
    println!("cargo:rerun-if-changed={RSYSLOGD}");
    println!("cargo:rerun-if-changed={RSYSLOG_GTLS}");
    if std::path::Path::new(RSYSLOGD).exists() && std::path::Path::new(RSYSLOG_GTLS).exists() {
        println!("cargo:rustc-cfg=has_rsyslog");
    }
    println!("cargo::rustc-check-cfg=cfg(has_chromium)");
    println!("cargo:rerun-if-changed={CHROMIUM}");
    println!("cargo:rerun-if-changed={CHROMEDRIVER}");
    if std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists() {
        println!("cargo:rustc-cfg=has_chromium");
    }
}

/// Debian's chromium and chromium-driver packages.
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Where Debian's rsyslog package puts the daemon and its TLS stream driver.
const RSYSLOGD: &str = "/usr/sbin/rsyslogd";
const RSYSLOG_GTLS: &str = "/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so";
