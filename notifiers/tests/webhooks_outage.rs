//! A webhook receiver that is down (connection refused), then failing (500, 429), then up: every event
//! arrives exactly once, signed, in order per request.

mod common;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use countersign_bot::store::OutboxStatus;
use countersign_bot::testing::fresh_sqlite;
use countersign_notifiers::webhooks::{WebhookEndpointConfig, WebhookNotifier, WebhookSigner};
use countersign_notifiers::{OutboxWorker, RetryPolicy};
use serde_json::Value;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[derive(Default)]
struct Receiver {
    /// Failures still to serve: first `fail_500` answers are 500, then `fail_429` answers are 429.
    fail_500: AtomicU32,
    fail_429: AtomicU32,
    accepted: Mutex<Vec<(String, Value)>>,
    bad_signatures: AtomicU32,
}

async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> Response {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (id, ts, sig) = (
        h("webhook-id"),
        h("webhook-timestamp"),
        h("webhook-signature"),
    );
    let signer = WebhookSigner::from_secret(SECRET).expect("secret");
    if !signer.verify(&id, ts.parse().unwrap_or(0), &body, &sig) {
        r.bad_signatures.fetch_add(1, Ordering::SeqCst);
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if r.fail_500.load(Ordering::SeqCst) > 0 {
        r.fail_500.fetch_sub(1, Ordering::SeqCst);
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    if r.fail_429.load(Ordering::SeqCst) > 0 {
        r.fail_429.fetch_sub(1, Ordering::SeqCst);
        return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")]).into_response();
    }
    let event: Value = serde_json::from_slice(&body).expect("event JSON");
    r.accepted.lock().unwrap().push((id, event));
    StatusCode::NO_CONTENT.into_response()
}

fn endpoint(url: String, events: Vec<String>) -> WebhookEndpointConfig {
    WebhookEndpointConfig {
        name: "siem".into(),
        url,
        secret_env: "UNUSED".into(),
        events,
        connections: vec!["prod".into()],
        timeout_secs: 2,
    }
}

#[tokio::test]
async fn receiver_down_then_500_then_429_then_up_gets_each_event_once_in_order() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Reserve a port, then close it: deliveries first meet "connection refused".
    let port = common::closed_port().await;
    let (store, _dir) = fresh_sqlite().await;
    let wf = common::workflow(&store, &["webhook:siem"]);
    let a = common::approved_request(&wf, "DELETE FROM a").await;
    let b = common::approved_request(&wf, "DELETE FROM b").await;

    let signer = WebhookSigner::from_secret(SECRET).expect("secret");
    let notifier = WebhookNotifier::new(
        &endpoint(format!("http://127.0.0.1:{port}/hook"), vec![]),
        signer,
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
        "nothing can be delivered while down"
    );
    let failing = store
        .outbox_list(Some(OutboxStatus::Pending), 100)
        .await
        .expect("list");
    assert!(failing
        .iter()
        .any(|i| i.attempts > 0 && i.last_error.is_some()));

    let receiver = Arc::new(Receiver::default());
    receiver.fail_500.store(3, Ordering::SeqCst);
    receiver.fail_429.store(2, Ordering::SeqCst);
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(Arc::clone(&receiver));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("re-bind the reserved port");
    tokio::spawn(async move { axum::serve(listener, app).await });

    assert!(
        common::drain(&store, &worker, Duration::from_secs(20)).await,
        "everything delivered once the receiver is up"
    );
    assert!(store
        .outbox_list(Some(OutboxStatus::Dead), 10)
        .await
        .expect("list")
        .is_empty());
    assert_eq!(receiver.bad_signatures.load(Ordering::SeqCst), 0);
    assert_eq!(
        receiver.fail_429.load(Ordering::SeqCst),
        0,
        "the 429 phase happened"
    );

    let accepted = receiver.accepted.lock().unwrap().clone();
    let mut ids: Vec<&String> = accepted.iter().map(|x| &x.0).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), accepted.len(), "a webhook-id arrived twice");
    assert_eq!(accepted.len(), 8);
    for id in [a, b] {
        let kinds: Vec<&str> = accepted
            .iter()
            .filter(|(_, e)| e["request"]["id"] == id.to_string())
            .map(|(_, e)| e["kind"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(kinds, common::EXPECTED_KINDS, "order for {id}");
    }
}

#[tokio::test]
async fn endpoint_receives_only_subscribed_event_types_and_connections() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let receiver = Arc::new(Receiver::default());
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(Arc::clone(&receiver));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });

    let (store, _dir) = fresh_sqlite().await;
    let wf = common::workflow(&store, &["webhook:siem"]);
    common::approved_request(&wf, "DELETE FROM a").await;
    let signer = WebhookSigner::from_secret(SECRET).expect("secret");
    let subscribed = WebhookNotifier::new(
        &endpoint(format!("http://{addr}/hook"), vec!["resolved".into()]),
        signer.clone(),
    )
    .expect("notifier");
    let worker = OutboxWorker::new(
        Arc::clone(&store),
        vec![Arc::new(subscribed)],
        RetryPolicy::default(),
    );
    assert!(common::drain(&store, &worker, Duration::from_secs(5)).await);
    let kinds: Vec<String> = receiver
        .accepted
        .lock()
        .unwrap()
        .iter()
        .map(|(_, e)| e["kind"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(kinds, ["resolved"]);

    let mut other = endpoint(format!("http://{addr}/hook"), vec![]);
    other.connections = vec!["staging".into()];
    let wf2 = common::workflow(&store, &["webhook:siem"]);
    common::approved_request(&wf2, "DELETE FROM b").await;
    let worker = OutboxWorker::new(
        Arc::clone(&store),
        vec![Arc::new(
            WebhookNotifier::new(&other, signer).expect("notifier"),
        )],
        RetryPolicy::default(),
    );
    assert!(common::drain(&store, &worker, Duration::from_secs(5)).await);
    assert_eq!(
        receiver.accepted.lock().unwrap().len(),
        1,
        "prod events are not sent to a staging-only subscription"
    );
}
