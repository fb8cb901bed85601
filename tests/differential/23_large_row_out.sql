-- A row of several megabytes out, text and binary.
--- setup
CREATE TABLE t (id int, big text);
INSERT INTO t VALUES (1, repeat('0123456789', 500000));
--- query
SELECT id, big, length(big) FROM t
--- extended binary
SELECT big FROM t
