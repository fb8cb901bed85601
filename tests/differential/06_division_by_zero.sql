-- Division by zero: SQLSTATE 22012, connection stays usable.
--- query
SELECT 1/0
--- query
SELECT 2
