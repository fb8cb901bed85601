//! `[jira]` configuration and the credentials it names.

use serde::Deserialize;

/// The `[jira]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JiraConfig {
    /// Site URL, e.g. `https://your-site.atlassian.net` (tests point it at a loopback fake).
    pub base_url: String,
    /// Environment variable holding the Jira account e-mail used for basic auth.
    #[serde(default = "default_email_env")]
    pub email_env: String,
    /// Environment variable holding that account's API token.
    #[serde(default = "default_token_env")]
    pub api_token_env: String,
    /// Environment variable holding the webhook's shared secret.
    #[serde(default = "default_secret_env")]
    pub webhook_secret_env: String,
    /// Project issues are created in, e.g. `OPS`.
    pub project_key: String,
    /// Issue type name, e.g. `Task`.
    #[serde(default = "default_issue_type")]
    pub issue_type: String,
    /// Accepted so older configs load; unused: issues no longer link to the request page, which opens only
    /// from an e-mail approval link (the whole statement is shown in the issue, or Jira can't approve it).
    #[serde(default)]
    pub public_base_url: String,
    /// Moving an issue to this status approves.
    pub approve_status: String,
    /// Moving an issue to this status denies.
    pub deny_status: String,
    /// Transition that moves an issue back after a refused vote, e.g. `Back to review`.
    pub revert_transition: String,
    /// Transitions applied when a request resolves or runs.
    #[serde(default)]
    pub transitions: ResolutionTransitions,
    /// Statement characters shown before truncating (the link has the full text).
    #[serde(default = "default_max_statement_chars")]
    pub max_statement_chars: usize,
    /// Per-call timeout in seconds.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

/// Transition names applied on resolution; a missing name leaves the issue where it is.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolutionTransitions {
    /// Quorum reached.
    pub approved: Option<String>,
    /// Denied.
    pub denied: Option<String>,
    /// Expired before quorum.
    pub expired: Option<String>,
    /// Cancelled by the requester.
    pub cancelled: Option<String>,
    /// Ran successfully.
    pub executed: Option<String>,
    /// Ran and failed.
    pub failed: Option<String>,
}

impl ResolutionTransitions {
    /// The transition for a status, if configured.
    pub fn for_status(&self, status: countersign_bot::RequestStatus) -> Option<&str> {
        use countersign_bot::RequestStatus as S;
        match status {
            S::Approved => self.approved.as_deref(),
            S::Denied => self.denied.as_deref(),
            S::Expired => self.expired.as_deref(),
            S::Cancelled => self.cancelled.as_deref(),
            S::Executed => self.executed.as_deref(),
            S::Failed => self.failed.as_deref(),
            S::Pending | S::Executing => None,
        }
    }
}

fn default_email_env() -> String {
    "JIRA_EMAIL".into()
}
fn default_token_env() -> String {
    "JIRA_API_TOKEN".into()
}
fn default_secret_env() -> String {
    "JIRA_WEBHOOK_SECRET".into()
}
fn default_issue_type() -> String {
    "Task".into()
}
fn default_max_statement_chars() -> usize {
    3000
}
fn default_timeout_secs() -> u64 {
    15
}

/// A configuration mistake, naming the key and the fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("jira.{key}: {problem}")]
pub struct JiraConfigError {
    /// Offending key.
    pub key: &'static str,
    /// What is wrong and how to fix it.
    pub problem: String,
}

