//! The kernel's maps as the rest of the agent sees them: a small trait, so the event handler,
//! the daemon and `run` never touch a raw aya map, and unit tests drive them with a fake.

use super::Kernel;
use crate::limits::{KERNEL_GRACE, MAX_POLICIES};
use crate::policy::Policy;
use anyhow::{Context, Result};
use aya::maps::lpm_trie::Key;
use guard_common::{
    ArgvRule, Hold, NetRule, PathKey, PolicyConf, RuleRef, SelConf, SelKey, Selector, Verdict, Watched, MAX_ARGV_RULES,
    MAX_ARGV_TOKENS, MAX_CAPS, MAX_NET_RULES,
};
use std::collections::HashSet;

/// What userspace reads from and writes into the kernel's maps.
pub trait KernelMaps: Send {
    /// Puts the first task of a new tree into the map (nothing of the tree runs yet).
    fn watch(&mut self, tid: u32, policy: u8, root: u32) -> Result<()>;
    /// Adds one task to a tree unless it is in one already; true when added.
    fn adopt(&mut self, tid: u32, policy: u8, root: u32) -> Result<bool>;
    /// Removes a task added by mistake (it exited while being adopted).
    fn unadopt(&mut self, tid: u32);
    /// The tree entry of a task, while it lives.
    fn watched(&self, tid: u32) -> Option<Watched>;
    /// Every watched task: tid -> (policy, root).
    fn watched_tasks(&self) -> Vec<(u32, Watched)>;
    fn watched_count(&self) -> usize;
    /// The kernel's count of tree tasks (bounds the trees' size).
    fn counted_tasks(&self) -> u64;
    fn holds_in_kernel(&self) -> usize;
    /// Every hold the kernel has: tid -> hold.
    fn held(&self) -> Vec<(u32, Hold)>;
    /// Events the kernel could not put on the ring buffer, since the maps were created.
    fn lost_events(&self) -> u64;
    /// Operations the kernel denied because something failed (`COUNTERS[reason]`, see
    /// `guard_common::counter`), since the maps were created.
    fn failed_closed(&self, _reason: u8) -> u64 {
        0
    }
    /// The verdict for the hold (tid, seq, hash); the held thread reads it when resumed.
    fn set_verdict(&mut self, tid: u32, seq: u64, hash: u64, allow: bool) -> Result<()>;
    /// Writes a policy's rules under `id`.
    fn install_policy(&mut self, id: u8, policy: &Policy) -> Result<()>;
    /// Installs a daemon policy under `id`, named, and drops its stale path rules.
    fn install_named_policy(&mut self, id: u8, name: &str, policy: &Policy) -> Result<()>;
    /// The policy slots in use and the name hash each was installed with.
    fn policy_slots(&self) -> Vec<(u8, u64)>;
    /// Replaces the selector table.
    fn set_selectors(&mut self, entries: &[(SelKey, Selector)]) -> Result<()>;
    /// Replaces the paths the tamper baseline protects (a reload may name new files).
    fn set_guard_paths(&mut self, _paths: &[super::guard_objects::GuardPath]) -> Result<()> {
        Ok(())
    }

    fn is_watched(&self, tid: u32) -> bool {
        self.watched(tid).is_some()
    }

    /// The root of the tree a task belongs to, while it lives.
    fn tree_root(&self, tid: u32) -> Option<u32> {
        self.watched(tid).map(|w| w.root)
    }
}

impl KernelMaps for Kernel {
    fn watched(&self, tid: u32) -> Option<Watched> {
        self.watched.get(&tid, 0).ok()
    }

    fn counted_tasks(&self) -> u64 {
        self.task_count.get(&0, 0).unwrap_or(0)
    }

    fn held(&self) -> Vec<(u32, Hold)> {
        self.holds.iter().flatten().collect()
    }

