-- COPY FROM STDIN in text format, then read back.
--- setup
CREATE TABLE t (a int, b text);
--- query
COPY t FROM STDIN
--- copy-in
1	one
2	\N
3	tab\there
--- query
SELECT * FROM t ORDER BY a
