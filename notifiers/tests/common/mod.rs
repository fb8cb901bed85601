//! Shared set-up for the outbox, webhook and Jira tests: a workflow, a request that produces several events,
//! draining the outbox, and a port nobody listens on.
#![allow(dead_code)]

use countersign_bot::testing::{human, workload};
use countersign_bot::{
    ApproverDirectory, ApproverGroup, Decision, NewRequest, RequestId, RequesterChain,
    StatementHash, Store, Submitted, Workflow,
};
use std::sync::Arc;

/// A workflow whose `dba` group is bob and carol, notifying `sinks`.
pub fn workflow(store: &Arc<dyn Store>, sinks: &[&str]) -> Arc<Workflow> {
    let directory = ApproverDirectory::new([ApproverGroup {
        name: "dba".into(),
        members: vec!["bob@example.com".into(), "carol@example.com".into()],
        idp_groups: vec![],
    }]);
    Arc::new(Workflow::new(
        Arc::clone(store),
        directory,
        sinks.iter().map(|s| s.to_string()).collect(),
    ))
}

/// Submit a statement and approve it with two votes: events created, vote_recorded ×2, resolved.
pub async fn approved_request(wf: &Workflow, sql: &str) -> RequestId {
    let new = NewRequest {
        connection: "prod".into(),
        statement: sql.into(),
        statement_hash: StatementHash::of_text(sql),
        requester: RequesterChain(vec![workload("agent"), human("alice@example.com")]),
        rule: "review".into(),
        reasons: vec!["write".into()],
        approver_groups: vec!["dba".into()],
        quorum: 2,
        ttl_secs: 3600,
        origin: "http".into(),
        session_id: None,
        reminders: Default::default(),
    };
    let id = match wf.submit(new).await.expect("submit") {
        Submitted::Created(v) => v.request.id,
        other => panic!("expected a new request, got {other:?}"),
    };
    for who in ["bob@example.com", "carol@example.com"] {
        wf.vote(id, &human(who), Decision::Approve, None, "api")
            .await
            .expect("vote");
    }
    id
}

/// The event kinds a request produces in order.
pub const EXPECTED_KINDS: [&str; 4] = ["created", "vote_recorded", "vote_recorded", "resolved"];

/// Runs the outbox worker until nothing is pending; false when `limit` passes first.
pub async fn drain(
    store: &Arc<dyn Store>,
    worker: &countersign_notifiers::OutboxWorker,
    limit: std::time::Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        worker.run_once().await.expect("run");
        if store
            .outbox_list(Some(countersign_bot::store::OutboxStatus::Pending), 100)
            .await
            .expect("list")
            .is_empty()
        {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    false
}

/// A loopback port that was free a moment ago and has no listener: connecting is refused.
pub async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    l.local_addr().expect("addr").port()
}
