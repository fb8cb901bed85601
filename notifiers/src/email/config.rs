//! The `[email]` configuration section and the secrets it names.

use lettre::message::Mailbox;
use serde::Deserialize;
use std::time::Duration;

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS; refuses to send if the upgrade fails (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS, port 465).
    Implicit,
    /// No encryption: only for a relay on the loopback interface.
    None,
}

impl SmtpTls {
    /// The conventional port for this mode.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Starttls => 587,
            Self::Implicit => 465,
            Self::None => 25,
        }
    }
}

/// The `[email]` section of the gateway configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// SMTP relay host name.
    pub smtp_host: String,
    /// SMTP port; defaults to 587 (starttls), 465 (implicit) or 25 (none).
    #[serde(default)]
    pub smtp_port: Option<u16>,
    /// `starttls` (default), `implicit` or `none` (loopback relays only).
    #[serde(default)]
    pub tls: SmtpTls,
    /// Env var holding the SMTP user name (optional; set together with `password_env`).
    #[serde(default)]
    pub username_env: Option<String>,
    /// Env var holding the SMTP password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Sender, e.g. `Countersign <countersign@example.com>`.
    pub from: String,
    /// Reply-To address, if replies should go elsewhere than `from`.
    #[serde(default)]
    pub reply_to: Option<String>,
    /// Env var holding the HMAC key (at least 32 bytes) that signs approval links.
    pub link_signing_key_env: String,
    /// How long an approval link stays valid, e.g. `30m`, `24h` (capped by the request's own expiry).
    #[serde(
        default = "default_link_ttl",
        deserialize_with = "crate::duration::text_or_seconds"
    )]
    pub link_ttl: String,
    /// Public base URL of the gateway's HTTP server, used in links (e.g. `https://countersign.example.com`).
    pub public_base_url: String,
}

fn default_link_ttl() -> String {
    "24h".into()
}

/// The longest link lifetime accepted: approval links are bearer credentials.
pub const MAX_LINK_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Minimum HMAC key length in bytes.
pub const MIN_KEY_LEN: usize = 32;

/// A configuration or secret problem, naming the key and the fix.
#[derive(Debug, thiserror::Error)]
pub enum EmailConfigError {
    /// A key has an unusable value.
    #[error("[email] {key}: {problem}")]
    Invalid {
        /// The configuration key.
        key: &'static str,
        /// What is wrong and what to do.
        problem: String,
    },
    /// An env var named by the configuration is unset or unusable.
    #[error("[email] {key}: environment variable {var} {problem}")]
    Secret {
        /// The configuration key naming the variable.
        key: &'static str,
        /// The variable.
        var: String,
        /// What is wrong and what to do.
        problem: String,
    },
}

fn invalid(key: &'static str, problem: impl Into<String>) -> EmailConfigError {
    EmailConfigError::Invalid {
        key,
        problem: problem.into(),
    }
}

impl EmailConfig {
    /// Check every key; the error names the key and the fix.
    pub fn validate(&self) -> Result<(), EmailConfigError> {
        if self.smtp_host.trim().is_empty() {
            return Err(invalid(
                "smtp_host",
                "is empty: set the SMTP relay host name",
            ));
        }
        if self.tls == SmtpTls::None && !is_loopback_host(&self.smtp_host) {
            return Err(invalid(
                "tls",
                format!(
                    "\"none\" sends mail and credentials in clear text and is only allowed for a loopback relay, not {:?}: use \"starttls\" or \"implicit\"",
                    self.smtp_host
                ),
            ));
        }
        if self.smtp_port == Some(0) {
            return Err(invalid(
                "smtp_port",
                "is 0: set the relay's port or remove the key for the default",
            ));
        }
        match (&self.username_env, &self.password_env) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(invalid(
                    "username_env",
                    "username_env and password_env must be set together (or both left out for an unauthenticated relay)",
                ))
            }
            _ => {}
        }
        self.from_mailbox()?;
        self.reply_to_mailbox()?;
        if self.link_signing_key_env.trim().is_empty() {
            return Err(invalid(
                "link_signing_key_env",
                "is empty: name the environment variable that holds the link signing key",
            ));
        }
        self.link_ttl()?;
        let base = self.public_base_url.trim();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(invalid(
                "public_base_url",
                format!("{base:?} is not an http(s) URL: set the address reviewers use to reach this gateway, e.g. https://countersign.example.com"),
            ));
        }
        Ok(())
    }

    /// The port to connect to.
    pub fn port(&self) -> u16 {
        self.smtp_port.unwrap_or_else(|| self.tls.default_port())
    }

    /// The parsed sender.
    pub fn from_mailbox(&self) -> Result<Mailbox, EmailConfigError> {
        self.from.parse().map_err(|e| {
            invalid(
                "from",
                format!(
                    "{:?} is not a mail address ({e}): use e.g. \"Countersign <countersign@example.com>\"",
                    self.from
                ),
            )
        })
    }

    /// The parsed Reply-To, if configured.
    pub fn reply_to_mailbox(&self) -> Result<Option<Mailbox>, EmailConfigError> {
        self.reply_to
            .as_deref()
            .map(|r| {
                r.parse().map_err(|e| {
                    invalid(
                        "reply_to",
                        format!("{r:?} is not a mail address ({e}): fix it or remove the key"),
                    )
                })
            })
            .transpose()
    }

    /// The link lifetime.
    pub fn link_ttl(&self) -> Result<Duration, EmailConfigError> {
        let ttl = parse_duration(&self.link_ttl).ok_or_else(|| {
            invalid(
                "link_ttl",
                format!(
                    "{:?} is not a duration: use a number with s, m, h or d, e.g. \"24h\"",
                    self.link_ttl
                ),
            )
        })?;
        if ttl.is_zero() || ttl > MAX_LINK_TTL {
            return Err(invalid(
                "link_ttl",
                "must be between 1s and 7d: approval links are credentials, keep them short-lived",
            ));
        }
        Ok(ttl)
    }

    /// The base URL without a trailing slash.
    pub fn base_url(&self) -> String {
        self.public_base_url
            .trim()
            .trim_end_matches('/')
            .to_string()
    }
}

