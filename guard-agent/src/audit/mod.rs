//! The audit trail: records are `guard_api::AuditRecord` ([`record`] builds them), written to
//! the local JSONL log ([`log`]) and, with a server, forwarded to it ([`forward`]).

pub mod forward;
pub mod log;
pub mod record;

pub use log::AuditLog;
