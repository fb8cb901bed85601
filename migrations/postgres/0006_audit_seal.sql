-- Seals: HMAC-SHA256 of each record's hash (and of the head) under the audit key, which is kept outside
-- the store. NULL for records written without a key.
ALTER TABLE audit ADD COLUMN seal TEXT;
ALTER TABLE audit_head ADD COLUMN seal TEXT;
