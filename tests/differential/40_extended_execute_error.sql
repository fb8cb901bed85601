-- An error at Execute in the extended protocol.
--- extended params=0
SELECT 10 / $1::int
--- extended params=abc
SELECT $1::int
