//! `guard-agent run`: watch one command's tree for its lifetime, and `doctor`.

use super::{
    admin::{self, Peer, Request, Response},
    health, protect, socket,
    spawn::{spawn_blocked, wait_child, RunAs, RUN_AS_ENV},
};
use crate::{
    agent::{effects, Agent, Host, Owner, Shared, State, System},
    audit::{forward, log::open_spool, record, BACKLOG_MAX_BYTES},
    hold::{local::LocalDecisions, remote, DecisionSource},
    kernel::{self, attached::Identity, guard_objects::GuardPath, ring, Kernel, KernelMaps},
    limits::MAX_TREE_TASKS,
    policy::Policy,
};
use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use guard_api::Reason;
use nix::{sys::signal::Signal, unistd::Pid};
use serde_json::json;
use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

/// The policy id of the single tree `run` watches.
const RUN_POLICY: u8 = 0;

pub fn doctor() -> i32 {
    println!("guard-agent doctor: can this kernel enforce?");
    let problems = kernel::explain_kernel();
    for p in &problems {
        println!("  MISSING: {p}");
    }
    match Kernel::load(MAX_TREE_TASKS) {
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

pub fn run(
    policy_path: &Path,
    audit_path: &Path,
    socket: &Path,
    max_tasks: u64,
    server: Option<remote::ServerConfig>,
    user: Option<RunAs>,
    cmd: &[String],
) -> Result<i32> {
    if max_tasks == 0 || max_tasks > MAX_TREE_TASKS {
        anyhow::bail!("--max-tree-tasks {max_tasks} is out of range: expected 1 to {}", MAX_TREE_TASKS);
    }
    let policy = Policy::load(policy_path)?;
    let policy_hash = policy.hash.clone();
    let host = super::hostname();
    let audit = open_spool(audit_path, &host)?;
    let policies = vec![(policy_name(policy_path), policy_hash)];
    let audit_key = audit.audit_key().unwrap_or_default();
    // Pinned, so that the tree stays enforced if this agent is killed (see `protect`).
    let run_pins = match protect::RunPins::create() {
        Ok(p) => p,
        // Say first whether this kernel could enforce at all (a host without BPF LSM usually
        // has no bpffs either); only a kernel that could is told to mount one.
        Err(e) => {
            Kernel::load(max_tasks)?;
            return Err(e);
        }
    };
    let (mut kernel, ring, pins) = Kernel::load_pinned(max_tasks, run_pins.root())?;
    kernel.install_policy(RUN_POLICY, &policy)?;
    let mut guarded = vec![GuardPath::File(policy_path.into()), GuardPath::File(socket.into())];
    guarded.extend(protect::spool_paths(audit_path));
    // The files the policy includes are policy too.
    guarded.extend(policy.included.iter().cloned().map(GuardPath::File));
    protect::protect(&mut kernel, &pins.dir, guarded)?;
    let identity = kernel.identity();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let listener = rt.block_on(socket::bind(socket, socket::Access::RootOnly))?;

    let blocked = match user {
        Some(u) => {
            tracing::info!("running the command as uid {} gid {}", u.uid, u.gid);
            spawn_blocked(cmd, &[(RUN_AS_ENV, std::ffi::OsStr::new(&u.to_env()))])?
        }
        None => spawn_blocked(cmd, &[])?,
    };
    let child = blocked.pid;
    let pid = child.as_raw() as u32;
    if let Err(e) = kernel.watch(pid, RUN_POLICY, pid) {
        nix::sys::signal::kill(child, Signal::SIGKILL).ok();
        return Err(e);
    }
    let state: Shared =
        Agent::new(State::new(Box::new(kernel), policy, policy_name(policy_path), host.clone()), audit, Box::new(Host));
    {
        // Once enforcing: a start that failed is no start.
        let mut audit = state.audit();
        audit.write(&record::agent_start(&host, &policies));
        audit.write(&record::policy_loaded(&host, &policies[0].0, &policies[0].1, "loaded (run)"));
        audit.flush();
    }
    if let Some(owner) = run_owner(pid) {
        state.lock().owners.insert(pid, owner);
    }
    let local = Arc::new(LocalDecisions::default());
    // With a server, holds are decided centrally only: a local `guard-agent approve` would be
    // a decision the approval service (separation of duties, its audit trail) never saw.
    let remote = server
        .map(|cfg| {
            let (from, shared) = state.audit().ship(BACKLOG_MAX_BYTES);
            let log = audit_path.to_path_buf();
            rt.block_on(async {
                let r = remote::RemoteDecisions::start(cfg, policies, audit_key)?;
                tokio::spawn(forward::ship(r.clone(), log, from, shared));
                anyhow::Ok(r)
            })
        })
        .transpose()?;
    let source: Arc<dyn DecisionSource> = match &remote {
        Some(r) => Arc::new(r.clone()),
        None => local.clone(),
    };
    let tree = Host.tree_id(pid);
    blocked.release()?;
    tracing::info!("watching pid {pid}: {}", cmd.join(" "));

    let code = rt.block_on(async move {
        tokio::spawn(read_events(ring, state.clone(), source));
        let server_status = remote.clone();
        tokio::spawn(admin::serve(
            listener,
            admin_handler(state.clone(), local, policy_path.display().to_string(), server_status, identity),
        ));
        let cmd_exited = Arc::new(AtomicBool::new(false));
        tokio::spawn(forward_signals(child, cmd_exited.clone(), state.clone()));
        tokio::spawn(effects::watch_lost(state.clone()));
        let code = tokio::task::spawn_blocking(move || wait_child(child)).await.unwrap_or(1);
        cmd_exited.store(true, Ordering::SeqCst);
        // Descendants that outlive CMD (daemons) stay under enforcement until they exit too;
        // leaving would set them free. SIGINT/SIGTERM now kills them instead.
        let mut said = false;
        loop {
            let left = state.lock().kernel.watched_count();
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
        effects::deny_all(&state, Reason::Denied).await;
        if let Some(r) = &remote {
            r.tree_exited(&tree).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        effects::report_lost(&state);
        state.audit().close(record::agent_stop(&host));
        code
    });
    std::fs::remove_file(socket).ok();
    drop(run_pins);
    Ok(code)
}

/// The owner of the tree `run` starts: the login uid CMD inherits from the session that ran
/// guard-agent (kept across sudo), else the user who ran it (`SUDO_UID` under sudo, else the
/// real uid) — not root just because guard-agent runs as root.
fn run_owner(pid: u32) -> Option<Owner> {
    if let Some(uid) = crate::tree::proc::loginuid(pid) {
        return Some(Owner { uid, name: Host.user_name(uid), source: "loginuid" });
    }
    let uid =
        std::env::var("SUDO_UID").ok().and_then(|u| u.parse().ok()).unwrap_or_else(|| nix::unistd::getuid().as_raw());
    Some(Owner { uid, name: Host.user_name(uid), source: "starter" })
}

/// The name shown on requests: the policy file's stem ("coding-agent" for coding-agent.toml).
pub fn policy_name(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
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
        let tids: Vec<u32> = state.lock().kernel.watched_tasks().into_iter().map(|(tid, _)| tid).collect();
        tracing::info!("stopping: killing the {} tasks left in the tree", tids.len());
        for tid in tids {
            nix::sys::signal::kill(Pid::from_raw(tid as i32), Signal::SIGKILL).ok();
        }
    }
}

/// One reader for the ring buffer: each event to the agent, the log flushed once per batch.
pub(crate) async fn read_events(ring: RingBuf<MapData>, agent: Shared, source: Arc<dyn DecisionSource>) {
    let flush = agent.clone();
    ring::read_events(ring, |e| effects::on_event(&agent, &source, e), || flush.audit().flush()).await;
}

fn admin_handler(
    state: Shared,
    local: Arc<LocalDecisions>,
    policy_file: String,
    server: Option<Arc<remote::RemoteDecisions>>,
    identity: Identity,
) -> impl Fn(&Peer, Request) -> Response + Send + Sync + Clone + 'static {
    move |peer: &Peer, req: Request| {
        if let Some(refusal) =
            admin::refuse(peer, "the agent", "decide holds", |pid| state.lock().kernel.is_watched(pid))
        {
            return refusal;
        }
        // Before the state lock: the server probe may take a few seconds.
        let health = matches!(req, Request::Status)
            .then(|| health::check(&identity, server.as_deref(), state.audit().problems()));
        let st = state.lock();
        match req {
            Request::Pending => Response::ok(json!(st.holds.waiting())),
            Request::Status => Response::ok(json!({
                "mode": "run",
                "health": health,
                "policy": policy_file,
                "rules": st.policy.rules.len(),
                "watched_tasks": st.kernel.watched_count(),
                "counted_tasks": st.kernel.counted_tasks(),
                "holds_waiting": st.holds.waiting().len(),
                "holds_in_kernel": st.kernel.holds_in_kernel(),
                "events_lost": st.kernel.lost_events(),
                "records_written": state.audit().written(),
                "spool": state.audit().describe(),
                "server": server.as_ref().map(|s| s.describe()),
            })),
            Request::Approve { .. } | Request::Deny { .. } if server.is_some() => Response::err(
                "holds on this host are decided by guard-server (see `guard-agent status`); use guardctl".to_string(),
            ),
            Request::Approve { id, comment } => {
                drop(st);
                answer(&state, &local, &id, true, peer, comment)
            }
            Request::Deny { id, reason } => {
                drop(st);
                answer(&state, &local, &id, false, peer, reason)
            }
            Request::Register { .. } | Request::Reload => {
                Response::err("this is a `guard-agent run` agent; registration and reload are for `guard-agent daemon`")
            }
        }
    }
}

/// A person's approve/deny for hold `id`, through the admin socket.
pub(crate) fn answer(
    agent: &Shared,
    local: &LocalDecisions,
    id: &str,
    allow: bool,
    peer: &Peer,
    comment: Option<String>,
) -> Response {
    let waiting = agent.lock().holds.is_waiting(id);
    match waiting {
        None => Response::err(format!("no hold with id {id:?} (unknown, or already finished)")),
        Some(false) => Response::err(format!("hold {id} was already decided")),
        Some(true) => {
            if local.answer(id, LocalDecisions::by_person(allow, peer.uid, comment)) {
                Response::ok(json!({"id": id, "allow": allow}))
            } else {
                Response::err(format!("hold {id} is no longer waiting"))
            }
        }
    }
}
