-- The audit chain's head: the last record's sequence number and hash, written in the same transaction
-- as every append. Appends continue from it, so records deleted from the end of the chain leave a gap
-- that `countersign audit verify` reports, instead of a shorter chain that still verifies.
CREATE TABLE audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash) SELECT 1, seq, hash FROM audit ORDER BY seq DESC LIMIT 1;
-- The head only moves forward; moving it back (to hide a cut) fails loudly, as edits of audit rows do.
CREATE FUNCTION countersign_audit_head_forward() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR NEW.seq <= OLD.seq THEN
        RAISE EXCEPTION 'the audit head only moves forward';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER audit_head_forward BEFORE UPDATE OR DELETE ON audit_head
    FOR EACH ROW EXECUTE FUNCTION countersign_audit_head_forward();
