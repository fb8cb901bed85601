//! Issue "wire gateway": the clients agents and CI already use — psql, pgbench, tokio-postgres, sqlx and
//! psycopg — through the real gateway (engine, policy, workflow, store) against the real PostgreSQL, with held
//! statements approved, denied, timed out and cancelled, a blocked statement inside a transaction, and TLS.

use countersign_tests::tokens::*;
use countersign_tests::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use tokio_postgres::{Client, NoTls};

/// Tables matching this prefix are free to write through the `local` connection (a policy rule).
const FREE: &str = "cs_free";

fn config(hold_wait: f64, extra: &str) -> String {
    base_config(&format!(
        "[[policy.rules]]\nname = \"clients-e2e-scratch-tables\"\nconnections = [\"local\"]\ntables = [\"{FREE}_*\"]\naction = \"allow\"\n\n\
         {extra}\n\n[wire]\nlisten = \"127.0.0.1:0\"\nallow_cleartext_without_tls = true\nhold_wait = {hold_wait}\n"
    ))
}

async fn gateway(hold_wait: f64) -> Gateway {
    spawn_gateway(&config(hold_wait, ""), Backend::Sqlite).await
}

fn wire(gw: &Gateway) -> SocketAddr {
    gw.wire.expect("wire listener configured")
}

async fn connect(addr: SocketAddr) -> Client {
    agent_wire_session(addr).await.0
}

async fn table_with_rows(prefix: &str, rows: i32) -> String {
    let t = table_name(prefix);
    direct()
        .await
        .batch_execute(&format!(
            "CREATE TABLE {t} (id int primary key, v text); INSERT INTO {t} SELECT g, 'v' || g FROM generate_series(1, {rows}) g"
        ))
        .await
        .unwrap();
    t
}

