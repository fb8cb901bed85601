//! Cross-replica change feed: every status change in the PostgreSQL store issues
//! `NOTIFY countersign_requests, '<request id>'` inside its transaction, so it is delivered on commit; each
//! replica LISTENs and wakes its local waiters. Notifications are transient: when the listening connection
//! drops, the feed reconnects and reports a gap, and waiters' periodic re-check covers what was missed.

use crate::ids::RequestId;
use sqlx::postgres::PgListener;
use std::time::Duration;

/// The channel status changes are announced on.
pub const REQUESTS_CHANNEL: &str = "countersign_requests";

/// What the feed reports to its subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// This request's status changed (on any replica).
    Request(RequestId),
    /// The feed was (re)connected: changes may have been missed, re-check everything.
    Gap,
    /// The feed lost its connection: until the next [`Change::Gap`], changes go unannounced.
    Lost,
}

/// A source of [`Change`]s, obtained from [`crate::Store::change_feed`].
#[derive(Debug, Clone)]
pub struct ChangeFeed {
    url: String,
}

impl ChangeFeed {
    /// A feed listening on the PostgreSQL database at `url`.
    pub fn postgres(url: &str) -> Self {
        Self {
            url: url.to_string(),
        }
    }

    /// Listen until the task is aborted, calling `on_change` for every change; reconnects on errors with a
    /// capped backoff.
    pub fn spawn(
        self,
        on_change: impl Fn(Change) + Send + Sync + 'static,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                match self.listen(&on_change).await {
                    Ok(()) => backoff = Duration::from_millis(100),
                    Err(e) => {
                        on_change(Change::Lost);
                        tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "change feed lost its PostgreSQL connection; waiters fall back to polling until it reconnects");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        })
    }

    /// One connection's lifetime: returns `Ok` when the connection dropped and was re-established by sqlx
    /// (a gap), `Err` when connecting or listening failed.
    async fn listen(&self, on_change: &(impl Fn(Change) + Send + Sync)) -> Result<(), sqlx::Error> {
        let mut listener = PgListener::connect(&self.url).await?;
        listener.listen(REQUESTS_CHANNEL).await?;
        // Anything committed before LISTEN took effect was not seen.
        on_change(Change::Gap);
        loop {
            match listener.try_recv().await? {
                Some(n) => match n.payload().parse::<RequestId>() {
                    Ok(id) => on_change(Change::Request(id)),
                    Err(_) => {
                        tracing::warn!(
                            payload = n.payload(),
                            "ignoring a malformed change notification"
                        )
                    }
                },
                None => {
                    on_change(Change::Lost);
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::directory::{ApproverDirectory, ApproverGroup};
    use crate::identity::RequesterChain;
    use crate::ids::StatementHash;
    use crate::request::{Decision, NewRequest, RequestStatus};
    use crate::store::{self, AuditEntry, RequestStatus as S, Transition};
    use crate::testing::{fresh_pg_database, human, workload};
    use crate::workflow::{Submitted, Workflow};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    fn replica(store: Arc<dyn store::Store>) -> Arc<Workflow> {
        let dir = ApproverDirectory::new([ApproverGroup {
            name: "dba".into(),
            members: vec!["bob@example.com".into(), "carol@example.com".into()],
            idp_groups: vec![],
        }]);
        // A re-poll far longer than the assertion window: only the NOTIFY can wake the waiter in time.
        Arc::new(
            Workflow::new(store, dir, vec!["log".into()])
                .with_poll_interval(Duration::from_secs(30)),
        )
    }

    fn held(sql: &str, ttl_secs: u64) -> NewRequest {
        NewRequest {
            connection: "prod".into(),
            statement: sql.into(),
            statement_hash: StatementHash::of_text(sql),
            requester: RequesterChain(vec![workload("agent"), human("alice@example.com")]),
            rule: "default".into(),
            reasons: vec!["test".into()],
            approver_groups: vec!["dba".into()],
            quorum: 1,
            ttl_secs,
            origin: "api".into(),
            session_id: None,
            reminders: Default::default(),
        }
    }

    async fn two_replicas() -> (Arc<Workflow>, Arc<Workflow>) {
        let url = fresh_pg_database()
            .await
            .expect("PostgreSQL on 127.0.0.1:5432");
        let a = replica(store::open(&url).await.expect("open A"));
        let b = replica(store::open(&url).await.expect("open B"));
        (a, b)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn vote_on_replica_b_wakes_a_waiter_on_replica_a_within_100ms() {
        let (a, b) = two_replicas().await;
        let _listener = a
            .spawn_change_listener()
            .expect("postgres has a change feed");
        let Submitted::Created(v) = a.submit(held("DELETE FROM t", 3600)).await.unwrap() else {
            panic!("expected a new request")
        };
        let id = v.request.id;
        let waiter = {
            let a = a.clone();
            tokio::spawn(async move {
                let view = a.wait_resolved(id, Duration::from_secs(10)).await.unwrap();
                (view.request.status, Instant::now())
            })
        };
        // Let the waiter and the LISTEN settle before voting.
        tokio::time::sleep(Duration::from_millis(300)).await;
        b.vote(
            id,
            &human("bob@example.com"),
            Decision::Approve,
            None,
            "api",
        )
        .await
        .unwrap();
        // The vote has committed when `vote` returns: the release is measured from there.
        let committed = Instant::now();
        let (status, woke) = waiter.await.unwrap();
        assert_eq!(status, RequestStatus::Approved);
        let lag = woke.saturating_duration_since(committed);
        assert!(lag < Duration::from_millis(100), "woken after {lag:?}");
    }

    #[tokio::test]
    async fn only_committed_status_changes_are_announced() {
        let url = fresh_pg_database().await.unwrap();
        let s = store::open(&url).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let _feed = s.change_feed().unwrap().spawn(move |c| {
            let _ = tx.send(c);
        });
        assert_eq!(rx.recv().await, Some(super::Change::Gap));
        let wf = replica(s.clone());
        let Submitted::Created(v) = wf.submit(held("DROP TABLE t", 3600)).await.unwrap() else {
            panic!("expected a new request")
        };
        let id = v.request.id;
        // A compare-and-set that does not match changes nothing and announces nothing.
        let t = Transition {
            from: &[S::Approved],
            to: S::Executing,
            audit: AuditEntry::new("system", "test", "system"),
            execution: None,
            notify: None,
            quiet_since_ms: None,
        };
        assert!(s.transition(id, t, &[]).await.unwrap().is_none());
        assert!(
            tokio::time::timeout(Duration::from_millis(300), rx.recv())
                .await
                .is_err(),
            "no notification for a change that did not happen"
        );
        wf.cancel(id, &v.request.requester, "api").await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
        assert_eq!(got.ok().flatten(), Some(super::Change::Request(id)));
    }

    #[tokio::test]
    async fn two_replicas_expiring_the_same_request_expire_it_once() {
        let (a, b) = two_replicas().await;
        let mut ids = vec![];
        for i in 0..20 {
            let Submitted::Created(v) = a
                .submit(held(&format!("DELETE FROM t{i}"), 1))
                .await
                .unwrap()
            else {
                panic!("expected a new request")
            };
            ids.push(v.request.id);
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let (na, nb) = tokio::join!(a.expire_due(), b.expire_due());
        let (na, nb) = (na.unwrap(), nb.unwrap());
        assert_eq!(
            na + nb,
            20,
            "each request expired by exactly one replica ({na} + {nb})"
        );
        let records = a.store().audit_records(0, 10_000).await.unwrap();
        for id in ids {
            let expired = records
                .iter()
                .filter(|r| {
                    r.entry.action == "request.expired"
                        && r.entry.request_id.as_deref() == Some(id.to_string().as_str())
                })
                .count();
            assert_eq!(expired, 1, "request {id} has one expiry record");
            assert_eq!(
                a.get(id).await.unwrap().request.status,
                RequestStatus::Expired
            );
        }
    }
}
