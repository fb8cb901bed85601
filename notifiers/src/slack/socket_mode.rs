//! Slack Socket Mode: interactions and slash commands over an outbound WebSocket, for set-ups Slack cannot
//! reach over HTTP.
//!
//! The app-level token (`xapp-…`) obtains a WebSocket URL from `apps.connections.open`; that connection is
//! what authenticates the payloads (there is no signature to check). Every envelope is acknowledged by its
//! `envelope_id` at once (Slack allows 3 s), and its payload goes to the same [`SlackInbound`] handlers as
//! the HTTP endpoints. A dropped connection or a `disconnect` envelope opens a new one, with exponential
//! backoff while connecting keeps failing.

use super::api::{SlackApi, SlackApiError};
use super::inbound::SlackInbound;
use super::payload::{InteractionPayload, SlashCommand};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout, Instant};
use tokio_tungstenite::tungstenite::Message;

/// How long a slash command may take before its acknowledgement is sent without the answer.
const COMMAND_BUDGET: Duration = Duration::from_millis(2500);

/// Answer sent when a command's answer is not ready within [`COMMAND_BUDGET`].
const COMMAND_TOO_SLOW: &str =
    "Countersign took too long to answer (its store or Slack was slow); run the command again.";

/// Why a Socket Mode connection could not be opened or ended.
#[derive(Debug, thiserror::Error)]
pub enum SocketModeError {
    /// `apps.connections.open` failed.
    #[error("could not obtain a Socket Mode URL ({0}); check that slack.app_token_env holds an app-level token (xapp-…) with the connections:write scope and that Socket Mode is enabled for the app")]
    Open(#[source] SlackApiError),
    /// The WebSocket handshake failed.
    #[error("could not connect to the Socket Mode URL: {0}; check outbound HTTPS (443) to wss-primary.slack.com")]
    Connect(#[source] tokio_tungstenite::tungstenite::Error),
    /// The TLS client could not be built.
    #[error("cannot build the Socket Mode TLS client: {0}; check the rustls installation")]
    Tls(String),
    /// Reading or writing the socket failed mid-session.
    #[error("the Socket Mode connection failed: {0}; reconnecting")]
    Socket(#[source] tokio_tungstenite::tungstenite::Error),
    /// Nothing arrived for too long (not even a pong): the connection is presumed dead.
    #[error("no traffic on the Socket Mode connection for {0:?}; reconnecting")]
    Silent(Duration),
}

/// How a session that had connected came to an end.
#[derive(Debug, PartialEq, Eq)]
enum SessionEnd {
    /// Slack sent a `disconnect` envelope (e.g. `refresh_requested`) with this reason.
    Disconnect(String),
    /// The socket closed.
    Closed,
}

/// Reconnection delays: doubling from `min` up to `max`, back to `min` after a healthy session.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First delay after a failure.
    pub min: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            min: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    fn next(&self, current: Duration) -> Duration {
        current.saturating_mul(2).clamp(self.min, self.max)
    }
}

/// Keep-alive timing: a ping every `ping`; a connection silent for `silence` is dropped.
#[derive(Debug, Clone, Copy)]
struct KeepAlive {
    ping: Duration,
    silence: Duration,
}

/// The envelope around everything Slack sends on the socket. Unknown fields are ignored.
#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    envelope_id: Option<String>,
    payload: Option<serde_json::Value>,
    #[serde(default)]
    accepts_response_payload: bool,
    reason: Option<String>,
}

/// A Socket Mode client feeding a [`SlackInbound`].
pub struct SocketModeClient {
    inbound: SlackInbound,
    api: SlackApi,
    app_token: String,
    backoff: Backoff,
    keep_alive: KeepAlive,
}

impl SocketModeClient {
    /// A client opening connections through `api` with the app-level token `app_token`.
    pub fn new(inbound: SlackInbound, api: SlackApi, app_token: &str) -> Self {
        Self {
            inbound,
            api,
            app_token: app_token.to_string(),
            backoff: Backoff::default(),
            keep_alive: KeepAlive {
                ping: Duration::from_secs(30),
                silence: Duration::from_secs(90),
            },
        }
    }

