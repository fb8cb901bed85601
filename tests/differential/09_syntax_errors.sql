-- Syntax errors PostgreSQL reports (42601, position) in SQL the classifier parses (GROUP BY ALL, TOP,
-- QUALIFY are other dialects'); the connection stays usable.
--- setup
CREATE TABLE t (a int);
--- query
SELECT a FROM t GROUP BY ALL
--- query
SELECT TOP 1 a FROM t
--- query
SELECT a FROM t QUALIFY a > 1
--- query
SELECT 'usable'
