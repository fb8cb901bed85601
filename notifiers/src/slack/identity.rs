//! Who clicked: a Slack user id becomes a canonical human identity through the configured `user_map`, or
//! else the e-mail on their Slack profile (`users.info`), cached for a bounded time.
//!
//! A profile e-mail is only as trustworthy as the organisation that set it. In a Slack Connect shared channel
//! users of *other* organisations see and can click the request messages, and their organisation may hand out
//! any address (an approver's included). So a profile e-mail counts only for a member of the organisation's own
//! workspace: `users.info`'s `team_id` must be the team `auth.test` reports for the bot token (on Enterprise
//! Grid, or the user's enterprise that enterprise), and Slack must not mark the user as a stranger, unless
//! the operator listed the user's team in `trusted_teams`. A `user_map` entry is the operator vouching for that
//! user id and is not second-guessed.

use super::api::{SlackApi, SlackApiError, SlackHome};
use countersign_bot::{Identity, IdentityKind};
use slack_morphism::prelude::SlackUser;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// Most cached identities kept at once; beyond it, expired entries are dropped, then everything.
const CACHE_CAPACITY: usize = 10_000;

/// Resolves Slack users to identities.
pub struct SlackIdentityResolver {
    user_map: BTreeMap<String, String>,
    trusted_teams: BTreeSet<String>,
    api: SlackApi,
    ttl: Duration,
    /// The app's own organisation; the bot token's team never changes, so one `auth.test` is enough.
    home: OnceCell<SlackHome>,
    cache: Mutex<HashMap<String, (String, Instant)>>,
}

/// What a Slack user id resolves to.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    /// A member of the organisation (or a `user_map` entry): votes as this identity.
    Member(Identity),
    /// Slack gives no usable e-mail for the user (none on the profile, a deactivated account, a bot).
    NoEmail,
    /// The user belongs to another organisation's workspace; their profile e-mail proves nothing.
    Outsider(Outsider),
}

/// Why a user is not one of the organisation's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outsider {
    /// The user's team as `users.info` reports it, if any.
    pub team_id: Option<String>,
    /// The user's Enterprise Grid organisation, if any.
    pub enterprise_id: Option<String>,
    /// Which check failed.
    pub reason: OutsiderReason,
}

/// Which membership check refused a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutsiderReason {
    /// Slack marks the user `is_stranger`: a member of a foreign workspace party to a shared channel.
    Stranger,
    /// The user's team (and enterprise) is neither the app's own nor in `trusted_teams`.
    OtherTeam,
    /// Slack reported no team for the user, so membership cannot be shown.
    NoTeam,
}

impl Outsider {
    /// An audit/log code for the failed check.
    pub fn code(&self) -> &'static str {
        match self.reason {
            OutsiderReason::Stranger => "stranger",
            OutsiderReason::OtherTeam => "other_team",
            OutsiderReason::NoTeam => "no_team",
        }
    }

    /// The explanation shown to the clicker, with what to do about it.
    pub fn explanation(&self) -> String {
        let team = self.team_id.as_deref().unwrap_or("an unknown workspace");
        match self.reason {
            OutsiderReason::Stranger | OutsiderReason::OtherTeam => format!(
                "your Slack account belongs to another organisation's workspace ({team}), so the e-mail on its profile cannot vouch for you. Approve from your account in this organisation's workspace, or ask an administrator to add your workspace to slack.trusted_teams or your user id to slack.user_map."
            ),
            OutsiderReason::NoTeam => "Slack did not say which workspace your account belongs to, so Countersign cannot tell whether you are a member of this organisation. Ask an administrator to add your user id to slack.user_map.".to_string(),
        }
    }
}

/// The identity that votes for a Slack user with this e-mail.
pub fn slack_identity(user_id: &str, email: &str) -> Identity {
    Identity {
        issuer: "slack".into(),
        subject: user_id.to_string(),
        email: Some(email.trim().to_string()),
        unverified_email: None,
        kind: IdentityKind::Human,
        groups: vec![],
    }
}

/// Is `user` a member of the organisation `home` (or of a team the operator trusts)? Pure, so every case is
/// tested without a server.
pub fn membership(
    user: &SlackUser,
    home: &SlackHome,
    trusted_teams: &BTreeSet<String>,
) -> Result<(), Outsider> {
    let team = user
        .team_id
        .as_ref()
        .map(|t| t.0.as_str())
        .filter(|t| !t.is_empty());
    let enterprise = user
        .enterprise_user
        .as_ref()
        .map(|e| e.enterprise_id.0.as_str())
        .filter(|e| !e.is_empty());
    let refuse = |reason| {
        Err(Outsider {
            team_id: team.map(String::from),
            enterprise_id: enterprise.map(String::from),
            reason,
        })
    };
    // An explicitly trusted organisation counts even though Slack shows its users as strangers here: that is
    // exactly what a Slack Connect partner's users look like.
    if team.is_some_and(|t| trusted_teams.contains(t))
        || enterprise.is_some_and(|e| trusted_teams.contains(e))
    {
        return Ok(());
    }
    let stranger = user.flags.is_stranger == Some(true)
        || user
            .enterprise_user
            .as_ref()
            .is_some_and(|e| e.flags.is_stranger == Some(true));
    if stranger {
        return refuse(OutsiderReason::Stranger);
    }
    let Some(team) = team else {
        return refuse(OutsiderReason::NoTeam);
    };
    if team == home.team_id.0 {
        return Ok(());
    }
    // On Enterprise Grid a member of a sibling workspace of the same organisation is one of ours; an org-wide
    // install may report the enterprise itself as its team.
    if let Some(own) = home.enterprise_id.as_ref().map(|e| e.0.as_str()) {
        if enterprise == Some(own) || team == own {
            return Ok(());
        }
    }
    refuse(OutsiderReason::OtherTeam)
}

