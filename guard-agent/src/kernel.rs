//! Loading the eBPF programs, the maps userspace writes, and explaining kernels that cannot
//! enforce.

use crate::{btf::Btf as OffsetBtf, policy::Policy};
use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf},
    programs::{links::FdLink, Program, ProgramError},
    Btf, Ebpf, EbpfLoader,
};
use guard_common::{
    ArgvRule, Hold, NetRule, PathKey, PolicyConf, RuleRef, SelConf, SelKey, Selector, Verdict, Watched, MAX_ARGV_RULES,
    MAX_ARGV_TOKENS, MAX_CAPS, MAX_NET_RULES,
};
use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    time::Duration,
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/guard-ebpf.o"));

/// Extra time the kernel gives a hold past the agent's own timeout before denying by itself:
/// the agent is the one that decides; the kernel only covers for an agent that is gone.
pub const KERNEL_GRACE: Duration = Duration::from_secs(10);

/// The most tasks all watched trees may hold: WATCHED's capacity (65,536) less a margin for
/// forks that pass the check at the same moment.
pub const MAX_TREE_TASKS: u64 = 65_536 - 512;

/// The maps userspace reads and writes. The `Ebpf` handle keeps the programs attached.
pub struct Kernel {
    _ebpf: Ebpf,
    pub watched: HashMap<MapData, u32, Watched>,
    pub path_rules: LpmTrie<MapData, PathKey, RuleRef>,
    pub net_rules: Array<MapData, NetRule>,
    pub argv_rules: Array<MapData, ArgvRule>,
    pub cap_rules: Array<MapData, RuleRef>,
    pub policies: Array<MapData, PolicyConf>,
    pub holds: HashMap<MapData, u32, Hold>,
    pub verdicts: HashMap<MapData, u32, Verdict>,
    pub counters: PerCpuArray<MapData, u64>,
    pub task_count: Array<MapData, u64>,
    pub selectors: HashMap<MapData, SelKey, Selector>,
    pub sel_conf: Array<MapData, SelConf>,
}

/// Policy slots in the kernel (guard-ebpf's MAX_POLICIES).
pub const MAX_POLICIES: u8 = 16;

/// Maps a daemon pins, so that a restarted daemon (and the programs left attached while none
/// runs) share them: trees stay watched and rules stay in force across restarts.
const PINNED_MAPS: &[&str] = &[
    "WATCHED",
    "TASK_COUNT",
    "PATH_RULES",
    "NET_RULES",
    "ARGV_RULES",
    "CAP_RULES",
    "POLICIES",
    "HOLDS",
    "VERDICTS",
    "GRACE",
    "ARGV",
    "EVENTS",
    "COUNTERS",
    "SELECTORS",
    "SEL_CONF",
    "PENDING_SEL",
];

/// How a pinned load went.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PinReport {
    /// The directory of this build's maps and links.
    pub dir: PathBuf,
    /// The programs were already attached (left by an earlier daemon) and were kept.
    pub reused_programs: bool,
    /// Tasks carried over from the pins of another build.
    pub migrated_tasks: usize,
}

/// Why this kernel cannot enforce, in words a person can act on.
pub fn explain_kernel() -> Vec<String> {
    let mut problems = vec![];
    if !nix::unistd::geteuid().is_root() {
        problems.push("guard-agent must run as root (it loads BPF LSM programs)".to_string());
    }
    if std::fs::metadata("/sys/kernel/btf/vmlinux").is_err() {
        problems.push(
            "the kernel has no BTF (/sys/kernel/btf/vmlinux is missing): it needs CONFIG_DEBUG_INFO_BTF=y".into(),
        );
    }
    match std::fs::read_to_string("/sys/kernel/security/lsm") {
        Ok(lsms) if !lsms.split(',').any(|l| l.trim() == "bpf") => problems.push(format!(
            "the BPF LSM is not active (active LSMs: {}): add it to the kernel command line, e.g. lsm={},bpf, and reboot (needs CONFIG_BPF_LSM=y)",
            lsms.trim(),
            lsms.trim()
        )),
        Ok(_) => {}
        Err(e) => problems.push(format!(
            "cannot read /sys/kernel/security/lsm ({e}): mount securityfs (mount -t securityfs securityfs /sys/kernel/security)"
        )),
    }
    if OBJECT.is_empty() {
        problems.push("this guard-agent was built without its eBPF programs: build it with `cargo xtask build`".into());
    }
    problems
}

