//! Approvers' passkeys (table `passkeys`, migration 0009): what `crate::passkey` needs to keep
//! between ceremonies. The key material itself is webauthn-rs's `Passkey`, stored as its JSON
//! text, so this layer does not know WebAuthn.
use super::sql::SqlStore;
use crate::error::{GuardError, GuardResult};
use async_trait::async_trait;
use sqlx::Row;

/// One stored passkey of one approver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPasskey {
    /// The credential id, base64url (no padding), as the authenticator made it.
    pub credential_id: String,
    pub username: String,
    /// The WebAuthn user handle (a UUID, the same for all of this approver's passkeys).
    pub user_handle: String,
    /// The approver's name for it ("laptop"), shown in the console.
    pub label: String,
    /// webauthn-rs `Passkey` as JSON: public key, counter, backup state.
    pub passkey: String,
    pub created_ms: i64,
    /// 0 until first used for an approval.
    pub last_used_ms: i64,
}

#[async_trait]
pub trait PasskeyStore: Send + Sync {
    /// The approver's passkeys, oldest first.
    async fn passkeys_of(&self, username: &str) -> GuardResult<Vec<StoredPasskey>>;
    /// Adds a passkey; ALREADY_EXISTS-like FailedPrecondition when its credential id is
    /// registered already (to anyone: WebAuthn says a credential belongs to one account).
    async fn add_passkey(&self, passkey: &StoredPasskey) -> GuardResult<()>;
    /// Stores the passkey's new state (counter, backup state) after an approval, and when.
    async fn update_passkey(&self, credential_id: &str, passkey: &str, used_ms: i64) -> GuardResult<()>;
    /// Removes one of the approver's passkeys; false when they have none with that id.
    async fn remove_passkey(&self, username: &str, credential_id: &str) -> GuardResult<bool>;
}

fn row_to_passkey(row: &sqlx::any::AnyRow) -> GuardResult<StoredPasskey> {
    Ok(StoredPasskey {
        credential_id: row.try_get("credential_id")?,
        username: row.try_get("username")?,
        user_handle: row.try_get("user_handle")?,
        label: row.try_get("label")?,
        passkey: row.try_get("passkey")?,
        created_ms: row.try_get("created_ms")?,
        last_used_ms: row.try_get("last_used_ms")?,
    })
}

#[async_trait]
impl PasskeyStore for SqlStore {
    async fn passkeys_of(&self, username: &str) -> GuardResult<Vec<StoredPasskey>> {
        let rows = sqlx::query(
            "SELECT credential_id, username, user_handle, label, passkey, created_ms, last_used_ms \
             FROM passkeys WHERE username = $1 ORDER BY created_ms, credential_id",
        )
        .bind(username.to_string())
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(row_to_passkey).collect()
    }

    async fn add_passkey(&self, p: &StoredPasskey) -> GuardResult<()> {
        // The primary key refuses a second row for the credential; asking first gives the
        // caller a clear error instead of a driver's constraint message (a race between two
        // registrations of one credential still ends in the constraint, as an error).
        let taken = sqlx::query("SELECT 1 AS one FROM passkeys WHERE credential_id = $1")
            .bind(p.credential_id.clone())
            .fetch_optional(self.pool())
            .await?;
        if taken.is_some() {
            return Err(GuardError::precondition(
                "PASSKEY_REGISTERED",
                &p.credential_id,
                "this passkey is registered already",
            ));
        }
        sqlx::query(
            "INSERT INTO passkeys (credential_id, username, user_handle, label, passkey, created_ms, last_used_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(p.credential_id.clone())
        .bind(p.username.clone())
        .bind(p.user_handle.clone())
        .bind(p.label.clone())
        .bind(p.passkey.clone())
        .bind(p.created_ms)
        .bind(p.last_used_ms)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn update_passkey(&self, credential_id: &str, passkey: &str, used_ms: i64) -> GuardResult<()> {
        sqlx::query("UPDATE passkeys SET passkey = $1, last_used_ms = $2 WHERE credential_id = $3")
            .bind(passkey.to_string())
            .bind(used_ms)
            .bind(credential_id.to_string())
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn remove_passkey(&self, username: &str, credential_id: &str) -> GuardResult<bool> {
        let done = sqlx::query("DELETE FROM passkeys WHERE username = $1 AND credential_id = $2")
            .bind(username.to_string())
            .bind(credential_id.to_string())
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
