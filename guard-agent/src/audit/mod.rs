//! The audit trail: records are `guard_api::AuditRecord` ([`record`] builds them), sealed into
//! the host's hash chain and written to the local spool ([`log`]; read back and repaired at
//! start by [`recover`]), and, with a server, shipped to it at least once ([`forward`], from
//! the acknowledged [`position`]).

pub mod forward;
pub mod log;
pub mod position;
pub mod record;
pub mod recover;

pub use log::{AuditLog, BACKLOG_MAX_BYTES};