    /// Adds one task to a tree unless it is in one already; true when added. Used for trees
    /// that already run (the kernel counts the task from here on).
    fn adopt(&mut self, tid: u32, policy: u8, root: u32) -> Result<bool> {
        match self.watched.insert(tid, Watched { policy, _pad: [0; 3], root }, guard_common::BPF_NOEXIST) {
            Ok(()) => {
                // Not atomic against the kernel's own count updates: off by one at worst, for
                // a fork at the same microsecond; the count only bounds the trees' size.
                let n = self.task_count.get(&0, 0).unwrap_or(0);
                self.task_count.set(0, n + 1, 0).ok();
                Ok(true)
            }
            Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(e).context("adding a task to a watched tree"),
        }
    }

    /// Removes a task added by mistake (it exited while being adopted).
    fn unadopt(&mut self, tid: u32) {
        if self.watched.remove(&tid).is_ok() {
            let n = self.task_count.get(&0, 0).unwrap_or(0);
            self.task_count.set(0, n.saturating_sub(1), 0).ok();
        }
    }

    /// Every watched task: tid -> (policy, root).
    fn watched_tasks(&self) -> Vec<(u32, Watched)> {
        self.watched.iter().flatten().collect()
    }

    /// The policy slots in use and the name hash each was installed with.
    fn policy_slots(&self) -> Vec<(u8, u64)> {
        (0..MAX_POLICIES)
            .filter_map(|i| self.policies.get(&(i as u32), 0).ok().map(|c| (i, c.name_hash)))
            .filter(|(_, h)| *h != 0)
            .collect()
    }

    /// Installs a daemon policy under `id`, named (see PolicyConf::name_hash), and removes the
    /// path rules a previous version of it had in that slot.
    fn install_named_policy(&mut self, id: u8, name: &str, policy: &Policy) -> Result<()> {
        self.install_policy(id, policy)?;
        let keep: HashSet<Vec<u8>> =
            policy.compile(id).paths.iter().map(|(k, len, _)| path_key_bytes(k, *len)).collect();
        let stale: Vec<Key<PathKey>> = self
            .path_rules
            .keys()
            .flatten()
            .filter(|k| k.data().policy == id && !keep.contains(&path_key_bytes(&k.data(), k.prefix_len())))
            .collect();
        for k in stale {
            self.path_rules.remove(&k).ok();
        }
        let mut conf = self.policies.get(&(id as u32), 0).context("reading back the policy settings")?;
        conf.name_hash = guard_common::fnv1a(name.as_bytes()).max(1);
        self.policies.set(id as u32, conf, 0).context("naming the policy")?;
        Ok(())
    }

    /// Replaces the selector table: new entries first, then stale ones out, then the counts.
    fn set_guard_paths(&mut self, paths: &[super::guard_objects::GuardPath]) -> Result<()> {
        self.protect_paths(paths)
    }

    fn set_selectors(&mut self, entries: &[(SelKey, Selector)]) -> Result<()> {
        let mut conf = SelConf::default();
        for (k, v) in entries {
            self.selectors.insert(*k, *v, 0).context("writing a selector")?;
            match k.kind {
                guard_common::selector::EXE_PATH | guard_common::selector::EXE_NAME => conf.exe += 1,
                guard_common::selector::CGROUP => conf.cgroup += 1,
                _ => conf.user += 1,
            }
        }
        let keep: HashSet<SelKey> = entries.iter().map(|(k, _)| *k).collect();
        let stale: Vec<SelKey> = self.selectors.keys().flatten().filter(|k| !keep.contains(k)).collect();
        for k in stale {
            self.selectors.remove(&k).ok();
        }
        self.sel_conf.set(0, conf, 0).context("writing the selector counts")?;
        Ok(())
    }

