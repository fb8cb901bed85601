//! Masking through the wire gateway against the real PostgreSQL at 127.0.0.1:5432: the same data read
//! directly and through the gateway, in text and binary formats, extended and simple protocol, and COPY.

use countersign_gateway::masking::{Masker, MaskingConfig};
use countersign_gateway::pg::testing::{GateEvent, StaticGate};
use countersign_gateway::pg::{StatementRecord, WireConfig, WireServer};
use futures::StreamExt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

mod support;
use support::raw::{cstr, login, message, read_frames_until};
use tokio::io::AsyncWriteExt;

const TOKEN: &str = "secret-token";

const RULES: &str = r#"
    [[rules]]
    columns = ["*email*", "users.ssn"]
    style = "hash"
    [[rules]]
    detect = ["card", "iban", "jwt", "api_key", "private_key"]
    style = "keep_last"
    keep = 4
    [[rules]]
    detect = ["phone", "ssn", "email"]
    style = "partial"
"#;

async fn start(rules: Option<&str>) -> (Arc<StaticGate>, SocketAddr) {
    start_with(rules, false).await
}

/// A gateway with these rules; `lookup` resolves result tables for table-qualified rules.
async fn start_with(rules: Option<&str>, lookup: bool) -> (Arc<StaticGate>, SocketAddr) {
    let upstream = countersign_gateway::pg::testing::local_postgres("test");
    let mut gate = StaticGate::new("app", upstream, TOKEN);
    if let Some(rules) = rules {
        let cfg: MaskingConfig = toml::from_str(rules).unwrap();
        gate = gate.with_masking(Masker::new(&cfg, Some(b"test-key")).unwrap());
    }
    if lookup {
        gate = gate.with_table_lookup();
    }
    let gate = Arc::new(gate);
    let mut config = WireConfig::new("127.0.0.1:0".parse().unwrap());
    config.allow_cleartext_without_tls = true;
    let server = WireServer::bind(config, gate.clone()).await.unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.run(std::future::pending()));
    (gate, addr)
}

