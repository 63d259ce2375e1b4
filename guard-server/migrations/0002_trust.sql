-- Issue 10, server-side trust: what the server noticed about a request (a JSON array of flags
-- such as "policy-changed: ..." or "argv-redacted"), and the policy hashes each host
-- registered (a JSON object, policy name -> "sha256:<hex>").

ALTER TABLE requests ADD COLUMN flags TEXT NOT NULL DEFAULT '[]';

ALTER TABLE hosts ADD COLUMN policy_hashes TEXT NOT NULL DEFAULT '{}';
