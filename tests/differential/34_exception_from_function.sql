-- RAISE EXCEPTION with a custom SQLSTATE, detail and hint.
--- setup
CREATE FUNCTION fail_now() RETURNS int LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'custom failure' USING ERRCODE = 'P0001', DETAIL = 'some detail', HINT = 'some hint';
END $$;
--- query
SELECT fail_now()
