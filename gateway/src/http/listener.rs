//! Serving the HTTP API with the limits a public listener needs.
//!
//! `axum::serve` has neither: a client may take forever to send its headers (slowloris), and every
//! accepted connection holds a file descriptor for as long as the client likes. 1,100 idle connections
//! exhausted the process's descriptors in a review, and with them the wire listener's logins. Here
//! connections beyond [`HttpLimits::max_connections`] wait in the kernel's accept queue (the process's
//! descriptors stay free for the wire listener and the store), and a request's headers must arrive within
//! [`HttpLimits::header_timeout`] (hyper's `header_read_timeout`, which needs a timer to work at all).

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// Limits of the HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers (also the idle time allowed between
    /// requests on a kept-alive connection).
    pub header_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets in-flight requests finish (up to
/// `drain`). Handlers see the peer address as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    // HTTP/1.1 only, as axum::serve served it: agents, Slack, Jira and browsers all speak it, and
    // HTTP/2 without TLS would only add surface.
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    tokio::pin!(shutdown);
    let mut warned_full = false;
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        if permits.available_permits() == 0 && !warned_full {
            warned_full = true;
            tracing::warn!(
                max_connections = limits.max_connections,
                "the HTTP listener is at its connection limit; further clients wait to be accepted"
            );
        }
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or memory: back off instead of spinning on the error.
                    tracing::warn!(error = %e, "HTTP accept failed; retrying shortly");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        if permits.available_permits() > limits.max_connections / 2 {
            warned_full = false;
        }
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let service = TowerToHyperService::new(tower::service_fn(
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(ConnectInfo::<std::net::SocketAddr>(peer));
                app.clone().oneshot(req.map(axum::body::Body::new))
            },
        ));
        let conn = builder
            .serve_connection(TokioIo::new(tcp), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("HTTP connections still open after the shutdown grace period; closing them");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start(limits: HttpLimits) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.ip().to_string() }),
        );
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(serve(
            listener,
            app,
            limits,
            async move {
                let _ = rx.await;
            },
            Duration::from_secs(1),
        ));
        (addr, tx)
    }

    async fn get_peer(addr: SocketAddr) -> String {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_requests_with_the_peer_address() {
        let (addr, _stop) = start(HttpLimits::default()).await;
        let out = get_peer(addr).await;
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.ends_with("127.0.0.1"), "{out}");
    }

    #[tokio::test]
    async fn http2_prior_knowledge_is_not_spoken() {
        let (addr, _stop) = start(HttpLimits::default()).await;
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
        // An HTTP/1.1 server answers the preface as a bad request (or just closes); an HTTP/2 one
        // would send a SETTINGS frame.
        assert!(
            out.is_empty() || out.starts_with(b"HTTP/1.1 4"),
            "{:?}",
            String::from_utf8_lossy(&out)
        );
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_headers_is_disconnected() {
        let limits = HttpLimits {
            header_timeout: Duration::from_millis(300),
            ..HttpLimits::default()
        };
        let (addr, _stop) = start(limits).await;
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /peer HTTP/1.1\r\nx-slow: ")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
        assert!(
            ended.is_ok(),
            "the half-sent request was still open after 5 s"
        );
    }

    #[tokio::test]
    async fn connections_past_the_limit_wait_until_one_closes() {
        let limits = HttpLimits {
            max_connections: 2,
            header_timeout: Duration::from_secs(30),
        };
        let (addr, _stop) = start(limits).await;
        // Two idle connections take both places.
        let idle: Vec<_> =
            futures::future::join_all((0..2).map(|_| tokio::net::TcpStream::connect(addr)))
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let third = tokio::spawn(get_peer(addr));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !third.is_finished(),
            "a third connection was served past the limit of 2"
        );
        drop(idle);
        let out = tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .expect("served once a place was free")
            .unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }
}
