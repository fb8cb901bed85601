-- A select returning no rows still describes its columns.
--- setup
CREATE TABLE t (a int, b text);
--- query
SELECT * FROM t
--- extended
SELECT * FROM t WHERE a > 0