/// Drops a table a test made directly.
async fn drop_table(table: &str) {
    direct()
        .await
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

async fn count(table: &str) -> i64 {
    direct()
        .await
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

fn db_error(e: &tokio_postgres::Error) -> (String, String) {
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("expected a database error, got {e:?}"));
    (db.code().code().to_string(), db.message().to_string())
}

async fn vote(base: &str, token: &str, id: &str, decision: &str, reason: Option<&str>) {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/requests/{id}/votes"))
        .bearer_auth(token)
        .json(&json!({ "decision": decision, "reason": reason }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{decision} vote on {id}");
}

/// A separate task that waits for the hold of `needle` and decides it through the HTTP decision API.
fn decide_from_another_task(
    gw: &Gateway,
    needle: String,
    decision: &'static str,
) -> tokio::task::JoinHandle<String> {
    let base = gw.base.clone();
    tokio::spawn(async move {
        let id = pending_request(&base, &needle).await;
        if decision == "approve" {
            vote(&base, BOB, &id, "approve", None).await;
            vote(&base, CAROL, &id, "approve", None).await;
        } else {
            vote(&base, BOB, &id, "deny", Some("not during the freeze")).await;
        }
        id
    })
}

async fn status_of(gw: &Gateway, id: &str) -> String {
    gw.request(BOB, id).await.body["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The request's status once it reaches `want` (the execution report is recorded after the client has its
/// result), or the last status seen after five seconds.
async fn settled_status(gw: &Gateway, id: &str, want: &str) -> String {
    let mut last = String::new();
    for _ in 0..100 {
        last = status_of(gw, id).await;
        if last == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}

#[tokio::test]
async fn tokio_postgres_held_delete_runs_once_after_approval_from_another_task() {
    let gw = gateway(30.0).await;
    let t = table_with_rows("cs_tp_held", 2).await;
    let client = connect(wire(&gw)).await;
    let sql = format!("DELETE FROM {t} WHERE id = 1");
    let approver = decide_from_another_task(&gw, sql.clone(), "approve");
    let deleted = client.execute(sql.as_str(), &[]).await.unwrap();
    assert_eq!(deleted, 1);
    let id = approver.await.unwrap();
    assert_eq!(count(&t).await, 1);
    assert_eq!(settled_status(&gw, &id, "executed").await, "executed");
    // Reads pass straight through on the same connection, simple and extended.
    let rows = client
        .query(&format!("SELECT v FROM {t} WHERE id = $1"), &[&2i32])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "v2");
}

#[tokio::test]
async fn approvers_read_the_parameters_a_held_statement_runs_with() {
    let gw = gateway(30.0).await;
    let t = table_with_rows("cs_tp_params", 3).await;
    let client = connect(wire(&gw)).await;
    let sql = format!("DELETE FROM {t} WHERE id > $1 AND v <> $2");
    let approver = decide_from_another_task(&gw, sql.clone(), "approve");
    let deleted = client
        .execute(sql.as_str(), &[&1i32, &"it's\nfine"])
        .await
        .unwrap();
    assert_eq!(deleted, 2);
    let id = approver.await.unwrap();
    let shown = gw.request(BOB, &id).await.body["statement"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // tokio-postgres declares no types and sends both in binary: the bytes, with their plain readings.
    assert!(shown.starts_with(&sql), "{shown}");
    assert!(
        shown.contains(
            "\n-- $1 = 0x00000001 (binary, 4 bytes, type from the statement; as an integer 1"
        ),
        "{shown}"
    );
    assert!(shown.contains("as text E'it''s\\nfine')"), "{shown}");
    assert_eq!(shown.lines().count(), 4, "one line per value: {shown}");
}

#[tokio::test]
async fn an_approval_is_bound_to_the_search_path_it_was_given_under() {
    let gw = gateway(30.0).await;
    let t = table_with_rows("cs_sp", 3).await;
    let schema = format!("cs_sp_schema_{}", uuid::Uuid::new_v4().simple());
    direct()
        .await
        .batch_execute(&format!(
            "CREATE SCHEMA {schema}; CREATE TABLE {schema}.{t} (id int primary key, v text);
             INSERT INTO {schema}.{t} SELECT g, 'v' || g FROM generate_series(1, 3) g"
        ))
        .await
        .unwrap();
    let sql = format!("DELETE FROM {t} WHERE id < 3");
    // Approved through the HTTP API, which has no session: public's table.
    assert_eq!(gw.query(AGENT, &sql).await.status, 202);
    let api_id = pending_request(&gw.base, &sql).await;
    vote(&gw.base, BOB, &api_id, "approve", None).await;
    vote(&gw.base, CAROL, &api_id, "approve", None).await;

    // A wire session that moved its search_path gets a request of its own, showing why.
    let client = connect(wire(&gw)).await;
    client
        .batch_execute(&format!("SET search_path = {schema}, public"))
        .await
        .unwrap();
    let denier = decide_from_another_task(&gw, format!("SET search_path = {schema}"), "deny");
    let err = client.execute(sql.as_str(), &[]).await.unwrap_err();
    assert_eq!(db_error(&err).0, "42501");
    let wire_id = denier.await.unwrap();
    assert_ne!(wire_id, api_id);
    let shown = gw.request(BOB, &wire_id).await.body["statement"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(shown.starts_with(&sql), "{shown}");
    assert!(
        shown.contains(&format!("\n--   SET search_path = {schema}, public")),
        "{shown}"
    );
    assert_eq!(
        count(&format!("{schema}.{t}")).await,
        3,
        "the other schema's table is untouched"
    );
    assert_eq!(count(&t).await, 3);
    assert_eq!(
        status_of(&gw, &api_id).await,
        "approved",
        "the API approval is still unused"
    );
    direct()
        .await
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}

#[tokio::test]
async fn tokio_postgres_denied_statement_gets_42501_naming_the_denier_and_reason() {
    let gw = gateway(30.0).await;
    let t = table_with_rows("cs_tp_deny", 2).await;
    let client = connect(wire(&gw)).await;
    let sql = format!("DELETE FROM {t} WHERE id = 2");
    let denier = decide_from_another_task(&gw, sql.clone(), "deny");
    let err = client.batch_execute(&sql).await.unwrap_err();
    let id = denier.await.unwrap();
    let (code, message) = db_error(&err);
    assert_eq!(code, "42501");
    assert!(
        message.contains("denied by") && message.contains("not during the freeze"),
        "{message}"
    );
    assert_eq!(count(&t).await, 2);
    assert_eq!(status_of(&gw, &id).await, "denied");
    assert_eq!(client.simple_query("SELECT 1").await.unwrap().len(), 3);
}

#[tokio::test]
async fn held_statement_that_timed_out_runs_exactly_once_when_re_run_after_approval() {
    let gw = gateway(0.5).await;
    let t = table_with_rows("cs_tp_timeout", 0).await;
    let client = connect(wire(&gw)).await;
    let sql = format!("INSERT INTO {t} VALUES (1, 'x')");
    let err = client.batch_execute(&sql).await.unwrap_err();
    let (code, message) = db_error(&err);
    assert_eq!(code, "42501");
    assert!(message.contains("stays pending"), "{message}");
    let id = pending_request(&gw.base, &sql).await;
    vote(&gw.base, BOB, &id, "approve", None).await;
    vote(&gw.base, CAROL, &id, "approve", None).await;
    assert_eq!(count(&t).await, 0, "approval alone runs nothing");

    client.batch_execute(&sql).await.unwrap();
    assert_eq!(count(&t).await, 1);
    assert_eq!(settled_status(&gw, &id, "executed").await, "executed");

    // A third send is a new request: held again, not run.
    let err = client.batch_execute(&sql).await.unwrap_err();
    assert_eq!(db_error(&err).0, "42501");
    assert_eq!(count(&t).await, 1);
}

/// Logs in on `local` as the agent by cleartext token over a raw socket; returns once ReadyForQuery came.
async fn raw_agent_login(addr: SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let (mut stream, tag, body) = raw_startup(addr, "agent").await;
    assert_eq!(
        (tag, &body[..]),
        (b'R', &3i32.to_be_bytes()[..]),
        "cleartext password asked"
    );
    let mut password = AGENT.as_bytes().to_vec();
    password.push(0);
    let mut frame = vec![b'p'];
    frame.extend_from_slice(&((password.len() + 4) as i32).to_be_bytes());
    frame.extend_from_slice(&password);
    stream.write_all(&frame).await.unwrap();
    while raw_message(&mut stream).await.0 != b'Z' {}
    stream
}

/// Parse (with declared parameter types), Bind (one text parameter), Execute, Sync; returns the
/// SQLSTATE of an error, or the command tag.
async fn raw_extended(
    stream: &mut tokio::net::TcpStream,
    sql: &str,
    param_types: &[u32],
    param: &str,
) -> Result<String, String> {
    use tokio::io::AsyncWriteExt;
    fn frame(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
        out.push(tag);
        out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        out.extend_from_slice(body);
    }
    let mut parse = b"\0".to_vec();
    parse.extend_from_slice(sql.as_bytes());
    parse.push(0);
    parse.extend_from_slice(&(param_types.len() as i16).to_be_bytes());
    for t in param_types {
        parse.extend_from_slice(&t.to_be_bytes());
    }
    let mut bind = b"\0\0".to_vec();
    bind.extend_from_slice(&0i16.to_be_bytes());
    bind.extend_from_slice(&1i16.to_be_bytes());
    bind.extend_from_slice(&(param.len() as i32).to_be_bytes());
    bind.extend_from_slice(param.as_bytes());
    bind.extend_from_slice(&0i16.to_be_bytes());
    let mut out = Vec::new();
    frame(&mut out, b'P', &parse);
    frame(&mut out, b'B', &bind);
    frame(&mut out, b'E', b"\0\0\0\0\0");
    frame(&mut out, b'S', b"");
    stream.write_all(&out).await.unwrap();
    let mut outcome = Err("no answer".to_string());
    loop {
        let (tag, body) = raw_message(stream).await;
        match tag {
            b'E' => {
                let code = body
                    .split(|&b| b == 0)
                    .find(|f| f.first() == Some(&b'C'))
                    .map(|f| String::from_utf8_lossy(&f[1..]).into_owned());
                outcome = Err(code.unwrap_or_default());
            }
            b'C' => outcome = Ok(String::from_utf8_lossy(&body[..body.len() - 1]).into_owned()),
            b'Z' => return outcome,
            _ => {}
        }
    }
}

#[tokio::test]
async fn an_approval_binds_the_parameter_types_the_parse_declared() {
    const DATE: u32 = 1082;
    const TIMESTAMPTZ: u32 = 1184;
    let gw = gateway(0.5).await;
    let t = table_name("cs_typed_params");
    direct()
        .await
        .batch_execute(&format!(
            "CREATE TABLE {t} (id int, at timestamptz); INSERT INTO {t} VALUES (1, '2024-01-02 06:00+00'), (2, '2024-01-02 18:00+00')"
        ))
        .await
        .unwrap();
    let mut stream = raw_agent_login(wire(&gw)).await;
    let sql = format!("DELETE FROM {t} WHERE at < $1");
    // Read as a date, '2024-01-02 12:00' is midnight: this deletes nothing, and is approved as such.
    let held = raw_extended(&mut stream, &sql, &[DATE], "2024-01-02 12:00").await;
    assert_eq!(held, Err("42501".to_string()));
    let id = pending_request(&gw.base, &sql).await;
    vote(&gw.base, BOB, &id, "approve", None).await;
    vote(&gw.base, CAROL, &id, "approve", None).await;
    // The same text and parameter bytes read as a timestamptz (noon) would delete row 1: a new request.
    let retyped = raw_extended(&mut stream, &sql, &[TIMESTAMPTZ], "2024-01-02 12:00").await;
    assert_eq!(retyped, Err("42501".to_string()));
    assert_eq!(count(&t).await, 2);
    // What was approved still runs, once.
    let approved = raw_extended(&mut stream, &sql, &[DATE], "2024-01-02 12:00").await;
    assert_eq!(approved, Ok("DELETE 0".to_string()));
    assert_eq!(settled_status(&gw, &id, "executed").await, "executed");
    assert_eq!(count(&t).await, 2);
}

/// With `standard_conforming_strings` off PostgreSQL reads `'a\', '` as one string, and in GBK the last
/// byte of `丁` and the backslash after it are one character: either would let PostgreSQL run a DELETE
/// that the policy, reading UTF-8 with standard strings, sees inside a string literal. Neither setting
/// passes without review, so the texts below stay single SELECTs and delete nothing.
#[tokio::test]
async fn settings_that_change_how_postgres_reads_statement_text_are_held() {
    let gw = gateway(0.5).await;
    let t = table_with_rows("cs_tp_lexing", 2).await;
    let client = connect(wire(&gw)).await;
    for (set, smuggled) in [
        (
            "SET standard_conforming_strings = off",
            format!("SELECT 'a\\', '; DELETE FROM {t}; --'"),
        ),
        (
            "SET client_encoding = 'GBK'",
            format!("SELECT E'丁\\'; DELETE FROM {t}; --'"),
        ),
    ] {
        let err = client.batch_execute(set).await.unwrap_err();
        assert_eq!(db_error(&err).0, "42501", "{set} ran without review");
        client.batch_execute(&smuggled).await.unwrap();
        assert_eq!(count(&t).await, 2, "{smuggled} deleted rows");
    }
    let settings = client
        .query_one(
            "SELECT current_setting('standard_conforming_strings'), current_setting('client_encoding')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (settings.get::<_, String>(0), settings.get::<_, String>(1)),
        ("on".to_string(), "UTF8".to_string())
    );
}

#[tokio::test]
async fn cancel_during_a_hold_cancels_the_request_and_keeps_the_connection() {
    let gw = gateway(30.0).await;
    let t = table_with_rows("cs_tp_cancel", 1).await;
    let client = connect(wire(&gw)).await;
    let cancel = client.cancel_token();
    let sql = format!("DELETE FROM {t}");
    let running = {
        let sql = sql.clone();
        tokio::spawn(async move {
            let r = client.batch_execute(&sql).await;
            (client, r)
        })
    };
    let id = pending_request(&gw.base, &sql).await;
    cancel.cancel_query(NoTls).await.unwrap();
    let (client, result) = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the cancel ends the hold")
        .unwrap();
    assert_eq!(db_error(&result.unwrap_err()).0, "57014");
    assert_eq!(settled_status(&gw, &id, "cancelled").await, "cancelled");
    assert_eq!(count(&t).await, 1);
    assert_eq!(client.simple_query("SELECT 1").await.unwrap().len(), 3);
}

#[tokio::test]
async fn client_disconnect_during_a_hold_cancels_the_request() {
    let gw = gateway(30.0).await;
    let t = table_with_rows("cs_tp_gone", 1).await;
    let (client, conn) = agent_wire_session(wire(&gw)).await;
    let sql = format!("DELETE FROM {t}");
    let running = {
        let sql = sql.clone();
        tokio::spawn(async move { client.batch_execute(&sql).await })
    };
    let id = pending_request(&gw.base, &sql).await;
    conn.abort();
    running.abort();
    assert_eq!(settled_status(&gw, &id, "cancelled").await, "cancelled");
    assert_eq!(count(&t).await, 1);
}

fn script(body: &str) -> (countersign_bot::testing::TempDir, String) {
    let dir = countersign_bot::testing::TempDir::new();
    let path = dir.path().join("script.sql");
    std::fs::write(&path, body).unwrap();
    let path = path.display().to_string();
    (dir, path)
}

#[tokio::test]
async fn psql_script_with_variables_runs_and_its_held_delete_runs_after_approval() {
    let gw = gateway(30.0).await;
    let t = table_with_rows("cs_psql", 3).await;
    let (_dir, path) = script(&format!(
        "\\set id 2\nSELECT 1 AS one;\nSELECT :id + 1 AS three;\nDELETE FROM {t} WHERE id = :id;\nSELECT count(*) FROM {t};\n"
    ));
    let approver =
        decide_from_another_task(&gw, format!("DELETE FROM {t} WHERE id = 2"), "approve");
    let addr = wire(&gw);
    let out = tokio::task::spawn_blocking(move || {
        psql(addr, &["-v", "ON_ERROR_STOP=1", "-At", "-f", &path])
    })
    .await
    .unwrap();
    let id = approver.await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        stdout.lines().filter(|l| !l.is_empty()).collect::<Vec<_>>(),
        ["1", "3", "DELETE 1", "2"],
        "{out:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("held for approval, request {id}")),
        "psql shows the hold notice: {out:?}"
    );
    assert_eq!(count(&t).await, 2);
}

#[tokio::test]
async fn psql_blocked_statement_inside_a_transaction_aborts_it_and_the_session_continues() {
    let gw = gateway(30.0).await;
    let t = table_with_rows(FREE, 0).await;
    let (_dir, path) = script(&format!(
        "\\set VERBOSITY verbose\nBEGIN;\nINSERT INTO {t} VALUES (1, 'in tx');\n\
         COPY (SELECT 1) TO '/tmp/countersign_never_written';\nSELECT 2;\nCOMMIT;\nSELECT 3;\n"
    ));
    let addr = wire(&gw);
    let out = tokio::task::spawn_blocking(move || psql(addr, &["-At", "-f", &path]))
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        stderr.contains("42501") && stderr.contains("blocked"),
        "{stderr}"
    );
    assert!(
        stderr.contains("current transaction is aborted"),
        "{stderr}"
    );
    // COMMIT of an aborted transaction reports ROLLBACK; the session goes on.
    assert_eq!(
        stdout.lines().filter(|l| !l.is_empty()).collect::<Vec<_>>(),
        ["BEGIN", "INSERT 0 1", "ROLLBACK", "3"],
        "{stdout}"
    );
    assert_eq!(count(&t).await, 0, "the transaction was rolled back");
    assert!(!std::path::Path::new("/tmp/countersign_never_written").exists());
}

fn pgbench(addr: SocketAddr, args: &[&str]) -> std::process::Output {
    std::process::Command::new("pgbench")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &addr.port().to_string(),
            "-U",
            "agent",
        ])
        .args(args)
        .env("PGPASSWORD", AGENT)
        .env("PGSSLMODE", "disable")
        .output()
        .expect("pgbench must be installed (postgresql-contrib or postgresql-client)")
}

#[tokio::test]
async fn pgbench_initialises_through_a_rule_then_runs_simple_extended_and_prepared() {
    let db = countersign_bot::testing::fresh_pg_database()
        .await
        .expect("create the pgbench database");
    let cfg = config(
        30.0,
        &format!(
            "[[connections]]\nname = \"bench\"\nupstream_url = \"{db}\"\n\n\
             [[policy.rules]]\nname = \"pgbench-on-bench\"\nconnections = [\"bench\"]\naction = \"allow\"\n"
        ),
    );
    let gw = spawn_gateway(&cfg, Backend::Sqlite).await;
    let addr = wire(&gw);
    // pgbench's default steps: client-side generation sends `copy … from stdin with (freeze on)` and the
    // vacuum step `vacuum analyze …`, both beyond sqlparser and classified by the gateway's own grammar.
    let init = tokio::task::spawn_blocking(move || pgbench(addr, &["-i", "-s", "1", "bench"]))
        .await
        .unwrap();
    assert!(init.status.success(), "pgbench -i: {init:?}");
    for mode in ["simple", "extended", "prepared"] {
        let out = tokio::task::spawn_blocking(move || {
            pgbench(addr, &["-S", "-M", mode, "-c", "2", "-T", "2", "bench"])
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "pgbench -M {mode}: {out:?}");
        let processed: u64 = stdout
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .and_then(|v| v.split('/').next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no transaction count in {stdout}"));
        assert!(processed > 100, "-M {mode} processed only {processed}");
        let failed = stdout
            .lines()
            .find_map(|l| l.strip_prefix("number of failed transactions: "))
            .map(|v| v.split_whitespace().next().unwrap_or_default().to_string());
        assert!(
            matches!(failed.as_deref(), None | Some("0")),
            "-M {mode} had failed transactions: {stdout}"
        );
    }
}

#[tokio::test]
async fn sqlx_pool_through_the_gateway_runs_query_as_and_a_transaction() {
    use sqlx::postgres::PgPoolOptions;
    use sqlx::AssertSqlSafe;
    let gw = gateway(30.0).await;
    let t = table_with_rows(FREE, 3).await;
    let pool = PgPoolOptions::new()
        .max_connections(3)
        .connect(&format!(
            "postgres://agent:{AGENT}@127.0.0.1:{}/local?sslmode=disable",
            wire(&gw).port()
        ))
        .await
        .expect("sqlx connects through the gateway");
    let rows: Vec<(i32, String)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT id, v FROM {t} WHERE id >= $1 ORDER BY id"
    )))
    .bind(2i32)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows, vec![(2, "v2".to_string()), (3, "v3".to_string())]);

    let mut tx = pool.begin().await.unwrap();
    sqlx::query(AssertSqlSafe(format!("INSERT INTO {t} VALUES ($1, $2)")))
        .bind(10i32)
        .bind("ten")
        .execute(&mut *tx)
        .await
        .unwrap();
    let (n,): (i64,) = sqlx::query_as(AssertSqlSafe(format!("SELECT count(*) FROM {t}")))
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(n, 4, "the transaction sees its own insert");
    tx.commit().await.unwrap();
    assert_eq!(count(&t).await, 4);

    let mut tx = pool.begin().await.unwrap();
    sqlx::query(AssertSqlSafe(format!("DELETE FROM {t}")))
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(count(&t).await, 4, "rolled back");

    // A statement outside the rule is held on the pool connection; denied from another task → 42501.
    let other = table_with_rows("cs_sqlx_held", 1).await;
    let held = tokio::time::timeout(
        Duration::from_secs(60),
        sqlx::query(AssertSqlSafe(format!("DELETE FROM {other}"))).execute(&pool),
    );
    let approver = decide_from_another_task(&gw, format!("DELETE FROM {other}"), "deny");
    let err = held.await.unwrap().unwrap_err();
    approver.await.unwrap();
    let db = err.as_database_error().expect("a database error");
    assert_eq!(db.code().as_deref(), Some("42501"));
    assert_eq!(count(&other).await, 1);
    pool.close().await;
}

#[tokio::test]
async fn psycopg_through_the_gateway_reads_with_parameters_and_commits_a_transaction() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import psycopg"])
        .output()
        .expect("python3 must be installed");
    assert!(
        probe.status.success(),
        "psycopg is not installed for python3: run `python3 -m pip install \"psycopg[binary]\"` (.ci/test does); {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let gw = gateway(30.0).await;
    let t = table_with_rows(FREE, 2).await;
    let program = format!(
        r#"
import json, psycopg
with psycopg.connect(host="127.0.0.1", port={port}, dbname="local", user="agent", password="{AGENT}", sslmode="disable") as conn:
    rows = conn.execute("SELECT id, v FROM {t} WHERE id = %s", (2,)).fetchall()
    with conn.transaction():
        conn.execute("INSERT INTO {t} VALUES (%s, %s)", (7, "seven"))
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM {t}", prepare=True)
        n = cur.fetchone()[0]
    print(json.dumps({{"rows": rows, "count": n}}))
"#,
        port = wire(&gw).port()
    );
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(["-c", &program])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let result: Value = serde_json::from_slice(&out.stdout).expect("JSON from the script");
    assert_eq!(result, json!({ "rows": [[2, "v2"]], "count": 3 }));
    assert_eq!(count(&t).await, 3);
}

#[tokio::test]
async fn tls_with_a_generated_certificate_verifies_and_cleartext_is_refused() {
    let dir = countersign_bot::testing::TempDir::new();
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.key_pair.serialize_pem()).unwrap();
    let cfg = base_config(&format!(
        "[wire]\nlisten = \"127.0.0.1:0\"\nallow_cleartext_without_tls = false\n\n[wire.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    ));
    let gw = spawn_gateway(&cfg, Backend::Sqlite).await;
    let addr = wire(&gw);
    let root = cert.display().to_string();
    let run = move |sslmode: &'static str| {
        std::process::Command::new("psql")
            .args(["-h", "localhost", "-p", &addr.port().to_string()])
            .args(["-d", "local", "-U", "agent", "-XAtc", "SELECT 'over tls'"])
            .env("PGPASSWORD", AGENT)
            .env("PGSSLMODE", sslmode)
            .env("PGSSLROOTCERT", &root)
            .env("PGHOSTADDR", "127.0.0.1")
            .output()
            .expect("psql must be installed")
    };
    let run2 = run.clone();
    let out = tokio::task::spawn_blocking(move || run("verify-full"))
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "over tls");
    let out = tokio::task::spawn_blocking(move || run2("disable"))
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only over TLS"),
        "{out:?}"
    );
}

