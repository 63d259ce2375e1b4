//! Trees that already run: finding them in /proc (selectors, evaluated the way the kernel does
//! at exec) and adopting a whole running tree into the kernel's map.
//!
//! The kernel starts new trees at exec with no race; this is for what runs before the daemon
//! starts or before a selector exists (and for `watch --pid`). Adoption inserts a process before
//! listing its children, so a child forked later is tracked by the kernel and one forked earlier
//! is found by the next pass; passes repeat until one adds nothing.

use crate::{
    config::{Match, SelectorConf},
    kernel::Kernel,
};
use anyhow::{bail, Result};
use std::collections::HashMap;

/// What /proc says about one process.
#[derive(Debug, Clone, Default)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub exe: Option<String>,
    pub argv: Vec<String>,
    /// cgroup v2 path relative to the root ("/agents.slice/x.service").
    pub cgroup: Option<String>,
}

pub fn read_proc(pid: u32) -> Option<Proc> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.split_whitespace().next()?.parse::<u32>().ok())
    };
    let ppid = field("PPid:")?;
    let uid = field("Uid:")?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok().map(|p| p.display().to_string());
    let argv = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
        })
        .unwrap_or_default();
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("0::").map(str::to_owned)));
    Some(Proc { pid, ppid, uid, exe, argv, cgroup })
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

fn tids(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// Whether `p` matches `s` (userspace twin of the kernel's checks).
pub fn matches(s: &SelectorConf, p: &Proc) -> bool {
    let args = p.argv.get(1..).unwrap_or(&[]);
    let argv_ok = s.argv.iter().all(|t| args.iter().any(|a| a == t));
    match &s.matcher {
        Match::ExePath(path) => {
            // A script: the kernel matched its path; /proc shows the interpreter.
            let script = p.argv.get(1).and_then(|a| std::fs::canonicalize(a).ok()).map(|a| a.display().to_string());
            let script_args = p.argv.get(2..).unwrap_or(&[]);
            (p.exe.as_deref() == Some(path.as_str()) && argv_ok)
                || (script.as_deref() == Some(path.as_str())
                    && s.argv.iter().all(|t| script_args.iter().any(|a| a == t)))
        }
        Match::ExeName(name) => {
            let base = |x: &str| x.rsplit('/').next().unwrap_or(x).to_string();
            p.exe.as_deref().map(base).as_deref() == Some(name.as_str()) && argv_ok
        }
        Match::Cgroup(c) => p.cgroup.as_deref().is_some_and(|pc| pc == c || pc.starts_with(&format!("{c}/"))),
        Match::User(u) => p.uid == *u,
    }
}

/// Every selector `p` matches, winner first (selectors are in winning order).
pub fn matching<'a>(selectors: &'a [SelectorConf], p: &Proc) -> Vec<(usize, &'a SelectorConf)> {
    selectors.iter().enumerate().filter(|(_, s)| matches(s, p)).collect()
}

/// Processes that are not watched, match a selector, and whose parent does not match one:
/// the roots of trees that run already. Returns (pid, selector rank).
pub fn find_unwatched_roots(kernel: &Kernel, selectors: &[SelectorConf], exclude: &[u32]) -> Vec<(u32, usize)> {
    if selectors.is_empty() {
        return vec![];
    }
    let procs: HashMap<u32, Proc> = all_pids()
        .into_iter()
        .filter(|p| !exclude.contains(p))
        .filter_map(read_proc)
        // Kernel threads have no exe; they are never agents.
        .filter(|p| p.exe.is_some())
        .map(|p| (p.pid, p))
        .collect();
    let best = |p: &Proc| matching(selectors, p).first().map(|(r, _)| *r);
    let mut roots = vec![];
    for p in procs.values() {
        if kernel.is_watched(p.pid) {
            continue;
        }
        let Some(rank) = best(p) else { continue };
        let parent_selected = procs.get(&p.ppid).is_some_and(|pp| best(pp).is_some() || kernel.is_watched(pp.pid));
        if !parent_selected {
            roots.push((p.pid, rank));
        }
    }
    roots.sort();
    roots
}

/// Puts a running process and all its descendants (every thread) into a tree rooted at it.
/// Returns the number of tasks added.
pub fn adopt_tree(kernel: &mut Kernel, root: u32, policy: u8) -> Result<usize> {
    if root <= 1 {
        bail!("refusing to watch pid {root}: every process descends from it");
    }
    if read_proc(root).and_then(|p| p.exe).is_none() {
        bail!("no process {root} (or it is a kernel thread)");
    }
    let mut added: Vec<(u32, u32)> = vec![];
    for _pass in 0..16 {
        let mut new = 0;
        // Parent -> children, from one scan of /proc.
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        for p in all_pids() {
            if let Some(pp) = read_ppid(p) {
                children.entry(pp).or_default().push(p);
            }
        }
        let mut stack = vec![root];
        while let Some(pid) = stack.pop() {
            loop {
                let mut more = 0;
                for tid in tids(pid) {
                    if kernel.adopt(tid, policy, root)? {
                        added.push((pid, tid));
                        more += 1;
                    }
                }
                new += more;
                if more == 0 {
                    break;
                }
            }
            stack.extend(children.get(&pid).into_iter().flatten());
        }
        if new == 0 {
            break;
        }
    }
    // A task that exited between the listing and the insert would stay in the map (and a
    // reused pid would inherit it): take those out again.
    for (pid, tid) in &added {
        if !std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists() {
            kernel.unadopt(*tid);
        }
    }
    Ok(added.len())
}

fn read_ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(m: Match, argv: &[&str]) -> SelectorConf {
        SelectorConf {
            name: "s".into(),
            policy: "p".into(),
            matcher: m,
            argv: argv.iter().map(|a| a.to_string()).collect(),
            index: 1,
        }
    }

    #[test]
    fn proc_matching_mirrors_the_kernel() {
        let p = Proc {
            pid: 10,
            ppid: 1,
            uid: 1001,
            exe: Some("/opt/agent/bin/claude".into()),
            argv: vec!["claude".into(), "--agent".into(), "x".into()],
            cgroup: Some("/agents.slice/a.service".into()),
        };
        assert!(matches(&sel(Match::ExeName("claude".into()), &[]), &p));
        assert!(matches(&sel(Match::ExeName("claude".into()), &["--agent"]), &p));
        assert!(!matches(&sel(Match::ExeName("claude".into()), &["--other"]), &p));
        assert!(matches(&sel(Match::ExePath("/opt/agent/bin/claude".into()), &[]), &p));
        assert!(!matches(&sel(Match::ExePath("/opt/agent/bin".into()), &[]), &p));
        assert!(matches(&sel(Match::Cgroup("/agents.slice".into()), &[]), &p));
        assert!(!matches(&sel(Match::Cgroup("/agents".into()), &[]), &p), "a prefix of a name is not a parent");
        assert!(matches(&sel(Match::User(1001), &[]), &p));
        assert!(!matches(&sel(Match::User(0), &[]), &p));
        let list = [sel(Match::ExeName("claude".into()), &[]), sel(Match::User(1001), &[])];
        assert_eq!(matching(&list, &p).iter().map(|(r, _)| *r).collect::<Vec<_>>(), vec![0, 1]);
    }
}