/// True when `url` names this machine (127.0.0.0/8, ::1 or `localhost`).
fn is_loopback(url: &reqwest::Url) -> bool {
    url.host_str().is_some_and(|h| {
        h.eq_ignore_ascii_case("localhost")
            || h.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}

impl JiraConfig {
    /// Check the section; every error names its key.
    pub fn validate(&self) -> Result<(), Vec<JiraConfigError>> {
        let mut errors = Vec::new();
        let mut err = |key, problem: String| errors.push(JiraConfigError { key, problem });
        let url = &self.base_url;
        match reqwest::Url::parse(url) {
            Ok(u) if u.scheme() == "https" && u.host().is_some() => {}
            // The API token travels in every request: plain HTTP only to a test server on this machine.
            Ok(u) if u.scheme() == "http" && is_loopback(&u) => {}
            Ok(u) if u.scheme() == "http" && u.host().is_some() => err(
                "base_url",
                format!("{url:?} is plain http: the API token would cross the network readable; write https://… (http:// only for a loopback test server)"),
            ),
            _ => err(
                "base_url",
                format!("{url:?} is not an https URL: write e.g. https://your-site.atlassian.net"),
            ),
        }
        if self.project_key.is_empty() || !super::is_issue_key(&format!("{}-1", self.project_key)) {
            err(
                "project_key",
                format!(
                    "{:?} is not a Jira project key: use the upper-case key, e.g. OPS",
                    self.project_key
                ),
            );
        }
        for (key, v) in [
            ("email_env", &self.email_env),
            ("api_token_env", &self.api_token_env),
            ("webhook_secret_env", &self.webhook_secret_env),
            ("issue_type", &self.issue_type),
            ("approve_status", &self.approve_status),
            ("deny_status", &self.deny_status),
            ("revert_transition", &self.revert_transition),
        ] {
            if v.trim().is_empty() {
                err(key, "must not be empty".into());
            }
        }
        if self
            .approve_status
            .trim()
            .eq_ignore_ascii_case(self.deny_status.trim())
        {
            err(
                "deny_status",
                "must differ from approve_status, or one status would mean both".into(),
            );
        }
        if self.max_statement_chars < 100 {
            err(
                "max_statement_chars",
                "use at least 100 so approvers see the statement".into(),
            );
        }
        if self.timeout_secs == 0 {
            err("timeout_secs", "must be at least 1".into());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// Secrets read from the environment variables the configuration names.
#[derive(Clone)]
pub struct JiraCredentials {
    /// Account e-mail for basic auth.
    pub email: String,
    /// API token for basic auth.
    pub api_token: String,
    /// Webhook shared secret (HMAC key).
    pub webhook_secret: String,
}

impl std::fmt::Debug for JiraCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JiraCredentials")
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

impl JiraCredentials {
    /// Read the three variables the configuration names.
    pub fn from_env(cfg: &JiraConfig) -> Result<Self, JiraConfigError> {
        let read = |key: &'static str, var: &str| {
            std::env::var(var)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| JiraConfigError {
                    key,
                    problem: format!(
                        "environment variable {var} is not set: export it before starting"
                    ),
                })
        };
        Ok(Self {
            email: read("email_env", &cfg.email_env)?,
            api_token: read("api_token_env", &cfg.api_token_env)?,
            webhook_secret: read("webhook_secret_env", &cfg.webhook_secret_env)?,
        })
    }
}

#[cfg(test)]
pub(crate) fn sample_config(base_url: &str) -> JiraConfig {
    JiraConfig {
        base_url: base_url.into(),
        email_env: "JIRA_EMAIL".into(),
        api_token_env: "JIRA_API_TOKEN".into(),
        webhook_secret_env: "JIRA_WEBHOOK_SECRET".into(),
        project_key: "OPS".into(),
        issue_type: "Task".into(),
        public_base_url: "https://countersign.example.com".into(),
        approve_status: "Approved".into(),
        deny_status: "Denied".into(),
        revert_transition: "Back to review".into(),
        transitions: ResolutionTransitions::default(),
        max_statement_chars: 3000,
        timeout_secs: 15,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_section_parses_with_defaults() {
        let cfg: JiraConfig = toml::from_str(
            r#"
            base_url = "https://example.atlassian.net"
            project_key = "OPS"
            public_base_url = "https://countersign.example.com"
            approve_status = "Approved"
            deny_status = "Denied"
            revert_transition = "Back to review"
            [transitions]
            approved = "Done"
            "#,
        )
        .expect("parse");
        assert_eq!(cfg.validate(), Ok(()));
        assert_eq!(cfg.api_token_env, "JIRA_API_TOKEN");
        assert_eq!(
            cfg.transitions
                .for_status(countersign_bot::RequestStatus::Approved),
            Some("Done")
        );
    }

    #[test]
    fn literal_secrets_are_unknown_keys() {
        let r: Result<JiraConfig, _> = toml::from_str(
            "base_url = \"https://x\"\nproject_key = \"OPS\"\npublic_base_url = \"https://y\"\napprove_status = \"A\"\ndeny_status = \"D\"\nrevert_transition = \"R\"\napi_token = \"secret\"\n",
        );
        assert!(r.is_err());
    }

    #[test]
    fn plain_http_is_refused_except_to_a_loopback_test_server() {
        for url in ["http://example.atlassian.net", "http://10.0.0.8:8080"] {
            let errors = sample_config(url).validate().unwrap_err();
            assert_eq!(errors[0].key, "base_url");
            assert!(
                errors[0].problem.contains("plain http"),
                "{url}: {:?}",
                errors[0]
            );
        }
        for url in [
            "http://127.0.0.1:9000",
            "http://localhost:9000/jira",
            "http://[::1]:9000",
            "https://x.atlassian.net",
        ] {
            assert_eq!(sample_config(url).validate(), Ok(()), "{url}");
        }
    }

    #[test]
    fn validation_names_bad_keys() {
        let mut cfg = sample_config("not a url");
        cfg.project_key = "ops".into();
        cfg.deny_status = "approved".into();
        let keys: Vec<&str> = cfg.validate().unwrap_err().iter().map(|e| e.key).collect();
        assert_eq!(keys, ["base_url", "project_key", "deny_status"]);
    }
}
