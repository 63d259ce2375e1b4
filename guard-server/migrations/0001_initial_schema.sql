-- The initial schema, in the SQL both SQLite and PostgreSQL accept (TEXT, BIGINT). Times are
-- Unix milliseconds. IF NOT EXISTS so that a database made by the bootstrap that came before
-- migrations adopts this migration instead of failing on it.

CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    hold_key TEXT,
    operation TEXT NOT NULL,
    hook TEXT NOT NULL,
    object TEXT NOT NULL,
    rule TEXT NOT NULL,
    tree_id TEXT NOT NULL,
    state TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    decided_ms BIGINT NOT NULL DEFAULT 0,
    approvals_required BIGINT NOT NULL,
    eligible_approvers TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    decided_by TEXT NOT NULL DEFAULT '',
    comment TEXT NOT NULL DEFAULT '',
    UNIQUE (host, hold_key)
);

CREATE INDEX IF NOT EXISTS requests_pending ON requests (state, expires_ms);

CREATE INDEX IF NOT EXISTS requests_host ON requests (host, created_ms);

CREATE TABLE IF NOT EXISTS reviews (
    request_id TEXT NOT NULL REFERENCES requests (id),
    approver TEXT NOT NULL,
    approve BIGINT NOT NULL,
    comment TEXT NOT NULL,
    time_ms BIGINT NOT NULL,
    grant_seconds BIGINT NOT NULL,
    PRIMARY KEY (request_id, approver)
);

CREATE TABLE IF NOT EXISTS grants (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    tree_id TEXT NOT NULL,
    hook TEXT NOT NULL,
    object TEXT NOT NULL,
    approver TEXT NOT NULL,
    request_id TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    ended_ms BIGINT
);

CREATE INDEX IF NOT EXISTS grants_match ON grants (host, tree_id, hook, object);

-- Append-only. `hash` = SHA-256(prev_hash || json): a chain a verifier can walk later.
CREATE TABLE IF NOT EXISTS audit (
    seq BIGINT PRIMARY KEY,
    time_ms BIGINT NOT NULL,
    host TEXT NOT NULL,
    kind TEXT NOT NULL,
    request_id TEXT NOT NULL,
    json TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);

CREATE INDEX IF NOT EXISTS audit_time ON audit (time_ms);

CREATE INDEX IF NOT EXISTS audit_request ON audit (request_id);

-- The chain's head in one row: appenders serialize on it, so seq has no gaps and every
-- row links to the one before it even with several replicas.
CREATE TABLE IF NOT EXISTS audit_head (id BIGINT PRIMARY KEY, seq BIGINT NOT NULL, hash TEXT NOT NULL);

INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '') ON CONFLICT DO NOTHING;

CREATE TABLE IF NOT EXISTS hosts (
    host TEXT PRIMARY KEY,
    agent_version TEXT NOT NULL,
    kernel TEXT NOT NULL,
    policies TEXT NOT NULL,
    seen_ms BIGINT NOT NULL
);
