//! Configured policy rules (`[[policy.rules]]`): matching statements by connection, kind, table
//! and requester, and validating them with errors that name the rule, the key and the fix.

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

use countersign_bot::{ReminderSettings, RequesterChain};

use super::verdict::{Action, ReviewRequirement, StatementFacts};

/// One `[[policy.rules]]` entry as written in the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    /// Unique name, reported as the verdict's `rule`.
    pub name: String,
    /// Connection-name globs; absent means any connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<Vec<String>>,
    /// Statement kinds (`DELETE`, `CREATE TABLE`), case-insensitive; absent means any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kinds: Option<Vec<String>>,
    /// Table globs (`public.users`, `orders*`); absent means any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<Vec<String>>,
    /// Match only UPDATE/DELETE without WHERE (`true`) or only with one (`false`); absent means any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_where: Option<bool>,
    /// Who in the requester chain the rule is for; absent means anyone. `*@ci.example.com` (with an
    /// `@`) matches e-mail addresses; `deploy-*` matches subjects; `static|deploy-*` or
    /// `https://idp.example.com|svc-*` matches subjects of that issuer only. An allow rule considers
    /// only identities from configured issuers, and may name subjects unqualified only when a single
    /// issuer is configured (the same subject from another issuer is another identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requesters: Option<Vec<String>>,
    /// IdP groups of anyone in the requester chain; absent means any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester_groups: Option<Vec<String>>,
    /// `allow`, `review` or `block`.
    pub action: String,
    /// Groups whose members may approve; falls back to the policy defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approver_groups: Option<Vec<String>>,
    /// Distinct approvers needed; falls back to the policy defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<u32>,
    /// Request lifetime such as `90s`, `30m`, `1h`, `2d`; falls back to the policy defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Remind pending approvers this long after creation (and again at that spacing), e.g. `15m`;
    /// falls back to the global `[reminders]` plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remind_after: Option<String>,
    /// Escalate this long after the first reminder (after creation when no reminder applies); needs
    /// `escalate_to`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalate_after: Option<String>,
    /// Approver groups to escalate to (their members are notified; they vote only if they are approvers
    /// of the request); needs `escalate_after`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalate_to: Option<Vec<String>>,
}

/// Review settings used by the built-in policy and by rules that leave them out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDefaults {
    /// Groups whose members may approve built-in review verdicts.
    #[serde(default)]
    pub approver_groups: Vec<String>,
    /// Distinct approvers needed (default 2).
    #[serde(default = "default_quorum")]
    pub quorum: u32,
    /// Request lifetime (default `1h`).
    #[serde(default = "default_ttl")]
    pub ttl: String,
}

fn default_quorum() -> u32 {
    2
}

fn default_ttl() -> String {
    "1h".to_string()
}

impl Default for PolicyDefaults {
    fn default() -> Self {
        Self {
            approver_groups: Vec::new(),
            quorum: default_quorum(),
            ttl: default_ttl(),
        }
    }
}

/// A policy configuration mistake, naming where it is and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyConfigError {
    /// A `[[policy.rules]]` entry is invalid.
    #[error("policy.rules[{index}] (name {name:?}), key `{key}`: {problem}; {fix}")]
    Rule {
        /// Zero-based position in `[[policy.rules]]`.
        index: usize,
        /// The rule's name as written (may be empty).
        name: String,
        /// The offending key.
        key: &'static str,
        /// What is wrong.
        problem: String,
        /// What to do about it.
        fix: String,
    },
    /// `[policy.defaults]` is invalid.
    #[error("policy.defaults, key `{key}`: {problem}; {fix}")]
    Defaults {
        /// The offending key.
        key: &'static str,
        /// What is wrong.
        problem: String,
        /// What to do about it.
        fix: String,
    },
}

impl PolicyConfigError {
    /// The config key at fault, e.g. `ttl`, for the config module's file-and-key report.
    pub fn key(&self) -> &'static str {
        match self {
            Self::Rule { key, .. } | Self::Defaults { key, .. } => key,
        }
    }
}

/// Parse a request TTL such as `90s`, `30m`, `1h`, `2d` or `1h30m` into whole seconds (the shared
/// duration grammar, [`countersign_bot::duration`]); zero is refused.
pub fn parse_ttl(text: &str) -> Result<u64, String> {
    let d = countersign_bot::duration::parse_duration(text).map_err(|e| e.to_string())?;
    if d.as_secs() == 0 {
        return Err(format!("{text:?}: a ttl must be at least 1s"));
    }
    if d > countersign_bot::workflow::MAX_TTL {
        return Err(format!(
            "{text:?}: a ttl can be at most 365d (a request pending longer is better made anew)"
        ));
    }
    Ok(d.as_secs())
}

