-- A statement_timeout cancels a slow query: 57014 from the server, connection usable.
--- query
SET statement_timeout = '50ms'
--- query
SELECT pg_sleep(1)
--- query
RESET statement_timeout
--- query
SELECT 'still here'
