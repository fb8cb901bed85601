-- Arrays: int, text with NULLs and quoting, multidimensional; text and binary.
--- query
SELECT ARRAY[1,2,3], ARRAY['a', NULL, 'b c', 'd"e'], ARRAY[[1,2],[3,4]], '{}'::int[]
--- extended binary
SELECT ARRAY[1,2,3], ARRAY['a', NULL]::text[]
