//! Outbound: workflow events from the outbox become Slack messages, in-place updates and thread replies.

use super::api::{SlackApi, SlackApiError, SlackHome};
use super::config::SlackConfig;
use super::message_refs::{self, MessageRef};
use super::render::{MessageRenderer, RenderError};
use countersign_bot::events::{DeliveryError, Notifier, WorkflowEvent};
use countersign_bot::store::{Store, StoreError};
use countersign_bot::{ApproverDirectory, RequestId, RequestView};
use slack_morphism::prelude::SlackMessageContent;
use std::sync::Arc;

/// Delivers workflow events to Slack (sink `slack`). Idempotent per delivery key: every post is recorded
/// in the store, so a retried delivery skips what already went out.
pub struct SlackNotifier {
    config: SlackConfig,
    api: SlackApi,
    store: Arc<dyn Store>,
    directory: ApproverDirectory,
    render: MessageRenderer,
    /// The bot's own organisation (`auth.test`), fetched on the first direct message.
    home: tokio::sync::OnceCell<SlackHome>,
}

fn store_err(e: StoreError) -> DeliveryError {
    DeliveryError::Retryable {
        message: format!("store unavailable while delivering to Slack: {e}"),
        retry_after: None,
    }
}

fn render_err(e: RenderError) -> DeliveryError {
    DeliveryError::Permanent(e.to_string())
}

fn api_err(e: SlackApiError) -> DeliveryError {
    e.into_delivery()
}

/// Slack errors on chat.update that mean the message is gone; the rest of the delivery proceeds.
fn message_gone(e: &SlackApiError) -> bool {
    matches!(
        e.api_code(),
        Some("message_not_found" | "cant_update_message" | "channel_not_found" | "is_archived")
    )
}

impl SlackNotifier {
    /// A notifier posting with `api`, remembering messages in `store`, and (with `dm_approvers`) finding
    /// approvers through `directory`.
    pub fn new(
        config: SlackConfig,
        api: SlackApi,
        store: Arc<dyn Store>,
        directory: ApproverDirectory,
    ) -> Self {
        let render = MessageRenderer::new(config.max_statement_chars);
        Self {
            config,
            api,
            store,
            directory,
            render,
            home: tokio::sync::OnceCell::new(),
        }
    }

    /// The Slack user to send a direct message for `email`: found by `users.lookupByEmail`, and only a
    /// member of the bot's own organisation or a trusted team (the rule votes follow, see
    /// [`super::identity::membership`]). Another organisation's user can carry the same address in a Slack
    /// Connect workspace, and a DM would show them the statement.
    async fn dm_user(&self, email: &str) -> Result<Option<String>, SlackApiError> {
        let Some(user) = self.api.user_by_email(email).await? else {
            return Ok(None);
        };
        let info = self.api.user_info(&user).await?;
        let home = self.home.get_or_try_init(|| self.api.home()).await?;
        let trusted = self.config.trusted_teams.iter().cloned().collect();
        match super::identity::membership(&info, home, &trusted) {
            Ok(()) => Ok(Some(user)),
            Err(outsider) => {
                tracing::warn!(%email, slack_user = %user, reason = %outsider.explanation(), "the Slack user with this e-mail is outside the organisation; no DM sent");
                Ok(None)
            }
        }
    }

    async fn post_once(
        &self,
        id: RequestId,
        key: &str,
        target: &str,
        content: SlackMessageContent,
        thread_ts: Option<&str>,
    ) -> Result<(), DeliveryError> {
        let store = self.store.as_ref();
        if message_refs::already_sent(store, id, key, target)
            .await
            .map_err(store_err)?
            .is_some()
        {
            return Ok(());
        }
        let (_, ts) = self
            .api
            .post_message(target, content, thread_ts)
            .await
            .map_err(api_err)?;
        message_refs::mark_sent(store, id, key, target, &ts)
            .await
            .map_err(store_err)
    }

