//! Host services for the VM tests (`central.rs`), the demo and the server bench
//! (`server_bench.rs`): a PKI from `guard-server init-pki`, guard-server processes, a
//! throwaway PostgreSQL from `guard-server dev-postgres`, and their server configs.
//!
//! Everything started here is a child in a [`Children`] set, which stops them in reverse
//! order of start when dropped (also on error), so no run leaves a server behind.
use crate::util::{self, workspace_root};
use anyhow::{bail, Context, Result};
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a service may take to print its ready line (TLS keys, a PostgreSQL initdb).
const READY_WITHIN: Duration = Duration::from_secs(120);
/// How long a child has to exit on SIGTERM before it is killed.
const STOP_WITHIN: Duration = Duration::from_secs(10);

/// Started children, stopped in reverse order of start when dropped.
#[derive(Default)]
pub struct Children(Vec<(String, Child)>);

impl Children {
    /// Adopts `child` under `name` (used in messages); returns it for readiness checks.
    pub fn push(&mut self, name: &str, child: Child) -> &mut Child {
        self.0.push((name.to_owned(), child));
        &mut self.0.last_mut().expect("just pushed").1
    }

    /// Stops the most recently started child.
    pub fn stop_last(&mut self) {
        if let Some((name, mut child)) = self.0.pop() {
            stop(&name, &mut child);
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        while !self.0.is_empty() {
            self.stop_last();
        }
    }
}

/// SIGTERM (PostgreSQL and guard-server shut down cleanly on it), then SIGKILL after 10 s.
pub fn stop(name: &str, child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let deadline = Instant::now() + STOP_WITHIN;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("xtask: {name} did not stop on SIGTERM; killing it");
    let _ = child.kill();
    let _ = child.wait();
}

/// The release guard-server binary, which must have been built.
pub fn server_binary() -> Result<PathBuf> {
    let server = workspace_root().join("target/release/guard-server");
    if !server.exists() {
        bail!("{} was not built", server.display());
    }
    Ok(server)
}

/// Who a PKI from `guard-server init-pki` is for.
pub struct Pki<'a> {
    /// The name (DNS or IP) in the server's certificate: what clients dial.
    pub server_name: &'a str,
    /// One agent certificate per host name.
    pub hosts: &'a [String],
    /// One approver certificate per name.
    pub approvers: &'a [&'a str],
}

/// Runs `guard-server init-pki` into `dir`.
pub fn init_pki(server: &Path, dir: &Path, pki: &Pki) -> Result<()> {
    let mut init = Command::new(server);
    init.args(["init-pki", "--dir"]).arg(dir).args(["--server-name", pki.server_name]);
    for host in pki.hosts {
        init.args(["--host", host]);
    }
    for approver in pki.approvers {
        init.args(["--approver", approver]);
    }
    util::run(init.stdout(Stdio::null()))
}

/// The one guard-server config template: listen on 127.0.0.1:`port`, store in
/// `database_url`, TLS from the `init-pki` directory `pki`, then `rules` (approvers,
/// `[[require]]`, `[[auto]]` tables) verbatim.
pub fn server_config(pki: &Path, port: u16, database_url: &str, rules: &str) -> String {
    let p = |f: &str| pki.join(f).display().to_string();
    format!(
        "listen = \"127.0.0.1:{port}\"\ndatabase_url = \"{database_url}\"\ndefault_timeout = \"60s\"\n\n\
         [tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\n{rules}",
        p("ca.crt"),
        p("server.crt"),
        p("server.key"),
    )
}

/// One guard-server to start with [`spawn_server`].
pub struct Server<'a> {
    /// For messages and the child set.
    pub name: &'a str,
    pub binary: &'a Path,
    /// The TOML from [`server_config`].
    pub config: &'a str,
    /// Where the config and the log go: `<dir>/<file_stem>.toml` and `.log`.
    pub dir: &'a Path,
    pub file_stem: &'a str,
    /// Extra environment (e.g. `RUST_LOG`).
    pub env: &'a [(&'a str, &'a str)],
}

