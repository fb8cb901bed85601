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

/// Refuses to start with an audit key that cannot continue the chain: none where the head is sealed
/// (records written from now on would be unsealed after sealed ones), or another key than the one
/// that sealed the head (every record from now on would fail verification). Either hides later
/// tampering behind a break `audit verify` reports first.
///
/// A key that seals the last record but not the head is the right key: the head was tampered with,
/// which `audit verify` reports.
async fn check_audit_key(
    config: &Config,
    store_url: &str,
    store: &dyn countersign_bot::Store,
    head: Option<&countersign_bot::audit::AuditHead>,
    key: Option<&countersign_bot::audit::AuditKey>,
) -> Result<(), EngineError> {
    let Some((head, seal)) = head.and_then(|h| h.seal.as_ref().map(|s| (h, s))) else {
        return Ok(());
    };
    let setting = match config.store.managed_key_file(store_url) {
        Some(path) => format!(
            "the key file beside the SQLite database ({})",
            path.display()
        ),
        None => "[store] audit_key_env / audit_key_file".to_string(),
    };
    match key {
        None => Err(EngineError::Config(format!(
            "the audit trail is sealed up to record #{} but no audit key was found; restore {setting} with the key that sealed it (a new key would break the chain for good)",
            head.seq
        ))),
        Some(key) if *seal != key.seal_head(head.seq, &head.hash) => {
            let last = store.audit_records(head.seq - 1, 1).await?;
            if last
                .first()
                .is_some_and(|r| r.seal.as_deref() == Some(&key.seal_record(&r.hash)))
            {
                return Ok(());
            }
            Err(EngineError::Config(format!(
                "the audit key from {setting} is not the one that sealed the audit trail (record #{}); set the key used so far (every replica needs the same one)",
                head.seq
            )))
        }
        Some(_) => Ok(()),
    }
}

impl Engine {
    /// Open the store, resolve secrets, compile the policy. `sinks` are the notifier names events are queued
    /// for (decided by the composition root).
    pub async fn build(config: Config, sinks: Vec<String>) -> Result<Engine, EngineError> {
        let store_url = config.store.resolved_url()?;
        let mut key = config
            .store
            .audit_key(&store_url, crate::config::KeyFile::ReadOnly)?;
        let mut store = countersign_bot::store::open_with(&store_url, key.clone()).await?;
        let head = store.audit_head().await?;
        check_audit_key(&config, &store_url, &*store, head.as_ref(), key.as_ref()).await?;
        if key.is_none() && config.store.managed_key_file(&store_url).is_some() {
            // A SQLite store's first run (or one sealed never): its key file is made now.
            key = config
                .store
                .audit_key(&store_url, crate::config::KeyFile::Create)?;
            drop(store);
            store = countersign_bot::store::open_with(&store_url, key.clone()).await?;
        }
        let sealed = key.is_some();
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
        let policy = Policy::new(
            config.policy.rules.clone(),
            config.policy.defaults.clone(),
            &config.identity.issuers(),
        )
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

#[cfg(test)]
mod tests {
    use super::*;
    use countersign_bot::audit::AuditEntry;

    #[tokio::test]
    async fn a_sealed_trail_refuses_a_missing_or_other_key_and_keeps_its_own() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = std::env::temp_dir().join(format!("cs-key-{}", uuid::Uuid::new_v4().simple()));
        let config = || {
            Config::from_toml(
                &format!("[store]\ndata_dir = \"{}\"\n", dir.display()),
                "test.toml",
            )
            .unwrap()
        };
        let key_file = dir.join("countersign.db.audit-key");
        let engine = Engine::build(config(), vec![]).await.expect("first run");
        drop(engine);
        let original = std::fs::read_to_string(&key_file).expect("the first run made the key file");
        let url = config().store.resolved_url().unwrap();
        let key = countersign_bot::audit::AuditKey::new(original.trim().as_bytes().to_vec());
        let store = countersign_bot::store::open_with(&url, key).await.unwrap();
        store
            .append_audit(AuditEntry::new("system", "test.sealed", "system"))
            .await
            .unwrap();
        drop(store);
        let refused = |e: Result<Engine, EngineError>| match e {
            Ok(_) => panic!("started"),
            Err(e) => e.to_string(),
        };
        // The key file gone: not made again.
        std::fs::remove_file(&key_file).unwrap();
        let e = refused(Engine::build(config(), vec![]).await);
        assert!(
            e.contains("no audit key was found") && e.contains("audit-key"),
            "{e}"
        );
        assert!(!key_file.exists(), "no new key was made");
        // Another key.
        std::fs::write(&key_file, "b".repeat(64)).unwrap();
        let e = refused(Engine::build(config(), vec![]).await);
        assert!(e.contains("not the one that sealed"), "{e}");
        // The original key again.
        std::fs::write(&key_file, &original).unwrap();
        Engine::build(config(), vec![])
            .await
            .expect("starts with its key");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
