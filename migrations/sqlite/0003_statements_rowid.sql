-- Statement records are the busiest insert (one per proxied statement). AUTOINCREMENT made each insert also
-- read and write sqlite_sequence; a plain INTEGER PRIMARY KEY (the rowid) keeps ids increasing as rows are
-- appended, which is all the ordering `sessions show` needs, for about 15% less insert CPU.
CREATE TABLE statements_rowid (
    id INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL,
    sql TEXT NOT NULL,
    statement_hash TEXT NOT NULL,
    decision TEXT NOT NULL,
    request_id TEXT,
    outcome TEXT NOT NULL,
    command_tag TEXT,
    rows INTEGER,
    error TEXT,
    masked_fields INTEGER NOT NULL DEFAULT 0,
    duration_us INTEGER NOT NULL,
    at_ms INTEGER NOT NULL
);
INSERT INTO statements_rowid
    SELECT id, session_id, sql, statement_hash, decision, request_id, outcome, command_tag, rows, error,
           masked_fields, duration_us, at_ms
    FROM statements;
DROP TABLE statements;
ALTER TABLE statements_rowid RENAME TO statements;
CREATE INDEX statements_session ON statements (session_id, id);
