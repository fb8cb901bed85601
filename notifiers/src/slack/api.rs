//! The Slack Web API calls Countersign makes, over slack-morphism's hyper client, with errors classified
//! as retryable or permanent for the outbox.

use countersign_bot::events::DeliveryError;
use slack_morphism::errors::SlackClientError;
use slack_morphism::prelude::*;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

type Connector = SlackClientHyperHttpsConnector;

/// A Web API failure.
#[derive(Debug, thiserror::Error)]
pub enum SlackApiError {
    /// The TLS client could not be built.
    #[error("cannot build the Slack HTTPS client: {0}; check the rustls installation")]
    Tls(String),
    /// Slack (or the network) failed; see [`SlackApiError::into_delivery`] for retry semantics.
    #[error("Slack Web API call {method} failed: {source}")]
    Call {
        /// Method, e.g. `chat.postMessage`.
        method: &'static str,
        /// What slack-morphism reported.
        source: SlackClientError,
    },
    /// Slack did not answer in time (connecting included); retried later like an outage.
    #[error("Slack Web API call {method} did not answer within {}s; it will be retried (check that slack.api_base_url is reachable, or raise slack.timeout_secs)", after.as_secs_f64())]
    Timeout {
        /// Method, e.g. `chat.postMessage`.
        method: &'static str,
        /// The limit that passed.
        after: Duration,
    },
}

impl SlackApiError {
    /// The Slack error code, when Slack answered `ok: false`.
    pub fn api_code(&self) -> Option<&str> {
        match self {
            Self::Call {
                source: SlackClientError::ApiError(e),
                ..
            } => Some(e.code.as_str()),
            _ => None,
        }
    }

    /// Map to the outbox's retry semantics: outages, 5xx and 429 retry (honouring Retry-After);
    /// configuration problems (bad token, unknown channel, missing scope) are permanent.
    pub fn into_delivery(self) -> DeliveryError {
        let message = self.to_string();
        match &self {
            Self::Tls(_) => DeliveryError::Permanent(message),
            Self::Timeout { .. } => DeliveryError::Retryable {
                message,
                retry_after: None,
            },
            Self::Call { source, .. } => match source {
                SlackClientError::RateLimitError(e) => DeliveryError::Retryable {
                    message,
                    retry_after: e.retry_after,
                },
                SlackClientError::HttpError(e)
                    if e.status_code.is_server_error() || e.status_code.as_u16() == 408 =>
                {
                    DeliveryError::Retryable {
                        message,
                        retry_after: None,
                    }
                }
                SlackClientError::HttpError(_) => DeliveryError::Permanent(format!(
                    "{message}; check slack.api_base_url and the bot token"
                )),
                SlackClientError::ApiError(e) => match e.code.as_str() {
                    "ratelimited" | "internal_error" | "fatal_error" | "service_unavailable"
                    | "request_timeout" | "team_added_to_org" => DeliveryError::Retryable {
                        message,
                        retry_after: None,
                    },
                    _ => DeliveryError::Permanent(format!(
                        "{message}; fix the Slack app (token, scopes, channel membership) and retry with `countersign outbox retry ID`"
                    )),
                },
                _ => DeliveryError::Retryable {
                    message,
                    retry_after: None,
                },
            },
        }
    }
}

/// The organisation the app is installed in, as `auth.test` reports it for the bot token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlackHome {
    /// The workspace (`T…`; an org-wide Grid install may report the enterprise here).
    pub team_id: SlackTeamId,
    /// The Enterprise Grid organisation (`E…`), when the workspace belongs to one.
    pub enterprise_id: Option<SlackEnterpriseId>,
}

#[derive(Debug, serde::Deserialize)]
struct AuthTestResponse {
    team_id: SlackTeamId,
    #[serde(default)]
    enterprise_id: Option<SlackEnterpriseId>,
}

/// The Web API methods used by the notifier and the inbound handlers.
#[derive(Clone)]
pub struct SlackApi {
    client: Arc<SlackClient<Connector>>,
    token: SlackApiToken,
    /// Limit on each call, connecting included: a Slack that accepts and never answers would otherwise
    /// hold the outbox delivery (and an interaction handler) forever.
    timeout: Duration,
}

