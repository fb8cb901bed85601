//! `POST /v1/connections/{name}/query`: classify, then run, refuse or hold.

use super::auth::Caller;
use super::error::ApiError;
use super::{parse_wait, AppState};
use crate::engine::{summarize, Admission, HttpStatement, Incoming};
use crate::metrics::{FrontDoor, Metrics, UpstreamFailure};
use crate::policy::Verdict;
use crate::upstream::{ExecError, QueryOutcome};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use countersign_bot::audit::AuditEntry;
use countersign_bot::{RequestId, RequestStatus, RequestView, StatementHash};
use serde::Deserialize;
use serde_json::json;
use std::time::Instant;

/// Request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryBody {
    sql: String,
}

/// Query string.
#[derive(Debug, Deserialize)]
pub struct QueryParams {
    wait: Option<String>,
}

pub async fn query(
    State(st): State<AppState>,
    Path(name): Path<String>,
    Query(params): Query<QueryParams>,
    Caller(requester): Caller,
    body: Result<Json<QueryBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(|e| ApiError::from_json_rejection(e, "{\"sql\": \"…\"}"))?;
    let engine = &st.engine;
    if engine.upstream_target(&name).is_none() {
        return Err(ApiError::not_found(format!(
            "no connection named {name:?}; configured: {}",
            engine.connection_names().join(", ")
        )));
    }
    if body.sql.trim().is_empty() {
        return Err(ApiError::bad_request("`sql` is empty"));
    }
    let wait = match &params.wait {
        Some(w) => Some(
            parse_wait(w)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "wait={w:?} is not a duration; use e.g. wait=30s"
                    ))
                })?
                .min(engine.max_wait),
        ),
        None => None,
    };
    let verdict = engine.classify(&name, &requester, &body.sql);
    engine
        .metrics
        .statement(FrontDoor::Api, verdict.action.into());
    let hash = StatementHash::of_text(&body.sql);
    let admission = engine
        .admit(
            &Incoming {
                connection: &name,
                requester: &requester,
                sql: &body.sql,
                hash: &hash,
                origin: "api",
                session: None,
            },
            &verdict,
        )
        .await?;
    let received = Instant::now();
    let note =
        |decision: &'static str, request_id: Option<RequestId>, outcome: &'static str| Note {
            decision,
            request_id,
            outcome,
            command_tag: None,
            rows: None,
            error: None,
            masked_fields: 0,
        };
    let (response, note) = match admission {
        Admission::Run => {
            let entry = AuditEntry::new(requester.key(), "statement.allowed", "api")
                .decision("allow")
                .statement(hash)
                .detail(json!({ "connection": name, "rule": verdict.rule }));
            engine.store().append_audit(entry).await?;
            let started = Instant::now();
            let out = engine.execute(&name, &body.sql, &verdict).await;
            let note = Note::of(&out, "allow", None);
            (
                respond_with_result(&engine.metrics, out, &verdict, None, started),
                note,
            )
        }
        Admission::Blocked => (
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "blocked",
                format!(
                    "blocked by policy rule {:?}: {}",
                    verdict.rule,
                    verdict.reasons.join("; ")
                ),
            )
            .with(json!({ "reasons": verdict.reasons, "rule": verdict.rule }))),
            note("block", None, "blocked"),
        ),
        Admission::RunApproved(id) => run_approved(&st, &name, &body.sql, &verdict, id).await,
        Admission::Held(view) => {
            let id = view.request.id;
            match wait.filter(|w| !w.is_zero()) {
                None => (
                    Ok(pending_response(&st, &view)),
                    note("review", Some(id), "held"),
                ),
                Some(wait) => {
                    let view = {
                        let _held = engine.metrics.hold();
                        engine.workflow.wait_resolved(id, wait).await?
                    };
                    match view.request.status {
                        RequestStatus::Approved => {
                            match engine.workflow.claim(id, &view.request.requester).await? {
                                Some(_) => run_approved(&st, &name, &body.sql, &verdict, id).await,
                                None => (
                                    Err(already_claimed(id)),
                                    note("review", Some(id), "not_run"),
                                ),
                            }
                        }
                        RequestStatus::Pending => (
                            Ok(pending_response(&st, &view)),
                            note("review", Some(id), "held"),
                        ),
                        RequestStatus::Denied => (
                            Err(resolved_error(&view)),
                            note("review", Some(id), "denied"),
                        ),
                        RequestStatus::Expired => (
                            Err(resolved_error(&view)),
                            note("review", Some(id), "expired"),
                        ),
                        _ => (
                            Err(resolved_error(&view)),
                            note("review", Some(id), "cancelled"),
                        ),
                    }
                }
            }
        }
    };
    engine
        .record_http(HttpStatement {
            connection: &name,
            requester: &requester,
            sql: &body.sql,
            hash: &hash,
            decision: note.decision,
            request_id: note.request_id,
            outcome: note.outcome,
            command_tag: note.command_tag,
            rows: note.rows,
            error: note.error,
            masked_fields: note.masked_fields,
            duration: received.elapsed(),
        })
        .await;
    response
}

