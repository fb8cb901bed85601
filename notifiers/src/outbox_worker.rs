//! Delivers outbox rows to their notifiers with retries: exponential backoff with jitter, `Retry-After`
//! honoured (a rate-limited try is not counted as an attempt), per-sink pacing, dead-lettering after the
//! configured attempts. Items of one request reach one sink in order (the store leases only the oldest
//! pending item per sink and request).

use countersign_bot::events::{DeliveryError, Notifier, WorkflowEvent};
use countersign_bot::store::{OutboxItem, Store};
use rand::Rng;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest pause a sink's `Retry-After` gets (the HTTP channels cap it the same way).
const MAX_PAUSE: Duration = Duration::from_secs(3600);

/// Retry settings.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts before an item is dead-lettered.
    pub max_attempts: u32,
    /// First backoff.
    pub base: Duration,
    /// Backoff cap.
    pub max_backoff: Duration,
    /// How long a leased item is reserved for one delivery attempt (a crashed replica's lease lapses).
    pub lease: Duration,
    /// Minimum spacing between two deliveries to the same sink (rate limit), if any.
    pub min_interval: HashMap<String, Duration>,
    /// How old an item may get while its sink keeps answering with `Retry-After`: waits a sink asks for
    /// don't count toward `max_attempts`, so this is what bounds them; past it the item is dead-lettered.
    pub rate_limited_max_age: Duration,
    /// Limit on one delivery, whatever the channel's own client does: past it the attempt counts as failed
    /// and is retried. Kept below `lease` so no other replica takes the item while it is still in flight.
    pub delivery_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 12,
            base: Duration::from_millis(500),
            max_backoff: Duration::from_secs(300),
            lease: Duration::from_secs(30),
            min_interval: HashMap::new(),
            rate_limited_max_age: Duration::from_secs(24 * 3600),
            delivery_timeout: Duration::from_secs(25),
        }
    }
}

impl RetryPolicy {
    /// Delay before attempt `attempts + 1`, with ±20 % jitter so replicas don't retry in lock-step.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
        let capped = exp.min(self.max_backoff);
        let jitter = rand::thread_rng().gen_range(0.8..1.2);
        capped.mul_f64(jitter)
    }
}

/// The worker.
pub struct OutboxWorker {
    store: Arc<dyn Store>,
    notifiers: HashMap<String, Arc<dyn Notifier>>,
    policy: RetryPolicy,
    last_sent: Mutex<HashMap<String, Instant>>,
    /// Sinks that answered 429 with Retry-After: the whole channel is throttled, not just one item.
    paused_until: Mutex<HashMap<String, Instant>>,
}

fn now_ms() -> i64 {
    countersign_bot::clock::now_ms()
}

impl OutboxWorker {
    /// A worker delivering to `notifiers` (by sink name).
    pub fn new(
        store: Arc<dyn Store>,
        notifiers: Vec<Arc<dyn Notifier>>,
        policy: RetryPolicy,
    ) -> Self {
        Self {
            store,
            notifiers: notifiers
                .into_iter()
                .map(|n| (n.sink().to_string(), n))
                .collect(),
            policy,
            last_sent: Mutex::new(HashMap::new()),
            paused_until: Mutex::new(HashMap::new()),
        }
    }

    /// Sink names this worker serves.
    pub fn sinks(&self) -> Vec<String> {
        let mut s: Vec<String> = self.notifiers.keys().cloned().collect();
        s.sort();
        s
    }

    /// Lease and deliver one batch for every sink. Returns how many items were attempted.
    pub async fn run_once(&self) -> Result<usize, countersign_bot::store::StoreError> {
        self.run_once_for(&self.sinks()).await
    }

