//! The outbox worker under failures: every event is delivered exactly once, in order per request.

mod common;

use countersign_bot::events::{DeliveryError, Notifier, WorkflowEvent};
use countersign_bot::store::OutboxStatus;
use countersign_bot::testing::{fresh_pg, fresh_sqlite};
use countersign_bot::{RequestId, Store};
use countersign_notifiers::{OutboxWorker, RetryPolicy};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Fails each delivery key `fail_times` times, then accepts it and records it.
struct FlakyNotifier {
    fail_times: u32,
    attempts: Mutex<HashMap<String, u32>>,
    delivered: Mutex<Vec<(String, Option<RequestId>, &'static str)>>,
}

#[async_trait::async_trait]
impl Notifier for FlakyNotifier {
    fn sink(&self) -> &str {
        "flaky"
    }

    async fn deliver(&self, key: &str, event: &WorkflowEvent) -> Result<(), DeliveryError> {
        let n = {
            let mut a = self.attempts.lock().unwrap();
            let n = a.entry(key.to_string()).or_default();
            *n += 1;
            *n
        };
        if n <= self.fail_times {
            return Err(DeliveryError::Retryable {
                message: format!("simulated outage, attempt {n}"),
                retry_after: None,
            });
        }
        self.delivered
            .lock()
            .unwrap()
            .push((key.to_string(), event.request_id(), event.kind()));
        Ok(())
    }
}

async fn run_until_drained(store: &Arc<dyn Store>, worker: &OutboxWorker) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        worker.run_once().await.expect("run");
        let pending = store
            .outbox_list(Some(OutboxStatus::Pending), 1000)
            .await
            .expect("list");
        if pending.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still pending: {pending:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn flaky_notifier_delivers_each_event_once_in_order(store: Arc<dyn Store>) {
    let wf = common::workflow(&store, &["flaky"]);
    let a = common::approved_request(&wf, "DELETE FROM a").await;
    let b = common::approved_request(&wf, "DELETE FROM b").await;
    let notifier = Arc::new(FlakyNotifier {
        fail_times: 3,
        attempts: Mutex::default(),
        delivered: Mutex::default(),
    });
    let policy = RetryPolicy {
        base: Duration::from_millis(2),
        max_backoff: Duration::from_millis(20),
        ..RetryPolicy::default()
    };
    let worker = OutboxWorker::new(Arc::clone(&store), vec![notifier.clone()], policy);
    run_until_drained(&store, &worker).await;

    let delivered = notifier.delivered.lock().unwrap().clone();
    let mut keys: Vec<&String> = delivered.iter().map(|d| &d.0).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(
        keys.len(),
        delivered.len(),
        "a key was delivered twice: {delivered:?}"
    );
    for id in [a, b] {
        let kinds: Vec<&str> = delivered
            .iter()
            .filter(|d| d.1 == Some(id))
            .map(|d| d.2)
            .collect();
        assert_eq!(kinds, common::EXPECTED_KINDS, "order for {id}");
    }
    assert!(dead_letters(&store).await.is_empty());
}

/// The dead-lettered deliveries (up to 10).
async fn dead_letters(store: &Arc<dyn Store>) -> Vec<countersign_bot::store::OutboxItem> {
    store
        .outbox_list(Some(OutboxStatus::Dead), 10)
        .await
        .expect("list")
}

/// Two quick attempts, then the delivery is dead.
fn gives_up_after_two() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 2,
        base: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        ..RetryPolicy::default()
    }
}

#[tokio::test]
async fn notifier_failing_three_times_then_up_delivers_exactly_once_in_order_sqlite() {
    let (store, _dir) = fresh_sqlite().await;
    flaky_notifier_delivers_each_event_once_in_order(store).await;
}

#[tokio::test]
async fn notifier_failing_three_times_then_up_delivers_exactly_once_in_order_postgres() {
    flaky_notifier_delivers_each_event_once_in_order(fresh_pg().await).await;
}

