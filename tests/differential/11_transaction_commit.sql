-- BEGIN … COMMIT: transaction status goes I → T → I.
--- setup
CREATE TABLE t (a int);
--- query
BEGIN
--- query
INSERT INTO t VALUES (1)
--- query
SELECT count(*) FROM t
--- query
COMMIT
--- query
SELECT count(*) FROM t
