//! Issue "Slack approvals", end to end through the real gateway: a statement held on a live wire connection is
//! posted to (fake) Slack, approved by two signed clicks, and released to run exactly once.

use countersign_tests::fake_slack::{click_body, click_body_from_team, sign, FakeSlack};
use countersign_tests::tokens::*;
use countersign_tests::*;
use std::time::Duration;

const TOKEN: &str = "xoxb-test-token";
const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const CHANNEL: &str = "C0APPROVALS";

async fn gateway(backend: Backend) -> (Gateway, FakeSlack) {
    gateway_with(backend, "").await
}

/// The gateway with `extra` lines appended to its `[slack]` section.
async fn gateway_with(backend: Backend, extra: &str) -> (Gateway, FakeSlack) {
    // SAFETY of set_var: every test sets the same values, so concurrent tests can't observe a different one.
    std::env::set_var("CS_E2E_SLACK_TOKEN", TOKEN);
    std::env::set_var("CS_E2E_SLACK_SECRET", SECRET);
    let (fake, base) = FakeSlack::start(
        TOKEN,
        &[
            ("UCAROL", "carol@example.com"),
            ("UALICE", "alice@example.com"),
        ],
    )
    .await;
    let slack = format!(
        "[wire]\nlisten = \"127.0.0.1:0\"\nallow_cleartext_without_tls = true\nhold_wait = 30\n\n[slack]\nbot_token_env = \"CS_E2E_SLACK_TOKEN\"\nsigning_secret_env = \"CS_E2E_SLACK_SECRET\"\napi_base_url = \"{base}\"\nroutes = {{ default_channel = \"{CHANNEL}\" }}\nuser_map = {{ UBOB = \"bob@example.com\" }}\n{extra}"
    );
    (spawn_gateway(&base_config(&slack), backend).await, fake)
}

