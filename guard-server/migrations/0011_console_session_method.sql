-- How a console session was opened: 'password' (the sign-in form) or 'oidc' (the configured
-- OpenID provider, `[console.oidc]`). The review records of the session say it (verified_by).
ALTER TABLE console_sessions ADD COLUMN method TEXT NOT NULL DEFAULT 'password';
