//! The guard.v1 protocol, generated from `proto/guard/v1/*.proto`.

pub mod v1 {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("guard.v1");
}

pub use v1::*;

pub mod client;

/// What guard-server accepts in one process's argv (it refuses a request past these): agents
/// cut what they send to fit, and say so (`argv_truncated`).
pub mod limits {
    /// Arguments per process.
    pub const MAX_ARGV: usize = 64;
    /// Bytes per argument.
    pub const MAX_ARG_BYTES: usize = 4096;
}

impl v1::State {
    /// The short lower-case name people read in tables and records.
    pub fn label(self) -> &'static str {
        match self {
            v1::State::Unspecified => "unspecified",
            v1::State::Pending => "pending",
            v1::State::Approved => "approved",
            v1::State::Denied => "denied",
            v1::State::Expired => "expired",
            v1::State::Cancelled => "cancelled",
        }
    }
}

impl From<v1::AuditEvent> for guard_api::chain::ChainRow {
    /// The audit row as the server's chain hashes it (`guard_api::chain::row_hash`).
    fn from(e: v1::AuditEvent) -> Self {
        guard_api::chain::ChainRow {
            seq: i64::try_from(e.seq).unwrap_or(i64::MAX),
            time_ms: e.time_ms,
            host: e.host,
            kind: e.kind,
            request_id: e.request_id,
            json: e.json,
            prev_hash: e.prev_hash,
            hash: e.hash,
        }
    }
}
