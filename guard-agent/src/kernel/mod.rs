//! The kernel side of the data path as userspace sees it: loading and attaching the eBPF
//! programs (pinned for the daemon), the struct offsets from BTF ([`btf`]), the maps behind the
//! [`maps::KernelMaps`] trait, reading the ring buffer ([`ring`]), decoding its events
//! ([`event`]) and turning the kernel's u8 codes into the audit vocabulary ([`codes`]).

pub mod attached;
pub mod btf;
pub mod codes;
pub mod event;
pub mod guard_objects;
pub mod maps;
pub mod ring;

pub use maps::KernelMaps;

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf},
    programs::{links::FdLink, Program, ProgramError},
    Btf, Ebpf, EbpfLoader,
};
use btf::Btf as OffsetBtf;
use guard_common::{
    ArgvRule, Hold, NetRule, PathKey, PolicyConf, RuleRef, SelConf, SelKey, Selector, Verdict, Watched,
};
use std::path::{Path, PathBuf};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/guard-ebpf.o"));

/// The maps userspace reads and writes. The `Ebpf` handle keeps the programs attached.
pub struct Kernel {
    _ebpf: Ebpf,
    /// The programs' ids, to ask the kernel whether they are still attached (`status`).
    identity: attached::Identity,
    watched: HashMap<MapData, u32, Watched>,
    path_rules: LpmTrie<MapData, PathKey, RuleRef>,
    net_rules: Array<MapData, NetRule>,
    argv_rules: Array<MapData, ArgvRule>,
    cap_rules: Array<MapData, RuleRef>,
    policies: Array<MapData, PolicyConf>,
    holds: HashMap<MapData, u32, Hold>,
    verdicts: HashMap<MapData, u32, Verdict>,
    counters: PerCpuArray<MapData, u64>,
    task_count: Array<MapData, u64>,
    selectors: HashMap<MapData, SelKey, Selector>,
    sel_conf: Array<MapData, SelConf>,
    /// The tamper baseline's maps (see [`guard_objects`]).
    guard_pids: HashMap<MapData, u32, u32>,
    guard_paths: LpmTrie<MapData, PathKey, u8>,
    guard_ids: HashMap<MapData, u64, u8>,
}

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

/// LSM hooks that newer kernels have and 6.1 does not: their programs are loaded only where the
/// kernel has the hook. On 6.1, POSIX ACLs are extended attributes and pass `inode_setxattr`;
/// from 6.2 on they have hooks of their own.
const NEWER_HOOKS: [&str; 2] = ["inode_set_acl", "inode_remove_acl"];

