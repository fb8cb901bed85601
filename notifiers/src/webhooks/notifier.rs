//! Delivers workflow events to one webhook endpoint.

use super::config::WebhookEndpointConfig;
use super::signing::{SecretError, WebhookSigner};
use crate::http_retry;
use countersign_bot::events::{DeliveryError, Notifier, WorkflowEvent};
use std::time::Duration;

/// Posts signed event JSON to one endpoint; its sink is `webhook:<name>`.
#[derive(Debug, Clone)]
pub struct WebhookNotifier {
    sink: String,
    url: String,
    events: Vec<String>,
    connections: Vec<String>,
    signer: WebhookSigner,
    http: reqwest::Client,
}

/// The endpoint's secret could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum WebhookSetupError {
    /// The named environment variable is unset.
    #[error("environment variable {0} (webhooks secret_env) is not set: export it with the endpoint's whsec_ secret")]
    MissingSecret(String),
    /// The secret is malformed.
    #[error("environment variable {var}: {source}")]
    BadSecret {
        /// Variable name.
        var: String,
        /// What is wrong.
        source: SecretError,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}; check the TLS set-up")]
    Client(#[from] reqwest::Error),
}

impl WebhookNotifier {
    /// Build from configuration with the secret read from the environment variable it names.
    pub fn from_env(cfg: &WebhookEndpointConfig) -> Result<Self, WebhookSetupError> {
        let secret = std::env::var(&cfg.secret_env)
            .map_err(|_| WebhookSetupError::MissingSecret(cfg.secret_env.clone()))?;
        let signer =
            WebhookSigner::from_secret(&secret).map_err(|source| WebhookSetupError::BadSecret {
                var: cfg.secret_env.clone(),
                source,
            })?;
        Self::new(cfg, signer)
    }

    /// Build from configuration and an already loaded signer.
    pub fn new(
        cfg: &WebhookEndpointConfig,
        signer: WebhookSigner,
    ) -> Result<Self, WebhookSetupError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(cfg.timeout_secs.max(1)))
            // A host that never completes the handshake fails fast instead of using the whole call's limit.
            .connect_timeout(Duration::from_secs(cfg.timeout_secs.clamp(1, 5)))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            sink: cfg.sink(),
            url: cfg.url.clone(),
            events: cfg.events.clone(),
            connections: cfg.connections.clone(),
            signer,
            http,
        })
    }

    /// True when this endpoint subscribes to the event (by type and connection).
    pub fn wants(&self, event: &WorkflowEvent) -> bool {
        if !self.events.is_empty() && !self.events.iter().any(|e| e == event.kind()) {
            return false;
        }
        if self.connections.is_empty() {
            return true;
        }
        let connection = match event {
            WorkflowEvent::Created { request }
            | WorkflowEvent::VoteRecorded { request, .. }
            | WorkflowEvent::VoteRefused { request, .. }
            | WorkflowEvent::Resolved { request }
            | WorkflowEvent::Executed { request }
            | WorkflowEvent::Reminder { request, .. } => &request.request.connection,
            WorkflowEvent::SessionSummary { summary, .. } => &summary.connection,
        };
        self.connections.iter().any(|c| c == connection)
    }
}

#[async_trait::async_trait]
impl Notifier for WebhookNotifier {
    fn sink(&self) -> &str {
        &self.sink
    }

    /// The delivery key is the `webhook-id`, identical across retries, so receivers can deduplicate.
    async fn deliver(
        &self,
        delivery_key: &str,
        event: &WorkflowEvent,
    ) -> Result<(), DeliveryError> {
        if !self.wants(event) {
            return Ok(());
        }
        let body = serde_json::to_vec(event)
            .map_err(|e| DeliveryError::Permanent(format!("cannot encode the event: {e}")))?;
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let signature = self.signer.sign(delivery_key, timestamp, &body);
        let req = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("webhook-id", delivery_key)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body);
        http_retry::send(&format!("webhook {}", self.sink), req).await?;
        Ok(())
    }
}
