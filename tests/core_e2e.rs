//! Issue "Core": policy → hold → vote → execute exactly once, with enforced separation of duties, on both
//! stores, against the real PostgreSQL.

use countersign_bot::audit::{verify_chain, ChainCheck};
use countersign_tests::idp::{self, Idp};
use countersign_tests::tokens::*;
use countersign_tests::*;
use serde_json::json;
use std::time::Duration;

async fn count(table: &str) -> i64 {
    direct()
        .await
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

async fn make_table(prefix: &str) -> String {
    let t = table_name(prefix);
    direct()
        .await
        .batch_execute(&format!("CREATE TABLE {t} (id int primary key, v text)"))
        .await
        .unwrap();
    t
}

/// The agent logged in on the gateway's wire listener (connection `local`).
async fn agent_on_the_wire(gw: &Gateway) -> tokio_postgres::Client {
    agent_wire_session(gw.wire.expect("wire listener configured"))
        .await
        .0
}

/// A fresh database named `{prefix}_{uuid}` on the test server: the admin client, its name, the
/// server's URL without a database, and a client logged in to it.
async fn own_database(
    prefix: &str,
) -> (
    tokio_postgres::Client,
    String,
    String,
    tokio_postgres::Client,
) {
    let admin = direct().await;
    let db = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    let url = upstream_url();
    let (base, _) = url.rsplit_once('/').unwrap();
    let (in_db, conn) = tokio_postgres::connect(&format!("{base}/{db}"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    (admin, db, base.to_string(), in_db)
}

/// Drops a database a test made for itself (its sessions with it).
async fn drop_database(admin: &tokio_postgres::Client, db: &str) {
    admin
        .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .await
        .unwrap();
}

/// Rows in the `log` table of a test database (what user code wrote there).
async fn log_rows(db: &tokio_postgres::Client) -> i64 {
    db.query_one("SELECT count(*) FROM log", &[])
        .await
        .unwrap()
        .get(0)
}

/// A config whose connection `local` reaches database `db` of the test server (at `base`), and
/// `plain` the shared test database.
fn own_and_shared_config(base: &str, db: &str) -> String {
    let url = upstream_url();
    base_config(&format!(
        "[[connections]]\nname = \"plain\"\nupstream_url = \"{url}\"\n"
    ))
    .replacen(&url, &format!("{base}/{db}"), 1)
}

fn id_of(r: &Reply) -> String {
    r.body["request_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no request_id in {:?}", r.body))
        .to_string()
}

#[tokio::test]
async fn a_method_a_path_does_not_take_is_refused_with_the_json_error_shape() {
    let gw = spawn_gateway(&base_config(""), BACKENDS[0]).await;
    for (method, path) in [
        (reqwest::Method::DELETE, "/healthz"),
        (reqwest::Method::GET, "/v1/connections/x/query"),
    ] {
        let r = gw
            .http
            .request(method.clone(), format!("{}{path}", gw.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 405, "{method} {path}");
        let body: serde_json::Value = r.json().await.expect("a JSON body");
        assert_eq!(body["error"], "method_not_allowed", "{body}");
        assert!(
            body["message"].as_str().unwrap_or_default().contains(path),
            "{body}"
        );
    }
}

#[tokio::test]
async fn held_statement_approved_by_two_distinct_humans_runs_exactly_once() {
    for backend in BACKENDS {
        let gw = spawn_gateway(&base_config(""), backend).await;
        let t = make_table("cs_once").await;
        let sql = format!("INSERT INTO {t} VALUES (1, 'x')");

        let held = gw.query(AGENT, &sql).await;
        assert_eq!(held.status, 202, "{backend:?}: {:?}", held.body);
        assert_eq!(held.body["status"], "pending");
        let id = id_of(&held);
        // The request link is the API resource, readable with the caller's own token.
        let link = held.body["request_url"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            link.ends_with(&format!("/v1/requests/{id}")),
            "{:?}",
            held.body
        );
        let followed = gw.http.get(&link).bearer_auth(AGENT).send().await.unwrap();
        assert_eq!(followed.status().as_u16(), 200, "{link}");
        let shown = gw.request(AGENT, &id).await;
        assert_eq!(shown.body["request_url"], link.as_str());

        // The human the agent acts for can't approve; nor can the agent; nor a non-member.
        let r = gw.vote(ALICE, &id, "approve").await;
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (403, Some("requester_cannot_approve"))
        );
        let r = gw.vote(AGENT, &id, "approve").await;
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (403, Some("workload_cannot_vote"))
        );
        let r = gw.vote(MALLORY, &id, "approve").await;
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (403, Some("not_an_approver"))
        );

        // One human voting twice counts once.
        assert_eq!(gw.vote(BOB, &id, "approve").await.status, 200);
        let r = gw.vote(BOB, &id, "approve").await;
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (409, Some("already_voted"))
        );
        assert_eq!(gw.request(BOB, &id).await.body["status"], "pending");
        assert_eq!(count(&t).await, 0, "nothing runs before quorum");

        let r = gw.vote(CAROL, &id, "approve").await;
        assert_eq!(r.body["status"], "approved", "{:?}", r.body);
        assert_eq!(
            count(&t).await,
            0,
            "approval alone runs nothing; the requester re-sends"
        );

        // The identical statement from the same requester runs once…
        let ran = gw.query(AGENT, &sql).await;
        assert_eq!(ran.status, 200, "{:?}", ran.body);
        assert_eq!(ran.body["command_tag"], "INSERT 0 1");
        assert_eq!(ran.body["request_id"], id.as_str());
        assert_eq!(count(&t).await, 1);
        let shown = gw.request(BOB, &id).await.body;
        assert_eq!(shown["status"], "executed");
        assert_eq!(shown["execution"]["command_tag"], "INSERT 0 1");

        // …and a third send needs a new approval.
        let again = gw.query(AGENT, &sql).await;
        assert_eq!(again.status, 202);
        assert_ne!(id_of(&again), id);
        assert_eq!(count(&t).await, 1);
    }
}

/// Approvers never see result data: an approved statement's error quoting a row's value reaches them
/// withheld; one quoting only the statement keeps its text.
#[tokio::test]
async fn an_execution_error_quoting_row_data_is_withheld_from_approvers() {
    let gw = spawn_gateway(&base_config(""), Backend::Sqlite).await;
    let t = make_table("cs_err_quote").await;
    direct()
        .await
        .batch_execute(&format!("INSERT INTO {t} VALUES (1, '123-45-6789')"))
        .await
        .unwrap();
    for (sql, withheld) in [
        (format!("UPDATE {t} SET id = v::int WHERE id = 1"), true),
        (format!("UPDATE {t} SET id = id / 0 WHERE id = 1"), false),
    ] {
        let held = gw.query(AGENT, &sql).await;
        assert_eq!(held.status, 202, "{:?}", held.body);
        let id = id_of(&held);
        gw.vote(BOB, &id, "approve").await;
        gw.vote(CAROL, &id, "approve").await;
        // The requester's own answer keeps PostgreSQL's text.
        let ran = gw.query(AGENT, &sql).await;
        assert!(
            ran.body.to_string().contains(if withheld {
                "123-45-6789"
            } else {
                "division by zero"
            }),
            "{:?}",
            ran.body
        );
        let shown = gw.request(BOB, &id).await.body;
        assert_eq!(shown["status"], "failed", "{shown:?}");
        let error = shown["execution"]["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(!error.contains("123-45-6789"), "{error}");
        assert_eq!(
            error.contains("withheld from approvers"),
            withheld,
            "{error}"
        );
    }
}

/// An approved statement whose database can't be reached ran nowhere: the approval stands for a
/// re-send (and says so), instead of being spent as a failed execution.
#[tokio::test]
async fn an_approval_is_not_spent_when_the_upstream_cannot_be_reached() {
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let cfg = base_config(
        "[[connections]]\nname = \"down\"\nupstream_url = \"postgres://postgres@127.0.0.1:1/postgres?connect_timeout=2\"\n",
    );
    let gw = spawn_gateway(&cfg, Backend::Sqlite).await;
    let sql = "DELETE FROM unreachable_orders WHERE id = 1";
    let send = || gw.post(AGENT, "/v1/connections/down/query", json!({ "sql": sql }));
    let held = send().await;
    assert_eq!(held.status, 202, "{:?}", held.body);
    let id = id_of(&held);
    assert_eq!(gw.vote(BOB, &id, "approve").await.status, 200);
    assert_eq!(gw.vote(CAROL, &id, "approve").await.status, 200);
    for _ in 0..2 {
        let r = send().await;
        assert_eq!(r.status, 502, "{:?}", r.body);
        assert_eq!(r.body["error"], "upstream_unavailable", "{:?}", r.body);
        assert_eq!(
            r.body["request_id"],
            id.as_str(),
            "the same request, still approved"
        );
        assert!(r.body.to_string().contains("still stands"), "{:?}", r.body);
        let status = gw.request(BOB, &id).await;
        assert_eq!(status.body["status"], "approved", "{:?}", status.body);
    }
}

#[tokio::test]
async fn an_approved_statement_is_not_spent_on_an_upstream_session_the_server_ended() {
    let gw = spawn_gateway(&base_config(""), Backend::Sqlite).await;
    let t = make_table("cs_stale").await;
    let sql = format!("INSERT INTO {t} VALUES (1, 'x')");
    let id = id_of(&gw.query(AGENT, &sql).await);
    assert_eq!(gw.vote(BOB, &id, "approve").await.status, 200);
    assert_eq!(gw.vote(CAROL, &id, "approve").await.status, 200);
    // An allowed read leaves an idle session in the API's pool; the server then ends it (a restart,
    // an idle timeout, an administrator).
    let marker = format!("stale pool {}", uuid::Uuid::new_v4().simple());
    let warm = gw.query(AGENT, &format!("SELECT '{marker}'")).await;
    assert_eq!(warm.status, 200, "{:?}", warm.body);
    let ended: i64 = direct()
        .await
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = 'countersign' AND query LIKE '%' || $1 || '%'",
            &[&marker],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ended, 1, "the pooled session was ended");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ran = gw.query(AGENT, &sql).await;
    assert_eq!(ran.status, 200, "{:?}", ran.body);
    assert_eq!(ran.body["command_tag"], "INSERT 0 1");
    assert_eq!(count(&t).await, 1);
}

#[tokio::test]
async fn an_allowed_query_whose_http_client_hangs_up_is_cancelled_upstream() {
    let gw = spawn_gateway(&base_config(""), Backend::Sqlite).await;
    let marker = format!("hangup_{}", uuid::Uuid::new_v4().simple());
    let sql = format!("SELECT count(*), '{marker}' FROM generate_series(1, 100000000000)");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(700))
        .build()
        .unwrap();
    let sent = client
        .post(format!("{}/v1/connections/local/query", gw.base))
        .bearer_auth(AGENT)
        .json(&json!({ "sql": sql }))
        .send()
        .await;
    assert!(sent.is_err(), "the client gave up first");
    let running = || async {
        direct()
            .await
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()",
                &[&marker],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let mut left = 1;
    for _ in 0..50 {
        left = running().await;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        left, 0,
        "the runaway read was cancelled when its caller left"
    );
}

#[tokio::test]
async fn approved_then_altered_text_does_not_run() {
    for backend in BACKENDS {
        let gw = spawn_gateway(&base_config(""), backend).await;
        let t = make_table("cs_alter").await;
        direct()
            .await
            .batch_execute(&format!("INSERT INTO {t} VALUES (1,'a'),(2,'b')"))
            .await
            .unwrap();
        let approved_sql = format!("DELETE FROM {t} WHERE id = 1");
        let id = id_of(&gw.query(AGENT, &approved_sql).await);
        gw.vote(BOB, &id, "approve").await;
        gw.vote(CAROL, &id, "approve").await;
        for altered in [
            format!("DELETE FROM {t} WHERE id = 1 OR true"),
            format!("DELETE FROM {t} WHERE id = 1 "),
            format!("delete from {t} where id = 1"),
        ] {
            let r = gw.query(AGENT, &altered).await;
            assert_eq!(
                r.status, 202,
                "altered text must be a new request: {altered}"
            );
            assert_ne!(id_of(&r), id);
        }
        assert_eq!(count(&t).await, 2, "nothing ran");
        // Another requester re-sending the approved text doesn't get the approval either.
        let r = gw.query(BOB, &approved_sql).await;
        assert_eq!(r.status, 202);
        assert_eq!(count(&t).await, 2);
    }
}

