//! The composition root: build the engine, the notifiers and their routers, and run every task until a
//! shutdown signal.

use crate::config::{parse_duration, Config};
use crate::engine::Engine;
use crate::http::{router, AppState};
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
    tracing::info!("shutdown requested: finishing in-flight work");
}

/// `countersign serve`.
pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    let sinks = crate::channels::sinks(&cfg);
    let poll = parse_duration(&cfg.outbox.poll).unwrap_or(Duration::from_millis(500));
    let sweep = parse_duration(&cfg.server.expiry_sweep).unwrap_or(Duration::from_secs(5));
    let max_attempts = cfg.outbox.max_attempts;
    let http_listen = cfg.server.listen;
    let wire_cfg = cfg.wire.clone();
    let engine = Arc::new(
        Engine::build(cfg, sinks)
            .await
            .context("starting the engine")?,
    );
    let channels = crate::channels::build(&engine)?;
    let notifiers = channels.notifiers;
    let inbound = channels.routers;
    let reminder_task = channels.reminders.map(|r| r.spawn());

    let worker = Arc::new(OutboxWorker::new(
        engine.store().clone(),
        notifiers,
        RetryPolicy {
            max_attempts,
            ..RetryPolicy::default()
        },
    ));
    let worker_task = worker.clone().spawn(poll);
    let expiry_task = engine.workflow.spawn_expiry(sweep);
    let sessions_task = {
        let engine = engine.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tick.tick().await;
                engine
                    .end_idle_http_sessions(crate::engine::HTTP_SESSION_IDLE)
                    .await;
            }
        })
    };

    let mut app = router(AppState {
        engine: engine.clone(),
    });
    for r in inbound {
        app = app.merge(r);
    }
    let listener = tokio::net::TcpListener::bind(http_listen)
        .await
        .with_context(|| format!("binding the HTTP listener on {http_listen} (set [server] listen to a free address)"))?;
    tracing::info!(addr = %http_listen, store = engine.store().backend(), "HTTP API listening");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wire_task = match wire_cfg {
        Some(wcfg) => {
            let addr = wcfg.listen;
            let gate: Arc<dyn crate::pg::gate::WireGate> = engine.clone();
            let server = crate::pg::server::WireServer::bind(wcfg, gate)
                .await
                .with_context(|| format!("binding the Postgres wire listener on {addr} (set [wire] listen to a free address)"))?;
            tracing::info!(addr = %addr, "Postgres wire listener ready (database name = connection name, password = token)");
            let mut rx = stop_rx.clone();
            Some(tokio::spawn(async move {
                let stop = async move {
                    let _ = rx.wait_for(|s| *s).await;
                };
                if let Err(e) = server.run(stop).await {
                    tracing::error!(error = %e, "wire listener failed");
                }
            }))
        }
        None => None,
    };

    let mut rx = stop_rx.clone();
    let http = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = rx.wait_for(|s| *s).await;
    });
    let http_task = tokio::spawn(async move { http.await });

    shutdown_signal().await;
    let _ = stop_tx.send(true);
    if let Some(w) = wire_task {
        let _ = tokio::time::timeout(Duration::from_secs(30), w).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), http_task).await;
    sessions_task.abort();
    engine.end_idle_http_sessions(Duration::ZERO).await;
    // Give the outbox one last pass so queued notifications go out before exit; the rest survive in the store.
    let _ = tokio::time::timeout(Duration::from_secs(5), worker.run_once()).await;
    worker_task.abort();
    expiry_task.abort();
    if let Some(t) = reminder_task {
        t.abort();
    }
    tracing::info!("stopped");
    Ok(())
}
