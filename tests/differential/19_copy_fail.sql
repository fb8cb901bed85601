-- The client aborts COPY FROM STDIN with CopyFail: 57014 and nothing inserted.
--- setup
CREATE TABLE t (a int);
--- query
COPY t FROM STDIN
--- copy-fail client gave up
--- query
SELECT count(*) FROM t
