//! The admin socket: `guard-agent pending|approve|deny|status` talk to the running agent here.
//!
//! One JSON request per connection, one JSON answer. Only root may connect (mode 0600 plus a
//! check of the peer's credentials), and never a process inside a watched tree: an agent must
//! not approve its own holds, even when it runs as root.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Pending,
    Approve {
        id: String,
        comment: Option<String>,
    },
    Deny {
        id: String,
        reason: Option<String>,
    },
    Status,
    /// Daemon: watch a running process and its descendants as a new tree (`run --daemon`,
    /// `watch --pid`). `how` says which command asked.
    Register {
        pid: u32,
        policy: Option<String>,
        how: String,
    },
    /// Daemon: re-read the configuration now.
    Reload,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    pub error: Option<String>,
    pub data: Option<serde_json::Value>,
}

impl Response {
    pub fn ok(data: serde_json::Value) -> Self {
        Response { ok: true, error: None, data: Some(data) }
    }
    pub fn err(msg: impl Into<String>) -> Self {
        Response { ok: false, error: Some(msg.into()), data: None }
    }
}

/// Who is asking, from SO_PEERCRED.
pub struct Peer {
    pub uid: u32,
    pub pid: Option<i32>,
}

/// The refusal for a caller that is not root, or that is inside a watched tree (an agent
/// must not approve its own holds, even as root); None when `peer` may talk to `server`.
/// `may_not` names what a watched caller could otherwise do.
///
/// The kernel already refuses a connect to the admin socket from any watched task (the tamper
/// baseline, decided by the connecting task at connect time, with no pid to race). This is the
/// second line, and it fails closed: a caller whose pid is unknown (another pid namespace) or
/// gone (it connected, then exited: the fork-connect-exit trick), or any of whose threads is
/// watched, is refused.
pub fn refuse(peer: &Peer, server: &str, may_not: &str, is_watched: impl Fn(u32) -> bool) -> Option<Response> {
    if peer.uid != 0 {
        return Some(Response::err(format!("refused: only root may talk to {server} (caller uid {})", peer.uid)));
    }
    let Some(pid) = peer.pid.filter(|p| *p > 0) else {
        return Some(Response::err(format!("refused: {server} cannot identify the caller (no pid)")));
    };
    let tids = threads(pid);
    if tids.is_empty() {
        return Some(Response::err(format!(
            "refused: the caller (pid {pid}) is gone; {server} answers only a caller it can check"
        )));
    }
    (is_watched(pid as u32) || tids.into_iter().any(&is_watched)).then(|| {
        Response::err(format!(
            "refused: the caller (pid {pid}) is inside a watched tree; a watched agent cannot {may_not}"
        ))
    })
}

/// The thread ids of process `pid` (empty if it is gone).
fn threads(pid: i32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.flatten().filter_map(|t| t.file_name().to_string_lossy().parse().ok()).collect())
        .unwrap_or_default()
}

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 16;
/// A client must send its request within this time, or is dropped.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves requests; `handle` answers each (it is given the peer for the checks).
pub async fn serve<F>(listener: UnixListener, handle: F)
where
    F: Fn(&Peer, Request) -> Response + Send + Sync + Clone + 'static,
{
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let peer = match stream.peer_cred() {
                Ok(c) => Peer { uid: c.uid(), pid: c.pid() },
                Err(_) => return,
            };
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(r.take_limit());
            let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await;
            let Ok(read) = read else { return };
            let resp = match read {
                Ok(0) => return,
                Ok(_) => match serde_json::from_str::<Request>(&line) {
                    Ok(req) => handle(&peer, req),
                    Err(e) => Response::err(format!("bad request: {e}")),
                },
                Err(e) => Response::err(format!("cannot read the request: {e}")),
            };
            let mut out = serde_json::to_string(&resp).unwrap_or_else(|_| "{\"ok\":false}".into());
            out.push('\n');
            w.write_all(out.as_bytes()).await.ok();
        });
    }
}

/// Requests longer than this are refused (read stops there and the JSON fails to parse).
const MAX_REQUEST: u64 = 64 * 1024;

trait TakeLimit {
    fn take_limit(self) -> tokio::io::Take<Self>
    where
        Self: Sized;
}

impl<T: tokio::io::AsyncRead> TakeLimit for T {
    fn take_limit(self) -> tokio::io::Take<Self> {
        tokio::io::AsyncReadExt::take(self, MAX_REQUEST)
    }
}

/// Sends one request to the agent at `path` and returns its answer.
pub async fn call(path: &Path, req: &Request) -> Result<Response> {
    let mut s = UnixStream::connect(path)
        .await
        .with_context(|| format!("cannot reach the agent at {} (is it running, and are you root?)", path.display()))?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    s.write_all(line.as_bytes()).await?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).await?;
    if answer.is_empty() {
        bail!("the agent closed the connection without answering");
    }
    serde_json::from_str(&answer).context("the agent's answer is not valid JSON")
}
