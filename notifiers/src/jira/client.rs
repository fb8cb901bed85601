//! A small Jira Cloud REST v3 client: the six calls Countersign needs, with basic auth.

use super::config::{JiraConfig, JiraCredentials};
use crate::http_retry;
use countersign_bot::events::DeliveryError;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

/// One status change from an issue's changelog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangelogEntry {
    /// Changelog history id (unique per change; used to process each change once).
    pub id: String,
    /// Who made the change.
    pub author_account_id: String,
    /// Status moved to.
    pub to_status: String,
    /// Who changed the issue's summary or description (where the bot shows the statement) up to this
    /// change, anyone (the bot included) in order; an approval must follow the bot's own text.
    pub content_edited_by: Vec<String>,
}

/// Fields of an issue that carry what the bot showed reviewers.
const CONTENT_FIELDS: &[&str] = &["summary", "description"];

/// Calls Jira with the configured account.
#[derive(Debug, Clone)]
pub struct JiraClient {
    base: String,
    email: String,
    token: String,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct Created {
    key: String,
}

#[derive(Deserialize)]
struct Transitions {
    #[serde(default)]
    transitions: Vec<TransitionRef>,
}

#[derive(Deserialize)]
struct TransitionRef {
    id: String,
    name: String,
}

#[derive(Deserialize)]
struct IssueWithChangelog {
    #[serde(default)]
    changelog: Option<Changelog>,
}

#[derive(Deserialize)]
struct Changelog {
    #[serde(default)]
    histories: Vec<History>,
}

#[derive(Deserialize)]
struct History {
    id: String,
    #[serde(default)]
    author: Option<Author>,
    #[serde(default)]
    created: String,
    #[serde(default)]
    items: Vec<HistoryItem>,
}

#[derive(Deserialize)]
struct Author {
    #[serde(rename = "accountId")]
    account_id: String,
}

#[derive(Deserialize)]
struct HistoryItem {
    field: String,
    #[serde(rename = "toString", default)]
    to_string: Option<String>,
}

#[derive(Deserialize)]
struct User {
    #[serde(rename = "accountId")]
    account_id: String,
    #[serde(rename = "emailAddress", default)]
    email_address: Option<String>,
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, body: &str) -> Result<T, DeliveryError> {
    serde_json::from_str(body).map_err(|e| {
        DeliveryError::Permanent(format!(
            "{what}: unexpected response ({e}); check jira.base_url points at a Jira Cloud site"
        ))
    })
}

impl JiraClient {
    /// A client for the configured site and account.
    pub fn new(cfg: &JiraConfig, creds: &JiraCredentials) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(cfg.timeout_secs.max(1)))
            // A host that never completes the handshake fails fast instead of using the whole call's limit.
            .connect_timeout(Duration::from_secs(cfg.timeout_secs.clamp(1, 5)))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            base: cfg.base_url.trim_end_matches('/').to_string(),
            email: creds.email.clone(),
            token: creds.api_token.clone(),
            http,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/rest/api/3/{path}", self.base)
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .get(self.url(path))
            .basic_auth(&self.email, Some(&self.token))
            .header("accept", "application/json")
    }

    fn post(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.http
            .post(self.url(path))
            .basic_auth(&self.email, Some(&self.token))
            .header("accept", "application/json")
            .json(body)
    }

    fn check_key(key: &str) -> Result<(), DeliveryError> {
        if super::is_issue_key(key) {
            Ok(())
        } else {
            Err(DeliveryError::Permanent(format!(
                "{key:?} is not a Jira issue key"
            )))
        }
    }

    /// Create an issue; returns its key.
    pub async fn create_issue(&self, fields: Value) -> Result<String, DeliveryError> {
        let body = http_retry::send(
            "Jira create issue",
            self.post("issue", &json!({ "fields": fields })),
        )
        .await?;
        let created: Created = decode("Jira create issue", &body)?;
        Self::check_key(&created.key)?;
        Ok(created.key)
    }

    /// Add a comment (an ADF document); returns the comment id.
    pub async fn add_comment(&self, key: &str, adf: Value) -> Result<String, DeliveryError> {
        Self::check_key(key)?;
        let body = http_retry::send(
            "Jira add comment",
            self.post(&format!("issue/{key}/comment"), &json!({ "body": adf })),
        )
        .await?;
        let v: Value = decode("Jira add comment", &body)?;
        Ok(v.get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string())
    }

    /// Apply the transition named `name` (case-insensitive). `Ok(false)` when the issue's workflow offers no
    /// such transition from its current status.
    pub async fn transition(&self, key: &str, name: &str) -> Result<bool, DeliveryError> {
        Self::check_key(key)?;
        let path = format!("issue/{key}/transitions");
        let body = http_retry::send("Jira list transitions", self.get(&path)).await?;
        let list: Transitions = decode("Jira list transitions", &body)?;
        let Some(t) = list
            .transitions
            .iter()
            .find(|t| t.name.trim().eq_ignore_ascii_case(name.trim()))
        else {
            let names: Vec<&str> = list.transitions.iter().map(|t| t.name.as_str()).collect();
            tracing::warn!(issue = key, transition = name, available = ?names, "Jira transition not available from the issue's current status; check jira transition names");
            return Ok(false);
        };
        http_retry::send(
            "Jira transition issue",
            self.post(&path, &json!({ "transition": { "id": t.id } })),
        )
        .await?;
        Ok(true)
    }

    /// The issue's latest status change, from its changelog (`None` when its status never changed).
    pub async fn latest_status_change(
        &self,
        key: &str,
    ) -> Result<Option<ChangelogEntry>, DeliveryError> {
        Self::check_key(key)?;
        let body = http_retry::send(
            "Jira get issue",
            self.get(&format!("issue/{key}?expand=changelog")),
        )
        .await?;
        let issue: IssueWithChangelog = decode("Jira get issue", &body)?;
        let histories = issue.changelog.map(|c| c.histories).unwrap_or_default();
        let order = |h: &History| {
            (
                time::OffsetDateTime::parse(
                    &h.created,
                    &time::format_description::well_known::Iso8601::DEFAULT,
                )
                .ok(),
                h.id.parse::<u64>().unwrap_or(0),
            )
        };
        // Content edits with their place in time; one without a readable author is nobody's the
        // bot can vouch for.
        let edits: Vec<_> = histories
            .iter()
            .filter(|h| {
                h.items.iter().any(|i| {
                    CONTENT_FIELDS
                        .iter()
                        .any(|f| i.field.eq_ignore_ascii_case(f))
                })
            })
            .map(|h| {
                (
                    order(h),
                    h.author
                        .as_ref()
                        .map_or_else(String::new, |a| a.account_id.clone()),
                )
            })
            .collect();
        // Latest by creation time, then by numeric id: the order Jira returns histories in is not promised.
        let latest = histories
            .into_iter()
            .filter_map(|h| {
                let to = h
                    .items
                    .iter()
                    .rev()
                    .find(|i| i.field.eq_ignore_ascii_case("status"))?
                    .to_string
                    .clone()?;
                let at = order(&h);
                let author = h.author?.account_id;
                let content_edited_by = edits
                    .iter()
                    .filter(|(when, _)| *when <= at)
                    .map(|(_, who)| who.clone())
                    .collect();
                Some((
                    at,
                    ChangelogEntry {
                        id: h.id,
                        author_account_id: author,
                        to_status: to,
                        content_edited_by,
                    },
                ))
            })
            .max_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, e)| e);
        Ok(latest)
    }

    /// A user's e-mail address (`None` when their privacy settings hide it).
    pub async fn user_email(&self, account_id: &str) -> Result<Option<String>, DeliveryError> {
        let req = self.get("user").query(&[("accountId", account_id)]);
        let body = http_retry::send("Jira user lookup", req).await?;
        let user: User = decode("Jira user lookup", &body)?;
        if user.account_id != account_id {
            return Err(DeliveryError::Permanent(
                "Jira user lookup returned a different account".into(),
            ));
        }
        Ok(user
            .email_address
            .filter(|e| countersign_bot::identity::is_comparable_email(e)))
    }

    /// The account id Countersign itself acts as (its own transitions are never votes).
    pub async fn myself(&self) -> Result<String, DeliveryError> {
        let body = http_retry::send("Jira myself", self.get("myself")).await?;
        let user: User = decode("Jira myself", &body)?;
        Ok(user.account_id)
    }
}