    /// Lease and deliver one batch for `sinks` (those not paused by a `Retry-After`).
    async fn run_once_for(
        &self,
        sinks: &[String],
    ) -> Result<usize, countersign_bot::store::StoreError> {
        let sinks: Vec<String> = self
            .unpaused_sinks()
            .into_iter()
            .filter(|s| sinks.contains(s))
            .collect();
        if sinks.is_empty() {
            return Ok(0);
        }
        let lease_ms = self.policy.lease.as_millis() as i64;
        let items = self
            .store
            .lease_outbox(&sinks, now_ms(), lease_ms, 32)
            .await?;
        let n = items.len();
        let mut by_sink: HashMap<String, Vec<OutboxItem>> = HashMap::new();
        for item in items {
            by_sink.entry(item.sink.clone()).or_default().push(item);
        }
        // Sinks in parallel; items of one sink one after another, paced by its rate limit.
        let tasks = by_sink.into_values().map(|items| async move {
            for item in items {
                if let Some(until) = self.paused_for(&item.sink) {
                    // Paused by a 429 earlier in this batch: this item was never tried, so give the lease
                    // back with its attempt refunded.
                    let _ = self
                        .store
                        .outbox_deferred(
                            item.id,
                            "sink paused by Retry-After",
                            now_ms() + until.as_millis() as i64,
                        )
                        .await;
                    continue;
                }
                self.pace(&item.sink).await;
                // The batch's lease ran from when it was taken; items late in a slow sink's queue
                // may have outlived it, and another replica leased them meanwhile.
                match self
                    .store
                    .renew_outbox_lease(item.id, item.attempts, now_ms() + lease_ms)
                    .await
                {
                    Ok(true) => self.deliver(item).await,
                    Ok(false) => {
                        tracing::debug!(id = item.id, sink = %item.sink, "outbox item leased by another worker meanwhile; left to it");
                    }
                    Err(e) => {
                        tracing::warn!(id = item.id, sink = %item.sink, error = %e, "could not renew an outbox lease; the item is retried once it lapses");
                    }
                }
            }
        });
        futures::future::join_all(tasks).await;
        Ok(n)
    }

    fn unpaused_sinks(&self) -> Vec<String> {
        let mut paused = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        paused.retain(|_, until| *until > now);
        self.sinks()
            .into_iter()
            .filter(|s| !paused.contains_key(s))
            .collect()
    }

    /// How much longer `sink` is paused by a `Retry-After`, if it is.
    fn paused_for(&self, sink: &str) -> Option<Duration> {
        let paused = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        let until = *paused.get(sink)?;
        let now = Instant::now();
        (until > now).then(|| until - now)
    }

    fn pause(&self, sink: &str, for_: Duration) {
        let for_ = for_.min(MAX_PAUSE);
        let until = Instant::now() + for_;
        let mut paused = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        let entry = paused.entry(sink.to_string()).or_insert(until);
        *entry = (*entry).max(until);
    }

