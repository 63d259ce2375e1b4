//! What the kernel's tamper baseline protects (issue 10 item 1; guard-ebpf `hooks::tamper`),
//! written by the agent: its own processes (`GUARD_PIDS`), files (`GUARD_PATHS`) and BPF
//! objects (`GUARD_IDS`), and the heartbeat (`HEARTBEAT`) by which the programs know an agent
//! is alive to answer holds.
//!
//! Paths are written as the kernel resolves them: canonical global paths (symlinks followed),
//! files exactly ("/x\0"), directories as themselves and everything below ("/d\0", "/d/"), and
//! every proper ancestor directory exactly (unmounting, mounting over or renaming one would
//! move or hide what is below).

use super::Kernel;
use anyhow::{Context, Result};
use aya::maps::{lpm_trie::Key, Array, MapData};
use guard_common::{guard_id, guard_path, PathKey, HEARTBEAT_INTERVAL_MS, PATH_LEN};
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

/// One thing of guard's that no watched task may touch.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum GuardPath {
    /// A file (binary, config, policy, audit log, socket): no change, no new name.
    File(PathBuf),
    /// A directory and everything in it (pins, spool).
    Dir(PathBuf),
    /// A file nobody in a tree may even read (private keys).
    Secret(PathBuf),
}

/// The path as the kernel will see it: symlinks resolved; a path that does not exist yet (a
/// socket about to be bound) resolved through its parent.
pub fn canonical(p: &Path) -> PathBuf {
    if let Ok(c) = std::fs::canonicalize(p) {
        return c;
    }
    match (p.parent(), p.file_name()) {
        (Some(dir), Some(name)) if !dir.as_os_str().is_empty() => canonical(dir).join(name),
        _ => std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()),
    }
}

/// The `GUARD_PATHS` keys (class, key bytes) for `paths`.
pub fn path_keys(paths: &[GuardPath]) -> Vec<(u8, Vec<u8>)> {
    let mut keys = BTreeSet::new();
    for gp in paths {
        let (class, path, dir) = match gp {
            GuardPath::File(p) => (guard_path::PROTECTED, canonical(p), false),
            GuardPath::Dir(p) => (guard_path::PROTECTED, canonical(p), true),
            GuardPath::Secret(p) => (guard_path::SECRET, canonical(p), false),
        };
        let text = path.to_string_lossy().trim_end_matches('/').to_string();
        if text.is_empty() {
            continue;
        }
        let mut exact = text.as_bytes().to_vec();
        exact.push(0);
        keys.insert((class, exact));
        if dir {
            keys.insert((class, format!("{text}/").into_bytes()));
        }
        // Every proper ancestor, "/" included.
        let mut ancestor = text.as_str();
        while let Some(i) = ancestor.rfind('/') {
            ancestor = &ancestor[..i];
            let a = if ancestor.is_empty() { "/" } else { ancestor };
            let mut k = a.as_bytes().to_vec();
            k.push(0);
            keys.insert((guard_path::ANCESTOR, k));
        }
    }
    keys.into_iter().filter(|(_, k)| k.len() <= PATH_LEN).collect()
}

