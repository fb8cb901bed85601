//! Turning verified claims into an [`Identity`]: which claims to read and whether it is a person.

use super::config::{build_globs, ConfigError, OidcIssuerConfig};
use super::error::AuthError;
use countersign_bot::{Identity, IdentityKind};
use globset::GlobSet;
use serde_json::{Map, Value};

/// Per-issuer claim names and the human/workload rule (documented on [`OidcIssuerConfig`]).
pub struct ClaimMapping {
    subject_claim: String,
    email_claim: String,
    groups_claim: String,
    default_kind: IdentityKind,
    human_subjects: GlobSet,
    human_groups: GlobSet,
    workload_subjects: GlobSet,
}

impl ClaimMapping {
    /// Compiles the mapping of issuer number `index` in the config.
    pub fn new(index: usize, cfg: &OidcIssuerConfig) -> Result<Self, ConfigError> {
        let key = |field: &str| format!("identity.oidc[{index}].{field}");
        Ok(Self {
            subject_claim: cfg.subject_claim.clone(),
            email_claim: cfg.email_claim.clone(),
            groups_claim: cfg.groups_claim.clone(),
            default_kind: cfg.default_kind,
            human_subjects: build_globs(&key("human_subjects"), &cfg.human_subjects)?,
            human_groups: build_globs(&key("human_groups"), &cfg.human_groups)?,
            workload_subjects: build_globs(&key("workload_subjects"), &cfg.workload_subjects)?,
        })
    }

    /// Reads one identity from a claims object (the token body or one `act` level).
    ///
    /// `fallback_kind` applies when no glob matches: the issuer's `default_kind` for the token subject,
    /// always workload for actors.
    pub fn identity(
        &self,
        claims: &Map<String, Value>,
        issuer: &str,
        fallback_kind: Option<IdentityKind>,
    ) -> Result<Identity, AuthError> {
        let subject = match claims.get(&self.subject_claim) {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(_) => {
                return Err(AuthError::malformed(format!(
                    "claim {:?} is not a string",
                    self.subject_claim
                )))
            }
            None => {
                return Err(AuthError::MissingClaim {
                    claim: self.subject_claim.clone(),
                })
            }
        };
        // An address the IdP says it has not verified must not become a voter's canonical id.
        // Absent means the IdP does not say (many omit it); some (Cognito) send the flag as a string.
        let email_verified = match claims.get("email_verified") {
            None => true,
            Some(Value::Bool(verified)) => *verified,
            Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
            Some(_) => false,
        };
        let email = match claims.get(&self.email_claim) {
            Some(Value::String(s)) if email_verified && !s.trim().is_empty() => {
                // Refused, not dropped: without it a requester's human would be keyed by subject and
                // could approve under their plain address.
                if !countersign_bot::identity::is_comparable_email(s) {
                    return Err(AuthError::malformed(format!(
                        "claim {:?} is not a plain ASCII e-mail address (it holds invisible, \
                         full-width or non-ASCII characters, which would make one person look like \
                         another); have the identity provider send the ASCII address",
                        self.email_claim
                    )));
                }
                Some(s.trim().to_owned())
            }
            _ => None,
        };
        // Not an identifier, but the person it names still may not approve this identity's requests
        // (a workload token carrying an unverified copy of a reviewer's address excluded nobody).
        let unverified_email = match claims.get(&self.email_claim) {
            Some(Value::String(s)) if !email_verified && !s.trim().is_empty() => {
                Some(s.trim().to_owned())
            }
            _ => None,
        };
        let groups = match claims.get(&self.groups_claim) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            Some(Value::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        };
        let kind = self.kind_of(
            &subject,
            &groups,
            fallback_kind.unwrap_or(self.default_kind),
        );
        Ok(Identity {
            issuer: issuer.to_owned(),
            subject,
            email,
            unverified_email,
            kind,
            groups,
        })
    }

