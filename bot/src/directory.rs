//! Approver groups: who may vote on what.

use crate::identity::{canonical_email, Identity};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A named set of people allowed to vote, by e-mail and/or IdP group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApproverGroup {
    /// Group name referenced by policy rules.
    pub name: String,
    /// Members' e-mail addresses (compared case-insensitively).
    pub members: Vec<String>,
    /// IdP groups whose members belong to this group.
    pub idp_groups: Vec<String>,
}

impl ApproverGroup {
    /// True when `who` is a member (by e-mail, compared as the mailbox it reaches, or IdP group).
    pub fn contains(&self, who: &Identity) -> bool {
        let by_email = who
            .email
            .as_deref()
            .map(|e| {
                let mailbox = canonical_email(e);
                self.members.iter().any(|m| canonical_email(m) == mailbox)
            })
            .unwrap_or(false);
        by_email
            || who
                .groups
                .iter()
                .any(|g| self.idp_groups.iter().any(|ig| ig == g))
    }
}

/// All approver groups, by name.
#[derive(Debug, Clone, Default)]
pub struct ApproverDirectory {
    groups: HashMap<String, ApproverGroup>,
}

impl ApproverDirectory {
    /// Build from configured groups.
    pub fn new(groups: impl IntoIterator<Item = ApproverGroup>) -> Self {
        Self {
            groups: groups
                .into_iter()
                .map(|mut g| {
                    // `" Bob@example.com. "` is Bob: lists, mail recipients and comparisons see the
                    // address (a fully qualified domain's trailing dot is refused by mail servers).
                    for m in &mut g.members {
                        *m = m.trim().trim_end_matches('.').to_string();
                    }
                    (g.name.clone(), g)
                })
                .collect(),
        }
    }

    /// A group by name.
    pub fn group(&self, name: &str) -> Option<&ApproverGroup> {
        self.groups.get(name)
    }

    /// True when `who` belongs to any of `groups`.
    pub fn is_member_of_any(&self, groups: &[String], who: &Identity) -> bool {
        groups
            .iter()
            .filter_map(|g| self.groups.get(g))
            .any(|g| g.contains(who))
    }

    /// Human-readable approvers for messages: explicit members, then `group:<idp group>` entries.
    pub fn describe(&self, groups: &[String]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for g in groups.iter().filter_map(|g| self.groups.get(g)) {
            for m in &g.members {
                if !out.iter().any(|o| o.eq_ignore_ascii_case(m)) {
                    out.push(m.clone());
                }
            }
            for ig in &g.idp_groups {
                let label = format!("group:{ig}");
                if !out.contains(&label) {
                    out.push(label);
                }
            }
        }
        out
    }

    /// E-mail addresses of explicit members of `groups` (for channels that message people directly).
    pub fn member_emails(&self, groups: &[String]) -> Vec<String> {
        self.describe(groups)
            .into_iter()
            .filter(|m| !m.starts_with("group:"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_listed_and_mailed_once_whatever_their_spacing_and_case() {
        let dir = ApproverDirectory::new([
            ApproverGroup {
                name: "dba".into(),
                members: vec![" Bob@example.com ".into(), "carol@example.com".into()],
                idp_groups: vec!["db-admins".into()],
            },
            ApproverGroup {
                name: "oncall".into(),
                members: vec!["bob@example.com".into()],
                idp_groups: vec![],
            },
        ]);
        let groups = ["dba".to_string(), "oncall".to_string()];
        assert_eq!(
            dir.describe(&groups),
            ["Bob@example.com", "carol@example.com", "group:db-admins"]
        );
        assert_eq!(
            dir.member_emails(&groups),
            ["Bob@example.com", "carol@example.com"]
        );
    }

    #[test]
    fn membership_is_by_mailbox() {
        let dir = ApproverDirectory::new([ApproverGroup {
            name: "dba".into(),
            members: vec!["carol@example.com".into(), "ALICE@Example.com.".into()],
            idp_groups: vec![],
        }]);
        let groups = ["dba".to_string()];
        let person = |email: &str| Identity {
            issuer: "jira".into(),
            subject: email.into(),
            email: Some(email.into()),
            unverified_email: None,
            kind: crate::identity::IdentityKind::Human,
            groups: vec![],
        };
        for member in [
            "Carol+jira@Example.COM",
            " carol@example.com. ",
            "alice@example.com",
        ] {
            assert!(dir.is_member_of_any(&groups, &person(member)), "{member}");
        }
        for stranger in [
            "carol@example.co",
            "carole@example.com",
            "carol@evil.example.com",
        ] {
            assert!(
                !dir.is_member_of_any(&groups, &person(stranger)),
                "{stranger}"
            );
        }
        assert_eq!(
            dir.member_emails(&groups),
            ["carol@example.com", "ALICE@Example.com"]
        );
    }
}
