//! Requests and the channel-independent decision path: list, show, vote, cancel.

use super::auth::Caller;
use super::error::ApiError;
use super::AppState;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use countersign_bot::{Decision, Identity, RequestId, RequestStatus, RequesterChain, VoteResult};
use serde::Deserialize;
use serde_json::json;

fn parse_id(id: &str) -> Result<RequestId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::bad_request(format!("{id:?} is not a request id (a UUID)")))
}

/// `GET /v1/requests` parameters.
#[derive(Debug, Deserialize)]
pub struct ListParams {
    status: Option<String>,
    limit: Option<u32>,
}

/// Whether a caller proving `caller` may read a request made by `requester`.
///
/// People (reviewers) read every request: they decide them. A chain with a workload in it reads only
/// requests whose requester chain holds one of its workloads (its own, its subagents', its parent
/// agent's), so one agent can't read another's statements and the literals in them.
fn may_read(caller: &RequesterChain, requester: &RequesterChain) -> bool {
    let mut workloads = caller.0.iter().filter(|i| !i.is_human()).peekable();
    if workloads.peek().is_none() {
        return !caller.0.is_empty();
    }
    // A workload is its issuer and subject: CI tokens often carry a person's e-mail, which two
    // workloads may share without being one another.
    workloads.any(|w| {
        requester
            .0
            .iter()
            .any(|r| !r.is_human() && r.issuer == w.issuer && r.subject == w.subject)
    })
}

pub async fn list(
    State(st): State<AppState>,
    Caller(chain): Caller,
    Query(p): Query<ListParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let status = match &p.status {
        Some(s) => Some(
            s.parse::<RequestStatus>()
                .map_err(|e| ApiError::bad_request(e.to_string()))?,
        ),
        None => None,
    };
    let limit = p.limit.unwrap_or(100).min(1000);
    let everyone = chain.0.iter().all(Identity::is_human);
    // A workload sees its own among the newest requests: fetched at the largest page, then filtered.
    let mut requests = st
        .engine
        .store()
        .list_requests(status, if everyone { limit } else { 1000 })
        .await?;
    if !everyone {
        requests.retain(|r| may_read(&chain, &r.requester));
        requests.truncate(limit as usize);
    }
    Ok(Json(json!({ "requests": requests })))
}

pub async fn show(
    State(st): State<AppState>,
    Caller(chain): Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = parse_id(&id)?;
    let view = st.engine.workflow.get(id).await?;
    if !may_read(&chain, &view.request.requester) {
        // The same answer as for an unknown id: another agent's request is not confirmed to exist.
        return Err(countersign_bot::WorkflowError::NotFound(id).into());
    }
    let mut body = serde_json::to_value(&view).map_err(|e| ApiError::unavailable(e.to_string()))?;
    body["approvals"] = json!(view.approvals());
    body["approvers"] = json!(st.engine.approvers(&view.request.approver_groups));
    body["request_url"] = json!(format!("{}/v1/requests/{}", st.engine.base_url, id));
    Ok(Json(body))
}

/// `POST /v1/requests/{id}/votes` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoteBody {
    decision: String,
    #[serde(default)]
    reason: Option<String>,
}

/// Who votes with a token proving `chain`: the direct caller, unless a workload is anywhere in the chain.
///
/// An agent acting for a human votes as the agent; a human named as the actor (`act`) of a workload's
/// token acts for that workload, so the vote is the workload's too. Either way the workflow refuses it
/// (and audits it) as a workload's vote: a vote needs a person's own token.
fn voter_of(chain: &RequesterChain) -> Option<Identity> {
    chain
        .0
        .iter()
        .find(|i| !i.is_human())
        .or_else(|| chain.caller())
        .cloned()
}

pub async fn vote(
    State(st): State<AppState>,
    Caller(chain): Caller,
    Path(id): Path<String>,
    body: Result<Json<VoteBody>, JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let id = parse_id(&id)?;
    let Json(body) = body.map_err(|e| {
        ApiError::from_json_rejection(e, "{\"decision\": \"approve\"|\"deny\", \"reason\": \"…\"}")
    })?;
    let decision = body.decision.parse::<Decision>().map_err(|_| {
        ApiError::bad_request(format!(
            "decision {:?} must be \"approve\" or \"deny\"",
            body.decision
        ))
    })?;
    let voter = voter_of(&chain).ok_or_else(|| ApiError::bad_request("empty identity"))?;
    match st
        .engine
        .workflow
        .vote_with_chain(id, &voter, &chain, decision, body.reason, "api")
        .await?
    {
        VoteResult::Recorded { view, resolved } => Ok((
            StatusCode::OK,
            Json(json!({
                "request_id": id,
                "recorded": true,
                "status": view.request.status,
                "resolved": resolved,
                "approvals": view.approvals(),
                "quorum": view.request.quorum,
            })),
        )),
        VoteResult::Refused(r) => {
            let status = match r.code {
                "resolved" | "already_voted" | "expired" => StatusCode::CONFLICT,
                _ => StatusCode::FORBIDDEN,
            };
            Err(ApiError::new(status, r.code, r.reason)
                .with(json!({ "request_id": id, "recorded": false })))
        }
    }
}

pub async fn cancel(
    State(st): State<AppState>,
    Caller(chain): Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = parse_id(&id)?;
    let view = st.engine.workflow.get(id).await?;
    if view.request.requester.key() != chain.key() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "not_requester",
            "only the requester can cancel a request",
        ));
    }
    match st.engine.workflow.cancel(id, &chain, "api").await? {
        Some(v) => Ok(Json(
            json!({ "request_id": id, "status": v.request.status }),
        )),
        None => Err(ApiError::new(
            StatusCode::CONFLICT,
            "resolved",
            format!("request is already {}", view.request.status),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use countersign_bot::IdentityKind;

    fn workload(subject: &str, email: Option<&str>) -> Identity {
        Identity {
            issuer: "https://idp".into(),
            subject: subject.into(),
            email: email.map(str::to_string),
            unverified_email: None,
            kind: IdentityKind::Workload,
            groups: vec![],
        }
    }

    #[test]
    fn a_workload_reads_its_own_requests_not_those_of_another_sharing_its_email() {
        let a = RequesterChain::single(workload("svc-job-a", Some("alice@example.com")));
        let b = RequesterChain::single(workload("svc-job-b", Some("Alice@Example.com")));
        assert!(may_read(&a, &a));
        assert!(!may_read(&b, &a));
        // A subagent acting through its parent reads the parent's requests.
        let sub = RequesterChain(vec![
            workload("subagent", None),
            workload("svc-job-a", None),
        ]);
        assert!(may_read(&sub, &a));
        let human = RequesterChain::single(Identity {
            kind: IdentityKind::Human,
            ..workload("bob", Some("bob@example.com"))
        });
        assert!(may_read(&human, &a));
    }
}
