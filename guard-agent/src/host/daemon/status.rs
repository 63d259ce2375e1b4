//! `guard-agent status` for a daemon: what it runs, watches and holds, as JSON.

use super::*;

pub(super) fn kernel_support(d: &Daemon, enforcing: bool) -> serde_json::Value {
    let lsm = std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
    json!({
        "release": nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default(),
        "lsm": lsm.trim(),
        "bpf_lsm": lsm.split(',').any(|l| l.trim() == "bpf"),
        "btf": Path::new("/sys/kernel/btf/vmlinux").exists(),
        "enforcing": enforcing,
        "programs": if d.pins.reused_programs { "kept attached from an earlier daemon" } else { "loaded by this daemon" },
        "pins": d.pins.dir.display().to_string(),
        "build": kernel::build_id(),
    })
}

pub(super) fn status(d: &Daemon) -> serde_json::Value {
    // Before any lock: the server probe may take a few seconds.
    let spool = d.state.audit().problems();
    let health = crate::host::health::check(&d.identity, d.remote.as_deref(), spool);
    let enforcing = health["enforcing"] == true;
    let cfg = d.cfg.lock().expect("cfg lock");
    let ids = d.ids.lock().expect("ids lock").clone();
    let st = d.state.lock();
    let procs: HashSet<u32> = proc::all_pids().into_iter().collect();
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
        "health": health,
        "config": cfg.file,
        "last_reload": *d.last_reload.lock().expect("lock"),
        "kernel": kernel_support(d, enforcing),
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
        "spool": d.state.audit().describe(),
    })
}