async fn connect_to(conn: String) -> Client {
    let (client, connection) = tokio_postgres::connect(&conn, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

async fn through(addr: SocketAddr) -> Client {
    connect_to(format!(
        "host=127.0.0.1 port={} dbname=app user=agent password={TOKEN} sslmode=disable",
        addr.port()
    ))
    .await
}

async fn direct() -> Client {
    connect_to("host=127.0.0.1 port=5432 dbname=test user=postgres sslmode=disable".into()).await
}

/// A fresh table of people with sensitive and harmless values.
async fn people(db: &Client) -> String {
    let t = format!("mask_{}", uuid::Uuid::new_v4().simple());
    db.batch_execute(&format!(
        "CREATE TABLE {t} (id int8 primary key, email text, ssn varchar, note text, card_no int8, amount numeric, meta jsonb);
         INSERT INTO {t} VALUES
          (1, 'jane@example.com', '123-45-6789', 'card 4111 1111 1111 1111, call +1 415 555 0100', 4111111111111111, 4111111111111111, '{{\"iban\": \"DE89370400440532013000\"}}'),
          (2, NULL, NULL, 'Grüße — order 4111111111111112 ✓ from 10.0.0.1', 4111111111111112, 12.5, '{{\"ok\": true}}'),
          (3, 'ana@example.com', '078-05-1120', 'token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl', 42, NULL, NULL)"
    ))
    .await
    .unwrap();
    t
}

fn simple_rows(messages: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

/// The error a COPY … TO STDOUT ends with, at the start or in its stream (None: it completed).
async fn copy_out_error(client: &Client, sql: &str) -> Option<tokio_postgres::Error> {
    match client.copy_out(sql).await {
        // Up to the first error: a COPY that fails after it started ends there (the stream is not to be
        // polled after an error).
        Ok(stream) => {
            let mut stream = std::pin::pin!(stream);
            while let Some(item) = stream.next().await {
                if let Err(e) = item {
                    return Some(e);
                }
            }
            None
        }
        Err(e) => Some(e),
    }
}

async fn statement_records(gate: &StaticGate, n: usize) -> Vec<StatementRecord> {
    for _ in 0..100 {
        let records: Vec<StatementRecord> = gate
            .events()
            .into_iter()
            .filter_map(|e| match e {
                GateEvent::Statement(r) => Some(r),
                _ => None,
            })
            .collect();
        if records.len() >= n {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("statements were not recorded: {:#?}", gate.events());
}

#[tokio::test]
async fn simple_query_results_are_masked_and_counted_per_statement() {
    let db = direct().await;
    let t = people(&db).await;
    let (gate, addr) = start(Some(RULES)).await;
    let client = through(addr).await;
    let sql = format!("SELECT id, email, ssn, note, card_no, amount, meta FROM {t} ORDER BY id");
    let clear = simple_rows(&db.simple_query(&sql).await.unwrap());
    let masked = simple_rows(&client.simple_query(&sql).await.unwrap());
    assert_eq!(masked.len(), 3);
    // Row 1: column rule (hash) for email, column rule for ssn (table part ignored), detectors elsewhere.
    assert_eq!(masked[0][0].as_deref(), Some("1"));
    let hash = masked[0][1].clone().unwrap();
    assert!(hash.starts_with("hash:") && hash.len() == 37, "{hash}");
    assert!(masked[0][2].as_deref().unwrap().starts_with("hash:"));
    assert_eq!(
        masked[0][3].as_deref(),
        Some("card ***************1111, call +* *** *** 0100")
    );
    assert_eq!(masked[0][4], None, "a card number in an int8 becomes NULL");
    assert_eq!(masked[0][5], None, "and in a numeric");
    assert_eq!(masked[0][6], None, "an IBAN inside jsonb nulls the value");
    // Row 2: NULLs stay NULL, multi-byte text and a Luhn-failing number stay clear.
    assert_eq!(masked[1], clear[1]);
    // Row 3: the same e-mail hashes the same way on every read; the JWT keeps its last 4 characters.
    assert!(
        masked[2][3].as_deref().unwrap().ends_with("dXJl")
            && !masked[2][3].as_deref().unwrap().contains("eyJ")
    );
    let again = simple_rows(&client.simple_query(&sql).await.unwrap());
    assert_eq!(again, masked);
    assert_ne!(masked[0][1], masked[2][1]);

    let records = statement_records(&gate, 2).await;
    assert_eq!(records[0].masked_fields, 9, "{records:#?}");
    assert!(
        records[0].sql.contains("SELECT id, email"),
        "the statement is recorded unmasked"
    );
}

#[tokio::test]
async fn prepared_statements_with_binary_results_are_masked() {
    let db = direct().await;
    let t = people(&db).await;
    let (_, addr) = start(Some(RULES)).await;
    let client = through(addr).await;
    // tokio-postgres prepares once (Describe), then Binds binary result formats and Executes without Describe.
    let stmt = client
        .prepare(&format!(
            "SELECT id, email, note, card_no FROM {t} WHERE id = ANY($1) ORDER BY id"
        ))
        .await
        .unwrap();
    for _ in 0..2 {
        let rows = client.query(&stmt, &[&vec![1i64, 2, 3]]).await.unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].get::<_, i64>(0), 1);
        assert!(rows[0].get::<_, String>(1).starts_with("hash:"));
        assert_eq!(
            rows[0].get::<_, String>(2),
            "card ***************1111, call +* *** *** 0100"
        );
        assert_eq!(rows[0].get::<_, Option<i64>>(3), None);
        assert_eq!(rows[1].get::<_, Option<String>>(1), None);
        assert_eq!(rows[1].get::<_, Option<i64>>(3), Some(4111111111111111 + 1));
        assert_eq!(rows[2].get::<_, Option<i64>>(3), Some(42));
    }
}

#[tokio::test]
async fn copy_to_stdout_is_masked_in_text_and_csv() {
    let db = direct().await;
    let t = people(&db).await;
    let (_, addr) = start(Some(RULES)).await;
    let client = through(addr).await;
    let read = |sql: String| {
        let client = &client;
        async move {
            let stream = client.copy_out(&sql).await?;
            let chunks: Vec<_> = stream.collect().await;
            let mut out = Vec::new();
            for c in chunks {
                out.extend_from_slice(&c?);
            }
            Ok::<String, tokio_postgres::Error>(String::from_utf8(out).unwrap())
        }
    };
    let text = read(format!("COPY {t} (id, email, note) TO STDOUT"))
        .await
        .unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("1\thash:"), "{text}");
    assert!(
        lines[0].ends_with("\tcard ***************1111, call +* *** *** 0100"),
        "{text}"
    );
    assert_eq!(
        lines[1],
        "2\t\\N\tGrüße — order 4111111111111112 ✓ from 10.0.0.1"
    );
    let csv = read(format!(
        "COPY (SELECT id, ssn, note FROM {t} ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)"
    ))
    .await
    .unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "id,ssn,note");
    assert!(lines[1].starts_with("1,\"hash:"), "{csv}");
    assert!(!csv.contains("4111 1111 1111 1111") && !csv.contains("123-45-6789"));
}

#[tokio::test]
async fn results_that_cannot_be_masked_are_refused_and_the_session_stays_usable() {
    let db = direct().await;
    let t = people(&db).await;
    let (gate, addr) = start(Some(RULES)).await;
    let client = through(addr).await;
    for sql in [
        format!("COPY {t} TO STDOUT"),
        format!("COPY {t} (id, email) TO STDOUT WITH (FORMAT binary)"),
    ] {
        let err = copy_out_error(&client, &sql)
            .await
            .unwrap_or_else(|| panic!("{sql} must be refused"));
        let db_err = err.as_db_error().unwrap_or_else(|| panic!("{err:?}"));
        assert_eq!(db_err.code().code(), "0A000");
        assert!(
            db_err.message().contains("withheld"),
            "{}",
            db_err.message()
        );
    }
    let n: i32 = client.query_one("SELECT 41 + 1", &[]).await.unwrap().get(0);
    assert_eq!(n, 42);
    // Records arrive in the recorder's batches: wait for both refusals (under load the prepare
    // rounds' records can come first).
    let mut records = Vec::new();
    let mut refused = 0;
    for _ in 0..100 {
        records = statement_records(&gate, 4).await;
        refused = records
            .iter()
            .filter(|r| r.error.as_deref().is_some_and(|e| e.contains("withheld")))
            .count();
        if refused >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(refused, 2, "{records:#?}");
}

#[tokio::test]
async fn expressions_and_aliases_over_masked_columns_do_not_unmask_them() {
    let db = direct().await;
    let t = people(&db).await;
    let (_gate, addr) = start_with(Some(RULES), true).await;
    let client = through(addr).await;
    let hashed = simple_rows(
        &client
            .simple_query(&format!("SELECT email FROM {t} WHERE id = 1"))
            .await
            .unwrap(),
    )[0][0]
        .clone()
        .unwrap();
    assert!(hashed.starts_with("hash:"), "{hashed}");

    let sql = format!(
        "SELECT id, email AS contact, lower(email) AS e, email || '' AS f, \
         (SELECT max(email) FROM {t}) AS g, row_to_json(p)::text AS h FROM {t} p WHERE id = 1"
    );
    let rows = simple_rows(&client.simple_query(&sql).await.unwrap());
    assert_eq!(rows[0][0].as_deref(), Some("1"));
    assert_eq!(
        rows[0][1].as_deref(),
        Some(hashed.as_str()),
        "an alias keeps its rule"
    );
    for (i, v) in rows[0].iter().enumerate().skip(2) {
        let v = v.as_deref().unwrap_or_default();
        assert!(!v.contains("plain-secret-value"), "column {i} leaked: {v}");
        assert_eq!(v, "[redacted]", "column {i}");
    }
    // The same through a UNION (its columns have no table) and with binary results.
    let rows = simple_rows(
        &client
            .simple_query(&format!(
                "SELECT note FROM {t} WHERE id = 2 UNION ALL SELECT email FROM {t} WHERE id = 1"
            ))
            .await
            .unwrap(),
    );
    assert!(
        rows.iter().all(|r| r[0].as_deref() == Some("[redacted]")),
        "{rows:?}"
    );
    let row = client
        .query_one(
            format!("SELECT upper(email) FROM {t} WHERE id = 1").as_str(),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "[redacted]");

    // Computations over harmless columns stay clear, even when a masked column filters them.
    let rows = simple_rows(
        &client
            .simple_query(&format!(
                "SELECT count(*), max(id) * 2 FROM {t} WHERE email LIKE '%@example.com'"
            ))
            .await
            .unwrap(),
    );
    assert_eq!(
        rows,
        vec![vec![Some("2".to_string()), Some("6".to_string())]]
    );

    // COPY planned by names refuses an expression it cannot follow; the session stays usable.
    let copy = format!("COPY (SELECT lower(email) AS e FROM {t}) TO STDOUT");
    let err = copy_out_error(&client, &copy)
        .await
        .expect("a COPY of an expression over a masked column must be refused");
    let message = err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(message.contains("computes a column"), "{err:?}");
    let n: i32 = client.query_one("SELECT 41 + 1", &[]).await.unwrap().get(0);
    assert_eq!(n, 42);
}

#[tokio::test]
async fn connection_without_rules_relays_results_untouched() {
    let db = direct().await;
    let t = people(&db).await;
    let (_, addr) = start(None).await;
    let client = through(addr).await;
    let sql = format!("SELECT * FROM {t} ORDER BY id");
    assert_eq!(
        simple_rows(&client.simple_query(&sql).await.unwrap()),
        simple_rows(&db.simple_query(&sql).await.unwrap())
    );
}

/// Two tables with an `email` column, a view and an expression, in a fresh schema.
async fn customers_and_staff(db: &Client) -> String {
    let schema = format!("mask_tq_{}", uuid::Uuid::new_v4().simple());
    db.batch_execute(&format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.customers (id int, email text);
         CREATE TABLE {schema}.staff (id int, email text);
         INSERT INTO {schema}.customers VALUES (1, 'cust@example.com');
         INSERT INTO {schema}.staff VALUES (1, 'staff@example.com');
         CREATE VIEW {schema}.staff_view AS SELECT id, email FROM {schema}.staff;"
    ))
    .await
    .unwrap();
    schema
}

#[tokio::test]
async fn table_qualified_rules_mask_only_the_named_table() {
    let db = direct().await;
    let schema = customers_and_staff(&db).await;
    let rules = "[[rules]]\ncolumns = [\"customers.email\"]\nstyle = \"redact\"";
    let (_gate, addr) = start_with(Some(rules), true).await;
    let client = through(addr).await;
    let join = format!(
        "SELECT c.email, s.email FROM {schema}.customers c JOIN {schema}.staff s USING (id)"
    );
    // Simple protocol (text).
    let rows = simple_rows(&client.simple_query(&join).await.unwrap());
    assert_eq!(
        rows,
        [[
            Some("[redacted]".to_string()),
            Some("staff@example.com".into())
        ]]
    );
    // Extended protocol (binary).
    let row = client.query_one(&join, &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "[redacted]");
    assert_eq!(row.get::<_, String>(1), "staff@example.com");
    // Where the table isn't known for certain, the column name decides (over-masking): a view's
    // columns carry the view's OID, an expression's carry OID 0.
    let fallback = format!(
        "SELECT email FROM {schema}.staff_view; SELECT lower(email) AS email FROM {schema}.staff"
    );
    let rows = simple_rows(&client.simple_query(&fallback).await.unwrap());
    assert_eq!(
        rows,
        [
            [Some("[redacted]".to_string())],
            [Some("[redacted]".to_string())]
        ]
    );
    db.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}

#[tokio::test]
async fn schema_qualified_rules_check_the_schema_too() {
    let db = direct().await;
    let schema = customers_and_staff(&db).await;
    let rules = format!(
        "[[rules]]\ncolumns = [\"{schema}.staff.email\", \"public.customers.email\"]\nstyle = \"redact\""
    );
    let (_gate, addr) = start_with(Some(&rules), true).await;
    let client = through(addr).await;
    let join = format!(
        "SELECT c.email, s.email FROM {schema}.customers c JOIN {schema}.staff s USING (id)"
    );
    let rows = simple_rows(&client.simple_query(&join).await.unwrap());
    assert_eq!(
        rows,
        [[
            Some("cust@example.com".to_string()),
            Some("[redacted]".into())
        ]]
    );
    db.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}

/// Payloads of the notifications a client LISTENing on `channel` through the gateway at `addr` gets
/// for each of `payloads`, sent directly with NOTIFY.
async fn notified(addr: SocketAddr, channel: &str, payloads: &[&str]) -> Vec<String> {
    let (client, mut connection) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} dbname=app user=agent password={TOKEN} sslmode=disable",
            addr.port()
        ),
        NoTls,
    )
    .await
    .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(m) = futures::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let Ok(tokio_postgres::AsyncMessage::Notification(n)) = m {
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {channel}"))
        .await
        .unwrap();
    let sender = direct().await;
    let mut got = Vec::new();
    for p in payloads {
        sender
            .execute("SELECT pg_notify($1, $2)", &[&channel, p])
            .await
            .unwrap();
        // A statement through the gateway makes the client read what the upstream sent meanwhile.
        client.batch_execute("SELECT 1").await.unwrap();
        let payload = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a notification")
            .unwrap();
        got.push(payload);
    }
    got
}

