//! Issue "Inline masking", through the real engine: the HTTP API and the wire proxy apply the connection's
//! rules, records keep counts only, and a connection without rules is untouched.

use countersign_tests::tokens::*;
use countersign_tests::*;
use serde_json::json;
use std::time::Duration;

fn masked_config() -> String {
    std::env::set_var(
        "CS_E2E_MASK_KEY",
        "an-hmac-key-for-the-masking-tests-0123456789",
    );
    let cfg = base_config("[wire]\nlisten = \"127.0.0.1:0\"\nallow_cleartext_without_tls = true\n");
    cfg.replace(
        "[[approver_groups]]",
        "[connections.masking]\nhash_key_env = \"CS_E2E_MASK_KEY\"\n\n[[connections.masking.rules]]\ncolumns = [\"*email*\"]\nstyle = \"hash\"\n\n[[connections.masking.rules]]\ncolumns = [\"ssn\"]\nstyle = \"keep_last\"\nkeep = 4\n\n[[connections.masking.rules]]\ndetect = [\"card\", \"jwt\"]\nstyle = \"redact\"\n\n[[approver_groups]]",
    )
}

/// A direct session to PostgreSQL and a unique schema name starting with `prefix` (each test creates
/// and drops its schema).
async fn direct_and_schema_name(prefix: &str) -> (tokio_postgres::Client, String) {
    let (db, conn) = tokio_postgres::connect(&upstream_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    (db, format!("{prefix}_{}", uuid::Uuid::new_v4().simple()))
}

/// A gateway (SQLite store) whose connection masks by the one rule `rule` (TOML keys of a
/// `[[connections.masking.rules]]` entry), and a wire client of it.
async fn masked_gateway(rule: &str) -> (Gateway, tokio_postgres::Client) {
    masked_gateway_with(rule, "").await
}

/// [`masked_gateway`] whose policy allows every statement it can parse: masking must hold for what
/// an operator chose to allow (planner statistics, reviewed by default, say).
async fn masked_gateway_allowing_everything(rule: &str) -> (Gateway, tokio_postgres::Client) {
    masked_gateway_with(
        rule,
        "[[policy.rules]]\nname = \"everything\"\naction = \"allow\"\n",
    )
    .await
}

async fn masked_gateway_with(rule: &str, policy: &str) -> (Gateway, tokio_postgres::Client) {
    let cfg = base_config(&format!(
        "[wire]\nlisten = \"127.0.0.1:0\"\nallow_cleartext_without_tls = true\n\n{policy}"
    ))
    .replace(
        "[[approver_groups]]",
        &format!("[[connections.masking.rules]]\n{rule}\n\n[[approver_groups]]"),
    );
    let gw = spawn_gateway(&cfg, Backend::Sqlite).await;
    let port = gw.wire.unwrap().port();
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=agent password={AGENT} dbname=local"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    (gw, client)
}

/// Drops a test's schema and everything in it.
async fn drop_schema(db: &tokio_postgres::Client, schema: &str) {
    db.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}

/// Each row of a simple query's answer, its values joined by `|` (NULL as `NULL`).
fn row_texts(rows: &[tokio_postgres::SimpleQueryMessage]) -> Vec<String> {
    rows.iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL"))
                    .collect::<Vec<_>>()
                    .join("|"),
            ),
            _ => None,
        })
        .collect()
}

const SQL: &str = "SELECT 'alice@example.com' AS email, '123-45-6789' AS ssn, 'paid with 4111 1111 1111 1111' AS note, '4111 1111 1111 1112' AS not_a_card, NULL::text AS empty, 42 AS n";

#[tokio::test]
async fn api_results_are_masked_and_counted() {
    for backend in BACKENDS {
        let gw = spawn_gateway(&masked_config(), backend).await;
        let r = gw.query(AGENT, SQL).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let row = &r.body["rows"][0];
        let email = row[0].as_str().unwrap();
        assert!(!email.contains("alice"), "email hashed: {email}");
        assert_eq!(
            gw.query(AGENT, SQL).await.body["rows"][0][0],
            row[0],
            "keyed hash is stable per value"
        );
        assert!(
            row[1].as_str().unwrap().ends_with("6789")
                && !row[1].as_str().unwrap().contains("123-45"),
            "{row}"
        );
        assert!(
            !row[2].as_str().unwrap().contains("4111 1111 1111 1111"),
            "card redacted: {row}"
        );
        assert_eq!(
            row[3], "4111 1111 1111 1112",
            "a number failing Luhn stays clear"
        );
        assert_eq!(row[4], json!(null));
        assert_eq!(row[5], "42");
        // A computation over a masked column comes back redacted; one over harmless values does not.
        let derived = gw
            .query(
                AGENT,
                "SELECT upper(email), n * 2 FROM (SELECT 'alice@example.com' AS email, 21 AS n) s",
            )
            .await;
        assert_eq!(derived.status, 200, "{:?}", derived.body);
        assert_eq!(derived.body["rows"][0], json!(["[redacted]", "42"]));
        // The session record keeps the statement and a count, never the values.
        assert_eq!(gw.engine.end_idle_http_sessions(Duration::ZERO).await, 1);
        let s = &gw.store.list_sessions(5).await.unwrap()[0];
        let (_, statements) = gw.store.get_session(s.id).await.unwrap().unwrap();
        assert_eq!(statements[0].masked_fields, 3, "{backend:?}");
    }
}

