//! guard-agent's command line: the arguments, and which library function each command calls.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use guard_agent::{
    config,
    hold::remote::ServerConfig,
    host::{admin, daemon, health, reasons, registered, render, run, spawn},
    limits::{ADMIN_SOCKET, DEFAULT_AUDIT_LOG, DEFAULT_CONFIG, MAX_TREE_TASKS},
    policy,
};
use guard_api::StatedReason;
use std::path::PathBuf;

/// `--server` and its credentials for `run` (the daemon reads them from its config file).
#[derive(clap::Args, Debug, Default)]
struct ServerArgs {
    /// Central approval service, e.g. https://guard.example:7443 (holds are then decided there).
    #[arg(long, env = "GUARD_SERVER")]
    server: Option<String>,
    /// CA certificate that signed the server's certificate (PEM).
    #[arg(long, env = "GUARD_SERVER_CA", requires = "server")]
    server_ca: Option<PathBuf>,
    /// This host's agent certificate (PEM); the server takes the host name from it.
    #[arg(long, env = "GUARD_AGENT_CERT", requires = "server")]
    agent_cert: Option<PathBuf>,
    /// The agent certificate's private key (PEM).
    #[arg(long, env = "GUARD_AGENT_KEY", requires = "server")]
    agent_key: Option<PathBuf>,
}

impl ServerArgs {
    fn into_config(self) -> Result<Option<ServerConfig>> {
        let Some(url) = self.server else { return Ok(None) };
        let need =
            |v: Option<PathBuf>, flag: &str| v.with_context(|| format!("--server needs {flag} (or its env var)"));
        Ok(Some(ServerConfig {
            url,
            ca: need(self.server_ca, "--server-ca FILE")?,
            cert: need(self.agent_cert, "--agent-cert FILE")?,
            key: need(self.agent_key, "--agent-key FILE")?,
        }))
    }
}

