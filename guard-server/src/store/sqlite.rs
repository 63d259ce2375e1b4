//! SQLite: one embedded file, WAL so readers never wait for the writer, created with its
//! schema on first start. The default, for one server.
use super::sql::{Backend, SqlStore, SCHEMA};
use crate::fanout::Fanout;
use anyhow::Context;
use sqlx::any::AnyPoolOptions;
use std::path::Path;

/// Writers serialize on the database lock anyway; a few connections let reads go on
/// beside one writer.
const MAX_CONNECTIONS: u32 = 4;

pub async fn open(url: &str, fanout: Fanout) -> anyhow::Result<SqlStore> {
    sqlx::any::install_default_drivers();
    let (path, query) = match url.trim_start_matches("sqlite://").trim_start_matches("sqlite:").split_once('?') {
        Some((path, query)) => (path.to_string(), Some(query.to_string())),
        None => (url.trim_start_matches("sqlite://").trim_start_matches("sqlite:").to_string(), None),
    };
    if path.is_empty() || path.contains(":memory:") {
        anyhow::bail!("{url}: give SQLite a file (an in-memory database would not be shared by the pool)");
    }
    if let Some(dir) = Path::new(&path).parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // `mode=rwc` creates the file on first start.
    let url = format!("sqlite://{path}?{}", query.unwrap_or_else(|| "mode=rwc".into()));
    let pool = AnyPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .after_connect(|conn, _| {
            Box::pin(async move {
                // WAL makes NORMAL durable across crashes of the process (not of the OS),
                // at a fraction of FULL's fsyncs; wait for the write lock rather than fail.
                sqlx::query("PRAGMA synchronous = NORMAL").execute(&mut *conn).await?;
                sqlx::query("PRAGMA busy_timeout = 10000").execute(&mut *conn).await?;
                sqlx::query("PRAGMA foreign_keys = ON").execute(&mut *conn).await?;
                Ok(())
            })
        })
        .connect(&url)
        .await
        .with_context(|| format!("cannot open SQLite database {path}"))?;
    sqlx::query("PRAGMA journal_mode = WAL").execute(&pool).await.context("cannot switch SQLite to WAL")?;
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    for stmt in SCHEMA {
        sqlx::query(*stmt).execute(&mut *tx).await.with_context(|| format!("schema: {stmt}"))?;
    }
    tx.commit().await?;
    Ok(SqlStore::new(pool, Backend::Sqlite, fanout))
}