/// A gateway (SQLite store) whose static human `ops-psql` logs in with SCRAM-SHA-256, password `ops pass`.
async fn gateway_with_scram_identity() -> Gateway {
    let verifier = countersign_gateway::identity::scram::ScramVerifier::generate("ops pass");
    spawn_gateway(
        &config(
            5.0,
            &format!(
                "[[identity.static_tokens]]\nname = \"ops-psql\"\nkind = \"human\"\nemail = \"ops@example.com\"\nscram_verifier = \"{verifier}\"\n"
            ),
        ),
        Backend::Sqlite,
    )
    .await
}

#[tokio::test]
async fn scram_identity_logs_in_with_its_password_and_refusals_are_audited() {
    let gw = gateway_with_scram_identity().await;
    let addr = wire(&gw);
    let login = |password: &'static str| {
        let conn = format!(
            "host=127.0.0.1 port={} dbname=local user=ops-psql password='{password}' sslmode=disable",
            addr.port()
        );
        async move { tokio_postgres::connect(&conn, NoTls).await }
    };
    let (client, conn) = login("ops pass").await.expect("SCRAM login");
    tokio::spawn(conn);
    let row = client.query_one("SELECT 'scram ok'", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "scram ok");

    let err = login("wrong pass")
        .await
        .err()
        .expect("wrong password refused");
    let db = err.as_db_error().expect("a FATAL from the gateway");
    assert_eq!(db.code().code(), "28P01", "{}", db.message());
    // The token login of other users is unchanged.
    connect(addr).await.simple_query("SELECT 1").await.unwrap();

    let audit = gw.store.audit_records(0, 1000).await.unwrap();
    let refused: Vec<_> = audit
        .iter()
        .filter(|a| a.entry.action == "auth.refused")
        .collect();
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert_eq!(refused[0].entry.channel, "wire");
    assert_eq!(refused[0].entry.detail["code"], "scram_failed");
    assert_eq!(refused[0].entry.detail["user"], "ops-psql");
}

