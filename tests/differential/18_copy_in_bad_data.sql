-- COPY FROM STDIN with a bad row: 22P02 with the COPY context line.
--- setup
CREATE TABLE t (a int);
--- query
COPY t FROM STDIN
--- copy-in
1
two
--- query
SELECT count(*) FROM t
