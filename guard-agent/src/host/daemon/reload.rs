//! Applying a configuration: kernel policy slots by name, policies and selectors into the
//! kernel, and reloading on SIGHUP, `guard-agent reload` or a file change.

use super::*;

/// Kernel policy ids by name: kept from `current`, else the slot a previous daemon named so
/// (pinned), else the lowest free one. Slots still used by running trees are never reused.
pub(super) fn assign_ids(
    kernel: &dyn KernelMaps,
    cfg: &Config,
    current: &HashMap<String, u8>,
) -> Result<HashMap<String, u8>> {
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
pub(super) fn install(state: &Shared, cfg: &Config, ids: &HashMap<String, u8>) -> Result<()> {
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

/// Re-reads the configuration. An invalid one changes nothing.
pub(super) fn reload(d: &Daemon, trigger: &str) -> Response {
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
    // The new configuration may name other policy files, log or keys: protect those.
    let paths = super::super::protect::with_own_paths(&d.pins.dir, super::guard_paths(&new.file, &new));
    if let Err(e) = d.state.lock().kernel.set_guard_paths(&paths) {
        tracing::error!("reload: cannot update the protected paths: {e:#}");
    }
    // Each policy loaded anew or changed is a record, with the hash the server knows it by.
    let host = d.state.lock().host.clone();
    for p in &new.policies {
        let was = cfg.policies.iter().find(|o| o.name == p.name).map(|o| o.policy.hash.as_str());
        if was != Some(p.policy.hash.as_str()) {
            let how = format!("{} ({trigger})", if was.is_some() { "reloaded" } else { "loaded" });
            d.state.audit().write(&record::policy_loaded(&host, &p.name, &p.policy.hash, &how));
        }
    }
    d.state.audit().flush();
    let names: Vec<String> = new.policies.iter().map(|p| p.name.clone()).collect();
    tracing::info!("configuration reloaded ({trigger}): policies {names:?}, {} selectors", new.selectors.len());
    *cfg = new;
    *d.ids.lock().expect("ids lock") = ids;
    drop(cfg);
    *d.last_reload.lock().expect("lock") = json!({"time": Timestamp::now(), "ok": true, "trigger": trigger});
    adopt_running(d, "found running at a reload");
    Response::ok(json!({"reloaded": true, "policies": names}))
}

pub(super) fn file_stamp(files: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    files.iter().map(|f| std::fs::metadata(f).ok().and_then(|m| Some((m.modified().ok()?, m.len())))).collect()
}

/// SIGHUP, or a change of the config or a policy file (checked every second), reloads.
pub(super) async fn reload_on_change(d: Arc<Daemon>) {
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