#[tokio::test]
async fn deny_vetoes_a_waiting_statement() {
    for backend in BACKENDS {
        let gw = spawn_gateway(&base_config(""), backend).await;
        let t = make_table("cs_deny").await;
        let sql = format!("INSERT INTO {t} VALUES (7, 'no')");
        let id = id_of(&gw.query(AGENT, &sql).await);
        gw.vote(BOB, &id, "approve").await;
        let waiting = {
            let base = gw.base.clone();
            let sql = sql.clone();
            tokio::spawn(async move {
                let r = reqwest::Client::new()
                    .post(format!("{base}/v1/connections/local/query?wait=20s"))
                    .bearer_auth(AGENT)
                    .json(&json!({ "sql": sql }))
                    .send()
                    .await
                    .unwrap();
                (
                    r.status().as_u16(),
                    r.json::<serde_json::Value>().await.unwrap(),
                )
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = gw
            .post(
                CAROL,
                &format!("/v1/requests/{id}/votes"),
                json!({ "decision": "deny", "reason": "not during the freeze" }),
            )
            .await;
        assert_eq!(r.body["status"], "denied");
        let (status, body) = waiting.await.unwrap();
        assert_eq!(status, 403, "{body:?}");
        assert_eq!(body["error"], "denied");
        assert_eq!(body["reason"], "not during the freeze");
        assert_eq!(body["denied_by"], "carol@example.com");
        assert_eq!(gw.vote(CAROL, &id, "approve").await.status, 409);
        assert_eq!(count(&t).await, 0);
    }
}

#[tokio::test]
async fn waiting_caller_gets_the_result_when_approved_in_time() {
    let gw = spawn_gateway(&base_config(""), Backend::Sqlite).await;
    let t = make_table("cs_wait").await;
    let sql = format!("INSERT INTO {t} VALUES (1, 'w')");
    let id = id_of(&gw.query(AGENT, &sql).await);
    let base = gw.base.clone();
    let sql2 = sql.clone();
    let waiting = tokio::spawn(async move {
        let r = reqwest::Client::new()
            .post(format!("{base}/v1/connections/local/query?wait=20s"))
            .bearer_auth(AGENT)
            .json(&json!({ "sql": sql2 }))
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<serde_json::Value>().await.unwrap(),
        )
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.vote(BOB, &id, "approve").await;
    gw.vote(CAROL, &id, "approve").await;
    let (status, body) = waiting.await.unwrap();
    assert_eq!(status, 200, "{body:?}");
    assert_eq!(body["request_id"], id.as_str());
    assert_eq!(count(&t).await, 1);
}

#[tokio::test]
async fn pending_requests_expire() {
    for backend in BACKENDS {
        let rule = "[[policy.rules]]\nname = \"short\"\nkinds = [\"INSERT\"]\naction = \"review\"\napprover_groups = [\"reviewers\"]\nquorum = 1\nttl = \"1s\"\n";
        let gw = spawn_gateway(&base_config(rule), backend).await;
        let t = make_table("cs_exp").await;
        let id = id_of(
            &gw.query(AGENT, &format!("INSERT INTO {t} VALUES (1,'e')"))
                .await,
        );
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(gw.engine.workflow.expire_due().await.unwrap(), 1);
        assert_eq!(gw.request(BOB, &id).await.body["status"], "expired");
        let r = gw.vote(BOB, &id, "approve").await;
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (409, Some("resolved"))
        );
    }
}

#[tokio::test]
async fn many_concurrent_votes_reach_a_consistent_state() {
    for backend in BACKENDS {
        let rule = "[[policy.rules]]\nname = \"three\"\nkinds = [\"UPDATE\"]\naction = \"review\"\napprover_groups = [\"reviewers\"]\nquorum = 3\n";
        let gw = std::sync::Arc::new(spawn_gateway(&base_config(rule), backend).await);
        let t = make_table("cs_conc").await;
        let id = id_of(&gw.query(AGENT, &format!("UPDATE {t} SET v = 'z'")).await);
        let mut tasks = vec![];
        for i in 1..=10 {
            let gw = gw.clone();
            let id = id.clone();
            tasks.push(tokio::spawn(async move {
                gw.vote(&format!("test-reviewer{i}-token"), &id, "approve")
                    .await
            }));
        }
        let mut ok = 0;
        for task in tasks {
            let r = task.await.unwrap();
            match r.status {
                200 => ok += 1,
                409 => assert_eq!(r.body["error"], "resolved"),
                other => panic!("unexpected {other}: {:?}", r.body),
            }
        }
        let shown = gw.request(BOB, &id).await.body;
        assert_eq!(shown["status"], "approved", "{backend:?}");
        assert_eq!(ok, 3, "{backend:?}: exactly the quorum is recorded");
        assert_eq!(shown["votes"].as_array().unwrap().len(), 3);
    }
}

#[tokio::test]
async fn blocked_and_allowed_statements() {
    let gw = spawn_gateway(&base_config(""), Backend::Sqlite).await;
    let r = gw.query(AGENT, "SELECT 40 + 2 AS answer").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["rows"], json!([["42"]]));
    assert_eq!(r.body["columns"][0]["name"], "answer");
    let r = gw.query(AGENT, "COPY (SELECT 1) TO PROGRAM 'id'").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.body["error"], "blocked");
    let r = gw.query(AGENT, "SELECT 1; DROP DATABASE postgres").await;
    assert_eq!(
        r.status, 403,
        "a string takes the strictest verdict of its parts"
    );
    // A DO block (opaque code) and unparsable SQL are held, never run.
    let r = gw.query(AGENT, "DO $$ BEGIN PERFORM 1; END $$").await;
    assert_eq!(r.status, 202);
    let r = gw.query(AGENT, "SELEC garbage (((").await;
    assert_eq!(r.status, 202);
    // Bad input never 500s.
    let resp = gw
        .http
        .post(format!("{}/v1/connections/local/query", gw.base))
        .bearer_auth(AGENT)
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let r = gw
        .post(
            AGENT,
            "/v1/connections/nope/query",
            json!({ "sql": "select 1" }),
        )
        .await;
    assert_eq!(r.status, 404);
    let r = gw
        .post(
            BOB,
            "/v1/requests/not-a-uuid/votes",
            json!({ "decision": "approve" }),
        )
        .await;
    assert_eq!(r.status, 400);
    let big = "x".repeat(2 * 1024 * 1024);
    let resp = gw
        .http
        .post(format!("{}/v1/connections/local/query", gw.base))
        .bearer_auth(AGENT)
        .json(&json!({ "sql": big }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
}

#[tokio::test]
async fn forged_and_invalid_jwts_are_refused_and_audited() {
    let (idp, gw) = gateway_with_idp().await;
    let now = jsonwebtoken::get_current_timestamp() as i64;
    let good = idp.sign(&idp.claims("ci-bot"), "rsa-a", &idp::key_a());
    assert_eq!(gw.query(&good, "SELECT 1").await.status, 200);

    let mut expired = idp.claims("ci-bot");
    expired["exp"] = json!(now - 3600);
    let mut future_nbf = idp.claims("ci-bot");
    future_nbf["nbf"] = json!(now + 3600);
    let mut wrong_aud = idp.claims("ci-bot");
    wrong_aud["aud"] = json!("someone-else");
    let mut wrong_iss = idp.claims("ci-bot");
    wrong_iss["iss"] = json!("https://evil.example");
    let alg_none = {
        use base64::Engine;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            e.encode(r#"{"alg":"none","typ":"JWT"}"#),
            e.encode(idp.claims("ci-bot").to_string())
        )
    };
    let hs_confusion = {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some("rsa-a".into());
        jsonwebtoken::encode(
            &h,
            &idp.claims("ci-bot"),
            &jsonwebtoken::EncodingKey::from_secret(idp::RSA_A_PUBLIC),
        )
        .unwrap()
    };
    let tampered = {
        use base64::Engine;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let parts: Vec<&str> = good.split('.').collect();
        let mut claims = idp.claims("ci-bot");
        claims["sub"] = json!("human-admin");
        format!("{}.{}.{}", parts[0], e.encode(claims.to_string()), parts[2])
    };
    let cases = [
        ("expired", idp.sign(&expired, "rsa-a", &idp::key_a())),
        (
            "nbf in the future",
            idp.sign(&future_nbf, "rsa-a", &idp::key_a()),
        ),
        ("wrong aud", idp.sign(&wrong_aud, "rsa-a", &idp::key_a())),
        ("wrong iss", idp.sign(&wrong_iss, "rsa-a", &idp::key_a())),
        ("alg none", alg_none),
        ("HS256 with the RSA public key", hs_confusion),
        ("tampered payload", tampered),
        (
            "unknown kid, unknown key",
            idp.sign(&idp.claims("ci-bot"), "rsa-b", &idp::key_b()),
        ),
    ];
    for (what, token) in &cases {
        let r = gw.query(token, "SELECT 1").await;
        assert_eq!(r.status, 401, "{what}: {:?}", r.body);
        assert_eq!(r.body["error"], "unauthenticated", "{what}");
    }
    let audit = gw.store.audit_records(0, 1000).await.unwrap();
    assert_eq!(
        audit
            .iter()
            .filter(|a| a.entry.action == "auth.refused")
            .count(),
        cases.len()
    );

    // Key rotation: the new kid is fetched on demand (after the refetch interval).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    idp.rotate_in_b();
    let rotated = idp.sign(&idp.claims("ci-bot"), "rsa-b", &idp::key_b());
    assert_eq!(gw.query(&rotated, "SELECT 1").await.status, 200);
}

#[tokio::test]
async fn delegated_jwt_chain_cannot_vote_for_its_own_human() {
    let idp = Idp::start().await;
    let cfg = format!(
        "{}\n{}",
        idp.config(),
        base_config("").replace(
            "members = [\"alice@example.com\"",
            "members = [\"human-dana@example.com\", \"alice@example.com\""
        )
    );
    let gw = spawn_gateway(&cfg, Backend::Sqlite).await;
    let mut claims = idp.claims("human-dana");
    claims["email"] = json!("human-dana@example.com");
    claims["act"] = json!({ "sub": "subagent-7", "act": { "sub": "planner-agent" } });
    let agent_token = idp.sign(&claims, "rsa-a", &idp::key_a());
    let t = make_table("cs_act").await;
    let held = gw
        .query(&agent_token, &format!("INSERT INTO {t} VALUES (1,'a')"))
        .await;
    assert_eq!(held.status, 202);
    let id = id_of(&held);
    let chain = &gw.request(BOB, &id).await.body["requester"];
    let subjects: Vec<&str> = chain
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, ["subagent-7", "planner-agent", "human-dana"]);
    // Dana herself, with her own token, is in the chain: refused.
    let mut own = idp.claims("human-dana");
    own["email"] = json!("human-dana@example.com");
    let dana = idp.sign(&own, "rsa-a", &idp::key_a());
    let r = gw.vote(&dana, &id, "approve").await;
    assert_eq!(r.body["error"], "requester_cannot_approve", "{:?}", r.body);
}

/// A gateway (SQLite store, base config) that also trusts a local OIDC issuer.
async fn gateway_with_idp() -> (Idp, Gateway) {
    let idp = Idp::start().await;
    let gw = spawn_gateway(
        &format!("{}\n{}", idp.config(), base_config("")),
        Backend::Sqlite,
    )
    .await;
    (idp, gw)
}

#[tokio::test]
async fn a_chain_whose_human_has_no_verified_email_is_refused_a_hold_and_audited() {
    let (idp, gw) = gateway_with_idp().await;
    let t = make_table("cs_act_noemail").await;
    // Alice known to the IdP by subject alone (her e-mail unverified): as a reviewer through Slack or
    // e-mail nothing would tie her to this request.
    let mut claims = idp.claims("human-alice");
    claims["email"] = json!("alice@example.com");
    claims["email_verified"] = json!(false);
    claims["act"] = json!({ "sub": "subagent-7", "act": { "sub": "planner-agent" } });
    let agent_token = idp.sign(&claims, "rsa-a", &idp::key_a());
    // Reads still run for her agents.
    assert_eq!(gw.query(&agent_token, "SELECT 1").await.status, 200);
    let r = gw
        .query(&agent_token, &format!("INSERT INTO {t} VALUES (1,'a')"))
        .await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    assert_eq!(r.body["error"], "requester_without_email", "{:?}", r.body);
    assert!(gw.store.list_requests(None, 10).await.unwrap().is_empty());
    let audit = gw.store.audit_records(0, 1000).await.unwrap();
    assert!(
        audit.iter().any(|a| a.entry.action == "statement.refused"
            && a.entry.detail["code"] == "requester_without_email"),
        "{audit:#?}"
    );
    let rows: i64 = direct_scalar(&format!("SELECT count(*) FROM {t}")).await;
    assert_eq!(rows, 0, "nothing ran");
}

#[tokio::test]
async fn a_workload_token_naming_an_approver_as_its_actor_cannot_vote() {
    let (idp, gw) = gateway_with_idp().await;
    let t = make_table("cs_act_vote").await;
    let held = gw
        .query(AGENT, &format!("INSERT INTO {t} VALUES (1,'a')"))
        .await;
    assert_eq!(held.status, 202, "{:?}", held.body);
    let id = id_of(&held);
    // The service's token names bob (an approver, by e-mail) as the party acting for it: the vote
    // would be a workload's, cast under bob's name.
    let mut claims = idp.claims("svc-report");
    claims["act"] = json!({ "sub": "human-bob", "email": "bob@example.com" });
    let delegated = idp.sign(&claims, "rsa-a", &idp::key_a());
    let r = gw.vote(&delegated, &id, "approve").await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    assert_eq!(r.body["error"], "workload_cannot_vote", "{:?}", r.body);
    let view = gw.request(BOB, &id).await.body;
    assert_eq!(view["approvals"], 0, "{view:?}");
    let audit = gw.store.audit_records(0, 1000).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|a| a.entry.action == "vote.refused" && a.entry.actor.contains("svc-report")),
        "the refused vote is audited: {audit:#?}"
    );
    // Bob with his own token still votes.
    assert_eq!(gw.vote(BOB, &id, "approve").await.status, 200);
}

