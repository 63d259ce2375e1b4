//! guard-server: `init-pki` makes the certificates, `serve` runs the approval service.
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use guard_server::config::{ServerConfig, DEFAULT_LISTEN};
use guard_server::pki::{init_pki, PkiAction, PkiSpec};
use guard_server::server;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How long calls in flight may take to finish on SIGTERM/SIGINT.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(name = "guard-server", version, about = "guard's central approval service")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create (or complete) a CA and the certificates of the server, agents and approvers.
    InitPki {
        #[arg(long)]
        dir: PathBuf,
        /// Names the server is reached by (DNS or IP); localhost and 127.0.0.1 are always in.
        #[arg(long = "server-name")]
        server_names: Vec<String>,
        /// A host (agent certificate agent-<H>.crt).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// An approver (certificate approver-<A>.crt).
        #[arg(long = "approver")]
        approvers: Vec<String>,
    },
    /// Run the server.
    Serve {
        /// The configuration file (TOML: listen, tls, approvers and rules, audit sinks).
        #[arg(long, conflicts_with = "pki", required_unless_present = "pki")]
        config: Option<PathBuf>,
        /// Without a config file: TLS from this init-pki directory, SQLite in its parent.
        #[arg(long)]
        pki: Option<PathBuf>,
        /// sqlite:PATH or postgres://... (overrides the config file).
        #[arg(long)]
        database_url: Option<String>,
        /// IP:PORT (overrides the config file).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Manage the web console's users. A user's name is the approver name the policy uses
    /// (eligible approvers, host groups, tree owners). The database is found as `serve` finds it.
    User {
        #[command(subcommand)]
        action: UserCmd,
        // As DatabaseArgs, but global, so that they may follow `user add NAME` (clap does not
        // carry `global` through a flattened struct).
        /// The server's configuration file (its database_url is used).
        #[arg(long, global = true, conflicts_with = "pki")]
        config: Option<PathBuf>,
        /// Without a config file: the init-pki directory (SQLite in its parent).
        #[arg(long, global = true)]
        pki: Option<PathBuf>,
        /// sqlite:PATH or postgres://... (overrides the config file).
        #[arg(long, global = true)]
        database_url: Option<String>,
    },
    /// Client certificates from CSRs (`guardctl enroll`), and their revocation.
    Cert {
        #[command(subcommand)]
        action: CertCmd,
    },
    /// Start a throwaway PostgreSQL cluster, print its URL, stop it on SIGTERM/SIGINT (benchmarks).
    /// Only in builds with the `testing` feature.
    #[cfg(feature = "testing")]
    #[command(hide = true)]
    DevPostgres {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 5432)]
        port: u16,
    },
    /// The console's person in the VM suite: drives Debian's chromium against the console
    /// (`cargo xtask test` starts it). Only in builds with the `testing` feature.
    #[cfg(feature = "testing")]
    #[command(hide = true)]
    BrowserE2e {
        #[arg(long)]
        console: String,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        user: String,
        #[arg(long)]
        password_file: PathBuf,
        #[arg(long)]
        approve_object: String,
        #[arg(long)]
        deny_object: String,
        #[arg(long)]
        deny_reason: String,
        #[arg(long)]
        screenshots: PathBuf,
        /// Seconds to wait for the guest's requests.
        #[arg(long, default_value_t = 1800)]
        wait: u64,
    },
    /// Measure the audit sinks' throughput per format (benchmarks). Only in builds with the
    /// `testing` feature.
    #[cfg(feature = "testing")]
    #[command(hide = true)]
    BenchSinks {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 50_000)]
        records: usize,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Add a user; the password is read from --password-file, else one line from stdin.
    Add {
        name: String,
        /// approver (decides requests), auditor (reads history, exports), admin (auditor +
        /// revokes any grant).
        #[arg(long)]
        role: String,
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// List the users, their roles and whether they are disabled or locked.
    List,
    /// Disable a user (their sessions end at once).
    Disable { name: String },
    /// Enable a disabled user again.
    Enable { name: String },
    /// Set a new password (from --password-file or stdin); the user's sessions end and any
    /// lockout is lifted.
    Passwd {
        name: String,
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CertCmd {
    /// Sign a certificate signing request with the CA: the CSR's CN is the name, the role is
    /// yours to give; the key stays where the CSR was made. Writes <role>-<CN>.crt.
    Sign {
        /// The init-pki directory holding ca.crt and ca.key.
        #[arg(long)]
        pki: PathBuf,
        /// The CSR (PEM), e.g. from `guardctl enroll`.
        #[arg(long)]
        csr: PathBuf,
        #[arg(long, value_enum, default_value = "approver")]
        role: CertRole,
        /// How long the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Where to write the certificate (default: the --pki directory).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Revoke a client certificate: every replica refuses it within seconds.
    Revoke {
        #[command(flatten)]
        db: DatabaseArgs,
        /// The certificate (PEM) to revoke.
        #[arg(long, conflicts_with = "serial", required_unless_present = "serial")]
        cert: Option<PathBuf>,
        /// Or its serial number (hex, as `cert sign` printed it).
        #[arg(long, requires = "name")]
        serial: Option<String>,
        /// With --serial: whose certificate it is (for the record).
        #[arg(long)]
        name: Option<String>,
        /// Why (kept in the audit record and told to whoever presents it).
        #[arg(long)]
        reason: String,
    },
    /// List the revoked certificates.
    Revoked {
        #[command(flatten)]
        db: DatabaseArgs,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CertRole {
    Approver,
    Agent,
}

/// The database a maintenance command (`user`, `cert revoke`) works on, found as `serve` finds
/// it.
#[derive(clap::Args)]
struct DatabaseArgs {
    /// The server's configuration file (its database_url is used).
    #[arg(long, conflicts_with = "pki")]
    config: Option<PathBuf>,
    /// Without a config file: the init-pki directory (SQLite in its parent).
    #[arg(long)]
    pki: Option<PathBuf>,
    /// sqlite:PATH or postgres://... (overrides the config file).
    #[arg(long)]
    database_url: Option<String>,
}

impl DatabaseArgs {
    fn url(&self) -> Result<String> {
        match (&self.config, &self.pki, &self.database_url) {
            (_, _, Some(url)) => Ok(url.clone()),
            (Some(file), _, None) => Ok(ServerConfig::load(file)?.database_url),
            (None, Some(dir), None) => Ok(ServerConfig::from_pki(dir, DEFAULT_LISTEN.parse()?, None).database_url),
            (None, None, None) => anyhow::bail!("give --config FILE, --pki DIR or --database-url URL"),
        }
    }

    async fn open(&self) -> Result<std::sync::Arc<dyn guard_server::store::Store>> {
        guard_server::store::open(&self.url()?, guard_server::fanout::Fanout::default()).await
    }
}

fn cert(action: CertCmd) -> Result<()> {
    use guard_server::revocation::{self, Revoked};
    match action {
        CertCmd::Sign { pki, csr, role, days, out } => {
            let pem = std::fs::read_to_string(&csr).with_context(|| format!("cannot read {}", csr.display()))?;
            let role = match role {
                CertRole::Approver => guard_server::pki::ROLE_APPROVER,
                CertRole::Agent => guard_server::pki::ROLE_AGENT,
            };
            let out = out.unwrap_or_else(|| pki.clone());
            let signed = guard_server::enroll::sign_csr(&pki, &pem, role, days, &out)
                .with_context(|| format!("CSR {}", csr.display()))?;
            println!("created {} (CN {}, serial {})", signed.path.display(), signed.name, signed.serial);
            Ok(())
        }
        CertCmd::Revoke { db, cert, serial, name, reason } => {
            let (serial, name) = match (cert, serial) {
                (Some(file), _) => {
                    let pem =
                        std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
                    revocation::serial_and_name(&pem).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?
                }
                (None, Some(serial)) => {
                    let serial = serial.trim_start_matches("0x").replace(':', "").to_ascii_lowercase();
                    if serial.is_empty() || !serial.bytes().all(|b| b.is_ascii_hexdigit()) {
                        anyhow::bail!("--serial {serial:?}: give the serial number in hex");
                    }
                    (serial, name.unwrap_or_default())
                }
                (None, None) => anyhow::bail!("give --cert FILE or --serial HEX --name NAME"),
            };
            if reason.trim().is_empty() {
                anyhow::bail!("--reason: say why (it goes in the audit record)");
            }
            let by = format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into()));
            let revoked = Revoked { serial: serial.clone(), name: name.clone(), reason, revoked_by: by, revoked_ms: 0 };
            let new = runtime()?.block_on(async {
                Ok::<_, anyhow::Error>(revocation::revoke(db.open().await?.as_ref(), revoked).await?)
            })?;
            if new {
                println!(
                    "revoked certificate {serial} of {name:?}: refused by every replica within {:?}",
                    revocation::REFRESH_EVERY
                );
            } else {
                println!("certificate {serial} was revoked already");
            }
            Ok(())
        }
        CertCmd::Revoked { db } => {
            let list = runtime()?
                .block_on(async { Ok::<_, anyhow::Error>(db.open().await?.revoked_certificates().await?) })?;
            for r in list {
                println!(
                    "{}  {}  {}  by {}: {}",
                    guard_api::Timestamp::from_unix_ms(r.revoked_ms),
                    r.serial,
                    r.name,
                    r.revoked_by,
                    r.reason
                );
            }
            Ok(())
        }
    }
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Cmd::InitPki { dir, server_names, hosts, approvers } => {
            for action in init_pki(&dir, &PkiSpec { server_names, hosts, approvers })? {
                match action {
                    PkiAction::Created(p) => println!("created {}", p.display()),
                    PkiAction::Kept(p) => println!("kept    {}", p.display()),
                }
            }
            Ok(())
        }
        Cmd::Cert { action } => cert(action),
        Cmd::Serve { config, pki, database_url, listen } => {
            let mut config = match (config, pki) {
                (Some(file), _) => ServerConfig::load(&file)?,
                (None, Some(dir)) => {
                    let listen = listen.unwrap_or(DEFAULT_LISTEN.parse()?);
                    ServerConfig::from_pki(&dir, listen, database_url.clone())
                }
                (None, None) => anyhow::bail!("give --config FILE or --pki DIR"),
            };
            if let Some(url) = database_url {
                config.database_url = url;
            }
            if let Some(listen) = listen {
                config.listen = listen;
            }
            runtime()?.block_on(serve(config))
        }
        Cmd::User { action, config, pki, database_url } => {
            let db = DatabaseArgs { config, pki, database_url };
            runtime()?.block_on(user(&db.url()?, action))
        }
        #[cfg(feature = "testing")]
        Cmd::DevPostgres { dir, port } => {
            use guard_server::testing::pg::PgCluster;
            let runtime = runtime()?;
            // Before the URL is printed: whoever reads it may send SIGTERM at once.
            let stop = runtime.block_on(async { StopSignal::install() })?;
            let mut cluster = PgCluster::start(&dir, port)?;
            println!("{}", cluster.url());
            std::io::stdout().flush()?;
            runtime.block_on(stop.wait());
            cluster.stop()
        }
        #[cfg(feature = "testing")]
        Cmd::BrowserE2e {
            console,
            cert,
            user,
            password_file,
            approve_object,
            deny_object,
            deny_reason,
            screenshots,
            wait,
        } => {
            let password = std::fs::read_to_string(&password_file)
                .with_context(|| format!("reading {}", password_file.display()))?
                .trim_end_matches('\n')
                .to_string();
            let driver = guard_server::testing::console_e2e::Driver {
                console,
                cert,
                user,
                password,
                approve_object,
                deny_object,
                deny_reason,
                screenshots,
                wait: Duration::from_secs(wait),
            };
            runtime()?.block_on(driver.run())?;
            println!("browser-e2e: OK");
            Ok(())
        }
        #[cfg(feature = "testing")]
        Cmd::BenchSinks { dir, records } => {
            print!("{}", runtime()?.block_on(guard_server::testing::sink_bench::run(&dir, records))?);
            Ok(())
        }
    }
}

/// The password of `user add` / `user passwd`: the file's first line, else stdin's.
fn read_password(file: Option<&std::path::Path>) -> Result<String> {
    let text = match file {
        Some(f) => std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?,
        None => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).context("reading the password from stdin")?;
            line
        }
    };
    Ok(text.lines().next().unwrap_or_default().to_string())
}

