-- Many rows (50k) in one result.
--- query
SELECT g, md5(g::text) FROM generate_series(1, 50000) g
