//! The listener: binds, accepts, and spawns one task per client connection.

use super::cancel::CancelRegistry;
use super::channel_binding::tls_server_end_point;
use super::config::WireConfig;
use super::error::WireError;
use super::gate::WireGate;
use super::recorder::Recorder;
use super::session::{handle_connection, Shared};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio_rustls::TlsAcceptor;

/// A bound Postgres wire listener; [`WireServer::local_addr`] tells the port when binding to port 0.
pub struct WireServer {
    listener: TcpListener,
    shared: Arc<Shared>,
    /// Other single-threaded runtimes that take a share of the sessions (see [`WireServer::with_workers`]).
    workers: Vec<Handle>,
    /// One permit per open client connection, up to `[wire] max_connections`.
    open: Arc<tokio::sync::Semaphore>,
}

/// Counts a [`WireServer`]'s open client connections, on whichever runtime they run.
#[derive(Clone)]
pub struct LiveSessions {
    open: Arc<tokio::sync::Semaphore>,
    max: usize,
}

impl LiveSessions {
    /// Client connections open now (sessions, and connections still logging in).
    pub fn count(&self) -> usize {
        self.max.saturating_sub(self.open.available_permits())
    }

    /// Waits until no client connection is open, or `limit` has passed; true when none is.
    pub async fn wait_none(&self, limit: std::time::Duration) -> bool {
        crate::poll::until(limit, std::time::Duration::from_millis(20), || {
            self.count() == 0
        })
        .await
    }
}

impl WireServer {
    /// Loads TLS material and binds the configured address (spawns the recorder on the current runtime).
    pub async fn bind(cfg: WireConfig, gate: Arc<dyn WireGate>) -> Result<Self, WireError> {
        let (tls, tls_end_point) = match &cfg.tls {
            Some(t) => {
                let (acceptor, end_point) = load_tls(&t.cert, &t.key)?;
                (Some(acceptor), end_point)
            }
            None => (None, None),
        };
        // A deep accept queue: connection bursts (CI fleets, pools warming up) must not be dropped.
        let bind = || -> std::io::Result<TcpListener> {
            let socket = if cfg.listen.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            socket.set_reuseaddr(true)?;
            socket.bind(cfg.listen)?;
            socket.listen(8192)
        };
        let listener = bind().map_err(|source| WireError::Listen {
            addr: cfg.listen,
            source,
        })?;
        let recorder = Recorder::spawn(gate.clone());
        let shared = Arc::new(Shared {
            cfg,
            gate,
            tls,
            tls_end_point,
            cancels: CancelRegistry::default(),
            recorder,
            scram_mock_secret: rand::random(),
            shutdown: None,
            cancel_busy: None,
        });
        let open = Arc::new(tokio::sync::Semaphore::new(
            shared.cfg.max_connections.max(1),
        ));
        Ok(Self {
            listener,
            shared,
            workers: Vec::new(),
            open,
        })
    }

    /// Shares new sessions round-robin between the accepting runtime and `workers` (each a
    /// single-threaded runtime on its own thread). A session stays on one thread for its life, so a round
    /// trip is still one wake-up of one thread; the threads only add CPU share. One proxy thread among a
    /// busy database's backends gets one scheduler share for every client it serves, and under load the
    /// clients queue behind it.
    pub fn with_workers(mut self, workers: Vec<Handle>) -> Self {
        self.workers = workers;
        self
    }

    /// Sessions watch `shutdown`: once it turns true, each ends with `57P01` (as PostgreSQL's own
    /// shutdown does) as soon as nothing of it is in flight, so clients and pools know to reconnect
    /// elsewhere instead of finding a dead socket.
    pub fn with_shutdown(mut self, shutdown: tokio::sync::watch::Receiver<bool>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.shutdown = Some(shutdown);
        }
        self
    }

    /// Once `cancel_busy` turns true (after `shutdown`), statements still running are cancelled upstream
    /// (PostgreSQL's fast shutdown): each client gets the cancellation, then `57P01`.
    pub fn with_busy_cancel(mut self, cancel_busy: tokio::sync::watch::Receiver<bool>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.cancel_busy = Some(cancel_busy);
        }
        self
    }

    /// The session recorder, for a shutdown that waits until it has handed everything over.
    pub fn recorder(&self) -> Recorder {
        self.shared.recorder.clone()
    }

    /// A gauge of this server's open client connections, for a shutdown that waits for them.
    pub fn live_sessions(&self) -> LiveSessions {
        LiveSessions {
            open: self.open.clone(),
            max: self.shared.cfg.max_connections.max(1),
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, WireError> {
        let addr = self.shared.cfg.listen;
        self.listener
            .local_addr()
            .map_err(|source| WireError::Listen { addr, source })
    }

    /// Accepts clients until `shutdown` resolves; sessions already running continue on their own tasks.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), WireError> {
        tokio::pin!(shutdown);
        // The spinner watches its own thread's sessions, so it only makes sense on a single-threaded
        // runtime (a work-stealing one moves it between threads).
        let busy_poll = std::time::Duration::from_micros(self.shared.cfg.busy_poll_us);
        let single =
            |h: &Handle| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread;
        if !busy_poll.is_zero() {
            for runtime in std::iter::once(&Handle::current()).chain(&self.workers) {
                if single(runtime) {
                    runtime.spawn(super::spin::run(busy_poll));
                }
            }
        }
        let mut turn = 0usize;
        let open = self.open.clone();
        loop {
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        let Ok(slot) = open.clone().try_acquire_owned() else {
                            tokio::spawn(too_many_clients(tcp, peer, self.shared.cfg.max_connections));
                            continue;
                        };
                        turn = (turn + 1) % (self.workers.len() + 1);
                        match turn.checked_sub(1).and_then(|i| self.workers.get(i)) {
                            None => {
                                let shared = self.shared.clone();
                                tokio::spawn(async move {
                                    handle_connection(tcp, peer, shared).await;
                                    drop(slot);
                                });
                            }
                            Some(worker) => hand_over(tcp, peer, worker, self.shared.clone(), slot),
                        }
                    }
                    // Out of file descriptors and similar: keep serving the sessions we have.
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }
}

