//! What the chat channels keep (migration 0008): each posted card's token (its SHA-256 only)
//! and the copies to update, and the signatures of callbacks already taken (replay window).
//! Claims are single statements (`INSERT ... ON CONFLICT DO NOTHING`, a guarded `UPDATE`), so
//! replicas sharing a PostgreSQL database post a card once and update its copies once.
use super::sql::SqlStore;
use crate::error::GuardResult;
use async_trait::async_trait;
use sqlx::Row;

/// A card's token, found: which request and channel its buttons are for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardToken {
    pub request_id: String,
    pub channel: String,
}

#[async_trait]
pub trait ChatStore: Send + Sync {
    /// Claims posting the card of `request_id` on `channel`, with its token's SHA-256. False
    /// when the card was claimed already (by this replica or another).
    async fn chat_claim(&self, request_id: &str, channel: &str, token_sha256: &str, now_ms: i64) -> GuardResult<bool>;
    /// Records one copy of the card the chat service took (`message_ref`: its own id of it).
    async fn chat_add_message(&self, request_id: &str, channel: &str, message_ref: &str) -> GuardResult<()>;
    /// Says the card was posted (every copy recorded).
    async fn chat_posted(&self, request_id: &str, channel: &str) -> GuardResult<()>;
    /// The copies recorded for the card.
    async fn chat_messages(&self, request_id: &str, channel: &str) -> GuardResult<Vec<String>>;
    /// Claims updating the posted card with its decision; false when it is not posted yet or
    /// somebody claimed it already.
    async fn chat_claim_decided(&self, request_id: &str, channel: &str) -> GuardResult<bool>;
    /// Requests whose card on `channel` went out but whose decision was not sent yet.
    async fn chat_undecided(&self, channel: &str) -> GuardResult<Vec<String>>;
    /// The card a token belongs to.
    async fn chat_token(&self, token_sha256: &str) -> GuardResult<Option<CardToken>>;
    /// Records `signature` as taken; false when it was taken before (a replay). Forgets those
    /// older than `keep_ms` (past the replay window they are refused by their timestamp).
    async fn chat_first_seen(&self, signature: &str, now_ms: i64, keep_ms: i64) -> GuardResult<bool>;
}

#[async_trait]
impl ChatStore for SqlStore {
    async fn chat_claim(&self, request_id: &str, channel: &str, token_sha256: &str, now_ms: i64) -> GuardResult<bool> {
        let done = sqlx::query(
            "INSERT INTO chat_cards (request_id, channel, token_sha256, created_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
        )
        .bind(request_id.to_string())
        .bind(channel.to_string())
        .bind(token_sha256.to_string())
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn chat_add_message(&self, request_id: &str, channel: &str, message_ref: &str) -> GuardResult<()> {
        sqlx::query(
            "INSERT INTO chat_messages (request_id, channel, message_ref) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(request_id.to_string())
        .bind(channel.to_string())
        .bind(message_ref.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn chat_posted(&self, request_id: &str, channel: &str) -> GuardResult<()> {
        sqlx::query("UPDATE chat_cards SET posted = 1 WHERE request_id = $1 AND channel = $2")
            .bind(request_id.to_string())
            .bind(channel.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn chat_messages(&self, request_id: &str, channel: &str) -> GuardResult<Vec<String>> {
        let rows = sqlx::query(
            "SELECT message_ref FROM chat_messages WHERE request_id = $1 AND channel = $2 ORDER BY message_ref",
        )
        .bind(request_id.to_string())
        .bind(channel.to_string())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| r.try_get("message_ref")).collect::<Result<_, _>>()?)
    }

    async fn chat_claim_decided(&self, request_id: &str, channel: &str) -> GuardResult<bool> {
        let done = sqlx::query(
            "UPDATE chat_cards SET decided_sent = 1 \
             WHERE request_id = $1 AND channel = $2 AND posted = 1 AND decided_sent = 0",
        )
        .bind(request_id.to_string())
        .bind(channel.to_string())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn chat_undecided(&self, channel: &str) -> GuardResult<Vec<String>> {
        let rows =
            sqlx::query("SELECT request_id FROM chat_cards WHERE channel = $1 AND posted = 1 AND decided_sent = 0")
                .bind(channel.to_string())
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.iter().map(|r| r.try_get("request_id")).collect::<Result<_, _>>()?)
    }

    async fn chat_token(&self, token_sha256: &str) -> GuardResult<Option<CardToken>> {
        let row = sqlx::query("SELECT request_id, channel FROM chat_cards WHERE token_sha256 = $1")
            .bind(token_sha256.to_string())
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(CardToken { request_id: row.try_get("request_id")?, channel: row.try_get("channel")? }))
    }

    async fn chat_first_seen(&self, signature: &str, now_ms: i64, keep_ms: i64) -> GuardResult<bool> {
        sqlx::query("DELETE FROM chat_seen WHERE seen_ms < $1").bind(now_ms - keep_ms).execute(&self.pool).await?;
        let done = sqlx::query("INSERT INTO chat_seen (signature, seen_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(signature.to_string())
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}