#[tokio::test]
async fn wire_results_are_masked_in_text_and_binary() {
    let gw = spawn_gateway(&masked_config(), Backend::Sqlite).await;
    let port = gw.wire.unwrap().port();
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=agent password={AGENT} dbname=local"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    // Simple protocol (text).
    let msgs = client.simple_query(SQL).await.unwrap();
    let row = msgs
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .unwrap();
    assert!(!row.get(0).unwrap().contains("alice"));
    assert!(row.get(1).unwrap().ends_with("6789"));
    assert_eq!(row.get(3), Some("4111 1111 1111 1112"));
    // Extended protocol with binary results.
    let row = client.query_one(SQL, &[]).await.unwrap();
    let email: String = row.get(0);
    assert!(!email.contains("alice"), "{email}");
    let n: i32 = row.get(5);
    assert_eq!(n, 42);
}

#[tokio::test]
async fn table_qualified_rules_mask_only_the_named_table_in_the_api_and_on_the_wire() {
    let (db, schema) = direct_and_schema_name("mask_api").await;
    db.batch_execute(&format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.customers (id int, email text);
         CREATE TABLE {schema}.staff (id int, email text);
         INSERT INTO {schema}.customers VALUES (1, 'cust@example.com');
         INSERT INTO {schema}.staff VALUES (1, 'staff@example.com');"
    ))
    .await
    .unwrap();
    let cfg = base_config("[wire]\nlisten = \"127.0.0.1:0\"\nallow_cleartext_without_tls = true\n")
        .replace(
            "[[approver_groups]]",
            "[[connections.masking.rules]]\ncolumns = [\"customers.email\"]\nstyle = \"redact\"\n\n[[approver_groups]]",
        );
    let gw = spawn_gateway(&cfg, Backend::Sqlite).await;
    let sql = format!(
        "SELECT c.email, s.email, lower(s.email) AS email FROM {schema}.customers c JOIN {schema}.staff s USING (id)"
    );
    let r = gw.query(AGENT, &sql).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // customers.email masked, staff.email clear, an expression (table OID 0) masked by its name.
    assert_eq!(
        r.body["rows"][0],
        json!(["[redacted]", "staff@example.com", "[redacted]"])
    );
    let port = gw.wire.unwrap().port();
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=agent password={AGENT} dbname=local"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let row = client.query_one(&sql, &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "[redacted]");
    assert_eq!(row.get::<_, String>(1), "staff@example.com");
    assert_eq!(row.get::<_, String>(2), "[redacted]");
    // An alias does not unmask: the real column behind `contact` is customers.email.
    let aliased = format!(
        "SELECT c.email AS contact, s.email AS other FROM {schema}.customers c JOIN {schema}.staff s USING (id)"
    );
    let r = gw.query(AGENT, &aliased).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.body["rows"][0],
        json!(["[redacted]", "staff@example.com"])
    );
    for binary in [false, true] {
        let row = if binary {
            let st = client.prepare(&aliased).await.unwrap();
            client.query_one(&st, &[]).await.unwrap()
        } else {
            let rows = client.simple_query(&aliased).await.unwrap();
            let tokio_postgres::SimpleQueryMessage::Row(row) = &rows[1] else {
                panic!("expected a row first: {rows:?}")
            };
            assert_eq!(row.get(0), Some("[redacted]"));
            assert_eq!(row.get(1), Some("staff@example.com"));
            continue;
        };
        assert_eq!(row.get::<_, String>(0), "[redacted]");
        assert_eq!(row.get::<_, String>(1), "staff@example.com");
    }
    drop_schema(&db, &schema).await;
}

