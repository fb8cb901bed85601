//! The `[slack]` configuration section and the secrets it names.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// The `[slack]` section of the gateway's configuration file. Secrets are read from the environment variables
/// it names, never from the file itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// Environment variable holding the bot token (`xoxb-…`).
    pub bot_token_env: String,
    /// Environment variable holding the app's signing secret (verifies inbound calls).
    pub signing_secret_env: String,
    /// Web API base URL, without a trailing slash.
    #[serde(default = "default_api_base_url")]
    pub api_base_url: String,
    /// Environment variable holding an app-level token (`xapp-…`) for Socket Mode, when used.
    #[serde(default)]
    pub app_token_env: Option<String>,
    /// Where request messages are posted.
    #[serde(default)]
    pub routes: SlackRoutes,
    /// Also send each request to its approvers by direct message (found with `users.lookupByEmail`).
    #[serde(default)]
    pub dm_approvers: bool,
    /// Explicit Slack user id → e-mail mapping; consulted before `users.info`. An entry is the operator
    /// vouching for that user id, so it counts whichever workspace the user belongs to.
    #[serde(default)]
    pub user_map: BTreeMap<String, String>,
    /// Workspaces (`T…`) or Enterprise Grid organisations (`E…`) besides the app's own whose members'
    /// profile e-mails are trusted (e.g. a Slack Connect partner that verifies its addresses). Users of any
    /// other workspace are refused: their organisation could give them any e-mail address.
    #[serde(default)]
    pub trusted_teams: Vec<String>,
    /// How long an e-mail learnt from `users.info` is trusted before it is fetched again.
    #[serde(default = "default_identity_cache_secs")]
    pub identity_cache_secs: u64,
    /// Statements longer than this are truncated in messages (the request page shows them in full).
    #[serde(default = "default_max_statement_chars")]
    pub max_statement_chars: usize,
    /// Limit on each Web API call in seconds, connecting included.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

/// Approver group → channel ids, with a fallback channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackRoutes {
    /// Channel for requests whose approver groups have no route of their own.
    #[serde(default)]
    pub default_channel: Option<String>,
    /// Approver group name → channel ids.
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
}

fn default_api_base_url() -> String {
    "https://slack.com/api".into()
}

fn default_identity_cache_secs() -> u64 {
    600
}

fn default_max_statement_chars() -> usize {
    2000
}

fn default_timeout_secs() -> u64 {
    10
}

