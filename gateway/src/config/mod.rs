//! The one place configuration is read: a TOML file (`--config` or `COUNTERSIGN_CONFIG`) with unknown keys
//! rejected, secrets referenced through env vars or files, and every problem reported with file, key and fix.

pub mod preflight;
pub mod references;
mod secrets;
mod validate;

pub use secrets::{resolve_secret, SecretError};
pub use validate::{parse_duration, ConfigProblem, ConfigReport};

use crate::identity::IdentityConfig;
use crate::policy::{PolicyDefaults, PolicyRule};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[server]`: the HTTP listener.
    #[serde(default)]
    pub server: ServerConfig,
    /// `[store]`: where state lives.
    #[serde(default)]
    pub store: StoreConfig,
    /// `[identity]`: OIDC issuers and static tokens.
    #[serde(default)]
    pub identity: IdentityConfig,
    /// `[[connections]]`: upstream databases.
    #[serde(default)]
    pub connections: Vec<ConnectionConfig>,
    /// `[[approver_groups]]`: who may vote.
    #[serde(default)]
    pub approver_groups: Vec<ApproverGroupConfig>,
    /// `[policy]`: rules and defaults.
    #[serde(default)]
    pub policy: PolicySection,
    /// `[wire]`: the Postgres wire listener (absent = HTTP API only).
    #[serde(default)]
    pub wire: Option<crate::pg::config::WireConfig>,
    /// `[outbox]`: notification delivery.
    #[serde(default)]
    pub outbox: OutboxConfig,
    /// `[slack]`: Slack approvals (absent = off).
    #[serde(default)]
    pub slack: Option<countersign_notifiers::slack::SlackConfig>,
    /// `[email]`: e-mail approvals (absent = off).
    #[serde(default)]
    pub email: Option<countersign_notifiers::email::EmailConfig>,
    /// `[jira]`: Jira tickets both ways (absent = off).
    #[serde(default)]
    pub jira: Option<countersign_notifiers::jira::JiraConfig>,
    /// `[webhooks]`: signed outbound webhooks.
    #[serde(default)]
    pub webhooks: Option<countersign_notifiers::webhooks::WebhooksConfig>,
    /// `[reminders]`: reminders and escalation for pending requests (absent = off).
    #[serde(default)]
    pub reminders: Option<countersign_notifiers::reminders::RemindersConfig>,
    /// `[logging]`.
    #[serde(default)]
    pub logging: LoggingConfig,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// HTTP listen address.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Base URL people reach the gateway at, used in links (`/requests/{id}`).
    #[serde(default)]
    pub public_base_url: Option<String>,
    /// Largest accepted request body in bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// HTTP connections served at once; more wait to be accepted (keeps file descriptors for the wire
    /// listener and the store whatever clients do).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Longest `?wait=` a caller may ask for, e.g. `"5m"`.
    #[serde(default = "default_max_wait")]
    pub max_wait: String,
    /// How often pending requests are checked for expiry, e.g. `"5s"`.
    #[serde(default = "default_expiry_sweep")]
    pub expiry_sweep: String,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_max_body() -> usize {
    1024 * 1024
}
fn default_max_connections() -> usize {
    4096
}
fn default_max_wait() -> String {
    "5m".into()
}
fn default_expiry_sweep() -> String {
    "5s".into()
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            public_base_url: None,
            max_body_bytes: default_max_body(),
            max_connections: default_max_connections(),
            max_wait: default_max_wait(),
            expiry_sweep: default_expiry_sweep(),
        }
    }
}

impl ServerConfig {
    /// The public base URL, defaulting to `http://{listen}`, without a trailing slash.
    pub fn base_url(&self) -> String {
        self.public_base_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen))
            .trim_end_matches('/')
            .to_string()
    }
}

