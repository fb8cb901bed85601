-- Transaction isolation settings and SHOW inside a transaction.
--- query
BEGIN ISOLATION LEVEL REPEATABLE READ
--- query
SHOW transaction_isolation
--- query
COMMIT
--- query
START TRANSACTION READ ONLY
--- query
CREATE TABLE t_ro (a int)
--- query
ROLLBACK
