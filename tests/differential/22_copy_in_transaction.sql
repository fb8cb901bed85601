-- COPY inside a transaction, rolled back.
--- setup
CREATE TABLE t (a int);
--- query
BEGIN
--- query
COPY t FROM STDIN
--- copy-in
1
2
--- query
SELECT count(*) FROM t
--- query
ROLLBACK
--- query
SELECT count(*) FROM t
