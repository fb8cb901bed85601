-- Temporary tables and DELETE without WHERE (allowed here by the rule).
--- query
CREATE TEMP TABLE tmp (a int)
--- query
INSERT INTO tmp SELECT generate_series(1, 3)
--- query
DELETE FROM tmp
--- query
SELECT count(*) FROM tmp
