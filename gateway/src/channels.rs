//! Which notification channels run, built from the config: their outbox sink names, notifiers, inbound
//! routers and the reminder scheduler. Part of the composition root, shared by `serve` and the tests.

use crate::config::Config;
use crate::engine::Engine;
use countersign_bot::events::Notifier;
use countersign_notifiers::{email, jira, reminders, slack, webhooks, LogNotifier};
use std::sync::Arc;

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
}

/// Build every configured channel against the engine's store and workflow.
pub fn build(engine: &Engine) -> Result<Channels, ChannelError> {
    let cfg = &engine.config;
    let store = engine.store().clone();
    let directory = engine.workflow.directory().clone();
    let base = engine.base_url.clone();
    let mut notifiers: Vec<Arc<dyn Notifier>> = vec![Arc::new(LogNotifier)];
    let mut routers = Vec::new();
    if let Some(sc) = &cfg.slack {
        let secrets = sc.secrets_from_env().map_err(|e| err("slack", e))?;
        let api =
            slack::SlackApi::new(sc.api_base(), &secrets.bot_token).map_err(|e| err("slack", e))?;
        notifiers.push(Arc::new(slack::SlackNotifier::new(
            sc.clone(),
            api.clone(),
            store.clone(),
            directory.clone(),
            &base,
        )));
        let inbound = slack::SlackInbound::new(
            sc,
            api,
            &secrets.signing_secret,
            engine.workflow.clone(),
            &base,
        );
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
        None => None,
    };
    Ok(Channels {
        notifiers,
        routers,
        reminders,
    })
}