/// Resolve the defaults into a review requirement, validating quorum and ttl.
pub fn resolve_defaults(defaults: &PolicyDefaults) -> Result<ReviewRequirement, PolicyConfigError> {
    if defaults.quorum == 0 {
        return Err(PolicyConfigError::Defaults {
            key: "quorum",
            problem: "quorum is 0".to_string(),
            fix: "set quorum to 1 or more distinct approvers".to_string(),
        });
    }
    let ttl_secs = parse_ttl(&defaults.ttl).map_err(|problem| PolicyConfigError::Defaults {
        key: "ttl",
        problem,
        fix: "write a duration like \"90s\", \"30m\", \"1h\" or \"2d\"".to_string(),
    })?;
    Ok(ReviewRequirement {
        approver_groups: defaults.approver_groups.clone(),
        quorum: defaults.quorum,
        ttl_secs,
        reminders: Default::default(),
    })
}

/// A validated rule with compiled globs.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    /// The rule's name.
    pub name: String,
    /// What the rule asks for.
    pub action: Action,
    /// Requirements when `action` is review (rule values, defaults filling the gaps).
    pub review: ReviewRequirement,
    connections: Option<GlobSet>,
    kinds: Option<Vec<String>>,
    tables: Option<GlobSet>,
    /// `tables` matched with case, for allow rules.
    tables_exact: Option<GlobSet>,
    missing_where: Option<bool>,
    requesters: Option<RequesterPatterns>,
    requester_groups: Option<Vec<String>>,
    /// Issuers whose identities an allow rule may match (see [`PolicyRule::requesters`]).
    trusted_issuers: Vec<String>,
}

/// A rule's `requesters`, split by what each pattern is matched against.
#[derive(Debug, Clone)]
struct RequesterPatterns {
    /// Patterns with an `@`, matched against e-mail addresses.
    emails: GlobSet,
    /// Unqualified patterns without an `@`, matched against subjects.
    subjects: GlobSet,
    /// `issuer|subject-glob` patterns: the issuer exactly, the subject by glob.
    qualified: Vec<(String, globset::GlobMatcher)>,
}

impl RequesterPatterns {
    fn compile(patterns: &[String], issuers: &[String]) -> Result<RequesterPatterns, String> {
        let (mut emails, mut subjects, mut qualified) = (Vec::new(), Vec::new(), Vec::new());
        for p in patterns {
            match p.split_once('|') {
                Some((issuer, subject)) => {
                    if issuer.trim().is_empty()
                        || subject.trim().is_empty()
                        || subject.contains('|')
                    {
                        return Err(format!(
                            "{p:?} is not one issuer and one subject pattern around a single `|`"
                        ));
                    }
                    // A misspelt issuer would never match: a block rule would silently block nobody.
                    if !issuers.iter().any(|i| i == issuer) {
                        return Err(format!(
                            "{p:?} names issuer {issuer:?}, which is not configured (configured: {})",
                            if issuers.is_empty() { "none".to_string() } else { issuers.join(", ") }
                        ));
                    }
                    let glob = GlobBuilder::new(subject)
                        .build()
                        .map_err(|e| format!("bad glob {subject:?}: {e}"))?;
                    qualified.push((issuer.to_string(), glob.compile_matcher()));
                }
                None if p.contains('@') => emails.push(p.clone()),
                None => subjects.push(p.clone()),
            }
        }
        Ok(RequesterPatterns {
            emails: build_globs(&emails)?,
            subjects: build_globs(&subjects)?,
            qualified,
        })
    }

    /// True when a pattern names `who`.
    fn is_match(&self, who: &countersign_bot::Identity) -> bool {
        who.email
            .as_deref()
            .is_some_and(|e| self.emails.is_match(e))
            || self.subjects.is_match(&who.subject)
            || self
                .qualified
                .iter()
                .any(|(issuer, glob)| *issuer == who.issuer && glob.is_match(&who.subject))
    }
}

impl CompiledRule {
    /// True when the rule names kinds or tables: it vouches for what statements of those kinds, or on
    /// those tables, do, and nothing beyond (see [`StatementFacts::review_beyond_kind`]).
    pub fn is_scoped(&self) -> bool {
        self.kinds.is_some() || self.tables.is_some()
    }
}