#[tokio::test]
async fn a_login_to_an_unknown_connection_reveals_no_names_without_a_valid_token_and_is_audited() {
    let gw = gateway(5.0).await;
    let addr = wire(&gw);
    let login = |password: &'static str| {
        let conn = format!(
            "host=127.0.0.1 port={} dbname=no-such-connection user=agent password={password} sslmode=disable",
            addr.port()
        );
        async move { tokio_postgres::connect(&conn, NoTls).await }
    };
    // A bad token is a bad password, whichever connection it names: no configured name is disclosed.
    let err = login("not-the-agent-token").await.err().expect("refused");
    let db = err.as_db_error().expect("a FATAL from the gateway");
    assert_eq!(db.code().code(), "28P01", "{}", db.message());
    assert!(!db.message().contains("local"), "{}", db.message());
    // A valid token on a connection that is not configured: 3D000, naming the ones that are.
    let err = login(AGENT).await.err().expect("refused");
    let db = err.as_db_error().expect("a FATAL from the gateway");
    assert_eq!(db.code().code(), "3D000", "{}", db.message());
    assert!(db.message().contains("local"), "{}", db.message());

    let audit = gw.store.audit_records(0, 1000).await.unwrap();
    let refused: Vec<_> = audit
        .iter()
        .filter(|a| a.entry.action == "auth.refused")
        .collect();
    assert_eq!(refused.len(), 2, "{refused:#?}");
    let unknown = refused
        .iter()
        .find(|a| a.entry.detail["code"] == "unknown_connection")
        .expect("the login to an unknown connection is audited");
    assert_eq!(unknown.entry.channel, "wire");
    assert_eq!(unknown.entry.detail["connection"], "no-such-connection");
    assert!(
        unknown.entry.actor.contains("workload:static|agent"),
        "{unknown:#?}"
    );
}

#[tokio::test]
async fn a_password_offered_without_tls_where_tls_is_required_is_refused_and_audited() {
    let gw = spawn_gateway(
        &base_config("[wire]\nlisten = \"127.0.0.1:0\"\nallow_cleartext_without_tls = false\n"),
        Backend::Sqlite,
    )
    .await;
    let conn = agent_wire_conninfo(wire(&gw));
    let err = tokio_postgres::connect(&conn, NoTls)
        .await
        .err()
        .expect("refused without TLS");
    let (code, message) = db_error(&err);
    assert_eq!(code, "28000", "{message}");
    let audit = gw.store.audit_records(0, 1000).await.unwrap();
    let refused: Vec<_> = audit
        .iter()
        .filter(|a| a.entry.action == "auth.refused")
        .collect();
    assert_eq!(refused.len(), 1, "{audit:#?}");
    assert_eq!(refused[0].entry.channel, "wire");
    assert_eq!(refused[0].entry.detail["code"], "tls_required");
    assert_eq!(refused[0].entry.detail["user"], "agent");
}

/// Sends a startup packet for `user` on `local` and returns the first message's tag and body.
async fn raw_startup(addr: SocketAddr, user: &str) -> (tokio::net::TcpStream, u8, Vec<u8>) {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut body = 196_608i32.to_be_bytes().to_vec();
    for (k, v) in [("user", user), ("database", "local")] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    stream.write_all(&packet).await.unwrap();
    let (tag, body) = raw_message(&mut stream).await;
    (stream, tag, body)
}

async fn raw_message(stream: &mut tokio::net::TcpStream) -> (u8, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let tag = stream.read_u8().await.unwrap();
    let len = stream.read_i32().await.unwrap();
    let mut body = vec![0; (len - 4) as usize];
    stream.read_exact(&mut body).await.unwrap();
    (tag, body)
}

#[tokio::test]
async fn a_sasl_mechanism_the_gateway_did_not_offer_is_refused_and_audited() {
    use tokio::io::AsyncWriteExt;
    let gw = gateway_with_scram_identity().await;
    let (mut stream, tag, body) = raw_startup(wire(&gw), "ops-psql").await;
    assert_eq!(tag, b'R');
    assert_eq!(&body[..4], &10i32.to_be_bytes(), "AuthenticationSASL");
    // Over plaintext only SCRAM-SHA-256 is offered; the client insists on channel binding anyway.
    let first = b"p=tls-server-end-point,,n=,r=abcdefghijkl";
    let mut payload = b"SCRAM-SHA-256-PLUS\0".to_vec();
    payload.extend_from_slice(&(first.len() as i32).to_be_bytes());
    payload.extend_from_slice(first);
    let mut frame = vec![b'p'];
    frame.extend_from_slice(&((payload.len() + 4) as i32).to_be_bytes());
    frame.extend_from_slice(&payload);
    stream.write_all(&frame).await.unwrap();
    let (tag, body) = raw_message(&mut stream).await;
    assert_eq!(tag, b'E');
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("C08P01"), "{text}");
    let audit = gw.store.audit_records(0, 1000).await.unwrap();
    let refused: Vec<_> = audit
        .iter()
        .filter(|a| a.entry.action == "auth.refused")
        .collect();
    assert_eq!(refused.len(), 1, "{audit:#?}");
    assert_eq!(refused[0].entry.detail["code"], "sasl_mechanism");
    assert_eq!(refused[0].entry.detail["user"], "ops-psql");
}

