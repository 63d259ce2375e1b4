//! The web console's users and sessions (migration 0007). The console decides what a row
//! means (roles, lockout, expiry: `console::accounts`); this file only reads and writes rows,
//! each change in one statement or one write transaction.
use super::sql::{begin_write, SqlStore};
use crate::error::GuardResult;
use async_trait::async_trait;
use sqlx::Row;

/// A console user as stored. `name` is the approver name the policy uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// approver | admin | auditor (`console::accounts::Role`).
    pub role: String,
    /// argon2id, PHC string format.
    pub password_hash: String,
    pub disabled: bool,
    /// Failed sign-ins since the last success or lockout.
    pub failures: u32,
    /// Sign-in is refused until this time (0: never locked).
    pub locked_until_ms: i64,
    pub created_ms: i64,
}

/// A console session. The id itself is only in the browser's cookie; `id_hash` is its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id_hash: String,
    pub user: String,
    /// The token every form of this session carries (CSRF).
    pub csrf: String,
    pub created_ms: i64,
    pub last_seen_ms: i64,
    /// How it was opened: "password" or "oidc" (migration 0011).
    pub method: String,
}

/// What a failed sign-in did to the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// Failures counted so far (reset to 0 when this one locked the account).
    pub failures: u32,
    /// Set when this failure locked the account: until when.
    pub locked_until_ms: Option<i64>,
}

#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Adds `user`; false (and nothing changed) when the name is taken.
    async fn create_user(&self, user: &User) -> GuardResult<bool>;
    async fn user(&self, name: &str) -> GuardResult<Option<User>>;
    /// Every user, by name.
    async fn users(&self) -> GuardResult<Vec<User>>;
    /// Disables or enables `name`; disabling ends its sessions. False when there is no such user.
    async fn set_user_disabled(&self, name: &str, disabled: bool) -> GuardResult<bool>;
    /// Replaces `name`'s password hash, clears its failures and lockout and ends its sessions.
    async fn set_password(&self, name: &str, password_hash: &str, now_ms: i64) -> GuardResult<bool>;
    /// Counts a failed sign-in of `name`; at `max_failures` the account is locked until
    /// `now_ms + lock_ms` and the count starts again. None when there is no such user.
    async fn sign_in_failed(
        &self,
        name: &str,
        now_ms: i64,
        max_failures: u32,
        lock_ms: i64,
    ) -> GuardResult<Option<Failure>>;
    /// A successful sign-in: the failures are forgotten.
    async fn sign_in_succeeded(&self, name: &str) -> GuardResult<()>;
    async fn create_session(&self, session: &Session) -> GuardResult<()>;
    async fn session(&self, id_hash: &str) -> GuardResult<Option<Session>>;
    async fn touch_session(&self, id_hash: &str, now_ms: i64) -> GuardResult<()>;
    async fn delete_session(&self, id_hash: &str) -> GuardResult<()>;
    /// Deletes the sessions idle since before `idle_before_ms` or created before
    /// `created_before_ms`; returns how many.
    async fn delete_stale_sessions(&self, idle_before_ms: i64, created_before_ms: i64) -> GuardResult<u64>;
}

const USER_COLUMNS: &str = "name, role, password_hash, disabled, failures, locked_until_ms, created_ms";

fn user_from_row(row: &sqlx::any::AnyRow) -> GuardResult<User> {
    let disabled: i64 = row.try_get("disabled")?;
    let failures: i64 = row.try_get("failures")?;
    Ok(User {
        name: row.try_get("name")?,
        role: row.try_get("role")?,
        password_hash: row.try_get("password_hash")?,
        disabled: disabled != 0,
        failures: u32::try_from(failures).unwrap_or(u32::MAX),
        locked_until_ms: row.try_get("locked_until_ms")?,
        created_ms: row.try_get("created_ms")?,
    })
}

fn session_from_row(row: &sqlx::any::AnyRow) -> GuardResult<Session> {
    Ok(Session {
        id_hash: row.try_get("id_hash")?,
        user: row.try_get("user_name")?,
        csrf: row.try_get("csrf")?,
        created_ms: row.try_get("created_ms")?,
        last_seen_ms: row.try_get("last_seen_ms")?,
        method: row.try_get("method")?,
    })
}

