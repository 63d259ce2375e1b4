//! `guard-agent daemon`: one agent per host. Loads the programs once (pinned, so they outlive
//! the daemon), installs the configured policies and tree selectors, adopts trees that already
//! run, serves the admin and reason sockets, reloads the configuration on SIGHUP or when a file
//! changes, and talks to the server when one is configured.
//!
//! Restarts: maps and links are pinned under `pin_dir/<build>`. While no daemon runs the
//! kernel keeps enforcing allow/deny on every tree and keeps starting trees by selector, and
//! its events (records, new holds) wait in the pinned ring buffer. An ask made meanwhile holds
//! its thread until the next daemon reads that event and shows it like any other hold. Holds
//! the previous daemon had already read (it stopped or died while they waited) cannot be shown
//! again: the next daemon denies them and resumes their threads. A restarted daemon finds the
//! same maps, re-installs its policies in the same slots (by name), and re-adopts the trees.
//!
//! Reload: the new configuration is checked whole first; an invalid one keeps the old one in
//! force and says why (file:line:col). Policies are rewritten in their slots, so new operations
//! of running trees see them at once. A hold already waiting stays a hold: its verdict is bound
//! to the operation, not the rule; if the new policy no longer asks for that operation, the
//! restarted call is decided by the new rule instead.

mod reload;
mod status;
mod trees;

use reload::{assign_ids, install, reload, reload_on_change};
use status::status;
use trees::{adopt_running, readopt_pinned_trees, register, sweep};

use super::{
    admin::{self, Peer, Request, Response},
    protect, reasons, run, socket,
};
use crate::{
    agent::{effects, Agent, Host, Shared, State, System, TreeInfo},
    audit::{forward, log::open_spool, record},
    config::Config,
    hold::{local::LocalDecisions, remote, DecisionSource},
    kernel::{self, guard_objects::GuardPath, Kernel, KernelMaps, PinReport},
    limits::{CGROUP_ROOT, MAX_POLICIES},
    tree::{
        adopt, proc,
        selector::{also_matched, matching, Match},
    },
};
use anyhow::{Context, Result};
use guard_api::{Reason, Timestamp};
use nix::{sys::signal::Signal, unistd::Pid};
use serde_json::json;
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

/// Everything the daemon's tasks share besides the agent state.
struct Daemon {
    state: Shared,
    /// The configuration in force. Lock order: `cfg` before `state`, never the reverse.
    cfg: Mutex<Config>,
    ids: Mutex<HashMap<String, u8>>,
    last_reload: Mutex<serde_json::Value>,
    pins: PinReport,
    /// The programs' ids, for `status` to ask the kernel whether they are attached.
    identity: kernel::attached::Identity,
    remote: Option<Arc<remote::RemoteDecisions>>,
    local: Arc<LocalDecisions>,
}

pub fn daemon(config_path: &Path) -> Result<i32> {
    let cfg = Config::load(config_path).map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    let host = super::hostname();
    let audit = open_spool(&cfg.audit_log, &host)?;
    let policy_hashes: Vec<(String, String)> =
        cfg.policies.iter().map(|p| (p.name.clone(), p.policy.hash.clone())).collect();
    let audit_key = audit.audit_key().unwrap_or_default();
    let (mut kernel, ring, pins) = Kernel::load_pinned(cfg.max_tree_tasks, &cfg.pin_dir)?;
    protect::protect(&mut kernel, &pins.dir, guard_paths(config_path, &cfg))?;
    tracing::info!(
        "programs {} (pins in {}){}",
        if pins.reused_programs { "kept attached from an earlier daemon" } else { "loaded and attached" },
        pins.dir.display(),
        if pins.migrated_tasks > 0 {
            format!("; {} tasks carried over from another build", pins.migrated_tasks)
        } else {
            String::new()
        }
    );
    let ids = assign_ids(&kernel as &dyn KernelMaps, &cfg, &HashMap::new())?;
    let identity = kernel.identity();
    let first = &cfg.policies[0];
    let state: Shared = Agent::new(
        State::new(Box::new(kernel), first.policy.clone(), first.name.clone(), host.clone()),
        audit,
        Box::new(Host),
    );
    install(&state, &cfg, &ids)?;
    {
        // Once the policies are in force: a start that failed is no start.
        let mut audit = state.audit();
        audit.write(&record::agent_start(&host, &policy_hashes));
        for (name, hash) in &policy_hashes {
            audit.write(&record::policy_loaded(&host, name, hash, "loaded (daemon start)"));
        }
        audit.flush();
    }
    readopt_pinned_trees(&state);

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let listener = rt.block_on(socket::bind(&cfg.admin_socket, socket::Access::RootOnly))?;
    let reason_listener = rt.block_on(socket::bind(&cfg.reason_socket, socket::Access::Everyone))?;
    let local = Arc::new(LocalDecisions::default());
    let remote = match cfg.server.clone() {
        Some(server) => {
            let (from, shared) = state.audit().ship(cfg.audit_backlog_max_bytes);
            let log = cfg.audit_log.clone();
            let r = rt.block_on(async {
                let r = remote::RemoteDecisions::start(server, policy_hashes, audit_key)?;
                tokio::spawn(forward::ship(r.clone(), log, from, shared));
                anyhow::Ok(r)
            })?;
            Some(r)
        }
        None => None,
    };
    let source: Arc<dyn DecisionSource> = match &remote {
        Some(r) => Arc::new(r.clone()),
        None => local.clone(),
    };
    let admin_socket = cfg.admin_socket.clone();
    let reason_socket = cfg.reason_socket.clone();
    let d = Arc::new(Daemon {
        state: state.clone(),
        cfg: Mutex::new(cfg),
        ids: Mutex::new(ids),
        last_reload: Mutex::new(json!({"time": Timestamp::now(), "ok": true, "what": "started"})),
        pins,
        identity,
        remote,
        local,
    });
    adopt_running(&d, "found running when the daemon started");

    rt.block_on(async {
        tokio::spawn(run::read_events(ring, state.clone(), source));
        let handler = {
            let d = d.clone();
            move |peer: &Peer, req: Request| handle_admin(&d, peer, req)
        };
        tokio::spawn(admin::serve(listener, handler));
        tokio::spawn(reasons::serve(reason_listener, state.clone()));
        tokio::spawn(effects::watch_lost(state.clone()));
        tokio::spawn(reload_on_change(d.clone()));
        tokio::spawn(sweep(d.clone()));
        tokio::spawn(release_orphaned_holds(state.clone()));
        notify_ready();
        tracing::info!("guard daemon ready");
        wait_for_stop().await;
        tracing::info!("stopping: trees stay watched by the kernel (pinned); waiting holds are denied");
        effects::deny_all(&state, Reason::Denied).await;
        // From here an ask is denied by the kernel at once (`agent_gone`) until a daemon
        // runs again, and recorded by that daemon (the event waits in the pinned ring).
        kernel::guard_objects::stop_heartbeat();
        tokio::time::sleep(Duration::from_millis(300)).await;
        effects::report_lost(&state);
        state.audit().close(record::agent_stop(&host));
    });
    std::fs::remove_file(&admin_socket).ok();
    std::fs::remove_file(&reason_socket).ok();
    Ok(0)
}

