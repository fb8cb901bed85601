//! Maps the gateway's own BackendKeyData to the upstream's, and routes a CancelRequest either to a held
//! statement (cancel the approval request) or to the upstream (cancel the running query).

use super::upstream_tls::{open, NegotiateError, UpstreamTls};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use subtle::ConstantTimeEq;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

/// The key the gateway hands to a client (its "pid" and secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrontendKey {
    /// Gateway-issued process id.
    pub pid: i32,
    /// Gateway-issued secret.
    pub secret: i32,
}

/// The upstream backend's key for the same session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendKey {
    /// Upstream backend pid.
    pub pid: i32,
    /// Upstream secret.
    pub secret: i32,
}

/// Per-session cancel state shared between the session task and cancel connections.
#[derive(Debug, Default)]
pub struct CancelSignal {
    holding: AtomicBool,
    generation: AtomicU64,
    notify: Notify,
}

impl CancelSignal {
    /// Marks the start or end of a hold, so cancels during it reach the hold instead of the upstream.
    pub fn set_holding(&self, holding: bool) {
        self.holding.store(holding, Ordering::SeqCst);
    }

    /// The current cancel generation; a hold is cancelled when it changes.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Resolves once a cancel arrives after `since` (a value from [`CancelSignal::generation`]).
    pub async fn cancelled_after(&self, since: u64) {
        loop {
            let notified = self.notify.notified();
            if self.generation() != since {
                return;
            }
            notified.await;
        }
    }

    fn cancel(&self) -> bool {
        if !self.holding.load(Ordering::SeqCst) {
            return false;
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
        true
    }
}

/// Where a session's upstream is and how to secure a connection to it.
pub type UpstreamAddr = (String, u16, UpstreamTls);

struct Entry {
    secret: i32,
    upstream: UpstreamAddr,
    backend: BackendKey,
    signal: Arc<CancelSignal>,
}

/// All live sessions' cancel keys.
#[derive(Default)]
pub struct CancelRegistry {
    sessions: Mutex<HashMap<i32, Entry>>,
}

impl CancelRegistry {
    /// Registers a session under a fresh random key; returns the key and its cancel signal.
    pub fn register(
        &self,
        upstream: UpstreamAddr,
        backend: BackendKey,
    ) -> (FrontendKey, Arc<CancelSignal>) {
        let signal = Arc::new(CancelSignal::default());
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let key = FrontendKey {
                pid: rand::random::<i32>() & 0x7fff_ffff,
                secret: rand::random(),
            };
            if key.pid == 0 || sessions.contains_key(&key.pid) {
                continue;
            }
            let entry = Entry {
                secret: key.secret,
                upstream: upstream.clone(),
                backend,
                signal: signal.clone(),
            };
            sessions.insert(key.pid, entry);
            return (key, signal);
        }
    }

    /// Forgets a session.
    pub fn unregister(&self, key: FrontendKey) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key.pid);
    }

    /// Handles a client's CancelRequest: cancels a hold, or forwards the cancel to the upstream.
    pub async fn cancel(&self, key: FrontendKey) {
        let target = {
            let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            match sessions.get(&key.pid) {
                Some(e) if bool::from(e.secret.to_be_bytes().ct_eq(&key.secret.to_be_bytes())) => {
                    if e.signal.cancel() {
                        return;
                    }
                    (e.upstream.clone(), e.backend)
                }
                // Unknown keys are ignored silently, as Postgres does.
                _ => return,
            }
        };
        if let Err(e) = send_upstream_cancel(&target.0, target.1).await {
            tracing::warn!(error = %e, "could not forward CancelRequest upstream");
        }
    }
}

/// Sends CancelRequest over a fresh connection, with TLS when the session's `sslmode` asks for it (so the
/// key never crosses the network in clear where the session itself doesn't).
async fn send_upstream_cancel(addr: &UpstreamAddr, key: BackendKey) -> std::io::Result<()> {
    let mut stream = open(&addr.0, addr.1, &addr.2).await.map_err(|e| match e {
        NegotiateError::Io(e) => e,
        other => std::io::Error::other(other.to_string()),
    })?;
    let mut buf = bytes::BytesMut::new();
    postgres_protocol::message::frontend::cancel_request(key.pid, key.secret, &mut buf);
    stream.write_all(&buf).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cancel_during_hold_signals_the_session_not_the_upstream() {
        let reg = CancelRegistry::default();
        // Port 9 on loopback: if the registry wrongly forwarded upstream it would only log a warning.
        let (key, signal) = reg.register(
            ("127.0.0.1".into(), 9, UpstreamTls::default()),
            BackendKey { pid: 1, secret: 2 },
        );
        signal.set_holding(true);
        let since = signal.generation();
        reg.cancel(key).await;
        tokio::time::timeout(
            std::time::Duration::from_secs(1),
            signal.cancelled_after(since),
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn cancel_with_wrong_secret_is_ignored() {
        let reg = CancelRegistry::default();
        let (key, signal) = reg.register(
            ("127.0.0.1".into(), 9, UpstreamTls::default()),
            BackendKey { pid: 1, secret: 2 },
        );
        signal.set_holding(true);
        let since = signal.generation();
        reg.cancel(FrontendKey {
            pid: key.pid,
            secret: key.secret.wrapping_add(1),
        })
        .await;
        assert_eq!(signal.generation(), since);
    }
}
