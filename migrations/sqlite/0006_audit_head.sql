-- The audit chain's head: the last record's sequence number and hash, written in the same transaction
-- as every append. Appends continue from it, so records deleted from the end of the chain leave a gap
-- that `countersign audit verify` reports, instead of a shorter chain that still verifies.
CREATE TABLE audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash) SELECT 1, seq, hash FROM audit ORDER BY seq DESC LIMIT 1;
-- The head only moves forward; moving it back (to hide a cut) fails loudly, as edits of audit rows do.
CREATE TRIGGER audit_head_forward BEFORE UPDATE ON audit_head
WHEN NEW.seq <= OLD.seq BEGIN SELECT RAISE(ABORT, 'the audit head only moves forward'); END;
CREATE TRIGGER audit_head_no_delete BEFORE DELETE ON audit_head BEGIN SELECT RAISE(ABORT, 'the audit head is never deleted'); END;
