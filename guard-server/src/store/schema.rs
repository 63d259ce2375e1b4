//! The schema, as versioned migrations (`guard-server/migrations/NNNN_*.sql`, embedded at
//! build time): each start applies the ones a database lacks, in order, once, and records
//! them in `_sqlx_migrations`. Both backends run the same files while their SQL agrees; when
//! it stops agreeing, split the directory per backend (migrations/sqlite, migrations/postgres)
//! and give each backend its own `Migrator`.
//!
//! To change the schema, add a new file with the next number; never edit one that shipped
//! (sqlx refuses to start on a database whose applied migration's checksum changed).
use sqlx::migrate::Migrator;

pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");
