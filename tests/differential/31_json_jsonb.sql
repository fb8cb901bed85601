-- json keeps text as written, jsonb normalises; operators and binary jsonb.
--- query
SELECT '{"b": 1, "a": [1, 2]}'::json, '{"b": 1, "a": [1, 2]}'::jsonb, '{"a": {"b": "c"}}'::jsonb -> 'a' ->> 'b'
--- extended binary
SELECT '{"k": "v"}'::jsonb