#[tokio::test]
async fn view_columns_renaming_or_computed_from_masked_columns_are_masked_in_the_api_and_on_the_wire(
) {
    let (db, schema) = direct_and_schema_name("mask_view").await;
    // Views a DBA made, unknown to the masking rules: one renames, one computes, one only filters.
    db.batch_execute(&format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.people (id int, name text, ssn text);
         INSERT INTO {schema}.people VALUES (1, 'Ann', '123-45-6789');
         CREATE VIEW {schema}.directory AS SELECT id, name, ssn AS tax_id FROM {schema}.people;
         CREATE VIEW {schema}.digest AS SELECT id, md5(ssn) AS fingerprint FROM {schema}.people;
         CREATE VIEW {schema}.with_ssn AS SELECT id, name FROM {schema}.people WHERE ssn IS NOT NULL;
         CREATE MATERIALIZED VIEW {schema}.snapshot AS SELECT id, ssn AS t FROM {schema}.people;
         CREATE VIEW {schema}.over AS SELECT id, tax_id AS x FROM {schema}.directory;
         CREATE VIEW {schema}.deeper AS SELECT id, upper(x) AS y FROM {schema}.over;
         CREATE VIEW {schema}.filtered AS SELECT id FROM {schema}.over WHERE x IS NOT NULL;"
    ))
    .await
    .unwrap();
    let (gw, client) = masked_gateway("columns = [\"ssn\"]\nstyle = \"redact\"").await;
    for (sql, want) in [
        (
            format!("SELECT * FROM {schema}.directory"),
            json!(["1", "Ann", "[redacted]"]),
        ),
        (
            format!("SELECT d.tax_id AS x, d.name FROM {schema}.directory d"),
            json!(["[redacted]", "Ann"]),
        ),
        (
            format!("SELECT id, fingerprint FROM {schema}.digest"),
            json!(["1", "[redacted]"]),
        ),
        (
            format!("SELECT * FROM {schema}.with_ssn"),
            json!(["1", "Ann"]),
        ),
        (
            format!("SELECT * FROM {schema}.snapshot"),
            json!(["1", "[redacted]"]),
        ),
        // Views over views: the renamed column is followed through each definition.
        (
            format!("SELECT * FROM {schema}.over"),
            json!(["1", "[redacted]"]),
        ),
        (
            format!("SELECT * FROM {schema}.deeper"),
            json!(["1", "[redacted]"]),
        ),
        (format!("SELECT * FROM {schema}.filtered"), json!(["1"])),
    ] {
        let r = gw.query(AGENT, &sql).await;
        assert_eq!(r.status, 200, "{sql}: {:?}", r.body);
        assert_eq!(r.body["rows"][0], want, "API: {sql}");
        let rows = client.simple_query(&sql).await.unwrap();
        let tokio_postgres::SimpleQueryMessage::Row(row) = &rows[1] else {
            panic!("expected a row first: {rows:?}")
        };
        let wire: Vec<_> = (0..row.len()).map(|i| row.get(i)).collect();
        assert_eq!(json!(wire), want, "wire: {sql}");
    }
    // COPY has no RowDescription: the views it reads are looked up by name. Renamed and computed
    // columns are redacted, through views over views and under an alias of the view; a CTE named
    // like nothing in the database is no relation; a view that only filters stays clear.
    let addr = gw.wire.unwrap();
    for (query, want) in [
        (
            format!("SELECT id, tax_id FROM {schema}.directory"),
            "1\t[redacted]",
        ),
        (
            format!("SELECT d.id, d.tax_id FROM {schema}.directory d"),
            "1\t[redacted]",
        ),
        (
            format!("SELECT id, y FROM {schema}.deeper"),
            "1\t[redacted]",
        ),
        (
            format!("SELECT id, t FROM {schema}.snapshot"),
            "1\t[redacted]",
        ),
        (
            format!("WITH w AS (SELECT id FROM {schema}.over) SELECT id FROM w"),
            "1",
        ),
        (format!("SELECT id FROM {schema}.filtered"), "1"),
    ] {
        let copy = format!("COPY ({query}) TO STDOUT");
        let out = tokio::task::spawn_blocking(move || psql(addr, &["-Atc", &copy]))
            .await
            .unwrap();
        assert!(out.status.success(), "{query}: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim_end(),
            want,
            "COPY ({query})"
        );
    }
    drop_schema(&db, &schema).await;
}

/// A computed column named after a rule with a weaker style than the column it is computed from
/// (keep-last, partial; a keyed hash likewise) is redacted: the name says nothing of what it shows.
#[tokio::test]
async fn computed_columns_named_after_a_weaker_rule_are_redacted() {
    let (db, schema) = direct_and_schema_name("mask_named").await;
    db.batch_execute(&format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.people (id int, ssn text, card text, email text);
         INSERT INTO {schema}.people VALUES (1, '123-45-6789', '4111111111111111', 'alice@example.com');"
    ))
    .await
    .unwrap();
    let (gw, client) = masked_gateway(
        "columns = [\"people.ssn\", \"people.card\"]\nstyle = \"redact\"\n\n[[connections.masking.rules]]\ncolumns = [\"*email*\"]\nstyle = \"keep_last\"\nkeep = 4\n\n[[connections.masking.rules]]\ncolumns = [\"tag\"]\nstyle = \"partial\"",
    )
    .await;
    let sql = format!(
        "SELECT 'x' || substr(ssn, 1, 4) AS email, 'x' || substr(card, 5, 4) AS email,
                substr(email, 1, 3) AS email, (ssn)::varchar(5) AS email,
                substr(ssn, 1, 1) AS tag, 'literal' AS email, email
         FROM {schema}.people"
    );
    let want = json!([
        "[redacted]",
        "[redacted]",
        "[redacted]",
        "[redacted]",
        "[redacted]",
        "***eral",
        "*************.com"
    ]);
    let r = gw.query(AGENT, &sql).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["rows"][0], want, "API");
    let rows = client.simple_query(&sql).await.unwrap();
    let tokio_postgres::SimpleQueryMessage::Row(row) = &rows[1] else {
        panic!("expected a row first: {rows:?}")
    };
    let wire: Vec<_> = (0..row.len()).map(|i| row.get(i)).collect();
    assert_eq!(json!(wire), want, "wire");
    drop_schema(&db, &schema).await;
}