    fn kind_of(&self, subject: &str, groups: &[String], fallback: IdentityKind) -> IdentityKind {
        if self.workload_subjects.is_match(subject) {
            IdentityKind::Workload
        } else if self.human_subjects.is_match(subject)
            || groups.iter().any(|g| self.human_groups.is_match(g))
        {
            IdentityKind::Human
        } else {
            fallback
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn issuer_config(extra: &str) -> OidcIssuerConfig {
        toml::from_str(&format!(
            "issuer = \"https://idp\"\naudience = \"countersign\"\njwks_url = \"https://idp/jwks\"\n\
             algorithms = [\"RS256\"]\n{extra}"
        ))
        .expect("test issuer config parses")
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn default_kind_applies_when_no_glob_matches() {
        let m = ClaimMapping::new(0, &issuer_config("default_kind = \"human\"")).unwrap();
        let id = m
            .identity(
                &obj(json!({"sub": "u1", "email": "a@x"})),
                "https://idp",
                None,
            )
            .unwrap();
        assert_eq!(id.kind, IdentityKind::Human);
        assert_eq!(id.email.as_deref(), Some("a@x"));
        let m = ClaimMapping::new(0, &issuer_config("")).unwrap();
        let id = m
            .identity(&obj(json!({"sub": "u1"})), "https://idp", None)
            .unwrap();
        assert_eq!(id.kind, IdentityKind::Workload);
    }

    #[test]
    fn human_group_glob_makes_a_person_and_workload_subject_glob_wins() {
        let m = ClaimMapping::new(
            0,
            &issuer_config("human_groups = [\"staff-*\"]\nworkload_subjects = [\"svc-*\"]"),
        )
        .unwrap();
        let alice = m
            .identity(
                &obj(json!({"sub": "alice", "groups": ["staff-eng"]})),
                "i",
                None,
            )
            .unwrap();
        assert_eq!(alice.kind, IdentityKind::Human);
        assert_eq!(alice.groups, vec!["staff-eng".to_owned()]);
        let svc = m
            .identity(
                &obj(json!({"sub": "svc-ci", "groups": ["staff-eng"]})),
                "i",
                None,
            )
            .unwrap();
        assert_eq!(svc.kind, IdentityKind::Workload);
    }

    #[test]
    fn an_email_with_invisible_or_wide_characters_is_refused() {
        let m = ClaimMapping::new(0, &issuer_config("")).unwrap();
        for email in ["alice@example.com\u{200b}", "alice\u{ff20}example.com"] {
            let r = m.identity(&obj(json!({"sub": "u", "email": email})), "i", None);
            assert!(
                matches!(&r, Err(AuthError::Malformed { reason }) if reason.contains("plain ASCII")),
                "{email:?}: {r:?}"
            );
        }
    }

    #[test]
    fn unverified_email_is_dropped() {
        let m = ClaimMapping::new(0, &issuer_config("")).unwrap();
        let id = m
            .identity(
                &obj(json!({"sub": "u", "email": "ceo@x", "email_verified": false})),
                "i",
                None,
            )
            .unwrap();
        assert_eq!(id.email, None);
        assert_eq!(id.unverified_email.as_deref(), Some("ceo@x"));
        let id = m
            .identity(
                &obj(json!({"sub": "u", "email": "ceo@x", "email_verified": "false"})),
                "i",
                None,
            )
            .unwrap();
        assert_eq!(id.email, None);
        let id = m
            .identity(
                &obj(json!({"sub": "u", "email": "ceo@x", "email_verified": "true"})),
                "i",
                None,
            )
            .unwrap();
        assert_eq!(id.email.as_deref(), Some("ceo@x"));
    }

    #[test]
    fn missing_or_non_string_subject_is_refused() {
        let m = ClaimMapping::new(0, &issuer_config("")).unwrap();
        assert_eq!(
            m.identity(&obj(json!({"email": "a@x"})), "i", None)
                .unwrap_err()
                .code(),
            "missing_claim"
        );
        assert_eq!(
            m.identity(&obj(json!({"sub": 7})), "i", None)
                .unwrap_err()
                .code(),
            "malformed"
        );
    }
}