async fn post_click(gw: &Gateway, body: &str, ts: i64, signature: &str) -> u16 {
    gw.http
        .post(format!("{}/slack/interactions", gw.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", ts.to_string())
        .header("x-slack-signature", signature)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn click(gw: &Gateway, user: &str, ts_msg: &str, action: &str, value: &str) -> u16 {
    let body = click_body(user, CHANNEL, ts_msg, action, value);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    post_click(gw, &body, now, &sign(SECRET, now, &body)).await
}

async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..200 {
        if let Some(v) = f() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn held_wire_statement_is_released_by_two_signed_slack_clicks_and_runs_once() {
    for backend in BACKENDS {
        let (gw, fake) = gateway(backend).await;
        let t = table_name("cs_slack");
        direct()
            .await
            .batch_execute(&format!(
                "CREATE TABLE {t} (id int); INSERT INTO {t} VALUES (1), (2)"
            ))
            .await
            .unwrap();

        let wire = gw.wire.unwrap();
        let conn_str = format!(
            "host=127.0.0.1 port={} user=agent password={AGENT} dbname=local",
            wire.port()
        );
        let (client, conn) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let sql = format!("DELETE FROM {t} WHERE id = 1");
        let held = tokio::spawn(async move { client.simple_query(&sql).await.map(|m| m.len()) });

        // The request message is posted with buttons; its ts identifies it.
        let post = eventually("the request message", || {
            fake.calls_of("chat.postMessage")
                .into_iter()
                .find(|c| c.args["channel"] == CHANNEL)
        })
        .await;
        let blocks = post.args["blocks"].to_string();
        assert!(
            blocks.contains("countersign_approve") && blocks.contains("countersign_deny"),
            "{blocks}"
        );
        let request_id = gw.store.list_requests(None, 10).await.unwrap()[0].id;
        let msg_ts = message_ts(&gw, request_id).await;

        // The requester's human clicks: refused ephemerally, audited, not counted.
        assert_eq!(
            click(
                &gw,
                "UALICE",
                &msg_ts,
                "countersign_approve",
                &format!("approve:{request_id}")
            )
            .await,
            200
        );
        eventually("the ephemeral refusal", || {
            fake.calls_of("chat.postEphemeral").into_iter().next()
        })
        .await;

        // A forged signature and a stale timestamp are refused with 401.
        let body = click_body(
            "UBOB",
            CHANNEL,
            &msg_ts,
            "countersign_approve",
            &format!("approve:{request_id}"),
        );
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert_eq!(
            post_click(&gw, &body, now, &sign("wrong-secret", now, &body)).await,
            401
        );
        assert_eq!(
            post_click(&gw, &body, now - 600, &sign(SECRET, now - 600, &body)).await,
            401
        );
        assert_eq!(
            gw.engine
                .workflow
                .get(request_id)
                .await
                .unwrap()
                .votes
                .len(),
            0
        );

        // Two mapped humans approve.
        assert_eq!(
            click(
                &gw,
                "UBOB",
                &msg_ts,
                "countersign_approve",
                &format!("approve:{request_id}")
            )
            .await,
            200
        );
        assert_eq!(
            click(
                &gw,
                "UCAROL",
                &msg_ts,
                "countersign_approve",
                &format!("approve:{request_id}")
            )
            .await,
            200
        );

        // The held statement runs once on the live connection.
        let released = tokio::time::timeout(Duration::from_secs(20), held)
            .await
            .expect("released")
            .unwrap();
        assert!(released.is_ok(), "{released:?}");
        let remaining: i64 = direct_scalar(&format!("SELECT count(*) FROM {t}")).await;
        assert_eq!(remaining, 1);
        // The execution result is reported off the hot path; it lands within moments.
        let mut view = gw.engine.workflow.get(request_id).await.unwrap();
        for _ in 0..100 {
            if view.request.status.as_str() == "executed" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            view = gw.engine.workflow.get(request_id).await.unwrap();
        }
        assert_eq!(view.request.status.as_str(), "executed");
        assert_eq!(
            view.request
                .execution
                .as_ref()
                .and_then(|e| e.command_tag.as_deref()),
            Some("DELETE 1")
        );
        assert_eq!(view.votes.len(), 2);

        // The message is updated in place and the thread gets the timeline.
        let updated = eventually("the final message update", || {
            fake.calls_of("chat.update").into_iter().rev().find(|c| {
                c.args["ts"] == msg_ts.as_str()
                    && c.args.to_string().to_lowercase().contains("executed")
            })
        })
        .await;
        assert!(
            !updated.args.to_string().contains("countersign_approve"),
            "buttons are removed once resolved"
        );
        let replies = fake
            .calls_of("chat.postMessage")
            .into_iter()
            .filter(|c| c.args["thread_ts"] == msg_ts.as_str())
            .count();
        assert!(
            replies >= 3,
            "votes, resolution and result are threaded: {replies}"
        );

        // Replaying a valid click after resolution changes nothing.
        assert_eq!(
            click(
                &gw,
                "UBOB",
                &msg_ts,
                "countersign_approve",
                &format!("approve:{request_id}")
            )
            .await,
            200
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            gw.engine
                .workflow
                .get(request_id)
                .await
                .unwrap()
                .votes
                .len(),
            2
        );
        let audit = gw.store.audit_records(0, 1000).await.unwrap();
        assert!(audit
            .iter()
            .any(|a| a.entry.action == "slack.signature_refused"));
        assert!(audit
            .iter()
            .any(|a| a.entry.action == "vote.refused" && a.entry.channel == "slack"));
    }
}

#[tokio::test]
async fn a_captured_signed_click_replayed_within_the_window_is_refused_and_audited() {
    let (gw, _fake) = gateway(Backend::Sqlite).await;
    let (request_id, msg_ts) = held_request(&gw, "DELETE FROM cs_slack_replay_target").await;
    // Bob's genuine click, captured on the way (a proxy log, a leaked request dump).
    let body = click_body(
        "UBOB",
        CHANNEL,
        &msg_ts,
        "countersign_approve",
        &format!("approve:{request_id}"),
    );
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let signature = sign(SECRET, now, &body);
    assert_eq!(post_click(&gw, &body, now, &signature).await, 200);
    // The same bytes again, still within the five-minute window: refused before anything is parsed.
    assert_eq!(post_click(&gw, &body, now, &signature).await, 401);
    let audit = gw.store.audit_records(0, 1000).await.unwrap();
    assert_eq!(
        audit
            .iter()
            .filter(|a| a.entry.action == "slack.replay_refused")
            .count(),
        1,
        "{audit:#?}"
    );
    // A new click by Bob (its own trigger_id and action_ts) is still accepted.
    assert_eq!(
        click(
            &gw,
            "UBOB",
            &msg_ts,
            "countersign_approve",
            &format!("approve:{request_id}")
        )
        .await,
        200
    );
}

#[tokio::test]
async fn sql_with_mrkdwn_and_broadcasts_is_posted_inert() {
    let (gw, fake) = gateway(Backend::Sqlite).await;
    let r = gw
        .query(
            AGENT,
            "DELETE FROM x WHERE note = '<!channel> *bold* <https://evil.example|click>'",
        )
        .await;
    assert_eq!(r.status, 202);
    let post = eventually("the request message", || {
        fake.calls_of("chat.postMessage").into_iter().next()
    })
    .await;
    let raw = post.args.to_string();
    assert!(
        !raw.contains("<!channel>"),
        "broadcast must be escaped: {raw}"
    );
    assert!(
        !raw.contains("<https://evil.example|click>"),
        "links must be escaped: {raw}"
    );
}

/// The request id and message ts of the one request a held API statement created.
async fn held_request(gw: &Gateway, sql: &str) -> (countersign_bot::RequestId, String) {
    let held = gw.query(AGENT, sql).await;
    assert_eq!(held.status, 202, "{:?}", held.body);
    let request_id = gw.store.list_requests(None, 10).await.unwrap()[0].id;
    (request_id, message_ts(gw, request_id).await)
}

/// The ts of the request's Slack message, which the notifier stores right after Slack answers.
async fn message_ts(gw: &Gateway, request_id: countersign_bot::RequestId) -> String {
    let mut msg_ts = None;
    for _ in 0..200 {
        msg_ts = gw.store.get_ref(request_id, "slack", "ts").await.unwrap();
        if msg_ts.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    msg_ts.expect("the request message's ts is stored")
}

async fn click_from(gw: &Gateway, user: &str, team: &str, ts_msg: &str, value: &str) -> u16 {
    let body = click_body_from_team(user, team, CHANNEL, ts_msg, "countersign_approve", value);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    post_click(gw, &body, now, &sign(SECRET, now, &body)).await
}

#[tokio::test]
async fn a_slack_connect_user_with_an_approvers_email_is_refused_but_a_trusted_team_counts() {
    let (gw, fake) = gateway_with(Backend::Sqlite, "trusted_teams = [\"T3\"]\n").await;
    // Another organisation shares the approvals channel and gave its user Bob's address.
    fake.add_user("UEVE", "bob@example.com", "T2");
    // A partner the operator trusts (slack.trusted_teams) verifies its addresses.
    fake.add_user("UDAVE", "reviewer1@example.com", "T3");
    let (request_id, msg_ts) = held_request(&gw, "DELETE FROM cs_slack_outsider_target").await;
    let value = format!("approve:{request_id}");

    assert_eq!(click_from(&gw, "UEVE", "T2", &msg_ts, &value).await, 200);
    let refusal = eventually("the outsider's ephemeral refusal", || {
        fake.calls_of("chat.postEphemeral")
            .into_iter()
            .find(|c| c.args["user"] == "UEVE")
    })
    .await;
    assert!(
        refusal.args.to_string().contains("another organisation"),
        "{:?}",
        refusal.args
    );
    let audit = gw.store.audit_records(0, 1000).await.unwrap();
    let refused = audit
        .iter()
        .find(|a| a.entry.action == "slack.outside_user_refused")
        .expect("the refusal is audited");
    assert_eq!(refused.entry.actor, "slack:UEVE");
    assert_eq!(refused.entry.request_id, Some(request_id.to_string()));
    assert_eq!(refused.entry.detail["team_id"], "T2");
    assert!(gw
        .engine
        .workflow
        .get(request_id)
        .await
        .unwrap()
        .votes
        .is_empty());

    // The trusted partner's user and a member of the app's own workspace (both through users.info) count.
    assert_eq!(click_from(&gw, "UDAVE", "T3", &msg_ts, &value).await, 200);
    assert_eq!(
        click(&gw, "UCAROL", &msg_ts, "countersign_approve", &value).await,
        200
    );
    let mut voters = Vec::new();
    for _ in 0..200 {
        voters = gw
            .engine
            .workflow
            .get(request_id)
            .await
            .unwrap()
            .votes
            .iter()
            .map(|v| v.voter.0.clone())
            .collect::<Vec<_>>();
        if voters.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    voters.sort();
    assert_eq!(
        voters,
        ["email:carol@example.com", "email:reviewer1@example.com"]
    );
}

#[test]
fn a_trusted_team_given_by_name_is_refused_with_file_key_and_fix() {
    let toml = base_config(
        "[slack]\nbot_token_env = \"CS_E2E_SLACK_TOKEN\"\nsigning_secret_env = \"CS_E2E_SLACK_SECRET\"\nroutes = { default_channel = \"C0APPROVALS\" }\ntrusted_teams = [\"partner.slack.com\"]\n",
    );
    let cfg = countersign_gateway::config::Config::from_toml(&toml, "countersign.toml")
        .unwrap_or_else(|e| panic!("{e}"));
    let report = cfg.validate("countersign.toml").to_string();
    assert!(
        report.contains("countersign.toml")
            && report.contains("slack.trusted_teams")
            && report.contains("partner.slack.com")
            && report.contains("T0123ABCD"),
        "{report}"
    );
}

/// `[server] max_body_bytes` covers the channels' webhooks too: an oversized unsigned body is
/// refused with 413 before it is read whole and HMAC'd (it got axum's 2 MiB default).
#[tokio::test]
async fn an_interaction_body_over_the_configured_limit_is_refused_before_it_is_verified() {
    let (gw, _fake) = gateway_with(Backend::Sqlite, "\n[server]\nmax_body_bytes = 1048576\n").await;
    let body = "x".repeat(1_100_000);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert_eq!(post_click(&gw, &body, now, "v0=00").await, 413);
    // Under the limit, a bad signature is what refuses it.
    assert_eq!(post_click(&gw, "payload=x", now, "v0=00").await, 401);
}