/// `[store]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://PATH` or `postgres://…`. Default: `sqlite://{data_dir}/countersign.db`.
    #[serde(default)]
    pub url: Option<String>,
    /// Env var holding the URL (for PostgreSQL URLs with passwords).
    #[serde(default)]
    pub url_env: Option<String>,
    /// Directory for the default SQLite file (created on first run). Default `./data`.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Env var holding the audit key (at least 32 bytes; the same on every replica) that seals audit
    /// records. Default for a SQLite store: a key file beside the database, created on first run.
    #[serde(default)]
    pub audit_key_env: Option<String>,
    /// File holding the audit key (instead of `audit_key_env`).
    #[serde(default)]
    pub audit_key_file: Option<PathBuf>,
}

/// Whether [`StoreConfig::audit_key`] may create the default key file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFile {
    /// `serve`: create it on first run.
    Create,
    /// Inspection commands: read it if there is one.
    ReadOnly,
}

impl StoreConfig {
    /// The audit key file the gateway manages beside a SQLite store file at `url`
    /// (`countersign.db.audit-key`), when no key is configured; `None` otherwise.
    pub fn managed_key_file(&self, url: &str) -> Option<PathBuf> {
        if self.audit_key_env.is_some() || self.audit_key_file.is_some() {
            return None;
        }
        Self::sqlite_file(url).map(|p| PathBuf::from(format!("{}.audit-key", p.display())))
    }

    /// The database file of a SQLite store URL; `None` for an in-memory or a PostgreSQL store.
    pub fn sqlite_file(url: &str) -> Option<PathBuf> {
        url.strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .map(|p| p.split('?').next().unwrap_or(p))
            .filter(|p| !p.is_empty() && *p != ":memory:")
            .map(PathBuf::from)
    }
}