/// Single-threaded runtimes, each on its own thread, that take a share of a [`WireServer`]'s sessions
/// ([`WireServer::with_workers`]). Dropping the pool stops the runtimes, which ends their sessions, and
/// joins the threads.
pub struct WireWorkers {
    handles: Vec<Handle>,
    halt: tokio::sync::watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl WireWorkers {
    /// Starts `count` runtimes on threads named `{name}-1`, `{name}-2`, ….
    pub fn start(count: usize, name: &str) -> std::io::Result<Self> {
        let (halt, halted) = tokio::sync::watch::channel(false);
        let mut workers = Self {
            handles: Vec::with_capacity(count),
            halt,
            threads: Vec::with_capacity(count),
        };
        for i in 1..=count {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            workers.handles.push(rt.handle().clone());
            let mut halted = halted.clone();
            workers.threads.push(
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .stack_size(crate::THREAD_STACK)
                    .spawn(move || {
                        rt.block_on(async move {
                            let _ = halted.wait_for(|h| *h).await;
                        });
                    })?,
            );
        }
        Ok(workers)
    }

    /// Handles to the runtimes, for [`WireServer::with_workers`].
    pub fn handles(&self) -> Vec<Handle> {
        self.handles.clone()
    }
}

impl Drop for WireWorkers {
    fn drop(&mut self) {
        let _ = self.halt.send(true);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Moves an accepted socket to another runtime: it is deregistered here and registered with the
/// worker's reactor there.
fn hand_over(
    tcp: TcpStream,
    peer: SocketAddr,
    worker: &Handle,
    shared: Arc<Shared>,
    slot: tokio::sync::OwnedSemaphorePermit,
) {
    let std_tcp = match tcp.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "could not hand a connection to a wire worker");
            return;
        }
    };
    worker.spawn(async move {
        let _slot = slot;
        match TcpStream::from_std(std_tcp) {
            Ok(tcp) => handle_connection(tcp, peer, shared).await,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "a wire worker could not take a connection")
            }
        }
    });
}

/// Refuses a client past `[wire] max_connections` the way PostgreSQL refuses one past `max_connections`:
/// FATAL 53300 before anything is read, then close.
async fn too_many_clients(mut tcp: TcpStream, peer: SocketAddr, max: usize) {
    tracing::warn!(%peer, max_connections = max, "wire client refused: too many connections");
    let message = format!(
        "sorry, too many clients already: the gateway serves at most {max} wire connections ([wire] max_connections); retry later"
    );
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        super::session::fatal(&mut tcp, "53300", &message),
    )
    .await;
}

/// Binds and serves until `shutdown` resolves.
pub async fn serve(
    cfg: WireConfig,
    gate: Arc<dyn WireGate>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WireError> {
    WireServer::bind(cfg, gate).await?.run(shutdown).await
}

/// The acceptor and, when the certificate's signature algorithm allows, its `tls-server-end-point`
/// channel-binding data (SCRAM-SHA-256-PLUS is offered only then).
fn load_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<(TlsAcceptor, Option<Vec<u8>>), WireError> {
    let err = |path: &std::path::Path, reason: String| WireError::Tls {
        path: path.to_path_buf(),
        reason,
    };
    let (certs, key_der) = crate::config::preflight::load_tls_pair(cert, key).map_err(|p| {
        let path = if p.key.ends_with("key") { key } else { cert };
        err(path, p.to_string())
    })?;
    let end_point = match tls_server_end_point(&certs[0]) {
        Ok(data) => Some(data),
        Err(e) => {
            tracing::warn!(cert = %cert.display(), error = %e, "SCRAM-SHA-256-PLUS (channel binding) is not offered on the wire listener");
            None
        }
    };
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| err(cert, e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key_der)
    .map_err(|e| err(cert, e.to_string()))?;
    // Clients that offer ALPN (libpq 17+) must be able to agree on `postgresql`; clients offering none
    // still connect through the SSLRequest.
    config.alpn_protocols = vec![super::session::ALPN_POSTGRESQL.to_vec()];
    Ok((TlsAcceptor::from(Arc::new(config)), end_point))
}
