-- LISTEN then NOTIFY in the same session: the notification arrives before ReadyForQuery.
--- query
LISTEN diff_channel
--- query
NOTIFY diff_channel, 'payload one'
--- query
SELECT pg_notify('diff_channel', 'payload two')
--- query
UNLISTEN diff_channel
--- query
NOTIFY diff_channel, 'not delivered'
