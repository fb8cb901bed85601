-- Countersign state store (PostgreSQL). Times are Unix milliseconds.
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
    quorum BIGINT NOT NULL,
    status TEXT NOT NULL,
    origin TEXT NOT NULL,
    session_id TEXT,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
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
    at_ms BIGINT NOT NULL,
    PRIMARY KEY (request_id, voter)
);

CREATE TABLE audit (
    seq BIGINT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
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
CREATE FUNCTION countersign_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit is append-only';
END;
$$;
CREATE TRIGGER audit_no_update BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION countersign_audit_append_only();

CREATE TABLE outbox (
    id BIGSERIAL PRIMARY KEY,
    sink TEXT NOT NULL,
    request_id TEXT,
    event_kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_ms BIGINT NOT NULL,
    lease_until_ms BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    created_ms BIGINT NOT NULL,
    delivered_ms BIGINT
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
    used_ms BIGINT NOT NULL
);

CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    connection TEXT NOT NULL,
    requester_json TEXT NOT NULL,
    client_addr TEXT,
    application TEXT,
    protocol TEXT NOT NULL,
    started_ms BIGINT NOT NULL,
    ended_ms BIGINT
);
CREATE INDEX sessions_started ON sessions (started_ms);

CREATE TABLE statements (
    id BIGSERIAL PRIMARY KEY,
    session_id TEXT NOT NULL,
    sql TEXT NOT NULL,
    statement_hash TEXT NOT NULL,
    decision TEXT NOT NULL,
    request_id TEXT,
    outcome TEXT NOT NULL,
    command_tag TEXT,
    rows BIGINT,
    error TEXT,
    masked_fields BIGINT NOT NULL DEFAULT 0,
    duration_us BIGINT NOT NULL,
    at_ms BIGINT NOT NULL
);
CREATE INDEX statements_session ON statements (session_id, id);
