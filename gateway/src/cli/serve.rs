//! The composition root: build the engine, the notifiers and their routers, and run every task until a
//! shutdown signal.

use crate::config::{parse_duration, Config};
use crate::engine::Engine;
use crate::http::AppState;
use anyhow::Context;
use countersign_notifiers::{OutboxWorker, RetryPolicy};
use std::sync::Arc;
use std::time::Duration;

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// The longest the drain after a shutdown signal takes: held statements are released (up to 10 s),
/// running ones get 10 s before they are cancelled, and the in-flight requests, results and last
/// notifications get a few seconds more; the other waits overlap these.
const DRAIN_LIMIT: Duration = Duration::from_secs(45);

/// Wait until no statement is held on a client connection (each has been told it stays pending), then give
/// statements already forwarded upstream a moment to complete before the runtime drops their sessions.
async fn drain_holds(engine: &Engine, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while engine.metrics.held_now() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let held = engine.metrics.held_now();
    if held > 0 {
        tracing::warn!(
            held,
            "shutting down with statements still held; their requests stay pending"
        );
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
}

/// How long statements still running at shutdown may finish before they are cancelled.
const BUSY_STATEMENT_GRACE: Duration = Duration::from_secs(10);

/// Run the wire proxy on its own single-threaded runtimes and OS threads (`[wire] threads`): the first accepts
/// and shares sessions round-robin with the others, and a session stays on its thread. A round trip through
/// the proxy is then one epoll wake-up on one thread (as in pgbouncer) instead of hops between work-stealing
/// workers, which measured +100 µs per round trip on a 2-core machine. The engine, its store and the
/// notifiers stay on the main runtime; hold paths cross over through channels and wakers, which tokio
/// supports across runtimes. The returned task finishes when the wire runtimes have stopped; they keep
/// sessions alive after the listener closes until `exit` fires, so held clients can be told their request
/// stays pending.
async fn spawn_wire(
    wcfg: crate::pg::config::WireConfig,
    engine: Arc<Engine>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    exit: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let addr = wcfg.listen;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let workers = crate::pg::server::WireWorkers::start(
        wcfg.thread_count().saturating_sub(1),
        "countersign-wire",
    )
    .context("starting the wire worker threads")?;
    let worker_handles = workers.handles();
    std::thread::Builder::new()
        .name("countersign-wire".into())
        .stack_size(crate::THREAD_STACK)
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow::anyhow!("cannot start the wire runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                let gate: Arc<dyn crate::pg::gate::WireGate> = engine;
                let (cancel_busy_tx, cancel_busy_rx) = tokio::sync::watch::channel(false);
                let server = match crate::pg::server::WireServer::bind(wcfg, gate).await {
                    Ok(s) => s
                        .with_workers(worker_handles)
                        .with_shutdown(stop.clone())
                        .with_busy_cancel(cancel_busy_rx),
                    Err(e) => {
                        // The error names the file or the address and what to do about it.
                        let what = match &e {
                            crate::pg::error::WireError::Tls { .. } => {
                                "loading the wire listener's TLS files (wire.tls.cert, wire.tls.key)".to_string()
                            }
                            // The error names the address and the fix already.
                            _ => "`wire.listen`".to_string(),
                        };
                        // Flattened: the error's text already includes its OS error, which the
                        // chain would print a second time.
                        let _ = ready_tx.send(Err(anyhow::anyhow!("{what}: {e}")));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let live = server.live_sessions();
                let recorder = server.recorder();
                let stopped = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                if let Err(e) = server.run(stopped).await {
                    tracing::error!(error = %e, "wire listener failed");
                }
                // Sessions keep running (held clients get their answer) until the main runtime says exit.
                let _ = tokio::time::timeout(Duration::from_secs(40), exit).await;
                // Idle sessions ended with 57P01 at the stop; busy ones end so once their statement has
                // answered. Those still running after the grace are cancelled upstream, as PostgreSQL's
                // fast shutdown does, so no client is cut off mid-result without a word.
                if !live.wait_none(BUSY_STATEMENT_GRACE).await {
                    tracing::info!(sessions = live.count(), "cancelling statements still running at shutdown");
                    let _ = cancel_busy_tx.send(true);
                    live.wait_none(Duration::from_secs(5)).await;
                }
                // The recorder runs on this runtime: what the sessions recorded (an approved
                // statement's result among it) reaches the store before the runtime stops.
                if !recorder.settled(Duration::from_secs(10)).await {
                    tracing::warn!("session records still queued at shutdown were not all written");
                }
            });
            drop(workers);
            let _ = done_tx.send(());
        })
        .context("starting the wire proxy thread")?;
    ready_rx
        .await
        .map_err(|_| anyhow::anyhow!("the wire proxy thread stopped during start-up"))??;
    tracing::info!(addr = %addr, "Postgres wire listener ready (database name = connection name, password = token)");
    Ok(tokio::spawn(async move {
        let _ = done_rx.await;
    }))
}

