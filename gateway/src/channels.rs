//! Which notification channels run, built from the config: their outbox sink names, notifiers, inbound
//! routers and the reminder scheduler. Part of the composition root, shared by `serve` and the tests.

use crate::config::Config;
use crate::engine::Engine;
use countersign_bot::events::Notifier;
use countersign_notifiers::{email, jira, reminders, slack, webhooks, LogNotifier};
use std::sync::Arc;

/// Scan interval when only policy rules set reminder timings (no `[reminders]` section to configure it).
const RULE_REMINDER_SCAN_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// A channel could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("[{section}]: {message}")]
pub struct ChannelError {
    /// Config section.
    pub section: &'static str,
    /// What went wrong and the fix.
    pub message: String,
}

fn err(section: &'static str, e: impl std::fmt::Display) -> ChannelError {
    ChannelError {
        section,
        message: e.to_string(),
    }
}

/// Outbox sink names for the configured channels (decided before the engine exists).
pub fn sinks(cfg: &Config) -> Vec<String> {
    let mut s = vec!["log".to_string()];
    if cfg.slack.is_some() {
        s.push("slack".into());
    }
    if cfg.email.is_some() {
        s.push(email::EMAIL_SINK.into());
    }
    if cfg.jira.is_some() {
        s.push("jira".into());
    }
    if let Some(w) = &cfg.webhooks {
        s.extend(w.endpoints.iter().map(|e| e.sink()));
    }
    s
}

/// The running channels.
pub struct Channels {
    /// Notifiers for the outbox worker.
    pub notifiers: Vec<Arc<dyn Notifier>>,
    /// Inbound HTTP routes (Slack interactions, e-mail pages, Jira webhook).
    pub routers: Vec<axum::Router>,
    /// Reminder and escalation scheduler, when configured.
    pub reminders: Option<Arc<reminders::ReminderScheduler>>,
    /// The Slack Socket Mode connection task, when `slack.app_token_env` is set; abort it on shutdown.
    pub slack_socket: Option<tokio::task::JoinHandle<()>>,
}

/// Build every configured channel against the engine's store and workflow.
/// What `serve` would refuse in the channels' secrets, read from the environment as it reads them
/// (set but unusable: too short a link key, a webhook secret without `whsec_`, a blank token).
pub fn secret_problems(cfg: &crate::config::Config) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(sc) = &cfg.slack {
        if let Err(e) = sc.secrets_from_env() {
            problems.push(e.to_string());
        }
    }
    if let Some(ec) = &cfg.email {
        if let Err(e) = email::EmailSecrets::from_env(ec) {
            problems.push(e.to_string());
        }
    }
    if let Some(jc) = &cfg.jira {
        if let Err(e) = jira::JiraCredentials::from_env(jc) {
            problems.push(e.to_string());
        }
    }
    for ep in cfg.webhooks.iter().flat_map(|w| &w.endpoints) {
        if let Err(e) = webhooks::WebhookNotifier::from_env(ep) {
            problems.push(e.to_string());
        }
    }
    problems
}

