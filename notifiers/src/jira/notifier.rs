//! Outbound: an issue per request, a comment per event, transitions on resolution. Driven by the outbox.

use super::adf::{code_block, doc, one_line, paragraph, reasons_list, strong, text, text_line};
use super::client::JiraClient;
use super::config::{JiraConfig, JiraCredentials};
use super::SINK;
use countersign_bot::events::{DeliveryError, Notifier, WorkflowEvent};
use countersign_bot::{RequestId, RequestStatus, RequestView, Store};
use serde_json::{json, Value};
use std::sync::Arc;

/// Ref key under which a request's issue key is stored.
pub(crate) const ISSUE_REF: &str = "issue";

/// Delivers workflow events to Jira.
pub struct JiraNotifier {
    cfg: JiraConfig,
    client: JiraClient,
    store: Arc<dyn Store>,
}

fn store_err(e: countersign_bot::store::StoreError) -> DeliveryError {
    DeliveryError::Retryable {
        message: format!("store unavailable: {e}"),
        retry_after: None,
    }
}

impl JiraNotifier {
    /// A notifier for the configured site, remembering issue keys in `store`.
    pub fn new(
        cfg: JiraConfig,
        creds: &JiraCredentials,
        store: Arc<dyn Store>,
    ) -> Result<Self, reqwest::Error> {
        let client = JiraClient::new(&cfg, creds)?;
        Ok(Self { cfg, client, store })
    }

    async fn issue_key(&self, id: RequestId) -> Result<Option<String>, DeliveryError> {
        self.store
            .get_ref(id, SINK, ISSUE_REF)
            .await
            .map_err(store_err)
    }

    /// The request's issue; made now, from the request as this event shows it, when its `created`
    /// notification never landed (dead-lettered during an outage), so later events are not lost.
    async fn require_issue(&self, view: &RequestView) -> Result<String, DeliveryError> {
        let id = view.request.id;
        if let Some(key) = self.issue_key(id).await? {
            return Ok(key);
        }
        self.create_issue(view).await?;
        self.issue_key(id).await?.ok_or_else(|| {
            DeliveryError::Permanent(format!(
                "no Jira issue for request {id} after creating one; check the Jira project settings"
            ))
        })
    }

    async fn create_issue(&self, view: &RequestView) -> Result<(), DeliveryError> {
        let r = &view.request;
        if self.issue_key(r.id).await?.is_some() {
            return Ok(());
        }
        let summary = one_line(
            &format!("Approve SQL on {}: {}", r.connection, r.statement),
            200,
        );
        let warning = countersign_bot::reveal::hidden_characters_warning(&r.statement)
            .map(|w| paragraph([strong(&w)]));
        let description = doc([
            paragraph([
                text("Countersign is holding a statement for approval on connection "),
                strong(&r.connection),
                text("."),
            ]),
            paragraph([text("Requested by: "), strong(&r.requester.display())]),
            paragraph([text(&format!("Rule: {}. Why review:", r.rule))]),
            reasons_list(&r.reasons),
            paragraph([text(&format!(
                "Needs {} approval(s) from: {}. Expires at {}.",
                r.quorum,
                r.approver_groups.join(", "),
                r.expires_at
            ))]),
        ]
        .into_iter()
        .chain(warning)
        .chain([
            code_block("sql", &r.statement, self.cfg.max_statement_chars),
            paragraph([text(&format!(
                "Move this issue to \"{}\" to approve or to \"{}\" to deny. Your vote counts once, whatever channel you use, and never on your own request.",
                self.cfg.approve_status, self.cfg.deny_status
            ))]),
        ]));
        let fields = json!({
            "project": { "key": self.cfg.project_key },
            "issuetype": { "name": self.cfg.issue_type },
            "summary": summary,
            "description": description,
            "labels": ["countersign"],
        });
        let key = self.client.create_issue(fields).await?;
        self.store
            .put_ref(r.id, SINK, ISSUE_REF, &key)
            .await
            .map_err(store_err)?;
        tracing::info!(request_id = %r.id, issue = %key, "Jira issue created");
        Ok(())
    }

    /// Post a comment once per delivery key and request (a retried delivery finds the ref and skips it).
    async fn comment_once(
        &self,
        id: RequestId,
        key: &str,
        delivery_key: &str,
        body: Value,
    ) -> Result<(), DeliveryError> {
        let marker = format!("comment:{delivery_key}");
        if self
            .store
            .get_ref(id, SINK, &marker)
            .await
            .map_err(store_err)?
            .is_some()
        {
            return Ok(());
        }
        let comment_id = self.client.add_comment(key, body).await?;
        self.store
            .put_ref(id, SINK, &marker, &comment_id)
            .await
            .map_err(store_err)
    }

    fn link_paragraph(&self, id: RequestId) -> Value {
        paragraph([text(&format!("Countersign request {id}"))])
    }

