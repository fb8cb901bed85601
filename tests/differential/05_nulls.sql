-- NULLs in every position, text and binary.
--- setup
CREATE TABLE t (a int, b text, c jsonb);
INSERT INTO t VALUES (NULL, NULL, NULL), (1, NULL, 'null'), (NULL, '', '{}');
--- query
SELECT a, b, c, a IS NULL AS a_null FROM t ORDER BY a NULLS FIRST, b NULLS FIRST
--- extended binary
SELECT a, b, c FROM t ORDER BY a NULLS FIRST, b NULLS FIRST
--- extended params=\N|x
SELECT $1::text IS NULL, $2::text