/// Bind a listener with a deep accept queue: thousands of agents long-polling held statements connect in
/// bursts, and tokio's default backlog of 1024 drops connections under such a burst.
pub(crate) fn bind_with_backlog(
    addr: std::net::SocketAddr,
) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(8192)
}

/// `countersign serve`. `source` is the config file's text (for the secrets it names).
pub async fn serve(cfg: Config, source: &str) -> anyhow::Result<()> {
    // Before the store is opened or anything bound: a start that fails half-way leaves tasks and a
    // listener behind and blames the wrong key.
    let problems =
        crate::config::preflight::start_problems(&cfg, source, &|name| std::env::var(name).ok());
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        anyhow::bail!(
            "refusing to start: {} (`countersign check-config` lists the same)",
            list.join("; ")
        );
    }
    for w in cfg.warnings() {
        tracing::warn!(key = %w.key, "{}", w.message);
    }
    let sinks = crate::channels::sinks(&cfg);
    let poll = parse_duration(&cfg.outbox.poll).unwrap_or(Duration::from_millis(500));
    let sweep = parse_duration(&cfg.server.expiry_sweep).unwrap_or(Duration::from_secs(5));
    let max_attempts = cfg.outbox.max_attempts;
    let lease = parse_duration(&cfg.outbox.lease).unwrap_or(Duration::from_secs(30));
    warn_of_timeouts_past_the_delivery_limit(&cfg, lease);
    let http_listen = cfg.server.listen;
    let wire_cfg = cfg.wire.clone();
    let store_url = cfg.store.resolved_url()?;
    let _store_lock = super::store_lock::lock(&store_url)?;
    let engine = Arc::new(
        Engine::build(cfg, sinks)
            .await
            .context("starting the engine")?,
    );
    let channels = crate::channels::build(&engine)?;
    let notifiers = channels.notifiers;
    let inbound = channels.routers;
    let reminder_task = channels.reminders.map(|r| r.spawn());
    let slack_socket_task = channels.slack_socket;

    let worker = Arc::new(OutboxWorker::new(
        engine.store().clone(),
        notifiers,
        RetryPolicy {
            max_attempts,
            lease,
            ..RetryPolicy::default()
        },
    ));
    let worker_task = worker.clone().spawn(poll);
    let expiry_task = engine.workflow.spawn_expiry(sweep);
    // Read before the front doors open, so a row function is recognised from the first statement.
    let _ = tokio::time::timeout(Duration::from_secs(5), engine.refresh_row_functions()).await;
    let row_functions_task = engine.spawn_row_function_refresh();
    let sessions_task = {
        let engine = engine.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tick.tick().await;
                engine
                    .end_idle_http_sessions(crate::engine::HTTP_SESSION_IDLE)
                    .await;
                // A Slack signature older than its five-minute window is refused as stale anyway, so
                // its replay nonce need not be kept (an hour leaves room for clock skew).
                let hour_ago = countersign_bot::clock::now_ms() - 3_600_000;
                if let Err(e) = engine.store().prune_nonces("slack:", hour_ago).await {
                    tracing::debug!(error = %e, "could not prune old Slack replay nonces");
                }
            }
        })
    };
    // Votes cast on other replicas release statements held here within milliseconds instead of a poll.
    let change_task = engine.workflow.spawn_change_listener();

    let app = crate::http::app(
        AppState {
            engine: engine.clone(),
        },
        inbound,
    );
    let listener = bind_with_backlog(http_listen).with_context(|| {
        format!(
            "binding the HTTP listener on {http_listen} (set [server] listen to a free address)"
        )
    })?;
    tracing::info!(addr = %http_listen, store = engine.store().backend(), "HTTP API listening");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (wire_exit_tx, wire_exit_rx) = tokio::sync::oneshot::channel::<()>();
    let wire_task = match wire_cfg {
        Some(wcfg) => Some(spawn_wire(wcfg, engine.clone(), stop_rx.clone(), wire_exit_rx).await?),
        None => None,
    };

    let mut rx = stop_rx.clone();
    let limits = crate::http::listener::HttpLimits {
        max_connections: engine.config.server.max_connections,
        ..Default::default()
    };
    // In-flight HTTP requests get up to 30 s to finish after the stop.
    let http_task = tokio::spawn(crate::http::listener::serve(
        listener,
        app,
        limits,
        async move {
            let _ = rx.wait_for(|s| *s).await;
        },
        Duration::from_secs(30),
    ));

    shutdown_signal().await;
    tracing::info!(
        limit_s = DRAIN_LIMIT.as_secs(),
        "shutdown requested: draining (held statements are released, running ones get 10 s to finish) for at most {} s; send the signal again to exit at once",
        DRAIN_LIMIT.as_secs()
    );
    // A second signal means "now": the process exits without waiting for the drain.
    tokio::spawn(async {
        shutdown_signal().await;
        tracing::warn!("second shutdown signal: exiting at once without finishing the drain; held and running statements' requests stay as the store has them");
        std::process::exit(1);
    });
    // API statements get the grace wire statements get, then are cancelled as PostgreSQL's fast
    // shutdown would (their callers, and an approved execution's record, get the real outcome).
    let api_grace = {
        let engine = engine.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            let n = engine.cancel_api_statements().await;
            if n > 0 {
                tracing::info!(
                    statements = n,
                    "cancelled API statements still running after the shutdown grace"
                );
            }
        })
    };
    // Stop accepting on both front doors, then release every held statement: wire clients get an error
    // saying the request stays pending, `?wait=` callers get 202 with the request id. Requests survive in the
    // store and run once when re-sent after approval, on any replica.
    let _ = stop_tx.send(true);
    engine.workflow.begin_shutdown();
    drain_holds(&engine, Duration::from_secs(10)).await;
    let _ = wire_exit_tx.send(());
    if let Some(w) = wire_task {
        let _ = tokio::time::timeout(Duration::from_secs(30), w).await;
    }
    // In-flight HTTP requests finish (axum's graceful shutdown waits for them).
    let _ = tokio::time::timeout(Duration::from_secs(30), http_task).await;
    // Results of approved executions reach the store (wire results pass through the recorder's tick), so a
    // clean stop never leaves one to be declared interrupted.
    crate::poll::until(Duration::from_secs(10), Duration::from_millis(50), || {
        engine.workflow.executions_in_progress() == 0
    })
    .await;
    sessions_task.abort();
    engine.end_idle_http_sessions(Duration::ZERO).await;
    // Give the outbox one last pass so queued notifications go out before exit; the rest survive in the store.
    let _ = tokio::time::timeout(Duration::from_secs(5), worker.run_once()).await;
    api_grace.abort();
    worker_task.abort();
    expiry_task.abort();
    row_functions_task.abort();
    if let Some(t) = change_task {
        t.abort();
    }
    if let Some(t) = reminder_task {
        t.abort();
    }
    if let Some(t) = slack_socket_task {
        t.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// A delivery is cut off at the shorter of the outbox lease and the worker's delivery limit (past the
/// lease another replica may take the item): a channel timeout above it makes a slow but working
/// receiver fail every attempt, and the channel's own setting looks ignored. Said once, at start.
fn warn_of_timeouts_past_the_delivery_limit(cfg: &crate::config::Config, lease: Duration) {
    let limit = lease.min(RetryPolicy::default().delivery_timeout);
    let mut timeouts: Vec<(String, u64)> = Vec::new();
    if let Some(w) = &cfg.webhooks {
        for (i, e) in w.endpoints.iter().enumerate() {
            timeouts.push((
                format!("webhooks.endpoints[{i}].timeout_secs"),
                e.timeout_secs,
            ));
        }
    }
    if let Some(sc) = &cfg.slack {
        timeouts.push(("slack.timeout_secs".into(), sc.timeout_secs));
    }
    if let Some(j) = &cfg.jira {
        timeouts.push(("jira.timeout_secs".into(), j.timeout_secs));
    }
    for (key, secs) in timeouts {
        if Duration::from_secs(secs) > limit {
            tracing::warn!(
                key = %key,
                timeout_s = secs,
                limit_s = limit.as_secs_f64(),
                "a channel timeout is longer than a delivery may take (the shorter of [outbox] lease and 25 s); deliveries are cut off at the limit, so lower the timeout or raise outbox.lease"
            );
        }
    }
}
