-- Approvers' passkeys (WebAuthn credentials). One row per credential; an approver may have
-- several (a phone and a laptop). `passkey` is webauthn-rs's serialised `Passkey`: the public
-- key, the signature counter and the backup state, which each approval may update.
-- `user_handle` is the WebAuthn user id (random, the same for all of one approver's passkeys).
CREATE TABLE passkeys (
    credential_id TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    user_handle TEXT NOT NULL,
    label TEXT NOT NULL,
    passkey TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    last_used_ms BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX passkeys_username ON passkeys (username);
