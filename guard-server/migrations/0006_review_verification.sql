-- How each approver proved who they are for a review (client certificate, password, passkey,
-- chat signature): the audit record of the review says it. Reviews from before this column were
-- all made with a client certificate.
ALTER TABLE reviews ADD COLUMN verified_by TEXT NOT NULL DEFAULT 'client certificate';
