//! Who clicked: a Slack user id becomes a canonical human identity through the configured `user_map`, or
//! else the e-mail on their Slack profile (`users.info`), cached for a bounded time.

use super::api::{SlackApi, SlackApiError};
use countersign_bot::{Identity, IdentityKind};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most cached identities kept at once; beyond it, expired entries are dropped, then everything.
const CACHE_CAPACITY: usize = 10_000;

/// Resolves Slack users to identities.
pub struct SlackIdentityResolver {
    user_map: BTreeMap<String, String>,
    api: SlackApi,
    ttl: Duration,
    cache: Mutex<HashMap<String, (String, Instant)>>,
}

/// The identity that votes for a Slack user with this e-mail.
pub fn slack_identity(user_id: &str, email: &str) -> Identity {
    Identity {
        issuer: "slack".into(),
        subject: user_id.to_string(),
        email: Some(email.trim().to_string()),
        kind: IdentityKind::Human,
        groups: vec![],
    }
}

impl SlackIdentityResolver {
    /// A resolver using `user_map` first and `users.info` (cached for `ttl`) second.
    pub fn new(user_map: BTreeMap<String, String>, api: SlackApi, ttl: Duration) -> Self {
        Self {
            user_map,
            api,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The identity of `user_id`, or `None` when neither the mapping nor Slack gives an e-mail.
    pub async fn resolve(&self, user_id: &str) -> Result<Option<Identity>, SlackApiError> {
        if let Some(email) = self.user_map.get(user_id) {
            return Ok(Some(slack_identity(user_id, email)));
        }
        if let Some(email) = self.cached(user_id) {
            return Ok(Some(slack_identity(user_id, &email)));
        }
        let Some(email) = self
            .api
            .user_email(user_id)
            .await?
            .filter(|e| e.contains('@'))
        else {
            return Ok(None);
        };
        self.remember(user_id, &email);
        Ok(Some(slack_identity(user_id, &email)))
    }

    fn cached(&self, user_id: &str) -> Option<String> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(user_id)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(e, _)| e.clone())
    }

    fn remember(&self, user_id: &str, email: &str) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_CAPACITY {
            let ttl = self.ttl;
            cache.retain(|_, (_, at)| at.elapsed() < ttl);
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
        }
        cache.insert(user_id.to_string(), (email.to_string(), Instant::now()));
    }
}
