-- ROLLBACK undoes the work.
--- setup
CREATE TABLE t (a int);
--- query
BEGIN; INSERT INTO t VALUES (1), (2)
--- query
ROLLBACK
--- query
SELECT count(*) FROM t