#[tokio::test]
async fn tokio_postgres_transaction_builder_with_deferrable_passes_without_review() {
    // `START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE` is beyond sqlparser; it used
    // to be held as unparsed (and time out here after 2 s).
    let gw = gateway(2.0).await;
    let t = table_with_rows("cs_tp_deferrable", 3).await;
    let mut client = connect(wire(&gw)).await;
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::Serializable)
        .read_only(true)
        .deferrable(true)
        .start()
        .await
        .expect("a deferrable read-only transaction starts without review");
    let n: i64 = tx
        .query_one(&format!("SELECT count(*) FROM {t}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
    tx.commit().await.unwrap();
}

/// A fresh database (its URL) and a direct client of it; `what` says what it is for.
async fn fresh_database(what: &str) -> (String, Client) {
    let db = countersign_bot::testing::fresh_pg_database()
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let (client, conn) = tokio_postgres::connect(&db, NoTls).await.unwrap();
    tokio::spawn(conn);
    (db, client)
}

/// A plain pg_dump of the database `conninfo` names (a URL or keyword/value string).
fn pg_dump(conninfo: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("pg_dump")
        .args(["-d", conninfo])
        .args(args)
        .env("PGSSLMODE", "disable")
        .output()
        .expect("pg_dump must be installed (postgresql-client)");
    dump_sql(out, &format!("pg_dump {args:?} of {conninfo}"))
}

/// The SQL a successful pg_dump or pg_restore printed, without what differs run to run.
fn dump_sql(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Newer pg_dump fences a plain dump with `\restrict <random key>` / `\unrestrict <key>`, new each run.
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("\\restrict ") && !l.starts_with("\\unrestrict "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn pg_dump_data_only_reads_through_the_builtin_policy_and_matches_a_direct_dump() {
    let (db, direct) = fresh_database("create the database to dump").await;
    direct
        .batch_execute(
            "CREATE SCHEMA app;
             CREATE TABLE app.people (id int PRIMARY KEY, name text NOT NULL);
             CREATE TABLE app.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                                      person int REFERENCES app.people, amount numeric(10,2));
             INSERT INTO app.people VALUES (1, 'ann'), (2, 'bob');
             INSERT INTO app.orders (person, amount) VALUES (1, 9.5), (2, 3);
             CREATE VIEW app.rich AS SELECT name FROM app.people;",
        )
        .await
        .unwrap();
    // No allow rule for this connection: pg_dump passes on the built-in policy alone (its ACCESS SHARE
    // locks, acldefault, synchronize_seqscans, row_security, restrict_nonsystem_relation_kind), and a
    // statement that were held would fail it after the short hold_wait.
    let (_gw, gateway) = dump_gateway(&db).await;
    let (through, straight) = tokio::task::spawn_blocking(move || {
        (
            pg_dump(&gateway, &["--data-only"]),
            pg_dump(&db, &["--data-only"]),
        )
    })
    .await
    .unwrap();
    assert!(through.contains("COPY app.people"), "{through}");
    assert_eq!(through, straight);
}

#[tokio::test]
async fn unknown_connection_name_is_3d000_after_the_login_as_postgres_reports_a_missing_database() {
    // pg8000's own suite connects to databases that don't exist and expects 3D000; the engine used to
    // refuse the name with 28000 before it even checked the token.
    let gw = gateway_with_scram_identity().await;
    let port = wire(&gw).port();
    let refusal = |user: &str, password: &str| {
        let conn = format!(
            "host=127.0.0.1 port={port} dbname=no_such_db user={user} password='{password}' sslmode=disable"
        );
        async move {
            let err = tokio_postgres::connect(&conn, NoTls)
                .await
                .err()
                .expect("an unknown connection name is refused");
            db_error(&err)
        }
    };
    let (code, message) = refusal("agent", AGENT).await;
    assert_eq!(code, "3D000", "{message}");
    assert!(
        message.contains("\"no_such_db\"") && message.contains("local"),
        "{message}"
    );
    let (code, message) = refusal("ops-psql", "ops pass").await;
    assert_eq!(code, "3D000", "{message}");
    // Without valid credentials the client learns nothing about the connections.
    for (user, password) in [("agent", "not-a-token"), ("ops-psql", "wrong pass")] {
        let (code, message) = refusal(user, password).await;
        assert_eq!(code, "28P01", "{user}: {message}");
        assert!(!message.contains("local"), "{message}");
    }
}

/// pg_dump's custom format (-Fc) of `conninfo`, as the SQL pg_restore makes of it (the archive itself
/// holds the time of the dump).
fn pg_dump_custom(conninfo: &str) -> String {
    let file = std::env::temp_dir().join(format!("cs_dump_{}.dump", uuid::Uuid::new_v4().simple()));
    let file = file.to_str().unwrap().to_string();
    pg_dump(conninfo, &["-Fc", "-f", &file]);
    let out = std::process::Command::new("pg_restore")
        .args(["-f", "-", &file])
        .output()
        .expect("pg_restore must be installed (postgresql-client)");
    let _ = std::fs::remove_file(&file);
    dump_sql(out, &format!("pg_restore of {file}"))
}

#[tokio::test]
async fn pg_dump_plain_custom_and_schema_only_read_through_the_builtin_policy() {
    let (db, direct) = fresh_database("create the database to dump").await;
    // A domain, an enum, a function, a column ACL and a partitioned table: pg_dump 15 PREPAREs its
    // catalog queries for these (getDomainConstraints, dumpEnumType, dumpDomain, dumpFunc,
    // getColumnACLs, dumpTableAttach) and EXECUTEs them.
    direct
        .batch_execute(
            "CREATE SCHEMA app;
             CREATE DOMAIN app.positive AS int CHECK (VALUE > 0);
             CREATE TYPE app.mood AS ENUM ('sad', 'ok', 'happy');
             CREATE FUNCTION app.twice(x int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT x * 2';
             CREATE TABLE app.people (id app.positive PRIMARY KEY, name text NOT NULL, mood app.mood);
             GRANT SELECT (name) ON app.people TO PUBLIC;
             CREATE TABLE app.events (at date NOT NULL, what text) PARTITION BY RANGE (at);
             CREATE TABLE app.events_2026 PARTITION OF app.events
                 FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
             INSERT INTO app.people VALUES (1, 'ann', 'happy'), (2, 'bob', 'ok');
             INSERT INTO app.events VALUES ('2026-03-01', 'launch');",
        )
        .await
        .unwrap();
    // No allow rule for this connection, and a statement that were held would fail pg_dump after the
    // short hold_wait.
    let (gw, gateway) = dump_gateway(&db).await;
    let target = db.clone();
    let dumps = tokio::task::spawn_blocking(move || {
        [
            (pg_dump(&gateway, &[]), pg_dump(&target, &[])),
            (pg_dump_custom(&gateway), pg_dump_custom(&target)),
            (
                pg_dump(&gateway, &["--schema-only"]),
                pg_dump(&target, &["--schema-only"]),
            ),
        ]
    })
    .await
    .unwrap();
    for (through, straight) in &dumps {
        assert!(through.contains("CREATE DOMAIN app.positive"), "{through}");
        assert!(through.contains("'sad'"), "{through}");
        assert!(
            through.contains("ATTACH PARTITION app.events_2026"),
            "{through}"
        );
        assert_eq!(through, straight);
    }
    assert!(dumps[0].0.contains("COPY app.people"));
    assert!(!dumps[2].0.contains("COPY app.people"));
    drop(gw);
    let name = db.rsplit('/').next().unwrap().to_string();
    let (admin, conn) = tokio_postgres::connect(&countersign_bot::testing::pg_admin_url(), NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    admin
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_plain_dump_restores_through_an_allow_all_rule_and_dumps_back_the_same() {
    let (source, direct) = fresh_database("create the database to dump").await;
    let target = countersign_bot::testing::fresh_pg_database()
        .await
        .expect("create the database to restore into");
    // What pg_dump writes for these needs the statements sqlparser does not read: ALTER SEQUENCE …
    // OWNED BY, ALTER … OWNER TO, identity columns, SET STATISTICS / STORAGE, CREATE STATISTICS,
    // procedures, COST / ROWS, domains with NOT NULL, CREATE INDEX … ON ONLY, ALTER INDEX … ATTACH
    // PARTITION and materialized views WITH NO DATA.
    direct
        .batch_execute(
            "CREATE SCHEMA app;
             CREATE TYPE app.mood AS ENUM ('sad', 'ok', 'happy');
             CREATE DOMAIN app.pos AS integer NOT NULL CHECK (VALUE > 0);
             CREATE TABLE app.people (id serial PRIMARY KEY, name text NOT NULL, mood app.mood,
                                      score app.pos, tags text[]);
             CREATE TABLE app.events (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                                      person int REFERENCES app.people (id), note text);
             ALTER TABLE app.events ALTER COLUMN note SET STATISTICS 500;
             ALTER TABLE app.events ALTER COLUMN note SET STORAGE EXTERNAL;
             CREATE TABLE app.measure (city text, day date) PARTITION BY RANGE (day);
             CREATE TABLE app.measure_2026 PARTITION OF app.measure
                 FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
             CREATE INDEX measure_city ON app.measure (city);
             CREATE FUNCTION app.add(a int, b int) RETURNS int LANGUAGE sql IMMUTABLE COST 5
                 AS $$ SELECT a + b $$;
             CREATE FUNCTION app.many() RETURNS SETOF int LANGUAGE sql ROWS 50 AS $$ SELECT 1 $$;
             CREATE PROCEDURE app.trim_events(n int) LANGUAGE plpgsql
                 AS $$ BEGIN DELETE FROM app.events WHERE id < n; END $$;
             CREATE MATERIALIZED VIEW app.moods AS SELECT mood, count(*) FROM app.people GROUP BY mood;
             CREATE STATISTICS app.people_stats ON name, mood FROM app.people;
             INSERT INTO app.people (name, mood, score, tags) VALUES ('ann', 'happy', 5, '{a,b}');
             INSERT INTO app.events (person, note) VALUES (1, 'joined');
             INSERT INTO app.measure VALUES ('oslo', '2026-03-01');",
        )
        .await
        .unwrap();
    let cfg = config(
        2.0,
        &format!(
            "[[connections]]\nname = \"restore\"\nupstream_url = \"{target}\"\n\n\
             [[policy.rules]]\nname = \"restore-everything\"\nconnections = [\"restore\"]\naction = \"allow\"\n"
        ),
    );
    let gw = spawn_gateway(&cfg, Backend::Sqlite).await;
    let through = format!(
        "host=127.0.0.1 port={} dbname=restore user=agent password={AGENT} sslmode=disable",
        wire(&gw).port()
    );
    let (from, to) = (source.clone(), target.clone());
    let (restore, before, after) = tokio::task::spawn_blocking(move || {
        let dump = pg_dump(&from, &[]);
        let file =
            std::env::temp_dir().join(format!("cs_restore_{}.sql", uuid::Uuid::new_v4().simple()));
        std::fs::write(&file, &dump).unwrap();
        // A held statement would fail the restore after the 2 s hold_wait (ON_ERROR_STOP).
        let restore = std::process::Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &through, "-f"])
            .arg(&file)
            .output()
            .expect("psql must be installed (postgresql-client)");
        let _ = std::fs::remove_file(&file);
        (restore, pg_dump(&from, &[]), pg_dump(&to, &[]))
    })
    .await
    .unwrap();
    assert!(
        restore.status.success(),
        "the restore through the gateway failed: {}",
        String::from_utf8_lossy(&restore.stderr)
    );
    for needle in [
        "ALTER SEQUENCE app.people_id_seq OWNED BY app.people.id",
        "ADD GENERATED ALWAYS AS IDENTITY",
        "SET STATISTICS 500",
        "CREATE PROCEDURE app.trim_events",
        "CREATE STATISTICS app.people_stats",
        "ATTACH PARTITION app.measure_2026",
        "WITH NO DATA",
    ] {
        assert!(
            before.contains(needle),
            "the dump lacks {needle:?}: {before}"
        );
    }
    assert_eq!(after, before);
}

/// The error of `sql` sent as a simple query, which must be a hold that timed out (nothing ran).
async fn held(client: &Client, sql: &str) {
    let err = client.simple_query(sql).await.unwrap_err();
    let (code, message) = db_error(&err);
    assert_eq!(code, "42501", "{sql}: {message}");
    assert!(message.contains("stays pending"), "{sql}: {message}");
}

#[tokio::test]
async fn sql_execute_is_judged_by_the_prepare_that_created_its_name() {
    let gw = gateway(0.5).await;
    let t = table_with_rows("cs_prep", 3).await;
    let seq = table_name("cs_prep_seq");
    direct()
        .await
        .batch_execute(&format!("CREATE SEQUENCE {seq}"))
        .await
        .unwrap();
    let client = connect(wire(&gw)).await;
    let rows = |messages: Vec<tokio_postgres::SimpleQueryMessage>| -> Vec<String> {
        messages
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_string()),
                _ => None,
            })
            .collect()
    };
    // An allowed read, prepared and then executed by name.
    client
        .simple_query(&format!(
            "PREPARE get(int) AS SELECT v FROM {t} WHERE id = $1"
        ))
        .await
        .unwrap();
    let got = rows(client.simple_query("EXECUTE get(2)").await.unwrap());
    assert_eq!(got, ["v2"]);
    // Its arguments are evaluated: a side-effecting one is held, and nothing ran.
    held(&client, &format!("EXECUTE get(nextval('{seq}')::int)")).await;
    let called: bool = direct_scalar(&format!("SELECT is_called FROM {seq}")).await;
    assert!(!called, "the held EXECUTE's argument ran");
    // Names never prepared, or whose PREPARE failed, are unknown: held (not run, not "does not exist").
    held(&client, "EXECUTE never_prepared(1)").await;
    let err = client
        .simple_query("PREPARE broken AS SELECT * FROM cs_prep_no_such_table")
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).0, "42P01");
    held(&client, "EXECUTE broken").await;
    // A prepared statement survives the rollback of the transaction that prepared it (as upstream).
    client
        .batch_execute(&format!(
            "BEGIN; PREPARE inside AS SELECT v FROM {t} WHERE id = 3; ROLLBACK"
        ))
        .await
        .unwrap();
    assert_eq!(
        rows(client.simple_query("EXECUTE inside").await.unwrap()),
        ["v3"]
    );
    // A protocol-level named statement shares the names EXECUTE runs: after one, no name is trusted.
    // (Kept: dropping it sends a Close, which forgets names too.)
    let kept = client.prepare("SELECT 1").await.unwrap();
    held(&client, "EXECUTE inside").await;
    drop(kept);
    // DEALLOCATE forgets the name.
    client.simple_query("DEALLOCATE get").await.unwrap();
    held(&client, "EXECUTE get(1)").await;
    // A PREPARE of a write is held like the write itself, and so is running it by name.
    held(
        &client,
        &format!("PREPARE del(int) AS DELETE FROM {t} WHERE id = $1"),
    )
    .await;
    held(&client, "EXECUTE del(1)").await;
    assert_eq!(count(&t).await, 3);
}