pub fn build(engine: &Engine) -> Result<Channels, ChannelError> {
    let cfg = &engine.config;
    let store = engine.store().clone();
    let directory = engine.workflow.directory().clone();
    let mut notifiers: Vec<Arc<dyn Notifier>> = vec![Arc::new(LogNotifier)];
    let mut routers = Vec::new();
    let mut slack_socket = None;
    if let Some(sc) = &cfg.slack {
        let secrets = sc.secrets_from_env().map_err(|e| err("slack", e))?;
        let api = slack::SlackApi::new(sc.api_base(), &secrets.bot_token)
            .map_err(|e| err("slack", e))?
            .with_timeout(std::time::Duration::from_secs(sc.timeout_secs));
        notifiers.push(Arc::new(slack::SlackNotifier::new(
            sc.clone(),
            api.clone(),
            store.clone(),
            directory.clone(),
        )));
        let inbound = slack::SlackInbound::new(
            sc,
            api.clone(),
            &secrets.signing_secret,
            engine.workflow.clone(),
        );
        if let Some(app_token) = &secrets.app_token {
            // Socket Mode receives the same interactions without a public URL; the HTTP routes stay too.
            let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
                err(
                    "slack",
                    "Socket Mode needs a running Tokio runtime: build the channels from inside it",
                )
            })?;
            let client = slack::SocketModeClient::new(inbound.clone(), api, app_token);
            slack_socket = Some(runtime.spawn(client.run()));
        }
        routers.push(slack::router(inbound));
    }
    if let Some(ec) = &cfg.email {
        let secrets = email::EmailSecrets::from_env(ec).map_err(|e| err("email", e))?;
        let notifier = email::EmailNotifier::new(ec, &secrets, store.clone(), directory.clone())
            .map_err(|e| err("email", e))?;
        let signer = notifier.signer();
        notifiers.push(Arc::new(notifier));
        routers.push(email::router(email::EmailInbound {
            workflow: engine.workflow.clone(),
            store: store.clone(),
            signer,
            public_base_url: ec.public_base_url.trim_end_matches('/').to_string(),
        }));
    }
    if let Some(jc) = &cfg.jira {
        let creds = jira::JiraCredentials::from_env(jc).map_err(|e| err("jira", e))?;
        notifiers.push(Arc::new(
            jira::JiraNotifier::new(jc.clone(), &creds, store.clone())
                .map_err(|e| err("jira", e))?,
        ));
        let inbound = jira::JiraInbound::new(jc, &creds, engine.workflow.clone())
            .map_err(|e| err("jira", e))?;
        routers.push(jira::router(inbound));
    }
    if let Some(wc) = &cfg.webhooks {
        for ep in &wc.endpoints {
            notifiers.push(Arc::new(
                webhooks::WebhookNotifier::from_env(ep).map_err(|e| err("webhooks", e))?,
            ));
        }
    }
    let reminders = match &cfg.reminders {
        Some(rc) => {
            let plan = rc.validate().map_err(|errs| {
                err(
                    "reminders",
                    errs.iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("; "),
                )
            })?;
            Some(Arc::new(reminders::ReminderScheduler::new(
                engine.workflow.clone(),
                plan,
            )))
        }
        // Rules may set their own reminder timings even without a global [reminders] section.
        None if cfg
            .policy
            .rules
            .iter()
            .any(|r| r.remind_after.is_some() || r.escalate_after.is_some()) =>
        {
            Some(Arc::new(reminders::ReminderScheduler::rules_only(
                engine.workflow.clone(),
                RULE_REMINDER_SCAN_EVERY,
            )))
        }
        None => None,
    };
    Ok(Channels {
        notifiers,
        routers,
        reminders,
        slack_socket,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::sync::Mutex;

    /// A loopback Web API that records the `Authorization` header of each `apps.connections.open`.
    async fn fake_slack() -> (String, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let app = axum::Router::new().route(
            "/api/apps.connections.open",
            axum::routing::post(move |headers: axum::http::HeaderMap| {
                let record = record.clone();
                async move {
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    record.lock().unwrap().push(auth);
                    axum::Json(serde_json::json!({ "ok": false, "error": "invalid_auth" }))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/api", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (base, seen)
    }

    /// The channels of the quickstart config plus a `[slack]` section; the temp dir holds the store.
    async fn channels_with_slack(
        base: &str,
        app_token_line: &str,
    ) -> (Channels, countersign_bot::testing::TempDir) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let toml = format!(
            "{}\n[slack]\nbot_token_env = \"CS_CHANNELS_TEST_BOT\"\nsigning_secret_env = \"CS_CHANNELS_TEST_SECRET\"\n{app_token_line}\napi_base_url = \"{base}\"\nroutes = {{ default_channel = \"C1\" }}\n",
            crate::cli::QUICKSTART_TOML
        );
        for (k, v) in [
            ("CS_CHANNELS_TEST_BOT", "xoxb-1"),
            ("CS_CHANNELS_TEST_SECRET", "s3cret"),
            ("CS_CHANNELS_TEST_APP", "xapp-1-channels-test"),
        ] {
            std::env::set_var(k, v);
        }
        let cfg = Config::from_toml(&toml, "test.toml").unwrap_or_else(|e| panic!("{e}"));
        let (store, dir) = countersign_bot::testing::fresh_sqlite().await;
        let sinks = sinks(&cfg);
        let engine = Engine::build_with_store(cfg, store, sinks).await.unwrap();
        (build(&engine).unwrap_or_else(|e| panic!("{e}")), dir)
    }

    #[tokio::test]
    async fn app_token_starts_socket_mode_with_that_token() {
        let (base, seen) = fake_slack().await;
        let (channels, _dir) =
            channels_with_slack(&base, "app_token_env = \"CS_CHANNELS_TEST_APP\"").await;
        let task = channels.slack_socket.expect("Socket Mode task");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while seen.lock().unwrap().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "Socket Mode never called apps.connections.open"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        task.abort();
        assert_eq!(seen.lock().unwrap()[0], "Bearer xapp-1-channels-test");
    }

    #[tokio::test]
    async fn without_app_token_no_socket_mode_task_runs() {
        let (base, seen) = fake_slack().await;
        let (channels, _dir) = channels_with_slack(&base, "").await;
        assert!(channels.slack_socket.is_none());
        assert!(seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn rule_reminder_settings_reach_the_scheduler_without_a_reminders_section() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let toml = format!(
            "{}\n[[policy.rules]]\nname = \"drops-remind\"\nkinds = [\"DROP TABLE\"]\naction = \"review\"\nremind_after = \"1s\"\nescalate_after = \"1s\"\nescalate_to = [\"dba-leads\"]\n",
            crate::cli::QUICKSTART_TOML
        );
        let cfg = Config::from_toml(&toml, "test.toml").unwrap_or_else(|e| panic!("{e}"));
        let (store, _dir) = countersign_bot::testing::fresh_sqlite().await;
        let sinks = sinks(&cfg);
        let engine = Engine::build_with_store(cfg, store.clone(), sinks)
            .await
            .unwrap();
        let channels = build(&engine).unwrap_or_else(|e| panic!("{e}"));
        let scheduler = channels
            .reminders
            .clone()
            .expect("rules alone start a scheduler");

        let requester = countersign_bot::RequesterChain(vec![
            countersign_bot::testing::workload("deploy-agent"),
            countersign_bot::testing::human("alice@example.com"),
        ]);
        let mut held = Vec::new();
        for (sql, rule) in [
            ("DROP TABLE reminded_orders", "drops-remind"),
            ("DELETE FROM plain_orders", "default"),
        ] {
            let verdict = engine.classify("local", &requester, sql);
            assert_eq!(verdict.rule, rule, "{sql}");
            let hash = countersign_bot::StatementHash::of_text(sql);
            let incoming = crate::engine::Incoming {
                connection: "local",
                requester: &requester,
                sql,
                hash: &hash,
                origin: "api",
                session: None,
            };
            match engine.admit(&incoming, &verdict).await.unwrap() {
                crate::engine::Admission::Held(v) => held.push(v.request),
                _ => panic!("{sql} should be held for review"),
            }
        }
        let (ruled, plain) = (&held[0], &held[1]);
        assert_eq!(ruled.reminders.remind_after_secs, Some(1));
        assert!(plain.reminders.is_unset());

        let later = ruled.created_at.max(plain.created_at) + time::Duration::seconds(3);
        scheduler.scan(later).await.unwrap();
        let items = store
            .outbox_list(Some(countersign_bot::store::OutboxStatus::Pending), 100)
            .await
            .unwrap();
        let reminders: Vec<_> = items
            .iter()
            .filter(|i| i.event_kind == "reminder")
            .collect();
        assert!(!reminders.is_empty(), "the rule's request is reminded");
        assert!(
            reminders
                .iter()
                .all(|i| i.idempotency_key.contains(&ruled.id.to_string())),
            "only the rule's request is reminded"
        );
        let escalation = reminders
            .iter()
            .find(|i| i.idempotency_key.ends_with(":escalation"))
            .expect("escalation enqueued");
        let event: countersign_bot::events::WorkflowEvent =
            serde_json::from_str(&escalation.payload).unwrap();
        assert!(matches!(
            event,
            countersign_bot::events::WorkflowEvent::Reminder { escalated_to, .. }
                if escalated_to == ["dba-leads"]
        ));
    }
}
