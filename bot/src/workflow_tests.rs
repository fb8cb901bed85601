//! The workflow's behaviour, run against both store backends.

use crate::audit::{verify_chain, ChainCheck};
use crate::directory::{ApproverDirectory, ApproverGroup};
use crate::identity::RequesterChain;
use crate::ids::StatementHash;
use crate::request::{Decision, ExecutionSummary, NewRequest, RequestStatus};
use crate::store::{OutboxStatus, Store};
use crate::testing::{fresh_pg, fresh_sqlite, human, workload, TempDir};
use crate::workflow::{Submitted, VoteResult, Workflow, WorkflowError, MAX_TTL};
use std::sync::Arc;
use std::time::Duration;

fn directory() -> ApproverDirectory {
    ApproverDirectory::new([ApproverGroup {
        name: "dba".into(),
        members: (1..=30)
            .map(|i| format!("reviewer{i}@example.com"))
            .chain(["alice@example.com".into()])
            .collect(),
        idp_groups: vec!["db-admins".into()],
    }])
}

fn agent_for_alice() -> RequesterChain {
    RequesterChain(vec![workload("deploy-agent"), human("alice@example.com")])
}

fn new_request(sql: &str, quorum: u32, ttl_secs: u64) -> NewRequest {
    NewRequest {
        connection: "prod".into(),
        statement: sql.into(),
        statement_hash: StatementHash::of_text(sql),
        requester: agent_for_alice(),
        rule: "default".into(),
        reasons: vec!["DELETE without WHERE".into()],
        approver_groups: vec!["dba".into()],
        quorum,
        ttl_secs,
        origin: "api".into(),
        session_id: None,
        reminders: Default::default(),
    }
}

async fn stores() -> Vec<(Arc<dyn Store>, Option<TempDir>)> {
    let (s, d) = fresh_sqlite().await;
    vec![(s, Some(d)), (fresh_pg().await, None)]
}

fn workflow(store: Arc<dyn Store>) -> Workflow {
    Workflow::new(store, directory(), vec!["log".into(), "slack".into()])
}

async fn created(wf: &Workflow, sql: &str, quorum: u32) -> crate::ids::RequestId {
    match wf.submit(new_request(sql, quorum, 3600)).await.unwrap() {
        Submitted::Created(v) => v.request.id,
        other => panic!("expected a new request, got {other:?}"),
    }
}

/// `reviewer` votes to approve `id` through the API (the call must not fail; the vote may be refused).
async fn approve(wf: &Workflow, id: crate::ids::RequestId, reviewer: &str) {
    wf.vote(id, &human(reviewer), Decision::Approve, None, "api")
        .await
        .unwrap();
}

fn refused_code(r: &VoteResult) -> Option<&'static str> {
    match r {
        VoteResult::Refused(f) => Some(f.code),
        VoteResult::Recorded { .. } => None,
    }
}

#[tokio::test]
async fn two_distinct_humans_approve_and_it_runs_exactly_once() {
    for (store, _g) in stores().await {
        let wf = workflow(store.clone());
        let id = created(&wf, "DELETE FROM orders", 2).await;
        let r1 = wf
            .vote(
                id,
                &human("reviewer1@example.com"),
                Decision::Approve,
                None,
                "api",
            )
            .await
            .unwrap();
        assert!(
            matches!(
                r1,
                VoteResult::Recorded {
                    resolved: false,
                    ..
                }
            ),
            "{}",
            store.backend()
        );
        let r2 = wf
            .vote(
                id,
                &human("reviewer2@example.com"),
                Decision::Approve,
                None,
                "slack",
            )
            .await
            .unwrap();
        assert!(matches!(r2, VoteResult::Recorded { resolved: true, .. }));
        assert_eq!(
            wf.get(id).await.unwrap().request.status,
            RequestStatus::Approved
        );
        // Exactly one claim succeeds, even when raced.
        let chain = agent_for_alice();
        let (a, b) = tokio::join!(wf.claim(id, &chain), wf.claim(id, &chain));
        assert_eq!(
            [a.unwrap().is_some(), b.unwrap().is_some()]
                .iter()
                .filter(|x| **x)
                .count(),
            1
        );
        assert!(wf.claim(id, &agent_for_alice()).await.unwrap().is_none());
        // The execution is audited under whoever claimed it.
        let started: Vec<_> = store
            .audit_records(0, 1000)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.entry.action == "request.execution_started")
            .collect();
        assert_eq!(started.len(), 1);
        assert_eq!(started[0].entry.actor, chain.key());
        let summary = ExecutionSummary {
            command_tag: Some("DELETE 3".into()),
            rows: Some(3),
            error: None,
            duration_ms: 2,
        };
        let done = wf.finish(id, summary).await.unwrap().unwrap();
        assert_eq!(done.request.status, RequestStatus::Executed);
        assert_eq!(
            done.request.execution.unwrap().command_tag.as_deref(),
            Some("DELETE 3")
        );
    }
}