#[tokio::test]
async fn after_an_approved_statement_no_sql_prepared_name_is_trusted() {
    let gw = gateway(30.0).await;
    let t = table_with_rows("cs_prep_approved", 2).await;
    let client = connect(wire(&gw)).await;
    client
        .simple_query(&format!("PREPARE one AS SELECT v FROM {t} WHERE id = 1"))
        .await
        .unwrap();
    client.simple_query("EXECUTE one").await.unwrap();
    // An approved statement may have replaced `one` upstream (a function can DEALLOCATE and PREPARE).
    let sql = format!("DELETE FROM {t} WHERE id = 2");
    let approver = decide_from_another_task(&gw, sql.clone(), "approve");
    client.simple_query(&sql).await.unwrap();
    approver.await.unwrap();
    let denier = decide_from_another_task(&gw, "EXECUTE one".into(), "deny");
    let err = client.simple_query("EXECUTE one").await.unwrap_err();
    denier.await.unwrap();
    assert!(db_error(&err).1.contains("denied by"), "{err:?}");
}

#[tokio::test]
async fn an_approved_execute_of_a_name_holds_only_in_the_session_that_asked() {
    let gw = gateway(30.0).await;
    let t = table_with_rows("cs_prep_bound", 3).await;
    let a = connect(wire(&gw)).await;
    let b = connect(wire(&gw)).await;
    let prepare = format!("PREPARE pw(int) AS UPDATE {t} SET v = 'approved' WHERE id = $1");
    for client in [&a, &b] {
        let approver = decide_from_another_task(&gw, prepare.clone(), "approve");
        client.simple_query(&prepare).await.unwrap();
        approver.await.unwrap();
    }
    // After the approved PREPARE, `pw` is a name the gateway can't read: EXECUTE is held blind, and
    // approvers are told it runs what session A holds under it.
    let approver = decide_from_another_task(&gw, "EXECUTE pw(1)".into(), "approve");
    a.simple_query("EXECUTE pw(1)").await.unwrap();
    let id = approver.await.unwrap();
    let shown = gw.request(BOB, &id).await.body.to_string();
    assert!(
        shown.contains("EXECUTE runs the statement prepared under its name in session"),
        "{shown}"
    );
    // Session B's identical text is another request, not that approval.
    let denier = decide_from_another_task(&gw, "EXECUTE pw(1)".into(), "deny");
    let err = b.simple_query("EXECUTE pw(1)").await.unwrap_err();
    let other = denier.await.unwrap();
    assert_ne!(other, id);
    assert!(db_error(&err).1.contains("denied by"), "{err:?}");
}

/// A gateway with connection `dump` to `db` and no allow rule (pg_dump must pass on the built-in policy,
/// and anything held fails it after the short hold_wait), and libpq connection options for it.
async fn dump_gateway(db: &str) -> (Gateway, String) {
    let cfg = config(
        2.0,
        &format!("[[connections]]\nname = \"dump\"\nupstream_url = \"{db}\"\n"),
    );
    let gw = spawn_gateway(&cfg, Backend::Sqlite).await;
    let gateway = format!(
        "host=127.0.0.1 port={} dbname=dump user=agent password={AGENT}",
        wire(&gw).port()
    );
    (gw, gateway)
}