#[tokio::test]
async fn whole_rows_cursors_and_error_text_do_not_carry_masked_values() {
    let (db, schema) = direct_and_schema_name("mask_row").await;
    // A value no detector recognises: only the column rule protects it.
    db.batch_execute(&format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.people (id int, name text, ssn text);
         INSERT INTO {schema}.people VALUES (1, 'Ann', 'SSNVAL3');"
    ))
    .await
    .unwrap();
    let (gw, client) = masked_gateway("columns = [\"ssn\"]\nstyle = \"redact\"").await;
    let shown = |rows: &[tokio_postgres::SimpleQueryMessage]| -> String {
        rows.iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                    (0..r.len())
                        .map(|i| format!("{:?}|", r.get(i)))
                        .collect::<String>(),
                ),
                _ => None,
            })
            .collect()
    };
    // A whole row (table OID, attnum 0) holds the masked column.
    let whole = format!("SELECT t FROM {schema}.people t");
    let r = gw.query(AGENT, &whole).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // Not a text type: the masked value is NULL.
    assert_eq!(r.body["rows"][0], json!([null]));
    let rows = client.simple_query(&whole).await.unwrap();
    assert!(!shown(&rows).contains("SSNVAL3"), "{}", shown(&rows));
    // Attribute notation calls a function on the whole row: `p.to_json` is to_json(p).
    for sql in [
        format!("SELECT p.to_json FROM {schema}.people p"),
        format!("SELECT upper(p.concat) FROM {schema}.people p"),
        // A masked column handed to a function or VALUES in FROM.
        format!("SELECT x FROM {schema}.people, unnest(ARRAY[ssn]) AS x"),
        format!("SELECT value FROM {schema}.people p, json_each_text(to_json(p))"),
        format!("SELECT x FROM {schema}.people p JOIN LATERAL (VALUES (p.ssn)) v(x) ON true"),
    ] {
        let r = gw.query(AGENT, &sql).await;
        assert_eq!(r.status, 200, "{sql}: {:?}", r.body);
        assert!(!r.body.to_string().contains("SSNVAL3"), "{sql}: {}", r.body);
        let rows = client.simple_query(&sql).await.unwrap();
        assert!(!shown(&rows).contains("SSNVAL3"), "{sql}: {}", shown(&rows));
    }
    let e = client
        .copy_out(&format!(
            "COPY (SELECT p.row_to_json FROM {schema}.people p) TO STDOUT"
        ))
        .await;
    assert!(e.is_err(), "COPY of a whole row is refused");
    // A cursor's FETCH returns rows of a query its own text doesn't show.
    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute(&format!(
            "DECLARE c CURSOR FOR SELECT lower(ssn) AS x FROM {schema}.people"
        ))
        .await
        .unwrap();
    let rows = client.simple_query("FETCH ALL FROM c").await.unwrap();
    assert_eq!(shown(&rows), "Some(\"[redacted]\")|");
    client.batch_execute("COMMIT").await.unwrap();
    // PostgreSQL quotes the value it failed to cast; the text is withheld, the SQLSTATE stays.
    for sql in [
        format!("SELECT ssn::int FROM {schema}.people"),
        format!("SELECT ssn::json FROM {schema}.people"),
        format!("SELECT ssn::regclass FROM {schema}.people"),
        // A syntax_error that quotes a value, not the statement.
        format!("SELECT (ssn || ')')::tsquery FROM {schema}.people"),
        // Quotes inside the value split the message into parts the statement holds.
        format!("SELECT quote_ident('a\"' || ssn || '\"b')::regclass FROM {schema}.people"),
        // A comment listing candidates "holds" any one-character value.
        format!(
            "SELECT quote_ident('x' || substr(ssn, 1, 1))::regclass FROM {schema}.people /* xs xS */"
        ),
    ] {
        let e = client.simple_query(&sql).await.unwrap_err();
        let db_error = e.as_db_error().expect("a database error");
        let text = format!("{db_error:?}");
        assert!(!text.to_lowercase().contains("ssnval3"), "{sql}: {text}");
        assert!(db_error.message().contains("withheld"), "{sql}: {text}");
        let r = gw.query(AGENT, &sql).await;
        assert!(
            !r.body.to_string().to_lowercase().contains("ssnval3"),
            "API: {sql}: {}",
            r.body
        );
    }
    // Errors built from the statement alone keep their text.
    let e = client
        .simple_query(&format!("SELECT nope FROM {schema}.people"))
        .await
        .unwrap_err();
    assert!(e.as_db_error().unwrap().message().contains("nope"), "{e:?}");
    let e = client
        .simple_query(&format!("SELECT * FROM {schema}.peple"))
        .await
        .unwrap_err();
    assert!(
        e.as_db_error().unwrap().message().contains("peple"),
        "{e:?}"
    );
    drop_schema(&db, &schema).await;
}

