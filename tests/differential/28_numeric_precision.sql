-- numeric with large precision, NaN and typmod.
--- query
SELECT 123456789012345678901234567890.123456789::numeric, 'NaN'::numeric, 1.10::numeric(10,4), (1::numeric / 3)
