-- Several statements in one simple query: one RowDescription/CommandComplete per statement.
--- setup
CREATE TABLE t (a int, b text);
--- query
INSERT INTO t VALUES (1, 'a'); INSERT INTO t VALUES (2, 'b'); SELECT * FROM t ORDER BY a; UPDATE t SET b = 'z' WHERE a = 2
