-- An error in the middle of a multi-statement query aborts the rest (implicit transaction rolled back).
--- setup
CREATE TABLE t (a int);
--- query
INSERT INTO t VALUES (1); SELECT 1/0; INSERT INTO t VALUES (2)
--- query
SELECT count(*) FROM t