#[tokio::test]
async fn notification_payloads_are_masked_like_a_computed_column() {
    // Detectors only: the payload is scanned, the rest of it kept.
    let (_gate, addr) = start(Some(
        "[[rules]]\ndetect = [\"card\"]\nstyle = \"keep_last\"\nkeep = 4",
    ))
    .await;
    let got = notified(
        addr,
        "cs_mask_detect",
        &["paid with 4111 1111 1111 1111", "order 42 shipped"],
    )
    .await;
    assert_eq!(got, ["paid with ***************1111", "order 42 shipped"]);
    // With column rules a payload may carry any column (a trigger's row_to_json(NEW)): redacted.
    let (_gate, addr) = start(Some(RULES)).await;
    let got = notified(
        addr,
        "cs_mask_columns",
        &[r#"{"id": 1, "email": "ann@example.com"}"#],
    )
    .await;
    assert_eq!(got, ["[redacted]"]);
}

#[tokio::test]
async fn a_row_too_large_to_examine_is_withheld_unless_no_column_is_masked() {
    let (_gate, addr) = start(Some(RULES)).await;
    let client = through(addr).await;
    let big = countersign_gateway::pg::MAX_MASKED_ROW + 1024;
    // A masked column (by name) in a row past the limit: the result is withheld, not buffered whole.
    let err = client
        .simple_query(&format!("SELECT repeat('x', {big}) AS email"))
        .await
        .expect_err("an oversized row with a masked column is withheld");
    let db = err.as_db_error().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(db.code().code(), "0A000");
    assert!(
        db.message().contains("larger than the 32 MiB"),
        "{}",
        db.message()
    );
    // The same through COPY.

    let err = copy_out_error(
        &client,
        &format!("COPY (SELECT repeat('y', {big}) AS email) TO STDOUT"),
    )
    .await
    .expect("an oversized COPY row is withheld");
    let db = err.as_db_error().unwrap_or_else(|| panic!("{err:?}"));
    assert!(
        db.message().contains("larger than the 32 MiB"),
        "{}",
        db.message()
    );
    // A result none of whose columns is masked streams through whole (column rules only: detectors
    // examine every text column).
    let (_gate, addr) = start(Some(
        "[[rules]]\ncolumns = [\"*email*\"]\nstyle = \"hash\"\n",
    ))
    .await;
    let client = through(addr).await;
    let rows = client
        .simple_query(&format!(
            "SELECT length(v), v FROM (SELECT repeat('7', {big}) AS v) s"
        ))
        .await
        .unwrap();
    let rows = simple_rows(&rows);
    assert_eq!(rows[0][0].as_deref(), Some(big.to_string().as_str()));
    assert_eq!(rows[0][1].as_ref().map(String::len), Some(big));
    // The session stays usable.
    let n: i32 = client.query_one("SELECT 41 + 1", &[]).await.unwrap().get(0);
    assert_eq!(n, 42);
}

/// A table whose masked column holds what no detector finds: only the column rule masks it.
async fn undetectable_emails(db: &Client) -> String {
    let t = format!("mask_{}", uuid::Uuid::new_v4().simple());
    db.batch_execute(&format!(
        "CREATE TABLE {t} (id int, email text); INSERT INTO {t} VALUES (1, 'plain-secret-value')"
    ))
    .await
    .unwrap();
    t
}

/// The text values of the DataRows among `frames`.
fn data_values(frames: &[(u8, Vec<u8>)]) -> Vec<String> {
    let mut values = Vec::new();
    for (_, body) in frames.iter().filter(|f| f.0 == b'D') {
        let mut pos = 2;
        for _ in 0..i16::from_be_bytes([body[0], body[1]]) {
            let len = i32::from_be_bytes(body[pos..pos + 4].try_into().unwrap());
            pos += 4;
            if len < 0 {
                values.push("NULL".into());
                continue;
            }
            values.push(String::from_utf8_lossy(&body[pos..pos + len as usize]).into_owned());
            pos += len as usize;
        }
    }
    values
}

fn parse_named(name: &str, sql: &str) -> Vec<u8> {
    message(b'P', &[cstr(name), cstr(sql), vec![0, 0]].concat())
}

fn bind(portal: &str, statement: &str) -> Vec<u8> {
    message(
        b'B',
        &[cstr(portal), cstr(statement), vec![0, 0, 0, 0, 0, 0]].concat(),
    )
}

fn execute(portal: &str) -> Vec<u8> {
    message(b'E', &[cstr(portal), vec![0, 0, 0, 0]].concat())
}

fn query(sql: &str) -> Vec<u8> {
    message(b'Q', &cstr(sql))
}

const SYNC: [u8; 5] = [b'S', 0, 0, 0, 4];

/// Binds a harmless statement to `portal` (Sync), sends `takeover` as a simple query, then Executes
/// `portal`; the values of the rows that come back.
async fn portal_taken_over(
    s: &mut tokio::net::TcpStream,
    portal: &str,
    takeover: &str,
) -> Vec<String> {
    s.write_all(
        &[
            parse_named("", "SELECT 'harmless'::text AS x"),
            bind(portal, ""),
            SYNC.to_vec(),
        ]
        .concat(),
    )
    .await
    .unwrap();
    read_frames_until(s, b'Z').await;
    s.write_all(&query(takeover)).await.unwrap();
    read_frames_until(s, b'Z').await;
    s.write_all(&[execute(portal), SYNC.to_vec()].concat())
        .await
        .unwrap();
    data_values(&read_frames_until(s, b'Z').await)
}

#[tokio::test]
async fn a_portal_name_a_sql_cursor_took_over_is_masked_as_a_cursor() {
    let db = direct().await;
    let t = undetectable_emails(&db).await;
    let (_gate, addr) = start_with(Some(RULES), true).await;
    let mut s = login(addr, "app", TOKEN).await;
    // A harmless portal `c`, gone at the end of its implicit transaction (the gateway kept its text),
    // then a SQL cursor of that name computing from a masked column.
    let values = portal_taken_over(
        &mut s,
        "c",
        &format!("DECLARE c CURSOR WITH HOLD FOR SELECT email || '' AS x FROM {t} WHERE id = 1"),
    )
    .await;
    assert!(!values.is_empty(), "the cursor's row arrives");
    assert!(
        values.iter().all(|v| !v.contains("plain-secret-value")),
        "{values:?}"
    );
    // Inside a transaction: the portal is closed by SQL and its name declared again.
    s.write_all(&query("BEGIN")).await.unwrap();
    read_frames_until(&mut s, b'Z').await;
    let values = portal_taken_over(
        &mut s,
        "d",
        &format!("CLOSE d; DECLARE d CURSOR FOR SELECT email || '' AS x FROM {t} WHERE id = 1"),
    )
    .await;
    assert!(!values.is_empty(), "the cursor's row arrives");
    assert!(
        values.iter().all(|v| !v.contains("plain-secret-value")),
        "{values:?}"
    );
    s.write_all(&query("COMMIT; CLOSE ALL")).await.unwrap();
    read_frames_until(&mut s, b'Z').await;
    db.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
}

#[tokio::test]
async fn a_statement_name_sql_deallocate_and_prepare_gave_another_text_is_not_bound_as_the_old_one()
{
    let db = direct().await;
    let t = undetectable_emails(&db).await;
    let (_gate, addr) = start_with(Some(RULES), true).await;
    let mut s = login(addr, "app", TOKEN).await;
    s.write_all(
        &[
            parse_named("s2", "SELECT 'harmless'::text AS x"),
            SYNC.to_vec(),
        ]
        .concat(),
    )
    .await
    .unwrap();
    read_frames_until(&mut s, b'Z').await;
    s.write_all(&query("DEALLOCATE s2")).await.unwrap();
    read_frames_until(&mut s, b'Z').await;
    s.write_all(&query(&format!(
        "PREPARE s2 AS SELECT email || '' AS x FROM {t} WHERE id = 1"
    )))
    .await
    .unwrap();
    read_frames_until(&mut s, b'Z').await;
    s.write_all(&[bind("", "s2"), execute(""), SYNC.to_vec()].concat())
        .await
        .unwrap();
    let frames = read_frames_until(&mut s, b'Z').await;
    let values = data_values(&frames);
    assert!(
        values.iter().all(|v| !v.contains("plain-secret-value")),
        "{values:?}"
    );
    // Refused as a name the gateway does not know (drivers prepare again on 26000).
    let error = frames
        .iter()
        .find(|f| f.0 == b'E')
        .map(|f| String::from_utf8_lossy(&f.1).into_owned());
    assert!(
        error.as_deref().is_some_and(|e| e.contains("26000")),
        "{error:?}"
    );
    db.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
}

#[tokio::test]
async fn a_flushed_statement_is_masked_by_its_own_text_when_a_query_follows_before_sync() {
    let db = direct().await;
    let t = undetectable_emails(&db).await;
    let (_gate, addr) = start_with(Some(RULES), true).await;
    let mut s = login(addr, "app", TOKEN).await;
    s.write_all(
        &[
            parse_named("", &format!("SELECT email || '' AS x FROM {t}")),
            bind("", ""),
            execute(""),
            message(b'H', b""),
            query("SELECT 1 AS one"),
        ]
        .concat(),
    )
    .await
    .unwrap();
    let mut frames = read_frames_until(&mut s, b'Z').await;
    s.write_all(&SYNC).await.unwrap();
    frames.extend(read_frames_until(&mut s, b'Z').await);
    let values = data_values(&frames);
    assert!(
        values.contains(&"1".to_string()),
        "the Query's row: {values:?}"
    );
    assert!(
        values.iter().all(|v| !v.contains("plain-secret-value")),
        "{values:?}"
    );
    db.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
}

#[tokio::test]
async fn a_portal_closed_and_declared_again_within_one_batch_is_masked_as_a_cursor() {
    let db = direct().await;
    let t = undetectable_emails(&db).await;
    let (_gate, addr) = start_with(Some(RULES), true).await;
    let mut s = login(addr, "app", TOKEN).await;
    // A view whose reading opens a cursor named `c` (a DBA's function): nothing in the batch's text
    // says what `c` runs.
    db.batch_execute(&format!(
        "CREATE FUNCTION {t}_open(n text) RETURNS refcursor LANGUAGE plpgsql AS $$
           DECLARE r refcursor := n; BEGIN OPEN r FOR SELECT email || '' AS x FROM {t}; RETURN r; END $$;
         CREATE VIEW {t}_v AS SELECT {t}_open('c') AS x;"
    ))
    .await
    .unwrap();
    let run = |sql: &str| [parse_named("", sql), bind("", ""), execute("")].concat();
    s.write_all(
        &[
            query("BEGIN"),
            parse_named("s1", "SELECT 'harmless'::text AS x"),
            bind("c", "s1"),
            run("CLOSE c"),
            run(&format!("SELECT count(*) FROM {t}_v")),
            execute("c"),
            SYNC.to_vec(),
        ]
        .concat(),
    )
    .await
    .unwrap();
    read_frames_until(&mut s, b'Z').await; // BEGIN's
    let values = data_values(&read_frames_until(&mut s, b'Z').await);
    assert!(!values.is_empty(), "the cursor's row arrives");
    assert!(
        values.iter().all(|v| !v.contains("plain-secret-value")),
        "{values:?}"
    );
    s.write_all(&query("ROLLBACK")).await.unwrap();
    read_frames_until(&mut s, b'Z').await;
    db.batch_execute(&format!(
        "DROP VIEW {t}_v; DROP FUNCTION {t}_open; DROP TABLE {t}"
    ))
    .await
    .unwrap();
}
