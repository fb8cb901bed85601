-- Binary result format for many types.
--- extended binary
SELECT 1::int2, 2::int4, 3::int8, 1.5::float4, 2.25::float8, true, 'text'::text, '\xdeadbeef'::bytea, 12345.678::numeric, '2024-02-29 12:34:56+00'::timestamptz, '2024-02-29'::date, 'f47ac10b-58cc-4372-a567-0e02b2c3d479'::uuid
