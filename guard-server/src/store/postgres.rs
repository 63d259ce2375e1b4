//! PostgreSQL: for several replicas on one database. Besides the shared SQL, each change is
//! announced with `NOTIFY guard_requests, '<id>'` (sent at commit, see `SqlStore::commit`)
//! and every replica LISTENs, so a decision taken on one replica reaches the streams held
//! by another.
use super::schema::MIGRATOR;
use super::sql::{Backend, SqlStore};
use crate::fanout::{Change, Fanout};
use anyhow::Context;
use sqlx::any::AnyPoolOptions;
use sqlx::postgres::{PgConnection, PgListener};
use sqlx::Connection;
use std::time::Duration;

pub const CHANNEL: &str = "guard_requests";
const MAX_CONNECTIONS: u32 = 16;

pub async fn open(url: &str, fanout: Fanout) -> anyhow::Result<SqlStore> {
    sqlx::any::install_default_drivers();
    // Migrations first, on a typed connection: sqlx's PostgreSQL migrator holds an advisory
    // lock while it runs, so replicas starting together apply each migration once.
    let mut conn = PgConnection::connect(url).await.with_context(|| format!("cannot connect to {}", redact(url)))?;
    MIGRATOR.run(&mut conn).await.context("cannot migrate the PostgreSQL database")?;
    conn.close().await?;

    // Listen before serving, so no change made after start-up is missed.
    let mut listener = PgListener::connect(url).await.context("cannot open the LISTEN connection")?;
    listener.listen(CHANNEL).await?;
    let relay = tokio::spawn(relay(listener, fanout.clone()));

    let pool = AnyPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .with_context(|| format!("cannot connect to {}", redact(url)))?;
    Ok(SqlStore::new(pool, Backend::Postgres, fanout).with_task(relay))
}

/// Passes every notification to the local streams (including this replica's own: the
/// streams re-read rows and skip what they already sent).
async fn relay(mut listener: PgListener, fanout: Fanout) {
    loop {
        match listener.recv().await {
            Ok(n) => fanout.publish_id(n.payload()),
            Err(e) => {
                // The listener reconnects on the next recv; what was sent meanwhile is lost,
                // so tell the streams to re-read.
                tracing::warn!("LISTEN {CHANNEL}: {e}; reconnecting");
                fanout.publish(Change::Resync);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