/// Validate and compile rules; names must be unique.
///
/// `issuers` are the configured identity issuers (`static` when static tokens are configured, and
/// each OIDC issuer): an allow rule matches requesters from these only.
pub fn compile_rules(
    rules: &[PolicyRule],
    defaults: &ReviewRequirement,
    issuers: &[String],
) -> Result<Vec<CompiledRule>, PolicyConfigError> {
    let mut compiled: Vec<CompiledRule> = Vec::with_capacity(rules.len());
    for (index, rule) in rules.iter().enumerate() {
        let err = |key: &'static str, problem: String, fix: &str| PolicyConfigError::Rule {
            index,
            name: rule.name.clone(),
            key,
            problem,
            fix: fix.to_string(),
        };
        if rule.name.trim().is_empty() {
            return Err(err(
                "name",
                "name is empty".into(),
                "give every rule a unique, non-empty name",
            ));
        }
        if compiled.iter().any(|c| c.name == rule.name) {
            return Err(err(
                "name",
                format!("another rule is already named {:?}", rule.name),
                "rename one of them; verdicts report the rule by name",
            ));
        }
        let action = match rule.action.trim().to_ascii_lowercase().as_str() {
            "allow" => Action::Allow,
            "review" => Action::Review,
            "block" => Action::Block,
            other => {
                return Err(err(
                    "action",
                    format!("unknown action {other:?}"),
                    "use one of \"allow\", \"review\" or \"block\"",
                ))
            }
        };
        let approver_groups = rule
            .approver_groups
            .clone()
            .unwrap_or_else(|| defaults.approver_groups.clone());
        if action == Action::Review && approver_groups.is_empty() {
            return Err(err(
                "approver_groups",
                "action is \"review\" but no approver groups are set here or in policy.defaults"
                    .into(),
                "add approver_groups = [\"dba\"] to the rule or to [policy.defaults]",
            ));
        }
        let quorum = rule.quorum.unwrap_or(defaults.quorum);
        if quorum == 0 {
            return Err(err(
                "quorum",
                "quorum is 0".into(),
                "set quorum to 1 or more distinct approvers",
            ));
        }
        let ttl_secs = match &rule.ttl {
            Some(ttl) => parse_ttl(ttl).map_err(|p| {
                err(
                    "ttl",
                    p,
                    "write a duration like \"90s\", \"30m\", \"1h\" or \"2d\"",
                )
            })?,
            None => defaults.ttl_secs,
        };
        let duration = |key: &'static str, value: &Option<String>| {
            value
                .as_deref()
                .map(|v| {
                    parse_ttl(v).map_err(|p| {
                        err(
                            key,
                            p,
                            "write a duration like \"90s\", \"30m\", \"1h\" or \"2d\"",
                        )
                    })
                })
                .transpose()
        };
        let remind_after_secs = duration("remind_after", &rule.remind_after)?;
        let escalate_after_secs = duration("escalate_after", &rule.escalate_after)?;
        let escalate_to = rule.escalate_to.clone().unwrap_or_default();
        if escalate_to.iter().any(|t| t.trim().is_empty()) {
            return Err(err(
                "escalate_to",
                "the list contains an empty name".into(),
                "list the approver groups to escalate to, e.g. [\"dba-leads\"]",
            ));
        }
        match (escalate_after_secs.is_some(), escalate_to.is_empty()) {
            (true, true) => {
                return Err(err(
                    "escalate_to",
                    "escalate_after is set but escalate_to is missing or empty".into(),
                    "add escalate_to = [\"dba-leads\"] naming the approver groups to escalate to",
                ))
            }
            (false, false) => {
                return Err(err(
                    "escalate_after",
                    "escalate_to is set but escalate_after is not".into(),
                    "add escalate_after = \"1h\" (the delay after the first reminder)",
                ))
            }
            _ => {}
        }
        let reminders = ReminderSettings {
            remind_after_secs,
            escalate_after_secs,
            escalate_to,
        };
        let globs = |key: &'static str,
                     patterns: &Option<Vec<String>>|
         -> Result<Option<GlobSet>, PolicyConfigError> {
            let Some(patterns) = patterns else {
                return Ok(None);
            };
            if patterns.is_empty() {
                return Err(err(
                    key,
                    "the list is empty, so the rule could never match".into(),
                    "remove the key to match anything, or list at least one glob",
                ));
            }
            build_globs(patterns)
                .map(Some)
                .map_err(|p| err(key, p, "fix the glob syntax (`*`, `?`, `[abc]`, `{a,b}`)"))
        };
        let connections = globs("connections", &rule.connections)?;
        let tables = globs("tables", &rule.tables)?;
        // An allow rule names tables as PostgreSQL stores them (unquoted names folded to lower case):
        // `reports` is not the quoted `"Reports"`. Stricter rules match case-blind, catching more.
        let tables_exact = match &rule.tables {
            Some(patterns) if tables.is_some() => {
                Some(build_globs_with_case(patterns, true).map_err(|p| {
                    err(
                        "tables",
                        p,
                        "fix the glob syntax (`*`, `?`, `[abc]`, `{a,b}`)",
                    )
                })?)
            }
            _ => None,
        };
        let requesters = match &rule.requesters {
            Some(p) if p.is_empty() => {
                return Err(err(
                    "requesters",
                    "the list is empty, so the rule could never match".into(),
                    "remove the key to match anything, or list at least one pattern",
                ))
            }
            Some(p) => Some(RequesterPatterns::compile(p, issuers).map_err(|problem| {
                err(
                    "requesters",
                    problem,
                    "fix the glob syntax (`*`, `?`, `[abc]`, `{a,b}`); qualify a subject with its issuer as `issuer|subject`",
                )
            })?),
            None => None,
        };
        if action == Action::Allow && issuers.len() > 1 {
            if let Some(patterns) = &rule.requesters {
                if requesters.as_ref().is_some_and(|r| !r.subjects.is_empty()) {
                    let unqualified: Vec<&str> = patterns
                        .iter()
                        .map(String::as_str)
                        .filter(|p| !p.contains('|') && !p.contains('@'))
                        .collect();
                    return Err(err(
                        "requesters",
                        format!(
                            "subject pattern(s) {unqualified:?} in an allow rule would match that subject from any of the configured issuers ({})",
                            issuers.join(", ")
                        ),
                        "qualify each subject with its issuer, e.g. \"static|deploy-agent\" or \"https://idp.example.com|svc-*\"",
                    ));
                }
            }
        }
        let lower_list = |key: &'static str,
                          list: &Option<Vec<String>>|
         -> Result<Option<Vec<String>>, PolicyConfigError> {
            match list {
                Some(l) if l.is_empty() => Err(err(
                    key,
                    "the list is empty, so the rule could never match".into(),
                    "remove the key to match anything, or list at least one value",
                )),
                Some(l) => Ok(Some(
                    l.iter().map(|k| k.trim().to_ascii_lowercase()).collect(),
                )),
                None => Ok(None),
            }
        };
        if let Some(kinds) = &rule.kinds {
            let unknown: Vec<&String> = kinds
                .iter()
                .filter(|k| !super::kinds::is_known_kind(k))
                .collect();
            if !unknown.is_empty() {
                return Err(err(
                    "kinds",
                    format!(
                        "policy.rules[{index}].kinds names unknown statement kind(s) {unknown:?}, which no statement has, so the rule would never match"
                    ),
                    &format!(
                        "fix the spelling (case does not matter); valid kinds are {}",
                        super::kinds::describe_known_kinds()
                    ),
                ));
            }
        }
        compiled.push(CompiledRule {
            name: rule.name.clone(),
            action,
            review: ReviewRequirement {
                approver_groups,
                quorum,
                ttl_secs,
                reminders,
            },
            connections,
            kinds: lower_list("kinds", &rule.kinds)?,
            tables,
            tables_exact,
            missing_where: rule.missing_where,
            requesters,
            requester_groups: lower_list("requester_groups", &rule.requester_groups)?,
            trusted_issuers: issuers.to_vec(),
        });
    }
    Ok(compiled)
}

