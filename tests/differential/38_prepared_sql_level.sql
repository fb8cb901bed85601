-- SQL-level PREPARE / EXECUTE / DEALLOCATE.
--- setup
CREATE TABLE t (a int);
--- query
PREPARE ins (int) AS INSERT INTO t VALUES ($1)
--- query
EXECUTE ins(5)
--- query
EXECUTE ins(6)
--- query
DEALLOCATE ins
--- query
SELECT a FROM t ORDER BY a