#[derive(Parser)]
#[command(name = "guard-agent", version, about = "guard's host agent: kernel enforcement for AI agents' process trees")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Watch CMD and every descendant under a policy; exit with CMD's status.
    Run {
        /// The policy file; with --daemon, the name of a policy in the daemon's config.
        #[arg(long, required_unless_present = "daemon")]
        policy: Option<PathBuf>,
        /// Ask the running daemon to watch CMD (no programs are loaded here).
        #[arg(long)]
        daemon: bool,
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long, default_value = DEFAULT_AUDIT_LOG)]
        audit_log: PathBuf,
        #[arg(long, default_value = ADMIN_SOCKET)]
        admin_socket: PathBuf,
        /// Forks in the tree beyond this many tasks fail with EAGAIN (so none runs unwatched).
        #[arg(long, default_value_t = MAX_TREE_TASKS)]
        max_tree_tasks: u64,
        /// Run CMD as this user (a name or uid; `root` to keep root). Default: the invoking
        /// user (SUDO_UID/SUDO_GID under sudo), so that a tree is root only when asked.
        #[arg(long)]
        user: Option<String>,
        #[arg(required = true, last = true)]
        cmd: Vec<String>,
    },
    /// The long-running host service.
    Daemon {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Ask the daemon to watch a running process and all its descendants.
    Watch {
        #[arg(long)]
        pid: u32,
        /// A policy name from the daemon's config (default: its registration_policy).
        #[arg(long)]
        policy: Option<String>,
        #[arg(long, default_value = ADMIN_SOCKET)]
        socket: PathBuf,
    },
    /// From inside a watched tree: say why the agent is about to act (shown on its holds and
    /// kept in its records; never decides anything).
    Reason {
        #[arg(long, default_value = "")]
        tool: String,
        #[arg(long, default_value = "")]
        call_id: String,
        #[arg(long, default_value = "")]
        session: String,
        /// Default: $GUARD_REASON_SOCKET, else /run/guard/reason.sock.
        #[arg(long)]
        socket: Option<PathBuf>,
        text: String,
    },
    /// Make the daemon re-read its configuration (as SIGHUP does).
    Reload {
        #[arg(long, default_value = ADMIN_SOCKET)]
        socket: PathBuf,
    },
    /// Check a daemon configuration (and its policy files) without loading anything.
    CheckConfig { file: PathBuf },
    /// List holds waiting for a decision.
    Pending {
        #[arg(long, default_value = ADMIN_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Let a held operation go ahead.
    Approve {
        id: String,
        #[arg(long)]
        comment: Option<String>,
        #[arg(long, default_value = ADMIN_SOCKET)]
        socket: PathBuf,
    },
    /// Make a held operation fail with EPERM.
    Deny {
        id: String,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long, default_value = ADMIN_SOCKET)]
        socket: PathBuf,
    },
    /// Whether the running agent enforces (programs attached, events read, server reachable:
    /// checked in the kernel and on the network), and what it watches and holds.
    Status {
        #[arg(long, default_value = ADMIN_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
        /// For monitoring: print one line and exit 0 if enforcing, 1 if degraded, 2 if no
        /// agent answers on the socket.
        #[arg(long, conflicts_with = "json")]
        check: bool,
    },
    /// Say whether this kernel can enforce, and exactly what is missing.
    Doctor,
    /// Check a policy file without loading anything.
    CheckPolicy { file: PathBuf },
    /// Internal: the blocked start of `run`'s command (waits on fd 3, then execs CMD).
    #[command(hide = true)]
    ExecReleased {
        #[arg(required = true, last = true)]
        cmd: Vec<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Cmd::ExecReleased { cmd } = &cli.cmd {
        std::process::exit(spawn::exec_when_released(cmd));
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("GUARD_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let code = match dispatch(cli.cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("guard-agent: {e:#}");
            2
        }
    };
    std::process::exit(code);
}

fn client_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn call(socket: &std::path::Path, req: admin::Request) -> Result<serde_json::Value> {
    let resp = client_runtime()?.block_on(admin::call(socket, &req))?;
    if !resp.ok {
        bail!("{}", resp.error.unwrap_or_else(|| "the agent refused".into()));
    }
    Ok(resp.data.unwrap_or_default())
}

fn dispatch(cmd: Cmd) -> Result<i32> {
    match cmd {
        Cmd::Run { policy, daemon: true, admin_socket, cmd, .. } => {
            let name = policy.map(|p| p.to_string_lossy().into_owned());
            registered::run_registered(&admin_socket, name, None, &cmd)
        }
        Cmd::Run { policy, daemon: false, server, audit_log, admin_socket, max_tree_tasks, user, cmd } => {
            let server = server.into_config()?;
            let policy = policy.expect("required without --daemon");
            let user = spawn::RunAs::resolve(user.as_deref())?;
            run::run(&policy, &audit_log, &admin_socket, max_tree_tasks, server, user, &cmd)
        }
        Cmd::Daemon { config } => daemon::daemon(&config),
        Cmd::Watch { pid, policy, socket } => {
            let data = call(&socket, admin::Request::Register { pid, policy, how: "watch --pid".into() })?;
            println!(
                "watching pid {pid}: tree {}, policy {}, {} tasks",
                data["tree_id"], data["policy"], data["tasks"]
            );
            Ok(0)
        }
        Cmd::Reason { tool, call_id, session, socket, text } => {
            let r = StatedReason { tool, call_id, reason: text, session };
            let tree = reasons::send(socket.as_deref(), &r)?;
            println!("reason recorded for tree {tree}");
            Ok(0)
        }
        Cmd::Reload { socket } => {
            let data = call(&socket, admin::Request::Reload)?;
            println!("reloaded: {data}");
            Ok(0)
        }
        Cmd::CheckConfig { file } => {
            let c = config::Config::load(&file)?;
            println!("{}: ok ({} policies, {} selectors)", file.display(), c.policies.len(), c.selectors.len());
            for (rank, s) in c.selectors.iter().enumerate() {
                println!("  rank {rank}: {} -> policy {}", s.describe(), s.policy);
            }
            Ok(0)
        }
        Cmd::Pending { socket, json } => {
            let data = call(&socket, admin::Request::Pending)?;
            if json {
                println!("{data}");
            } else {
                render::print_pending(&data);
            }
            Ok(0)
        }
        Cmd::Approve { id, comment, socket } => {
            call(&socket, admin::Request::Approve { id: id.clone(), comment })?;
            println!("approved {id}");
            Ok(0)
        }
        Cmd::Deny { id, reason, socket } => {
            call(&socket, admin::Request::Deny { id: id.clone(), reason })?;
            println!("denied {id}");
            Ok(0)
        }
        Cmd::Status { socket, json, check } => {
            let data = match call(&socket, admin::Request::Status) {
                Ok(data) => data,
                Err(e) if check => {
                    println!("not running: {e:#}");
                    return Ok(2);
                }
                Err(e) => return Err(e),
            };
            let line = health::summary(&data);
            if check {
                println!("{line}");
            } else if json {
                println!("{data}");
            } else if data["mode"] == "daemon" {
                println!("{line}");
                render::print_status(&data);
            } else {
                println!("{line}");
                for (k, v) in data.as_object().into_iter().flatten().filter(|(k, _)| *k != "health") {
                    println!("{k:>16}: {v}");
                }
            }
            // Only --check answers with the state; a plain status succeeds when it could be read.
            Ok(if check && data["health"]["state"] != "enforcing" { 1 } else { 0 })
        }
        Cmd::Doctor => Ok(run::doctor()),
        Cmd::ExecReleased { cmd } => Ok(spawn::exec_when_released(&cmd)),
        Cmd::CheckPolicy { file } => {
            let p = policy::Policy::load(&file)?;
            println!(
                "{}: ok ({} rules, default {}, ask_timeout {:?})",
                file.display(),
                p.rules.len(),
                policy::action_name(p.default),
                p.ask_timeout
            );
            Ok(0)
        }
    }
}
