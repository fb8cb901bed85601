-- DDL: create, alter, index, view, comment; command tags.
--- query
CREATE TABLE t2 (a int)
--- query
ALTER TABLE t2 ADD COLUMN b text DEFAULT 'x'
--- query
CREATE INDEX t2_a ON t2 (a)
--- query
CREATE VIEW v2 AS SELECT a, b FROM t2
--- query
COMMENT ON TABLE t2 IS 'differential'
--- query
SELECT * FROM v2