/// What to record about one HTTP statement.
struct Note {
    decision: &'static str,
    request_id: Option<RequestId>,
    outcome: &'static str,
    command_tag: Option<String>,
    rows: Option<u64>,
    error: Option<String>,
    masked_fields: u64,
}

impl Note {
    fn of(
        out: &Result<QueryOutcome, ExecError>,
        decision: &'static str,
        request_id: Option<RequestId>,
    ) -> Note {
        let summary = summarize(out, std::time::Duration::ZERO);
        Note {
            decision,
            request_id,
            outcome: if summary.error.is_some() {
                "error"
            } else {
                "ok"
            },
            command_tag: summary.command_tag,
            rows: summary.rows,
            error: summary.error,
            masked_fields: out.as_ref().map(|o| o.masked_fields).unwrap_or(0),
        }
    }
}

async fn run_approved(
    st: &AppState,
    name: &str,
    sql: &str,
    verdict: &Verdict,
    id: RequestId,
) -> (Result<Response, ApiError>, Note) {
    let started = Instant::now();
    // The single execution and its report run to the end even when the agent hangs up meanwhile (the
    // handler is then dropped): an approved statement must never be left `executing` by a disconnect.
    let run = {
        let (engine, name, sql, verdict) = (
            st.engine.clone(),
            name.to_string(),
            sql.to_string(),
            verdict.clone(),
        );
        tokio::spawn(async move {
            let out = engine.execute(&name, &sql, &verdict).await;
            if let Err(ExecError::Connect(e)) = &out {
                // Nothing reached the database: the approval is not spent.
                match engine.workflow.release_claim(id, &e.to_string()).await {
                    Ok(Some(_)) => return out,
                    Ok(None) => {}
                    Err(err) => {
                        tracing::warn!(request_id = %id, error = %err, "could not give back an approval whose execution never started")
                    }
                }
            }
            engine.finish(id, summarize(&out, started.elapsed())).await;
            out
        })
    };
    let out = match run.await {
        Ok(out) => out,
        Err(e) => {
            tracing::error!(request_id = %id, error = %e, "the approved execution's task failed");
            return (
                Err(ApiError::unavailable(format!(
                    "the approved execution of request {id} stopped unexpectedly; GET /v1/requests/{id} shows what was recorded"
                ))),
                Note {
                    decision: "review",
                    request_id: Some(id),
                    outcome: "error",
                    command_tag: None,
                    rows: None,
                    error: Some(e.to_string()),
                    masked_fields: 0,
                },
            );
        }
    };
    let note = Note::of(&out, "review", Some(id));
    (
        respond_with_result(&st.engine.metrics, out, verdict, Some(id), started),
        note,
    )
}

