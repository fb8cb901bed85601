//! Configured bearer tokens, kept only as SHA-256 hashes and compared in constant time, and the SCRAM
//! verifiers of the static identities that have one.

use super::config::{parse_scram_verifier, parse_sha256, ConfigError, StaticTokenConfig};
use super::error::AuthError;
use super::scram::ScramVerifier;
use countersign_bot::{Identity, IdentityKind, RequesterChain};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// Issuer recorded for identities authenticated by a static token.
pub const STATIC_ISSUER: &str = "static";

struct Entry {
    hash: [u8; 32],
    chain: RequesterChain,
}

/// A static identity that logs in on the wire with SCRAM-SHA-256.
#[derive(Debug, Clone)]
pub struct ScramLogin {
    /// The configured verifier.
    pub verifier: ScramVerifier,
    /// Who the client is once its proof verifies.
    pub chain: RequesterChain,
}

/// The configured static tokens, ready to match presented bearers.
pub struct StaticTokens {
    entries: Vec<Entry>,
    scram: std::collections::HashMap<String, ScramLogin>,
}

impl StaticTokens {
    /// Builds the table; the config is expected to be validated, errors are still reported.
    pub fn new(configs: &[StaticTokenConfig]) -> Result<Self, ConfigError> {
        let mut entries = Vec::with_capacity(configs.len());
        let mut scram = std::collections::HashMap::new();
        for (i, cfg) in configs.iter().enumerate() {
            let me = Identity {
                issuer: STATIC_ISSUER.to_owned(),
                subject: cfg.name.clone(),
                email: cfg.email.clone(),
                unverified_email: None,
                kind: cfg.kind,
                groups: cfg.groups.clone(),
            };
            let mut chain = vec![me];
            if let Some(email) = &cfg.acts_for {
                chain.push(principal_for(email, configs));
            }
            let chain = RequesterChain(chain);
            if let Some(v) = &cfg.scram_verifier {
                let key = format!("identity.static_tokens[{i}].scram_verifier");
                let verifier = parse_scram_verifier(&key, v)?;
                scram.insert(
                    cfg.name.clone(),
                    ScramLogin {
                        verifier,
                        chain: chain.clone(),
                    },
                );
            }
            // An identity with only a SCRAM verifier has no bearer token.
            if !cfg.sha256.is_empty() {
                let hash =
                    parse_sha256(&format!("identity.static_tokens[{i}].sha256"), &cfg.sha256)?;
                entries.push(Entry { hash, chain });
            }
        }
        Ok(Self { entries, scram })
    }

    /// The SCRAM login of the static identity named `name`, if it has a verifier.
    pub fn scram_login(&self, name: &str) -> Option<&ScramLogin> {
        self.scram.get(name)
    }

    /// The chain for `token`, or [`AuthError::UnknownToken`]. Every entry is compared, so timing does not
    /// reveal which (or whether a) prefix matched.
    pub fn authenticate(&self, token: &str) -> Result<RequesterChain, AuthError> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = subtle::Choice::from(0);
        let mut index = 0u32;
        for (i, entry) in self.entries.iter().enumerate() {
            let hit = entry.hash.ct_eq(&presented);
            index.conditional_assign(&(i as u32), hit);
            found |= hit;
        }
        if bool::from(found) {
            let entry = self
                .entries
                .get(index as usize)
                .ok_or(AuthError::UnknownToken)?;
            Ok(entry.chain.clone())
        } else {
            Err(AuthError::UnknownToken)
        }
    }
}