#[tokio::test]
async fn failing_beyond_max_attempts_dead_letters_and_retry_requeues() {
    let (store, _dir) = fresh_sqlite().await;
    let wf = common::workflow(&store, &["flaky"]);
    common::approved_request(&wf, "DELETE FROM c").await;
    let notifier = Arc::new(FlakyNotifier {
        fail_times: 2,
        attempts: Mutex::default(),
        delivered: Mutex::default(),
    });
    let worker = OutboxWorker::new(
        Arc::clone(&store),
        vec![notifier.clone()],
        gives_up_after_two(),
    );
    run_until_drained(&store, &worker).await;
    let dead = dead_letters(&store).await;
    assert!(
        !dead.is_empty(),
        "the head item dead-letters after 2 attempts"
    );

    for item in &dead {
        assert!(store.outbox_retry(item.id, 0).await.expect("retry"));
    }
    run_until_drained(&store, &worker).await;
    assert!(dead_letters(&store).await.is_empty());
    let kinds: Vec<&str> = notifier
        .delivered
        .lock()
        .unwrap()
        .iter()
        .map(|d| d.2)
        .collect();
    assert!(kinds.contains(&"created"), "{kinds:?}");
}

/// Answers every delivery key with "rate limited, retry after 1 ms" `limited_times` times, then accepts it.
struct RateLimitedNotifier {
    limited_times: u32,
    calls: Mutex<HashMap<String, u32>>,
    delivered: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl Notifier for RateLimitedNotifier {
    fn sink(&self) -> &str {
        "limited"
    }

    async fn deliver(&self, key: &str, _event: &WorkflowEvent) -> Result<(), DeliveryError> {
        let n = {
            let mut c = self.calls.lock().unwrap();
            let n = c.entry(key.to_string()).or_default();
            *n += 1;
            *n
        };
        if n <= self.limited_times {
            return Err(DeliveryError::Retryable {
                message: format!("429 rate limited, call {n}"),
                retry_after: Some(Duration::from_millis(1)),
            });
        }
        self.delivered.lock().unwrap().push(key.to_string());
        Ok(())
    }
}

/// Rate limiting five times in a row with `max_attempts = 2`: the waits the sink asked for are not
/// failures, so nothing is dead-lettered and every event arrives once.
async fn rate_limited_tries_do_not_use_up_attempts(store: Arc<dyn Store>) {
    let wf = common::workflow(&store, &["limited"]);
    common::approved_request(&wf, "DELETE FROM rl").await;
    let notifier = Arc::new(RateLimitedNotifier {
        limited_times: 5,
        calls: Mutex::default(),
        delivered: Mutex::default(),
    });
    let worker = OutboxWorker::new(
        Arc::clone(&store),
        vec![notifier.clone()],
        gives_up_after_two(),
    );
    run_until_drained(&store, &worker).await;
    let dead = dead_letters(&store).await;
    assert!(
        dead.is_empty(),
        "dead-lettered while rate limited: {dead:?}"
    );
    assert_eq!(
        notifier.delivered.lock().unwrap().len(),
        common::EXPECTED_KINDS.len()
    );
    for item in store.outbox_list(None, 10).await.expect("list") {
        assert_eq!(item.attempts, 1, "only the delivering try counts: {item:?}");
    }
}

#[tokio::test]
async fn rate_limited_tries_do_not_use_up_attempts_sqlite() {
    let (store, _dir) = fresh_sqlite().await;
    rate_limited_tries_do_not_use_up_attempts(store).await;
}

#[tokio::test]
async fn rate_limited_tries_do_not_use_up_attempts_postgres() {
    rate_limited_tries_do_not_use_up_attempts(fresh_pg().await).await;
}

#[tokio::test]
async fn rate_limiting_past_the_max_age_dead_letters_with_the_reason() {
    let (store, _dir) = fresh_sqlite().await;
    let wf = common::workflow(&store, &["limited"]);
    common::approved_request(&wf, "DELETE FROM rl_old").await;
    let notifier = Arc::new(RateLimitedNotifier {
        limited_times: u32::MAX,
        calls: Mutex::default(),
        delivered: Mutex::default(),
    });
    let policy = RetryPolicy {
        rate_limited_max_age: Duration::ZERO,
        ..RetryPolicy::default()
    };
    let worker = OutboxWorker::new(Arc::clone(&store), vec![notifier.clone()], policy);
    worker.run_once().await.expect("run");
    let dead = dead_letters(&store).await;
    assert_eq!(dead.len(), 1, "the head item gives up: {dead:?}");
    let error = dead[0].last_error.as_deref().unwrap_or_default();
    assert!(error.contains("still rate limited"), "{error}");
}
