//! Maps the gateway's own BackendKeyData to the upstream's, and routes a CancelRequest either to a held
//! statement (cancel the approval request) or to the upstream (cancel the running query).

use super::upstream_tls::{open, NegotiateError, UpstreamTls};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

/// The key the gateway hands to a client (its "pid" and secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrontendKey {
    /// The upstream backend's pid, so the client's pid is the one `pg_backend_pid()`, NOTIFY messages
    /// and `pg_stat_activity` show (a random one only when the upstream sent none).
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

/// All live sessions' cancel keys, by pid. Sessions on different upstreams may share a pid; their
/// gateway-issued secrets tell them apart.
#[derive(Default)]
pub struct CancelRegistry {
    sessions: Mutex<HashMap<i32, Vec<Entry>>>,
}

impl CancelRegistry {
    /// Registers a session under the upstream's pid (a random one when the upstream sent none) and a
    /// fresh random secret; returns the key and its cancel signal. The upstream's secret never leaves
    /// the gateway.
    pub fn register(
        &self,
        upstream: UpstreamAddr,
        backend: BackendKey,
    ) -> (FrontendKey, Arc<CancelSignal>) {
        let signal = Arc::new(CancelSignal::default());
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let key = FrontendKey {
                pid: match backend.pid {
                    0 => rand::random::<i32>() & 0x7fff_ffff,
                    pid => pid,
                },
                secret: rand::random(),
            };
            if key.pid == 0 {
                continue;
            }
            let same_pid = sessions.entry(key.pid).or_default();
            if same_pid.iter().any(|e| e.secret == key.secret) {
                continue;
            }
            same_pid.push(Entry {
                secret: key.secret,
                upstream: upstream.clone(),
                backend,
                signal: signal.clone(),
            });
            return (key, signal);
        }
    }

    /// Forgets a session.
    pub fn unregister(&self, key: FrontendKey) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(same_pid) = sessions.get_mut(&key.pid) {
            same_pid.retain(|e| e.secret != key.secret);
            if same_pid.is_empty() {
                sessions.remove(&key.pid);
            }
        }
    }

    /// Handles a client's CancelRequest: cancels a hold, or forwards the cancel to the upstream.
    pub async fn cancel(&self, key: FrontendKey) {
        let target = {
            let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            let matching = sessions.get(&key.pid).and_then(|same_pid| {
                same_pid
                    .iter()
                    .find(|e| bool::from(e.secret.to_be_bytes().ct_eq(&key.secret.to_be_bytes())))
            });
            match matching {
                Some(e) => {
                    if e.signal.cancel() {
                        return;
                    }
                    (e.upstream.clone(), e.backend)
                }
                // Unknown keys are ignored silently, as Postgres does.
                None => return,
            }
        };
        if let Err(e) = send_upstream_cancel(&target.0, target.1).await {
            tracing::warn!(error = %e, "could not forward CancelRequest upstream");
        }
    }
}

/// How long a forwarded cancel waits for the upstream to close its cancel connection.
const UPSTREAM_CANCEL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Sends CancelRequest over a fresh connection, with TLS when the session's `sslmode` asks for it (so the
/// key never crosses the network in clear where the session itself doesn't), then waits until the
/// upstream closes that connection: PostgreSQL closes it only after signalling the backend, and clients
/// (libpq's PQcancel, asyncpg) wait for that close before sending their next query, so closing the
/// client's cancel connection any earlier lets the cancel land on that next query.
pub(crate) async fn send_upstream_cancel(
    addr: &UpstreamAddr,
    key: BackendKey,
) -> std::io::Result<()> {
    let mut stream = open(&addr.0, addr.1, &addr.2).await.map_err(|e| match e {
        NegotiateError::Io(e) => e,
        other => std::io::Error::other(other.to_string()),
    })?;
    let mut buf = bytes::BytesMut::new();
    postgres_protocol::message::frontend::cancel_request(key.pid, key.secret, &mut buf);
    stream.write_all(&buf).await?;
    stream.flush().await?;
    let mut sink = [0u8; 64];
    let drained = tokio::time::timeout(UPSTREAM_CANCEL_WAIT, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("upstream did not close the cancel connection in time");
    }
    Ok(())
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
    async fn clients_get_the_upstream_pid_and_sessions_sharing_it_stay_apart() {
        let reg = CancelRegistry::default();
        let backend = BackendKey {
            pid: 4242,
            secret: 7,
        };
        // Two upstream servers (here: two ports) may each have a backend 4242.
        let (a, signal_a) = reg.register(("127.0.0.1".into(), 9, UpstreamTls::default()), backend);
        let (b, signal_b) = reg.register(("127.0.0.1".into(), 10, UpstreamTls::default()), backend);
        assert_eq!((a.pid, b.pid), (4242, 4242));
        assert_ne!(a.secret, b.secret);
        signal_a.set_holding(true);
        signal_b.set_holding(true);
        let (since_a, since_b) = (signal_a.generation(), signal_b.generation());
        reg.cancel(b).await;
        assert_eq!(signal_a.generation(), since_a);
        assert_ne!(signal_b.generation(), since_b);
        reg.unregister(b);
        reg.cancel(a).await;
        assert_ne!(signal_a.generation(), since_a);
        // Without an upstream pid the client still gets a usable one.
        let (c, _) = reg.register(
            ("127.0.0.1".into(), 9, UpstreamTls::default()),
            BackendKey { pid: 0, secret: 0 },
        );
        assert_ne!(c.pid, 0);
    }

    #[tokio::test]
    async fn forwarded_cancel_returns_only_after_the_upstream_closed_its_connection() {
        // A fake postmaster that, like PostgreSQL, closes the cancel connection only once it has
        // signalled the backend (here: after a delay). The client's cancel connection must stay open
        // until then, or the client's next query races the signal.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let signalled = Arc::new(AtomicBool::new(false));
        let upstream = tokio::spawn({
            let signalled = signalled.clone();
            async move {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut packet = [0u8; 16];
                sock.read_exact(&mut packet).await.unwrap();
                assert_eq!(&packet[4..8], &80877102i32.to_be_bytes());
                assert_eq!(&packet[8..12], &4242i32.to_be_bytes());
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                signalled.store(true, Ordering::SeqCst);
                drop(sock);
            }
        });
        let reg = CancelRegistry::default();
        let (key, _) = reg.register(
            ("127.0.0.1".into(), port, UpstreamTls::default()),
            BackendKey {
                pid: 4242,
                secret: 7,
            },
        );
        reg.cancel(key).await;
        assert!(
            signalled.load(Ordering::SeqCst),
            "cancel returned before the upstream closed the cancel connection"
        );
        upstream.await.unwrap();
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