fn build_globs(patterns: &[String]) -> Result<GlobSet, String> {
    build_globs_with_case(patterns, false)
}

fn build_globs_with_case(patterns: &[String], with_case: bool) -> Result<GlobSet, String> {
    let mut builder = GlobSetBuilder::new();
    for p in patterns {
        let glob: Glob = GlobBuilder::new(p)
            .case_insensitive(!with_case)
            .build()
            .map_err(|e| format!("bad glob {p:?}: {e}"))?;
        builder.add(glob);
    }
    builder.build().map_err(|e| format!("bad glob set: {e}"))
}

impl CompiledRule {
    /// True when this rule applies to `facts` on `connection` for `requester`.
    ///
    /// Unqualified table names also match as `public.<name>` for rules that make statements
    /// stricter, so `tables = ["public.users"]` catches `DELETE FROM users`; an `allow` rule
    /// matches only the name as written, so a changed search_path cannot widen it.
    pub fn matches(
        &self,
        connection: &str,
        requester: &RequesterChain,
        facts: &StatementFacts,
    ) -> bool {
        if let Some(c) = &self.connections {
            if !c.is_match(connection) {
                return false;
            }
        }
        if let Some(kinds) = &self.kinds {
            if !kinds.iter().any(|k| k.eq_ignore_ascii_case(&facts.kind)) {
                return false;
            }
        }
        if let Some(want) = self.missing_where {
            if facts.missing_where != want {
                return false;
            }
        }
        if let Some(tables) = &self.tables {
            // A stricter rule catches a statement touching any of its tables; an allow rule vouches
            // only for statements that touch nothing else (`INSERT INTO other SELECT * FROM mine`).
            let hit = if self.action == Action::Allow {
                let exact = self.tables_exact.as_ref().unwrap_or(tables);
                !facts.tables.is_empty() && facts.tables.iter().all(|t| exact.is_match(t))
            } else {
                facts.tables.iter().any(|t| {
                    tables.is_match(t)
                        || (!t.contains('.') && tables.is_match(format!("public.{t}")))
                })
            };
            if !hit {
                return false;
            }
        }
        // A stricter rule catches anyone it names; an allow rule vouches only for identities from
        // configured issuers (a delegation claim may name an actor from any issuer at all).
        let widens = self.action == Action::Allow;
        let considered = |who: &&countersign_bot::Identity| {
            !widens || self.trusted_issuers.contains(&who.issuer)
        };
        if let Some(patterns) = &self.requesters {
            let hit = requester
                .0
                .iter()
                .filter(considered)
                .any(|who| patterns.is_match(who));
            if !hit {
                return false;
            }
        }
        if let Some(groups) = &self.requester_groups {
            let hit = requester.0.iter().filter(considered).any(|who| {
                who.groups
                    .iter()
                    .any(|g| groups.iter().any(|w| w.eq_ignore_ascii_case(g)))
            });
            if !hit {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, action: &str) -> PolicyRule {
        PolicyRule {
            name: name.into(),
            connections: None,
            kinds: None,
            tables: None,
            missing_where: None,
            requesters: None,
            requester_groups: None,
            action: action.into(),
            approver_groups: Some(vec!["dba".into()]),
            quorum: None,
            ttl: None,
            remind_after: None,
            escalate_after: None,
            escalate_to: None,
        }
    }

    fn defaults() -> ReviewRequirement {
        resolve_defaults(&PolicyDefaults::default()).unwrap()
    }

    #[test]
    fn ttl_accepts_units_and_combinations() {
        assert_eq!(parse_ttl("90s"), Ok(90));
        assert_eq!(parse_ttl("30m"), Ok(1800));
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("2d"), Ok(172_800));
        assert_eq!(parse_ttl("1h30m"), Ok(5400));
        assert!(parse_ttl("10").is_err());
        assert!(parse_ttl("5w").is_err());
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("").is_err());
        assert!(parse_ttl("99999999999999999999d").is_err());
        // Within the grammar, but an expiry past what a timestamp holds: used to panic every submit.
        assert!(parse_ttl("100000000d")
            .unwrap_err()
            .contains("at most 365d"));
        assert_eq!(parse_ttl("365d"), Ok(31_536_000));
    }