/// Code the statement text does not show (the trigger of an allowed INSERT) can DEALLOCATE a
/// protocol-level name and PREPARE it as another statement: the next Bind of the name runs the text
/// the gateway judged, never the other. A Parse of a name such code created first (refused 42P05
/// upstream) is not taken for the text PostgreSQL holds: a Bind of it is refused.
#[tokio::test]
async fn names_that_code_prepares_again_never_run_another_text() {
    use countersign_tests::transcript::Action;
    let db = direct().await;
    let s = table_name("reprep");
    db.batch_execute(&format!(
        "CREATE SCHEMA {s};
         CREATE TABLE {s}.t (id int); INSERT INTO {s}.t VALUES (1);
         CREATE TABLE {s}.victim (id int); INSERT INTO {s}.victim SELECT generate_series(1, 10);
         CREATE TABLE {s}.log (msg text);
         CREATE FUNCTION {s}.reprep(n text, q text) RETURNS int LANGUAGE plpgsql AS $f$
           BEGIN
             BEGIN EXECUTE format('DEALLOCATE %I', n); EXCEPTION WHEN others THEN NULL; END;
             EXECUTE format('PREPARE %I AS %s', n, q);
             RETURN 1;
           END $f$;
         CREATE FUNCTION {s}.trg() RETURNS trigger LANGUAGE plpgsql AS $f$
           BEGIN PERFORM {s}.reprep(split_part(NEW.msg, '#', 1), split_part(NEW.msg, '#', 2)); RETURN NEW; END $f$;
         CREATE TRIGGER log_reprep BEFORE INSERT ON {s}.log FOR EACH ROW EXECUTE FUNCTION {s}.trg();"
    ))
    .await
    .unwrap();
    let cfg = base_config(&format!(
        "[wire]\nlisten = \"127.0.0.1:0\"\nallow_cleartext_without_tls = true\nhold_wait = 1\n\n[[policy.rules]]\nname = \"log-inserts\"\nkinds = [\"INSERT\"]\ntables = [\"{s}.log\"]\naction = \"allow\"\n"
    ));
    let gw = spawn_gateway(&cfg, Backend::Sqlite).await;
    let mut c = agent_raw_conn(&gw).await;
    let query = |sql: String| Action::Query {
        sql,
        copy_in: vec![],
    };
    let bind = |name: &str| Action::Extended {
        name: name.into(),
        sql: None,
        params: vec![],
        binary: false,
        max_rows: 0,
    };
    let victims =
        || async { direct_scalar::<i64>(&format!("SELECT count(*) FROM {s}.victim")).await };
    let judged = format!("SELECT id FROM {s}.t WHERE id = 1");
    c.run(&Action::Prepare {
        name: "p1".into(),
        sql: judged.clone(),
    })
    .await
    .unwrap();
    let out = c
        .run(&query(format!(
            "INSERT INTO {s}.log VALUES ('p1#DELETE FROM {s}.victim RETURNING id')"
        )))
        .await
        .unwrap();
    assert!(out.iter().any(|l| l.contains("INSERT 0 1")), "{out:?}");
    let out = c.run(&bind("p1")).await.unwrap();
    assert!(
        out.iter().any(|l| l == "CommandComplete SELECT 1"),
        "the judged SELECT ran: {out:?}"
    );
    assert_eq!(victims().await, 10, "the DELETE did not run");
    // A name the trigger made before the client parsed it.
    c.run(&query(format!(
        "INSERT INTO {s}.log VALUES ('zz#DELETE FROM {s}.victim RETURNING id')"
    )))
    .await
    .unwrap();
    let out = c
        .run(&Action::Prepare {
            name: "zz".into(),
            sql: judged.clone(),
        })
        .await
        .unwrap();
    assert!(out.iter().any(|l| l.contains("42P05")), "{out:?}");
    for _ in 0..2 {
        let out = c.run(&bind("zz")).await.unwrap();
        assert!(
            !out.iter().any(|l| l.contains("DELETE")),
            "a Bind of zz ran the trigger's DELETE: {out:?}"
        );
    }
    assert_eq!(victims().await, 10, "the DELETE did not run");
    // The trigger's INSERT and the Bind of the name it prepares again in one batch: the name is
    // parsed again after the INSERT ran, not ahead of the batch (where the trigger would replace it
    // before the Bind, for this batch and every later one).
    c.run(&Action::Prepare {
        name: "p2".into(),
        sql: judged.clone(),
    })
    .await
    .unwrap();
    for _ in 0..2 {
        c.run_then_bind(
            &format!("INSERT INTO {s}.log VALUES ('p2#DELETE FROM {s}.victim RETURNING id')"),
            "p2",
        )
        .await
        .unwrap();
        let out = c.read_until(b"Z").await.unwrap();
        assert!(out.iter().any(|l| l.contains("INSERT 0 1")), "{out:?}");
        assert!(
            out.iter().any(|l| l == "CommandComplete SELECT 1"),
            "the judged SELECT ran: {out:?}"
        );
        // The gateway's own Close and Parse inside the batch are answered to it alone.
        assert_eq!(
            out.iter()
                .filter(|l| l.starts_with("ParseComplete"))
                .count(),
            1,
            "only the client's own Parse is answered: {out:?}"
        );
        assert!(
            !out.iter().any(|l| l.starts_with("CloseComplete")),
            "{out:?}"
        );
        assert_eq!(
            out.iter()
                .filter(|l| l.starts_with("ReadyForQuery"))
                .count(),
            1,
            "one ReadyForQuery for the client's one Sync: {out:?}"
        );
        let out = c.run(&bind("p2")).await.unwrap();
        assert!(
            out.iter().any(|l| l == "CommandComplete SELECT 1"),
            "a later batch runs the judged SELECT too: {out:?}"
        );
    }
    assert_eq!(victims().await, 10, "the DELETE did not run");
    // A SQL-level name the trigger prepares again: its EXECUTE is no longer judged as the PREPARE
    // that made it (it is held).
    let out = c
        .run(&query(format!("PREPARE s AS SELECT id FROM {s}.t")))
        .await
        .unwrap();
    assert!(out.iter().any(|l| l.contains("PREPARE")), "{out:?}");
    c.run(&query(format!(
        "INSERT INTO {s}.log VALUES ('s#DELETE FROM {s}.victim RETURNING id')"
    )))
    .await
    .unwrap();
    let out = c.run(&query("EXECUTE s".into())).await.unwrap();
    assert!(
        !out.iter().any(|l| l.contains("DELETE")),
        "EXECUTE ran the trigger's DELETE: {out:?}"
    );
    assert!(out.iter().any(|l| l.contains("42501")), "held: {out:?}");
    assert_eq!(victims().await, 10, "the DELETE did not run");
    c.close().await;
    db.batch_execute(&format!("DROP SCHEMA {s} CASCADE"))
        .await
        .unwrap();
}

/// A statement parsed before a view of its table's name was made (approved) is judged again at its
/// next Bind, on what its text means now: the view calls a writing function, so the Bind is held,
/// not run on the verdict its Parse got.
#[tokio::test]
async fn a_prepared_statement_is_judged_again_after_the_catalog_changes() {
    use countersign_tests::transcript::Action;
    let db = direct().await;
    let s = table_name("rejudge");
    // Views are listed by name in any schema: a name of this run's own, so no other run's leftovers
    // (or this one's) change what it judges.
    let v = format!("v_{s}");
    db.batch_execute(&format!(
        "CREATE SCHEMA {s};
         CREATE TABLE {s}.{v} (id int); INSERT INTO {s}.{v} VALUES (9);
         CREATE TABLE {s}.victim (id int); INSERT INTO {s}.victim SELECT generate_series(1, 10);
         CREATE FUNCTION {s}.boom() RETURNS int LANGUAGE plpgsql AS $f$
           BEGIN DELETE FROM {s}.victim WHERE id = 1; RETURN 1; END $f$;"
    ))
    .await
    .unwrap();
    let cfg = base_config(
        "[wire]\nlisten = \"127.0.0.1:0\"\nallow_cleartext_without_tls = true\nhold_wait = 1\n",
    );
    let gw = spawn_gateway(&cfg, Backend::Sqlite).await;
    let mut c = agent_raw_conn(&gw).await;
    let bind = Action::Extended {
        name: "n0".into(),
        sql: None,
        params: vec![],
        binary: false,
        max_rows: 0,
    };
    c.run(&Action::Prepare {
        name: "n0".into(),
        sql: format!("SELECT id FROM {s}.{v}"),
    })
    .await
    .unwrap();
    let out = c.run(&bind).await.unwrap();
    assert!(out.iter().any(|l| l.contains("DataRow")), "{out:?}");
    // The table becomes a view calling boom(), with approval.
    let ddl = format!(
        "ALTER TABLE {s}.{v} RENAME TO {v}_old; CREATE VIEW {s}.{v} AS SELECT {s}.boom() AS id"
    );
    let ddl_query = Action::Query {
        sql: ddl.clone(),
        copy_in: vec![],
    };
    let out = c.run(&ddl_query).await.unwrap();
    assert!(out.iter().any(|l| l.contains("42501")), "held: {out:?}");
    let id = pending_request(&gw.base, &format!("{v}_old")).await;
    gw.vote(BOB, &id, "approve").await;
    gw.vote(CAROL, &id, "approve").await;
    let out = c.run(&ddl_query).await.unwrap();
    assert!(out.iter().any(|l| l.contains("CREATE VIEW")), "{out:?}");
    // The Bind of the statement parsed on the table is held now, and boom() does not run.
    let out = c.run(&bind).await.unwrap();
    assert!(
        !out.iter().any(|l| l.contains("DataRow")),
        "the view's function ran on the Parse-time verdict: {out:?}"
    );
    assert!(out.iter().any(|l| l.contains("42501")), "{out:?}");
    assert_eq!(
        direct_scalar::<i64>(&format!("SELECT count(*) FROM {s}.victim")).await,
        10
    );
    c.close().await;
    db.batch_execute(&format!("DROP SCHEMA {s} CASCADE"))
        .await
        .unwrap();
}

