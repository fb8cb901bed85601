-- Unique violation: 23505 with detail, constraint and table fields.
--- setup
CREATE TABLE t (id int PRIMARY KEY);
INSERT INTO t VALUES (1);
--- query
INSERT INTO t VALUES (1)
