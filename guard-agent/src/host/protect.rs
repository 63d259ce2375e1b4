//! Self-protection at start (issue 10 items 1 and 2): what the kernel's tamper baseline must
//! protect for `run` and the daemon, and the pins that let `run`'s programs outlive the agent.
//!
//! `run` pins its links and maps under `RUN_PIN_ROOT/<agent pid>/<build>`, so a `kill -9` of
//! the agent leaves every rule of its tree enforced (the links hold the programs, the programs
//! hold the maps). A normal exit removes its own pins (the programs detach once the process
//! has closed its fds). Pins left by an agent that died are removed by the next `run` once the
//! tree they enforce has no task left (its WATCHED map is empty); while one task of the tree
//! runs they stay.

use crate::kernel::{
    guard_objects::{canonical, GuardPath},
    Kernel,
};
use crate::limits::DEFAULT_PIN_DIR;
use anyhow::{Context, Result};
use aya::maps::{HashMap, Map, MapData};
use guard_common::Watched;
use std::path::{Path, PathBuf};

/// Where every `run` agent pins its programs, one directory per agent process.
pub const RUN_PIN_ROOT: &str = "/sys/fs/bpf/guard-run";

/// The spool's files for the tamper baseline: the spool, its shipped position (and the file
/// it is written aside to), and the host's audit key (not even readable by a tree).
pub fn spool_paths(log: &Path) -> Vec<GuardPath> {
    let shipped = crate::audit::position::path_for(log);
    let mut aside = shipped.clone().into_os_string();
    aside.push(".new");
    let key = crate::audit::log::key_path(log);
    vec![
        GuardPath::File(log.into()),
        GuardPath::File(shipped),
        GuardPath::File(aside.into()),
        GuardPath::Secret(key.with_extension("new")),
        GuardPath::Secret(key),
    ]
}

/// Writes the tamper baseline's maps: this process, `paths` (plus guard-agent's own binary,
/// the pin directories of `run` and of the default daemon, and `pin_dir`), and the BPF objects
/// pinned in `pin_dir`.
pub fn protect(kernel: &mut Kernel, pin_dir: &Path, paths: Vec<GuardPath>) -> Result<()> {
    kernel.protect_self()?;
    let paths = with_own_paths(pin_dir, paths);
    kernel.protect_paths(&paths)?;
    let n = kernel.protect_objects(pin_dir)?;
    tracing::info!(
        "tamper baseline: {} paths protected ({}), {n} BPF objects",
        paths.len(),
        paths
            .iter()
            .map(|p| match p {
                GuardPath::File(p) | GuardPath::Dir(p) | GuardPath::Secret(p) => canonical(p).display().to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// `paths` and what every agent protects: its own binary, the pin directories of `run` and of
/// the default daemon, and `pin_dir`.
pub fn with_own_paths(pin_dir: &Path, mut paths: Vec<GuardPath>) -> Vec<GuardPath> {
    if let Ok(exe) = std::env::current_exe() {
        paths.push(GuardPath::File(exe));
    }
    paths.push(GuardPath::Dir(RUN_PIN_ROOT.into()));
    paths.push(GuardPath::Dir(DEFAULT_PIN_DIR.into()));
    paths.push(GuardPath::Dir(pin_dir.into()));
    paths
}

/// The pins of one `run` agent; removed on drop (a normal exit), left by a `kill -9`.
pub struct RunPins {
    root: PathBuf,
}

impl RunPins {
    /// Removes the pins of dead agents whose trees are gone, and names this agent's root.
    pub fn create() -> Result<Self> {
        std::fs::create_dir_all(RUN_PIN_ROOT).with_context(|| {
            format!("creating {RUN_PIN_ROOT}: `run` pins its programs in the BPF filesystem so that they outlive the agent (mount it: mount -t bpf bpf /sys/fs/bpf)")
        })?;
        for d in std::fs::read_dir(RUN_PIN_ROOT)?.flatten() {
            let Ok(pid) = d.file_name().to_string_lossy().parse::<u32>() else { continue };
            if Path::new(&format!("/proc/{pid}")).exists() && pid != std::process::id() {
                continue;
            }
            if tree_alive(&d.path()) {
                tracing::info!("keeping the pins of agent {pid} (gone): its tree still runs, enforced by them");
                continue;
            }
            remove_pins(&d.path());
        }
        Ok(RunPins { root: Path::new(RUN_PIN_ROOT).join(std::process::id().to_string()) })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Drop for RunPins {
    fn drop(&mut self) {
        remove_pins(&self.root);
    }
}

/// Whether any build under `agent_dir` still watches a task.
fn tree_alive(agent_dir: &Path) -> bool {
    let Ok(builds) = std::fs::read_dir(agent_dir) else { return false };
    builds.flatten().any(|b| {
        MapData::from_pin(b.path().join("WATCHED"))
            .ok()
            .and_then(|m| HashMap::<MapData, u32, Watched>::try_from(Map::from_map_data(m).ok()?).ok())
            .is_some_and(|w| w.keys().flatten().next().is_some())
    })
}

/// Removes a pin directory two levels deep (agent/build/pin).
fn remove_pins(dir: &Path) {
    for b in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(b.path()).into_iter().flatten().flatten() {
            std::fs::remove_file(f.path()).ok();
        }
        std::fs::remove_dir(b.path()).ok();
    }
    std::fs::remove_dir(dir).ok();
}
