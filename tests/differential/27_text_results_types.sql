-- Text results and type OIDs for common types.
--- query
SELECT 1::int2, 2::int4, 3::int8, 1.5::float4, 2.25::float8, true, 'text'::text, '\xdeadbeef'::bytea, 12345.678::numeric, '2024-02-29'::date, '10:00'::time, interval '1 day 2 hours'
