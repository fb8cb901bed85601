-- BEGIN and COMMIT inside one simple query; a later error in the same string.
--- setup
CREATE TABLE t (a int);
--- query
BEGIN; INSERT INTO t VALUES (1); COMMIT; INSERT INTO t VALUES ('bad')
--- query
SELECT count(*) FROM t
