//! SQLite: one embedded file, WAL so readers never wait for the writer, created and migrated
//! to the current schema on start. The default, for one server.
use super::schema::MIGRATOR;
use super::sql::{Backend, SqlStore};
use crate::fanout::Fanout;
use anyhow::Context;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, AssertSqlSafe};
use std::path::Path;
use std::time::Duration;

/// Writers serialize on the database lock anyway; a few connections let reads go on
/// beside one writer.
const MAX_CONNECTIONS: u32 = 4;
/// How often the WAL is copied back into the database, off the commit path.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);
/// Pages a connection caches (negative: KiB), so the indexes' hot pages stay in memory.
const CACHE_KIB: i64 = 16 * 1024;

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
                // FULL: a commit is on disk (the WAL fsynced) before it is answered, so an
                // answered decision and its audit rows survive a crash of the OS or a power
                // cut too; submissions are committed in groups, which shares the fsync.
                // Wait for the write lock rather than fail.
                sqlx::query("PRAGMA synchronous = FULL").execute(&mut *conn).await?;
                sqlx::query("PRAGMA busy_timeout = 10000").execute(&mut *conn).await?;
                sqlx::query("PRAGMA foreign_keys = ON").execute(&mut *conn).await?;
                sqlx::query(AssertSqlSafe(format!("PRAGMA cache_size = -{CACHE_KIB}"))).execute(&mut *conn).await?;
                // Checkpoints run in `checkpoints`, not inside whichever commit crosses the
                // threshold (that commit would wait for the copy and its fsyncs).
                sqlx::query("PRAGMA wal_autocheckpoint = 0").execute(&mut *conn).await?;
                Ok(())
            })
        })
        .connect(&url)
        .await
        .with_context(|| format!("cannot open SQLite database {path}"))?;
    sqlx::query("PRAGMA journal_mode = WAL").execute(&pool).await.context("cannot switch SQLite to WAL")?;
    MIGRATOR.run(&pool).await.with_context(|| format!("cannot migrate the SQLite database {path}"))?;
    let checkpointer = tokio::spawn(checkpoints(pool.clone()));
    Ok(SqlStore::new(pool, Backend::Sqlite, fanout).with_task(checkpointer))
}

/// Copies the WAL back into the database now and then. PASSIVE never waits for (nor
/// blocks) the writer or the readers; whatever it could not copy is copied next time.
async fn checkpoints(pool: AnyPool) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&pool).await {
            tracing::warn!("SQLite checkpoint: {e}");
        }
    }
}
