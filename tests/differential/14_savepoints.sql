-- Savepoints: roll back to one after an error and commit the rest.
--- setup
CREATE TABLE t (a int);
--- query
BEGIN
--- query
INSERT INTO t VALUES (1)
--- query
SAVEPOINT s1
--- query
INSERT INTO t VALUES ('x')
--- query
ROLLBACK TO SAVEPOINT s1
--- query
INSERT INTO t VALUES (2)
--- query
RELEASE SAVEPOINT s1
--- query
COMMIT
--- query
SELECT a FROM t ORDER BY a