/// A configuration or environment problem, naming the key and the fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SlackConfigError {
    /// A key has an unusable value.
    #[error("slack.{key}: {problem}")]
    Invalid {
        /// The offending key, e.g. `api_base_url`.
        key: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// An environment variable the configuration names is not set.
    #[error("environment variable {var} (named by slack.{key}) is not set or empty: export it before starting countersign")]
    MissingEnv {
        /// The config key naming the variable.
        key: &'static str,
        /// The variable.
        var: String,
    },
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> SlackConfigError {
    SlackConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_slack_id(s: &str) -> bool {
    s.len() >= 2
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

/// True for a host that only this machine can reach: plain HTTP is tolerated only there.
fn is_loopback_http(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split('/').next().unwrap_or_default();
    let host = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

impl SlackConfig {
    /// Check every key; the first problem found names the key and the fix.
    pub fn validate(&self) -> Result<(), SlackConfigError> {
        for (key, var) in [
            ("bot_token_env", Some(&self.bot_token_env)),
            ("signing_secret_env", Some(&self.signing_secret_env)),
            ("app_token_env", self.app_token_env.as_ref()),
        ] {
            if let Some(var) = var {
                if !is_env_name(var) {
                    return Err(invalid(key, format!("{var:?} is not an environment variable name: use letters, digits and underscores, e.g. SLACK_BOT_TOKEN (the secret itself never goes in the file)")));
                }
            }
        }
        let url = self.api_base_url.trim_end_matches('/');
        if !(url.starts_with("https://") || is_loopback_http(url)) {
            return Err(invalid(
                "api_base_url",
                format!("{url:?} must start with https:// (plain http:// only for a loopback test server); the default is https://slack.com/api"),
            ));
        }
        let channels = self
            .routes
            .default_channel
            .iter()
            .chain(self.routes.groups.values().flatten());
        for ch in channels {
            if !is_slack_id(ch) {
                return Err(invalid(
                    "routes",
                    format!("{ch:?} is not a Slack channel id: use the id (e.g. C0123ABCD, from the channel's details), not its name"),
                ));
            }
        }
        if self.routes.default_channel.is_none()
            && self.routes.groups.is_empty()
            && !self.dm_approvers
        {
            return Err(invalid(
                "routes",
                "no channel to post to: set routes.default_channel, add routes.groups.<approver group> = [channel ids], or enable dm_approvers",
            ));
        }
        for (user, email) in &self.user_map {
            if !is_slack_id(user) {
                return Err(invalid(
                    "user_map",
                    format!("{user:?} is not a Slack user id: use the member id (e.g. U0123ABCD) from the user's profile"),
                ));
            }
            if !email.contains('@') {
                return Err(invalid(
                    "user_map",
                    format!("{email:?} (for {user}) is not an e-mail address: map each Slack user id to the e-mail the approver groups list"),
                ));
            }
        }
        for team in &self.trusted_teams {
            if !(is_slack_id(team) && (team.starts_with('T') || team.starts_with('E'))) {
                return Err(invalid(
                    "trusted_teams",
                    format!("{team:?} is not a Slack workspace or organisation id: use the team id (T0123ABCD, shown by auth.test or in the workspace's settings) or an Enterprise Grid id (E0123ABCD), not its name or domain"),
                ));
            }
        }
        if self.max_statement_chars < 100 {
            return Err(invalid(
                "max_statement_chars",
                "must be at least 100 so reviewers see enough of the statement; 2000 is the default",
            ));
        }
        if self.timeout_secs == 0 {
            return Err(invalid(
                "timeout_secs",
                "must be at least 1 (a call without a limit can stall deliveries); 10 is the default",
            ));
        }
        Ok(())
    }

    /// The Web API base URL without a trailing slash.
    pub fn api_base(&self) -> &str {
        self.api_base_url.trim_end_matches('/')
    }

    /// Channels a request for `groups` is posted to: each group's route, else the default channel.
    pub fn channels_for(&self, groups: &[String]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for ch in groups
            .iter()
            .filter_map(|g| self.routes.groups.get(g))
            .flatten()
        {
            if !out.contains(ch) {
                out.push(ch.clone());
            }
        }
        if out.is_empty() {
            out.extend(self.routes.default_channel.iter().cloned());
        }
        out
    }

    /// How long a looked-up identity stays cached.
    pub fn identity_ttl(&self) -> Duration {
        Duration::from_secs(self.identity_cache_secs)
    }

    /// Read the secrets this configuration names from the environment.
    pub fn secrets_from_env(&self) -> Result<SlackSecrets, SlackConfigError> {
        let read = |key: &'static str, var: &str| {
            std::env::var(var)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| SlackConfigError::MissingEnv {
                    key,
                    var: var.to_string(),
                })
        };
        Ok(SlackSecrets {
            bot_token: read("bot_token_env", &self.bot_token_env)?,
            signing_secret: read("signing_secret_env", &self.signing_secret_env)?,
            app_token: match &self.app_token_env {
                Some(var) => Some(read("app_token_env", var)?),
                None => None,
            },
        })
    }
}

/// Secret values, read once at start-up.
#[derive(Clone)]
pub struct SlackSecrets {
    /// Bot token for the Web API.
    pub bot_token: String,
    /// Signing secret for inbound verification.
    pub signing_secret: String,
    /// App-level token for Socket Mode.
    pub app_token: Option<String>,
}

impl std::fmt::Debug for SlackSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SlackSecrets { .. }")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The notifiers crate has no toml dependency; serde's data model is the same through JSON.
    fn parse(json: &str) -> Result<SlackConfig, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    fn minimal() -> SlackConfig {
        parse(r#"{"bot_token_env":"SLACK_BOT_TOKEN","signing_secret_env":"SLACK_SIGNING_SECRET","routes":{"default_channel":"C0DEFAULT","groups":{"dba":["C0DBA","C0OPS"]}}}"#).unwrap()
    }

    #[test]
    fn defaults_point_at_the_public_api_and_validate() {
        let c = minimal();
        assert_eq!(c.api_base(), "https://slack.com/api");
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e =
            parse(r#"{"bot_token_env":"A","signing_secret_env":"B","bot_token":"xoxb-literal"}"#)
                .unwrap_err();
        assert!(e.contains("bot_token"), "{e}");
    }

    #[test]
    fn literal_secret_in_env_key_is_refused_with_the_key_named() {
        let mut c = minimal();
        c.bot_token_env = "xoxb-123-abc".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("slack.bot_token_env:"), "{e}");
    }

    #[test]
    fn plain_http_is_allowed_only_for_loopback() {
        let mut c = minimal();
        c.api_base_url = "http://127.0.0.1:9999/api/".into();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.api_base(), "http://127.0.0.1:9999/api");
        c.api_base_url = "http://slack.example.com/api".into();
        assert!(
            matches!(c.validate(), Err(SlackConfigError::Invalid { key, .. }) if key == "api_base_url")
        );
    }

    #[test]
    fn channel_names_instead_of_ids_are_refused() {
        let mut c = minimal();
        c.routes.default_channel = Some("#approvals".into());
        assert!(
            matches!(c.validate(), Err(SlackConfigError::Invalid { key, .. }) if key == "routes")
        );
    }

    #[test]
    fn trusted_teams_must_be_team_or_enterprise_ids() {
        let mut c = minimal();
        c.trusted_teams = vec!["T0PARTNER".into(), "E0GRID".into()];
        assert_eq!(c.validate(), Ok(()));
        for bad in ["acme.slack.com", "C0CHANNEL", "t0lower", ""] {
            c.trusted_teams = vec![bad.into()];
            let e = c.validate().unwrap_err();
            assert!(
                matches!(&e, SlackConfigError::Invalid { key, problem } if key == "trusted_teams" && problem.contains("T0123ABCD")),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn routes_use_group_channels_then_the_default() {
        let c = minimal();
        assert_eq!(c.channels_for(&["dba".into()]), vec!["C0DBA", "C0OPS"]);
        assert_eq!(c.channels_for(&["other".into()]), vec!["C0DEFAULT"]);
    }

    #[test]
    fn missing_env_var_is_named() {
        let mut c = minimal();
        c.bot_token_env = "COUNTERSIGN_TEST_SURELY_UNSET_VAR".into();
        let e = c.secrets_from_env().unwrap_err();
        assert!(e.to_string().contains("COUNTERSIGN_TEST_SURELY_UNSET_VAR"));
    }
}