#[async_trait]
impl AccountStore for SqlStore {
    async fn create_user(&self, user: &User) -> GuardResult<bool> {
        let done = sqlx::query(
            "INSERT INTO console_users (name, role, password_hash, disabled, failures, locked_until_ms, created_ms, \
             password_changed_ms) VALUES ($1, $2, $3, $4, 0, 0, $5, $5) ON CONFLICT (name) DO NOTHING",
        )
        .bind(user.name.clone())
        .bind(user.role.clone())
        .bind(user.password_hash.clone())
        .bind(i64::from(user.disabled))
        .bind(user.created_ms)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn user(&self, name: &str) -> GuardResult<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM console_users WHERE name = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(name.to_string()).fetch_optional(self.pool()).await?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn users(&self) -> GuardResult<Vec<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM console_users ORDER BY name");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(self.pool()).await?;
        rows.iter().map(user_from_row).collect()
    }

    async fn set_user_disabled(&self, name: &str, disabled: bool) -> GuardResult<bool> {
        let mut tx = begin_write(self.pool(), self.backend()).await?;
        let done = sqlx::query("UPDATE console_users SET disabled = $1 WHERE name = $2")
            .bind(i64::from(disabled))
            .bind(name.to_string())
            .execute(&mut *tx)
            .await?;
        if disabled {
            sqlx::query("DELETE FROM console_sessions WHERE user_name = $1")
                .bind(name.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn set_password(&self, name: &str, password_hash: &str, now_ms: i64) -> GuardResult<bool> {
        let mut tx = begin_write(self.pool(), self.backend()).await?;
        let done = sqlx::query(
            "UPDATE console_users SET password_hash = $1, password_changed_ms = $2, failures = 0, locked_until_ms = 0 \
             WHERE name = $3",
        )
        .bind(password_hash.to_string())
        .bind(now_ms)
        .bind(name.to_string())
        .execute(&mut *tx)
        .await?;
        // Whoever knew the old password may hold a session: it ends with it.
        sqlx::query("DELETE FROM console_sessions WHERE user_name = $1")
            .bind(name.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn sign_in_failed(
        &self,
        name: &str,
        now_ms: i64,
        max_failures: u32,
        lock_ms: i64,
    ) -> GuardResult<Option<Failure>> {
        // One write transaction: concurrent failures are all counted, and exactly one of them
        // locks the account.
        let mut tx = begin_write(self.pool(), self.backend()).await?;
        let row = sqlx::query("UPDATE console_users SET failures = failures + 1 WHERE name = $1 RETURNING failures")
            .bind(name.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(None);
        };
        let failures = u32::try_from(row.try_get::<i64, _>("failures")?).unwrap_or(u32::MAX);
        let mut failure = Failure { failures, locked_until_ms: None };
        if failures >= max_failures.max(1) {
            let until = now_ms.saturating_add(lock_ms);
            sqlx::query("UPDATE console_users SET failures = 0, locked_until_ms = $1 WHERE name = $2")
                .bind(until)
                .bind(name.to_string())
                .execute(&mut *tx)
                .await?;
            failure = Failure { failures: 0, locked_until_ms: Some(until) };
        }
        tx.commit().await?;
        Ok(Some(failure))
    }

    async fn sign_in_succeeded(&self, name: &str) -> GuardResult<()> {
        sqlx::query("UPDATE console_users SET failures = 0 WHERE name = $1 AND failures <> 0")
            .bind(name.to_string())
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn create_session(&self, session: &Session) -> GuardResult<()> {
        sqlx::query(
            "INSERT INTO console_sessions (id_hash, user_name, csrf, created_ms, last_seen_ms, method) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(session.id_hash.clone())
        .bind(session.user.clone())
        .bind(session.csrf.clone())
        .bind(session.created_ms)
        .bind(session.last_seen_ms)
        .bind(session.method.clone())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn session(&self, id_hash: &str) -> GuardResult<Option<Session>> {
        let row = sqlx::query(
            "SELECT id_hash, user_name, csrf, created_ms, last_seen_ms, method FROM console_sessions WHERE id_hash = $1",
        )
        .bind(id_hash.to_string())
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn touch_session(&self, id_hash: &str, now_ms: i64) -> GuardResult<()> {
        sqlx::query("UPDATE console_sessions SET last_seen_ms = $1 WHERE id_hash = $2")
            .bind(now_ms)
            .bind(id_hash.to_string())
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn delete_session(&self, id_hash: &str) -> GuardResult<()> {
        sqlx::query("DELETE FROM console_sessions WHERE id_hash = $1")
            .bind(id_hash.to_string())
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn delete_stale_sessions(&self, idle_before_ms: i64, created_before_ms: i64) -> GuardResult<u64> {
        let done = sqlx::query("DELETE FROM console_sessions WHERE last_seen_ms < $1 OR created_ms < $2")
            .bind(idle_before_ms)
            .bind(created_before_ms)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }
}
