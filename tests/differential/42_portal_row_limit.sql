-- Execute with a row limit inside a transaction gives PortalSuspended.
--- query
BEGIN
--- extended rows=2
SELECT g FROM generate_series(1, 5) g
--- query
COMMIT
