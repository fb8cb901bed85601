-- COPY TO STDOUT in text format.
--- setup
CREATE TABLE t (a int, b text);
INSERT INTO t VALUES (1, 'one'), (2, NULL), (3, 'üñí');
--- query
COPY t TO STDOUT
--- query
COPY (SELECT a * 10, b FROM t ORDER BY a) TO STDOUT WITH (FORMAT csv, HEADER)
