-- Notifications inside a transaction are delivered on COMMIT only.
--- query
LISTEN diff_tx
--- query
BEGIN
--- query
NOTIFY diff_tx, 'a'
--- query
NOTIFY diff_tx, 'b'
--- query
COMMIT