    async fn on_resolution(
        &self,
        delivery_key: &str,
        view: &RequestView,
        lines: Vec<Value>,
    ) -> Result<(), DeliveryError> {
        let id = view.request.id;
        let key = self.require_issue(view).await?;
        self.comment_once(id, &key, delivery_key, doc(lines))
            .await?;
        if let Some(t) = self.cfg.transitions.for_status(view.request.status) {
            self.client.transition(&key, t).await?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Notifier for JiraNotifier {
    fn sink(&self) -> &str {
        SINK
    }

    async fn deliver(
        &self,
        delivery_key: &str,
        event: &WorkflowEvent,
    ) -> Result<(), DeliveryError> {
        match event {
            WorkflowEvent::Created { request } => self.create_issue(request).await,
            WorkflowEvent::VoteRecorded { request, vote } => {
                let id = request.request.id;
                let key = self.require_issue(request).await?;
                let verb = match vote.decision {
                    countersign_bot::Decision::Approve => "approved",
                    countersign_bot::Decision::Deny => "denied",
                };
                let mut blocks = vec![paragraph([
                    strong(&vote.voter_name),
                    text(&format!(
                        " {verb} via {} ({} of {} approvals).",
                        vote.channel,
                        request.approvals(),
                        request.request.quorum
                    )),
                ])];
                if let Some(reason) = &vote.reason {
                    blocks.push(paragraph([text("Reason: "), text_line(reason)]));
                }
                self.comment_once(id, &key, delivery_key, doc(blocks)).await
            }
            WorkflowEvent::VoteRefused {
                request,
                voter_name,
                channel,
                code,
                reason,
            } => {
                let id = request.request.id;
                let key = self.require_issue(request).await?;
                let mut blocks = vec![
                    paragraph([
                        text("A vote by "),
                        strong(voter_name),
                        text(&format!(" via {channel} was refused ({code}).")),
                    ]),
                    paragraph([text(reason)]),
                ];
                let move_back = channel == SINK && request.request.status == RequestStatus::Pending;
                if move_back {
                    blocks.push(paragraph([text(&format!(
                        "The issue is moved back with \"{}\"; the request is still pending.",
                        self.cfg.revert_transition
                    ))]));
                }
                self.comment_once(id, &key, delivery_key, doc(blocks))
                    .await?;
                if move_back {
                    self.client
                        .transition(&key, &self.cfg.revert_transition)
                        .await?;
                }
                Ok(())
            }
            WorkflowEvent::Resolved { request } => {
                let lines = vec![
                    paragraph([
                        text("Request "),
                        strong(request.request.status.as_str()),
                        text(&format!(
                            " with {} of {} approvals.",
                            request.approvals(),
                            request.request.quorum
                        )),
                    ]),
                    self.link_paragraph(request.request.id),
                ];
                self.on_resolution(delivery_key, request, lines).await
            }
            WorkflowEvent::Executed { request } => {
                let summary = match &request.request.execution {
                    Some(e) => match &e.error {
                        Some(err) => format!(
                            "The statement failed after {} ms: {}",
                            e.duration_ms,
                            countersign_bot::reveal::reveal_line(err)
                        ),
                        None => format!(
                            "The statement ran in {} ms: {}{}",
                            e.duration_ms,
                            e.command_tag.as_deref().unwrap_or("ok"),
                            e.rows.map(|r| format!(", {r} row(s)")).unwrap_or_default()
                        ),
                    },
                    None => format!("The statement is {}.", request.request.status),
                };
                let lines = vec![
                    paragraph([text(&summary)]),
                    self.link_paragraph(request.request.id),
                ];
                self.on_resolution(delivery_key, request, lines).await
            }
            WorkflowEvent::Reminder {
                request,
                escalated_to,
            } => {
                let id = request.request.id;
                let key = self.require_issue(request).await?;
                let missing = (request.request.quorum as usize).saturating_sub(request.approvals());
                let head = if escalated_to.is_empty() {
                    format!("Reminder: still waiting for {missing} more approval(s).")
                } else {
                    format!(
                        "Escalated to {}: still waiting for {missing} more approval(s).",
                        escalated_to.join(", ")
                    )
                };
                let blocks = vec![
                    paragraph([
                        text(&head),
                        text(&format!(" Expires at {}.", request.request.expires_at)),
                    ]),
                    self.link_paragraph(id),
                ];
                self.comment_once(id, &key, delivery_key, doc(blocks)).await
            }
            WorkflowEvent::SessionSummary { requests, summary } => {
                let body =
                    doc([paragraph([text(&format!(
                    "Session on {} ended: {} statement(s) run, {} blocked, {} held, {} approved.",
                    summary.connection, summary.run, summary.blocked, summary.held, summary.approved
                ))])]);
                for id in requests {
                    if let Some(key) = self.issue_key(*id).await? {
                        self.comment_once(*id, &key, delivery_key, body.clone())
                            .await?;
                    }
                }
                Ok(())
            }
        }
    }
}
