-- Countersign state store (SQLite). Times are Unix milliseconds.
CREATE TABLE requests (
    id TEXT PRIMARY KEY,
    connection TEXT NOT NULL,
    statement TEXT NOT NULL,
    statement_hash TEXT NOT NULL,
    requester_key TEXT NOT NULL,
    requester_json TEXT NOT NULL,
    rule TEXT NOT NULL,
    reasons_json TEXT NOT NULL,
    approver_groups_json TEXT NOT NULL,
    quorum INTEGER NOT NULL,
    status TEXT NOT NULL,
    origin TEXT NOT NULL,
    session_id TEXT,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    execution_json TEXT
);
CREATE INDEX requests_reuse ON requests (requester_key, connection, statement_hash, status);
CREATE INDEX requests_status ON requests (status, expires_ms);

CREATE TABLE votes (
    request_id TEXT NOT NULL REFERENCES requests (id),
    voter TEXT NOT NULL,
    voter_name TEXT NOT NULL,
    decision TEXT NOT NULL,
    reason TEXT,
    channel TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (request_id, voter)
);

CREATE TABLE audit (
    seq INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    request_id TEXT,
    decision TEXT,
    channel TEXT NOT NULL,
    statement_hash TEXT,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
-- Append-only: the store never updates or deletes audit rows; these triggers make accidental edits fail loudly.
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;

CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sink TEXT NOT NULL,
    request_id TEXT,
    event_kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL,
    lease_until_ms INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_ms INTEGER NOT NULL,
    delivered_ms INTEGER
);
CREATE INDEX outbox_due ON outbox (status, next_attempt_ms);
CREATE INDEX outbox_order ON outbox (sink, request_id, status, id);

CREATE TABLE message_refs (
    request_id TEXT NOT NULL,
    sink TEXT NOT NULL,
    ref_key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (request_id, sink, ref_key)
);
CREATE INDEX message_refs_value ON message_refs (sink, ref_key, value);

CREATE TABLE used_nonces (
    nonce TEXT PRIMARY KEY,
    used_ms INTEGER NOT NULL
);

CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    connection TEXT NOT NULL,
    requester_json TEXT NOT NULL,
    client_addr TEXT,
    application TEXT,
    protocol TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    ended_ms INTEGER
);
CREATE INDEX sessions_started ON sessions (started_ms);

CREATE TABLE statements (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
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
CREATE INDEX statements_session ON statements (session_id, id);
