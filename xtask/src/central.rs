//! The host side of the VM tests and the demo: a PKI, guard-server on SQLite, and two
//! replicas sharing one throwaway PostgreSQL, all on 127.0.0.1 and forwarded into the VM.
//! Everything started here is stopped when the `Central` is dropped.
use crate::services::{self, Children, Pki, Server};
use crate::util::workspace_root;
use anyhow::{Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

/// Where the PKI lands inside the guest.
pub const GUEST_PKI: &str = "/etc/guard/pki";
/// The host name in the VM's agent certificate (the VM's hostname is guard-vm too).
pub const VM_HOST: &str = "guard-vm";
/// Approvers: alice and bob are ordinary; "rooty" owns the root account the VM's agents run
/// as, so the server must refuse to let rooty approve them.
const APPROVERS: &[&str] = &["alice", "bob", "carol", "rooty"];
/// What the tests rely on: a two-person rule, an auto-approved rule, and rooty owning root.
const RULES: &str = r#"[[approver]]
name = "rooty"
unix_users = ["root", "0"]

# uid 1000 is alice's login on the test VM (trust_tests: the tree's owner is its login uid).
[[approver]]
name = "alice"
unix_users = ["1000"]

[[require]]
rule = "two-person"
approvals = 2
approvers = ["alice", "bob"]

[[auto]]
rule = "auto-approved"
decision = "approve"
"#;

pub struct Central {
    children: Children,
    pub dir: PathBuf,
    /// Host ports to forward into the VM.
    pub ports: Vec<u16>,
    /// Host files to copy into the VM.
    pub copies: Vec<(PathBuf, String)>,
    /// `GUARD_E2E_*` variables for the guest: where the services are. An empty
    /// `GUARD_E2E_REPLICAS` means PostgreSQL could not be started (the replica test skips).
    pub guest_env: Vec<(String, String)>,
}

/// Starts the services in `target/central/NAME` (one directory per concurrent run: the two
/// kernels' suites run side by side); `guest_env` tells the guest where they are.
pub fn start(name: &str, with_postgres: bool) -> Result<Central> {
    let dir = workspace_root().join("target/central").join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let server = services::server_binary()?;
    let pki = dir.join("pki");
    let hosts = [VM_HOST.to_owned(), "intruder".to_owned()];
    services::init_pki(&server, &pki, &Pki { server_name: "10.0.2.100", hosts: &hosts, approvers: APPROVERS })?;
    let mut c = Central {
        children: Children::default(),
        dir: dir.clone(),
        ports: vec![],
        copies: vec![(pki.clone(), GUEST_PKI.into())],
        guest_env: vec![],
    };

    let port = services::free_port()?;
    let db = format!("sqlite://{}", dir.join("guard.db").display());
    c.spawn_server("guard-server (sqlite)", &server, &pki, port, &db)?;
    c.set("GUARD_E2E_SERVER", format!("https://10.0.2.100:{port}"));
    c.set("GUARD_E2E_PKI", GUEST_PKI.into());
    c.set("GUARD_E2E_HOST", VM_HOST.into());

    let mut replicas = String::new();
    if with_postgres {
        match services::start_postgres(&mut c.children, &server, &dir) {
            Ok(url) => {
                let (p1, p2) = (services::free_port()?, services::free_port()?);
                c.spawn_server("guard-server replica 1 (postgres)", &server, &pki, p1, &url)?;
                c.spawn_server("guard-server replica 2 (postgres)", &server, &pki, p2, &url)?;
                replicas = format!("https://10.0.2.100:{p1},https://10.0.2.100:{p2}");
            }
            Err(e) => eprintln!(
                "\n!!!!!!!! xtask: PostgreSQL could not be started ({e:#}); the replica test will be SKIPPED !!!!!!!!\n"
            ),
        }
    }
    c.set("GUARD_E2E_REPLICAS", replicas);
    Ok(c)
}

impl Central {
    fn set(&mut self, key: &str, value: String) {
        self.guest_env.push((key.to_owned(), value));
    }

    fn spawn_server(&mut self, name: &str, server: &Path, pki: &Path, port: u16, db: &str) -> Result<()> {
        let config = services::server_config(pki, port, db, RULES);
        let file_stem = format!("server-{port}");
        let s = Server { name, binary: server, config: &config, dir: &self.dir, file_stem: &file_stem, env: &[] };
        let log = services::spawn_server(&mut self.children, &s)?;
        eprintln!("xtask: {name} on 127.0.0.1:{port} (log {})", log.display());
        self.ports.push(port);
        Ok(())
    }
}