fn lpm_key(class: u8, bytes: &[u8]) -> Key<PathKey> {
    let mut k = PathKey { policy: 0, class, path: [0; PATH_LEN] };
    k.path[..bytes.len()].copy_from_slice(bytes);
    Key::new(((2 + bytes.len()) * 8) as u32, k)
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into `ts`, which lives for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Writes the heartbeat from a thread of its own (not the async runtime, not the state
/// lock: a busy agent is still an agent), for the life of the process. When the process dies
/// the beats stop, and after `HEARTBEAT_STALE_NS` the kernel denies asks at once.
pub fn start_heartbeat(mut beat: Array<MapData, u64>) {
    beat.set(0, monotonic_ns(), 0).ok();
    std::thread::Builder::new()
        .name("guard-heartbeat".into())
        .spawn(move || loop {
            if STOPPING.load(Ordering::SeqCst) {
                // A clean stop says so at once: no ask waits for a beat that will not come.
                beat.set(0, 0, 0).ok();
                STOPPED.store(true, Ordering::SeqCst);
                return;
            }
            if let Err(e) = beat.set(0, monotonic_ns(), 0) {
                tracing::error!("cannot write the heartbeat: {e}");
            }
            std::thread::sleep(Duration::from_millis(HEARTBEAT_INTERVAL_MS));
        })
        .expect("spawning the heartbeat thread");
}

static STOPPING: AtomicBool = AtomicBool::new(false);
static STOPPED: AtomicBool = AtomicBool::new(false);

/// The agent is stopping on purpose: the heartbeat is cleared (asks from now on are denied
/// by the kernel as `agent_gone`). Waits up to two beats for the thread to do it.
pub fn stop_heartbeat() {
    STOPPING.store(true, Ordering::SeqCst);
    for _ in 0..20 {
        if STOPPED.load(Ordering::SeqCst) {
            return;
        }
        std::thread::sleep(Duration::from_millis(HEARTBEAT_INTERVAL_MS / 10));
    }
}

impl Kernel {
    /// Makes this process one of guard's own: watched tasks can neither signal nor trace it.
    /// Entries of processes that are gone (an earlier daemon) are removed.
    pub fn protect_self(&mut self) -> Result<()> {
        let me = std::process::id();
        let stale: Vec<u32> = self.guard_pids.keys().flatten().filter(|p| *p != me).collect();
        for p in stale {
            if !Path::new(&format!("/proc/{p}")).exists() {
                self.guard_pids.remove(&p).ok();
            }
        }
        self.guard_pids.insert(me, 1, 0).context("writing guard's pid into GUARD_PIDS")?;
        Ok(())
    }

    /// Replaces guard's protected paths with `paths`.
    pub fn protect_paths(&mut self, paths: &[GuardPath]) -> Result<()> {
        let keys = path_keys(paths);
        let old: Vec<Key<PathKey>> = self.guard_paths.keys().flatten().collect();
        for (class, bytes) in &keys {
            self.guard_paths
                .insert(&lpm_key(*class, bytes), 1, 0)
                .with_context(|| format!("writing the protected path {}", String::from_utf8_lossy(bytes)))?;
        }
        let wanted: BTreeSet<Vec<u8>> = keys.iter().map(|(c, b)| key_id(&lpm_key(*c, b))).collect();
        for k in old {
            if !wanted.contains(&key_id(&k)) {
                self.guard_paths.remove(&k).ok();
            }
        }
        Ok(())
    }

    /// Lists guard's programs, maps and links (by the links pinned in `pin_dir`) in GUARD_IDS.
    /// Returns how many objects were listed.
    pub fn protect_objects(&mut self, pin_dir: &Path) -> Result<usize> {
        let mut ids = BTreeSet::new();
        let mut progs = BTreeSet::new();
        for f in std::fs::read_dir(pin_dir).with_context(|| format!("reading {}", pin_dir.display()))?.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.starts_with("link_") {
                let link = aya::programs::links::FdLink::from(
                    aya::programs::links::PinnedLink::from_pin(f.path())
                        .with_context(|| format!("opening the link pin {}", f.path().display()))?,
                );
                let info = link.info().context("reading a link's info")?;
                ids.insert(guard_id::LINK | info.id() as u64);
                ids.insert(guard_id::PROG | info.program_id() as u64);
                progs.insert(info.program_id());
            } else if let Ok(info) = aya::maps::MapInfo::from_pin(f.path()) {
                ids.insert(guard_id::MAP | info.id() as u64);
            }
        }
        for p in aya::programs::loaded_programs().flatten() {
            if progs.contains(&p.id()) {
                for m in p.map_ids().ok().flatten().unwrap_or_default() {
                    ids.insert(guard_id::MAP | m as u64);
                }
            }
        }
        for id in &ids {
            self.guard_ids.insert(*id, 1, 0).context("writing GUARD_IDS")?;
        }
        Ok(ids.len())
    }
}

/// The bytes that identify an LPM key (prefix length and the bytes it covers).
fn key_id(k: &Key<PathKey>) -> Vec<u8> {
    let d = k.data();
    let mut v = vec![d.policy, d.class];
    v.extend_from_slice(&d.path);
    v.truncate((k.prefix_len() as usize).div_ceil(8));
    v.extend_from_slice(&k.prefix_len().to_le_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_dirs_and_ancestors_have_keys() {
        let keys = path_keys(&[
            GuardPath::File("/nonexistent-guard-test/etc/agent.toml".into()),
            GuardPath::Dir("/nonexistent-guard-test/pins/".into()),
            GuardPath::Secret("/nonexistent-guard-test/keys/host.key".into()),
        ]);
        let has = |c: u8, s: &[u8]| keys.iter().any(|(kc, k)| *kc == c && k == s);
        assert!(has(guard_path::PROTECTED, b"/nonexistent-guard-test/etc/agent.toml\0"));
        assert!(has(guard_path::PROTECTED, b"/nonexistent-guard-test/pins\0"));
        assert!(has(guard_path::PROTECTED, b"/nonexistent-guard-test/pins/"));
        assert!(has(guard_path::SECRET, b"/nonexistent-guard-test/keys/host.key\0"));
        assert!(has(guard_path::ANCESTOR, b"/nonexistent-guard-test/etc\0"));
        assert!(has(guard_path::ANCESTOR, b"/nonexistent-guard-test\0"));
        assert!(has(guard_path::ANCESTOR, b"/\0"));
        // A file is not a prefix of its siblings.
        assert!(!has(guard_path::PROTECTED, b"/nonexistent-guard-test/etc/agent.toml/"));
        assert!(!has(guard_path::ANCESTOR, b"/nonexistent-guard-test/etc/agent.toml\0"));
    }

    #[test]
    fn missing_files_resolve_through_their_parent() {
        let dir = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(dir.path()).unwrap();
        assert_eq!(canonical(&dir.path().join("agent.sock")), real.join("agent.sock"));
    }
}