#[tokio::test]
async fn requester_chain_and_workloads_cannot_vote() {
    for (store, _g) in stores().await {
        let wf = workflow(store.clone());
        let id = created(&wf, "DELETE FROM orders", 1).await;
        // Alice is the human the agent acts for; she is also a dba member.
        let r = wf
            .vote(
                id,
                &human("ALICE@example.com"),
                Decision::Approve,
                None,
                "slack",
            )
            .await
            .unwrap();
        assert_eq!(refused_code(&r), Some("requester_cannot_approve"));
        let r = wf
            .vote(
                id,
                &workload("deploy-agent"),
                Decision::Approve,
                None,
                "api",
            )
            .await
            .unwrap();
        assert_eq!(refused_code(&r), Some("workload_cannot_vote"));
        let r = wf
            .vote(
                id,
                &human("mallory@example.com"),
                Decision::Approve,
                None,
                "api",
            )
            .await
            .unwrap();
        assert_eq!(refused_code(&r), Some("not_an_approver"));
        assert_eq!(
            wf.get(id).await.unwrap().request.status,
            RequestStatus::Pending
        );
        assert!(wf.get(id).await.unwrap().votes.is_empty());
        // Each refusal is audited.
        let audit = store.audit_records(0, 100).await.unwrap();
        assert_eq!(
            audit
                .iter()
                .filter(|a| a.entry.action == "vote.refused")
                .count(),
            3
        );
    }
}

#[tokio::test]
async fn acting_for_the_requester_casts_no_vote_on_their_request() {
    for (store, _g) in stores().await {
        let wf = workflow(store.clone());
        let id = created(&wf, "DELETE FROM orders WHERE id = 2", 1).await;
        // Bob (an approver) presenting a token that acts for alice, the human the agent acts for.
        let bob = human("reviewer1@example.com");
        let for_alice = RequesterChain(vec![bob.clone(), human("alice@example.com")]);
        let r = wf
            .vote_with_chain(id, &bob, &for_alice, Decision::Approve, None, "api")
            .await
            .unwrap();
        assert_eq!(refused_code(&r), Some("requester_cannot_approve"));
        assert!(wf.get(id).await.unwrap().votes.is_empty());
        assert_eq!(
            audit_actions(&store, id).await.last().map(String::as_str),
            Some("vote.refused")
        );
        // His own token counts.
        let r = wf
            .vote_with_chain(
                id,
                &bob,
                &RequesterChain::single(bob.clone()),
                Decision::Approve,
                None,
                "api",
            )
            .await
            .unwrap();
        assert_eq!(refused_code(&r), None);
        assert_eq!(wf.get(id).await.unwrap().votes.len(), 1);
    }
}

#[tokio::test]
async fn one_human_counts_once_across_channels() {
    for (store, _g) in stores().await {
        let wf = workflow(store.clone());
        let id = created(&wf, "UPDATE t SET x = 1", 2).await;
        let bob = human("reviewer3@example.com");
        let mut bob_via_idp = human("Reviewer3@Example.com");
        bob_via_idp.issuer = "https://idp.example.com".into();
        assert!(matches!(
            wf.vote(id, &bob, Decision::Approve, None, "slack")
                .await
                .unwrap(),
            VoteResult::Recorded { .. }
        ));
        let r = wf
            .vote(id, &bob_via_idp, Decision::Approve, None, "email")
            .await
            .unwrap();
        assert_eq!(refused_code(&r), Some("already_voted"));
        let v = wf.get(id).await.unwrap();
        assert_eq!(v.request.status, RequestStatus::Pending);
        assert_eq!(v.approvals(), 1);
    }
}