    #[test]
    fn toml_rule_with_unknown_key_is_rejected() {
        let err =
            toml::from_str::<PolicyRule>("name = \"x\"\naction = \"allow\"\ntabels = [\"t\"]\n")
                .unwrap_err();
        assert!(err.to_string().contains("tabels"), "{err}");
    }

    #[test]
    fn toml_rule_parses_every_documented_key() {
        let r: PolicyRule = toml::from_str(
            r#"
            name = "prod-destructive"
            connections = ["prod-*"]
            kinds = ["DELETE", "UPDATE"]
            tables = ["public.users", "orders*"]
            missing_where = true
            requesters = ["*@ci.example.com", "deploy-bot"]
            requester_groups = ["contractors"]
            action = "review"
            approver_groups = ["dba"]
            quorum = 2
            ttl = "30m"
            remind_after = "10m"
            escalate_after = "1h"
            escalate_to = ["dba-leads", "db-oncall"]
            "#,
        )
        .unwrap();
        let compiled = compile_rules(&[r], &defaults(), &["https://idp".to_string()]).unwrap();
        assert_eq!(compiled[0].review.ttl_secs, 1800);
        assert_eq!(
            compiled[0].review.reminders,
            ReminderSettings {
                remind_after_secs: Some(600),
                escalate_after_secs: Some(3600),
                escalate_to: vec!["dba-leads".into(), "db-oncall".into()],
            }
        );
        assert_eq!(compiled[0].action, Action::Review);
    }

