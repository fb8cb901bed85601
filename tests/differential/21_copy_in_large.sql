-- A large COPY FROM STDIN (about 4 MB of rows) passes through intact.
--- setup
CREATE TABLE t (a int, b text);
--- query
COPY t FROM STDIN
--- copy-in repeat=40000
7	{{repeat:abcdefghij:10}}
--- query
SELECT count(*), sum(length(b)), md5(string_agg(b, ',')) FROM t