    async fn post_request(&self, view: &RequestView) -> Result<(), DeliveryError> {
        let id = view.request.id;
        let store = self.store.as_ref();
        let content = self
            .render
            .request_message(view, true)
            .map_err(render_err)?;
        for channel in self.config.channels_for(&view.request.approver_groups) {
            if store
                .get_ref(id, message_refs::SINK, &format!("ts:{channel}"))
                .await
                .map_err(store_err)?
                .is_some()
            {
                continue;
            }
            let (posted_in, ts) = self
                .api
                .post_message(&channel, content.clone(), None)
                .await
                .map_err(api_err)?;
            let m = MessageRef {
                channel: posted_in,
                ts,
                dm: false,
            };
            message_refs::add_message(store, id, m)
                .await
                .map_err(store_err)?;
        }
        if self.config.dm_approvers {
            for email in self.directory.member_emails(&view.request.approver_groups) {
                // The requester never gets buttons for their own request.
                let me = super::identity::slack_identity("", &email);
                if view.request.requester.contains(&me) {
                    continue;
                }
                let dm_key = format!("dm:{}", email.to_lowercase());
                if store
                    .get_ref(id, message_refs::SINK, &dm_key)
                    .await
                    .map_err(store_err)?
                    .is_some()
                {
                    continue;
                }
                let Some(user) = self.dm_user(&email).await.map_err(api_err)? else {
                    tracing::info!(request_id = %id, %email, "approver has no Slack account with this e-mail in the organisation; no DM sent");
                    continue;
                };
                let (dm_channel, ts) = self
                    .api
                    .post_message(&user, content.clone(), None)
                    .await
                    .map_err(api_err)?;
                message_refs::add_message(
                    store,
                    id,
                    MessageRef {
                        channel: dm_channel.clone(),
                        ts,
                        dm: true,
                    },
                )
                .await
                .map_err(store_err)?;
                store
                    .put_ref(id, message_refs::SINK, &dm_key, &dm_channel)
                    .await
                    .map_err(store_err)?;
            }
        }
        Ok(())
    }

    async fn update_messages(&self, view: &RequestView) -> Result<(), DeliveryError> {
        let messages = message_refs::messages(self.store.as_ref(), view.request.id)
            .await
            .map_err(store_err)?;
        if messages.is_empty() {
            // Its `created` notification never landed (dead-lettered during an outage): the message
            // is posted now, showing the request as it is, and the replies that follow thread on it.
            // (A later retry of that `created` item finds it posted and adds nothing stale.)
            return self.post_request(view).await;
        }
        let content = self
            .render
            .request_message(view, true)
            .map_err(render_err)?;
        for m in messages {
            match self
                .api
                .update_message(&m.channel, &m.ts, content.clone())
                .await
            {
                Ok(()) => {}
                Err(e) if message_gone(&e) => {
                    tracing::warn!(request_id = %view.request.id, channel = %m.channel, error = %e, "request message can no longer be updated; skipping it")
                }
                Err(e) => return Err(api_err(e)),
            }
        }
        Ok(())
    }

    async fn thread_reply(
        &self,
        id: RequestId,
        key: &str,
        content: SlackMessageContent,
    ) -> Result<(), DeliveryError> {
        for m in message_refs::messages(self.store.as_ref(), id)
            .await
            .map_err(store_err)?
            .into_iter()
            .filter(|m| !m.dm)
        {
            self.post_once(id, key, &m.channel, content.clone(), Some(&m.ts))
                .await?;
        }
        Ok(())
    }

