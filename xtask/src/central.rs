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

/// The web console of the SQLite server, for the browser driver (and a person, in the demo).
pub struct Console {
    /// `https://localhost:PORT` (passkeys need a host name; the server certificate names it).
    pub url: String,
    /// The server's certificate, which the console presents.
    pub cert: PathBuf,
    /// An approver's console account.
    pub user: &'static str,
    pub password_file: PathBuf,
}

/// The console user: alice, an approver (rooty owns the VM's root trees, not alice).
const CONSOLE_USER: &str = "alice";
/// Approvals of the VM test's rule "console" need a passkey; no other rule does (guardctl
/// approves the rest of the suite's requests with its certificate).
const CONSOLE_CONFIG: &str = "\n[passkeys]\nrequired = \"rules\"\nrules = [\"console\"]\n";

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
    /// The SQLite server's web console.
    pub console: Console,
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
    let db = format!("sqlite://{}", dir.join("guard.db").display());
    let console_port = services::free_port()?;
    let console = Console {
        url: format!("https://localhost:{console_port}"),
        cert: pki.join("server.crt"),
        user: CONSOLE_USER,
        password_file: dir.join("console-password"),
    };
    add_console_user(&server, &db, &console)?;
    let mut c = Central {
        children: Children::default(),
        dir: dir.clone(),
        ports: vec![],
        copies: vec![(pki.clone(), GUEST_PKI.into())],
        guest_env: vec![],
        console,
    };

    let port = services::free_port()?;
    let console_config = format!(
        "{CONSOLE_CONFIG}[console]\nlisten = \"127.0.0.1:{console_port}\"\npublic_url = \"{}\"\n",
        c.console.url
    );
    c.spawn_server("guard-server (sqlite)", &server, &pki, port, &db, &console_config)?;
    eprintln!(
        "xtask: web console on {} (user {}, password in {})",
        c.console.url,
        CONSOLE_USER,
        c.console.password_file.display()
    );
    c.set("GUARD_E2E_SERVER", format!("https://10.0.2.100:{port}"));
    c.set("GUARD_E2E_PKI", GUEST_PKI.into());
    c.set("GUARD_E2E_HOST", VM_HOST.into());

    let mut replicas = String::new();
    if with_postgres {
        match services::start_postgres(&mut c.children, &server, &dir) {
            Ok(url) => {
                let (p1, p2) = (services::free_port()?, services::free_port()?);
                c.spawn_server("guard-server replica 1 (postgres)", &server, &pki, p1, &url, "")?;
                c.spawn_server("guard-server replica 2 (postgres)", &server, &pki, p2, &url, "")?;
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

    /// Starts a server on `db` with the suite's rules and `extra` config.
    fn spawn_server(&mut self, name: &str, server: &Path, pki: &Path, port: u16, db: &str, extra: &str) -> Result<()> {
        let config = services::server_config(pki, port, db, &format!("{RULES}{extra}"));
        let file_stem = format!("server-{port}");
        let s = Server { name, binary: server, config: &config, dir: &self.dir, file_stem: &file_stem, env: &[] };
        let log = services::spawn_server(&mut self.children, &s)?;
        eprintln!("xtask: {name} on 127.0.0.1:{port} (log {})", log.display());
        self.ports.push(port);
        Ok(())
    }
}

/// A fresh random password for the console user, written 0600, and the user added to `db`.
fn add_console_user(server: &Path, db: &str, console: &Console) -> Result<()> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut bytes = [0u8; 12];
    fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let password: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&console.password_file)?;
    std::io::Write::write_all(&mut f, format!("{password}\n").as_bytes())?;
    let out = std::process::Command::new(server)
        .args(["user", "add", console.user, "--role", "approver", "--database-url", db, "--password-file"])
        .arg(&console.password_file)
        .output()
        .context("running guard-server user add")?;
    if !out.status.success() {
        anyhow::bail!("guard-server user add {}: {}", console.user, String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