fn respond_with_result(
    metrics: &Metrics,
    out: Result<QueryOutcome, ExecError>,
    verdict: &Verdict,
    request: Option<RequestId>,
    started: Instant,
) -> Result<Response, ApiError> {
    let decision = if request.is_some() {
        "approved"
    } else {
        verdict.action.as_str()
    };
    let out = match out {
        Ok(o) => o,
        Err(ExecError::Connect(e)) => {
            metrics.upstream_error(FrontDoor::Api, UpstreamFailure::Connection);
            tracing::error!(request_id = ?request, error = %e, "upstream connect failed");
            let message = match request {
                Some(id) => format!(
                    "{e}; nothing ran, and approval request {id} still stands: re-send the identical statement once the database is reachable"
                ),
                None => e.to_string(),
            };
            return Err(
                ApiError::new(StatusCode::BAD_GATEWAY, "upstream_unavailable", message)
                    .with(json!({ "request_id": request })),
            );
        }
        Err(e @ ExecError::ResultTooLarge) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "result_too_large",
                e.to_string(),
            )
            .with(json!({ "request_id": request })));
        }
        Err(e @ ExecError::Misread { .. }) => {
            return Err(
                ApiError::new(StatusCode::FORBIDDEN, "blocked", e.to_string())
                    .with(json!({ "request_id": request })),
            );
        }
        Err(e) => {
            metrics.upstream_error(FrontDoor::Api, UpstreamFailure::Connection);
            return Err(
                ApiError::new(StatusCode::BAD_GATEWAY, "upstream_failed", e.to_string())
                    .with(json!({ "request_id": request })),
            );
        }
    };
    if let Some(err) = &out.error {
        metrics.upstream_error(FrontDoor::Api, UpstreamFailure::Statement);
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "upstream_error",
            err.message.clone(),
        )
        .with(json!({
            "sqlstate": err.sqlstate,
            "detail": err.detail,
            "request_id": request,
            "results": out.results,
        })));
    }
    let last = out.results.last().cloned().unwrap_or_default();
    let mut body = json!({
        "decision": decision,
        "columns": last.columns,
        "rows": last.rows,
        "command_tag": last.command_tag,
        "duration_ms": started.elapsed().as_millis() as u64,
    });
    if let Some(id) = request {
        body["request_id"] = json!(id);
    }
    if out.results.len() > 1 {
        body["results"] = json!(out.results);
    }
    Ok((StatusCode::OK, Json(body)).into_response())
}

fn pending_response(st: &AppState, view: &RequestView) -> Response {
    let r = &view.request;
    let base = &st.engine.base_url;
    let mut body = json!({
        "request_id": r.id,
        "status": "pending",
        "status_url": format!("{base}/v1/requests/{}", r.id),
        // The API resource, which the caller can read with its token (the e-mail request page needs a
        // link token the caller never has).
        "request_url": format!("{base}/v1/requests/{}", r.id),
        "reasons": r.reasons,
        "rule": r.rule,
        "approvers": st.engine.approvers(&r.approver_groups),
        "quorum": r.quorum,
        "approvals": view.approvals(),
        "expires_at": r.expires_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "message": "held for approval; re-send the identical statement after approval to run it once, or pass ?wait=30s to wait",
    });
    if st.engine.workflow.is_shutting_down() {
        // A `?wait=` ended early: say why, and that the request survives.
        body["message"] = json!(format!(
            "the gateway is shutting down; approval request {} stays pending and survives the restart: once it is approved, re-send the identical statement (to any replica) to run it once",
            r.id
        ));
        body["shutting_down"] = json!(true);
    }
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

fn already_claimed(id: RequestId) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "already_executed",
        format!("request {id} was approved and its single execution has already been claimed; submit again for a new approval"),
    )
    .with(json!({ "request_id": id }))
}

fn resolved_error(view: &RequestView) -> ApiError {
    let r = &view.request;
    match r.status {
        RequestStatus::Denied => {
            let deny = view
                .votes
                .iter()
                .find(|v| v.decision == countersign_bot::Decision::Deny);
            ApiError::new(
                StatusCode::FORBIDDEN,
                "denied",
                format!(
                    "denied by {}{}",
                    deny.map(|v| v.voter_name.as_str()).unwrap_or("an approver"),
                    deny.and_then(|v| v.reason.as_deref())
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                ),
            )
            .with(json!({
                "request_id": r.id,
                "denied_by": deny.map(|v| v.voter_name.clone()),
                "reason": deny.and_then(|v| v.reason.clone()),
            }))
        }
        RequestStatus::Expired => ApiError::new(
            StatusCode::GONE,
            "expired",
            "the request expired before reaching its quorum; submit again",
        )
        .with(json!({ "request_id": r.id })),
        RequestStatus::Cancelled => ApiError::new(
            StatusCode::CONFLICT,
            "cancelled",
            "the request was cancelled; submit again",
        )
        .with(json!({ "request_id": r.id })),
        _ => already_claimed(r.id),
    }
}