async fn user(url: &str, action: UserCmd) -> Result<()> {
    use guard_server::console::accounts::{self, Role};
    use guard_server::lifecycle::now_ms;
    let store = guard_server::store::open(url, guard_server::fanout::Fanout::default()).await?;
    let store = store.as_ref();
    match action {
        UserCmd::Add { name, role, password_file } => {
            let role = Role::parse(&role).with_context(|| format!("role {role:?}: one of {}", Role::NAMES))?;
            let password = read_password(password_file.as_deref())?;
            accounts::add_user(store, &name, role, &password, now_ms()).await?;
            println!("added {name} ({})", role.label());
        }
        UserCmd::List => {
            let now = now_ms();
            for u in store.users().await? {
                let mut notes = Vec::new();
                if u.disabled {
                    notes.push("disabled".to_string());
                }
                if u.locked_until_ms > now {
                    notes.push(format!("locked until {}", guard_api::Timestamp::from_unix_ms(u.locked_until_ms)));
                }
                println!("{}\t{}\t{}", u.name, u.role, notes.join(", "));
            }
        }
        UserCmd::Disable { name } => {
            anyhow::ensure!(store.set_user_disabled(&name, true).await?, "no user named {name}");
            println!("disabled {name}");
        }
        UserCmd::Enable { name } => {
            anyhow::ensure!(store.set_user_disabled(&name, false).await?, "no user named {name}");
            println!("enabled {name}");
        }
        UserCmd::Passwd { name, password_file } => {
            let password = read_password(password_file.as_deref())?;
            accounts::change_password(store, &name, &password, now_ms()).await?;
            println!("changed the password of {name}");
        }
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

async fn serve(config: ServerConfig) -> Result<()> {
    // Handlers first: a SIGTERM sent as soon as the ready line is read must drain, not kill.
    let stop = StopSignal::install()?;
    let handle = server::start(&config).await?;
    // Tests and scripts wait for this exact line.
    println!("guard-server listening on {}", handle.addr());
    if let Some((addr, origin)) = handle.console() {
        println!("guard-server console on {origin} (listening on {addr})");
    }
    std::io::stdout().flush()?;
    stop.wait().await;
    tracing::info!("stopping: draining for at most {DRAIN_DEADLINE:?}");
    handle.shutdown(DRAIN_DEADLINE).await
}

/// SIGTERM or SIGINT, caught from the moment it is installed.
struct StopSignal {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignal {
    fn install() -> Result<StopSignal> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignal {
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