#[tokio::test]
async fn an_error_at_a_drivers_prepare_keeps_text_the_statement_holds_on_a_masked_connection() {
    let (_gw, client) = masked_gateway("columns = [\"ssn\"]\nstyle = \"redact\"").await;
    let missing = format!("no_such_table_{}", uuid::Uuid::new_v4().simple());
    // tokio-postgres prepares first (Parse, Describe, Sync), as asyncpg does: the error answers a batch
    // that executes nothing, and its text quotes only what the statement holds.
    let err = client
        .query(&format!("SELECT * FROM {missing}"), &[])
        .await
        .unwrap_err();
    let db = err.as_db_error().expect("PostgreSQL's error");
    assert_eq!(db.code().code(), "42P01");
    assert!(
        db.message()
            .contains(&format!("relation \"{missing}\" does not exist")),
        "{}",
        db.message()
    );
}

#[tokio::test]
async fn aggregates_over_qualified_columns_stay_clear_on_a_masked_connection() {
    let (db, schema) = direct_and_schema_name("mask_group").await;
    db.batch_execute(&format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.customers (id int, email text);
         CREATE TABLE {schema}.orders (id int, cid int, amount int);
         INSERT INTO {schema}.customers VALUES (1, 'ann@example.com');
         INSERT INTO {schema}.orders VALUES (10, 1, 5), (11, 1, 7);"
    ))
    .await
    .unwrap();
    let (gw, client) =
        masked_gateway("columns = [\"*email*\"]\nstyle = \"keep_last\"\nkeep = 4").await;
    let sql = format!(
        "SELECT c.email, count(o.id) AS n, sum(o.amount) AS total, max(o.amount) + 1 AS top \
         FROM {schema}.customers c JOIN {schema}.orders o ON o.cid = c.id GROUP BY c.email"
    );
    let r = gw.query(AGENT, &sql).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let row = &r.body["rows"][0];
    assert!(row[0].as_str().unwrap().ends_with(".com"), "{row}");
    assert!(row[0].as_str().unwrap().starts_with("****"), "{row}");
    assert_eq!(
        (&row[1], &row[2], &row[3]),
        (&json!("2"), &json!("12"), &json!("8")),
        "{row}"
    );
    let rows = client.simple_query(&sql).await.unwrap();
    let Some(tokio_postgres::SimpleQueryMessage::Row(wire)) = rows
        .iter()
        .find(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
    else {
        panic!("no row: {rows:?}")
    };
    assert_eq!(
        (wire.get(1), wire.get(2), wire.get(3)),
        (Some("2"), Some("12"), Some("8"))
    );
    drop_schema(&db, &schema).await;
}