/// The human a delegating token acts for: a configured human static identity with that e-mail when there
/// is one (to keep its groups), else a bare human known by e-mail.
fn principal_for(email: &str, configs: &[StaticTokenConfig]) -> Identity {
    let configured = configs.iter().find(|c| {
        c.kind == IdentityKind::Human
            && c.email
                .as_deref()
                .is_some_and(|e| e.trim().eq_ignore_ascii_case(email.trim()))
    });
    match configured {
        Some(c) => Identity {
            issuer: STATIC_ISSUER.to_owned(),
            subject: c.name.clone(),
            email: c.email.clone(),
            unverified_email: None,
            kind: IdentityKind::Human,
            groups: c.groups.clone(),
        },
        None => Identity {
            issuer: STATIC_ISSUER.to_owned(),
            subject: email.trim().to_owned(),
            email: Some(email.trim().to_owned()),
            unverified_email: None,
            kind: IdentityKind::Human,
            groups: Vec::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_hex(token: &str) -> String {
        hex::encode(Sha256::digest(token.as_bytes()))
    }

    fn token(name: &str, secret: &str, kind: IdentityKind) -> StaticTokenConfig {
        StaticTokenConfig {
            name: name.into(),
            sha256: hash_hex(secret),
            kind,
            email: None,
            groups: vec![],
            acts_for: None,
            scram_verifier: None,
        }
    }

    #[test]
    fn configured_token_authenticates_as_its_name() {
        let table = StaticTokens::new(&[
            token("ci-agent", "s3cret-ci", IdentityKind::Workload),
            token("ops-bot", "s3cret-ops", IdentityKind::Workload),
        ])
        .unwrap();
        let chain = table.authenticate("s3cret-ops").unwrap();
        assert_eq!(chain.0.len(), 1);
        assert_eq!(chain.0[0].subject, "ops-bot");
        assert_eq!(chain.0[0].issuer, STATIC_ISSUER);
        assert_eq!(chain.0[0].kind, IdentityKind::Workload);
    }

    #[test]
    fn wrong_token_is_unknown() {
        let table =
            StaticTokens::new(&[token("ci-agent", "s3cret-ci", IdentityKind::Workload)]).unwrap();
        assert_eq!(
            table.authenticate("s3cret-cj"),
            Err(AuthError::UnknownToken)
        );
        assert_eq!(table.authenticate(""), Err(AuthError::UnknownToken));
    }

    #[test]
    fn uppercase_hex_hash_matches_too() {
        let mut cfg = token("ci-agent", "s3cret-ci", IdentityKind::Workload);
        cfg.sha256 = cfg.sha256.to_uppercase();
        let table = StaticTokens::new(&[cfg]).unwrap();
        assert_eq!(
            table.authenticate("s3cret-ci").unwrap().0[0].subject,
            "ci-agent"
        );
    }

    #[test]
    fn acts_for_puts_the_human_last_in_the_chain() {
        let mut agent = token("deploy-agent", "agent-token", IdentityKind::Workload);
        agent.acts_for = Some("Alice@Example.com".into());
        let mut alice = token("alice", "alice-token", IdentityKind::Human);
        alice.email = Some("alice@example.com".into());
        alice.groups = vec!["dba".into()];
        let table = StaticTokens::new(&[agent, alice]).unwrap();

        let chain = table.authenticate("agent-token").unwrap();
        assert_eq!(chain.0.len(), 2);
        assert_eq!(chain.0[0].subject, "deploy-agent");
        assert_eq!(chain.0[1].subject, "alice");
        assert_eq!(chain.0[1].kind, IdentityKind::Human);
        assert_eq!(chain.0[1].groups, vec!["dba".to_owned()]);
    }

    #[test]
    fn scram_only_identity_has_a_login_but_no_bearer() {
        let mut ops = token("psql-ops", "unused", IdentityKind::Human);
        ops.sha256.clear();
        ops.scram_verifier = Some(ScramVerifier::generate("pw").to_string());
        let table =
            StaticTokens::new(&[ops, token("ci", "ci-token", IdentityKind::Workload)]).unwrap();
        let login = table.scram_login("psql-ops").unwrap();
        assert_eq!(login.chain.0[0].subject, "psql-ops");
        assert!(table.scram_login("ci").is_none());
        assert_eq!(table.authenticate(""), Err(AuthError::UnknownToken));
        assert!(table.authenticate("ci-token").is_ok());
    }

    #[test]
    fn acts_for_an_unconfigured_human_uses_the_email() {
        let mut agent = token("deploy-agent", "agent-token", IdentityKind::Workload);
        agent.acts_for = Some("bob@example.com".into());
        let table = StaticTokens::new(&[agent]).unwrap();
        let chain = table.authenticate("agent-token").unwrap();
        assert_eq!(chain.0[1].email.as_deref(), Some("bob@example.com"));
        assert!(chain.0[1].is_human());
    }
}
