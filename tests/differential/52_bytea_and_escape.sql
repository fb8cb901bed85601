-- bytea in hex and escape output, and string escapes.
--- query
SELECT '\x00ff10'::bytea, E'tab\there\nnewline', 'single''quote', $$dollar$$
--- query
SET bytea_output = 'escape'
--- query
SELECT '\x00ff10'::bytea
