-- The audit trail becomes lossless and verifiable (issue 11):
-- * every agent record arrives chained in its host's stream (guard_api::chain::seal); the
--   server stores each record once, keyed by (host, stream, seq), and keeps each stream's
--   position here so a resend is skipped and a gap is refused;
-- * checkpoints are signed with ed25519 keys: every key a host registered, and the server's
--   own (host ''), is kept here for verifiers;
-- * rows are now hashed over every column (guard_api::chain::row_hash, "guard-row-v2").
--   Rows written before this migration carry the older one-column hash: `verify` reports the
--   first such row as modified. A database from before it should be exported and archived
--   with the release that wrote it.
CREATE TABLE IF NOT EXISTS audit_streams (
    host TEXT NOT NULL,
    stream TEXT NOT NULL,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (host, stream)
);

CREATE TABLE IF NOT EXISTS audit_keys (
    host TEXT NOT NULL,
    key_id TEXT NOT NULL,
    public_key TEXT NOT NULL,
    first_seen_ms BIGINT NOT NULL,
    PRIMARY KEY (host, key_id)
);