    /// Writes a policy's rules under `id`. Rules go in before the default so that no operation
    /// is ever decided by a half-written policy's default.
    fn install_policy(&mut self, id: u8, policy: &Policy) -> Result<()> {
        let c = policy.compile(id);
        for (key, len, rr) in &c.paths {
            self.path_rules.insert(&Key::new(*len, *key), *rr, 0).context("writing a path rule")?;
        }
        let base = id as u32 * MAX_NET_RULES;
        for i in 0..MAX_NET_RULES {
            let rule = c.net.get(i as usize).copied().unwrap_or(NetRule {
                addr: [0; 16],
                mask: [0; 16],
                port: 0,
                used: 0,
                action: 0,
                rule: 0,
            });
            self.net_rules.set(base + i, rule, 0).context("writing a network rule")?;
        }
        let base = id as u32 * MAX_ARGV_RULES;
        for i in 0..MAX_ARGV_RULES {
            let rule = c.argv.get(i as usize).copied().unwrap_or(ArgvRule {
                path_hash: 0,
                tokens: [0; MAX_ARGV_TOKENS],
                rule: 0,
                ntok: 0,
                action: 0,
                used: 0,
                _pad: 0,
            });
            self.argv_rules.set(base + i, rule, 0).context("writing an exec argv rule")?;
        }
        for cap in 0..MAX_CAPS {
            let rr = c.caps.get(&(cap as u8)).copied().unwrap_or(RuleRef { rule: 0, action: 0, _pad: [0; 3] });
            self.cap_rules.set(id as u32 * MAX_CAPS + cap, rr, 0).context("writing a capability rule")?;
        }
        let none = RuleRef { rule: 0, action: 0, _pad: [0; 3] };
        let conf = PolicyConf {
            default_action: policy.default as u8,
            _pad: [0; 3],
            mount: c.mount.unwrap_or(none),
            module: c.module.unwrap_or(none),
            bpf: c.bpf.unwrap_or(none),
            ptrace: c.ptrace.unwrap_or(none),
            _pad2: [0; 4],
            hold_deadline_ns: (policy.ask_timeout + KERNEL_GRACE).as_nanos() as u64,
            name_hash: 0,
            userns: c.userns.unwrap_or(none),
            chroot: c.chroot.unwrap_or(none),
            pivot_root: c.pivot_root.unwrap_or(none),
            umount: c.umount.unwrap_or(none),
            exec_anonymous: c.exec_anonymous.unwrap_or(none),
            io_uring: if policy.io_uring_deny { guard_common::IO_URING_DENY } else { guard_common::IO_URING_ALLOW },
            _pad3: [0; 7],
        };
        self.policies.set(id as u32, conf, 0).context("writing the policy settings")?;
        Ok(())
    }

    fn watch(&mut self, tid: u32, policy: u8, root: u32) -> Result<()> {
        self.watched
            .insert(tid, Watched { policy, _pad: [0; 3], root }, 0)
            .context("adding a process to the watched tree")?;
        // The kernel keeps this count from here on; nothing of the tree runs yet to race with.
        let n = self.task_count.get(&0, 0).unwrap_or(0);
        self.task_count.set(0, n + 1, 0).context("counting the watched task")?;
        Ok(())
    }

    fn watched_count(&self) -> usize {
        self.watched.keys().filter(|k| k.is_ok()).count()
    }

    fn holds_in_kernel(&self) -> usize {
        self.holds.keys().filter(|k| k.is_ok()).count()
    }

    fn lost_events(&self) -> u64 {
        self.counters.get(&guard_common::counter::EVENTS_LOST, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }

    fn failed_closed(&self, reason: u8) -> u64 {
        self.counters.get(&(reason as u32), 0).map(|v| v.iter().sum()).unwrap_or(0)
    }

    fn set_verdict(&mut self, tid: u32, seq: u64, hash: u64, allow: bool) -> Result<()> {
        self.verdicts
            .insert(tid, Verdict { seq, hash, allow: allow as u8, _pad: [0; 7] }, 0)
            .context("writing a verdict")?;
        Ok(())
    }
}

/// The bytes of a path key a prefix length covers (to compare keys regardless of the rest).
fn path_key_bytes(k: &PathKey, prefix_len: u32) -> Vec<u8> {
    let mut v = vec![k.policy, k.class];
    v.extend_from_slice(&k.path);
    v.truncate((prefix_len as usize).div_ceil(8));
    v.extend_from_slice(&prefix_len.to_le_bytes());
    v
}
