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

use super::{
    admin::{self, Peer, Request, Response},
    reasons, run, socket,
    spawn::{spawn_blocked, wait_child},
};
use crate::{
    agent::{effects, Agent, Host, Shared, State, System, TreeInfo},
    audit::{forward, AuditLog},
    config::Config,
    hold::{local::LocalDecisions, remote, DecisionSource},
    kernel::{self, Kernel, KernelMaps, PinReport},
    limits::{CGROUP_ROOT, MAX_POLICIES, REASON_SOCKET, REASON_SOCKET_ENV},
    tree::{
        adopt, proc,
        selector::{matching, Match},
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
    remote: Option<Arc<remote::RemoteDecisions>>,
    local: Arc<LocalDecisions>,
}

pub fn daemon(config_path: &Path) -> Result<i32> {
    let cfg = Config::load(config_path).map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    let audit = AuditLog::open(&cfg.audit_log)?;
    let (kernel, ring, pins) = Kernel::load_pinned(cfg.max_tree_tasks, &cfg.pin_dir)?;
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
    let first = &cfg.policies[0];
    let state: Shared = Agent::new(
        State::new(Box::new(kernel), first.policy.clone(), first.name.clone(), super::hostname()),
        audit,
        Box::new(Host),
    );
    install(&state, &cfg, &ids)?;
    readopt_pinned_trees(&state);

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let listener = rt.block_on(socket::bind(&cfg.admin_socket, socket::Access::RootOnly))?;
    let reason_listener = rt.block_on(socket::bind(&cfg.reason_socket, socket::Access::Everyone))?;
    let local = Arc::new(LocalDecisions::default());
    let remote = match cfg.server.clone() {
        Some(server) => {
            let names: Vec<String> = cfg.policies.iter().map(|p| p.name.clone()).collect();
            let r = rt.block_on(async {
                let r = remote::RemoteDecisions::start(server, names)?;
                let (tx, rx) = forward::channel();
                tokio::spawn(forward::report(r.client(), rx));
                anyhow::Ok((r, tx))
            });
            let (r, tx) = r?;
            state.audit().forward_to(tx);
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
        tokio::time::sleep(Duration::from_millis(300)).await;
        effects::report_lost(&state);
        state.audit().flush();
    });
    std::fs::remove_file(&admin_socket).ok();
    std::fs::remove_file(&reason_socket).ok();
    Ok(0)
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

/// Kernel policy ids by name: kept from `current`, else the slot a previous daemon named so
/// (pinned), else the lowest free one. Slots still used by running trees are never reused.
fn assign_ids(kernel: &dyn KernelMaps, cfg: &Config, current: &HashMap<String, u8>) -> Result<HashMap<String, u8>> {
    let slots = kernel.policy_slots();
    let live: HashSet<u8> = kernel.watched_tasks().iter().map(|(_, w)| w.policy).collect();
    let mut out = HashMap::new();
    let mut taken: HashSet<u8> = HashSet::new();
    for p in &cfg.policies {
        let hash = guard_common::fnv1a(p.name.as_bytes()).max(1);
        let id = current.get(&p.name).copied().or_else(|| slots.iter().find(|(_, h)| *h == hash).map(|(i, _)| *i));
        if let Some(id) = id {
            out.insert(p.name.clone(), id);
            taken.insert(id);
        }
    }
    // Slots of policies no longer configured stay reserved while trees use them.
    let reserved: HashSet<u8> =
        slots.iter().map(|(i, _)| *i).filter(|i| live.contains(i) && !taken.contains(i)).collect();
    for p in &cfg.policies {
        if out.contains_key(&p.name) {
            continue;
        }
        let free = (0..MAX_POLICIES)
            .find(|i| !taken.contains(i) && !reserved.contains(i))
            .context("no free policy slot: at most 16 policies, counting removed ones still used by running trees")?;
        out.insert(p.name.clone(), free);
        taken.insert(free);
    }
    Ok(out)
}

/// Writes policies and selectors into the kernel and the agent state.
fn install(state: &Shared, cfg: &Config, ids: &HashMap<String, u8>) -> Result<()> {
    let mut st = state.lock();
    for p in &cfg.policies {
        let id = ids[&p.name];
        st.kernel
            .install_named_policy(id, &p.name, &p.policy)
            .with_context(|| format!("installing policy {}", p.name))?;
        st.trees.policies.insert(id, (p.name.clone(), p.policy.clone()));
    }
    let (entries, missing) = cfg.kernel_selectors(&|n| ids.get(n).copied());
    st.kernel.set_selectors(&entries)?;
    st.trees.selectors = cfg.selectors.clone();
    for c in missing {
        tracing::warn!("cgroup {CGROUP_ROOT}{c} does not exist (yet): its selector applies once it does");
    }
    for (rank, s) in cfg.selectors.iter().enumerate() {
        tracing::info!("selector rank {rank}: {} -> policy {}", s.describe(), s.policy);
    }
    Ok(())
}

/// After a restart: the trees in the pinned map are still watched; give them their names back.
fn readopt_pinned_trees(state: &Shared) {
    let mut st = state.lock();
    let mut roots: BTreeMap<u32, (u8, usize)> = BTreeMap::new();
    for (_, w) in st.kernel.watched_tasks() {
        roots.entry(w.root).or_insert((w.policy, 0)).1 += 1;
    }
    for (root, (policy, tasks)) in roots {
        let p = proc::read_proc(root);
        let matched = p.as_ref().map(|p| matching(&st.trees.selectors, p)).unwrap_or_default();
        let selector = match matched.first() {
            Some((_, s)) => format!("re-adopted after a restart ({})", s.describe()),
            None => "re-adopted after a restart".to_string(),
        };
        tracing::info!("tree {root} ({tasks} tasks, policy {}) is still watched: {selector}", st.policy_of(policy).1);
        let t = TreeInfo {
            root,
            tree_id: Host.tree_id(root),
            selector,
            policy_id: policy,
            also_matched: vec![],
            exe: p.and_then(|p| p.exe),
            since: Timestamp::now(),
        };
        st.trees.trees.insert(root, t);
    }
}

/// Adopts running processes that match a selector and are not in a tree yet.
fn adopt_running(d: &Daemon, why: &str) {
    let cfg = d.cfg.lock().expect("cfg lock");
    let ids = d.ids.lock().expect("ids lock").clone();
    let mut st = d.state.lock();
    let me = std::process::id();
    let mut exclude = vec![me];
    // Never the daemon's own ancestors (a shell that started it by hand).
    let mut p = me;
    while let Some(pp) = proc::read_proc(p).map(|x| x.ppid).filter(|pp| *pp > 1) {
        exclude.push(pp);
        p = pp;
    }
    let roots = adopt::find_unwatched_roots(st.kernel.as_ref(), &cfg.selectors, &exclude);
    for (pid, rank) in roots {
        let s = &cfg.selectors[rank];
        let Some(&id) = ids.get(&s.policy) else { continue };
        match adopt::adopt_tree(st.kernel.as_mut(), pid, id) {
            Ok(n) => {
                let proc = proc::read_proc(pid);
                let also: Vec<String> = proc
                    .as_ref()
                    .map(|p| matching(&cfg.selectors, p))
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|(r, _)| *r != rank)
                    .map(|(_, s)| s.describe())
                    .collect();
                tracing::info!("adopted running tree {pid} ({n} tasks) {why}: {}, policy {}", s.describe(), s.policy);
                let t = TreeInfo {
                    root: pid,
                    tree_id: Host.tree_id(pid),
                    selector: format!("{} ({why})", s.describe()),
                    policy_id: id,
                    also_matched: also,
                    exe: proc.and_then(|p| p.exe),
                    since: Timestamp::now(),
                };
                st.trees.reasons.remove(&pid);
                st.trees.trees.insert(pid, t);
            }
            Err(e) => tracing::warn!("could not adopt running process {pid}: {e:#}"),
        }
    }
}

/// Re-reads the configuration. An invalid one changes nothing.
fn reload(d: &Daemon, trigger: &str) -> Response {
    let file = d.cfg.lock().expect("cfg lock").file.clone();
    let new = match Config::load(&file) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("configuration not reloaded ({trigger}): {e}; the previous one stays in force");
            *d.last_reload.lock().expect("lock") =
                json!({"time": Timestamp::now(), "ok": false, "trigger": trigger, "error": e.to_string()});
            return Response::err(format!("invalid configuration, the previous one stays in force: {e}"));
        }
    };
    let mut cfg = d.cfg.lock().expect("cfg lock");
    let restart_only = [
        (cfg.audit_log != new.audit_log, "audit_log"),
        (cfg.admin_socket != new.admin_socket, "admin_socket"),
        (cfg.reason_socket != new.reason_socket, "reason_socket"),
        (cfg.pin_dir != new.pin_dir, "pin_dir"),
        (cfg.max_tree_tasks != new.max_tree_tasks, "max_tree_tasks"),
        (cfg.server.as_ref().map(|s| &s.url) != new.server.as_ref().map(|s| &s.url), "server"),
    ];
    for (changed, what) in restart_only {
        if changed {
            tracing::warn!("{what} changed: it takes effect when the daemon restarts");
        }
    }
    let current = d.ids.lock().expect("ids lock").clone();
    let ids = {
        let st = d.state.lock();
        assign_ids(st.kernel.as_ref(), &new, &current)
    };
    let ids = match ids {
        Ok(i) => i,
        Err(e) => {
            *d.last_reload.lock().expect("lock") =
                json!({"time": Timestamp::now(), "ok": false, "trigger": trigger, "error": format!("{e:#}")});
            return Response::err(format!("{e:#}; the previous configuration stays in force"));
        }
    };
    if let Err(e) = install(&d.state, &new, &ids) {
        tracing::error!("reload failed while writing the kernel's maps: {e:#}");
        *d.last_reload.lock().expect("lock") =
            json!({"time": Timestamp::now(), "ok": false, "trigger": trigger, "error": format!("{e:#}")});
        return Response::err(format!("{e:#}"));
    }
    let names: Vec<String> = new.policies.iter().map(|p| p.name.clone()).collect();
    tracing::info!("configuration reloaded ({trigger}): policies {names:?}, {} selectors", new.selectors.len());
    *cfg = new;
    *d.ids.lock().expect("ids lock") = ids;
    drop(cfg);
    *d.last_reload.lock().expect("lock") = json!({"time": Timestamp::now(), "ok": true, "trigger": trigger});
    adopt_running(d, "found running at a reload");
    Response::ok(json!({"reloaded": true, "policies": names}))
}

