-- timestamptz rendering follows the session TimeZone (ParameterStatus on SET).
--- query
SET TimeZone = 'America/New_York'
--- query
SELECT '2024-06-01 12:00:00+00'::timestamptz, '2024-01-01 12:00:00+00'::timestamptz
--- query
SET TimeZone = 'UTC'
--- query
SELECT '2024-06-01 12:00:00+00'::timestamptz