    #[test]
    fn a_misspelt_kind_is_refused_naming_the_key_and_the_valid_kinds() {
        let typo = PolicyRule {
            kinds: Some(vec!["delete".into(), "DELTE".into()]),
            ..rule("no-deletes", "block")
        };
        let fine = PolicyRule {
            kinds: Some(vec!["Delete".into(), "drop  table".into()]),
            ..rule("ok", "block")
        };
        let e = compile_rules(&[fine.clone(), typo], &defaults(), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("policy.rules[1].kinds"), "{e}");
        assert!(e.contains("\"DELTE\""), "{e}");
        assert!(e.contains("valid kinds are") && e.contains("DELETE"), "{e}");
        assert!(compile_rules(&[fine], &defaults(), &[]).is_ok());
    }

    #[test]
    fn validation_names_rule_key_and_fix() {
        let cases: Vec<(PolicyRule, &str)> = vec![
            (rule("a", "permit"), "action"),
            (
                PolicyRule {
                    ttl: Some("soon".into()),
                    ..rule("b", "review")
                },
                "ttl",
            ),
            (
                PolicyRule {
                    approver_groups: None,
                    ..rule("c", "review")
                },
                "approver_groups",
            ),
            (
                PolicyRule {
                    tables: Some(vec!["[bad".into()]),
                    ..rule("d", "block")
                },
                "tables",
            ),
            (
                PolicyRule {
                    quorum: Some(0),
                    ..rule("e", "review")
                },
                "quorum",
            ),
            (
                PolicyRule {
                    connections: Some(vec![]),
                    ..rule("f", "block")
                },
                "connections",
            ),
            (
                PolicyRule {
                    remind_after: Some("0s".into()),
                    ..rule("g", "review")
                },
                "remind_after",
            ),
            (
                PolicyRule {
                    escalate_after: Some("later".into()),
                    escalate_to: Some(vec!["dba-leads".into()]),
                    ..rule("h", "review")
                },
                "escalate_after",
            ),
            (
                PolicyRule {
                    escalate_after: Some("1h".into()),
                    ..rule("i", "review")
                },
                "escalate_to",
            ),
            (
                PolicyRule {
                    escalate_to: Some(vec!["dba-leads".into()]),
                    ..rule("j", "review")
                },
                "escalate_after",
            ),
            (rule("", "block"), "name"),
        ];
        for (r, key) in cases {
            let name = r.name.clone();
            let err = compile_rules(
                &[rule("ok", "allow"), r],
                &defaults(),
                &["https://idp".to_string()],
            )
            .unwrap_err();
            assert_eq!(err.key(), key, "{err}");
            let text = err.to_string();
            assert!(
                text.contains("policy.rules[1]") && text.contains(&format!("{name:?}")),
                "{text}"
            );
        }
    }

    #[test]
    fn duplicate_rule_names_are_rejected() {
        let err = compile_rules(
            &[rule("x", "allow"), rule("x", "block")],
            &defaults(),
            &["https://idp".to_string()],
        )
        .unwrap_err();
        assert_eq!(err.key(), "name");
    }

    #[test]
    fn review_rule_may_take_approvers_from_defaults() {
        let defaults = resolve_defaults(&PolicyDefaults {
            approver_groups: vec!["dba".into()],
            quorum: 3,
            ttl: "2h".into(),
        })
        .unwrap();
        let compiled = compile_rules(
            &[PolicyRule {
                approver_groups: None,
                ..rule("r", "review")
            }],
            &defaults,
            &[],
        )
        .unwrap();
        assert_eq!(
            compiled[0].review,
            ReviewRequirement {
                approver_groups: vec!["dba".into()],
                quorum: 3,
                ttl_secs: 7200,
                reminders: Default::default(),
            }
        );
    }

    #[test]
    fn bad_defaults_name_the_key() {
        let err = resolve_defaults(&PolicyDefaults {
            ttl: "forever".into(),
            ..PolicyDefaults::default()
        })
        .unwrap_err();
        assert_eq!(err.key(), "ttl");
        assert!(err.to_string().contains("policy.defaults"));
    }
}
