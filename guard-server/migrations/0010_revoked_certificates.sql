-- Client certificates (approvers', hosts') that must no longer be accepted, by serial number
-- (lower-case hex). Every replica reloads this table every few seconds and refuses any call
-- made with a certificate listed here.
CREATE TABLE IF NOT EXISTS revoked_certificates (
    serial TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    reason TEXT NOT NULL,
    revoked_by TEXT NOT NULL,
    revoked_ms BIGINT NOT NULL
);