#[tokio::test]
async fn audit_chain_verifies_and_a_database_edit_is_named() {
    for backend in BACKENDS {
        let gw = spawn_gateway(&base_config(""), backend).await;
        let id = held_insert(&gw, "cs_audit").await;
        gw.vote(ALICE, &id, "approve").await;
        gw.vote(BOB, &id, "approve").await;
        gw.vote(CAROL, &id, "deny").await;
        let records = gw.store.audit_records(0, 1000).await.unwrap();
        assert!(matches!(verify_chain(&records), ChainCheck::Intact { .. }));

        // The CLI agrees.
        assert_eq!(
            cli_audit_verify(&gw.store_url).await,
            std::process::ExitCode::SUCCESS
        );

        // Someone with database access edits record #3 (after disabling the append-only trigger).
        let target_seq = 3i64;
        tamper(
            backend,
            &gw.store_url,
            &format!("UPDATE audit SET actor = 'someone-else' WHERE seq = {target_seq}"),
        )
        .await;
        let records = gw.store.audit_records(0, 1000).await.unwrap();
        match verify_chain(&records) {
            ChainCheck::Broken { seq, .. } => assert_eq!(seq, target_seq, "{backend:?}"),
            other => panic!("{backend:?}: tampering not detected: {other:?}"),
        }
        assert_eq!(
            cli_audit_verify(&gw.store_url).await,
            std::process::ExitCode::from(1)
        );
    }
}

/// Runs `sql` on the gateway's store as someone with database access would: with the audit table's
/// append-only triggers out of the way.
async fn tamper(backend: Backend, store_url: &str, sql: &str) {
    use sqlx::Connection;
    let sql = format!(
        "{}; {sql}",
        match backend {
            Backend::Sqlite =>
                "DROP TRIGGER IF EXISTS audit_no_update; DROP TRIGGER IF EXISTS audit_no_delete",
            Backend::Postgres => "ALTER TABLE audit DISABLE TRIGGER audit_no_update",
        }
    );
    let sql = sqlx::raw_sql(sqlx::AssertSqlSafe(sql));
    match backend {
        Backend::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(store_url).await.unwrap();
            sql.execute(&mut c).await.unwrap();
        }
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(store_url).await.unwrap();
            sql.execute(&mut c).await.unwrap();
        }
    }
}

/// `countersign audit verify` against `store_url`.
async fn cli_audit_verify(store_url: &str) -> std::process::ExitCode {
    let cfg_path =
        std::env::temp_dir().join(format!("cs-audit-{}.toml", uuid::Uuid::new_v4().simple()));
    std::fs::write(
        &cfg_path,
        format!("{}\n[store]\nurl = \"{}\"\n", base_config(""), store_url),
    )
    .unwrap();
    let code = cli_audit_verify_with(&cfg_path).await;
    let _ = std::fs::remove_file(cfg_path);
    code
}

/// `countersign --config CFG_PATH audit verify`.
async fn cli_audit_verify_with(cfg_path: &std::path::Path) -> std::process::ExitCode {
    cli_audit_verify_args(cfg_path, &[]).await
}

/// `countersign --config CFG_PATH audit verify ARGS…`.
async fn cli_audit_verify_args(
    cfg_path: &std::path::Path,
    args: &[&str],
) -> std::process::ExitCode {
    use clap::Parser;
    let mut argv = vec![
        "countersign",
        "--config",
        cfg_path.to_str().unwrap(),
        "audit",
        "verify",
    ];
    argv.extend_from_slice(args);
    let cli = countersign_gateway::cli::Cli::parse_from(argv);
    countersign_gateway::cli::run(cli).await.unwrap()
}

/// Records cut from the end with an older head row put back (from a backup) leave a chain whose
/// links, head and seals all hold: the requests created meanwhile, each written with its record,
/// expose the cut, and so does a head printed by an earlier verify.
#[tokio::test]
async fn records_cut_from_the_end_with_an_older_head_put_back_are_found() {
    for backend in BACKENDS {
        let gw = spawn_gateway(&base_config(""), backend).await;
        let cfg_path =
            std::env::temp_dir().join(format!("cs-audit-{}.toml", uuid::Uuid::new_v4().simple()));
        std::fs::write(
            &cfg_path,
            format!("{}\n[store]\nurl = \"{}\"\n", base_config(""), gw.store_url),
        )
        .unwrap();
        held_insert(&gw, "cs_audit_rollback").await;
        let old = gw.store.audit_head().await.unwrap().expect("a head");
        tamper(
            backend,
            &gw.store_url,
            "CREATE TABLE old_head AS SELECT * FROM audit_head",
        )
        .await;
        held_insert(&gw, "cs_audit_rollback").await;
        let later = gw.store.audit_head().await.unwrap().expect("a head");
        assert_eq!(
            cli_audit_verify_with(&cfg_path).await,
            std::process::ExitCode::SUCCESS
        );
        let unlock = match backend {
            Backend::Sqlite => "DROP TRIGGER audit_head_forward",
            Backend::Postgres => "ALTER TABLE audit_head DISABLE TRIGGER audit_head_forward",
        };
        tamper(
            backend,
            &gw.store_url,
            &format!(
                "{unlock}; DELETE FROM audit WHERE seq > {}; UPDATE audit_head SET seq = (SELECT seq FROM old_head), hash = (SELECT hash FROM old_head), seal = (SELECT seal FROM old_head)",
                old.seq
            ),
        )
        .await;
        let records = gw.store.audit_records(0, 10_000).await.unwrap();
        let head = gw.store.audit_head().await.unwrap();
        assert!(
            matches!(
                countersign_bot::audit::verify_chain_to_head(&records, head.as_ref(), None),
                ChainCheck::Intact { .. }
            ),
            "{backend:?}: links and head agree after the rollback"
        );
        assert_eq!(
            cli_audit_verify_with(&cfg_path).await,
            std::process::ExitCode::from(1),
            "{backend:?}: the second request has no record"
        );
        let expect = format!("{}:{}", later.seq, later.hash);
        assert_eq!(
            cli_audit_verify_args(&cfg_path, &["--expect-head", &expect]).await,
            std::process::ExitCode::from(1),
            "{backend:?}: the head an earlier verify printed is gone"
        );
        assert_eq!(
            cli_audit_verify_args(&cfg_path, &["--expect-head", "nonsense"]).await,
            std::process::ExitCode::from(2)
        );
        let _ = std::fs::remove_file(cfg_path);
    }
}

/// A held INSERT into a new table (named from `prefix`); its request id.
async fn held_insert(gw: &Gateway, prefix: &str) -> String {
    let t = make_table(prefix).await;
    id_of(
        &gw.query(AGENT, &format!("INSERT INTO {t} VALUES (1,'a')"))
            .await,
    )
}

#[tokio::test]
async fn records_cut_from_the_end_of_the_audit_chain_are_reported_and_stay_reported() {
    for backend in BACKENDS {
        let gw = spawn_gateway(&base_config(""), backend).await;
        let id = held_insert(&gw, "cs_audit_cut").await;
        gw.vote(BOB, &id, "approve").await;
        gw.vote(CAROL, &id, "approve").await;
        assert_eq!(
            cli_audit_verify(&gw.store_url).await,
            std::process::ExitCode::SUCCESS
        );
        let head = gw.store.audit_head().await.unwrap().expect("a head");
        // The votes and the resolution go; every remaining link still holds.
        tamper(
            backend,
            &gw.store_url,
            &format!("DELETE FROM audit WHERE seq > {}", head.seq - 3),
        )
        .await;
        let records = gw.store.audit_records(0, 10_000).await.unwrap();
        assert!(matches!(verify_chain(&records), ChainCheck::Intact { .. }));
        let head = gw.store.audit_head().await.unwrap();
        assert!(
            matches!(
                countersign_bot::audit::verify_chain_to_head(&records, head.as_ref(), None),
                ChainCheck::Broken { .. }
            ),
            "{backend:?}"
        );
        assert_eq!(
            cli_audit_verify(&gw.store_url).await,
            std::process::ExitCode::from(1),
            "{backend:?}: the cut is reported"
        );
        // New records link to the head, not to what is left: the gap stays visible.
        assert_eq!(
            gw.query(AGENT, "DELETE FROM nowhere_cut WHERE id = 1")
                .await
                .status,
            202
        );
        assert_eq!(
            cli_audit_verify(&gw.store_url).await,
            std::process::ExitCode::from(1),
            "{backend:?}: the cut stays reported after new records"
        );
    }
}

#[tokio::test]
async fn a_record_added_past_the_head_is_reported_and_later_appends_go_on() {
    for backend in BACKENDS {
        let gw = spawn_gateway(&base_config(""), backend).await;
        held_insert(&gw, "cs_audit_past").await;
        assert_eq!(
            cli_audit_verify(&gw.store_url).await,
            std::process::ExitCode::SUCCESS
        );
        // A copy of the last record, numbered next: INSERT needs no trigger dropped.
        tamper(
            backend,
            &gw.store_url,
            "INSERT INTO audit (seq, at_ms, actor, action, request_id, decision, channel, statement_hash, detail, prev_hash, hash, seal) \
             SELECT seq + 1, at_ms, 'bob@example.com', 'vote.recorded', request_id, 'approve', 'api', statement_hash, detail, hash, hash, seal \
             FROM audit WHERE seq = (SELECT MAX(seq) FROM audit)",
        )
        .await;
        assert_eq!(
            cli_audit_verify(&gw.store_url).await,
            std::process::ExitCode::from(1),
            "{backend:?}: the stray record is reported"
        );
        // Audited work goes on (it failed on the stray record's number), and the break stays visible.
        assert_eq!(
            gw.query(AGENT, "DELETE FROM nowhere_past WHERE id = 1")
                .await
                .status,
            202,
            "{backend:?}"
        );
        assert_eq!(
            cli_audit_verify(&gw.store_url).await,
            std::process::ExitCode::from(1),
            "{backend:?}: still reported after new records"
        );
        if backend == Backend::Postgres {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&gw.store_url).await.unwrap();
            for table in ["audit", "audit_head"] {
                let e = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("TRUNCATE {table}")))
                    .execute(&mut c)
                    .await
                    .expect_err("TRUNCATE refused");
                assert!(e.to_string().contains("append-only"), "{e}");
            }
        }
    }
}

#[tokio::test]
async fn sealed_audit_records_expose_a_rewrite_that_recomputes_the_hashes() {
    use countersign_bot::audit::{AuditEntry, AuditRecord};
    let _ = rustls::crypto::ring::default_provider().install_default();
    for backend in BACKENDS {
        let dir = countersign_bot::testing::TempDir::new();
        let store_url = match backend {
            Backend::Sqlite => format!("sqlite://{}/state.db", dir.path().display()),
            Backend::Postgres => countersign_bot::testing::fresh_pg_database().await.unwrap(),
        };
        // Records written before a key is configured stay unsealed, ahead of the sealed ones.
        let unsealed = countersign_bot::store::open(&store_url).await.unwrap();
        unsealed
            .append_audit(AuditEntry::new("system", "test.before_key", "system"))
            .await
            .unwrap();
        drop(unsealed);
        let key_file = dir.path().join("audit.key");
        std::fs::write(&key_file, "k".repeat(40)).unwrap();
        let toml = format!(
            "{}\n[store]\nurl = \"{store_url}\"\naudit_key_file = \"{}\"\n",
            base_config(""),
            key_file.display()
        );
        let cfg_path = dir.path().join("countersign.toml");
        std::fs::write(&cfg_path, &toml).unwrap();
        let cfg =
            countersign_gateway::config::Config::from_toml(&toml, "countersign.toml").unwrap();
        let engine = countersign_gateway::engine::Engine::build(cfg, vec![])
            .await
            .unwrap();
        for i in 0..4 {
            engine
                .store()
                .append_audit(AuditEntry::new(format!("user{i}"), "test.sealed", "api"))
                .await
                .unwrap();
        }
        let verify = || cli_audit_verify_with(&cfg_path);
        assert_eq!(
            verify().await,
            std::process::ExitCode::SUCCESS,
            "{backend:?}"
        );
        // Without the key, sealed records cannot be vouched for: not "intact".
        let keyless = dir.path().join("keyless.toml");
        std::fs::write(
            &keyless,
            format!("{}\n[store]\nurl = \"{store_url}\"\n", base_config("")),
        )
        .unwrap();
        assert_eq!(
            cli_audit_verify_with(&keyless).await,
            std::process::ExitCode::from(2),
            "{backend:?}"
        );
        let records = engine.store().audit_records(0, 100).await.unwrap();
        assert_eq!(records[0].seal, None, "{backend:?}: written before the key");
        assert_eq!(records[1].entry.action, "audit.sealing_started");
        assert!(records[1..].iter().all(|r| r.seal.is_some()), "{backend:?}");

        // Someone with write access to the store, but not the key, rewrites record #4 and
        // recomputes every later hash and the head: every link holds, no seal does.
        let mut forged = records.clone();
        forged[3].entry.actor = "mallory".into();
        let mut sql = String::new();
        for i in 3..forged.len() {
            let prev = forged[i - 1].hash.clone();
            let r = &mut forged[i];
            r.prev_hash = prev;
            r.hash = AuditRecord::compute_hash(r.seq, r.at_ms, &r.entry, &r.prev_hash);
            sql.push_str(&format!(
                "UPDATE audit SET actor = '{}', prev_hash = '{}', hash = '{}' WHERE seq = {};",
                r.entry.actor, r.prev_hash, r.hash, r.seq
            ));
        }
        let last = forged.last().unwrap();
        sql.push_str(&format!(
            "UPDATE audit_head SET hash = '{}' WHERE id = 1;",
            last.hash
        ));
        if backend == Backend::Sqlite {
            sql.insert_str(0, "DROP TRIGGER audit_head_forward;");
        } else {
            sql.insert_str(
                0,
                "ALTER TABLE audit_head DISABLE TRIGGER audit_head_forward;",
            );
        }
        tamper(backend, &store_url, &sql).await;
        assert!(matches!(
            verify_chain(&engine.store().audit_records(0, 100).await.unwrap()),
            ChainCheck::Intact { .. }
        ));
        assert_eq!(
            verify().await,
            std::process::ExitCode::from(1),
            "{backend:?}: the rewrite is exposed by its seals"
        );
    }
}

