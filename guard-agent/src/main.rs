//! guard-agent: loads guard's LSM programs, watches AI agents' process trees and decides their
//! privileged operations; holds wait for a person's decision.

mod admin;
mod agent;
mod audit;
mod btf;
mod config;
mod daemon;
mod events;
mod holds;
mod kernel;
mod policy;
mod reasons;
mod remote;
mod run;
mod trees;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

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
        server: remote::ServerArgs,
        #[arg(long, default_value = "/var/log/guard/audit.jsonl")]
        audit_log: PathBuf,
        #[arg(long, default_value = admin::DEFAULT_SOCKET)]
        admin_socket: PathBuf,
        /// Forks in the tree beyond this many tasks fail with EAGAIN (so none runs unwatched).
        #[arg(long, default_value_t = kernel::MAX_TREE_TASKS)]
        max_tree_tasks: u64,
        #[arg(required = true, last = true)]
        cmd: Vec<String>,
    },
    /// The long-running host service.
    Daemon {
        #[arg(long, default_value = config::DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Ask the daemon to watch a running process and all its descendants.
    Watch {
        #[arg(long)]
        pid: u32,
        /// A policy name from the daemon's config (default: its registration_policy).
        #[arg(long)]
        policy: Option<String>,
        #[arg(long, default_value = admin::DEFAULT_SOCKET)]
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
        #[arg(long, default_value = admin::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Check a daemon configuration (and its policy files) without loading anything.
    CheckConfig { file: PathBuf },
    /// List holds waiting for a decision.
    Pending {
        #[arg(long, default_value = admin::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Let a held operation go ahead.
    Approve {
        id: String,
        #[arg(long)]
        comment: Option<String>,
        #[arg(long, default_value = admin::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Make a held operation fail with EPERM.
    Deny {
        id: String,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long, default_value = admin::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// What the running agent watches and holds.
    Status {
        #[arg(long, default_value = admin::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Say whether this kernel can enforce, and exactly what is missing.
    Doctor,
    /// Check a policy file without loading anything.
    CheckPolicy { file: PathBuf },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("GUARD_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
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
            daemon::run_registered(&admin_socket, name, None, &cmd)
        }
        Cmd::Run { policy, daemon: false, server, audit_log, admin_socket, max_tree_tasks, cmd } => {
            let server = server.into_config()?;
            let policy = policy.expect("required without --daemon");
            run::run(&policy, &audit_log, &admin_socket, max_tree_tasks, server, &cmd)
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
            let r = holds::StatedReason { tool, call_id, reason: text, session };
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
                print_pending(&data);
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
        Cmd::Status { socket, json } => {
            let data = call(&socket, admin::Request::Status)?;
            if json {
                println!("{data}");
            } else if data["mode"] == "daemon" {
                daemon::print_status(&data);
            } else {
                for (k, v) in data.as_object().into_iter().flatten() {
                    println!("{k:>16}: {v}");
                }
            }
            Ok(0)
        }
        Cmd::Doctor => Ok(run::doctor()),
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

fn print_pending(data: &serde_json::Value) {
    let Some(list) = data.as_array() else { return };
    if list.is_empty() {
        println!("no holds waiting");
        return;
    }
    println!("{:<6} {:<20} {:<8} {:<24} {:<6} OBJECT", "ID", "HOOK", "PID", "RULE", "HELD");
    for h in list {
        let s = |k: &str| {
            h.get(k).map(|v| v.as_str().map(String::from).unwrap_or_else(|| v.to_string())).unwrap_or_default()
        };
        println!(
            "{:<6} {:<20} {:<8} {:<24} {:<6} {}",
            s("id"),
            s("hook"),
            s("pid"),
            s("rule"),
            format!("{}s", s("held_secs")),
            s("object")
        );
        println!("       by {} {}", s("exe"), h.get("argv").map(|a| a.to_string()).unwrap_or_default());
    }
}
