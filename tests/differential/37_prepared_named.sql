-- A named prepared statement: Parse + Describe statement, then Bind/Execute twice, then Close.
--- setup
CREATE TABLE t (a int, b text);
INSERT INTO t VALUES (1, 'one'), (2, 'two'), (3, 'three');
--- prepare by_id
SELECT a, b FROM t WHERE a = $1
--- extended name=by_id params=2
--- extended name=by_id binary params=3
--- close by_id
--- prepare by_id
SELECT b FROM t WHERE a > $1 ORDER BY a
--- extended name=by_id params=1
