//! Building the engine from a validated config.

use super::{recording, Engine};
use crate::config::{parse_duration, resolve_secret, Config, SecretError};
use crate::identity::Authenticator;
use crate::policy::Policy;
use crate::upstream::{CatalogLookup, UpstreamPool, UpstreamTarget};
use countersign_bot::store::StoreError;
use countersign_bot::{ApproverDirectory, ApproverGroup, Workflow};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The engine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A referenced secret is missing.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Something else in the config is unusable.
    #[error("{0}")]
    Config(String),
}

/// With a key newly configured, the chain so far is unsealed: a sealed record marks where sealing
/// starts, so `audit verify` can insist that the last record is sealed.
async fn mark_sealing_start(store: &dyn countersign_bot::Store) -> Result<(), StoreError> {
    if let Some(head) = store.audit_head().await? {
        if head.seal.is_none() {
            store
                .append_audit(countersign_bot::audit::AuditEntry::new(
                    "system",
                    "audit.sealing_started",
                    "system",
                ))
                .await?;
        }
    }
    Ok(())
}

impl Engine {
    /// Open the store, resolve secrets, compile the policy. `sinks` are the notifier names events are queued
    /// for (decided by the composition root).
    pub async fn build(config: Config, sinks: Vec<String>) -> Result<Engine, EngineError> {
        let store_url = config.store.resolved_url()?;
        let key = config
            .store
            .audit_key(&store_url, crate::config::KeyFile::Create)?;
        let sealed = key.is_some();
        let store = countersign_bot::store::open_with(&store_url, key).await?;
        if sealed {
            mark_sealing_start(&*store).await?;
        } else {
            tracing::warn!("audit records are hash-chained but not sealed: set [store] audit_key_env (the same key on every replica) so that a rewrite of the audit table that recomputes its hashes is detected");
        }
        Self::build_with_store(config, store, sinks).await
    }

    /// As [`Engine::build`], with an already open store.
    pub async fn build_with_store(
        config: Config,
        store: Arc<dyn countersign_bot::Store>,
        sinks: Vec<String>,
    ) -> Result<Engine, EngineError> {
        let policy = Policy::new(config.policy.rules.clone(), config.policy.defaults.clone())
            .map_err(|e| EngineError::Config(e.to_string()))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| EngineError::Config(format!("cannot build the HTTP client: {e}")))?;
        let auth = Authenticator::new(&config.identity, http)
            .map_err(|e| EngineError::Config(e.to_string()))?;
        let directory =
            ApproverDirectory::new(config.approver_groups.iter().map(|g| ApproverGroup {
                name: g.name.clone(),
                members: g.members.clone(),
                idp_groups: g.idp_groups.clone(),
            }));
        let mut upstreams = HashMap::new();
        let mut maskers = HashMap::new();
        let mut table_lookups = HashMap::new();
        let mut syntax_probes = HashMap::new();
        for (i, c) in config.connections.iter().enumerate() {
            let key = format!("connections[{i}]");
            let url = match (&c.upstream_url, &c.upstream_url_env, &c.upstream_url_file) {
                (Some(u), _, _) => u.clone(),
                (None, env, file) => resolve_secret(
                    &format!("{key}.upstream_url_env"),
                    env.as_deref(),
                    file.as_deref(),
                )?,
            };
            let mut target = UpstreamTarget::parse(&url)
                .map_err(|e| EngineError::Config(format!("{key}: {e}")))?;
            if let Some(env) = &c.password_env {
                target.password = Some(resolve_secret(
                    &format!("{key}.password_env"),
                    Some(env),
                    None,
                )?);
            }
            if c.forward_syntax_errors {
                syntax_probes.insert(
                    c.name.clone(),
                    Arc::new(crate::pg::syntax_probe::SyntaxProbe::new(target.clone())),
                );
            }
            upstreams.insert(c.name.clone(), target);
            if let Some(m) = &c.masking {
                let hash_key = if m.needs_key() {
                    Some(resolve_secret(
                        &format!("{key}.masking.hash_key_env"),
                        m.hash_key_env.as_deref(),
                        m.hash_key_file.as_deref(),
                    )?)
                } else {
                    None
                };
                let masker = crate::masking::Masker::new(m, hash_key.as_deref().map(str::as_bytes))
                    .map_err(|e| EngineError::Config(format!("{key}: {e}")))?;
                // Column rules need real table and column names: an output name may be an alias.
                if masker.rules().has_column_rules() {
                    let lookup = CatalogLookup::new(&c.name, upstreams[&c.name].clone());
                    table_lookups.insert(c.name.clone(), Arc::new(lookup));
                }
                maskers.insert(c.name.clone(), Arc::new(masker));
            }
        }
        let pool_size = config
            .connections
            .iter()
            .map(|c| c.pool_size)
            .max()
            .unwrap_or(8);
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let workflow =
            Arc::new(Workflow::new(store.clone(), directory, sinks).with_observer(metrics.clone()));
        let max_wait = parse_duration(&config.server.max_wait).unwrap_or(Duration::from_secs(300));
        let base_url = config.server.base_url();
        Ok(Engine {
            config: Arc::new(config),
            policy,
            workflow,
            auth,
            upstreams: Arc::new(upstreams),
            maskers,
            table_lookups,
            syntax_probes,
            pool: Arc::new(UpstreamPool::new(pool_size)),
            row_functions: Default::default(),
            recorder: recording::StatementWriter::spawn(store),
            http_sessions: Default::default(),
            max_wait,
            base_url,
            metrics,
        })
    }
}
