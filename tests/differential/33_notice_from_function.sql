-- RAISE NOTICE from a function created in setup arrives as NoticeResponse before the row.
--- setup
CREATE FUNCTION say(msg text) RETURNS int LANGUAGE plpgsql AS $$
BEGIN
  RAISE NOTICE 'said: %', msg;
  RAISE WARNING 'careful: %', msg USING HINT = 'just a test';
  RETURN length(msg);
END $$;
--- query
SELECT say('hello')
--- extended params=world
SELECT say($1)