#[tokio::test]
async fn other_sessions_statement_text_in_pg_stat_activity_is_redacted_under_column_rules() {
    let (db, marker) = direct_and_schema_name("SSNVAL").await;
    // Another session is running a statement whose text holds a masked value (no detector knows it).
    let running = format!("SELECT pg_sleep(3), '{marker}' AS ssn");
    let busy = tokio::spawn(async move { db.simple_query(&running).await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (gw, client) = masked_gateway("columns = [\"ssn\"]\nstyle = \"redact\"").await;
    let sql = "SELECT query AS q, state FROM pg_stat_activity WHERE query LIKE '%pg_sleep(3)%' ORDER BY query";
    let r = gw.query(AGENT, sql).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(!r.body.to_string().contains(&marker), "API: {}", r.body);
    assert_eq!(r.body["rows"][0][0], "[redacted]", "{}", r.body);
    let rows = client.simple_query(sql).await.unwrap();
    let mut seen = 0;
    for m in &rows {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = m {
            assert_eq!(row.get(0), Some("[redacted]"));
            seen += 1;
        }
    }
    assert!(seen >= 1, "the running statement is listed");
    busy.await.unwrap().unwrap();
}

#[tokio::test]
async fn copy_through_a_view_found_by_search_path_or_two_copies_in_one_query_stay_masked() {
    let (db, schema) = direct_and_schema_name("mask_copy_path").await;
    db.batch_execute(&format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.people (id int, ssn text);
         INSERT INTO {schema}.people VALUES (1, 'SSNVAL3');
         CREATE VIEW {schema}.v_people AS SELECT id, ssn AS tax_id FROM {schema}.people;"
    ))
    .await
    .unwrap();
    let (_gw, client) = masked_gateway("columns = [\"ssn\"]\nstyle = \"redact\"").await;
    let copied = |sql: String| {
        let client = &client;
        async move {
            let stream = client.copy_out(&sql).await?;
            futures::pin_mut!(stream);
            let mut out = Vec::new();
            while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
                out.extend_from_slice(&chunk?);
            }
            Ok::<_, tokio_postgres::Error>(String::from_utf8_lossy(&out).into_owned())
        }
    };
    // The view is named without its schema: this session's search_path finds it, the gateway's
    // catalog session's does not.
    client
        .batch_execute(&format!("SET search_path = {schema}, public"))
        .await
        .unwrap();
    match copied("COPY (SELECT id, tax_id FROM v_people) TO STDOUT".into()).await {
        Ok(text) => assert!(!text.contains("SSNVAL3"), "{text}"),
        Err(e) => assert!(e.as_db_error().is_some(), "{e:?}"),
    }
    // The view's masked column renamed, computed from, or renamed through a CTE or subquery.
    for query in [
        "SELECT tax_id AS x FROM v_people",
        "SELECT upper(tax_id) AS y FROM v_people",
        "WITH w AS (SELECT tax_id AS x FROM v_people) SELECT x FROM w",
        "SELECT x FROM (SELECT tax_id AS x FROM v_people) s",
        "SELECT v.tax_id AS z FROM v_people v",
    ] {
        match copied(format!("COPY ({query}) TO STDOUT")).await {
            Ok(text) => assert!(!text.contains("SSNVAL3"), "{query}: {text}"),
            Err(e) => assert!(e.as_db_error().is_some(), "{query}: {e:?}"),
        }
    }
    // Two COPYs in one query string: each would be masked by the last one's columns.
    let two = format!(
        "COPY (SELECT id, ssn FROM {schema}.people) TO STDOUT; COPY (SELECT id, id FROM {schema}.people) TO STDOUT"
    );
    let rows = client.simple_query(&two).await;
    let e = rows.expect_err("refused");
    assert!(
        e.as_db_error()
            .is_some_and(|d| d.message().contains("several COPY")),
        "{e:?}"
    );
    drop_schema(&db, &schema).await;
}

/// A view another session redefines between two statements of a wire session is read afresh, not
/// masked by its old definition; `COPY pg_statistic` (sample values of every column) is refused.
#[tokio::test]
async fn a_view_redefined_by_another_session_and_statistics_copied_out_stay_masked() {
    let (db, schema) = direct_and_schema_name("mask_view_swap").await;
    db.batch_execute(&format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.people (id int, name text, ssn text);
         INSERT INTO {schema}.people SELECT g, 'NAME' || g, 'SSNSWAP' || g FROM generate_series(1, 200) g;
         CREATE VIEW {schema}.v AS SELECT id, name FROM {schema}.people;
         ANALYZE {schema}.people;"
    ))
    .await
    .unwrap();
    // Statistics catalogs are reviewed by default; this connection allows them, and masking
    // refuses the copy.
    let (_gw, client) =
        masked_gateway_allowing_everything("columns = [\"ssn\"]\nstyle = \"redact\"").await;
    let names = |rows: Vec<tokio_postgres::SimpleQueryMessage>| row_texts(&rows);
    let read = format!("SELECT name FROM {schema}.v ORDER BY id LIMIT 2");
    assert_eq!(
        names(client.simple_query(&read).await.unwrap()),
        ["NAME1", "NAME2"]
    );
    let prepared = client.prepare(&read).await.unwrap();
    db.batch_execute(&format!(
        "CREATE OR REPLACE VIEW {schema}.v AS SELECT id, ssn AS name FROM {schema}.people"
    ))
    .await
    .unwrap();
    for got in [
        names(client.simple_query(&read).await.unwrap()),
        client
            .query(&prepared, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
            .collect(),
    ] {
        assert!(got.iter().all(|v| !v.contains("SSNSWAP")), "{got:?}");
    }
    let stats = client
        .simple_query("COPY pg_statistic (stavalues1) TO STDOUT")
        .await;
    match stats {
        Ok(rows) => panic!("statistics copied out: {rows:?}"),
        Err(e) => assert!(e.as_db_error().is_some(), "{e:?}"),
    }
    drop_schema(&db, &schema).await;
}