impl SlackIdentityResolver {
    /// A resolver using `user_map` first and `users.info` (cached for `ttl`) second; a `users.info` user
    /// counts only as a member of the bot token's organisation or of one of `trusted_teams`.
    pub fn new(
        user_map: BTreeMap<String, String>,
        trusted_teams: impl IntoIterator<Item = String>,
        api: SlackApi,
        ttl: Duration,
    ) -> Self {
        Self {
            user_map,
            trusted_teams: trusted_teams.into_iter().collect(),
            api,
            ttl,
            home: OnceCell::new(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Who `user_id` is, or why they cannot vote.
    pub async fn resolve(&self, user_id: &str) -> Result<Resolution, SlackApiError> {
        if let Some(email) = self.user_map.get(user_id) {
            return Ok(Resolution::Member(slack_identity(user_id, email)));
        }
        // Only members are cached, so an outsider is re-checked on every click.
        if let Some(email) = self.cached(user_id) {
            return Ok(Resolution::Member(slack_identity(user_id, &email)));
        }
        let user = self.api.user_info(user_id).await?;
        if user.deleted == Some(true) || user.flags.is_bot == Some(true) {
            return Ok(Resolution::NoEmail);
        }
        let home = self.home.get_or_try_init(|| self.api.home()).await?;
        if let Err(outsider) = membership(&user, home, &self.trusted_teams) {
            return Ok(Resolution::Outsider(outsider));
        }
        let Some(email) = user
            .profile
            .and_then(|p| p.email)
            .map(|e| e.0)
            .filter(|e| countersign_bot::identity::is_comparable_email(e))
        else {
            return Ok(Resolution::NoEmail);
        };
        self.remember(user_id, &email);
        Ok(Resolution::Member(slack_identity(user_id, &email)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use slack_morphism::prelude::{SlackEnterpriseId, SlackTeamId};

    fn user(v: serde_json::Value) -> SlackUser {
        serde_json::from_value(v).unwrap()
    }

    fn home(team: &str, enterprise: Option<&str>) -> SlackHome {
        SlackHome {
            team_id: SlackTeamId(team.into()),
            enterprise_id: enterprise.map(|e| SlackEnterpriseId(e.into())),
        }
    }

    fn trusted(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    fn reason(r: Result<(), Outsider>) -> Option<OutsiderReason> {
        r.err().map(|o| o.reason)
    }

    #[test]
    fn only_the_own_team_or_a_trusted_one_is_a_member() {
        let own = home("T1", None);
        let ours = user(serde_json::json!({ "id": "UA", "team_id": "T1" }));
        let theirs = user(serde_json::json!({ "id": "UB", "team_id": "T2" }));
        let teamless = user(serde_json::json!({ "id": "UC" }));
        assert_eq!(membership(&ours, &own, &trusted(&[])), Ok(()));
        let refused = membership(&theirs, &own, &trusted(&[])).unwrap_err();
        assert_eq!(refused.reason, OutsiderReason::OtherTeam);
        assert_eq!(refused.team_id.as_deref(), Some("T2"));
        assert!(refused.explanation().contains("slack.trusted_teams"));
        assert_eq!(membership(&theirs, &own, &trusted(&["T2"])), Ok(()));
        assert_eq!(
            reason(membership(&teamless, &own, &trusted(&[]))),
            Some(OutsiderReason::NoTeam)
        );
    }

    #[test]
    fn strangers_are_refused_even_when_they_claim_the_own_team_unless_trusted() {
        let own = home("T1", None);
        let stranger =
            user(serde_json::json!({ "id": "UX", "team_id": "T1", "is_stranger": true }));
        assert_eq!(
            reason(membership(&stranger, &own, &trusted(&[]))),
            Some(OutsiderReason::Stranger)
        );
        let partner = user(serde_json::json!({ "id": "UP", "team_id": "T9", "is_stranger": true }));
        assert_eq!(
            reason(membership(&partner, &own, &trusted(&[]))),
            Some(OutsiderReason::Stranger)
        );
        assert_eq!(membership(&partner, &own, &trusted(&["T9"])), Ok(()));
    }

    #[test]
    fn on_enterprise_grid_the_whole_enterprise_counts_and_other_enterprises_do_not() {
        let own = home("T1", Some("E1"));
        let sibling = user(serde_json::json!({ "id": "US", "team_id": "T7",
            "enterprise_user": { "id": "US", "enterprise_id": "E1", "teams": ["T7"] } }));
        let other_org = user(serde_json::json!({ "id": "UO", "team_id": "T8",
            "enterprise_user": { "id": "UO", "enterprise_id": "E2", "teams": ["T8"] } }));
        assert_eq!(membership(&sibling, &own, &trusted(&[])), Ok(()));
        assert_eq!(
            reason(membership(&other_org, &own, &trusted(&[]))),
            Some(OutsiderReason::OtherTeam)
        );
        assert_eq!(membership(&other_org, &own, &trusted(&["E2"])), Ok(()));
        // Without Grid on our side, another organisation's enterprise is just another team.
        assert_eq!(
            reason(membership(&sibling, &home("T1", None), &trusted(&[]))),
            Some(OutsiderReason::OtherTeam)
        );
    }
}
