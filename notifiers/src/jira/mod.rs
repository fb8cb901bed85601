//! Jira both ways: an issue per request with a comment per event and transitions on resolution (outbound,
//! through the outbox), and a signed webhook whose issue transitions become votes (inbound).

pub mod adf;
mod client;
mod config;
mod inbound;
mod notifier;

pub use client::{ChangelogEntry, JiraClient};
pub use config::{JiraConfig, JiraConfigError, JiraCredentials, ResolutionTransitions};
pub use inbound::{router, sign_body, JiraInbound};
pub use notifier::JiraNotifier;

/// The sink and channel name.
pub const SINK: &str = "jira";

/// True for a well-formed issue key such as `OPS-42` (safe to put in a URL path).
pub fn is_issue_key(key: &str) -> bool {
    let Some((project, number)) = key.split_once('-') else {
        return false;
    };
    project.len() <= 255
        && project.starts_with(|c: char| c.is_ascii_uppercase())
        && project
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        && !number.is_empty()
        && number.len() <= 18
        && number.chars().all(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::is_issue_key;

    #[test]
    fn only_plain_issue_keys_are_accepted() {
        assert!(is_issue_key("OPS-42"));
        assert!(is_issue_key("DB_2-1"));
        assert!(!is_issue_key("OPS-42/../../admin"));
        assert!(!is_issue_key("ops-1"));
        assert!(!is_issue_key("OPS-"));
        assert!(!is_issue_key("OPS-1?x=1"));
    }
}
