-- An error inside a transaction: status E, further statements fail with 25P02, ROLLBACK recovers.
--- setup
CREATE TABLE t (a int);
--- query
BEGIN
--- query
INSERT INTO t VALUES (1)
--- query
SELECT 1/0
--- query
SELECT 1
--- query
COMMIT
--- query
SELECT count(*) FROM t