fn file_stamp(files: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    files.iter().map(|f| std::fs::metadata(f).ok().and_then(|m| Some((m.modified().ok()?, m.len())))).collect()
}

/// SIGHUP, or a change of the config or a policy file (checked every second), reloads.
async fn reload_on_change(d: Arc<Daemon>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).ok();
    let files = || d.cfg.lock().expect("cfg lock").watched_files();
    let mut stamp = file_stamp(&files());
    loop {
        let trigger = tokio::select! {
            _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending::<()>().await } } => "SIGHUP",
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                let now = file_stamp(&files());
                if now == stamp { continue; }
                "file change"
            }
        };
        let d2 = d.clone();
        tokio::task::spawn_blocking(move || reload(&d2, trigger)).await.ok();
        stamp = file_stamp(&files());
    }
}

/// Every second: trees whose tasks are all gone end; cgroups that appeared get their selector.
async fn sweep(d: Arc<Daemon>) {
    let mut missing_before = 0usize;
    // Trees without tasks are kept a few seconds more: their last events may still be in the
    // ring buffer, and their records should still name the tree's reason.
    let mut empty_since: HashMap<u32, std::time::Instant> = HashMap::new();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let ended: Vec<TreeInfo> = {
            let mut st = d.state.lock();
            let live: HashSet<u32> = st.kernel.watched_tasks().into_iter().map(|(_, w)| w.root).collect();
            empty_since.retain(|r, _| !live.contains(r) && st.trees.trees.contains_key(r));
            for r in st.trees.trees.keys().filter(|r| !live.contains(r)) {
                empty_since.entry(*r).or_insert_with(std::time::Instant::now);
            }
            let gone: Vec<u32> =
                empty_since.iter().filter(|(_, t)| t.elapsed() >= Duration::from_secs(3)).map(|(r, _)| *r).collect();
            for r in &live {
                if !st.trees.trees.contains_key(r) {
                    let t = TreeInfo {
                        root: *r,
                        tree_id: Host.tree_id(*r),
                        selector: "found in the kernel's map".into(),
                        policy_id: st.kernel.watched(*r).map(|w| w.policy).unwrap_or(0),
                        also_matched: vec![],
                        exe: proc::read_proc(*r).and_then(|p| p.exe),
                        since: Timestamp::now(),
                    };
                    st.trees.trees.insert(*r, t);
                }
            }
            gone.iter()
                .filter_map(|r| {
                    st.trees.reasons.remove(r);
                    st.trees.trees.remove(r)
                })
                .collect()
        };
        for t in ended {
            tracing::info!("tree {} ended ({})", t.root, t.selector);
            if let Some(r) = &d.remote {
                r.tree_exited(&t.tree_id).await;
            }
        }
        let missing = {
            let cfg = d.cfg.lock().expect("cfg lock");
            let ids = d.ids.lock().expect("ids lock");
            cfg.kernel_selectors(&|n| ids.get(n).copied()).1.len()
        };
        if missing < missing_before {
            let d2 = d.clone();
            tokio::task::spawn_blocking(move || reload(&d2, "a selected cgroup appeared")).await.ok();
        }
        missing_before = missing;
    }
}