impl StoreConfig {
    /// The store URL to open.
    pub fn resolved_url(&self) -> Result<String, SecretError> {
        if let Some(env) = &self.url_env {
            return resolve_secret("store.url_env", Some(env), None);
        }
        if let Some(url) = &self.url {
            return Ok(url.clone());
        }
        let dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("./data"));
        Ok(format!("sqlite://{}", dir.join("countersign.db").display()))
    }

    /// The key that seals audit records: `audit_key_env` / `audit_key_file`, or for a SQLite store at
    /// `url` the key file beside the database (`countersign.db.audit-key`, created by `serve` with 32
    /// random bytes). `None` for a PostgreSQL store without one configured.
    pub fn audit_key(
        &self,
        url: &str,
        mode: KeyFile,
    ) -> Result<Option<countersign_bot::audit::AuditKey>, SecretError> {
        use countersign_bot::audit::{AuditKey, MIN_AUDIT_KEY_BYTES};
        let (key, secret) = if self.audit_key_env.is_some() || self.audit_key_file.is_some() {
            let key = if self.audit_key_env.is_some() {
                "store.audit_key_env"
            } else {
                "store.audit_key_file"
            };
            let secret = resolve_secret(
                key,
                self.audit_key_env.as_deref(),
                self.audit_key_file.as_deref(),
            )?;
            (key, secret)
        } else if let Some(path) = self.managed_key_file(url) {
            match std::fs::read_to_string(&path) {
                Ok(s) if s.trim().is_empty() => {
                    return Err(SecretError::File {
                        key: "the SQLite store's audit key file (made beside the database; `[store] audit_key_file` not set)".into(),
                        path: path.display().to_string(),
                        reason: "it is empty; restore the key from your copy, or, if the store has no sealed audit records yet (`countersign audit verify` says so), delete the file and start again to make a new one".into(),
                    })
                }
                Ok(s) => ("store.audit_key_file", s.trim().to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && mode == KeyFile::Create => {
                    ("store.audit_key_file", create_key_file(&path)?)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                // Unreadable is not absent: a key made in its place would break the sealed chain.
                Err(e) => {
                    return Err(SecretError::File {
                        key: "store.audit_key_file".into(),
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    })
                }
            }
        } else {
            return Ok(None);
        };
        let len = secret.len();
        AuditKey::new(secret.into_bytes())
            .map(Some)
            .ok_or_else(|| SecretError::TooShort {
                key: key.to_string(),
                len,
                min: MIN_AUDIT_KEY_BYTES,
            })
    }
}

/// Writes a new random key (64 hex digits) to `path`, readable by its owner only.
fn create_key_file(path: &std::path::Path) -> Result<String, SecretError> {
    use rand::RngCore;
    use std::io::Write;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let key = hex::encode(bytes);
    let failed = |e: std::io::Error| SecretError::Create {
        key: "store.audit_key_file".into(),
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(failed)?;
    }
    // Written whole under a temporary name, then linked into place: a crash never leaves an empty
    // or partial key file (which would keep the gateway from starting), and a key made by another
    // process at the same time wins (the link fails) instead of being overwritten.
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .map_or("audit-key".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options.open(&tmp).and_then(|mut file| {
        file.write_all(key.as_bytes())?;
        file.sync_all()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(failed(e));
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return std::fs::read_to_string(path)
                .map(|s| s.trim().to_string())
                .map_err(failed);
        }
        Err(e) => return Err(failed(e)),
    }
    // The new directory entry is durable before the first record is sealed with the key.
    #[cfg(unix)]
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(key)
}

/// `[[connections]]`: one upstream database the gateway holds credentials for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    /// Name agents use (HTTP path segment; database name on the wire).
    pub name: String,
    /// Only `postgres` for now.
    #[serde(default = "default_kind")]
    pub kind: String,
    /// Upstream URL without a password (e.g. trust or a password from `password_env`).
    #[serde(default)]
    pub upstream_url: Option<String>,
    /// Env var holding the full upstream URL (preferred when it contains a password).
    #[serde(default)]
    pub upstream_url_env: Option<String>,
    /// File holding the full upstream URL (e.g. a mounted Kubernetes Secret).
    #[serde(default)]
    pub upstream_url_file: Option<PathBuf>,
    /// Env var holding the upstream password, combined with `upstream_url`.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Maximum idle upstream connections kept for the HTTP API.
    #[serde(default = "default_pool")]
    pub pool_size: usize,
    /// `[connections.masking]`: result masking (absent = results pass untouched).
    #[serde(default)]
    pub masking: Option<crate::masking::MaskingConfig>,
    /// Statements the policy cannot parse are held (fail closed). With this on, one PostgreSQL's own
    /// parser rejects too is sent instead, for PostgreSQL's syntax error (it runs nothing): what driver
    /// test suites and people making typos expect. Off by default.
    #[serde(default)]
    pub forward_syntax_errors: bool,
}

fn default_kind() -> String {
    "postgres".into()
}
fn default_pool() -> usize {
    8
}

/// `[[approver_groups]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproverGroupConfig {
    /// Name referenced by policy rules.
    pub name: String,
    /// Member e-mail addresses.
    #[serde(default)]
    pub members: Vec<String>,
    /// IdP groups whose members belong.
    #[serde(default)]
    pub idp_groups: Vec<String>,
}

/// `[policy]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// Review settings for the built-in policy and rules that omit them.
    #[serde(default)]
    pub defaults: PolicyDefaults,
    /// Rules, first match wins.
    #[serde(default)]
    pub rules: Vec<PolicyRule>,
}

/// `[outbox]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// Attempts before dead-lettering.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// How often the worker polls, e.g. `"500ms"`.
    #[serde(default = "default_poll")]
    pub poll: String,
    /// How long one replica reserves an item it is delivering; a replica that dies loses it after this.
    #[serde(default = "default_lease")]
    pub lease: String,
}

fn default_lease() -> String {
    "30s".into()
}

fn default_attempts() -> u32 {
    12
}
fn default_poll() -> String {
    "500ms".into()
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            max_attempts: default_attempts(),
            poll: default_poll(),
            lease: default_lease(),
        }
    }
}

