-- TRUNCATE fires no row triggers: without these, `TRUNCATE audit, audit_head` wiped the trail and the next
-- event started a new chain at #1 that verified. Statement triggers refuse it as row edits are refused.
CREATE FUNCTION countersign_audit_no_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only: % cannot be truncated', TG_TABLE_NAME;
END $$;
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION countersign_audit_no_truncate();
CREATE TRIGGER audit_head_no_truncate BEFORE TRUNCATE ON audit_head
    FOR EACH STATEMENT EXECUTE FUNCTION countersign_audit_no_truncate();