fn handle_admin(d: &Daemon, peer: &Peer, req: Request) -> Response {
    if peer.uid != 0 {
        return Response::err(format!("refused: only root may talk to the daemon (caller uid {})", peer.uid));
    }
    if let Some(pid) = peer.pid {
        let st = d.state.lock();
        if st.kernel.is_watched(pid as u32) {
            return Response::err(format!(
                "refused: the caller (pid {pid}) is inside a watched tree; a watched agent cannot decide holds, register trees or reload"
            ));
        }
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

fn register(d: &Daemon, peer: &Peer, pid: u32, policy: Option<String>, how: &str) -> Response {
    let cfg = d.cfg.lock().expect("cfg lock");
    let Some(name) = policy.or_else(|| cfg.default_registration_policy().map(String::from)) else {
        let names: Vec<&str> = cfg.policies.iter().map(|p| p.name.as_str()).collect();
        return Response::err(format!("name a policy with --policy (configured: {names:?})"));
    };
    let Some(&id) = d.ids.lock().expect("ids lock").get(&name) else {
        let names: Vec<&str> = cfg.policies.iter().map(|p| p.name.as_str()).collect();
        return Response::err(format!("unknown policy {name:?}: configured are {names:?}"));
    };
    if pid == std::process::id() {
        return Response::err("refused: that is the daemon itself");
    }
    let mut st = d.state.lock();
    if let Some(root) = st.tree_root(pid) {
        return Response::err(format!(
            "pid {pid} is already watched (tree {root}, policy {}): a process stays in the tree it is in",
            st.policy_of(st.kernel.watched(pid).map(|w| w.policy).unwrap_or(0)).1
        ));
    }
    let proc = proc::read_proc(pid);
    match adopt::adopt_tree(st.kernel.as_mut(), pid, id) {
        Ok(n) => {
            let also: Vec<String> = proc
                .as_ref()
                .map(|p| matching(&cfg.selectors, p))
                .unwrap_or_default()
                .into_iter()
                .map(|(_, s)| s.describe())
                .collect();
            let selector =
                format!("registered by `guard-agent {how}` (uid {}, pid {})", peer.uid, peer.pid.unwrap_or(0));
            tracing::info!(
                "tree {pid} ({n} tasks) {selector}, policy {name}{}",
                if also.is_empty() { String::new() } else { format!("; registration wins over {}", also.join(", ")) }
            );
            let t = TreeInfo {
                root: pid,
                tree_id: Host.tree_id(pid),
                selector,
                policy_id: id,
                also_matched: also,
                exe: proc.and_then(|p| p.exe),
                since: Timestamp::now(),
            };
            let tree_id = t.tree_id.clone();
            st.trees.reasons.remove(&pid);
            st.trees.trees.insert(pid, t);
            Response::ok(json!({"root": pid, "tree_id": tree_id, "policy": name, "tasks": n}))
        }
        Err(e) => Response::err(format!("{e:#}")),
    }
}

fn kernel_support(d: &Daemon) -> serde_json::Value {
    let lsm = std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
    json!({
        "release": nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default(),
        "lsm": lsm.trim(),
        "bpf_lsm": lsm.split(',').any(|l| l.trim() == "bpf"),
        "btf": Path::new("/sys/kernel/btf/vmlinux").exists(),
        "enforcing": true,
        "programs": if d.pins.reused_programs { "kept attached from an earlier daemon" } else { "loaded by this daemon" },
        "pins": d.pins.dir.display().to_string(),
        "build": kernel::build_id(),
    })
}

fn status(d: &Daemon) -> serde_json::Value {
    let cfg = d.cfg.lock().expect("cfg lock");
    let ids = d.ids.lock().expect("ids lock").clone();
    let st = d.state.lock();
    let procs: HashSet<u32> = std::fs::read_dir("/proc")
        .map(|r| r.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    let mut per_root: HashMap<u32, (usize, usize)> = HashMap::new();
    let tasks = st.kernel.watched_tasks();
    for (tid, w) in &tasks {
        let e = per_root.entry(w.root).or_default();
        e.0 += 1;
        if procs.contains(tid) {
            e.1 += 1;
        }
    }
    let waiting = st.holds.waiting();
    let mut tree_list: Vec<serde_json::Value> = st
        .trees
        .trees
        .values()
        .map(|t| {
            let (tasks, processes) = per_root.get(&t.root).copied().unwrap_or_default();
            json!({
                "root": t.root,
                "tree_id": t.tree_id,
                "exe": t.exe,
                "selector": t.selector,
                "also_matched": t.also_matched,
                "policy": st.policy_of(t.policy_id).1,
                "tasks": tasks,
                "processes": processes,
                "holds": waiting.iter().filter(|h| h.tree_id == t.tree_id).count(),
                "stated_reason": st.trees.reasons.get(&t.root),
                "since": t.since,
            })
        })
        .collect();
    tree_list.sort_by_key(|t| t["root"].as_u64());
    let (entries, missing) = cfg.kernel_selectors(&|n| ids.get(n).copied());
    let selectors: Vec<serde_json::Value> = cfg
        .selectors
        .iter()
        .enumerate()
        .map(|(rank, s)| {
            let active = entries.iter().any(|(_, v)| v.rank == rank as u32);
            json!({"rank": rank, "selector": s.describe(), "policy": s.policy,
                   "state": if active { "active" } else if missing.iter().any(|m| matches!(&s.matcher, Match::Cgroup(c) if c == m)) { "cgroup missing" } else { "shadowed by an earlier selector with the same key" }})
        })
        .collect();
    let mut policies: Vec<serde_json::Value> = cfg
        .policies
        .iter()
        .map(|p| {
            json!({"id": ids.get(&p.name), "name": p.name, "file": p.file, "rules": p.policy.rules.len(),
                         "default": crate::policy::action_name(p.policy.default)})
        })
        .collect();
    policies.sort_by_key(|p| p["id"].as_u64());
    json!({
        "mode": "daemon",
        "config": cfg.file,
        "last_reload": *d.last_reload.lock().expect("lock"),
        "kernel": kernel_support(d),
        "server": d.remote.as_ref().map(|r| r.describe()),
        "policies": policies,
        "selectors": selectors,
        "trees": tree_list,
        "watched_tasks": tasks.len(),
        "counted_tasks": st.kernel.counted_tasks(),
        "holds_waiting": waiting.len(),
        "holds_in_kernel": st.kernel.holds_in_kernel(),
        "events_lost": st.kernel.lost_events(),
        "records_written": d.state.audit().written(),
    })
}

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
