//! `[webhooks]` configuration: one entry per receiving endpoint.

use serde::Deserialize;

/// Event type names a subscription may list (the `kind` field of the event JSON).
pub const EVENT_KINDS: &[&str] = &[
    "created",
    "vote_recorded",
    "vote_refused",
    "resolved",
    "executed",
    "reminder",
    "session_summary",
];

/// The `[webhooks]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Receiving endpoints (`[[webhooks.endpoints]]`).
    #[serde(default)]
    pub endpoints: Vec<WebhookEndpointConfig>,
}

/// One receiving endpoint and what it subscribes to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookEndpointConfig {
    /// Short name; the sink is `webhook:<name>`.
    pub name: String,
    /// URL events are POSTed to.
    pub url: String,
    /// Environment variable holding the `whsec_…` signing secret.
    pub secret_env: String,
    /// Event types to send (see [`EVENT_KINDS`]); empty sends all.
    #[serde(default)]
    pub events: Vec<String>,
    /// Connections whose events to send; empty sends all.
    #[serde(default)]
    pub connections: Vec<String>,
    /// Per-request timeout in seconds.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

fn default_timeout_secs() -> u64 {
    10
}

/// A configuration mistake, naming the key and the fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("webhooks.endpoints[{index}].{key}: {problem}")]
pub struct WebhookConfigError {
    /// Position of the endpoint in the list.
    pub index: usize,
    /// Offending key.
    pub key: &'static str,
    /// What is wrong and how to fix it.
    pub problem: String,
}

impl WebhooksConfig {
    /// Check every endpoint (secrets are checked when the notifier is built from the environment).
    pub fn validate(&self) -> Result<(), Vec<WebhookConfigError>> {
        let mut errors = Vec::new();
        for (index, e) in self.endpoints.iter().enumerate() {
            let mut err = |key, problem: String| {
                errors.push(WebhookConfigError {
                    index,
                    key,
                    problem,
                })
            };
            if e.name.is_empty()
                || !e
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                err(
                    "name",
                    "use letters, digits, `-` or `_` (it becomes the sink `webhook:<name>`)".into(),
                );
            }
            if self.endpoints[..index].iter().any(|o| o.name == e.name) {
                err(
                    "name",
                    format!(
                        "{:?} is used twice: give each endpoint its own name",
                        e.name
                    ),
                );
            }
            match reqwest::Url::parse(&e.url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                _ => err("url", format!("{:?} is not an http(s) URL: write e.g. https://hooks.example.com/countersign", e.url)),
            }
            if e.secret_env.trim().is_empty() {
                err(
                    "secret_env",
                    "name the environment variable holding the whsec_ secret, e.g. WEBHOOK_SECRET"
                        .into(),
                );
            }
            for ev in &e.events {
                if !EVENT_KINDS.contains(&ev.as_str()) {
                    err(
                        "events",
                        format!(
                            "unknown event type {ev:?}: use any of {}",
                            EVENT_KINDS.join(", ")
                        ),
                    );
                }
            }
            if e.timeout_secs == 0 {
                err("timeout_secs", "must be at least 1".into());
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

impl WebhookEndpointConfig {
    /// The outbox sink name this endpoint's events carry.
    pub fn sink(&self) -> String {
        format!("webhook:{}", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_config_parses_and_validates() {
        let cfg: WebhooksConfig = toml::from_str(
            r#"
            [[endpoints]]
            name = "siem"
            url = "https://siem.example.com/hook"
            secret_env = "SIEM_WEBHOOK_SECRET"
            events = ["created", "resolved"]
            connections = ["prod"]
            "#,
        )
        .expect("parse");
        assert_eq!(cfg.validate(), Ok(()));
        assert_eq!(cfg.endpoints[0].sink(), "webhook:siem");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let r: Result<WebhooksConfig, _> = toml::from_str(
            "[[endpoints]]\nname = \"a\"\nurl = \"https://x\"\nsecret_env = \"S\"\nsecret = \"literal\"\n",
        );
        assert!(r.is_err());
    }

    #[test]
    fn validation_names_each_bad_key() {
        let cfg = WebhooksConfig {
            endpoints: vec![WebhookEndpointConfig {
                name: "bad name".into(),
                url: "ftp://x".into(),
                secret_env: "".into(),
                events: vec!["everything".into()],
                connections: vec![],
                timeout_secs: 10,
            }],
        };
        let keys: Vec<&str> = cfg.validate().unwrap_err().iter().map(|e| e.key).collect();
        assert_eq!(keys, ["name", "url", "secret_env", "events"]);
    }
}