    /// An escalation: a thread reply mentioning the escalation groups' members (those with a Slack
    /// account in the organisation), and the request (without buttons: escalation makes no one an
    /// approver) with that note in each escalation group's own routed channel that does not already
    /// hold it; with `dm_approvers`, the members are also sent it directly.
    async fn escalate(
        &self,
        key: &str,
        view: &RequestView,
        groups: &[String],
    ) -> Result<(), DeliveryError> {
        let id = view.request.id;
        let mut mentions: Vec<String> = Vec::new();
        for email in self.directory.member_emails(groups) {
            match self.dm_user(&email).await.map_err(api_err)? {
                Some(user) if !mentions.contains(&user) => mentions.push(user),
                Some(_) => {}
                None => {
                    tracing::info!(request_id = %id, %email, "escalation target has no Slack account with this e-mail in the organisation; not mentioned")
                }
            }
        }
        let note = self
            .render
            .escalation_reply(view, groups, &mentions)
            .map_err(render_err)?;
        self.thread_reply(id, key, note.clone()).await?;
        let posted: Vec<String> = message_refs::messages(self.store.as_ref(), id)
            .await
            .map_err(store_err)?
            .into_iter()
            .map(|m| m.channel)
            .collect();
        let mut targets: Vec<String> = Vec::new();
        let routed = groups
            .iter()
            .filter_map(|g| self.config.routes.groups.get(g))
            .flatten();
        let direct = mentions.iter().filter(|_| self.config.dm_approvers);
        for t in routed.chain(direct) {
            if !posted.contains(t) && !targets.contains(t) {
                targets.push(t.clone());
            }
        }
        if targets.is_empty() {
            return Ok(());
        }
        let request = self
            .render
            .request_message(view, false)
            .map_err(render_err)?;
        for target in targets {
            if message_refs::already_sent(self.store.as_ref(), id, key, &target)
                .await
                .map_err(store_err)?
                .is_some()
            {
                continue;
            }
            let (posted_in, ts) = self
                .api
                .post_message(&target, request.clone(), None)
                .await
                .map_err(api_err)?;
            self.api
                .post_message(&posted_in, note.clone(), Some(&ts))
                .await
                .map_err(api_err)?;
            message_refs::mark_sent(self.store.as_ref(), id, key, &target, &ts)
                .await
                .map_err(store_err)?;
        }
        Ok(())
    }

    async fn dm_requester(&self, key: &str, view: &RequestView) -> Result<(), DeliveryError> {
        let content = self.render.requester_dm(view).map_err(render_err)?;
        for who in view.request.requester.0.iter().filter(|i| i.is_human()) {
            let Some(email) = who.email.as_deref() else {
                continue;
            };
            let target = format!("dm:{}", email.to_lowercase());
            if message_refs::already_sent(self.store.as_ref(), view.request.id, key, &target)
                .await
                .map_err(store_err)?
                .is_some()
            {
                continue;
            }
            let Some(user) = self.dm_user(email).await.map_err(api_err)? else {
                continue;
            };
            let (_, ts) = self
                .api
                .post_message(&user, content.clone(), None)
                .await
                .map_err(api_err)?;
            message_refs::mark_sent(self.store.as_ref(), view.request.id, key, &target, &ts)
                .await
                .map_err(store_err)?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Notifier for SlackNotifier {
    fn sink(&self) -> &str {
        message_refs::SINK
    }

    async fn deliver(&self, key: &str, event: &WorkflowEvent) -> Result<(), DeliveryError> {
        let r = &self.render;
        match event {
            WorkflowEvent::Created { request } => self.post_request(request).await,
            WorkflowEvent::VoteRecorded { request, vote } => {
                self.update_messages(request).await?;
                let reply = r.vote_reply(request, vote).map_err(render_err)?;
                self.thread_reply(request.request.id, key, reply).await
            }
            WorkflowEvent::VoteRefused {
                request,
                code,
                reason,
                ..
            } => {
                let reply = r.refusal_reply(code, reason).map_err(render_err)?;
                self.thread_reply(request.request.id, key, reply).await
            }
            WorkflowEvent::Resolved { request } => {
                self.update_messages(request).await?;
                let reply = r.resolution_reply(request).map_err(render_err)?;
                self.thread_reply(request.request.id, key, reply).await?;
                self.dm_requester(key, request).await
            }
            WorkflowEvent::Executed { request } => {
                self.update_messages(request).await?;
                let reply = r.execution_reply(request).map_err(render_err)?;
                self.thread_reply(request.request.id, key, reply).await
            }
            WorkflowEvent::Reminder {
                request,
                escalated_to,
            } if !escalated_to.is_empty() => self.escalate(key, request, escalated_to).await,
            WorkflowEvent::Reminder { request, .. } => {
                let reply = r.reminder_reply(request).map_err(render_err)?;
                self.thread_reply(request.request.id, key, reply).await
            }
            WorkflowEvent::SessionSummary { requests, summary } => {
                let reply = r.session_summary_reply(summary).map_err(render_err)?;
                for id in requests {
                    self.thread_reply(*id, key, reply.clone()).await?;
                }
                Ok(())
            }
        }
    }
}
