-- Chat approvals (Slack, Teams, the generic webhook). One row per (request, channel) whose card
-- was posted: the card's buttons carry an opaque random token, of which only the SHA-256 is kept
-- (a copy of the database does not hand out working buttons). Inserting the row is also the
-- claim to post it, so replicas sharing a database post each card once; `posted` says the card
-- went out, `decided_sent` that its copies were updated with the decision (claimed the same way).
CREATE TABLE IF NOT EXISTS chat_cards (
    request_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE,
    created_ms BIGINT NOT NULL,
    posted BIGINT NOT NULL DEFAULT 0,
    decided_sent BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (request_id, channel)
);
-- Each copy of a card a chat service took (Slack: channel and ts), to update it when decided.
CREATE TABLE IF NOT EXISTS chat_messages (
    request_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    message_ref TEXT NOT NULL,
    PRIMARY KEY (request_id, channel, message_ref)
);
-- Signatures of interaction callbacks already taken, for the replay window: a second post of
-- the same signed body is refused, on every replica.
CREATE TABLE IF NOT EXISTS chat_seen (
    signature TEXT PRIMARY KEY,
    seen_ms BIGINT NOT NULL
);