#[tokio::test]
async fn statements_are_reviewed_until_the_database_catalog_has_been_read() {
    // A gateway that could not read the database's functions yet (its upstream was down at start)
    // cannot tell `lower(1)` from a writing `public.lower(int)`: it reviews, then reads at once.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (store, _url, _dir) = fresh_store(Backend::Sqlite).await;
    let cfg =
        countersign_gateway::config::Config::from_toml(&base_config(""), "test.toml").unwrap();
    let engine = countersign_gateway::engine::Engine::build_with_store(cfg, store, vec![])
        .await
        .unwrap();
    let chain = countersign_bot::RequesterChain::single(countersign_bot::Identity {
        issuer: "static".into(),
        subject: "agent".into(),
        email: None,
        unverified_email: None,
        kind: countersign_bot::IdentityKind::Workload,
        groups: vec![],
    });
    let unread = engine.classify("local", &chain, "SELECT lower('A')");
    assert_eq!(unread.action, countersign_gateway::policy::Action::Review);
    assert!(
        unread
            .reasons
            .iter()
            .any(|r| r.contains("could not read this database")),
        "{:?}",
        unread.reasons
    );
    countersign_gateway::poll::until(Duration::from_secs(20), Duration::from_millis(50), || {
        engine.classify("local", &chain, "SELECT lower('A')").action
            == countersign_gateway::policy::Action::Allow
    })
    .await;
    assert_eq!(
        engine.classify("local", &chain, "SELECT lower('A')").action,
        countersign_gateway::policy::Action::Allow,
        "the first classification started the read"
    );
}

#[tokio::test]
async fn http_statements_are_recorded_as_sessions_with_a_summary() {
    for backend in BACKENDS {
        let gw = spawn_gateway(&base_config(""), backend).await;
        let t = make_table("cs_hsess").await;
        assert_eq!(gw.query(AGENT, "SELECT 1").await.status, 200);
        assert_eq!(
            gw.query(AGENT, "COPY (SELECT 1) TO PROGRAM 'true'")
                .await
                .status,
            403
        );
        let id = id_of(
            &gw.query(AGENT, &format!("INSERT INTO {t} VALUES (1,'s')"))
                .await,
        );
        gw.vote(BOB, &id, "approve").await;
        gw.vote(CAROL, &id, "approve").await;
        assert_eq!(
            gw.query(AGENT, &format!("INSERT INTO {t} VALUES (1,'s')"))
                .await
                .status,
            200
        );
        assert_eq!(gw.engine.end_idle_http_sessions(Duration::ZERO).await, 1);
        let sessions = gw.store.list_sessions(10).await.unwrap();
        assert_eq!(sessions.len(), 1, "{backend:?}");
        assert_eq!(sessions[0].protocol, "http");
        assert!(sessions[0].ended_at.is_some());
        let (_, statements) = gw.store.get_session(sessions[0].id).await.unwrap().unwrap();
        let outcomes: Vec<&str> = statements.iter().map(|s| s.outcome.as_str()).collect();
        assert_eq!(outcomes, ["ok", "blocked", "held", "ok"]);
        assert_eq!(statements[3].command_tag.as_deref(), Some("INSERT 0 1"));
        let summaries = gw.store.outbox_list(None, 100).await.unwrap();
        assert!(
            summaries.iter().any(|o| o.event_kind == "session_summary"),
            "a session with held statements is summarised"
        );
    }
}

#[test]
fn shipped_example_configs_parse_and_validate() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples");
    for name in ["countersign.toml", "quickstart.toml"] {
        let path = root.join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        let cfg = countersign_gateway::config::Config::from_toml(&text, name)
            .unwrap_or_else(|e| panic!("{e}"));
        let report = cfg.validate(name);
        assert!(report.problems.is_empty(), "{report}");
    }
}