#[tokio::test]
async fn a_person_known_without_an_email_cannot_vote_a_second_time_under_their_address() {
    for (store, _g) in stores().await {
        let wf = workflow(store.clone());
        let id = created(&wf, "UPDATE t SET y = 1", 2).await;
        // reviewer3 through an IdP token that carries no (verified) e-mail: a member by IdP group, but
        // nothing ties this identity to reviewer3@example.com, who may vote through Slack or e-mail.
        let mut without_email = human("reviewer3@example.com");
        without_email.issuer = "https://idp.example.com".into();
        without_email.email = None;
        without_email.groups = vec!["db-admins".into()];
        let r = wf
            .vote(id, &without_email, Decision::Approve, None, "api")
            .await
            .unwrap();
        assert_eq!(refused_code(&r), Some("voter_without_email"));
        approve(&wf, id, "reviewer3@example.com").await;
        let v = wf.get(id).await.unwrap();
        assert_eq!(v.request.status, RequestStatus::Pending);
        assert_eq!(v.approvals(), 1);
        let audit = store.audit_records(0, 1000).await.unwrap();
        assert!(audit
            .iter()
            .any(|a| a.entry.action == "vote.refused"
                && a.entry.detail["code"] == "voter_without_email"));
    }
}

#[tokio::test]
async fn a_requester_chain_with_a_human_known_without_an_email_is_not_held() {
    for (store, _g) in stores().await {
        let wf = workflow(store.clone());
        // The person an agent acts for, known to the IdP only by subject: as a voter through Slack or
        // e-mail (identified by address) nothing would tie them to this request.
        let mut alice_by_subject = human("alice@example.com");
        alice_by_subject.issuer = "https://idp.example.com".into();
        alice_by_subject.subject = "user:alice".into();
        alice_by_subject.email = None;
        for chain in [
            RequesterChain(vec![workload("deploy-agent"), alice_by_subject.clone()]),
            RequesterChain(vec![
                workload("subagent-7"),
                workload("deploy-agent"),
                alice_by_subject.clone(),
            ]),
            RequesterChain::single(alice_by_subject.clone()),
        ] {
            let mut new = new_request("DELETE FROM t WHERE id = 3", 2, 3600);
            new.requester = chain;
            match wf.submit(new).await {
                Err(WorkflowError::RequesterWithoutEmail(who)) => assert_eq!(who, "user:alice"),
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
        assert!(store.list_requests(None, 100).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn deny_vetoes_and_closes_voting() {
    for (store, _g) in stores().await {
        let wf = workflow(store.clone());
        let id = created(&wf, "DROP TABLE t", 2).await;
        approve(&wf, id, "reviewer1@example.com").await;
        let r = wf
            .vote(
                id,
                &human("reviewer2@example.com"),
                Decision::Deny,
                Some("not today".into()),
                "api",
            )
            .await
            .unwrap();
        assert!(matches!(r, VoteResult::Recorded { resolved: true, .. }));
        assert_eq!(
            wf.get(id).await.unwrap().request.status,
            RequestStatus::Denied
        );
        let r = wf
            .vote(
                id,
                &human("reviewer3@example.com"),
                Decision::Approve,
                None,
                "api",
            )
            .await
            .unwrap();
        assert_eq!(refused_code(&r), Some("resolved"));
        assert!(wf.claim(id, &agent_for_alice()).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn pending_requests_expire_and_refuse_votes() {
    for (store, _g) in stores().await {
        let wf = workflow(store.clone());
        let id = match wf.submit(new_request("DELETE FROM a", 1, 1)).await.unwrap() {
            Submitted::Created(v) => v.request.id,
            other => panic!("{other:?}"),
        };
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let r = wf
            .vote(
                id,
                &human("reviewer1@example.com"),
                Decision::Approve,
                None,
                "api",
            )
            .await
            .unwrap();
        assert_eq!(refused_code(&r), Some("expired"));
        assert_eq!(wf.expire_due().await.unwrap(), 1);
        assert_eq!(
            wf.get(id).await.unwrap().request.status,
            RequestStatus::Expired
        );
        assert_eq!(wf.expire_due().await.unwrap(), 0);
    }
}

#[tokio::test]
async fn an_approval_not_run_before_the_ttl_lapses() {
    for (store, _g) in stores().await {
        let wf = workflow(store.clone());
        let id = match wf.submit(new_request("DELETE FROM b", 1, 1)).await.unwrap() {
            Submitted::Created(v) => v.request.id,
            other => panic!("{other:?}"),
        };
        approve(&wf, id, "reviewer1@example.com").await;
        assert_eq!(
            wf.get(id).await.unwrap().request.status,
            RequestStatus::Approved
        );
        assert_eq!(wf.expire_due().await.unwrap(), 0, "not yet due");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(wf.expire_due().await.unwrap(), 1, "{}", store.backend());
        assert_eq!(
            wf.get(id).await.unwrap().request.status,
            RequestStatus::Expired
        );
        let records = store.audit_records(0, 1000).await.unwrap();
        assert!(records.iter().any(|r| r.entry.action == "request.expired"
            && r.entry.request_id.as_deref() == Some(&id.to_string())));
    }
}

#[tokio::test]
async fn an_oversized_ttl_or_wait_is_clamped_instead_of_panicking() {
    let (store, _g) = fresh_sqlite().await;
    let wf = workflow(store);
    // Used to panic: `now + ttl` past the largest timestamp.
    let view = match wf
        .submit(new_request("DELETE FROM far", 1, u64::MAX))
        .await
        .unwrap()
    {
        Submitted::Created(v) => v,
        other => panic!("{other:?}"),
    };
    let ttl = view.request.expires_at - view.request.created_at;
    assert_eq!(ttl.whole_seconds() as u64, MAX_TTL.as_secs());
    // Used to panic: `Instant::now() + timeout` past what the clock holds.
    wf.begin_shutdown();
    let waited = wf
        .wait_resolved(view.request.id, Duration::MAX)
        .await
        .unwrap();
    assert_eq!(waited.request.status, RequestStatus::Pending);
}

#[tokio::test]
async fn identical_resubmission_reuses_and_altered_text_is_a_new_request() {
    for (store, _g) in stores().await {
        let wf = workflow(store.clone());
        let id = created(&wf, "DELETE FROM orders WHERE id = 1", 1).await;
        match wf
            .submit(new_request("DELETE FROM orders WHERE id = 1", 1, 3600))
            .await
            .unwrap()
        {
            Submitted::AlreadyPending(v) => assert_eq!(v.request.id, id),
            other => panic!("{other:?}"),
        }
        approve(&wf, id, "reviewer1@example.com").await;
        // Altered text: a different statement, a new request, nothing runs.
        match wf
            .submit(new_request(
                "DELETE FROM orders WHERE id = 1 OR true",
                1,
                3600,
            ))
            .await
            .unwrap()
        {
            Submitted::Created(v) => assert_ne!(v.request.id, id),
            other => panic!("{other:?}"),
        }
        // The identical text, re-sent: claimed once.
        match wf
            .submit(new_request("DELETE FROM orders WHERE id = 1", 1, 3600))
            .await
            .unwrap()
        {
            Submitted::ApprovedAndClaimed(v) => assert_eq!(v.request.id, id),
            other => panic!("{other:?}"),
        }
        // A third send needs a new approval.
        match wf
            .submit(new_request("DELETE FROM orders WHERE id = 1", 1, 3600))
            .await
            .unwrap()
        {
            Submitted::Created(v) => assert_ne!(v.request.id, id),
            other => panic!("{other:?}"),
        }
    }
}

/// Sends of one statement racing each other (several sessions, several replicas) make one request, so
/// reviewers are asked once and an approval runs it once.
#[tokio::test]
async fn concurrent_identical_submissions_make_one_request() {
    for (store, _g) in stores().await {
        let replicas = [workflow(store.clone()), workflow(store.clone())];
        let sends = (0..8).map(|i| {
            let wf = &replicas[i % 2];
            wf.submit(new_request("UPDATE t SET n = n + 1 WHERE id = 6", 1, 3600))
        });
        let outcomes = futures::future::join_all(sends).await;
        let mut ids = std::collections::HashSet::new();
        let mut created = 0;
        for outcome in outcomes {
            match outcome.unwrap() {
                Submitted::Created(v) => {
                    created += 1;
                    ids.insert(v.request.id);
                }
                Submitted::AlreadyPending(v) => {
                    ids.insert(v.request.id);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(created, 1, "{}", store.backend());
        assert_eq!(ids.len(), 1, "{}", store.backend());
        let pending = store
            .list_requests(Some(RequestStatus::Pending), 100)
            .await
            .unwrap();
        assert_eq!(pending.len(), 1, "{}", store.backend());
    }
}

#[tokio::test]
async fn concurrent_votes_reach_a_consistent_final_state() {
    for (store, _g) in stores().await {
        let wf = Arc::new(workflow(store.clone()));
        let id = created(&wf, "DELETE FROM big", 3).await;
        let mut tasks = Vec::new();
        for i in 1..=20 {
            let wf = wf.clone();
            tasks.push(tokio::spawn(async move {
                wf.vote(
                    id,
                    &human(&format!("reviewer{i}@example.com")),
                    Decision::Approve,
                    None,
                    "api",
                )
                .await
                .unwrap()
            }));
        }
        let mut recorded = 0;
        let mut resolved = 0;
        for t in tasks {
            match t.await.unwrap() {
                VoteResult::Recorded { resolved: r, .. } => {
                    recorded += 1;
                    resolved += usize::from(r);
                }
                VoteResult::Refused(f) => assert_eq!(f.code, "resolved", "{}", store.backend()),
            }
        }
        let v = wf.get(id).await.unwrap();
        assert_eq!(
            v.request.status,
            RequestStatus::Approved,
            "{}",
            store.backend()
        );
        assert_eq!(
            recorded,
            3,
            "exactly the quorum is recorded on {}",
            store.backend()
        );
        assert_eq!(resolved, 1);
        assert_eq!(v.votes.len(), 3);
    }
}

#[tokio::test]
async fn audit_chain_verifies_and_names_an_edited_row() {
    for (store, _g) in stores().await {
        let wf = workflow(store.clone());
        let id = created(&wf, "DELETE FROM orders", 2).await;
        approve(&wf, id, "reviewer1@example.com").await;
        approve(&wf, id, "alice@example.com").await;
        approve(&wf, id, "reviewer2@example.com").await;
        let records = store.audit_records(0, 1000).await.unwrap();
        assert!(records.len() >= 5);
        assert_eq!(
            verify_chain(&records),
            ChainCheck::Intact {
                records: records.len() as u64
            }
        );
        let mut tampered = records.clone();
        tampered[2].entry.actor = "someone-else".into();
        assert!(matches!(
            verify_chain(&tampered),
            ChainCheck::Broken { seq: 3, .. }
        ));
    }
}

#[tokio::test]
async fn events_are_queued_for_every_sink_in_order() {
    for (store, _g) in stores().await {
        let wf = workflow(store.clone());
        let id = created(&wf, "DELETE FROM orders", 1).await;
        approve(&wf, id, "reviewer1@example.com").await;
        let items = store
            .outbox_list(Some(OutboxStatus::Pending), 100)
            .await
            .unwrap();
        // created, vote_recorded, resolved for each of two sinks.
        assert_eq!(items.len(), 6, "{}", store.backend());
        let now = crate::store::backend::now_ms();
        // Per sink and request, only the oldest pending item is leasable.
        let leased = store
            .lease_outbox(&["slack".into()], now, 30_000, 10)
            .await
            .unwrap();
        assert_eq!(leased.len(), 1);
        assert_eq!(leased[0].event_kind, "created");
        assert!(store
            .lease_outbox(&["slack".into()], now, 30_000, 10)
            .await
            .unwrap()
            .is_empty());
        // A restart of a process owning its store gives the lease back at once.
        assert_eq!(store.release_outbox_leases().await.unwrap(), 1);
        let again = store
            .lease_outbox(&["slack".into()], now, 30_000, 10)
            .await
            .unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].id, leased[0].id);
        store.outbox_delivered(leased[0].id, now).await.unwrap();
        let next = store
            .lease_outbox(&["slack".into()], now, 30_000, 10)
            .await
            .unwrap();
        assert_eq!(next[0].event_kind, "vote_recorded");
        store.outbox_failed(next[0].id, "boom", None).await.unwrap();
        assert_eq!(
            store
                .outbox_list(Some(OutboxStatus::Dead), 10)
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(store.outbox_retry(next[0].id, now).await.unwrap());
    }
}

#[tokio::test]
async fn a_lease_that_lapsed_and_was_taken_by_another_worker_is_not_renewed() {
    for (store, _g) in stores().await {
        let wf = workflow(store.clone());
        created(&wf, "DELETE FROM orders", 1).await;
        let now = crate::store::backend::now_ms();
        let first = store
            .lease_outbox(&["slack".into()], now, 1_000, 10)
            .await
            .unwrap();
        assert_eq!(first.len(), 1);
        // Still held: renewed.
        assert!(store
            .renew_outbox_lease(first[0].id, first[0].attempts, now + 1_000)
            .await
            .unwrap());
        // Lapsed, and leased by another worker: the first worker's renewal fails, the second's holds.
        let later = now + 5_000;
        let second = store
            .lease_outbox(&["slack".into()], later, 1_000, 10)
            .await
            .unwrap();
        assert_eq!(second.len(), 1, "{}", store.backend());
        assert_eq!(second[0].id, first[0].id);
        assert!(!store
            .renew_outbox_lease(first[0].id, first[0].attempts, later + 1_000)
            .await
            .unwrap());
        assert!(store
            .renew_outbox_lease(second[0].id, second[0].attempts, later + 1_000)
            .await
            .unwrap());
        // Delivered: no lease to renew.
        store.outbox_delivered(second[0].id, later).await.unwrap();
        assert!(!store
            .renew_outbox_lease(second[0].id, second[0].attempts, later + 2_000)
            .await
            .unwrap());
    }
}

#[tokio::test]
async fn nonces_are_single_use() {
    for (store, _g) in stores().await {
        assert!(store.consume_nonce("n-1", 1).await.unwrap());
        assert!(!store.consume_nonce("n-1", 2).await.unwrap());
        // Released when what it was used for failed: usable once more, and only once.
        store.release_nonce("n-1").await.unwrap();
        assert!(store.consume_nonce("n-1", 3).await.unwrap());
        assert!(!store.consume_nonce("n-1", 4).await.unwrap());
        assert!(store.consume_nonce("n-2", 5).await.unwrap());
        // Pruning forgets only old nonces of the prefix.
        assert!(store.consume_nonce("slack:old", 10).await.unwrap());
        assert!(store.consume_nonce("slack:new", 1_000).await.unwrap());
        assert_eq!(store.prune_nonces("slack:", 500).await.unwrap(), 1);
        assert!(store.consume_nonce("slack:old", 2_000).await.unwrap());
        assert!(!store.consume_nonce("slack:new", 2_000).await.unwrap());
        assert!(!store.consume_nonce("n-2", 2_000).await.unwrap());
    }
}

#[tokio::test]
async fn waiters_wake_on_resolution() {
    for (store, _g) in stores().await {
        let wf = Arc::new(workflow(store.clone()));
        let id = created(&wf, "DELETE FROM w", 1).await;
        let waiter = {
            let wf = wf.clone();
            tokio::spawn(
                async move { wf.wait_resolved(id, Duration::from_secs(10)).await.unwrap() },
            )
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        approve(&wf, id, "reviewer1@example.com").await;
        let v = waiter.await.unwrap();
        assert_eq!(v.request.status, RequestStatus::Approved);
        assert!(started.elapsed() < Duration::from_secs(5));
        // A wait on a still-pending request returns at its deadline.
        let other = created(&wf, "DELETE FROM w2", 1).await;
        let v = wf
            .wait_resolved(other, Duration::from_millis(100))
            .await
            .unwrap();
        assert_eq!(v.request.status, RequestStatus::Pending);
    }
}

#[tokio::test]
async fn rule_reminder_settings_survive_the_store_and_default_to_unset() {
    for (store, _dir) in stores().await {
        let wf = workflow(Arc::clone(&store));
        let mut new = new_request("DELETE FROM reminded", 2, 3600);
        new.reminders = crate::request::ReminderSettings {
            remind_after_secs: Some(60),
            escalate_after_secs: Some(600),
            escalate_to: vec!["dba-leads".into(), "#oncall".into()],
        };
        let expected = new.reminders.clone();
        let Submitted::Created(view) = wf.submit(new).await.unwrap() else {
            panic!("expected a new request");
        };
        let stored = store.get_request(view.request.id).await.unwrap().unwrap();
        assert_eq!(stored.request.reminders, expected, "{}", store.backend());
        let listed = store
            .list_requests(Some(RequestStatus::Pending), 10)
            .await
            .unwrap();
        assert!(listed.iter().any(|r| r.reminders == expected));

        let plain = created(&wf, "DELETE FROM unreminded", 2).await;
        let stored = store.get_request(plain).await.unwrap().unwrap();
        assert!(stored.request.reminders.is_unset(), "{}", store.backend());
    }
}

#[tokio::test]
async fn concurrent_audited_changes_keep_one_intact_chain() {
    for (store, _g) in stores().await {
        let wf = Arc::new(workflow(store.clone()));
        let mut tasks = Vec::new();
        for i in 0..24 {
            let wf = wf.clone();
            tasks.push(tokio::spawn(async move {
                let id = created(&wf, &format!("DELETE FROM t{i}"), 1).await;
                let standalone = wf
                    .store()
                    .append_audit(crate::audit::AuditEntry::new(
                        "system",
                        "test.note",
                        "system",
                    ))
                    .await
                    .unwrap();
                approve(&wf, id, "reviewer1@example.com").await;
                assert!(wf.claim(id, &agent_for_alice()).await.unwrap().is_some());
                wf.finish(
                    id,
                    ExecutionSummary {
                        command_tag: Some("DELETE 1".into()),
                        rows: Some(1),
                        error: None,
                        duration_ms: 1,
                    },
                )
                .await
                .unwrap();
                (id, standalone)
            }));
        }
        let mut done = Vec::new();
        for t in tasks {
            done.push(t.await.unwrap());
        }
        let records = store.audit_records(0, 10_000).await.unwrap();
        assert_eq!(records.len(), 24 * 6, "{}", store.backend());
        assert_eq!(
            verify_chain(&records),
            ChainCheck::Intact {
                records: records.len() as u64
            },
            "{}",
            store.backend()
        );
        for (id, standalone) in done {
            // The record handed back is the stored one.
            assert_eq!(records[standalone.seq as usize - 1], standalone);
            let actions: Vec<&str> = records
                .iter()
                .filter(|r| r.entry.request_id.as_deref() == Some(id.to_string().as_str()))
                .map(|r| r.entry.action.as_str())
                .collect();
            assert_eq!(
                actions,
                [
                    "request.created",
                    "vote.recorded",
                    "request.resolved",
                    "request.execution_started",
                    "request.executed"
                ],
                "{}",
                store.backend()
            );
        }
    }
}

/// A hardened database may deny `pg_logical_emit_message`; audited changes then commit synchronously
/// instead of failing.
#[tokio::test]
async fn audited_changes_work_where_the_store_role_may_not_emit_wal_messages() {
    use sqlx::{AssertSqlSafe, Connection};
    let url = crate::testing::fresh_pg_database().await.unwrap();
    let role = format!("cs_nogc_{}", uuid::Uuid::new_v4().simple());
    let (scheme, rest) = url.split_once("://").unwrap();
    let host_and_db = rest.split_once('@').map_or(rest, |(_, h)| h);
    let role_url = format!("{scheme}://{role}@{host_and_db}");
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    for sql in [
        format!("CREATE ROLE {role} LOGIN"),
        format!("GRANT ALL ON SCHEMA public TO {role}"),
        "REVOKE EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, text) FROM PUBLIC"
            .into(),
    ] {
        sqlx::query(AssertSqlSafe(sql))
            .execute(&mut admin)
            .await
            .unwrap();
    }
    {
        let mut probe = sqlx::PgConnection::connect(&role_url).await.unwrap();
        let denied = sqlx::query("SELECT pg_logical_emit_message(true, 'x', 'y')")
            .execute(&mut probe)
            .await;
        assert!(
            denied.is_err(),
            "the role must lack the privilege for this test"
        );
    }
    let store = crate::store::open(&role_url).await.unwrap();
    let wf = workflow(store.clone());
    let id = created(&wf, "DELETE FROM t", 1).await;
    approve(&wf, id, "reviewer1@example.com").await;
    assert!(wf.claim(id, &agent_for_alice()).await.unwrap().is_some());
    let records = store.audit_records(0, 100).await.unwrap();
    assert_eq!(records.len(), 4, "{records:#?}");
    assert_eq!(verify_chain(&records), ChainCheck::Intact { records: 4 });
    drop((wf, store));
    for sql in [format!("DROP OWNED BY {role}"), format!("DROP ROLE {role}")] {
        let _ = sqlx::query(AssertSqlSafe(sql)).execute(&mut admin).await;
    }
}

/// Approves `id` with one reviewer (quorum 1) and claims it on `wf`.
async fn approved_and_claimed(wf: &Workflow, sql: &str) -> crate::ids::RequestId {
    let id = created(wf, sql, 1).await;
    approve(wf, id, "reviewer1@example.com").await;
    assert!(
        wf.claim(id, &agent_for_alice()).await.unwrap().is_some(),
        "claim {sql}"
    );
    id
}

fn ms_now() -> i64 {
    crate::store::backend::now_ms()
}

async fn audit_actions(store: &Arc<dyn Store>, id: crate::ids::RequestId) -> Vec<String> {
    let records = store.audit_records(0, 10_000).await.unwrap();
    assert!(
        matches!(verify_chain(&records), ChainCheck::Intact { .. }),
        "{}",
        store.backend()
    );
    records
        .iter()
        .filter(|r| r.entry.request_id == Some(id.to_string()))
        .map(|r| r.entry.action.clone())
        .collect()
}

#[tokio::test]
async fn an_execution_left_by_a_stopped_gateway_is_declared_interrupted_and_a_late_result_audited()
{
    for (store, _g) in stores().await {
        // `gone` claimed the execution, then stopped marking it alive; `other` is a replica (or the
        // restarted process).
        let gone = workflow(store.clone());
        let other = workflow(store.clone());
        let id = approved_and_claimed(&gone, "DELETE FROM stale_orders").await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(other.keep_executions(ms_now()).await.unwrap(), 1);
        let view = other.get(id).await.unwrap();
        assert_eq!(
            view.request.status,
            RequestStatus::Failed,
            "{}",
            store.backend()
        );
        let execution = view.request.execution.unwrap();
        assert_eq!(
            execution.error.as_deref(),
            Some(crate::workflow::INTERRUPTED)
        );
        // Declared once.
        assert_eq!(other.keep_executions(ms_now()).await.unwrap(), 0);
        // The stopped gateway's result arrives after all: the status stays, the outcome is audited.
        let late = ExecutionSummary {
            command_tag: Some("DELETE 7".into()),
            rows: Some(7),
            error: None,
            duration_ms: 3,
        };
        assert!(gone.finish(id, late).await.unwrap().is_none());
        assert_eq!(
            gone.get(id).await.unwrap().request.status,
            RequestStatus::Failed
        );
        let actions = audit_actions(&store, id).await;
        assert!(
            actions.ends_with(&[
                "request.execution_started".into(),
                "request.execution_interrupted".into(),
                "request.result_after_interrupt".into(),
            ]),
            "{}: {actions:?}",
            store.backend()
        );
        // The executed-event reaches the channels, so reviewers see the failure in their thread.
        let queued = store.outbox_list(None, 1000).await.unwrap();
        let queued: Vec<_> = queued
            .iter()
            .filter(|o| o.request_id == Some(id.to_string()))
            .collect();
        assert!(
            queued.iter().any(|o| o.event_kind == "executed"),
            "{}: {:?}",
            store.backend(),
            queued.iter().map(|o| &o.event_kind).collect::<Vec<_>>()
        );
    }
}

#[tokio::test]
async fn an_execution_its_gateway_keeps_alive_is_not_interrupted() {
    for (store, _g) in stores().await {
        let running = workflow(store.clone());
        let other = workflow(store.clone());
        let id = approved_and_claimed(&running, "DELETE FROM live_orders").await;
        let claimed_by = ms_now();
        tokio::time::sleep(Duration::from_millis(5)).await;
        // The running gateway's heartbeat marks it alive after the claim...
        assert_eq!(
            running.keep_executions(claimed_by - 60_000).await.unwrap(),
            0
        );
        // ...so a replica looking for executions quiet since the claim finds none.
        assert_eq!(other.keep_executions(claimed_by).await.unwrap(), 0);
        assert_eq!(
            other.get(id).await.unwrap().request.status,
            RequestStatus::Executing,
            "{}",
            store.backend()
        );
        // The gateway's own sweep never declares its own execution interrupted.
        assert_eq!(running.keep_executions(ms_now()).await.unwrap(), 0);
        let done = ExecutionSummary {
            command_tag: Some("DELETE 1".into()),
            rows: Some(1),
            error: None,
            duration_ms: 1,
        };
        let view = running.finish(id, done).await.unwrap().unwrap();
        assert_eq!(view.request.status, RequestStatus::Executed);
        assert!(!audit_actions(&store, id)
            .await
            .contains(&"request.execution_interrupted".to_string()));
    }
}
