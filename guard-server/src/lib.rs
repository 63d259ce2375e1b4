//! guard-server: the central approval service of guard. Agents submit held operations,
//! approvers review them, everything lands in one audit trail; SQLite for one server,
//! PostgreSQL for several replicas.
pub mod audit;
pub mod chat;
pub mod config;
pub mod console;
pub mod enroll;
pub mod error;
pub mod fanout;
pub mod http_client;
pub mod identity;
pub mod ids;
pub mod lifecycle;
pub mod passkey;
pub mod pki;
pub mod ratelimit;
pub mod revocation;
pub mod rules;
pub mod search;
pub mod server;
pub mod service;
pub mod sinks;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod validate;
