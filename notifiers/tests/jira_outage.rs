//! A Jira that is down (connection refused), then failing (500, 429 with Retry-After), then up: each
//! request gets one issue, and each of its comments arrives exactly once, in order.

mod common;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use countersign_bot::store::OutboxStatus;
use countersign_bot::testing::fresh_sqlite;
use countersign_notifiers::jira::{JiraConfig, JiraCredentials, JiraNotifier};
use countersign_notifiers::{OutboxWorker, RetryPolicy};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct FlakyJira {
    /// Failures still to serve, on any endpoint: first these 500s, then these 429s.
    fail_500: u32,
    fail_429: u32,
    /// Issue key → (summary, comment texts in arrival order).
    issues: BTreeMap<String, (String, Vec<String>)>,
}

type Fake = Arc<Mutex<FlakyJira>>;

/// The failure to serve instead of handling the call, if any is left.
fn injected_failure(fake: &Fake) -> Option<Response> {
    let mut f = fake.lock().unwrap();
    if f.fail_500 > 0 {
        f.fail_500 -= 1;
        return Some(StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    if f.fail_429 > 0 {
        f.fail_429 -= 1;
        return Some((StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")]).into_response());
    }
    None
}

/// All text nodes of an Atlassian Document Format value, concatenated.
fn adf_text(v: &Value) -> String {
    match v {
        Value::Object(o) => {
            let own = o.get("text").and_then(Value::as_str).unwrap_or_default();
            let inner: String = o.get("content").map(adf_text).unwrap_or_default();
            format!("{own}{inner}")
        }
        Value::Array(a) => a.iter().map(adf_text).collect(),
        _ => String::new(),
    }
}

async fn create_issue(State(f): State<Fake>, Json(body): Json<Value>) -> Response {
    if let Some(r) = injected_failure(&f) {
        return r;
    }
    let mut f = f.lock().unwrap();
    let key = format!("OPS-{}", f.issues.len() + 1);
    let summary = body["fields"]["summary"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    f.issues.insert(key.clone(), (summary, Vec::new()));
    (StatusCode::CREATED, Json(json!({ "id": "1", "key": key }))).into_response()
}

async fn add_comment(
    State(f): State<Fake>,
    Path(key): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    if let Some(r) = injected_failure(&f) {
        return r;
    }
    let mut f = f.lock().unwrap();
    let Some((_, comments)) = f.issues.get_mut(&key) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    comments.push(adf_text(&body["body"]));
    let id = comments.len().to_string();
    (StatusCode::CREATED, Json(json!({ "id": id }))).into_response()
}

fn config(base_url: &str) -> JiraConfig {
    let mut cfg: JiraConfig = toml::from_str(&format!(
        r#"
        base_url = "{base_url}"
        project_key = "OPS"
        public_base_url = "https://countersign.example.com"
        approve_status = "Approved"
        deny_status = "Denied"
        revert_transition = "Back to review"
        "#
    ))
    .expect("config parses");
    cfg.timeout_secs = 2;
    cfg.validate().expect("config valid");
    cfg
}

fn creds() -> JiraCredentials {
    JiraCredentials {
        email: "bot@example.com".into(),
        api_token: "api-token".into(),
        webhook_secret: "unused".into(),
    }
}

#[tokio::test]
async fn jira_down_then_500_then_429_then_up_creates_each_issue_once_and_comments_once_in_order() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Reserve a port, then close it: deliveries first meet "connection refused".
    let port = common::closed_port().await;
    let (store, _dir) = fresh_sqlite().await;
    let wf = common::workflow(&store, &["jira"]);
    let a = common::approved_request(&wf, "DELETE FROM a").await;
    let b = common::approved_request(&wf, "DELETE FROM b").await;

    let notifier = JiraNotifier::new(
        config(&format!("http://127.0.0.1:{port}")),
        &creds(),
        Arc::clone(&store),
    )
    .expect("notifier");
    let policy = RetryPolicy {
        base: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        ..RetryPolicy::default()
    };
    let worker = OutboxWorker::new(Arc::clone(&store), vec![Arc::new(notifier)], policy);

    assert!(
        !common::drain(&store, &worker, Duration::from_millis(300)).await,
        "nothing can be delivered while Jira is down"
    );
    let failing = store
        .outbox_list(Some(OutboxStatus::Pending), 100)
        .await
        .expect("list");
    assert!(failing
        .iter()
        .any(|i| i.attempts > 0 && i.last_error.is_some()));

    let fake: Fake = Arc::new(Mutex::new(FlakyJira {
        fail_500: 3,
        fail_429: 2,
        ..FlakyJira::default()
    }));
    let app = Router::new()
        .route("/rest/api/3/issue", post(create_issue))
        .route("/rest/api/3/issue/{key}/comment", post(add_comment))
        .with_state(Arc::clone(&fake));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("re-bind the reserved port");
    tokio::spawn(async move { axum::serve(listener, app).await });

    assert!(
        common::drain(&store, &worker, Duration::from_secs(20)).await,
        "everything delivered once Jira is up"
    );
    assert!(store
        .outbox_list(Some(OutboxStatus::Dead), 10)
        .await
        .expect("list")
        .is_empty());

    let (failures_left, issues) = {
        let f = fake.lock().unwrap();
        ((f.fail_500, f.fail_429), f.issues.clone())
    };
    assert_eq!(failures_left, (0, 0), "the 500 and 429 phases happened");
    assert_eq!(issues.len(), 2, "one issue per request: {issues:?}");
    for (id, table) in [(a, "a"), (b, "b")] {
        let key = store
            .get_ref(id, "jira", "issue")
            .await
            .expect("ref")
            .expect("issue key recorded");
        let (summary, comments) = issues.get(&key).expect("issue exists in Jira");
        assert!(
            summary.ends_with(&format!("DELETE FROM {table}")),
            "{summary}"
        );
        assert_eq!(
            comments.len(),
            3,
            "two votes and the resolution: {comments:?}"
        );
        assert!(
            comments[0].contains("bob") && comments[0].contains("1 of 2"),
            "{comments:?}"
        );
        assert!(
            comments[1].contains("carol") && comments[1].contains("2 of 2"),
            "{comments:?}"
        );
        assert!(comments[2].starts_with("Request approved"), "{comments:?}");
    }
}

/// A request whose `created` item was dead-lettered: its next event makes the issue (as the request is
/// then), later ones comment on it, and retrying the dead item makes no second issue.
#[tokio::test]
async fn a_dead_lettered_created_item_leaves_the_issue_to_the_next_event() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (store, _dir) = fresh_sqlite().await;
    let wf = common::workflow(&store, &["jira"]);
    let a = common::approved_request(&wf, "DELETE FROM a").await;
    let created = store
        .outbox_list(Some(OutboxStatus::Pending), 100)
        .await
        .expect("list")
        .into_iter()
        .find(|i| i.event_kind == "created")
        .expect("the created item");
    store
        .outbox_failed(created.id, "Jira was down", None)
        .await
        .expect("dead-letter it");
    let fake: Fake = Arc::new(Mutex::new(FlakyJira::default()));
    let app = Router::new()
        .route("/rest/api/3/issue", post(create_issue))
        .route("/rest/api/3/issue/{key}/comment", post(add_comment))
        .with_state(Arc::clone(&fake));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let notifier =
        JiraNotifier::new(config(&base), &creds(), Arc::clone(&store)).expect("notifier");
    let policy = RetryPolicy {
        base: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        ..RetryPolicy::default()
    };
    let worker = OutboxWorker::new(Arc::clone(&store), vec![Arc::new(notifier)], policy);
    assert!(common::drain(&store, &worker, Duration::from_secs(10)).await);
    let key = store
        .get_ref(a, "jira", "issue")
        .await
        .expect("ref")
        .expect("the next event made the issue");
    {
        let f = fake.lock().unwrap();
        assert_eq!(f.issues.len(), 1);
        let (_, comments) = f.issues.get(&key).expect("issue");
        assert_eq!(
            comments.len(),
            3,
            "both votes and the resolution: {comments:?}"
        );
    }
    assert!(store.outbox_retry(created.id, 0).await.expect("retry"));
    assert!(common::drain(&store, &worker, Duration::from_secs(10)).await);
    assert_eq!(fake.lock().unwrap().issues.len(), 1, "no second issue");
}