/// Per-call limit when the configuration sets none (`slack.timeout_secs`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl SlackApi {
    /// A client for `api_base` (e.g. `https://slack.com/api`; plain http is accepted for loopback fakes,
    /// which the configuration validation enforces).
    pub fn new(api_base: &str, bot_token: &str) -> Result<Self, SlackApiError> {
        let provider = rustls::crypto::ring::default_provider();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(provider)
            .map_err(|e| SlackApiError::Tls(e.to_string()))?
            .https_or_http()
            .enable_http1()
            .build();
        let connector = SlackClientHyperConnector::with_connector(https)
            .with_slack_api_url(api_base.trim_end_matches('/'));
        Ok(Self {
            client: Arc::new(SlackClient::new(connector)),
            token: SlackApiToken::new(SlackApiTokenValue(bot_token.to_string())),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// The same client with every call limited to `timeout` (at least 1 ms).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    async fn call<T>(
        &self,
        method: &'static str,
        call: impl Future<Output = Result<T, SlackClientError>>,
    ) -> Result<T, SlackApiError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r.map_err(|source| SlackApiError::Call { method, source }),
            Err(_) => Err(SlackApiError::Timeout {
                method,
                after: self.timeout,
            }),
        }
    }

    /// Post a message (a thread reply when `thread_ts` is set). Returns the channel Slack used (a DM's
    /// conversation id when posting to a user id) and the message ts.
    pub async fn post_message(
        &self,
        channel: &str,
        content: SlackMessageContent,
        thread_ts: Option<&str>,
    ) -> Result<(String, String), SlackApiError> {
        let req = SlackApiChatPostMessageRequest::new(channel.into(), content)
            .opt_thread_ts(thread_ts.map(|t| SlackTs(t.to_string())))
            .with_unfurl_links(false)
            .with_unfurl_media(false);
        let r = self
            .call(
                "chat.postMessage",
                self.client
                    .open_session(&self.token)
                    .chat_post_message(&req),
            )
            .await?;
        Ok((r.channel.0, r.ts.0))
    }

    /// Replace a message's content in place.
    pub async fn update_message(
        &self,
        channel: &str,
        ts: &str,
        content: SlackMessageContent,
    ) -> Result<(), SlackApiError> {
        let req = SlackApiChatUpdateRequest::new(channel.into(), content, SlackTs(ts.to_string()));
        self.call(
            "chat.update",
            self.client.open_session(&self.token).chat_update(&req),
        )
        .await?;
        Ok(())
    }

    /// A message only `user` sees, in `channel`.
    pub async fn post_ephemeral(
        &self,
        channel: &str,
        user: &str,
        content: SlackMessageContent,
    ) -> Result<(), SlackApiError> {
        let req = SlackApiChatPostEphemeralRequest::new(channel.into(), user.into(), content);
        self.call(
            "chat.postEphemeral",
            self.client
                .open_session(&self.token)
                .chat_post_ephemeral(&req),
        )
        .await?;
        Ok(())
    }

    /// Open a modal for the click that produced `trigger_id`.
    pub async fn open_view(&self, trigger_id: &str, view: SlackView) -> Result<(), SlackApiError> {
        let req = SlackApiViewsOpenRequest::new(SlackTriggerId(trigger_id.to_string()), view);
        self.call(
            "views.open",
            self.client.open_session(&self.token).views_open(&req),
        )
        .await?;
        Ok(())
    }

    /// A fresh Socket Mode WebSocket URL (`apps.connections.open`), authorised by the app-level token.
    pub async fn open_socket_url(&self, app_token: &str) -> Result<String, SlackApiError> {
        let token = SlackApiToken::new(SlackApiTokenValue(app_token.to_string()));
        let r = self
            .call(
                "apps.connections.open",
                self.client
                    .open_session(&token)
                    .apps_connections_open(&SlackApiAppsConnectionOpenRequest::new()),
            )
            .await?;
        Ok(r.url.0.to_string())
    }

    /// The organisation the bot token belongs to (`auth.test`): its workspace, and on Enterprise Grid its
    /// enterprise. slack-morphism's own `auth_test` response has no `enterprise_id`, so the same session
    /// call is made with a response type that reads it.
    pub async fn home(&self) -> Result<SlackHome, SlackApiError> {
        let r: AuthTestResponse = self
            .call("auth.test", async {
                self.client
                    .open_session(&self.token)
                    .http_session_api
                    .http_get("auth.test", &SLACK_HTTP_EMPTY_GET_PARAMS.clone(), None)
                    .await
            })
            .await?;
        Ok(SlackHome {
            team_id: r.team_id,
            enterprise_id: r.enterprise_id.filter(|e| !e.0.is_empty()),
        })
    }

    /// A user's `users.info` record (profile e-mail, home team, enterprise, flags).
    pub async fn user_info(&self, user: &str) -> Result<SlackUser, SlackApiError> {
        let req = SlackApiUsersInfoRequest::new(user.into());
        let r = self
            .call(
                "users.info",
                self.client.open_session(&self.token).users_info(&req),
            )
            .await?;
        Ok(r.user)
    }

    /// The Slack user id for an e-mail address; `None` when no member has it.
    pub async fn user_by_email(&self, email: &str) -> Result<Option<String>, SlackApiError> {
        let req = SlackApiUsersLookupByEmailRequest::new(EmailAddress(email.to_string()));
        match self
            .call(
                "users.lookupByEmail",
                self.client
                    .open_session(&self.token)
                    .users_lookup_by_email(&req),
            )
            .await
        {
            Ok(r) => Ok(Some(r.user.id.0)),
            Err(e) if e.api_code() == Some("users_not_found") => Ok(None),
            Err(e) => Err(e),
        }
    }
}
