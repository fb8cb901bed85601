-- A missing column: 42703 with hint and position.
--- setup
CREATE TABLE t (alpha int);
--- query
SELECT alpah FROM t
