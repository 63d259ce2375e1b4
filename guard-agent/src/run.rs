//! `guard-agent run`: watch one command's tree for its lifetime, and `doctor`.

use crate::{
    admin::{self, Peer, Request, Response},
    agent::{self, Shared, State},
    audit::AuditLog,
    events,
    holds::{Decision, DecisionSource, HoldTable, LocalDecisions},
    kernel::{self, Kernel},
    policy::Policy,
    remote,
};
use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use nix::{
    sys::{
        signal::Signal,
        wait::{waitpid, WaitStatus},
    },
    unistd::{fork, ForkResult, Pid},
};
use serde_json::json;
use std::{
    collections::HashMap,
    ffi::CString,
    io::{Read, Write},
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};
use tokio::io::unix::AsyncFd;

/// The policy id of the single tree `run` watches.
const RUN_POLICY: u8 = 0;

pub fn doctor() -> i32 {
    println!("guard-agent doctor: can this kernel enforce?");
    let problems = kernel::explain_kernel();
    for p in &problems {
        println!("  MISSING: {p}");
    }
    match Kernel::load(kernel::MAX_TREE_TASKS) {
        Ok(_) => {
            println!("  ok: every LSM program loaded and attached; this kernel can enforce");
            0
        }
        Err(e) => {
            println!("  CANNOT ENFORCE: {e:#}");
            1
        }
    }
}

/// Starts CMD stopped on a pipe, so it is watched before its first instruction runs.
pub(crate) fn spawn_blocked(cmd: &[String]) -> Result<(Pid, std::fs::File)> {
    let args: Vec<CString> = cmd
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .context("an argument contains a NUL byte")?;
    let (rd, wr) = nix::unistd::pipe()?;
    // SAFETY: the child only calls async-signal-safe functions (read, execvp, write, _exit).
    match unsafe { fork() }? {
        ForkResult::Child => {
            drop(wr);
            let mut b = [0u8; 1];
            let mut f = std::fs::File::from(rd);
            if f.read(&mut b).unwrap_or(0) != 1 {
                unsafe { libc::_exit(126) };
            }
            let _ = nix::unistd::execvp(&args[0], &args);
            let msg = b"guard-agent: cannot execute the command\n";
            unsafe {
                libc::write(2, msg.as_ptr() as *const _, msg.len());
                libc::_exit(127);
            }
        }
        ForkResult::Parent { child } => {
            drop(rd);
            Ok((child, std::fs::File::from(wr)))
        }
    }
}

pub fn run(
    policy_path: &Path,
    audit_path: &Path,
    socket: &Path,
    max_tasks: u64,
    server: Option<remote::ServerConfig>,
    cmd: &[String],
) -> Result<i32> {
    if max_tasks == 0 || max_tasks > kernel::MAX_TREE_TASKS {
        anyhow::bail!("--max-tree-tasks {max_tasks} is out of range: expected 1 to {}", kernel::MAX_TREE_TASKS);
    }
    let policy = Policy::load(policy_path)?;
    let audit = AuditLog::open(audit_path)?;
    let (mut kernel, ring) = Kernel::load(max_tasks)?;
    kernel.install_policy(RUN_POLICY, &policy)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let listener = rt.block_on(admin::bind(socket))?;

    let (child, mut go) = spawn_blocked(cmd)?;
    let pid = child.as_raw() as u32;
    if let Err(e) = kernel.watch(pid, RUN_POLICY, pid) {
        nix::sys::signal::kill(child, Signal::SIGKILL).ok();
        return Err(e);
    }
    let state: Shared = Arc::new(Mutex::new(State {
        kernel,
        policy,
        holds: HoldTable::default(),
        procs: HashMap::new(),
        audit,
        host: events::hostname(),
        policy_name: policy_name(policy_path),
        lost_reported: 0,
        trees: Default::default(),
    }));
    let local = Arc::new(LocalDecisions::default());
    // With a server, holds are decided centrally only: a local `guard-agent approve` would be
    // a decision the approval service (separation of duties, its audit trail) never saw.
    let remote = server
        .map(|cfg| rt.block_on(async { remote::RemoteDecisions::start(cfg, vec![policy_name(policy_path)]) }))
        .transpose()?;
    let source: Arc<dyn DecisionSource> = match &remote {
        Some(r) => Arc::new(r.clone()),
        None => local.clone(),
    };
    if let Some(r) = &remote {
        state.lock().expect("state lock").audit.forward_to(r.records());
    }
    let tree = agent::tree_id(pid);
    go.write_all(b"g").context("releasing the command")?;
    drop(go);
    tracing::info!("watching pid {pid}: {}", cmd.join(" "));

    let code = rt.block_on(async move {
        tokio::spawn(read_events(ring, state.clone(), source));
        let server_status = remote.clone();
        tokio::spawn(admin::serve(
            listener,
            admin_handler(state.clone(), local, policy_path.display().to_string(), server_status),
        ));
        let cmd_exited = Arc::new(AtomicBool::new(false));
        tokio::spawn(forward_signals(child, cmd_exited.clone(), state.clone()));
        tokio::spawn(watch_lost(state.clone()));
        let code = tokio::task::spawn_blocking(move || wait_child(child)).await.unwrap_or(1);
        cmd_exited.store(true, Ordering::SeqCst);
        // Descendants that outlive CMD (daemons) stay under enforcement until they exit too;
        // leaving would set them free. SIGINT/SIGTERM now kills them instead.
        let mut said = false;
        loop {
            let left = state.lock().expect("state lock").kernel.watched_count();
            if left == 0 {
                break;
            }
            if !said {
                tracing::info!("command exited; {left} tasks of its tree still run and stay watched");
                said = true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Nothing may stay frozen once nobody is left to answer.
        agent::deny_all(&state, "denied").await;
        if let Some(r) = &remote {
            r.tree_exited(&tree).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        agent::report_lost(&state);
        state.lock().expect("state lock").audit.flush();
        code
    });
    std::fs::remove_file(socket).ok();
    Ok(code)
}

/// The name shown on requests: the policy file's stem ("coding-agent" for coding-agent.toml).
pub fn policy_name(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}

pub(crate) fn wait_child(child: Pid) -> i32 {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 1,
        }
    }
}

/// Before CMD exits, SIGINT/SIGTERM go to it; after, they kill what is left of its tree.
async fn forward_signals(child: Pid, cmd_exited: Arc<AtomicBool>, state: Shared) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return;
    };
    loop {
        let sig = tokio::select! {
            _ = int.recv() => Signal::SIGINT,
            _ = term.recv() => Signal::SIGTERM,
        };
        if !cmd_exited.load(Ordering::SeqCst) {
            nix::sys::signal::kill(child, sig).ok();
            continue;
        }
        let tids: Vec<u32> = state.lock().expect("state lock").kernel.watched.keys().filter_map(Result::ok).collect();
        tracing::info!("stopping: killing the {} tasks left in the tree", tids.len());
        for tid in tids {
            nix::sys::signal::kill(Pid::from_raw(tid as i32), Signal::SIGKILL).ok();
        }
    }
}

