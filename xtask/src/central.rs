//! The host side of the VM tests and the demo: a PKI, guard-server on SQLite, and two
//! replicas sharing one throwaway PostgreSQL, all on 127.0.0.1 and forwarded into the VM.
//! Everything started here is stopped when the `Central` is dropped.
use crate::util::workspace_root;
use anyhow::{bail, Context, Result};
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the PKI lands inside the guest.
pub const GUEST_PKI: &str = "/etc/guard/pki";
/// The host name in the VM's agent certificate (the VM's hostname is guard-vm too).
pub const VM_HOST: &str = "guard-vm";
/// Approvers: alice and bob are ordinary; "rooty" owns the root account the VM's agents run
/// as, so the server must refuse to let rooty approve them.
const APPROVERS: &[&str] = &["alice", "bob", "carol", "rooty"];

pub struct Central {
    children: Vec<(String, Child)>,
    pub dir: PathBuf,
    /// Host ports to forward into the VM.
    pub ports: Vec<u16>,
    /// Host files to copy into the VM.
    pub copies: Vec<(PathBuf, String)>,
}

impl Drop for Central {
    fn drop(&mut self) {
        for (name, child) in self.children.iter_mut().rev() {
            // SIGTERM first: PostgreSQL and the server shut down cleanly on it.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if !matches!(child.try_wait(), Ok(Some(_))) {
                eprintln!("xtask: {name} did not stop on SIGTERM; killing it");
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Starts the services and exports `GUARD_E2E_*` so the guest learns where they are.
pub fn start(with_postgres: bool) -> Result<Central> {
    let dir = workspace_root().join("target/central");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let server = workspace_root().join("target/release/guard-server");
    if !server.exists() {
        bail!("{} was not built", server.display());
    }
    let pki = dir.join("pki");
    let mut init = Command::new(&server);
    init.args(["init-pki", "--dir"]).arg(&pki).args(["--server-name", "10.0.2.100", "--host", VM_HOST]);
    init.args(["--host", "intruder"]);
    for a in APPROVERS {
        init.args(["--approver", a]);
    }
    crate::util::run(&mut init)?;
    let mut c = Central { children: vec![], dir: dir.clone(), ports: vec![], copies: vec![] };
    c.copies.push((pki.clone(), GUEST_PKI.into()));

    let port = free_port()?;
    let db = format!("sqlite://{}", dir.join("guard.db").display());
    c.spawn_server("guard-server (sqlite)", &server, &pki, port, &db)?;
    set("GUARD_E2E_SERVER", &format!("https://10.0.2.100:{port}"));
    set("GUARD_E2E_PKI", GUEST_PKI);
    set("GUARD_E2E_HOST", VM_HOST);

    std::env::remove_var("GUARD_E2E_REPLICAS");
    if with_postgres {
        match c.start_postgres(&server) {
            Ok(url) => {
                let (p1, p2) = (free_port()?, free_port()?);
                c.spawn_server("guard-server replica 1 (postgres)", &server, &pki, p1, &url)?;
                c.spawn_server("guard-server replica 2 (postgres)", &server, &pki, p2, &url)?;
                set("GUARD_E2E_REPLICAS", &format!("https://10.0.2.100:{p1},https://10.0.2.100:{p2}"));
            }
            Err(e) => eprintln!(
                "\n!!!!!!!! xtask: PostgreSQL could not be started ({e:#}); the replica test will be SKIPPED !!!!!!!!\n"
            ),
        }
    }
    Ok(c)
}

fn set(k: &str, v: &str) {
    // xtask is single-threaded here; the variables are read when the initramfs is built.
    std::env::set_var(k, v);
}

impl Central {
    fn spawn_server(&mut self, name: &str, server: &Path, pki: &Path, port: u16, db: &str) -> Result<()> {
        let config = self.dir.join(format!("server-{port}.toml"));
        fs::write(&config, server_config(pki, port, db)).with_context(|| format!("writing {}", config.display()))?;
        let log = self.dir.join(format!("server-{port}.log"));
        let out = fs::File::create(&log)?;
        let child = Command::new(server)
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(out.try_clone()?)
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.children.push((name.into(), child));
        wait_for_line(&log, "listening on", name)?;
        eprintln!("xtask: {name} on 127.0.0.1:{port} (log {})", log.display());
        self.ports.push(port);
        Ok(())
    }

    fn start_postgres(&mut self, server: &Path) -> Result<String> {
        let port = free_port()?;
        let log = self.dir.join("postgres.log");
        let out = fs::File::create(&log)?;
        let child = Command::new(server)
            .args(["dev-postgres", "--dir"])
            .arg(self.dir.join("pg"))
            .args(["--port", &port.to_string()])
            .stdout(out.try_clone()?)
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .context("starting guard-server dev-postgres")?;
        self.children.push(("postgres".into(), child));
        let line = wait_for_line(&log, "postgres://", "PostgreSQL")?;
        let url = line.split_whitespace().find(|w| w.starts_with("postgres://")).unwrap_or_default().to_string();
        eprintln!("xtask: PostgreSQL at {url}");
        Ok(url)
    }
}

/// What the tests rely on: a two-person rule, an auto-approved rule, and rooty owning root.
fn server_config(pki: &Path, port: u16, db: &str) -> String {
    format!(
        r#"listen = "127.0.0.1:{port}"
database_url = "{db}"
default_timeout = "60s"

[tls]
ca = "{pki}/ca.crt"
cert = "{pki}/server.crt"
key = "{pki}/server.key"

[[approver]]
name = "rooty"
unix_users = ["root", "0"]

[[require]]
rule = "two-person"
approvals = 2
approvers = ["alice", "bob"]

[[auto]]
rule = "auto-approved"
decision = "approve"
"#,
        pki = pki.display()
    )
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until a child's log has a line containing `needle`; returns that line.
fn wait_for_line(log: &Path, needle: &str, name: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return Ok(line.to_string());
        }
        if Instant::now() > deadline {
            bail!("{name} did not start within 60 s; its log ({}):\n{text}", log.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
