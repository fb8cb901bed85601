-- DECLARE / FETCH / CLOSE on a cursor.
--- setup
CREATE TABLE t (a int);
INSERT INTO t SELECT generate_series(1, 10);
--- query
BEGIN
--- query
DECLARE c CURSOR FOR SELECT a FROM t ORDER BY a
--- query
FETCH 3 FROM c
--- query
FETCH FORWARD 2 FROM c
--- query
FETCH NEXT FROM c
--- query
CLOSE c
--- query
FETCH 1 FROM c
--- query
ROLLBACK
