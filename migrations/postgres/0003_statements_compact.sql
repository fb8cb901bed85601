-- Statement records are the busiest insert (one per proxied statement). The session id is stored as a uuid
-- and the statement hash as its 32 SHA-256 bytes instead of 36 and 64 characters of text: about 70 bytes
-- less per row and smaller entries in the per-session index, and nothing formats ids or hex per row.
-- Rewrites the table (and its index) once, under an exclusive lock: on a large recording history expect
-- the upgrade to take a while.
ALTER TABLE statements
    ALTER COLUMN session_id TYPE uuid USING session_id::uuid,
    ALTER COLUMN statement_hash TYPE bytea USING decode(statement_hash, 'hex');