/// Turns a program load failure into the explanation of what the kernel is missing.
fn explain_load_error(name: &str, e: &ProgramError) -> anyhow::Error {
    if let ProgramError::LoadError { io_error, verifier_log } = e {
        if io_error.raw_os_error() == Some(libc::EPERM)
            || io_error.raw_os_error() == Some(524)
            || io_error.raw_os_error() == Some(libc::EOPNOTSUPP)
        {
            let mut msg = format!(
                "the kernel refused to load the LSM program {name} ({io_error}): this kernel does not allow BPF trampolines \
                 (BPF LSM and fentry programs need kernel text patching, which this kernel or its hypervisor forbids). \
                 guard cannot enforce here. Run it on a kernel with CONFIG_BPF_LSM=y, CONFIG_DEBUG_INFO_BTF=y, \
                 'bpf' in the lsm= boot parameter, and trampolines permitted (a stock distribution kernel on bare metal, KVM or QEMU)."
            );
            let problems = explain_kernel();
            if !problems.is_empty() {
                msg.push_str(" Also: ");
                msg.push_str(&problems.join("; "));
            }
            return anyhow!(msg);
        }
        return anyhow!("the verifier rejected {name}: {io_error}\n{verifier_log}");
    }
    anyhow!("cannot load {name}: {e}")
}

impl Kernel {
    /// Loads and attaches every program. Nothing is left attached on failure.
    pub fn load(max_tasks: u64) -> Result<(Kernel, RingBuf<MapData>)> {
        Self::load_inner(max_tasks, None).map(|(k, r, _)| (k, r))
    }

    /// The daemon's load: maps and links pinned under `root/<build>`. When an earlier daemon of
    /// the same build left its programs attached, they are kept as they are (no moment without
    /// enforcement); otherwise they are loaded, attached and pinned, and the pins of other
    /// builds are removed after their watched tasks were copied over.
    pub fn load_pinned(max_tasks: u64, root: &Path) -> Result<(Kernel, RingBuf<MapData>, PinReport)> {
        let (k, r, p) = Self::load_inner(max_tasks, Some(root))?;
        Ok((k, r, p.expect("pinned load reports")))
    }

