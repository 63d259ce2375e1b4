//! Stated reasons: a process inside a watched tree tells guard why it is about to act (tool,
//! call id, one line, session). The reason is shown on the tree's holds and kept in its
//! records; it never decides anything.
//!
//! The socket is open to every local process (mode 0666), and who may write what is decided
//! by the kernel's own answer to "who is this": the peer's pid from SO_PEERCRED must be a task
//! in a watched tree, and the reason is bound to that tree. A process outside every tree is
//! refused; a process can never set another tree's reason.

use crate::{
    agent::Shared,
    limits::{REASON_SOCKET, REASON_SOCKET_ENV},
    tree::proc,
};
use anyhow::{bail, Context, Result};
use guard_api::StatedReason;
use serde::Deserialize;
use std::path::Path;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::UnixListener,
};

/// A reason as a client sends it; fields it does not know are ignored.
#[derive(Deserialize)]
struct Incoming {
    #[serde(default)]
    tool: String,
    #[serde(default)]
    call_id: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    session: String,
}

const MAX_FIELD: usize = 256;
const MAX_REASON: usize = 1024;

/// Keeps what people can read: one line, bounded, no control characters.
fn clean(s: &str, max: usize) -> String {
    let s: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let mut s = s.trim().to_string();
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// The tree (root pid) a peer process belongs to, if it is watched.
fn tree_of(state: &Shared, pid: u32) -> Option<u32> {
    if let Some(root) = state.lock().tree_root(pid) {
        return Some(root);
    }
    // The thread group leader may be gone while other threads live.
    let tids = proc::tids(pid);
    let st = state.lock();
    tids.into_iter().find_map(|t| st.tree_root(t))
}

pub async fn serve(listener: UnixListener, state: Shared) {
    // Open to every tree: bounded, so that a tree cannot exhaust the daemon's descriptors by
    // holding connections open (more wait in the listen backlog; a silent one is dropped).
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let Ok((stream, _)) = listener.accept().await else { continue };
        let state = state.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let pid = stream.peer_cred().ok().and_then(|c| c.pid());
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(r.take(8 * 1024));
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), reader.read_line(&mut line)).await;
            let answer = match read {
                Err(_) | Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => handle(&state, pid, &line),
            };
            let out = match answer {
                Ok(root) => format!("{{\"ok\":true,\"tree\":{root}}}\n"),
                Err(e) => format!("{}\n", serde_json::json!({"ok": false, "error": format!("{e:#}")})),
            };
            w.write_all(out.as_bytes()).await.ok();
        });
    }
}

fn handle(state: &Shared, pid: Option<i32>, line: &str) -> Result<u32> {
    let Some(pid) = pid.filter(|p| *p > 0) else { bail!("refused: the caller's pid is unknown") };
    let Some(root) = tree_of(state, pid as u32) else {
        tracing::warn!("reason from pid {pid} refused: not in a watched tree");
        bail!("refused: pid {pid} is not in a watched tree (only a watched agent can state its reasons)");
    };
    let r: Incoming =
        serde_json::from_str(line).context("bad reason: expected JSON {tool, call_id, reason, session}")?;
    let r = StatedReason {
        tool: clean(&r.tool, MAX_FIELD),
        call_id: clean(&r.call_id, MAX_FIELD),
        reason: clean(&r.reason, MAX_REASON),
        session: clean(&r.session, MAX_FIELD),
    };
    tracing::info!("tree {root}: pid {pid} states tool={:?} call_id={:?}: {}", r.tool, r.call_id, r.reason);
    state.lock().trees.reasons.insert(root, r);
    Ok(root)
}

/// `guard-agent reason`: sends one reason for the caller's own tree.
pub fn send(socket: Option<&Path>, r: &StatedReason) -> Result<u32> {
    let path = match socket {
        Some(p) => p.to_path_buf(),
        None => std::env::var_os(REASON_SOCKET_ENV).map(Into::into).unwrap_or_else(|| REASON_SOCKET.into()),
    };
    let mut s = std::os::unix::net::UnixStream::connect(&path)
        .with_context(|| format!("cannot reach guard's reason socket {}", path.display()))?;
    use std::io::{BufRead, Write};
    let mut line = serde_json::to_string(r)?;
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut answer = String::new();
    std::io::BufReader::new(s).read_line(&mut answer)?;
    let v: serde_json::Value = serde_json::from_str(&answer).context("the daemon's answer is not JSON")?;
    if v["ok"] != true {
        bail!("{}", v["error"].as_str().unwrap_or("refused"));
    }
    Ok(v["tree"].as_u64().unwrap_or(0) as u32)
}
