-- COPY TO STDOUT in binary format.
--- setup
CREATE TABLE t (a int, b text, c numeric);
INSERT INTO t VALUES (1, 'x', 1.5), (2, NULL, -0.001);
--- query
COPY t TO STDOUT WITH (FORMAT binary)