    /// Use other reconnection delays (tests use milliseconds).
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Run in a task until aborted.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run())
    }

    /// Connect, serve, reconnect — forever. Failures are logged with what to check; none ends the loop.
    pub async fn run(self) {
        let tls = match tls_config() {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "Slack Socket Mode cannot start");
                return;
            }
        };
        let mut delay = Duration::ZERO;
        loop {
            let (greeted, end) = self.session(&tls).await;
            // Only a session Slack greeted counts as healthy; anything else backs off further.
            let wait = if greeted {
                delay = Duration::ZERO;
                match end {
                    // Slack asks for a fresh connection (e.g. before a server restart): reconnect at once.
                    Ok(SessionEnd::Disconnect(reason)) => {
                        tracing::info!(%reason, "Slack asked the Socket Mode connection to reconnect");
                        Duration::ZERO
                    }
                    Ok(SessionEnd::Closed) => {
                        tracing::warn!("the Slack Socket Mode connection closed; reconnecting");
                        self.backoff.min
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the Slack Socket Mode connection dropped");
                        self.backoff.min
                    }
                }
            } else {
                delay = self.backoff.next(delay);
                let error = match end {
                    Ok(end) => format!("the connection ended before Slack's hello ({end:?})"),
                    Err(e) => e.to_string(),
                };
                tracing::error!(%error, retry_in = ?delay, "Slack Socket Mode is not connected; interactions are not received until it is");
                delay
            };
            sleep(wait).await;
        }
    }

    /// One connection, from `apps.connections.open` until it ends; true when Slack's `hello` arrived.
    async fn session(
        &self,
        tls: &Arc<rustls::ClientConfig>,
    ) -> (bool, Result<SessionEnd, SocketModeError>) {
        let mut greeted = false;
        let end = self.serve_connection(tls, &mut greeted).await;
        (greeted, end)
    }

    async fn serve_connection(
        &self,
        tls: &Arc<rustls::ClientConfig>,
        greeted: &mut bool,
    ) -> Result<SessionEnd, SocketModeError> {
        let url = self
            .api
            .open_socket_url(&self.app_token)
            .await
            .map_err(SocketModeError::Open)?;
        let connector = tokio_tungstenite::Connector::Rustls(Arc::clone(tls));
        let (ws, _) =
            tokio_tungstenite::connect_async_tls_with_config(url, None, false, Some(connector))
                .await
                .map_err(SocketModeError::Connect)?;
        let (mut write, mut read) = ws.split();
        // Command answers are computed in tasks and come back here to be written.
        let (acks_tx, mut acks_rx) = mpsc::channel::<String>(64);
        let mut ping = tokio::time::interval(self.keep_alive.ping);
        ping.tick().await;
        let mut last_seen = Instant::now();
        loop {
            tokio::select! {
                frame = read.next() => {
                    let text = match frame {
                        None | Some(Ok(Message::Close(_))) => return Ok(SessionEnd::Closed),
                        Some(Err(e)) => return Err(SocketModeError::Socket(e)),
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(_)) => {
                            last_seen = Instant::now();
                            continue;
                        }
                    };
                    last_seen = Instant::now();
                    match self.on_text(text.as_str(), &acks_tx) {
                        Step::Continue => {}
                        Step::Greeted => {
                            tracing::info!("Slack Socket Mode connected");
                            *greeted = true;
                        }
                        Step::Ack(ack) => write
                            .send(Message::text(ack))
                            .await
                            .map_err(SocketModeError::Socket)?,
                        Step::End(end) => {
                            let _ = write.close().await;
                            return Ok(end);
                        }
                    }
                }
                Some(ack) = acks_rx.recv() => write
                    .send(Message::text(ack))
                    .await
                    .map_err(SocketModeError::Socket)?,
                _ = ping.tick() => {
                    if last_seen.elapsed() > self.keep_alive.silence {
                        return Err(SocketModeError::Silent(self.keep_alive.silence));
                    }
                    write
                        .send(Message::Ping(Vec::new().into()))
                        .await
                        .map_err(SocketModeError::Socket)?;
                }
            }
        }
    }

    /// Decide what one text frame calls for. Never blocks: votes and command answers run in tasks.
    fn on_text(&self, text: &str, acks: &mpsc::Sender<String>) -> Step {
        let envelope = match serde_json::from_str::<Envelope>(text) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a Socket Mode frame that is not an envelope");
                return Step::Continue;
            }
        };
        match (envelope.kind.as_str(), envelope.envelope_id.clone()) {
            ("hello", _) => Step::Greeted,
            ("disconnect", _) => Step::End(SessionEnd::Disconnect(
                envelope.reason.unwrap_or_else(|| "unspecified".into()),
            )),
            ("slash_commands", Some(id)) => {
                self.command(id, envelope, acks.clone());
                Step::Continue
            }
            ("interactive", Some(id)) => {
                match envelope
                    .payload
                    .map(serde_json::from_value::<InteractionPayload>)
                {
                    Some(Ok(p)) => self.inbound.handle_interaction(p),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "ignoring an interactive envelope whose payload Countersign cannot read")
                    }
                    None => tracing::warn!("ignoring an interactive envelope without a payload"),
                }
                Step::Ack(ack(&id, None))
            }
            (kind, Some(id)) => {
                // Acknowledged so Slack does not redeliver it; Countersign subscribes to nothing else.
                tracing::debug!(
                    kind,
                    "acknowledging a Socket Mode envelope Countersign does not use"
                );
                Step::Ack(ack(&id, None))
            }
            (kind, None) => {
                tracing::debug!(kind, "ignoring a Socket Mode message");
                Step::Continue
            }
        }
    }

    /// Answer a slash command within the acknowledgement deadline, in a task.
    fn command(&self, id: String, envelope: Envelope, acks: mpsc::Sender<String>) {
        let cmd = envelope.payload.map(serde_json::from_value::<SlashCommand>);
        let inbound = self.inbound.clone();
        let answer_allowed = envelope.accepts_response_payload;
        tokio::spawn(async move {
            let answer = match cmd {
                Some(Ok(cmd)) => match timeout(COMMAND_BUDGET, inbound.handle_command(cmd)).await {
                    Ok(answer) => Some(answer),
                    Err(_) => Some(serde_json::json!({
                        "response_type": "ephemeral",
                        "text": COMMAND_TOO_SLOW,
                    })),
                },
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "ignoring a slash command envelope Countersign cannot read");
                    None
                }
                None => None,
            };
            let _ = acks.send(ack(&id, answer.filter(|_| answer_allowed))).await;
        });
    }
}