/// Secrets read from the environment variables the configuration names.
#[derive(Clone)]
pub struct EmailSecrets {
    /// HMAC key for link tokens and CSRF tokens.
    pub link_key: Vec<u8>,
    /// SMTP credentials, when the relay needs them.
    pub credentials: Option<(String, String)>,
}

impl std::fmt::Debug for EmailSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailSecrets").finish_non_exhaustive()
    }
}

impl EmailSecrets {
    /// Read the secrets `config` names from the process environment.
    pub fn from_env(config: &EmailConfig) -> Result<Self, EmailConfigError> {
        Self::from_lookup(config, |name| std::env::var(name).ok())
    }

    /// Read the secrets through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(
        config: &EmailConfig,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, EmailConfigError> {
        let var = |key: &'static str, name: &str| {
            lookup(name)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| EmailConfigError::Secret {
                    key,
                    var: name.to_string(),
                    problem: "is unset or empty: export it before starting the gateway".into(),
                })
        };
        let link_key = var("link_signing_key_env", &config.link_signing_key_env)?.into_bytes();
        if link_key.len() < MIN_KEY_LEN {
            return Err(EmailConfigError::Secret {
                key: "link_signing_key_env",
                var: config.link_signing_key_env.clone(),
                problem: format!(
                    "holds {} bytes: use at least {MIN_KEY_LEN} random bytes (e.g. `openssl rand -hex 32`)",
                    link_key.len()
                ),
            });
        }
        let credentials = match (&config.username_env, &config.password_env) {
            (Some(u), Some(p)) => Some((var("username_env", u)?, var("password_env", p)?)),
            _ => None,
        };
        Ok(Self {
            link_key,
            credentials,
        })
    }
}

/// True for names that can only reach this machine.
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim().trim_start_matches('[').trim_end_matches(']');
    if h.eq_ignore_ascii_case("localhost") {
        return true;
    }
    h.parse::<std::net::IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(false)
}

pub use crate::duration::parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Result<EmailConfig, toml::de::Error> {
        toml::from_str(&format!(
            "smtp_host = \"127.0.0.1\"\nfrom = \"Countersign <cs@example.com>\"\nlink_signing_key_env = \"CS_LINK_KEY\"\npublic_base_url = \"http://127.0.0.1:8080\"\n{extra}"
        ))
    }

    #[test]
    fn minimal_config_is_valid_with_defaults() {
        let c = config("").unwrap();
        c.validate().unwrap();
        assert_eq!(c.tls, SmtpTls::Starttls);
        assert_eq!(c.port(), 587);
        assert_eq!(c.link_ttl().unwrap(), Duration::from_secs(86400));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(config("smtp_pasword = \"x\"").is_err());
    }

    #[test]
    fn plaintext_smtp_is_refused_for_a_remote_host() {
        let mut c = config("tls = \"none\"").unwrap();
        c.validate().unwrap();
        c.smtp_host = "smtp.example.com".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("tls") && e.contains("loopback"), "{e}");
    }

    #[test]
    fn link_ttl_must_be_short_and_parseable() {
        for bad in ["0s", "8d", "soon", "5w"] {
            let c = config(&format!("link_ttl = \"{bad}\"")).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("link_ttl"), "{bad}: {e}");
        }
        assert_eq!(parse_duration("30m"), Some(Duration::from_secs(1800)));
        assert_eq!(parse_duration("45"), Some(Duration::from_secs(45)));
    }

    #[test]
    fn credentials_env_vars_come_in_pairs() {
        let c = config("username_env = \"SMTP_USER\"").unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("password_env"));
    }

    #[test]
    fn short_or_missing_link_key_is_refused_with_the_fix() {
        let c = config("").unwrap();
        let e = EmailSecrets::from_lookup(&c, |_| None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("CS_LINK_KEY") && e.contains("export"), "{e}");
        let e = EmailSecrets::from_lookup(&c, |_| Some("short".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("openssl rand"), "{e}");
        let ok = EmailSecrets::from_lookup(&c, |_| Some("k".repeat(32))).unwrap();
        assert!(ok.credentials.is_none());
    }

    #[test]
    fn bad_sender_address_names_the_key() {
        let mut c = config("").unwrap();
        c.from = "not an address".into();
        assert!(c.validate().unwrap_err().to_string().contains("from"));
    }
}
