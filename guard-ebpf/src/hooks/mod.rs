//! The LSM programs, one module per family. Each starts the same way: a thread outside every
//! watched tree returns at once (one hash lookup).
mod attrs;
mod exec;
mod files;
mod links;
mod namespaces;
mod network;
mod privileged;
mod receive;
mod tamper;
mod unix;

pub use tamper::agent_alive;
