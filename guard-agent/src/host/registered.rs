//! `guard-agent run --daemon -- CMD`: a client of the running daemon, which watches CMD; no
//! programs are loaded here.

use super::{
    admin::{self, Request},
    spawn::{spawn_blocked, wait_child},
};
use crate::limits::{REASON_SOCKET, REASON_SOCKET_ENV};
use anyhow::Result;
use nix::sys::signal::Signal;
use std::path::Path;

/// `guard-agent run --daemon -- CMD`: the running daemon watches CMD (no programs loaded
/// here). CMD is started blocked, registered, then released; this exits with its status.
pub fn run_registered(
    socket: &Path,
    policy: Option<String>,
    reason_socket: Option<&Path>,
    cmd: &[String],
) -> Result<i32> {
    // CMD learns where to state its reasons from its environment: the socket given here, else
    // the one this process was told, else the default.
    let reason_socket: std::ffi::OsString = match reason_socket {
        Some(p) => p.as_os_str().to_owned(),
        None => std::env::var_os(REASON_SOCKET_ENV).unwrap_or_else(|| REASON_SOCKET.into()),
    };
    let blocked = spawn_blocked(cmd, &[(REASON_SOCKET_ENV, reason_socket.as_os_str())])?;
    let child = blocked.pid;
    let pid = child.as_raw() as u32;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let req = Request::Register { pid, policy, how: "run --daemon".into() };
    let resp = rt.block_on(admin::call(socket, &req));
    let resp = match resp {
        Ok(r) if r.ok => r,
        Ok(r) => {
            nix::sys::signal::kill(child, Signal::SIGKILL).ok();
            anyhow::bail!("the daemon refused: {}", r.error.unwrap_or_default());
        }
        Err(e) => {
            nix::sys::signal::kill(child, Signal::SIGKILL).ok();
            return Err(e);
        }
    };
    let data = resp.data.unwrap_or_default();
    tracing::info!("the daemon watches pid {pid} (tree {}, policy {})", data["tree_id"], data["policy"]);
    blocked.release()?;
    let code = rt.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let waiter = tokio::task::spawn_blocking(move || wait_child(child));
        tokio::pin!(waiter);
        let (mut int, mut term) = (signal(SignalKind::interrupt()).ok(), signal(SignalKind::terminate()).ok());
        loop {
            tokio::select! {
                r = &mut waiter => return r.unwrap_or(1),
                _ = async { match int.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending::<()>().await } } => {
                    nix::sys::signal::kill(child, Signal::SIGINT).ok();
                }
                _ = async { match term.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending::<()>().await } } => {
                    nix::sys::signal::kill(child, Signal::SIGTERM).ok();
                }
            }
        }
    });
    Ok(code)
}
