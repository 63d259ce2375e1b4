//! The store's passkeys (migration 0009), on SQLite and PostgreSQL alike: one credential id
//! belongs to one approver, an approval's counter update is kept, and an approver removes
//! only their own passkeys.
use guard_server::error::GuardError;
use guard_server::fanout::Fanout;
use guard_server::store::passkeys::StoredPasskey;
use guard_server::store::{self, Store};
use std::sync::Arc;

fn passkey(id: &str, user: &str, created_ms: i64) -> StoredPasskey {
    StoredPasskey {
        credential_id: id.into(),
        username: user.into(),
        user_handle: format!("handle-of-{user}"),
        label: "laptop".into(),
        passkey: format!("{{\"cred\":\"{id}\",\"counter\":0}}"),
        created_ms,
        last_used_ms: 0,
    }
}

async fn exercise(store: Arc<dyn Store>) {
    assert!(store.passkeys_of("alice").await.unwrap().is_empty());
    store.add_passkey(&passkey("cred-2", "alice", 20)).await.unwrap();
    store.add_passkey(&passkey("cred-1", "alice", 10)).await.unwrap();
    store.add_passkey(&passkey("cred-b", "bob", 10)).await.unwrap();
    let ids: Vec<String> = store.passkeys_of("alice").await.unwrap().into_iter().map(|p| p.credential_id).collect();
    assert_eq!(ids, ["cred-1", "cred-2"], "alice's own, oldest first");

    // The same credential again, for anyone: refused, nothing changes.
    match store.add_passkey(&passkey("cred-1", "bob", 30)).await {
        Err(GuardError::FailedPrecondition { kind: "PASSKEY_REGISTERED", .. }) => {}
        other => panic!("a second registration of cred-1 must be refused, got {other:?}"),
    }
    assert_eq!(store.passkeys_of("bob").await.unwrap().len(), 1);

    store.update_passkey("cred-1", "{\"cred\":\"cred-1\",\"counter\":7}", 99).await.unwrap();
    let one = store.passkeys_of("alice").await.unwrap().remove(0);
    assert_eq!((one.passkey.as_str(), one.last_used_ms), ("{\"cred\":\"cred-1\",\"counter\":7}", 99));

    assert!(!store.remove_passkey("bob", "cred-1").await.unwrap(), "bob cannot remove alice's passkey");
    assert!(store.remove_passkey("alice", "cred-1").await.unwrap());
    assert!(!store.remove_passkey("alice", "cred-1").await.unwrap(), "gone");
    let ids: Vec<String> = store.passkeys_of("alice").await.unwrap().into_iter().map(|p| p.credential_id).collect();
    assert_eq!(ids, ["cred-2"]);
}

#[tokio::test]
async fn passkeys_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("guard.db").display());
    exercise(store::open(&url, Fanout::default()).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(has_postgres), ignore = "SKIPPED: no PostgreSQL (initdb/pg_ctl) on the build machine")]
async fn passkeys_on_postgres() {
    use guard_server::testing::pg::{find_bindir, PgCluster};
    if let Err(why) = find_bindir() {
        panic!("PostgreSQL was installed at build time but is not now: {why}");
    }
    let pg_dir = tempfile::tempdir().unwrap();
    let mut cluster = PgCluster::start(pg_dir.path(), 5432).expect("PostgreSQL starts");
    exercise(store::open(&cluster.url(), Fanout::default()).await.unwrap()).await;
    cluster.stop().unwrap();
}