    fn load_inner(max_tasks: u64, pin_root: Option<&Path>) -> Result<(Kernel, RingBuf<MapData>, Option<PinReport>)> {
        let problems = explain_kernel();
        if OBJECT.is_empty() {
            bail!("{}", problems.join("; "));
        }
        let offsets =
            OffsetBtf::from_sys_fs()?.guard_offsets().context("reading struct offsets from the kernel's BTF")?;
        let btf = Btf::from_sys_fs().context("loading the kernel's BTF")?;
        let pin_dir = pin_root.map(|r| r.join(build_id()));
        let mut loader = EbpfLoader::new();
        loader.override_global("OFFSETS", &offsets, true).override_global("MAX_TASKS", &max_tasks, true);
        let map_paths: Vec<(&str, PathBuf)> = match &pin_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).with_context(|| {
                    format!("creating the pin directory {} (is bpffs mounted on /sys/fs/bpf?)", dir.display())
                })?;
                PINNED_MAPS.iter().map(|n| (*n, dir.join(n))).collect()
            }
            None => vec![],
        };
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT).map_err(|e| {
            let base = anyhow!("cannot create the BPF maps: {e}");
            if problems.is_empty() {
                base
            } else {
                base.context(problems.join("; "))
            }
        })?;
        let names: Vec<String> = ebpf.programs_mut().map(|(n, _)| n.to_string()).collect();
        let link_path = |name: &str| pin_dir.as_ref().map(|d| d.join(format!("link_{name}")));
        let reuse = pin_dir.is_some() && names.iter().all(|n| link_path(n).is_some_and(|p| p.exists()));
        if !reuse {
            for name in &names {
                let prog = ebpf.program_mut(name).expect("listed");
                let link: Option<FdLink> = match prog {
                    Program::Lsm(p) => {
                        p.load(name, &btf).map_err(|e| explain_load_error(name, &e))?;
                        let id = p.attach().with_context(|| format!("attaching {name}"))?;
                        if pin_dir.is_some() {
                            Some(FdLink::from(p.take_link(id)?))
                        } else {
                            None
                        }
                    }
                    Program::BtfTracePoint(p) => {
                        p.load(name, &btf).map_err(|e| explain_load_error(name, &e))?;
                        let id = p.attach().with_context(|| format!("attaching {name}"))?;
                        if pin_dir.is_some() {
                            Some(FdLink::from(p.take_link(id)?))
                        } else {
                            None
                        }
                    }
                    _ => bail!("unexpected program type for {name}"),
                };
                if let (Some(link), Some(path)) = (link, link_path(name)) {
                    std::fs::remove_file(&path).ok();
                    // The pin keeps the program attached after this process exits.
                    link.pin(&path).with_context(|| format!("pinning the link of {name} at {}", path.display()))?;
                }
            }
        }
        let ring = RingBuf::try_from(take(&mut ebpf, "EVENTS")?)?;
        let kernel = Kernel {
            watched: HashMap::try_from(take(&mut ebpf, "WATCHED")?)?,
            path_rules: LpmTrie::try_from(take(&mut ebpf, "PATH_RULES")?)?,
            net_rules: Array::try_from(take(&mut ebpf, "NET_RULES")?)?,
            argv_rules: Array::try_from(take(&mut ebpf, "ARGV_RULES")?)?,
            cap_rules: Array::try_from(take(&mut ebpf, "CAP_RULES")?)?,
            policies: Array::try_from(take(&mut ebpf, "POLICIES")?)?,
            holds: HashMap::try_from(take(&mut ebpf, "HOLDS")?)?,
            verdicts: HashMap::try_from(take(&mut ebpf, "VERDICTS")?)?,
            counters: PerCpuArray::try_from(take(&mut ebpf, "COUNTERS")?)?,
            task_count: Array::try_from(take(&mut ebpf, "TASK_COUNT")?)?,
            selectors: HashMap::try_from(take(&mut ebpf, "SELECTORS")?)?,
            sel_conf: Array::try_from(take(&mut ebpf, "SEL_CONF")?)?,
            _ebpf: ebpf,
        };
        let report = match (pin_root, pin_dir) {
            (Some(root), Some(dir)) => {
                let mut kernel = kernel;
                let migrated = if reuse { 0 } else { kernel.migrate_other_builds(root, &dir) };
                return Ok((kernel, ring, Some(PinReport { dir, reused_programs: reuse, migrated_tasks: migrated })));
            }
            _ => None,
        };
        Ok((kernel, ring, report))
    }

    /// Copies the watched tasks pinned by other builds of guard (an upgrade), then removes
    /// those pins, which detaches the old programs. Rules come from this daemon's config.
    fn migrate_other_builds(&mut self, root: &Path, keep: &Path) -> usize {
        let mut moved = 0;
        let Ok(dirs) = std::fs::read_dir(root) else { return 0 };
        for d in dirs.flatten() {
            let dir = d.path();
            if dir == keep || !dir.is_dir() {
                continue;
            }
            if let Ok(old) = MapData::from_pin(dir.join("WATCHED"))
                .map_err(anyhow::Error::from)
                .and_then(|m| Ok(HashMap::<MapData, u32, Watched>::try_from(aya::maps::Map::from_map_data(m)?)?))
            {
                for (tid, w) in old.iter().flatten() {
                    if self.adopt(tid, w.policy, w.root).unwrap_or(false) {
                        moved += 1;
                    }
                }
            }
            tracing::info!("removing the pins of another guard build at {}", dir.display());
            if let Ok(files) = std::fs::read_dir(&dir) {
                for f in files.flatten() {
                    std::fs::remove_file(f.path()).ok();
                }
            }
            std::fs::remove_dir(&dir).ok();
        }
        moved
    }

    /// Adds one task to a tree unless it is in one already; true when added. Used for trees
    /// that already run (the kernel counts the task from here on).
    pub fn adopt(&mut self, tid: u32, policy: u8, root: u32) -> Result<bool> {
        const BPF_NOEXIST: u64 = 1;
        match self.watched.insert(tid, Watched { policy, _pad: [0; 3], root }, BPF_NOEXIST) {
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
    pub fn unadopt(&mut self, tid: u32) {
        if self.watched.remove(&tid).is_ok() {
            let n = self.task_count.get(&0, 0).unwrap_or(0);
            self.task_count.set(0, n.saturating_sub(1), 0).ok();
        }
    }

    /// Every watched task: tid -> (policy, root).
    pub fn watched_tasks(&self) -> Vec<(u32, Watched)> {
        self.watched.iter().flatten().collect()
    }

    /// The policy slots in use and the name hash each was installed with.
    pub fn policy_slots(&self) -> Vec<(u8, u64)> {
        (0..MAX_POLICIES)
            .filter_map(|i| self.policies.get(&(i as u32), 0).ok().map(|c| (i, c.name_hash)))
            .filter(|(_, h)| *h != 0)
            .collect()
    }

    /// Installs a daemon policy under `id`, named (see PolicyConf::name_hash), and removes the
    /// path rules a previous version of it had in that slot.
    pub fn install_named_policy(&mut self, id: u8, name: &str, policy: &Policy) -> Result<()> {
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
    pub fn set_selectors(&mut self, entries: &[(SelKey, Selector)]) -> Result<()> {
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
    pub fn install_policy(&mut self, id: u8, policy: &Policy) -> Result<()> {
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
        };
        self.policies.set(id as u32, conf, 0).context("writing the policy settings")?;
        Ok(())
    }

    pub fn watch(&mut self, tid: u32, policy: u8, root: u32) -> Result<()> {
        self.watched
            .insert(tid, Watched { policy, _pad: [0; 3], root }, 0)
            .context("adding a process to the watched tree")?;
        // The kernel keeps this count from here on; nothing of the tree runs yet to race with.
        let n = self.task_count.get(&0, 0).unwrap_or(0);
        self.task_count.set(0, n + 1, 0).context("counting the watched task")?;
        Ok(())
    }

    pub fn is_watched(&self, pid: u32) -> bool {
        self.watched.get(&pid, 0).is_ok()
    }

    pub fn watched_count(&self) -> usize {
        self.watched.keys().filter(|k| k.is_ok()).count()
    }

    pub fn holds_in_kernel(&self) -> usize {
        self.holds.keys().filter(|k| k.is_ok()).count()
    }

    pub fn lost_events(&self) -> u64 {
        self.counters.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }

    pub fn set_verdict(&mut self, tid: u32, seq: u64, hash: u64, allow: bool) -> Result<()> {
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

/// Identifies this build's eBPF object (and so its maps' layouts): pins are per build.
pub fn build_id() -> String {
    format!("{:016x}", guard_common::fnv1a(OBJECT))
}

fn take(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    ebpf.take_map(name).ok_or_else(|| anyhow!("the eBPF object has no map {name}"))
}