/// Computations over a view column that renames a masked one, a partitioned parent whose partition a
/// rule names, statistics catalogs' whole rows and extended statistics, and a cursor over a view
/// replaced after it was declared: all stay masked, on the wire and in the API.
#[tokio::test]
async fn values_reached_through_views_parents_statistics_and_held_cursors_stay_masked() {
    let (db, schema) = direct_and_schema_name("mask_reach").await;
    db.batch_execute(&format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.people (id int, name text, ssn text);
         INSERT INTO {schema}.people SELECT g, 'NAME' || g, 'SSNREACH' || g FROM generate_series(1, 50) g;
         CREATE VIEW {schema}.v_ren AS SELECT id, ssn AS tax_id FROM {schema}.people;
         CREATE VIEW {schema}.v_swap AS SELECT id, ssn AS x FROM {schema}.people;
         CREATE TABLE {schema}.allpeople (id int, card text) PARTITION BY LIST (id);
         CREATE TABLE {schema}.customers PARTITION OF {schema}.allpeople FOR VALUES IN (500);
         INSERT INTO {schema}.allpeople VALUES (500, 'CARDREACH500');
         CREATE STATISTICS {schema}.st (mcv) ON id, ssn FROM {schema}.people;
         ANALYZE {schema}.people;"
    ))
    .await
    .unwrap();
    // Statistics catalogs are reviewed by default; this connection's policy allows them.
    let (gw, client) = masked_gateway_allowing_everything(
        "columns = [\"ssn\", \"customers.card\"]\nstyle = \"redact\"",
    )
    .await;
    let texts = |rows: Vec<tokio_postgres::SimpleQueryMessage>| row_texts(&rows).join("\n");
    let leaks = [
        format!("SELECT upper(tax_id) FROM {schema}.v_ren ORDER BY id LIMIT 3"),
        format!("SELECT string_agg(tax_id, ',') FROM {schema}.v_ren"),
        format!("SELECT tax_id || '' AS a FROM {schema}.v_ren LIMIT 2"),
        format!("SELECT card FROM {schema}.allpeople"),
        format!("SELECT * FROM {schema}.allpeople"),
        format!("SELECT s FROM pg_statistic s WHERE starelid = '{schema}.people'::regclass"),
        "SELECT stxdmcv FROM pg_statistic_ext_data".to_string(),
        "SELECT d FROM pg_statistic_ext_data d".to_string(),
    ];
    for sql in &leaks {
        let wire = texts(client.simple_query(sql).await.unwrap());
        assert!(
            !wire.contains("SSNREACH")
                && !wire.contains("CARDREACH")
                && !wire.contains("53534e5245414348"),
            "{sql} → {wire}"
        );
        let api = gw.query(AGENT, sql).await;
        assert_eq!(api.status, 200, "{sql}: {:?}", api.body);
        let shown = api.body["rows"].to_string();
        assert!(
            !shown.contains("SSNREACH") && !shown.contains("CARDREACH"),
            "{sql} → {shown}"
        );
    }
    // Several statements in one API request: each result set is judged by its own statement.
    let api = gw
        .query(
            AGENT,
            &format!("SELECT 1 + 1; SELECT upper(tax_id) FROM {schema}.v_ren ORDER BY id LIMIT 1"),
        )
        .await;
    assert_eq!(api.status, 200, "{:?}", api.body);
    let shown = api.body.to_string();
    assert!(!shown.contains("SSNREACH"), "{shown}");
    assert!(
        shown.contains("\"2\""),
        "the first statement's result stays clear: {shown}"
    );
    // Computations over the view's unmasked columns stay clear.
    let id = texts(
        client
            .simple_query(&format!("SELECT max(id) + 1 FROM {schema}.v_ren"))
            .await
            .unwrap(),
    );
    assert_eq!(id, "51");
    // A cursor keeps the rows its view computed when declared, even once the view is replaced.
    client
        .batch_execute(&format!(
            "DECLARE c CURSOR WITH HOLD FOR SELECT x FROM {schema}.v_swap ORDER BY id"
        ))
        .await
        .unwrap();
    db.batch_execute(&format!(
        "CREATE OR REPLACE VIEW {schema}.v_swap AS SELECT id, name AS x FROM {schema}.people"
    ))
    .await
    .unwrap();
    let fetched = texts(client.simple_query("FETCH 3 FROM c").await.unwrap());
    assert!(!fetched.contains("SSNREACH"), "{fetched}");
    client.batch_execute("CLOSE c").await.unwrap();
    // A view name longer than the 63 bytes PostgreSQL keeps, found through this session's search_path.
    let long = "a".repeat(70);
    db.batch_execute(&format!(
        "CREATE VIEW {schema}.{long} AS SELECT id, ssn AS tax_id FROM {schema}.people"
    ))
    .await
    .unwrap();
    client
        .batch_execute(&format!("SET search_path = {schema}, public"))
        .await
        .unwrap();
    let through_path = texts(
        client
            .simple_query(&format!("SELECT upper(tax_id) FROM {long} LIMIT 2"))
            .await
            .unwrap(),
    );
    assert!(!through_path.contains("SSNREACH"), "{through_path}");
    drop_schema(&db, &schema).await;
}

