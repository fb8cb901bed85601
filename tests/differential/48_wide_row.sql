-- A row with 300 columns.
--- query
SELECT {{repeat:1, :299}}1
