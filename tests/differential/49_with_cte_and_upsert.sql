-- A writable CTE and INSERT … ON CONFLICT.
--- setup
CREATE TABLE t (id int PRIMARY KEY, n int);
INSERT INTO t VALUES (1, 1);
--- query
INSERT INTO t VALUES (1, 10), (2, 20) ON CONFLICT (id) DO UPDATE SET n = t.n + excluded.n
--- query
WITH moved AS (DELETE FROM t WHERE id = 2 RETURNING *) SELECT count(*) FROM moved
--- query
SELECT * FROM t ORDER BY id