/// What a frame calls for.
enum Step {
    Continue,
    Greeted,
    Ack(String),
    End(SessionEnd),
}

/// The acknowledgement frame for `envelope_id`, with an optional response payload.
fn ack(envelope_id: &str, payload: Option<serde_json::Value>) -> String {
    let mut v = serde_json::json!({ "envelope_id": envelope_id });
    if let Some(p) = payload {
        v["payload"] = p;
    }
    v.to_string()
}

/// TLS for `wss://` with ring and the WebPKI roots, like the Web API client.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, SocketModeError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| SocketModeError::Tls(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_min_and_stops_at_max() {
        let b = Backoff {
            min: Duration::from_secs(1),
            max: Duration::from_secs(5),
        };
        let mut d = Duration::ZERO;
        let seen: Vec<u64> = (0..5)
            .map(|_| {
                d = b.next(d);
                d.as_secs()
            })
            .collect();
        assert_eq!(seen, vec![1, 2, 4, 5, 5]);
    }

    #[test]
    fn ack_carries_the_envelope_id_and_only_a_given_payload() {
        let plain: serde_json::Value = serde_json::from_str(&ack("e-1", None)).unwrap();
        assert_eq!(plain, serde_json::json!({ "envelope_id": "e-1" }));
        let answered: serde_json::Value =
            serde_json::from_str(&ack("e-2", Some(serde_json::json!({ "text": "hi" })))).unwrap();
        assert_eq!(answered["envelope_id"], "e-2");
        assert_eq!(answered["payload"]["text"], "hi");
    }

    #[test]
    fn tls_config_builds_with_ring_without_a_process_default() {
        assert!(tls_config().is_ok());
    }
}
