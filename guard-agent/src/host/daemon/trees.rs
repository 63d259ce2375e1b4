//! The daemon's trees: re-adopted after a restart, adopted when found running, registered
//! through the admin socket, and ended when their tasks are gone.

use super::*;

/// After a restart: the trees in the pinned map are still watched; give them their names back.
pub(super) fn readopt_pinned_trees(state: &Shared) {
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
pub(super) fn adopt_running(d: &Daemon, why: &str) {
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
                let also = also_matched(&cfg.selectors, proc.as_ref(), Some(rank));
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

pub(super) fn register(d: &Daemon, peer: &Peer, pid: u32, policy: Option<String>, how: &str) -> Response {
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
            let also = also_matched(&cfg.selectors, proc.as_ref(), None);
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

/// Every second: trees whose tasks are all gone end; cgroups that appeared get their selector.
pub(super) async fn sweep(d: Arc<Daemon>) {
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