/// `[logging]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// `text` (default) or `json` (one JSON object per line).
    #[serde(default)]
    pub format: Option<String>,
    /// Filter, e.g. `info,countersign=debug` (overridden by `RUST_LOG`).
    #[serde(default)]
    pub level: Option<String>,
}

/// A config file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable file.
    #[error("{file}: cannot read the config file: {source} (check the path given to --config / COUNTERSIGN_CONFIG)")]
    Read {
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax or type errors, unknown keys.
    #[error("{file}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// toml's message with line, column and key.
        message: String,
    },
    /// Semantic problems, all of them.
    #[error("{0}")]
    Invalid(ConfigReport),
}

impl Config {
    /// Parse TOML text; `file` names it in errors.
    pub fn from_toml(text: &str, file: &str) -> Result<Config, ConfigError> {
        toml::from_str::<Config>(text).map_err(|e| ConfigError::Parse {
            file: file.to_string(),
            message: describe_toml_error(&e),
        })
    }

    /// Read, parse and validate a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        let cfg = Config::from_toml(&text, &file)?;
        let report = cfg.validate(&file);
        if !report.problems.is_empty() {
            return Err(ConfigError::Invalid(report));
        }
        Ok(cfg)
    }
}

fn describe_toml_error(e: &toml::de::Error) -> String {
    let msg = e.message();
    let fix = if msg.contains("unknown field") {
        "fix: remove or rename the key; manifests/examples/countersign.toml lists every valid key"
    } else if msg.contains("missing field") {
        "fix: add the key; see manifests/examples/countersign.toml"
    } else if msg.contains("invalid type: integer") && msg.contains("expected a string") {
        "fix: if this is a duration, write it as text with its unit, e.g. \"900s\" or \"15m\" (a bare number of seconds is taken in [wire], [reminders] and [email] only)"
    } else {
        "fix: correct the TOML syntax or value type at the position shown"
    };
    format!("{}\n{fix}", e.to_string().trim_end())
}

#[cfg(test)]
mod key_file_tests {
    use super::*;

    #[test]
    fn bare_seconds_are_durations_in_notifier_sections_and_elsewhere_the_error_shows_the_form() {
        let cfg = Config::from_toml(
            "[reminders]\nremind_after = 900\nescalate_after = 3600\nescalate_to = [\"dba\"]\n",
            "c.toml",
        )
        .unwrap();
        let reminders = cfg.reminders.expect("reminders");
        assert_eq!(reminders.remind_after, "900s");
        assert_eq!(reminders.escalate_after.as_deref(), Some("3600s"));
        let e = Config::from_toml("[server]\nmax_wait = 900\n", "c.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_wait") && e.contains("\"900s\""), "{e}");
    }

    #[test]
    fn a_new_key_file_is_whole_and_private_and_an_existing_one_wins() {
        let dir = countersign_bot::testing::TempDir::new();
        let path = dir.path().join("sub").join("countersign.db.audit-key");
        let key = create_key_file(&path).unwrap();
        assert_eq!(key.len(), 64);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), key);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Nothing is left under a temporary name.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        // A second creator reads the first one's key.
        assert_eq!(create_key_file(&path).unwrap(), key);
    }

    #[test]
    fn an_empty_managed_key_file_is_refused_naming_its_path_and_the_way_out() {
        let dir = countersign_bot::testing::TempDir::new();
        let db = dir.path().join("countersign.db");
        std::fs::write(dir.path().join("countersign.db.audit-key"), "").unwrap();
        let store: StoreConfig =
            toml::from_str(&format!("url = \"sqlite://{}\"", db.display())).unwrap();
        let err = store
            .audit_key(&format!("sqlite://{}", db.display()), KeyFile::Create)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("countersign.db.audit-key") && err.contains("delete the file"),
            "{err}"
        );
    }
}
