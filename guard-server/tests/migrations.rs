//! The schema comes from versioned migrations: a fresh database gets all of them, and a second
//! start applies none twice.
use guard_server::fanout::Fanout;
use guard_server::store::{self, schema::MIGRATOR};
use sqlx::{Connection, Row, SqliteConnection};

async fn applied(url: &str) -> Vec<(i64, String)> {
    let mut conn = SqliteConnection::connect(url).await.unwrap();
    let rows = sqlx::query("SELECT version, installed_on FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    rows.iter().map(|r| (r.get::<i64, _>("version"), r.get::<String, _>("installed_on"))).collect()
}

#[tokio::test]
async fn a_fresh_database_gets_the_schema_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("guard.db").display());
    drop(store::open(&url, Fanout::default()).await.expect("first start"));

    let first = applied(&url).await;
    let versions: Vec<i64> = first.iter().map(|(v, _)| *v).collect();
    let expected: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
    assert_eq!(versions, expected, "every migration applied");
    let mut conn = SqliteConnection::connect(&url).await.unwrap();
    let tables: Vec<String> = sqlx::query("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get("name"))
        .collect();
    for table in ["audit", "audit_head", "grants", "hosts", "requests", "reviews", "sink_positions"] {
        assert!(tables.iter().any(|t| t == table), "{table} missing: {tables:?}");
    }
    let head: i64 = sqlx::query("SELECT count(*) AS n FROM audit_head").fetch_one(&mut conn).await.unwrap().get("n");
    assert_eq!(head, 1);

    drop(store::open(&url, Fanout::default()).await.expect("second start"));
    assert_eq!(applied(&url).await, first, "the second start applied nothing");
}