    async fn pace(&self, sink: &str) {
        let Some(min) = self.policy.min_interval.get(sink).copied() else {
            return;
        };
        let wait = {
            let mut last = self.last_sent.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let next = last.get(sink).map(|t| *t + min).unwrap_or(now).max(now);
            last.insert(sink.to_string(), next);
            next - now
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    async fn deliver(&self, item: OutboxItem) {
        let Some(notifier) = self.notifiers.get(&item.sink) else {
            return;
        };
        let event: WorkflowEvent = match serde_json::from_str(&item.payload) {
            Ok(e) => e,
            Err(e) => {
                let msg = format!("payload cannot be decoded by this version: {e}");
                let _ = self.store.outbox_failed(item.id, &msg, None).await;
                return;
            }
        };
        let limit = self.policy.delivery_timeout.min(self.policy.lease);
        let result = tokio::time::timeout(limit, notifier.deliver(&item.idempotency_key, &event))
            .await
            .unwrap_or_else(|_| {
                Err(DeliveryError::Retryable {
                    message: format!(
                        "{} did not finish delivering within {}s; retrying later (check that the channel's endpoint answers)",
                        item.sink,
                        limit.as_secs_f64()
                    ),
                    retry_after: None,
                })
            });
        let outcome = match result {
            Ok(()) => self.store.outbox_delivered(item.id, now_ms()).await,
            Err(DeliveryError::Permanent(msg)) => {
                tracing::error!(outbox_id = item.id, sink = %item.sink, request_id = ?item.request_id, error = %msg, "delivery failed permanently; dead-lettered (see `countersign outbox list`)");
                self.store.outbox_failed(item.id, &msg, None).await
            }
            Err(DeliveryError::Retryable {
                message,
                retry_after: Some(wait),
            }) => {
                // Whatever a sink asks (Slack's client passes its Retry-After through), one answer
                // pauses a whole channel for an hour at most.
                let wait = wait.min(MAX_PAUSE);
                // Rate limited: the sink asked us to wait, it did not fail, so the attempt is refunded and
                // only the item's age bounds how long it may keep waiting.
                self.pause(&item.sink, wait);
                let age =
                    Duration::from_millis(now_ms().saturating_sub(item.created_ms).max(0) as u64);
                if age >= self.policy.rate_limited_max_age {
                    let msg = format!(
                        "still rate limited after {}s (limit {}s): {message}",
                        age.as_secs(),
                        self.policy.rate_limited_max_age.as_secs()
                    );
                    tracing::error!(outbox_id = item.id, sink = %item.sink, request_id = ?item.request_id, error = %msg, "rate limited for too long; dead-lettered (retry with `countersign outbox retry ID`)");
                    self.store.outbox_failed(item.id, &msg, None).await
                } else {
                    tracing::warn!(outbox_id = item.id, sink = %item.sink, request_id = ?item.request_id, retry_in_ms = wait.as_millis() as u64, error = %message, "rate limited; will retry (not counted as an attempt)");
                    self.store
                        .outbox_deferred(item.id, &message, now_ms() + wait.as_millis() as i64)
                        .await
                }
            }
            Err(DeliveryError::Retryable {
                message,
                retry_after: None,
            }) => {
                let attempts = item.attempts.max(1) as u32;
                if attempts >= self.policy.max_attempts {
                    tracing::error!(outbox_id = item.id, sink = %item.sink, request_id = ?item.request_id, attempts, error = %message, "giving up; dead-lettered (retry with `countersign outbox retry ID`)");
                    self.store.outbox_failed(item.id, &message, None).await
                } else {
                    let delay = self.policy.backoff(attempts);
                    tracing::warn!(outbox_id = item.id, sink = %item.sink, request_id = ?item.request_id, attempts, retry_in_ms = delay.as_millis() as u64, error = %message, "delivery failed; will retry");
                    self.store
                        .outbox_failed(item.id, &message, Some(now_ms() + delay.as_millis() as i64))
                        .await
                }
            }
        };
        if let Err(e) = outcome {
            tracing::warn!(outbox_id = item.id, error = %e, "could not record the delivery outcome; the lease will lapse and it will be retried");
        }
    }

    /// Poll every `every` until the returned task is aborted. Each sink has its own loop: a batch waits
    /// for all its deliveries, so one channel that answers slowly (up to its timeout) would otherwise hold
    /// back every other channel's notifications.
    pub fn spawn(self: Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            // A SQLite store belongs to this process alone: any lease in it is a killed predecessor's,
            // and waiting for it to lapse would only delay that request's notifications.
            if self.store.backend() == "sqlite" {
                match self.store.release_outbox_leases().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        items = n,
                        "gave back outbox leases an earlier run left; delivering them now"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not give back earlier outbox leases; they will lapse")
                    }
                }
            }
            // Dropping the set (when the returned handle is aborted) aborts every sink's loop.
            let mut loops = tokio::task::JoinSet::new();
            for sink in self.sinks() {
                let worker = Arc::clone(&self);
                loops.spawn(async move {
                    let sinks = [sink];
                    loop {
                        match worker.run_once_for(&sinks).await {
                            Ok(n) if n > 0 => continue,
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(sink = %sinks[0], error = %e, "outbox poll failed; retrying")
                            }
                        }
                        tokio::time::sleep(every).await;
                    }
                });
            }
            while loops.join_next().await.is_some() {}
        })
    }
}
