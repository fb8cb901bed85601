-- Sessions left open by a gateway that stopped without recording their end (killed, crashed, store down):
-- each replica marks its open sessions alive every 15 s (`alive_ms`), and one nobody marked for 2 minutes
-- is closed by any replica with `end_reason` saying its end is a guess.
ALTER TABLE sessions ADD COLUMN alive_ms BIGINT;
ALTER TABLE sessions ADD COLUMN end_reason TEXT;
CREATE INDEX sessions_open ON sessions (started_ms) WHERE ended_ms IS NULL;
