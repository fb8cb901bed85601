-- A parameter of several megabytes in, through Bind.
--- setup
CREATE TABLE t (big text);
--- extended params={{repeat:xyz:1000000}}
INSERT INTO t VALUES ($1)
--- query
SELECT length(big), md5(big) FROM t
