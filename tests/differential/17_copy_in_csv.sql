-- COPY FROM STDIN in CSV with a header and quoted fields.
--- setup
CREATE TABLE t (a int, b text);
--- query
COPY t FROM STDIN WITH (FORMAT csv, HEADER true)
--- copy-in
a,b
1,"hello, world"
2,"quote "" inside"
--- query
SELECT * FROM t ORDER BY a