pub(crate) async fn watch_lost(state: Shared) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        agent::report_lost(&state);
    }
}

/// One reader for the ring buffer: drains every ready record, then flushes the log once.
pub(crate) async fn read_events(ring: RingBuf<MapData>, state: Shared, source: Arc<dyn DecisionSource>) {
    // SAFETY: the ring buffer owns its fd for as long as the AsyncFd holds it.
    let mut fd = match unsafe { AsyncFd::register(ring) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!("cannot poll the ring buffer: {e}");
            return;
        }
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            match events::decode(&item) {
                Some(e) => agent::handle_event(&state, &source, e),
                None => tracing::warn!("short event of {} bytes", item.len()),
            }
        }
        guard.clear_ready();
        state.lock().expect("state lock").audit.flush();
    }
}

fn admin_handler(
    state: Shared,
    local: Arc<LocalDecisions>,
    policy_file: String,
    server: Option<Arc<remote::RemoteDecisions>>,
) -> impl Fn(&Peer, Request) -> Response + Send + Sync + Clone + 'static {
    move |peer: &Peer, req: Request| {
        if peer.uid != 0 {
            return Response::err(format!("refused: only root may talk to the agent (caller uid {})", peer.uid));
        }
        let st = state.lock().expect("state lock");
        if let Some(pid) = peer.pid {
            if st.kernel.is_watched(pid as u32) {
                return Response::err(format!(
                    "refused: the caller (pid {pid}) is inside a watched tree; a watched agent cannot decide holds"
                ));
            }
        }
        match req {
            Request::Pending => Response::ok(json!(st.holds.waiting())),
            Request::Status => Response::ok(json!({
                "policy": policy_file,
                "rules": st.policy.rules.len(),
                "watched_tasks": st.kernel.watched_count(),
                "counted_tasks": st.kernel.task_count.get(&0, 0).unwrap_or(0),
                "holds_waiting": st.holds.waiting().len(),
                "holds_in_kernel": st.kernel.holds_in_kernel(),
                "events_lost": st.kernel.lost_events(),
                "records_written": st.audit.written(),
                "server": server.as_ref().map(|s| s.describe()),
            })),
            Request::Approve { .. } | Request::Deny { .. } if server.is_some() => Response::err(
                "holds on this host are decided by guard-server (see `guard-agent status`); use guardctl".to_string(),
            ),
            Request::Approve { id, comment } => answer(st, &local, &id, true, peer, comment),
            Request::Deny { id, reason } => answer(st, &local, &id, false, peer, reason),
            Request::Register { .. } | Request::Reload => {
                Response::err("this is a `guard-agent run` agent; registration and reload are for `guard-agent daemon`")
            }
        }
    }
}

pub(crate) fn answer(
    st: std::sync::MutexGuard<'_, State>,
    local: &LocalDecisions,
    id: &str,
    allow: bool,
    peer: &Peer,
    comment: Option<String>,
) -> Response {
    let waiting = st.holds.by_id.get(id).map(|h| h.decision.is_none());
    drop(st);
    match waiting {
        None => Response::err(format!("no hold with id {id:?} (unknown, or already finished)")),
        Some(false) => Response::err(format!("hold {id} was already decided")),
        Some(true) => {
            let d = Decision {
                request_id: None,
                allow,
                reason: if allow { "approved" } else { "denied" },
                approver: Some(format!("local:uid={}", peer.uid)),
                comment,
            };
            if local.answer(id, d) {
                Response::ok(json!({"id": id, "allow": allow}))
            } else {
                Response::err(format!("hold {id} is no longer waiting"))
            }
        }
    }
}
