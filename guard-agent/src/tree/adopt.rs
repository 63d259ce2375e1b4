//! Trees that already run: finding them in /proc (selectors, evaluated the way the kernel does
//! at exec) and adopting a whole running tree into the kernel's map.
//!
//! The kernel starts new trees at exec with no race; this is for what runs before the daemon
//! starts or before a selector exists (and for `watch --pid`). Adoption inserts a process before
//! listing its children, so a child forked later is tracked by the kernel and one forked earlier
//! is found by the next pass; passes repeat until one adds nothing.

use super::{
    proc::{all_pids, ppid, read_proc, task_exists, tids, Proc},
    selector::{matching, SelectorConf},
};
use crate::kernel::KernelMaps;
use anyhow::{bail, Result};
use std::collections::HashMap;

/// Processes that are not watched, match a selector, and whose parent does not match one:
/// the roots of trees that run already. Returns (pid, selector rank).
pub fn find_unwatched_roots(kernel: &dyn KernelMaps, selectors: &[SelectorConf], exclude: &[u32]) -> Vec<(u32, usize)> {
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
pub fn adopt_tree(kernel: &mut dyn KernelMaps, root: u32, policy: u8) -> Result<usize> {
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
            if let Some(pp) = ppid(p) {
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
        if !task_exists(*pid, *tid) {
            kernel.unadopt(*tid);
        }
    }
    Ok(added.len())
}