/// Writes the config, starts `guard-server serve` with a raised open-file limit (each agent
/// is a socket), and waits for its "listening on" line; returns the log's path.
pub fn spawn_server(children: &mut Children, s: &Server) -> Result<PathBuf> {
    let config = s.dir.join(format!("{}.toml", s.file_stem));
    fs::write(&config, s.config).with_context(|| format!("writing {}", config.display()))?;
    let log = s.dir.join(format!("{}.log", s.file_stem));
    let out = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let child = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$0" serve --config "$1""#)
        .arg(s.binary)
        .arg(&config)
        .envs(s.env.iter().copied())
        .stdout(out.try_clone()?)
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", s.name))?;
    let child = children.push(s.name, child);
    wait_for_line(&log, "listening on", s.name, child)?;
    Ok(log)
}

/// Starts `guard-server dev-postgres` in `dir/pg` on a free port and returns its URL.
pub fn start_postgres(children: &mut Children, server: &Path, dir: &Path) -> Result<String> {
    let port = free_port()?;
    let log = dir.join("postgres.log");
    let out = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let child = Command::new(server)
        .args(["dev-postgres", "--dir"])
        .arg(dir.join("pg"))
        .args(["--port", &port.to_string()])
        .stdout(out.try_clone()?)
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .context("starting guard-server dev-postgres")?;
    let name = "PostgreSQL (dev-postgres)";
    let child = children.push(name, child);
    let line = wait_for_line(&log, "postgres://", name, child)?;
    let url = postgres_url(&line).with_context(|| format!("no URL in dev-postgres's line {line:?}"))?;
    eprintln!("xtask: PostgreSQL at {url}");
    Ok(url.to_owned())
}

/// The `postgres://...` word of dev-postgres's ready line.
fn postgres_url(line: &str) -> Option<&str> {
    line.split_whitespace().find(|w| w.starts_with("postgres://"))
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until `log` has a line containing `needle` and returns it; fails at once if the
/// child exits first, and after 120 s.
pub fn wait_for_line(log: &Path, needle: &str, name: &str, child: &mut Child) -> Result<String> {
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return Ok(line.to_string());
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!("{name} exited ({status}) before it was ready; its log ({}):\n{text}", log.display());
        }
        if Instant::now() > deadline {
            bail!("{name} was not ready within {} s; its log ({}):\n{text}", READY_WITHIN.as_secs(), log.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `cargo build --release --bins` of `packages` (every workspace member when empty) in one
/// cargo run, so every dependency is built once with one set of features, with guard-server's
/// `testing` feature (which gates `dev-postgres`). guard-server's own tests reach that feature
/// through a self dev-dependency renamed `guard-server-testing`: under its plain name,
/// `--features guard-server/testing` would name that dependency instead of the package.
pub fn build_release_binaries(packages: &[&str]) -> Result<()> {
    let mut build = Command::new("cargo");
    build.args(["build", "--release", "--bins", "--features", "guard-server/testing"]).current_dir(workspace_root());
    if packages.is_empty() {
        // guard-ebpf's host build is only a stub (it is built for bpfel by build_ebpf).
        build.args(["--workspace", "--exclude", "guard-ebpf"]);
    }
    for p in packages {
        build.args(["-p", p]);
    }
    util::run(&mut build)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_is_taken_from_dev_postgres_line() {
        assert_eq!(
            postgres_url("dev-postgres: ready at postgres://guard@127.0.0.1:5433/guard (Ctrl-C stops)"),
            Some("postgres://guard@127.0.0.1:5433/guard")
        );
        assert_eq!(postgres_url("starting"), None);
    }

    #[test]
    fn the_config_names_the_pki_files_and_appends_the_rules() {
        let c = server_config(Path::new("/p"), 7, "sqlite:///x.db", "[[auto]]\nrule = \"r\"\n");
        assert!(c.starts_with("listen = \"127.0.0.1:7\"\ndatabase_url = \"sqlite:///x.db\"\n"), "{c}");
        assert!(c.contains("ca = \"/p/ca.crt\"\ncert = \"/p/server.crt\"\nkey = \"/p/server.key\"\n"), "{c}");
        assert!(c.ends_with("[[auto]]\nrule = \"r\"\n"), "{c}");
    }
}
