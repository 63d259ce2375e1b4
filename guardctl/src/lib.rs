//! guardctl: the approver CLI of guard, and the pieces `guard-loadgen` (the server benchmark's
//! load generator) shares with it: mTLS connection set-up and gRPC error reporting.

pub use guard_proto::client as conn;
pub mod chain;
pub mod enroll;
pub mod failure;
pub mod render;
pub mod table;
