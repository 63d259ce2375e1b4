//! The contract every guard process shares, apart from the gRPC messages (`guard-proto`):
//!
//! - [`record::AuditRecord`], the one audit record: the agent's JSONL, what the agent reports to
//!   guard-server, the server's audit rows, guardctl and the end-to-end tests all read and write
//!   this type and nothing else;
//! - [`time::Timestamp`], the one time format of records (RFC 3339, UTC, milliseconds);
//! - [`span::Location`], the one rule that turns a byte span in a config or policy file into
//!   `file:line:col`;
//! - [`screen::escape`], the one way text a watched tree controls is printed for a person;
//! - [`export`], the record in the formats SIEMs ingest (OCSF, ECS, CEF).
//!
//! It has no tonic, no tokio and no aya, so the kernel-facing agent and the VM test runner can
//! depend on it without pulling in the network stack.

pub mod chain;
pub mod export;
pub mod record;
pub mod screen;
pub mod span;
pub mod time;

pub use record::{Action, AuditRecord, Decision, Hook, Reason, RecordKind, StatedReason};
pub use span::{toml_message, Location};
pub use time::Timestamp;