/// The daemon's own files for the tamper baseline: its configuration, policies, audit spool
/// (with its shipped position and the host's audit key), admin socket (not the reason socket: trees may use it), pin directory, and the server
/// client's certificates (its private key not even readable).
fn guard_paths(config_path: &Path, cfg: &Config) -> Vec<GuardPath> {
    let mut paths = vec![
        GuardPath::File(config_path.into()),
        GuardPath::File(cfg.admin_socket.clone()),
        GuardPath::Dir(cfg.pin_dir.clone()),
    ];
    paths.extend(protect::spool_paths(&cfg.audit_log));
    paths.extend(cfg.policies.iter().map(|p| GuardPath::File(p.file.clone())));
    // The files a policy includes are policy too.
    paths.extend(cfg.policies.iter().flat_map(|p| p.policy.included.iter().cloned().map(GuardPath::File)));
    if let Some(s) = &cfg.server {
        paths.push(GuardPath::File(s.ca.clone()));
        paths.push(GuardPath::File(s.cert.clone()));
        paths.push(GuardPath::Secret(s.key.clone()));
    }
    paths
}

async fn wait_for_stop() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {},
        _ = term.recv() => {},
    }
}

/// systemd Type=notify: READY=1 on $NOTIFY_SOCKET, when started by systemd.
fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    let bytes = path.as_encoded_bytes();
    let r = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name).and_then(|a| sock.send_to_addr(b"READY=1", &a))
    } else {
        sock.send_to(b"READY=1", PathBuf::from(path))
    };
    if let Err(e) = r {
        tracing::warn!("could not notify systemd: {e}");
    }
}

/// Holds in the kernel that no event of this daemon announced (the previous daemon read it,
/// then stopped): nobody can be shown what they are about, and their threads stay stopped
/// until resumed. Once the ring buffer's backlog has been read, deny them and resume them.
async fn release_orphaned_holds(state: Shared) {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let orphans: Vec<u32> = {
        let mut st = state.lock();
        let held = st.kernel.held();
        let mut out = vec![];
        for (tid, h) in held {
            if st.holds.find(tid, h.seq).is_some() {
                continue;
            }
            tracing::warn!(
                "denying a hold of thread {tid} that an earlier daemon had taken (it stopped while it waited)"
            );
            if st.kernel.set_verdict(tid, h.seq, h.hash, false).is_ok() {
                out.push(tid);
            }
        }
        out
    };
    for tid in orphans {
        nix::sys::signal::kill(Pid::from_raw(tid as i32), Signal::SIGCONT).ok();
    }
}

fn handle_admin(d: &Daemon, peer: &Peer, req: Request) -> Response {
    if let Some(refusal) = admin::refuse(peer, "the daemon", "decide holds, register trees or reload", |pid| {
        d.state.lock().kernel.is_watched(pid)
    }) {
        return refusal;
    }
    match req {
        Request::Pending => Response::ok(json!(d.state.lock().holds.waiting())),
        Request::Approve { id, comment } => {
            if d.remote.is_some() {
                return Response::err("holds are decided on guard-server (a server is configured)");
            }
            run::answer(&d.state, &d.local, &id, true, peer, comment)
        }
        Request::Deny { id, reason } => {
            if d.remote.is_some() {
                return Response::err("holds are decided on guard-server (a server is configured)");
            }
            run::answer(&d.state, &d.local, &id, false, peer, reason)
        }
        Request::Status => Response::ok(status(d)),
        Request::Reload => reload(d, "guard-agent reload"),
        Request::Register { pid, policy, how } => register(d, peer, pid, policy, &how),
    }
}
