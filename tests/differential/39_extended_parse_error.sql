-- An error at Parse in the extended protocol: the rest of the batch is skipped up to Sync.
--- extended
SELECT * FROM missing_table_x WHERE a = $1
--- extended
SELECT 42
