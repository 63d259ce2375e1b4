//! Loading the eBPF programs, the maps userspace writes, and explaining kernels that cannot
//! enforce.

use crate::{btf::Btf as OffsetBtf, policy::Policy};
use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf},
    programs::{Program, ProgramError},
    Btf, Ebpf, EbpfLoader,
};
use guard_common::{
    ArgvRule, Hold, NetRule, PathKey, PolicyConf, RuleRef, Verdict, Watched, MAX_ARGV_RULES, MAX_ARGV_TOKENS, MAX_CAPS,
    MAX_NET_RULES,
};
use std::time::Duration;

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
        let problems = explain_kernel();
        if OBJECT.is_empty() {
            bail!("{}", problems.join("; "));
        }
        let offsets =
            OffsetBtf::from_sys_fs()?.guard_offsets().context("reading struct offsets from the kernel's BTF")?;
        let btf = Btf::from_sys_fs().context("loading the kernel's BTF")?;
        let mut ebpf = EbpfLoader::new()
            .override_global("OFFSETS", &offsets, true)
            .override_global("MAX_TASKS", &max_tasks, true)
            .load(OBJECT)
            .map_err(|e| {
                let base = anyhow!("cannot create the BPF maps: {e}");
                if problems.is_empty() {
                    base
                } else {
                    base.context(problems.join("; "))
                }
            })?;
        let names: Vec<String> = ebpf.programs_mut().map(|(n, _)| n.to_string()).collect();
        for name in &names {
            let prog = ebpf.program_mut(name).expect("listed");
            match prog {
                Program::Lsm(p) => {
                    p.load(name, &btf).map_err(|e| explain_load_error(name, &e))?;
                    p.attach().with_context(|| format!("attaching {name}"))?;
                }
                Program::BtfTracePoint(p) => {
                    p.load(name, &btf).map_err(|e| explain_load_error(name, &e))?;
                    p.attach().with_context(|| format!("attaching {name}"))?;
                }
                _ => bail!("unexpected program type for {name}"),
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
            _ebpf: ebpf,
        };
        Ok((kernel, ring))
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
            hold_deadline_ns: (policy.ask_timeout + KERNEL_GRACE).as_nanos() as u64,
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

fn take(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    ebpf.take_map(name).ok_or_else(|| anyhow!("the eBPF object has no map {name}"))
}
