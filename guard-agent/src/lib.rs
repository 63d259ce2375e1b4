//! guard-agent: loads guard's LSM programs, watches AI agents' process trees and decides their
//! privileged operations; holds wait for a person's decision.
//!
//! The modules follow the data path:
//!
//! ```text
//! kernel (LSM hook -> verdict maps -> ring buffer) -> agent::handle (state, event) -> effects
//!    |                                                   |                |
//!    +-- policy (parse, compile into the maps)           |                +-> audit (JSONL log, forward)
//!    +-- tree (selectors, /proc, adoption)               +-> hold (table, local / remote decisions)
//! host: run, daemon, admin + reasons sockets (wires the above together)
//! ```
//!
//! `limits` holds the default paths and kernel limits every module may use.

pub mod agent;
pub mod audit;
pub mod config;
pub mod hold;
pub mod host;
pub mod kernel;
pub mod limits;
pub mod policy;
pub mod tree;
