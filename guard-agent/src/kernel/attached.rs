//! Whether this agent's programs are attached, asked of the kernel itself rather than taken
//! from the agent's own belief: a link pin removed from outside, an `umount -l` of the bpffs or
//! a `BPF_LINK_DETACH` leaves the agent running with nothing attached, and `status` must say so.
//!
//! The ids of the programs are taken at load (from the programs this agent loaded, or from the
//! link pins it kept); a program is attached when the kernel lists a link pointing at it.
//! Names cannot identify them: the kernel keeps 15 bytes of a name (`sched_process_exec` and
//! `sched_process_exit` are both `sched_process_e`), and another guard may run the same ones.

use aya::programs::loaded_links;
use serde::Serialize;
use std::collections::BTreeMap;

/// This agent's programs: (name, the kernel's program id).
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub programs: Vec<(String, u32)>,
}

/// One program of the object, as the kernel sees it now.
#[derive(Debug, Clone, Serialize)]
pub struct ProgramState {
    pub name: String,
    pub program_id: u32,
    /// Ids of the links attaching it (none: detached).
    pub link_ids: Vec<u32>,
}

impl ProgramState {
    pub fn attached(&self) -> bool {
        !self.link_ids.is_empty()
    }
}

/// Each program of `id`, with the links the kernel lists for it now.
pub fn check(id: &Identity) -> Vec<ProgramState> {
    let mut links: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    // A link released while the list is walked is simply not there any more.
    for l in loaded_links().flatten() {
        links.entry(l.program_id()).or_default().push(l.id());
    }
    id.programs
        .iter()
        .map(|(name, program_id)| ProgramState {
            name: name.clone(),
            program_id: *program_id,
            link_ids: links.get(program_id).cloned().unwrap_or_default(),
        })
        .collect()
}
