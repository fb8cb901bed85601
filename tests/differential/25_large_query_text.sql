-- A simple query of about 2 MB of text.
--- query
SELECT length('{{repeat:q:2000000}}')
