-- A missing relation: 42P01 with position.
--- query
SELECT * FROM no_such_table_here
