-- A constant select: one row, one int4 column.
--- query
SELECT 1 AS one