/// One line on how long loading took (mostly the verifier), slowest programs first: the
/// agent's start time is dominated by it, and it differs between kernels.
fn log_load_times(mut times: Vec<(std::time::Duration, String, Option<u32>)>) {
    let total: std::time::Duration = times.iter().map(|t| t.0).sum();
    times.sort_by_key(|t| std::cmp::Reverse(t.0));
    let slowest: Vec<String> = times
        .iter()
        .take(5)
        .map(|(d, name, insns)| match insns {
            Some(n) => format!("{name} {} ms ({n} insns verified)", d.as_millis()),
            None => format!("{name} {} ms", d.as_millis()),
        })
        .collect();
    tracing::info!("loaded {} programs in {} ms; slowest: {}", times.len(), total.as_millis(), slowest.join(", "));
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
        let kernel_btf = OffsetBtf::from_sys_fs()?;
        let offsets = kernel_btf.guard_offsets().context("reading struct offsets from the kernel's BTF")?;
        let btf = Btf::from_sys_fs().context("loading the kernel's BTF")?;
        let pin_dir = pin_root.map(|r| r.join(build_id()));
        let mut loader = EbpfLoader::new();
        // The host-wide budget stays below WATCHED's capacity (what is left holds the roots
        // userspace adds); `max_tasks` (--max-tree-tasks) bounds each tree.
        let global = crate::limits::MAX_TREE_TASKS;
        let hold_key = hold_key()?;
        loader.override_global("OFFSETS", &offsets, true).override_global("MAX_TASKS", &global, true).override_global(
            "MAX_TREE_TASKS",
            &max_tasks,
            true,
        );
        loader.override_global("HOLD_KEY", &hold_key, true);
        // Hidden, for the tests that fill the ring buffer or the hold table on purpose.
        if let Some(bytes) = test_size("GUARD_TEST_RING_BYTES").filter(|v| *v >= 4096 && v.is_power_of_two()) {
            tracing::warn!("GUARD_TEST_RING_BYTES: a ring buffer of {bytes} bytes");
            loader.map_max_entries("EVENTS", bytes);
        }
        if let Some(slots) = test_size("GUARD_TEST_HOLD_SLOTS").filter(|v| *v >= 1) {
            tracing::warn!("GUARD_TEST_HOLD_SLOTS: a hold table of {slots} entries");
            loader.map_max_entries("HOLDS", slots);
        }
        let map_paths: Vec<(&str, PathBuf)> = match &pin_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).with_context(|| {
                    format!("creating the pin directory {} (is bpffs mounted on /sys/fs/bpf?)", dir.display())
                })?;
                guard_common::map_name::PINNED.iter().map(|n| (*n, dir.join(n))).collect()
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
        let mut names: Vec<String> = ebpf.programs_mut().map(|(n, _)| n.to_string()).collect();
        names.retain(|name| {
            let present = !NEWER_HOOKS.contains(&name.as_str()) || kernel_btf.has_func(&format!("bpf_lsm_{name}"));
            if !present {
                tracing::info!(
                    "{name}: no such LSM hook on this kernel, not loaded (what it decides passes an older hook here)"
                );
            }
            present
        });
        let link_path = |name: &str| pin_dir.as_ref().map(|d| d.join(format!("link_{name}")));
        let reuse = pin_dir.is_some() && names.iter().all(|n| link_path(n).is_some_and(|p| p.exists()));
        let mut identity = attached::Identity::default();
        if reuse {
            for name in &names {
                let path = link_path(name).expect("pinned load");
                let link = aya::programs::links::PinnedLink::from_pin(&path)
                    .with_context(|| format!("opening the link pin {}", path.display()))?;
                let info = FdLink::from(link).info().with_context(|| format!("reading the link of {name}"))?;
                identity.programs.push((name.clone(), info.program_id()));
            }
        } else {
            let mut load_times = Vec::new();
            for name in &names {
                let prog = ebpf.program_mut(name).expect("listed");
                // LSM and BTF tracepoint programs load, attach and pin alike; only their types
                // differ, so one body serves both.
                macro_rules! load_attach {
                    ($p:expr) => {{
                        let p = $p;
                        let started = std::time::Instant::now();
                        p.load(name, &btf).map_err(|e| explain_load_error(name, &e))?;
                        let info = p.info().with_context(|| format!("reading the id of {name}"))?;
                        load_times.push((started.elapsed(), name.clone(), info.verified_instruction_count()));
                        identity.programs.push((name.clone(), info.id()));
                        let id = p.attach().with_context(|| format!("attaching {name}"))?;
                        match pin_dir {
                            Some(_) => Some(FdLink::from(p.take_link(id)?)),
                            None => None,
                        }
                    }};
                }
                let link: Option<FdLink> = match prog {
                    Program::Lsm(p) => load_attach!(p),
                    Program::BtfTracePoint(p) => load_attach!(p),
                    _ => bail!("unexpected program type for {name}"),
                };
                if let (Some(link), Some(path)) = (link, link_path(name)) {
                    std::fs::remove_file(&path).ok();
                    // The pin keeps the program attached after this process exits.
                    link.pin(&path).with_context(|| format!("pinning the link of {name} at {}", path.display()))?;
                }
            }
            log_load_times(load_times);
        }
        let ring = RingBuf::try_from(take(&mut ebpf, "EVENTS")?)?;
        let heartbeat = Array::try_from(take(&mut ebpf, "HEARTBEAT")?)?;
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
            guard_pids: HashMap::try_from(take(&mut ebpf, "GUARD_PIDS")?)?,
            guard_paths: LpmTrie::try_from(take(&mut ebpf, "GUARD_PATHS")?)?,
            guard_ids: HashMap::try_from(take(&mut ebpf, "GUARD_IDS")?)?,
            identity,
            _ebpf: ebpf,
        };
        // From now on the programs know an agent is alive (holds may stop threads).
        guard_objects::start_heartbeat(heartbeat);
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

    /// What identifies this agent's programs in the kernel (see [`attached::check`]).
    pub fn identity(&self) -> attached::Identity {
        self.identity.clone()
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
}

/// The key of the kernel's hold bindings (`HOLD_KEY`, SipHash): fresh random bytes at each
/// load, so a watched tree cannot compute which objects share a binding.
fn hold_key() -> Result<[u64; 2]> {
    use std::io::Read;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom for the hold binding key")?;
    Ok([
        u64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
        u64::from_le_bytes(b[8..].try_into().expect("8 bytes")),
    ])
}

/// `GUARD_TEST_RING_BYTES`: a smaller ring buffer (a power of two, at least a page), for the
/// end-to-end tests that fill it on purpose. Not a user option.
/// A map size the tests set through the environment (never documented for users: a smaller
/// map only makes guard deny sooner).
fn test_size(var: &str) -> Option<u32> {
    std::env::var(var).ok()?.parse().ok()
}

/// Identifies this build's eBPF object (and so its maps' layouts): pins are per build.
pub fn build_id() -> String {
    format!("{:016x}", guard_common::fnv1a(OBJECT))
}

fn take(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    ebpf.take_map(name).ok_or_else(|| anyhow!("the eBPF object has no map {name}"))
}
