-- The web console's accounts and sessions (console/, store/accounts.rs). A console user's
-- name is the approver name the policy uses (eligible approvers, host groups, owners).
-- Passwords are argon2id PHC strings; a session is stored by the SHA-256 of its id only, so a
-- copy of the database opens no session. Times are Unix milliseconds.
CREATE TABLE IF NOT EXISTS console_users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    disabled BIGINT NOT NULL DEFAULT 0,
    -- Failed sign-ins since the last success or lockout, and the end of the current lockout.
    failures BIGINT NOT NULL DEFAULT 0,
    locked_until_ms BIGINT NOT NULL DEFAULT 0,
    created_ms BIGINT NOT NULL,
    password_changed_ms BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS console_sessions (
    id_hash TEXT PRIMARY KEY,
    user_name TEXT NOT NULL REFERENCES console_users (name),
    -- The session's CSRF token, put in every form it is shown.
    csrf TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL
);

CREATE INDEX IF NOT EXISTS console_sessions_user ON console_sessions (user_name);

-- Who ended a grant before its time (`guard-server` console's Revoke), empty otherwise.
ALTER TABLE grants ADD COLUMN revoked_by TEXT NOT NULL DEFAULT '';