/// A cached prepared statement whose result type a column's ALTER changed meets PostgreSQL's own
/// `0A000` at its next execution, as it does directly (the gateway parses stale names again, which
/// alone would hand the client rows of another shape to decode with its cached description: an
/// `int` read as the bits of a `real`); the driver prepares it again and reads the new type.
#[tokio::test]
async fn a_cached_statement_whose_result_type_changed_gets_0a000_not_rows_of_another_shape() {
    let t = table_name(&format!("{FREE}_rtype"));
    direct()
        .await
        .batch_execute(&format!(
            "CREATE TABLE {t} (a int, b int); INSERT INTO {t} VALUES (1, 2)"
        ))
        .await
        .unwrap();
    let gw = gateway(1.0).await;
    let client = connect(wire(&gw)).await;
    let stmt = client
        .prepare(&format!("SELECT a, b FROM {t}"))
        .await
        .unwrap();
    let row = client.query_one(&stmt, &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    client
        .batch_execute(&format!("ALTER TABLE {t} ALTER COLUMN a TYPE real"))
        .await
        .unwrap();
    let err = client
        .query_one(&stmt, &[])
        .await
        .expect_err("rows of the old shape were decoded with the new type");
    assert_eq!(db_error(&err).0, "0A000", "{err:?}");
    // Prepared again, it reads the new type; the session is fine.
    let stmt = client
        .prepare(&format!("SELECT a, b FROM {t}"))
        .await
        .unwrap();
    let row = client.query_one(&stmt, &[]).await.unwrap();
    assert_eq!(row.get::<_, f32>(0), 1.0);
    drop_table(&t).await;
}

/// asyncpg sends a new statement's Parse with its first Bind and Execute in one batch and never parses
/// it again: when that first execution fails (a duplicate key, a cancel) after PostgreSQL confirmed the
/// Parse, the name holds that text and later executions run (they were refused for the rest of the
/// connection as possibly holding an older text).
#[tokio::test]
async fn a_statement_whose_first_execution_failed_after_its_parse_completed_runs_later() {
    use countersign_tests::transcript::Action;
    let t = table_with_rows(&format!("{FREE}_firstfail"), 3).await;
    let gw = gateway(1.0).await;
    let mut c = agent_raw_conn(&gw).await;
    // A write first: code may have prepared names since, so a new named Parse counts as replacing
    // an unknown text until PostgreSQL confirms it.
    let out = c
        .run(&Action::Query {
            sql: format!("INSERT INTO {t} VALUES (10, 'w')"),
            copy_in: vec![],
        })
        .await
        .unwrap();
    assert!(out.iter().any(|l| l.contains("INSERT 0 1")), "{out:?}");
    let insert = |sql: Option<String>, id: &str| Action::Extended {
        name: "ins".into(),
        sql,
        params: vec![Some(id.into())],
        binary: false,
        max_rows: 0,
    };
    let out = c
        .run(&insert(
            Some(format!("INSERT INTO {t} (id, v) VALUES ($1, 'x')")),
            "1",
        ))
        .await
        .unwrap();
    assert!(out.iter().any(|l| l.contains("23505")), "{out:?}");
    for id in ["20", "21"] {
        let out = c.run(&insert(None, id)).await.unwrap();
        assert!(
            out.iter().any(|l| l == "CommandComplete INSERT 0 1"),
            "{out:?}"
        );
    }
    assert_eq!(count(&t).await, 6);
    c.close().await;
    drop_table(&t).await;
}

/// asyncpg prepares its next statement (Parse, Describe, Flush), waits for the answer, then binds a
/// cached statement in the same batch: a stale cached name is parsed again then too, after the part
/// that went ahead was answered (it was refused as unknown, 26000, on every try).
#[tokio::test]
async fn a_stale_name_bound_after_a_prepare_sent_ahead_on_flush_is_parsed_again_and_runs() {
    use countersign_tests::transcript::Action;
    let t = table_with_rows(&format!("{FREE}_ahead"), 1).await;
    let gw = gateway(1.0).await;
    let mut c = agent_raw_conn(&gw).await;
    c.run(&Action::Prepare {
        name: "cached".into(),
        sql: format!("SELECT count(*) FROM {t}"),
    })
    .await
    .unwrap();
    // A write: its triggers could have prepared names again, so "cached" is stale.
    let out = c
        .query(&format!("INSERT INTO {t} VALUES (2, 'w')"))
        .await
        .unwrap();
    assert!(out.iter().any(|l| l.contains("INSERT 0 1")), "{out:?}");
    c.prepare_ahead("next", "SELECT 2 AS two").await.unwrap();
    let out = c.read_until(b"Tn").await.unwrap();
    assert!(
        out.iter().any(|l| l.starts_with("ParseComplete")),
        "{out:?}"
    );
    c.bind_execute_sync("cached").await.unwrap();
    let out = c.read_until(b"Z").await.unwrap();
    assert!(
        out.iter().any(|l| l == "CommandComplete SELECT 1"),
        "the cached statement ran: {out:?}"
    );
    assert!(
        out.iter().any(|l| l.contains("DataRow") && l.contains('2')),
        "{out:?}"
    );
    c.bind_execute_sync("next").await.unwrap();
    let out = c.read_until(b"Z").await.unwrap();
    assert!(
        out.iter().any(|l| l == "CommandComplete SELECT 1"),
        "{out:?}"
    );
    c.close().await;
    drop_table(&t).await;
}

/// PostgreSQL keys statement names by their first 63 bytes: two longer names sharing those are one
/// name upstream, and one here too, so closing and parsing one replaces the other's text (a DELETE
/// parsed under the second name ran on a Bind of the first, judged as its SELECT).
#[tokio::test]
async fn statement_names_sharing_63_bytes_are_one_name() {
    use countersign_tests::transcript::Action;
    let t = table_with_rows("names63", 3).await;
    let gw = gateway(1.0).await;
    let mut c = agent_raw_conn(&gw).await;
    let (a, b) = (
        format!("{}_a", "n".repeat(63)),
        format!("{}_b", "n".repeat(63)),
    );
    c.run(&Action::Prepare {
        name: a.clone(),
        sql: "SELECT 1 WHERE $1::text IS NOT NULL".into(),
    })
    .await
    .unwrap();
    c.run(&Action::Close { name: b.clone() }).await.unwrap();
    c.run(&Action::Prepare {
        name: b,
        sql: format!("DELETE FROM {t} WHERE $1::text IS NOT NULL"),
    })
    .await
    .unwrap();
    let out = c
        .run(&Action::Extended {
            name: a,
            sql: None,
            params: vec![Some("x".into())],
            binary: false,
            max_rows: 0,
        })
        .await
        .unwrap();
    assert!(
        !out.iter().any(|l| l.contains("DELETE")),
        "the DELETE ran on a Bind judged as the SELECT: {out:?}"
    );
    assert!(out.iter().any(|l| l.contains("42501")), "held: {out:?}");
    assert_eq!(count(&t).await, 3);
    c.close().await;
    drop_table(&t).await;
}

/// An executemany of a statement that calls a user function (one Parse, a Bind and Execute per row,
/// one Sync) runs every row: the name the batch parsed is not parsed again between its executions
/// (each Bind after the first was refused as unknown, 26000, with every driver).
#[tokio::test]
async fn executemany_of_a_statement_calling_a_user_function_runs_every_row() {
    let t = table_name("fmany");
    let f = format!("{t}_f");
    direct()
        .await
        .batch_execute(&format!(
            "CREATE TABLE {t} (k int, v text);
             CREATE FUNCTION {f}(text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT $1 || '!' $$"
        ))
        .await
        .unwrap();
    let gw = spawn_gateway(
        &config(
            1.0,
            "[[policy.rules]]\nname = \"all\"\naction = \"allow\"\n",
        ),
        Backend::Sqlite,
    )
    .await;
    let mut c = agent_raw_conn(&gw).await;
    for round in 0..2 {
        c.execute_many(
            "many",
            &format!("INSERT INTO {t} VALUES ({round}, {f}($1))"),
            &["a", "b", "c"],
        )
        .await
        .unwrap();
        let out = c.read_until(b"Z").await.unwrap();
        assert_eq!(
            out.iter()
                .filter(|l| *l == "CommandComplete INSERT 0 1")
                .count(),
            3,
            "round {round}: {out:?}"
        );
        // The name is the statement's from now on: later batches Bind it without a Parse.
        c.run(&countersign_tests::transcript::Action::Close {
            name: "many".into(),
        })
        .await
        .unwrap();
    }
    assert_eq!(count(&t).await, 6);
    c.close().await;
    direct()
        .await
        .batch_execute(&format!("DROP TABLE {t}; DROP FUNCTION {f}(text)"))
        .await
        .unwrap();
}

/// A cached statement bound after a write in the same batch is parsed again inside the batch, so the
/// batch stays one implicit transaction: when a later statement of it fails, the write is rolled back
/// as PostgreSQL does (splitting the batch had committed it).
#[tokio::test]
async fn a_batch_with_a_stale_statement_after_a_write_stays_one_transaction() {
    use countersign_tests::transcript::Action;
    let t = table_with_rows(&format!("{FREE}_atomic"), 1).await;
    let gw = gateway(1.0).await;
    let mut c = agent_raw_conn(&gw).await;
    c.run(&Action::Prepare {
        name: "boom".into(),
        sql: "SELECT 1 / 0".into(),
    })
    .await
    .unwrap();
    c.run_then_bind(&format!("INSERT INTO {t} VALUES (100, 'kept?')"), "boom")
        .await
        .unwrap();
    let out = c.read_until(b"Z").await.unwrap();
    assert!(out.iter().any(|l| l.contains("22012")), "{out:?}");
    assert_eq!(
        out.iter()
            .filter(|l| l.starts_with("ReadyForQuery"))
            .count(),
        1,
        "{out:?}"
    );
    assert_eq!(
        count(&t).await,
        1,
        "the INSERT was rolled back with its batch"
    );
    // The session goes on, and the name still runs its own text.
    let out = c.query("SELECT 2").await.unwrap();
    assert!(
        out.iter().any(|l| l == "CommandComplete SELECT 1"),
        "{out:?}"
    );
    c.close().await;
    drop_table(&t).await;
}

/// A raw protocol session of the agent on `gw`'s wire listener.
async fn agent_raw_conn(gw: &Gateway) -> countersign_tests::transcript::RawConn {
    let login = countersign_tests::transcript::Login {
        addr: gw.wire.unwrap().to_string(),
        user: "agent".into(),
        database: "local".into(),
        password: Some(AGENT.into()),
        options: None,
    };
    countersign_tests::transcript::RawConn::connect(&login, None)
        .await
        .unwrap()
}