#[tokio::test]
async fn every_channel_is_composed_and_its_inbound_endpoints_refuse_unsigned_calls() {
    for (k, v) in [
        ("CS_ALL_SLACK_TOKEN", "xoxb-1"),
        ("CS_ALL_SLACK_SECRET", "s3cret"),
        ("CS_ALL_LINK_KEY", "0123456789abcdef0123456789abcdef0123"),
        ("CS_ALL_JIRA_EMAIL", "bot@example.com"),
        ("CS_ALL_JIRA_TOKEN", "t"),
        ("CS_ALL_JIRA_SECRET", "j"),
        (
            "CS_ALL_HOOK_SECRET",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ),
    ] {
        std::env::set_var(k, v);
    }
    let channels = r#"
[slack]
bot_token_env = "CS_ALL_SLACK_TOKEN"
signing_secret_env = "CS_ALL_SLACK_SECRET"
api_base_url = "http://127.0.0.1:9/api"
routes = { default_channel = "C1" }

[email]
smtp_host = "127.0.0.1"
smtp_port = 9
tls = "none"
from = "countersign@example.com"
link_signing_key_env = "CS_ALL_LINK_KEY"
link_ttl = "1h"
public_base_url = "http://127.0.0.1:8080"

[jira]
base_url = "http://127.0.0.1:9"
email_env = "CS_ALL_JIRA_EMAIL"
api_token_env = "CS_ALL_JIRA_TOKEN"
webhook_secret_env = "CS_ALL_JIRA_SECRET"
project_key = "OPS"
public_base_url = "http://127.0.0.1:8080"
approve_status = "Approved"
deny_status = "Rejected"
revert_transition = "Back"

[[webhooks.endpoints]]
name = "siem"
url = "http://127.0.0.1:9/hook"
secret_env = "CS_ALL_HOOK_SECRET"

[reminders]
remind_after = "15m"
"#;
    let gw = spawn_gateway(&base_config(channels), Backend::Sqlite).await;
    let id = id_of(&gw.query(AGENT, "DELETE FROM nowhere").await);
    let sinks: std::collections::BTreeSet<String> = gw
        .store
        .outbox_list(None, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|o| o.request_id.as_deref() == Some(id.as_str()))
        .map(|o| o.sink)
        .collect();
    assert_eq!(
        sinks,
        ["email", "jira", "log", "slack", "webhook:siem"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    let post = |path: &'static str| {
        let http = gw.http.clone();
        let url = format!("{}{path}", gw.base);
        async move {
            http.post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body("payload=%7B%7D")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(post("/slack/interactions").await, 401);
    assert_eq!(post("/slack/commands").await, 401);
    assert_eq!(post("/jira/webhook").await, 401);
    let r = gw
        .http
        .get(format!("{}/email/act?t=forged", gw.base))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert!((400..500).contains(&r), "forged e-mail link: {r}");
}

/// A fresh database whose sessions start with `setting` (`ALTER DATABASE … SET setting`), and a gateway
/// config whose connection `local` reaches it: the admin session, the database's name, the server's URL
/// without a database, and the config.
async fn database_defaulting_to(setting: &str) -> (tokio_postgres::Client, String, String, String) {
    let admin = direct().await;
    let db = format!("cs_default_{}", uuid::Uuid::new_v4().simple());
    for sql in [
        format!("CREATE DATABASE {db}"),
        format!("ALTER DATABASE {db} SET {setting}"),
    ] {
        admin.batch_execute(&sql).await.unwrap();
    }
    let url = upstream_url();
    let (base, _) = url.rsplit_once('/').unwrap();
    let cfg = base_config("").replace(&url, &format!("{base}/{db}"));
    assert!(
        cfg.contains(&db),
        "the connection points at the new database"
    );
    (admin, db, base.to_string(), cfg)
}

#[tokio::test]
async fn api_refuses_text_postgres_would_read_differently_under_a_database_default() {
    let (admin, db, base, cfg) = database_defaulting_to("standard_conforming_strings = off").await;
    let (in_db, conn) = tokio_postgres::connect(&format!("{base}/{db}"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    in_db
        .batch_execute("CREATE TABLE kept (id int); INSERT INTO kept VALUES (1)")
        .await
        .unwrap();
    let gw = spawn_gateway(&cfg, Backend::Sqlite).await;
    // One SELECT to the policy; a SELECT and a DROP to PostgreSQL with the database's default.
    let smuggled = "SELECT 'a\\', '; DROP TABLE kept; --'";
    let r = gw.query(AGENT, smuggled).await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    assert!(
        r.body
            .to_string()
            .contains("standard_conforming_strings = off"),
        "{:?}",
        r.body
    );
    let r = gw.query(AGENT, "SELECT count(*) FROM kept").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["rows"][0][0], "1", "{:?}", r.body);
    drop(in_db);
    drop_database(&admin, &db).await;
}

#[tokio::test]
async fn api_sessions_speak_utf8_whatever_the_database_default_encoding() {
    let (admin, db, _, cfg) = database_defaulting_to("client_encoding = 'SJIS'").await;
    let gw = spawn_gateway(&cfg, Backend::Sqlite).await;
    let r = gw.query(AGENT, "SELECT 'Grüße aus Köln' AS greeting").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["rows"][0][0], "Grüße aus Köln", "{:?}", r.body);
    drop_database(&admin, &db).await;
}

/// A wire listener whose holds outlast any test's approval steps.
const WIRE_LONG_HOLD: &str =
    "[wire]\nlisten = \"127.0.0.1:0\"\nallow_cleartext_without_tls = true\nhold_wait = 60\n";

/// Sends `sql` through the API as the agent and checks it is held, with a reason containing `why`.
async fn assert_held_because(gw: &Gateway, sql: &str, why: &str) {
    let r = gw.query(AGENT, sql).await;
    assert_eq!(r.status, 202, "{sql}: held, not run: {:?}", r.body);
    assert!(r.body.to_string().contains(why), "{sql}: {:?}", r.body);
}

/// Names for a row-function case: a table `people_…`, a log table `archive_log_…` the function writes
/// to, and the function `archive_…(people_…)`; `function` creates the function up front.
struct RowFunctionCase {
    db: tokio_postgres::Client,
    people: String,
    log: String,
    archive: String,
}

impl RowFunctionCase {
    async fn new(function: bool) -> Self {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let case = RowFunctionCase {
            db: direct().await,
            people: format!("people_{suffix}"),
            log: format!("archive_log_{suffix}"),
            archive: format!("archive_{suffix}"),
        };
        let RowFunctionCase { people, log, .. } = &case;
        case.db
            .batch_execute(&format!(
                "CREATE TABLE {people} (id int, name text); INSERT INTO {people} VALUES (1, 'Ann');
                 CREATE TABLE {log} (id int);"
            ))
            .await
            .unwrap();
        if function {
            case.db.batch_execute(&case.create()).await.unwrap();
        }
        case
    }

    /// A DBA's function that writes, callable as `p.archive_…` on a row of `people_…`.
    fn create(&self) -> String {
        let RowFunctionCase {
            people,
            log,
            archive,
            ..
        } = self;
        format!(
            "CREATE FUNCTION {archive}(p {people}) RETURNS int LANGUAGE sql AS 'INSERT INTO {log} VALUES (1) RETURNING 1'"
        )
    }

    /// Creates the function through the gateway's API: held, approved by two reviewers, re-sent.
    async fn create_through(&self, gw: &Gateway) {
        let create = self.create();
        let held = gw.query(AGENT, &create).await;
        assert_eq!(held.status, 202, "{:?}", held.body);
        let id = id_of(&held);
        for reviewer in [BOB, CAROL] {
            assert_eq!(gw.vote(reviewer, &id, "approve").await.status, 200);
        }
        let r = gw.query(AGENT, &create).await;
        assert_eq!(
            r.status, 200,
            "the approved CREATE FUNCTION ran: {:?}",
            r.body
        );
    }

    /// The statement calling the function on a row by attribute notation.
    fn call(&self) -> String {
        format!("SELECT p.{} FROM {} p", self.archive, self.people)
    }

    /// Sends [`RowFunctionCase::call`] through the API: held, and the function did not run.
    async fn assert_call_held(&self, gw: &Gateway) {
        let r = gw.query(AGENT, &self.call()).await;
        assert_eq!(r.status, 202, "held, not run: {:?}", r.body);
        assert_eq!(self.writes().await, 0, "the function never ran");
    }

    /// How many times the function ran.
    async fn writes(&self) -> i64 {
        self.db
            .query_one(&format!("SELECT count(*) FROM {}", self.log), &[])
            .await
            .unwrap()
            .get(0)
    }

    async fn drop_all(self) {
        let RowFunctionCase {
            db,
            people,
            log,
            archive,
        } = self;
        db.batch_execute(&format!(
            "DROP FUNCTION IF EXISTS {archive}({people}); DROP TABLE {log}; DROP TABLE {people}"
        ))
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn a_database_function_called_on_a_row_by_attribute_notation_is_held() {
    let case = RowFunctionCase::new(true).await;
    let gw = spawn_gateway(&base_config(""), Backend::Sqlite).await;
    case.assert_call_held(&gw).await;
    // A plain qualified column still runs.
    let r = gw
        .query(AGENT, &format!("SELECT p.name FROM {} p", case.people))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(case.writes().await, 0, "the function never ran");
    case.drop_all().await;
}

#[tokio::test]
async fn a_row_function_created_through_the_gateway_is_recognised_at_once() {
    let case = RowFunctionCase::new(false).await;
    // The gateway starts before the function exists.
    let gw = spawn_gateway(&base_config(""), Backend::Sqlite).await;
    case.create_through(&gw).await;
    // The very next statement calling it on a row is judged as the call, not as a column.
    case.assert_call_held(&gw).await;
    case.drop_all().await;
}

#[tokio::test]
async fn a_wire_session_judges_a_statement_afresh_once_a_row_function_appears() {
    let case = RowFunctionCase::new(false).await;
    let gw = spawn_gateway(
        &base_config(
            "[wire]\nlisten = \"127.0.0.1:0\"\nallow_cleartext_without_tls = true\nhold_wait = 0.5\n",
        ),
        Backend::Sqlite,
    )
    .await;
    let client = agent_on_the_wire(&gw).await;
    let call = case.call();
    // No such function yet: a column reference, allowed, and PostgreSQL finds no such column. The
    // session remembers the verdict.
    let err = client.simple_query(&call).await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::UNDEFINED_COLUMN),
        "{err:?}"
    );
    // The function is created through the gateway (approved), which re-reads the list at once.
    case.create_through(&gw).await;
    // The same text on the same session is now a call to a function that writes: held, not run.
    let err = client.simple_query(&call).await.unwrap_err();
    let db = err.as_db_error().expect("a database error");
    assert!(
        db.message().contains("approval") || db.message().contains("held"),
        "held: {db:?}"
    );
    assert_eq!(case.writes().await, 0, "the function never ran");
    case.drop_all().await;
}

#[tokio::test]
async fn a_row_function_with_a_quoted_mixed_case_name_is_held_too() {
    let case = RowFunctionCase::new(false).await;
    let purge = format!("Purge_{}", case.archive);
    case.db
        .batch_execute(&format!(
            "CREATE FUNCTION \"{purge}\"(p {}) RETURNS int LANGUAGE sql AS 'INSERT INTO {} VALUES (1) RETURNING 1'",
            case.people, case.log
        ))
        .await
        .unwrap();
    let gw = spawn_gateway(&base_config(""), Backend::Sqlite).await;
    let r = gw
        .query(
            AGENT,
            &format!("SELECT p.\"{purge}\" FROM {} p", case.people),
        )
        .await;
    assert_eq!(r.status, 202, "held, not run: {:?}", r.body);
    assert_eq!(case.writes().await, 0, "the function never ran");
    case.db
        .batch_execute(&format!("DROP FUNCTION \"{purge}\"({})", case.people))
        .await
        .unwrap();
    case.drop_all().await;
}

#[tokio::test]
async fn code_reached_through_variadic_rows_internal_aliases_or_implicit_row_casts_is_held() {
    let (admin, db, base, cfg) = database_defaulting_to("application_name = 'row_paths'").await;
    let (in_db, conn) = tokio_postgres::connect(&format!("{base}/{db}"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    in_db
        .batch_execute(
            "CREATE TABLE people (id int, email text); INSERT INTO people VALUES (1, 'a@x.io');
             CREATE TABLE side_log (n int);
             CREATE SEQUENCE s1;
             CREATE FUNCTION arch(VARIADIC people[]) RETURNS int LANGUAGE sql
                 AS 'INSERT INTO side_log VALUES (1) RETURNING 1';
             CREATE FUNCTION imm_nextval(regclass, int) RETURNS bigint LANGUAGE internal IMMUTABLE STRICT
                 AS 'nextval_oid';
             CREATE OPERATOR public.= (leftarg = regclass, rightarg = int, function = imm_nextval);",
        )
        .await
        .unwrap();
    let writes = || async {
        (
            scalar_in::<i64>(&in_db, "SELECT count(*) FROM side_log").await,
            scalar_in::<bool>(&in_db, "SELECT is_called FROM s1").await,
        )
    };
    let gw = spawn_gateway(&cfg, Backend::Sqlite).await;
    // `p.arch` resolves to arch(VARIADIC people[]); `'s1'::regclass = 5` to the operator whose
    // internal function is nextval's code, declared IMMUTABLE.
    for sql in ["SELECT p.arch FROM people p", "SELECT 's1'::regclass = 5"] {
        let r = gw.query(AGENT, sql).await;
        assert_eq!(r.status, 202, "{sql}: held, not run: {:?}", r.body);
    }
    let r = gw.query(AGENT, "SELECT p.email FROM people p").await;
    assert_eq!(r.status, 200, "a column is still a column: {:?}", r.body);
    assert_eq!(writes().await, (0, false), "nothing ran");
    drop(gw);
    // An implicit cast from the row type lets `p.reverse` call reverse(text) on the whole row.
    in_db
        .batch_execute("CREATE CAST (people AS text) WITH INOUT AS IMPLICIT")
        .await
        .unwrap();
    let gw = spawn_gateway(&cfg, Backend::Sqlite).await;
    assert_held_because(
        &gw,
        "SELECT p.reverse FROM people p",
        "implicit cast from the row type",
    )
    .await;
    drop(gw);
    drop(in_db);
    drop_database(&admin, &db).await;
}

#[tokio::test]
async fn a_cursor_read_waiting_on_flush_is_held_approved_and_read_on_inside_a_transaction() {
    use countersign_tests::transcript::{Login, RawConn};
    let gw = spawn_gateway(&base_config(WIRE_LONG_HOLD), Backend::Sqlite).await;
    let seq = table_name("cursor_seq");
    direct()
        .await
        .batch_execute(&format!("CREATE SEQUENCE {seq}"))
        .await
        .unwrap();
    let login = Login {
        addr: gw.wire.expect("wire listener configured").to_string(),
        user: "agent".into(),
        database: "local".into(),
        password: Some(AGENT.into()),
        options: None,
    };
    let mut conn = RawConn::connect(&login, None).await.unwrap();
    conn.query("BEGIN").await.unwrap();
    // pg-cursor's read: no Sync until the client has its rows, which used to wait for good.
    let sql = format!("SELECT g, nextval('{seq}') FROM generate_series(1, 5) g");
    conn.cursor_read(&sql, 2).await.unwrap();
    let notice = conn.read_until(b"N").await.unwrap();
    assert!(
        notice.last().unwrap().contains("held for approval"),
        "{notice:?}"
    );
    let id = pending_request(&gw.base, &seq).await;
    for reviewer in [BOB, CAROL] {
        assert_eq!(gw.vote(reviewer, &id, "approve").await.status, 200);
    }
    let first = conn.read_until(b"s").await.unwrap();
    assert_eq!(
        first.iter().filter(|l| l.starts_with("DataRow")).count(),
        2,
        "{first:?}"
    );
    // The portal survived the gateway's Sync: the cursor reads on.
    conn.cursor_fetch(2).await.unwrap();
    let second = conn.read_until(b"s").await.unwrap();
    assert!(second[0].starts_with("DataRow [\"3\""), "{second:?}");
    conn.cursor_fetch(0).await.unwrap();
    let rest = conn.read_until(b"C").await.unwrap();
    assert!(rest.last().unwrap().contains("SELECT 1"), "{rest:?}");
    conn.sync().await.unwrap();
    conn.read_until(b"Z").await.unwrap();
    let commit = conn.query("COMMIT").await.unwrap();
    assert!(commit.iter().any(|l| l.contains("COMMIT")), "{commit:?}");

    // Outside a transaction a denial answers the waiting cursor read; the session goes on.
    let sql = format!("SELECT g, nextval('{seq}') FROM generate_series(1, 3) g");
    conn.cursor_read(&sql, 2).await.unwrap();
    conn.read_until(b"N").await.unwrap();
    let id = pending_request(&gw.base, "generate_series(1, 3)").await;
    assert_eq!(gw.vote(BOB, &id, "deny").await.status, 200);
    let denied = conn.read_until(b"E").await.unwrap();
    assert!(denied.last().unwrap().contains("denied"), "{denied:?}");
    conn.sync().await.unwrap();
    conn.read_until(b"Z").await.unwrap();
    let after = conn.query("SELECT 1").await.unwrap();
    assert!(after.iter().any(|l| l.contains("\"1\"")), "{after:?}");
    conn.close().await;
}

#[tokio::test]
async fn a_function_a_session_just_created_is_not_called_unreviewed_before_the_lists_know_it() {
    // A rule lets the agent create functions; calling one on a row (attribute notation) needs review.
    let gw = spawn_gateway(
        &base_config(
            "[wire]\nlisten = \"127.0.0.1:0\"\nallow_cleartext_without_tls = true\nhold_wait = 1\n\n\
             [[policy.rules]]\nname = \"functions\"\nkinds = [\"CREATE FUNCTION\"]\naction = \"allow\"\n",
        ),
        Backend::Sqlite,
    )
    .await;
    let t = make_table("ddl_race").await;
    direct()
        .await
        .batch_execute(&format!("INSERT INTO {t} VALUES (1, 'a')"))
        .await
        .unwrap();
    let client = agent_on_the_wire(&gw).await;
    let held = |sql: String| {
        let client = &client;
        async move {
            let err = client.simple_query(&sql).await.unwrap_err();
            let db = err.as_db_error().expect("PostgreSQL-style error");
            assert_eq!(db.code().code(), "42501", "{sql}: {}", db.message());
            assert!(
                db.message().contains("stays pending"),
                "{sql}: {}",
                db.message()
            );
        }
    };
    // Created and called at once, outside a transaction: the lists are read before the call is judged.
    let f = format!("{t}_arch");
    client
        .batch_execute(&format!(
            "CREATE FUNCTION {f}({t}) RETURNS int LANGUAGE sql AS $$ SELECT 1 $$"
        ))
        .await
        .unwrap();
    held(format!("SELECT x.{f} FROM {t} x")).await;
    // Inside a transaction the catalog reader cannot see it yet: everything after it is reviewed.
    let g = format!("{t}_arch2");
    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute(&format!(
            "CREATE FUNCTION {g}({t}) RETURNS int LANGUAGE sql AS $$ SELECT 2 $$"
        ))
        .await
        .unwrap();
    held(format!("SELECT x.{g} FROM {t} x")).await;
    client.batch_execute("ROLLBACK").await.unwrap();
    // The session goes on: a plain read passes again.
    let rows = client
        .simple_query(&format!("SELECT v FROM {t}"))
        .await
        .unwrap();
    assert!(rows
        .iter()
        .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("a"))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_an_approved_statement_created_is_known_before_the_sessions_next_statement() {
    let gw = spawn_gateway(&base_config(WIRE_LONG_HOLD), Backend::Sqlite).await;
    let t = make_table("approved_ddl").await;
    let (maker, made) = (format!("{t}_maker"), format!("{t}_made"));
    direct()
        .await
        .batch_execute(&format!(
            "INSERT INTO {t} VALUES (1, 'a');
             CREATE FUNCTION {maker}() RETURNS int LANGUAGE plpgsql AS $$
             BEGIN
               EXECUTE 'CREATE FUNCTION {made}({t}) RETURNS int LANGUAGE sql AS ''SELECT 3''';
               RETURN 1;
             END $$;"
        ))
        .await
        .unwrap();
    let client = std::sync::Arc::new(agent_on_the_wire(&gw).await);
    // The approved call creates a function; its tag (SELECT 1) says nothing of that.
    let running = {
        let client = client.clone();
        let sql = format!("SELECT {maker}()");
        tokio::spawn(async move { client.simple_query(&sql).await })
    };
    let id = pending_request(&gw.base, &maker).await;
    for reviewer in [BOB, CAROL] {
        assert_eq!(gw.vote(reviewer, &id, "approve").await.status, 200);
    }
    running.await.unwrap().expect("the approved call ran");
    // The session's next statement is judged with lists read after it: calling the new function on
    // a row is held, not run.
    let calling = {
        let client = client.clone();
        let sql = format!("SELECT x.{made} FROM {t} x");
        tokio::spawn(async move { client.simple_query(&sql).await })
    };
    pending_request(&gw.base, &format!("x.{made}")).await;
    calling.abort();
}

#[tokio::test]
async fn a_session_postgresql_terminates_gets_its_fatal_and_no_second_one_from_the_gateway() {
    use countersign_tests::transcript::{Login, RawConn};
    let gw = spawn_gateway(&base_config(WIRE_LONG_HOLD), Backend::Sqlite).await;
    let app = table_name("terminated");
    let login = Login {
        addr: gw.wire.expect("wire listener configured").to_string(),
        user: "agent".into(),
        database: "local".into(),
        password: Some(AGENT.into()),
        options: Some(format!("-c application_name={app}")),
    };
    let mut conn = RawConn::connect(&login, None).await.unwrap();
    let terminated: Vec<bool> = direct()
        .await
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(terminated, [true], "one upstream session to terminate");
    let lines = conn.read_to_close().await;
    let errors: Vec<&String> = lines.iter().filter(|l| l.starts_with("Error")).collect();
    assert_eq!(errors.len(), 1, "{lines:?}");
    assert!(errors[0].contains("57P01"), "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_copy_from_stdin_whose_client_leaves_is_failed_upstream_not_left_waiting() {
    use futures::SinkExt;
    let gw = spawn_gateway(&base_config(WIRE_LONG_HOLD), Backend::Sqlite).await;
    let table = make_table("copy_left").await;
    let (client, conn) = agent_wire_session(gw.wire.expect("wire listener configured")).await;
    let sql = format!("COPY {table} (id, v) FROM STDIN");
    let copying = {
        let sql = sql.clone();
        tokio::spawn(async move {
            let sink = client.copy_in::<_, bytes::Bytes>(&sql).await.unwrap();
            futures::pin_mut!(sink);
            sink.send(bytes::Bytes::from_static(b"1\ta\n2\tb\n"))
                .await
                .unwrap();
            // The client stops here, mid-COPY, and keeps the connection until it is dropped.
            std::future::pending::<()>().await;
            drop(client);
        })
    };
    let id = pending_request(&gw.base, &sql).await;
    for reviewer in [BOB, CAROL] {
        assert_eq!(gw.vote(reviewer, &id, "approve").await.status, 200);
    }
    // The COPY is running upstream, waiting for data.
    let running = || async {
        direct_scalar::<i64>(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE query = '{sql}'"
        ))
        .await
    };
    for _ in 0..100 {
        if running().await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(running().await, 1, "the approved COPY started");
    // The client's connection goes away without CopyDone or CopyFail: the socket closes first (dropping
    // tokio-postgres's sink before would have it send a CopyFail of its own).
    conn.abort();
    let _ = conn.await;
    copying.abort();
    let mut status = json!(null);
    // Up to 30 s: on a loaded machine the session may first finish a catalog read.
    for _ in 0..300 {
        status = gw.request(BOB, &id).await.body["status"].clone();
        if status != json!("executing") && status != json!("approved") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status,
        json!("failed"),
        "recorded as failed, not left executing"
    );
    let request = gw.request(BOB, &id).await.body.to_string();
    assert!(request.contains("disconnected"), "{request}");
    // The upstream session answered the CopyFail (that is how the request became failed) and is
    // closing; pg_stat_activity lists it, with its last query, until it is gone.
    for _ in 0..50 {
        if running().await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        running().await,
        0,
        "no upstream session still waits for COPY data"
    );
    assert_eq!(count(&table).await, 0, "none of the rows were committed");
}

/// Takes the PostgreSQL store database at `store_url` away from the gateway (no new connections, the
/// existing ones terminated), or gives it back. The cluster itself keeps running.
async fn store_reachable(store_url: &str, reachable: bool) {
    let db = store_url.rsplit('/').next().expect("a database name");
    let admin = direct().await;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS {reachable}"
        ))
        .await
        .unwrap();
    if !reachable {
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                &[&db],
            )
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_wire_statement_whose_store_goes_away_is_told_so_and_runs_once_after_it_returns() {
    let gw = spawn_gateway(&base_config(WIRE_LONG_HOLD), Backend::Postgres).await;
    let table = make_table("store_outage").await;
    direct()
        .await
        .batch_execute(&format!("INSERT INTO {table} VALUES (1, 'a')"))
        .await
        .unwrap();
    let client = agent_on_the_wire(&gw).await;
    let client = std::sync::Arc::new(client);
    let sql = format!("DELETE FROM {table} WHERE id = 1");
    let held = {
        let (client, sql) = (client.clone(), sql.clone());
        tokio::spawn(async move { client.simple_query(&sql).await })
    };
    let id = pending_request(&gw.base, &sql).await;

    store_reachable(&gw.store_url, false).await;
    let answer = tokio::time::timeout(Duration::from_secs(15), held).await;
    store_reachable(&gw.store_url, true).await;

    // Told at once that the store is the problem, not that reviewers took the whole hold_wait.
    let err = answer
        .expect("the held client is answered while the store is away, not after hold_wait")
        .unwrap()
        .unwrap_err();
    let db = err.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "58000", "{db:?}");
    assert!(db.message().contains("state store"), "{db:?}");
    assert!(!db.message().contains("after 60s"), "{db:?}");
    assert_eq!(count(&table).await, 1, "nothing ran");

    // The gateway recovers by itself: the request is intact, and once approved it runs once.
    let mut votes = None;
    for _ in 0..100 {
        let r = gw.vote(BOB, &id, "approve").await;
        if r.status == 200 {
            votes = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(votes.is_some(), "the store came back for votes");
    assert_eq!(gw.vote(CAROL, &id, "approve").await.status, 200);
    let rows = client
        .simple_query(&sql)
        .await
        .expect("the approved statement runs");
    assert!(
        rows.iter()
            .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::CommandComplete(1))),
        "{rows:?}"
    );
    assert_eq!(count(&table).await, 0);
    // The result reaches the store on the recorder's next tick.
    let mut status = json!(null);
    for _ in 0..50 {
        status = gw.request(BOB, &id).await.body["status"].clone();
        if status != json!("executing") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, json!("executed"), "exactly one execution");
}

#[tokio::test]
async fn an_agent_reads_its_own_requests_but_not_another_agents() {
    let other = "test-other-agent-token";
    let extra = format!(
        "[[identity.static_tokens]]\nname = \"other-agent\"\nsha256 = \"{}\"\nkind = \"workload\"\n",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(other.as_bytes()))
    );
    let gw = spawn_gateway(&base_config(&extra), Backend::Sqlite).await;
    let t = make_table("cs_read_own").await;
    let held = gw
        .query(AGENT, &format!("DELETE FROM {t} WHERE id = 7"))
        .await;
    assert_eq!(held.status, 202, "{:?}", held.body);
    let id = id_of(&held);

    let list = |token: &'static str| {
        let gw = &gw;
        async move {
            let r = gw
                .http
                .get(format!("{}/v1/requests", gw.base))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
            r.json::<serde_json::Value>().await.unwrap()["requests"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|r| r["id"].as_str().map(str::to_owned))
                .collect::<Vec<_>>()
        }
    };
    // The requesting agent and a reviewer see the request.
    assert!(list(AGENT).await.contains(&id));
    assert!(list(BOB).await.contains(&id));
    assert_eq!(gw.request(AGENT, &id).await.status, 200);
    assert_eq!(gw.request(BOB, &id).await.status, 200);
    // Another agent neither lists nor reads it, and is told no more than for an unknown id.
    assert!(!list(other).await.contains(&id));
    let r = gw.request(other, &id).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (404, Some("not_found"))
    );
    let unknown = gw
        .request(other, "00000000-0000-7000-8000-000000000000")
        .await;
    assert_eq!(
        r.body["message"].as_str().map(|m| m.replace(&id, "ID")),
        unknown.body["message"]
            .as_str()
            .map(|m| m.replace("00000000-0000-7000-8000-000000000000", "ID"))
    );
}

#[tokio::test]
async fn reads_that_would_run_user_code_through_types_and_operators_are_held() {
    // Casts, domain CHECKs and operators run functions a statement's text never names. A database of
    // its own: a `public.=` there applies to every session in it.
    let (admin, db, base, in_db) = own_database("cs_typecode").await;
    in_db
        .batch_execute(
            "CREATE TABLE log (v text);
             CREATE FUNCTION public.noted(v int) RETURNS bool LANGUAGE plpgsql
               AS $$BEGIN INSERT INTO log VALUES ('check'); RETURN true; END$$;
             CREATE DOMAIN noted_int AS int CHECK (public.noted(VALUE));
             CREATE TYPE mood AS ENUM ('calm', 'busy');
             CREATE FUNCTION public.mood_text(m mood) RETURNS text LANGUAGE plpgsql
               AS $$BEGIN INSERT INTO log VALUES ('cast'); RETURN m::name::text; END$$;
             CREATE CAST (mood AS text) WITH FUNCTION public.mood_text(mood);
             CREATE TABLE feelings (m mood);
             INSERT INTO feelings VALUES ('calm');
             CREATE TABLE plain_t (n int);
             CREATE FUNCTION public.int_text_eq(a int, b text) RETURNS bool LANGUAGE plpgsql
               AS $$BEGIN INSERT INTO log VALUES ('op'); RETURN true; END$$;
             CREATE OPERATOR public.= (LEFTARG = int, RIGHTARG = text, FUNCTION = public.int_text_eq);
             CREATE TABLE guarded (n int);
             ALTER TABLE guarded ENABLE ROW LEVEL SECURITY;
             CREATE POLICY watched ON guarded USING (public.noted(n));
             CREATE FUNCTION public.write_log(w text) RETURNS void LANGUAGE plpgsql
               AS $$BEGIN INSERT INTO log VALUES (w); END$$;
             CREATE FUNCTION public.evil_cmp(a int4, b int4) RETURNS int LANGUAGE plpgsql IMMUTABLE
               AS $$BEGIN PERFORM public.write_log('cmp'); RETURN btint4cmp(a, b); END$$;
             CREATE OPERATOR CLASS evil_ops FOR TYPE int4 USING btree AS
               OPERATOR 1 <, OPERATOR 2 <=, OPERATOR 3 =, OPERATOR 4 >=, OPERATOR 5 >,
               FUNCTION 1 public.evil_cmp(int4, int4);
             CREATE TABLE parted (k int) PARTITION BY RANGE (k evil_ops);
             CREATE TABLE parted_low PARTITION OF parted FOR VALUES FROM (0) TO (10);
             CREATE EXTENSION IF NOT EXISTS file_fdw;
             CREATE SERVER files FOREIGN DATA WRAPPER file_fdw;
             CREATE FOREIGN TABLE piped (line text) SERVER files OPTIONS (program 'echo hi');",
        )
        .await
        .unwrap();
    // Setting up the operator class ran its support function already.
    in_db.batch_execute("TRUNCATE log").await.unwrap();
    let writes = || log_rows(&in_db);
    let cfg = own_and_shared_config(&base, &db);
    let gw = spawn_gateway(&cfg, Backend::Sqlite).await;

    for (read, why) in [
        ("SELECT 5::noted_int", "names type noted_int"),
        ("SELECT CAST(7 AS noted_int)", "names type noted_int"),
        (
            "SELECT m::text FROM feelings",
            "reads feelings, whose column m",
        ),
        ("SELECT 'calm'::mood::text", "names type mood"),
        ("SELECT 1 = 'x'::text", "operator = may resolve"),
        (
            "SELECT n FROM plain_t WHERE n IN (1, 2)",
            "operator = may resolve",
        ),
        ("SELECT count(*) FROM guarded", "row-level security policy"),
        (
            "SELECT * FROM parted WHERE k < 5",
            "operator class evil_ops",
        ),
        (
            "SELECT * FROM piped",
            "foreign table: reading it runs its foreign-data wrapper (a program",
        ),
        ("EXPLAIN INSERT INTO plain_t VALUES (1)", "column defaults"),
    ] {
        let r = gw.query(AGENT, read).await;
        assert_eq!(r.status, 202, "{read} held, not run: {:?}", r.body);
        assert!(r.body.to_string().contains(why), "{read}: {:?}", r.body);
    }
    assert_eq!(writes().await, 0, "no user code ran through the gateway");
    // What compares nothing and names no such type reads as before.
    let r = gw.query(AGENT, "SELECT n + 1 FROM plain_t").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // The same checks leave a database without such objects alone.
    let r = gw
        .post(
            AGENT,
            "/v1/connections/plain/query",
            json!({ "sql": "SELECT 1 WHERE 1 IN (1, 2) AND 2 = 2" }),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // Each held read is real: sent directly, they run the user code.
    for read in [
        "SELECT 5::noted_int",
        "SELECT m::text FROM feelings",
        "SELECT 1 = 'x'::text",
        "SELECT * FROM parted WHERE k < 5",
    ] {
        let before = writes().await;
        in_db.batch_execute(read).await.unwrap();
        assert!(writes().await > before, "{read} runs user code directly");
    }
    // An implicit cast between built-in types applies wherever the types meet, with no name in the
    // text: while one runs user code, every statement on the database is held.
    in_db
        .batch_execute(
            "CREATE FUNCTION public.evil_date(n int4) RETURNS date LANGUAGE plpgsql
               AS $$BEGIN INSERT INTO log VALUES ('cast'); RETURN DATE '2000-01-01' + n; END$$;
             CREATE CAST (int4 AS date) WITH FUNCTION public.evil_date(int4) AS IMPLICIT;",
        )
        .await
        .unwrap();
    let gw2 = spawn_gateway(&cfg, Backend::Sqlite).await;
    assert_held_because(
        &gw2,
        "SELECT date_part('year', 5)",
        "implicit cast from integer to date",
    )
    .await;
    drop(in_db);
    drop_database(&admin, &db).await;
}

#[tokio::test]
async fn code_reached_through_table_commands_views_inheritance_and_containing_types_is_held() {
    // What the database defines reaches a statement indirectly: `TABLE v` inside a query, a view over
    // a shadowed built-in or an operator spelled `=`, a quoted mixed-case view, the parent of a foreign
    // table that runs a program, a composite or array type holding a checked domain, a domain over a
    // row type, a built-in type written by its SQL name, NOT LIKE.
    let (admin, db, base, in_db) = own_database("cs_indirect").await;
    in_db
        .batch_execute(
            "CREATE TABLE log (v text);
             CREATE FUNCTION side(x anyelement) RETURNS boolean LANGUAGE plpgsql
               AS $$BEGIN INSERT INTO log VALUES ('side:' || x::text); RETURN true; END$$;
             CREATE VIEW v_side AS SELECT side(1) AS x;
             CREATE VIEW \"UpperV\" AS SELECT side(4) AS x;
             CREATE VIEW \"my.v\" AS SELECT side(3) AS x;
             CREATE FUNCTION public.lower(x int) RETURNS text LANGUAGE plpgsql
               AS $$BEGIN INSERT INTO log VALUES ('lower'); RETURN x::text; END$$;
             CREATE VIEW v_shadow AS SELECT lower(1) AS x;
             CREATE DOMAIN d_chk AS int CHECK (side(VALUE));
             CREATE TYPE comp AS (a d_chk);
             CREATE TABLE people (name text);
             INSERT INTO people VALUES ('ann');
             CREATE DOMAIN pdom AS people;
             CREATE FUNCTION arch3(x pdom) RETURNS text LANGUAGE plpgsql
               AS $$BEGIN INSERT INTO log VALUES ('arch3'); RETURN 'x'; END$$;
             CREATE FUNCTION b2i(b boolean) RETURNS bigint LANGUAGE plpgsql
               AS $$BEGIN INSERT INTO log VALUES ('b2i'); RETURN 1; END$$;
             CREATE CAST (boolean AS bigint) WITH FUNCTION b2i(boolean);
             CREATE FUNCTION nlk(a text, b int) RETURNS boolean LANGUAGE plpgsql
               AS $$BEGIN INSERT INTO log VALUES ('notlike'); RETURN true; END$$;
             CREATE OPERATOR public.!~~ (LEFTARG = text, RIGHTARG = int, FUNCTION = nlk);
             CREATE EXTENSION IF NOT EXISTS file_fdw;
             CREATE SERVER files FOREIGN DATA WRAPPER file_fdw;
             CREATE TABLE parent_t (x text);
             CREATE FOREIGN TABLE child_ft () INHERITS (parent_t) SERVER files
               OPTIONS (program 'echo hi');
             CREATE VIEW v_ft AS SELECT * FROM child_ft;
             CREATE FUNCTION eqit(a int, b text) RETURNS boolean LANGUAGE plpgsql
               AS $$BEGIN INSERT INTO log VALUES ('eqit'); RETURN true; END$$;
             CREATE OPERATOR public.= (LEFTARG = int, RIGHTARG = text, FUNCTION = eqit);
             CREATE VIEW v_op AS SELECT 1 AS n WHERE 1 = 'x'::text;",
        )
        .await
        .unwrap();
    let writes = || log_rows(&in_db);
    let cfg = own_and_shared_config(&base, &db);
    let gw = spawn_gateway(&cfg, Backend::Sqlite).await;
    for read in [
        "SELECT * FROM (TABLE v_side) s",
        "SELECT false UNION TABLE v_side",
        "SELECT EXISTS (TABLE v_side)",
        "WITH x AS (TABLE v_side) SELECT * FROM x",
        "SELECT * FROM v_shadow",
        "SELECT * FROM \"UpperV\"",
        "SELECT * FROM \"my.v\"",
        "SELECT * FROM parent_t",
        "SELECT * FROM v_ft",
        "SELECT row(7)::comp",
        "SELECT '{8}'::_d_chk",
        "SELECT '(9)'::comp",
        "SELECT p.arch3 FROM people p",
        "SELECT true::bigint",
        "SELECT 'a' NOT LIKE 5",
        "SELECT * FROM v_op",
    ] {
        let r = gw.query(AGENT, read).await;
        assert_eq!(r.status, 202, "{read} held, not run: {:?}", r.body);
    }
    assert_eq!(writes().await, 0, "no user code ran through the gateway");
    // What reads none of it is still forwarded.
    let r = gw.query(AGENT, "SELECT name FROM people").await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // Each held read is real: sent directly, it runs the user code (or the program).
    for read in [
        "SELECT * FROM (TABLE v_side) s",
        "SELECT * FROM v_shadow",
        "SELECT * FROM \"UpperV\"",
        "SELECT '(9)'::comp",
        "SELECT p.arch3 FROM people p",
        "SELECT true::bigint",
        "SELECT 'a' NOT LIKE 5",
        "SELECT * FROM v_op",
    ] {
        let before = writes().await;
        in_db.batch_execute(read).await.unwrap();
        assert!(writes().await > before, "{read} runs user code directly");
    }
    drop(in_db);
    drop_database(&admin, &db).await;
}

#[tokio::test]
async fn code_nested_in_types_partitions_checks_and_pg_catalog_is_held() {
    // Types that run code through any depth of domains, arrays, row types and ranges; a CHECK using
    // what the database defines; an index operator class on a grandchild partition; functions a
    // superuser planted in pg_catalog; a foreign table of another server.
    let (admin, db, base, in_db) = own_database("cs_nested").await;
    in_db
        .batch_execute(&format!(
            "CREATE TABLE log (v text);
             CREATE FUNCTION side(x anyelement) RETURNS boolean LANGUAGE plpgsql
               AS $$BEGIN INSERT INTO public.log VALUES (x::text); RETURN true; END$$;
             CREATE DOMAIN d1 AS int CHECK (side(VALUE));
             CREATE DOMAIN d2 AS d1; CREATE DOMAIN d3 AS d2;
             CREATE TYPE c1 AS (a d1); CREATE TYPE c2 AS (b c1);
             CREATE TYPE r1 AS RANGE (subtype = d1);
             CREATE DOMAIN da AS d1[];
             CREATE TYPE mood AS ENUM ('a', 'b');
             CREATE FUNCTION mood_eq(mood, mood) RETURNS bool LANGUAGE plpgsql
               AS $$BEGIN INSERT INTO public.log VALUES ('mood_eq'); RETURN $1::text = $2::text; END$$;
             CREATE OPERATOR = (LEFTARG = mood, RIGHTARG = mood, FUNCTION = mood_eq);
             CREATE FUNCTION mood_json(mood) RETURNS json LANGUAGE plpgsql
               AS $$BEGIN INSERT INTO public.log VALUES ('mood_json'); RETURN to_json($1::text); END$$;
             CREATE CAST (mood AS json) WITH FUNCTION mood_json(mood);
             CREATE DOMAIN dm AS mood; CREATE DOMAIN dm2 AS dm;
             CREATE TABLE t_dm2 (c dm2); INSERT INTO t_dm2 VALUES ('a');
             CREATE TYPE cm AS (m mood); CREATE TABLE tcm (c cm); INSERT INTO tcm VALUES (row('a'));
             CREATE FUNCTION int_to_json(int4) RETURNS json LANGUAGE plpgsql
               AS $$BEGIN INSERT INTO public.log VALUES ('int_to_json'); RETURN to_json($1::text); END$$;
             CREATE CAST (int4 AS json) WITH FUNCTION int_to_json(int4);
             CREATE DOMAIN dj AS json;
             CREATE FUNCTION public.length(int) RETURNS int LANGUAGE plpgsql
               AS $$BEGIN INSERT INTO public.log VALUES ('shadow_length'); RETURN 1; END$$;
             CREATE DOMAIN d5 AS int CHECK (length(VALUE) > 0);
             CREATE FUNCTION pg_catalog.upper(int4) RETURNS text LANGUAGE plpgsql VOLATILE
               AS $$BEGIN INSERT INTO public.log VALUES ('pgc_upper'); RETURN 'x'; END$$;
             CREATE FUNCTION pg_catalog.length(int4, int4) RETURNS int LANGUAGE plpgsql VOLATILE
               AS $$BEGIN INSERT INTO public.log VALUES ('pgc_length'); RETURN 1; END$$;
             CREATE FUNCTION my_cmp(int4, int4) RETURNS int LANGUAGE plpgsql IMMUTABLE
               AS $$BEGIN PERFORM public.side('my_cmp'::text); RETURN btint4cmp($1, $2); END$$;
             CREATE OPERATOR CLASS my_int_ops FOR TYPE int4 USING btree AS OPERATOR 1 <, OPERATOR 2 <=,
               OPERATOR 3 =, OPERATOR 4 >=, OPERATOR 5 >, FUNCTION 1 my_cmp(int4, int4);
             CREATE TABLE proot (k int4, p int) PARTITION BY LIST (p);
             CREATE TABLE pmid PARTITION OF proot FOR VALUES IN (1) PARTITION BY LIST (p);
             CREATE TABLE pleaf PARTITION OF pmid FOR VALUES IN (1);
             CREATE INDEX ON pleaf (k my_int_ops);
             CREATE EXTENSION IF NOT EXISTS postgres_fdw;
             CREATE SERVER loop_srv FOREIGN DATA WRAPPER postgres_fdw
               OPTIONS (host '127.0.0.1', port '5432', dbname '{db}');
             CREATE USER MAPPING FOR CURRENT_USER SERVER loop_srv OPTIONS (user 'postgres');
             CREATE VIEW v_side AS SELECT side('via_fdw'::text) AS s;
             CREATE FOREIGN TABLE ft_side (s boolean) SERVER loop_srv OPTIONS (table_name 'v_side');"
        ))
        .await
        .unwrap();
    in_db.batch_execute("TRUNCATE log").await.unwrap();
    let writes = || log_rows(&in_db);
    let cfg = own_and_shared_config(&base, &db);
    let gw = spawn_gateway(&cfg, Backend::Sqlite).await;
    let held = [
        "SELECT 1::d3",
        "SELECT '(\"(1)\")'::c2",
        "SELECT '[1,2]'::r1",
        "SELECT '{[1,2]}'::r1_multirange",
        "SELECT '{1}'::da",
        "SELECT 'a'::dm2 = 'a'::dm2",
        "SELECT * FROM t_dm2 WHERE c = c",
        "SELECT to_json(t) FROM tcm t",
        "SELECT 1::dj",
        "SELECT 1::d5",
        "SELECT upper(1)",
        "SELECT pg_catalog.length(1, 2)",
        "SELECT * FROM proot WHERE k = 5",
        "SELECT * FROM ft_side",
    ];
    for read in held {
        let r = gw.query(AGENT, read).await;
        assert_eq!(r.status, 202, "{read} held, not run: {:?}", r.body);
    }
    assert_eq!(writes().await, 0, "no user code ran through the gateway");
    // (upper and length have planted namesakes here, so their calls are held; lower has none.)
    let r = gw.query(AGENT, "SELECT lower('A')").await;
    assert_eq!(r.status, 200, "built-ins still read: {:?}", r.body);
    // Each held read is real: sent directly, it runs the user code.
    for read in held.iter().filter(|r| !r.contains("proot")) {
        let before = writes().await;
        in_db.batch_execute(read).await.unwrap();
        assert!(writes().await > before, "{read} runs user code directly");
    }
    drop(in_db);
    drop_database(&admin, &db).await;
}

#[tokio::test]
async fn reads_whose_planning_runs_user_code_in_stored_expressions_are_held() {
    // The planner folds constant calls of immutable functions in a table's index expressions and
    // predicates, extended statistics, inheritance children's CHECKs and partition keys while planning
    // any read; an immutable PL/pgSQL function may call a volatile writer. No function is in the text.
    let (admin, db, base, in_db) = own_database("cs_planned").await;
    in_db
        .batch_execute(
            "CREATE TABLE log (v text);
             CREATE FUNCTION side() RETURNS int LANGUAGE plpgsql VOLATILE
               AS $$BEGIN INSERT INTO public.log VALUES ('side'); RETURN 1; END$$;
             CREATE FUNCTION wrapped() RETURNS int LANGUAGE plpgsql IMMUTABLE
               AS $$BEGIN RETURN public.side(); END$$;
             CREATE TABLE t_stx (id int, amount int);
             CREATE STATISTICS t_stx_s ON (amount + wrapped()), id FROM t_stx;
             CREATE TABLE t_expr (id int); CREATE INDEX ON t_expr ((id + wrapped()));
             CREATE TABLE t_pred (id int); CREATE INDEX ON t_pred (id) WHERE wrapped() > 0;
             CREATE TABLE t_key (id int) PARTITION BY RANGE ((id + wrapped()));
             CREATE TABLE t_key_1 PARTITION OF t_key FOR VALUES FROM (0) TO (100);
             CREATE TABLE t_parent (id int);
             CREATE TABLE t_child (CHECK (id > wrapped())) INHERITS (t_parent);
             CREATE TABLE t_fine (id int, v text); CREATE INDEX ON t_fine (lower(v)) WHERE id > 0;
             CREATE STATISTICS t_fine_s ON (id + 1), v FROM t_fine;",
        )
        .await
        .unwrap();
    in_db.batch_execute("TRUNCATE log").await.unwrap();
    let cfg = own_and_shared_config(&base, &db);
    let gw = spawn_gateway(&cfg, Backend::Sqlite).await;
    for (read, why) in [
        (
            "SELECT * FROM t_stx",
            "statistics object t_stx_s calls public.wrapped",
        ),
        ("SELECT * FROM t_expr", "calls public.wrapped"),
        ("SELECT * FROM t_pred", "calls public.wrapped"),
        ("SELECT * FROM t_key", "partition key calls public.wrapped"),
        (
            "SELECT * FROM t_key_1",
            "partition key calls public.wrapped",
        ),
        (
            "SELECT * FROM t_parent WHERE id = 5",
            "constraint t_child_id_check calls public.wrapped",
        ),
        (
            "SELECT * FROM t_child",
            "constraint t_child_id_check calls public.wrapped",
        ),
    ] {
        assert_held_because(&gw, read, why).await;
    }
    assert_eq!(
        log_rows(&in_db).await,
        0,
        "no user code ran through the gateway"
    );
    // Expressions over built-ins only are no reason to hold a read.
    let r = gw.query(AGENT, "SELECT * FROM t_fine").await;
    assert_eq!(
        r.status, 200,
        "a table indexed by built-ins reads: {:?}",
        r.body
    );
    // The held reads are real: sent directly, the statistics read runs the writer while planning.
    in_db.batch_execute("SELECT * FROM t_stx").await.unwrap();
    assert!(
        log_rows(&in_db).await > 0,
        "planning the read ran user code"
    );
    drop(in_db);
    drop_database(&admin, &db).await;
}

#[tokio::test]
async fn a_user_function_shadowing_a_vetted_name_is_held_and_does_not_run() {
    // A database of its own: a `public.length` there captures `length(…)` for every session in it, so
    // it must not be the database parallel tests use.
    let (admin, db, base, in_db) = own_database("cs_shadow").await;
    // Other argument types than the built-ins', so PostgreSQL prefers these with pg_catalog first in
    // search_path (the default).
    in_db
        .batch_execute(
            "CREATE TABLE log (v text);
             CREATE FUNCTION public.length(x int) RETURNS int LANGUAGE plpgsql
               AS $$BEGIN INSERT INTO log VALUES ('length'); RETURN 1; END$$;
             CREATE FUNCTION public.substring(a int, b int, c int) RETURNS int LANGUAGE plpgsql
               AS $$BEGIN INSERT INTO log VALUES ('substring'); RETURN 1; END$$;
             CREATE FUNCTION public.side() RETURNS int LANGUAGE plpgsql
               AS $$BEGIN INSERT INTO log VALUES ('side'); RETURN 1; END$$;
             CREATE VIEW v_side AS SELECT public.side() AS n;
             CREATE SEQUENCE sq;
             CREATE VIEW v_seq AS SELECT nextval('sq') AS n;
             CREATE VIEW v_plain AS SELECT v, length(v) AS l FROM log;",
        )
        .await
        .unwrap();
    let writes = || log_rows(&in_db);
    // Connection `local` reaches the shadowed database, `plain` the shared one.
    let cfg = own_and_shared_config(&base, &db);
    let gw = spawn_gateway(&cfg, Backend::Sqlite).await;

    for call in ["SELECT length(1)", "SELECT substring(1, 2, 3)"] {
        let r = gw.query(AGENT, call).await;
        assert_eq!(r.status, 202, "{call} held, not run: {:?}", r.body);
        assert!(
            r.body.to_string().contains("is also defined as public."),
            "{call}: {:?}",
            r.body
        );
        assert_eq!(
            writes().await,
            0,
            "{call}: the shadowing function never ran"
        );
    }
    // Views whose definition calls a user function or a volatile one run it on every read: held.
    for (read, function) in [
        ("SELECT * FROM v_side", "calls side"),
        ("SELECT n FROM public.v_seq", "nextval"),
    ] {
        let r = gw.query(AGENT, read).await;
        assert_eq!(r.status, 202, "{read} held, not run: {:?}", r.body);
        assert!(
            r.body.to_string().contains(function),
            "{read}: {:?}",
            r.body
        );
    }
    assert_eq!(writes().await, 0, "the view's function never ran");
    let seq: i64 = scalar_in(&in_db, "SELECT last_value FROM sq").await;
    let called: bool = scalar_in(&in_db, "SELECT is_called FROM sq").await;
    assert_eq!(
        (seq, called),
        (1, false),
        "nextval never ran through the view"
    );
    // A view over tables and vetted functions reads as before.
    let r = gw.query(AGENT, "SELECT * FROM v_plain").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // Qualified, the built-in can't be captured.
    let r = gw.query(AGENT, "SELECT pg_catalog.length('abc')").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["rows"][0][0], "3", "{:?}", r.body);
    // Where no function shadows it, the vetted call runs as before.
    let r = gw
        .post(
            AGENT,
            "/v1/connections/plain/query",
            json!({ "sql": "SELECT length('abc')" }),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["rows"][0][0], "3", "{:?}", r.body);
    assert_eq!(writes().await, 0);

    // The capture the gateway held is real: sent directly, the same call runs the user function.
    in_db.batch_execute("SELECT length(1)").await.unwrap();
    assert_eq!(
        writes().await,
        1,
        "PostgreSQL resolves length(1) to public.length"
    );
    drop(in_db);
    drop_database(&admin, &db).await;
}

/// With `forward_syntax_errors`, text PostgreSQL's parser rejects is answered exactly as PostgreSQL
/// answers it (simple and extended protocol, in and out of a transaction), while text the policy cannot
/// parse but PostgreSQL can is still held; without it, both are held.
#[tokio::test]
async fn syntax_errors_get_postgresqls_answer_when_forwarding_is_on_and_are_held_otherwise() {
    use countersign_tests::transcript::{Action, Login, RawConn};
    let cfg = base_config(&format!(
        "[wire]\nlisten = \"127.0.0.1:0\"\nallow_cleartext_without_tls = true\nhold_wait = 0.5\n\n\
         [[connections]]\nname = \"typos\"\nupstream_url = \"{}\"\nforward_syntax_errors = true\n\n\
         [[policy.rules]]\nname = \"everything\"\naction = \"allow\"\n",
        upstream_url()
    ));
    let gw = spawn_gateway(&cfg, Backend::Sqlite).await;
    let wire = gw.wire.expect("wire listener configured").to_string();
    let login = |addr: &str, user: &str, database: &str, password: Option<&str>| Login {
        addr: addr.to_string(),
        user: user.into(),
        database: database.into(),
        password: password.map(String::from),
        options: None,
    };
    let query = |sql: &str| Action::Query {
        sql: sql.into(),
        copy_in: vec![],
    };
    let steps = [
        query("SELEC 1"),
        query("SELECT 1; SELECT FROM WHERE 2"),
        query("BEGIN"),
        query("SELECT 'unterminated"),
        query("SELECT 1"),
        query("ROLLBACK"),
        Action::Extended {
            name: String::new(),
            sql: Some("SELEC $1".into()),
            params: vec![Some("1".into())],
            binary: false,
            max_rows: 0,
        },
        query("SELECT 'usable'"),
    ];
    let mut direct = RawConn::connect(&login("127.0.0.1:5432", "postgres", "test", None), None)
        .await
        .unwrap();
    let mut through = RawConn::connect(&login(&wire, "agent", "typos", Some(AGENT)), None)
        .await
        .unwrap();
    for step in &steps {
        let want = direct.run(step).await.unwrap();
        let got = through.run(step).await.unwrap();
        assert_eq!(got, want, "{step:?}");
    }
    assert!(
        through.query("SELEC 1").await.unwrap()[0].contains("42601"),
        "the transcript shows PostgreSQL's syntax error"
    );
    // PostgreSQL parses this; the policy does not (SEARCH): held, then still pending after hold_wait.
    let search = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) \
                  SEARCH DEPTH FIRST BY n SET o SELECT n FROM r";
    let held = through.query(search).await.unwrap();
    assert!(held[0].contains("held for approval"), "{held:?}");
    assert!(held[1].contains("still pending"), "{held:?}");
    // Without the setting, a syntax error is held like any text the policy cannot parse.
    let mut strict = RawConn::connect(&login(&wire, "agent", "local", Some(AGENT)), None)
        .await
        .unwrap();
    let held = strict.query("SELEC 1").await.unwrap();
    assert!(held[0].contains("held for approval"), "{held:?}");
    // The HTTP API likewise: PostgreSQL's error on `typos`, a hold on `local`.
    let r = gw
        .post(
            AGENT,
            "/v1/connections/typos/query",
            json!({ "sql": "SELEC 1" }),
        )
        .await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    assert!(r.body.to_string().contains("42601"), "{:?}", r.body);
    let r = gw
        .post(
            AGENT,
            "/v1/connections/typos/query",
            json!({ "sql": search }),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(gw.query(AGENT, "SELEC 1").await.status, 202);
    direct.close().await;
    through.close().await;
    strict.close().await;
}

/// PostgreSQL statements sqlparser does not read, which drivers' and ORMs' suites send, run under an
/// allow-all rule instead of being held: array slice assignment, `CREATE DOMAIN` without `AS`,
/// `ALTER TYPE … ADD/DROP ATTRIBUTE`, `COMMENT ON CONSTRAINT`, and a foreign key's `ON DELETE SET NULL
/// (columns)`.
#[tokio::test]
async fn statements_the_sql_parser_misses_run_under_an_allow_all_rule() {
    let cfg = base_config(
        "[wire]\nlisten = \"127.0.0.1:0\"\nallow_cleartext_without_tls = true\nhold_wait = 0.5\n\n\
         [[policy.rules]]\nname = \"everything\"\naction = \"allow\"\n",
    );
    let gw = spawn_gateway(&cfg, Backend::Sqlite).await;
    let (client, _conn) = agent_wire_session(gw.wire.expect("wire listener")).await;
    let s = table_name("unread");
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {s}; CREATE TABLE {s}.foo (id int PRIMARY KEY, bar text[], n int CONSTRAINT ch_1 CHECK (n > 0));
             INSERT INTO {s}.foo VALUES (1, '{{a,b,c}}', 1); CREATE TYPE {s}.typ1 AS (x int)"
        ))
        .await
        .unwrap();
    for sql in [
        format!("CREATE DOMAIN {s}.testdomain INTEGER NOT NULL DEFAULT 42"),
        format!("ALTER TYPE {s}.typ1 ADD ATTRIBUTE c text"),
        format!("ALTER TYPE {s}.typ1 DROP ATTRIBUTE x"),
        format!("COMMENT ON CONSTRAINT ch_1 ON {s}.foo IS 'cc comment'"),
        format!(
            "CREATE TABLE {s}.fk (id int, pid int, t int, FOREIGN KEY (pid) REFERENCES {s}.foo (id) ON DELETE SET NULL (pid))"
        ),
        // Django's: an index in a tablespace, an identity dropped, a collation with a type change,
        // EXPLAIN of a parenthesised union, row locks on several tables, a foreign server dropped.
        format!("CREATE INDEX {s}_i ON {s}.foo (n) TABLESPACE pg_default"),
        format!("CREATE TABLE {s}.ident (id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, a varchar(10))"),
        format!("ALTER TABLE {s}.ident ALTER COLUMN id DROP IDENTITY IF EXISTS"),
        format!("ALTER TABLE {s}.ident ALTER COLUMN a TYPE varchar(20) COLLATE \"C\""),
        format!("EXPLAIN (SELECT id FROM {s}.foo) UNION (SELECT id FROM {s}.ident)"),
        format!("SELECT * FROM {s}.foo, {s}.ident FOR UPDATE OF foo, ident"),
        format!("SELECT * FROM {s}.foo f, {s}.ident i FOR NO KEY UPDATE OF f, i NOWAIT"),
        "DROP SERVER IF EXISTS cs_no_such_server".to_string(),
    ] {
        client
            .batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let updated = client
        .execute(
            &format!("UPDATE {s}.foo SET bar[$1::INTEGER:$2::INTEGER] = $3::TEXT[] WHERE foo.id = $4::INTEGER"),
            &[&2i32, &3i32, &vec!["y", "z"], &1i32],
        )
        .await
        .unwrap();
    assert_eq!(updated, 1);
    let bar: Vec<String> = client
        .query_one(&format!("SELECT bar FROM {s}.foo"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(bar, ["a", "y", "z"]);
    direct()
        .await
        .batch_execute(&format!("DROP SCHEMA {s} CASCADE"))
        .await
        .unwrap();
}

/// A view an approved statement created inside an open transaction is invisible to the gateway's
/// catalog reads until it commits: the session's later statements in that transaction are reviewed.
#[tokio::test]
async fn statements_after_an_approved_ddl_in_an_open_transaction_are_reviewed_until_it_commits() {
    let gw = spawn_gateway(
        &base_config(
            "[wire]\nlisten = \"127.0.0.1:0\"\nallow_cleartext_without_tls = true\nhold_wait = 5\n",
        ),
        Backend::Sqlite,
    )
    .await;
    let t = make_table("approved_ddl").await;
    let client = std::sync::Arc::new(agent_on_the_wire(&gw).await);
    client.batch_execute("BEGIN").await.unwrap();
    let view = format!("{t}_v");
    let create = format!("CREATE VIEW {view} AS SELECT id FROM {t}");
    let running = {
        let client = client.clone();
        let create = create.clone();
        tokio::spawn(async move { client.batch_execute(&create).await })
    };
    let id = pending_request(&gw.base, &view).await;
    assert_eq!(gw.vote(BOB, &id, "approve").await.status, 200);
    assert_eq!(gw.vote(CAROL, &id, "approve").await.status, 200);
    running
        .await
        .unwrap()
        .expect("the approved CREATE VIEW ran");
    // A plain read in the same transaction: reviewed, since the session's DDL is not committed.
    let err = client
        .simple_query(&format!("SELECT id FROM {view}"))
        .await
        .expect_err("held while the DDL is uncommitted");
    assert!(
        err.as_db_error()
            .is_some_and(|d| d.message().contains("stays pending")),
        "{err:?}"
    );
    client.batch_execute("ROLLBACK").await.unwrap();
    // Rolled back: reads are judged as usual again.
    client
        .simple_query(&format!("SELECT id FROM {t}"))
        .await
        .expect("allowed once the transaction ended");
}