/// A view the catalog session cannot see — created in the client's open transaction, or a temporary
/// view named through `pg_temp` — is not taken for "no view": its columns and computations over them
/// are redacted.
#[tokio::test]
async fn views_the_gateway_cannot_see_yet_are_masked_not_trusted() {
    let (db, schema) = direct_and_schema_name("mask_unseen").await;
    db.batch_execute(&format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.people (id int, ssn text);
         INSERT INTO {schema}.people VALUES (1, 'SSNUNSEEN1'), (2, 'SSNUNSEEN2');"
    ))
    .await
    .unwrap();
    let cfg = base_config("[wire]\nlisten = \"127.0.0.1:0\"\nallow_cleartext_without_tls = true\n")
        .replace(
            "[[approver_groups]]",
            "[[connections.masking.rules]]\ncolumns = [\"ssn\"]\nstyle = \"redact\"\n\n[[approver_groups]]",
        )
        + "\n[[policy.rules]]\nname = \"everything\"\naction = \"allow\"\n";
    let gw = spawn_gateway(&cfg, Backend::Sqlite).await;
    let (client, _conn) = agent_wire_session(gw.wire.unwrap()).await;
    let shown = |rows: Vec<tokio_postgres::SimpleQueryMessage>| row_texts(&rows).join(",");
    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute(&format!(
            "CREATE VIEW {schema}.w AS SELECT id, ssn AS t FROM {schema}.people"
        ))
        .await
        .unwrap();
    for sql in [
        format!("SELECT t FROM {schema}.w"),
        format!("SELECT upper(t) FROM {schema}.w"),
    ] {
        let got = shown(client.simple_query(&sql).await.unwrap());
        assert!(!got.contains("SSNUNSEEN"), "{sql} → {got}");
    }
    client.batch_execute("ROLLBACK").await.unwrap();
    client
        .batch_execute(&format!(
            "CREATE TEMP VIEW tv AS SELECT id, ssn AS t FROM {schema}.people"
        ))
        .await
        .unwrap();
    for sql in ["SELECT upper(t) FROM pg_temp.tv", "SELECT t || '' FROM tv"] {
        let got = shown(client.simple_query(sql).await.unwrap());
        assert!(!got.contains("SSNUNSEEN"), "{sql} → {got}");
    }
    // A set-returning function in FROM is no relation to look up: its computed columns stay clear.
    let series = shown(
        client
            .simple_query("SELECT count(*) FROM generate_series(1, 3)")
            .await
            .unwrap(),
    );
    assert_eq!(series, "3");
    drop_schema(&db, &schema).await;
}

/// What user code computes reaches the client masked: a procedure's OUT and INOUT parameters
/// (`CALL`), a user function's rows in FROM; a card number in a float8's exponent form (as text, in an
/// array, in COPY) is found, and a decimal whose fraction passes Luhn is left alone.
#[tokio::test]
async fn procedure_outputs_functions_in_from_and_float_cards_are_masked() {
    let (db, schema) = direct_and_schema_name("mask_code").await;
    db.batch_execute(&format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.people (id int, ssn text, cardf float8);
         INSERT INTO {schema}.people VALUES (1, '123-45-6789', 4111111111111111);
         CREATE PROCEDURE {schema}.leak_proc(INOUT x text) LANGUAGE plpgsql AS $$
           BEGIN SELECT ssn INTO x FROM {schema}.people WHERE id = 1; END $$;
         CREATE FUNCTION {schema}.lf() RETURNS TABLE(v text) LANGUAGE sql AS
           'SELECT ssn FROM {schema}.people';"
    ))
    .await
    .unwrap();
    let (_gw, client) = masked_gateway_allowing_everything(
        "columns = [\"ssn\"]\nstyle = \"redact\"\n\n[[connections.masking.rules]]\ndetect = [\"card\"]\nstyle = \"redact\"",
    )
    .await;
    for sql in [
        format!("CALL {schema}.leak_proc(NULL)"),
        format!("SELECT * FROM {schema}.lf()"),
        format!("SELECT x.v FROM {schema}.lf() x"),
    ] {
        let rows = row_texts(&client.simple_query(&sql).await.unwrap());
        assert_eq!(rows, ["[redacted]"], "{sql}");
    }
    for sql in [
        format!("SELECT cardf::text FROM {schema}.people"),
        format!("SELECT array_agg(cardf)::text FROM {schema}.people"),
        format!("SELECT to_json(cardf)::text FROM {schema}.people"),
    ] {
        let rows = row_texts(&client.simple_query(&sql).await.unwrap());
        assert!(
            !rows.iter().any(|r| r.contains("4.111111111111111e+15")),
            "{sql}: {rows:?}"
        );
    }
    let rows = row_texts(
        &client
            .simple_query("SELECT 4.666666666666667::float8::text, 512.6666666666666::float8")
            .await
            .unwrap(),
    );
    assert_eq!(rows, ["4.666666666666667|512.6666666666666"]);
    drop_schema(&db, &schema).await;
}
