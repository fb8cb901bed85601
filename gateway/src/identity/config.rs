//! The `[identity]` section of the configuration file, and its validation.

use super::static_tokens::STATIC_ISSUER;
use countersign_bot::IdentityKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde::Deserialize;
use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

/// Largest accepted `clock_skew`: more would keep expired tokens alive for too long.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// Smallest accepted `jwks_min_refetch`: below it, every token with a made-up `kid` would make the
/// gateway fetch the JWKS again, turning forged tokens into requests to the IdP.
pub const MIN_JWKS_REFETCH: Duration = Duration::from_secs(1);

/// `[identity]`: how callers prove who they are.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Leeway for `exp` / `nbf`, e.g. `"30s"`; at most five minutes.
    #[serde(default = "default_clock_skew")]
    pub clock_skew: String,
    /// Trusted OIDC issuers (`[[identity.oidc]]`).
    #[serde(default)]
    pub oidc: Vec<OidcIssuerConfig>,
    /// Configured bearer tokens, stored as SHA-256 hashes (`[[identity.static_tokens]]`).
    #[serde(default)]
    pub static_tokens: Vec<StaticTokenConfig>,
}

impl IdentityConfig {
    /// The issuers identities can come from: `static` when static tokens are configured, then each
    /// OIDC issuer. Allow rules match requesters from these only.
    pub fn issuers(&self) -> Vec<String> {
        let statics = (!self.static_tokens.is_empty()).then(|| STATIC_ISSUER.to_string());
        statics
            .into_iter()
            .chain(self.oidc.iter().map(|o| o.issuer.clone()))
            .collect()
    }
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            clock_skew: default_clock_skew(),
            oidc: Vec::new(),
            static_tokens: Vec::new(),
        }
    }
}

fn default_clock_skew() -> String {
    "30s".to_owned()
}

/// One trusted OIDC issuer.
///
/// Kind rule, in order: a subject matching `workload_subjects` is a workload; else a subject matching
/// `human_subjects` or a group matching `human_groups` is a human; else `default_kind`. Delegating actors
/// (RFC 8693 `act`) fall back to workload rather than `default_kind`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcIssuerConfig {
    /// Expected `iss`, compared exactly.
    pub issuer: String,
    /// Expected `aud` (the token must list it).
    pub audience: String,
    /// Where the issuer publishes its JWKS; or set `discovery = true`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Fetch `{issuer}/.well-known/openid-configuration` and use its `jwks_uri`.
    #[serde(default)]
    pub discovery: bool,
    /// Accepted signature algorithms (asymmetric only), e.g. `["RS256"]`.
    pub algorithms: Vec<String>,
    /// Claim holding the subject.
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// Claim holding the e-mail address (dropped when `email_verified` is `false`).
    #[serde(default = "default_email_claim")]
    pub email_claim: String,
    /// Claim holding the groups (array of strings, or one string).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Kind of a token subject that no glob below matches.
    #[serde(default = "default_kind")]
    pub default_kind: IdentityKind,
    /// Subject globs that are always people.
    #[serde(default)]
    pub human_subjects: Vec<String>,
    /// Group globs whose members are people.
    #[serde(default)]
    pub human_groups: Vec<String>,
    /// Subject globs that are always workloads (wins over the human globs).
    #[serde(default)]
    pub workload_subjects: Vec<String>,
    /// Minimum time between two JWKS fetches caused by unknown `kid`s, e.g. `"10s"`.
    #[serde(default = "default_jwks_refetch")]
    pub jwks_min_refetch: String,
}

fn default_subject_claim() -> String {
    "sub".to_owned()
}
fn default_email_claim() -> String {
    "email".to_owned()
}
fn default_groups_claim() -> String {
    "groups".to_owned()
}
fn default_kind() -> IdentityKind {
    IdentityKind::Workload
}
fn default_jwks_refetch() -> String {
    "10s".to_owned()
}

/// One configured bearer token; issuer `static`, subject `name`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticTokenConfig {
    /// Unique name; becomes the subject.
    pub name: String,
    /// Hex SHA-256 of the token (either case); the token itself is never stored. May be left out when
    /// `scram_verifier` is set (the identity then logs in on the wire with SCRAM only).
    #[serde(default)]
    pub sha256: String,
    /// Human or workload.
    pub kind: IdentityKind,
    /// E-mail of the identity, if any.
    #[serde(default)]
    pub email: Option<String>,
    /// Groups of the identity.
    #[serde(default)]
    pub groups: Vec<String>,
    /// E-mail of the human this identity acts for (delegation).
    #[serde(default)]
    pub acts_for: Option<String>,
    /// SCRAM-SHA-256 verifier (`SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`, as in `pg_authid`):
    /// a wire client whose startup `user` is this identity's `name` logs in with SCRAM against it.
    #[serde(default)]
    pub scram_verifier: Option<String>,
}

/// A configuration mistake in `[identity]`; the message names the key and the fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A duration that does not parse.
    #[error(
        "identity: `{key}` = {value:?} is not a duration; write e.g. \"30s\", \"2m\" or \"500ms\""
    )]
    BadDuration { key: String, value: String },
    /// `clock_skew` above [`MAX_CLOCK_SKEW`].
    #[error("identity: `clock_skew` = {value:?} exceeds 5m; lower it (\"30s\" is typical) and fix the clocks instead")]
    SkewTooLarge { value: String },
    /// `jwks_min_refetch` below [`MIN_JWKS_REFETCH`].
    #[error("identity: `{key}` = {value:?} is below 1s, so tokens with unknown key ids could make the gateway refetch the JWKS without limit; set it to \"10s\" (the default) or at least \"1s\"")]
    RefetchTooOften { key: String, value: String },
    /// A key that must not be empty.
    #[error("identity: `{key}` is empty; set it")]
    Empty { key: String },
    /// An address that cannot key a person (see `countersign_bot::identity::is_comparable_email`).
    #[error("identity: `{key}` = {value:?} is not a plain ASCII e-mail address (name@domain, no spaces, invisible or non-ASCII characters); people are told apart by e-mail, so write the ASCII address")]
    NotAnEmail { key: String, value: String },
    /// An OIDC issuer named like an identity source the gateway itself vouches for.
    #[error("identity: `{key}` = {value:?} is the name the gateway gives its own identities (static tokens, Slack users, e-mail links), so its tokens could pass as theirs; set it to the IdP's issuer URL (the `iss` its tokens carry)")]
    ReservedIssuer { key: String, value: String },
    /// Two issuers with the same `issuer`.
    #[error(
        "identity: issuer {issuer:?} is configured twice in [[identity.oidc]]; merge the entries"
    )]
    DuplicateIssuer { issuer: String },
    /// Neither or both of `jwks_url` / `discovery`.
    #[error(
        "identity: `{key}` needs exactly one of `jwks_url = \"https://…\"` or `discovery = true`"
    )]
    JwksSource { key: String },
    /// A URL that is not absolute https (http is accepted for loopback only).
    #[error("identity: `{key}` = {value:?} must be an absolute https:// URL (http only for 127.0.0.1/localhost)")]
    BadUrl { key: String, value: String },
    /// An algorithm name jsonwebtoken does not know.
    #[error("identity: `{key}` lists unknown algorithm {alg:?}; use RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA")]
    UnknownAlgorithm { key: String, alg: String },
    /// `none`, or a shared-secret algorithm for a public-key issuer.
    #[error("identity: `{key}` lists {alg:?}, which is never accepted for an OIDC issuer; use an asymmetric algorithm such as RS256 or ES256")]
    ForbiddenAlgorithm { key: String, alg: String },
    /// An invalid glob.
    #[error("identity: `{key}` has an invalid glob {glob:?} ({reason}); fix the pattern")]
    BadGlob {
        key: String,
        glob: String,
        reason: String,
    },
    /// `sha256` not 64 hex digits.
    #[error("identity: `{key}` must be 64 hex digits (the SHA-256 of the token, e.g. `printf %s \"$TOKEN\" | sha256sum`)")]
    BadHash { key: String },
    /// Neither `sha256` nor `scram_verifier`.
    #[error("identity: `{key}` has no credential; set `sha256` (from `countersign hash-token`) or `scram_verifier` (from `countersign scram-verifier`)")]
    NoCredential { key: String },
    /// A `scram_verifier` that does not parse.
    #[error("identity: `{key}` is not a SCRAM-SHA-256 verifier: {reason}; create one with `countersign scram-verifier` (reads the password on stdin) or copy `rolpassword` from pg_authid")]
    BadScramVerifier { key: String, reason: String },
    /// Two static tokens with the same name.
    #[error("identity: static token name {name:?} is used twice; give each token its own name")]
    DuplicateName { name: String },
    /// Two static tokens with the same hash.
    #[error("identity: static tokens {first:?} and {second:?} have the same sha256; issue a distinct token for each")]
    DuplicateHash { first: String, second: String },
    /// `sha256` is the hash of the empty string (a hash of nothing, e.g. of an unset variable).
    #[error("identity: `{key}` is the SHA-256 of an empty token (e.g. the hash of an unset variable); hash the real token with `countersign hash-token`")]
    EmptyTokenHash { key: String },
}

/// SHA-256 of the empty string.
const EMPTY_SHA256: [u8; 32] = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

impl IdentityConfig {
    /// Clock skew as a duration, validated.
    pub fn clock_skew(&self) -> Result<Duration, ConfigError> {
        let skew = parse_duration("identity.clock_skew", &self.clock_skew)?;
        if skew > MAX_CLOCK_SKEW {
            return Err(ConfigError::SkewTooLarge {
                value: self.clock_skew.clone(),
            });
        }
        Ok(skew)
    }

    /// Checks everything that can be checked without the network.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.clock_skew()?;
        let mut issuers = HashSet::new();
        for (i, oidc) in self.oidc.iter().enumerate() {
            oidc.validate(i)?;
            if !issuers.insert(oidc.issuer.as_str()) {
                return Err(ConfigError::DuplicateIssuer {
                    issuer: oidc.issuer.clone(),
                });
            }
        }
        let mut names = HashSet::new();
        let mut hashes: Vec<([u8; 32], &str)> = Vec::new();
        for (i, token) in self.static_tokens.iter().enumerate() {
            let key = format!("identity.static_tokens[{i}]");
            if token.name.trim().is_empty() {
                return Err(ConfigError::Empty {
                    key: format!("{key}.name"),
                });
            }
            if !names.insert(token.name.as_str()) {
                return Err(ConfigError::DuplicateName {
                    name: token.name.clone(),
                });
            }
            if token.sha256.is_empty() && token.scram_verifier.is_none() {
                return Err(ConfigError::NoCredential { key });
            }
            if let Some(v) = &token.scram_verifier {
                parse_scram_verifier(&format!("{key}.scram_verifier"), v)?;
            }
            if !token.sha256.is_empty() {
                let hash = parse_sha256(&format!("{key}.sha256"), &token.sha256)?;
                if hash == EMPTY_SHA256 {
                    return Err(ConfigError::EmptyTokenHash {
                        key: format!("{key}.sha256"),
                    });
                }
                if let Some((_, first)) = hashes.iter().find(|(h, _)| *h == hash) {
                    return Err(ConfigError::DuplicateHash {
                        first: (*first).to_owned(),
                        second: token.name.clone(),
                    });
                }
                hashes.push((hash, &token.name));
            }
            if matches!(&token.acts_for, Some(e) if e.trim().is_empty()) {
                return Err(ConfigError::Empty {
                    key: format!("{key}.acts_for"),
                });
            }
            for (field, value) in [("email", &token.email), ("acts_for", &token.acts_for)] {
                if let Some(value) = value.as_ref().filter(|v| !v.trim().is_empty()) {
                    if !countersign_bot::identity::is_comparable_email(value) {
                        return Err(ConfigError::NotAnEmail {
                            key: format!("{key}.{field}"),
                            value: value.clone(),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// Issuer names of identities the gateway establishes itself: static tokens (`static`), Slack clicks
/// (`slack`) and e-mail approval links (`email`). An OIDC issuer with one of these names would mint
/// identities indistinguishable from them.
const RESERVED_ISSUERS: [&str; 3] = ["static", "slack", "email"];

impl OidcIssuerConfig {
    fn validate(&self, index: usize) -> Result<(), ConfigError> {
        let key = format!("identity.oidc[{index}]");
        if self.issuer.trim().is_empty() {
            return Err(ConfigError::Empty {
                key: format!("{key}.issuer"),
            });
        }
        if RESERVED_ISSUERS.contains(&self.issuer.trim()) {
            return Err(ConfigError::ReservedIssuer {
                key: format!("{key}.issuer"),
                value: self.issuer.clone(),
            });
        }
        if self.audience.trim().is_empty() {
            return Err(ConfigError::Empty {
                key: format!("{key}.audience"),
            });
        }
        match (&self.jwks_url, self.discovery) {
            (Some(url), false) => {
                checked_url(&format!("{key}.jwks_url"), url)?;
            }
            (None, true) => {
                checked_url(&format!("{key}.issuer"), &self.issuer)?;
            }
            _ => return Err(ConfigError::JwksSource { key }),
        }
        self.pinned_algorithms(index)?;
        for (field, globs) in [
            ("human_subjects", &self.human_subjects),
            ("human_groups", &self.human_groups),
            ("workload_subjects", &self.workload_subjects),
        ] {
            build_globs(&format!("{key}.{field}"), globs)?;
        }
        for (field, claim) in [
            ("subject_claim", &self.subject_claim),
            ("email_claim", &self.email_claim),
            ("groups_claim", &self.groups_claim),
        ] {
            if claim.trim().is_empty() {
                return Err(ConfigError::Empty {
                    key: format!("{key}.{field}"),
                });
            }
        }
        let refetch_key = format!("{key}.jwks_min_refetch");
        if parse_duration(&refetch_key, &self.jwks_min_refetch)? < MIN_JWKS_REFETCH {
            return Err(ConfigError::RefetchTooOften {
                key: refetch_key,
                value: self.jwks_min_refetch.clone(),
            });
        }
        Ok(())
    }

    /// The pinned algorithms; never `none`, never HMAC.
    pub(crate) fn pinned_algorithms(&self, index: usize) -> Result<Vec<Algorithm>, ConfigError> {
        let key = format!("identity.oidc[{index}].algorithms");
        if self.algorithms.is_empty() {
            return Err(ConfigError::Empty { key });
        }
        let mut out = Vec::new();
        for name in &self.algorithms {
            if name.eq_ignore_ascii_case("none") {
                return Err(ConfigError::ForbiddenAlgorithm {
                    key,
                    alg: name.clone(),
                });
            }
            let alg = Algorithm::from_str(name).map_err(|_| ConfigError::UnknownAlgorithm {
                key: key.clone(),
                alg: name.clone(),
            })?;
            if alg.family() == AlgorithmFamily::Hmac {
                return Err(ConfigError::ForbiddenAlgorithm {
                    key,
                    alg: name.clone(),
                });
            }
            out.push(alg);
        }
        Ok(out)
    }
}

/// Parses `"30s"`, `"5m"`, `"500ms"`, `"1h"` (the shared grammar of [`countersign_bot::duration`]).
pub(crate) fn parse_duration(key: &str, value: &str) -> Result<Duration, ConfigError> {
    countersign_bot::duration::parse_duration(value).map_err(|_| ConfigError::BadDuration {
        key: key.to_owned(),
        value: value.to_owned(),
    })
}

/// Parses a configured SCRAM-SHA-256 verifier; the error names `key`.
pub(crate) fn parse_scram_verifier(
    key: &str,
    text: &str,
) -> Result<super::scram::ScramVerifier, ConfigError> {
    text.parse().map_err(
        |e: super::scram::VerifierError| ConfigError::BadScramVerifier {
            key: key.to_owned(),
            reason: e.to_string(),
        },
    )
}

/// Decodes a hex SHA-256 (either case).
pub(crate) fn parse_sha256(key: &str, hex_digest: &str) -> Result<[u8; 32], ConfigError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_digest.trim(), &mut out).map_err(|_| ConfigError::BadHash {
        key: key.to_owned(),
    })?;
    Ok(out)
}

/// Accepts https anywhere and http on loopback only (tests, sidecar IdPs).
pub(crate) fn checked_url(key: &str, value: &str) -> Result<reqwest::Url, ConfigError> {
    let bad = || ConfigError::BadUrl {
        key: key.to_owned(),
        value: value.to_owned(),
    };
    let url = reqwest::Url::parse(value).map_err(|_| bad())?;
    let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        _ => Err(bad()),
    }
}

pub(crate) fn build_globs(key: &str, globs: &[String]) -> Result<globset::GlobSet, ConfigError> {
    let mut builder = globset::GlobSetBuilder::new();
    for glob in globs {
        let compiled = globset::Glob::new(glob).map_err(|e| ConfigError::BadGlob {
            key: key.to_owned(),
            glob: glob.clone(),
            reason: e.kind().to_string(),
        })?;
        builder.add(compiled);
    }
    builder.build().map_err(|e| ConfigError::BadGlob {
        key: key.to_owned(),
        glob: String::new(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn parse(text: &str) -> IdentityConfig {
        #[derive(Deserialize)]
        struct File {
            identity: IdentityConfig,
        }
        toml::from_str::<File>(text)
            .expect("test config parses")
            .identity
    }

    fn oidc(extra: &str) -> String {
        format!(
            "[identity]\n[[identity.oidc]]\nissuer = \"https://idp.example.com\"\naudience = \"countersign\"\n{extra}\n"
        )
    }

    #[test]
    fn full_example_parses_and_validates() {
        let cfg = parse(&format!(
            r#"
[identity]
clock_skew = "30s"
[[identity.oidc]]
issuer = "https://idp.example.com"
audience = "countersign"
jwks_url = "https://idp.example.com/.well-known/jwks.json"
algorithms = ["RS256", "ES256"]
human_groups = ["staff-*"]
[[identity.static_tokens]]
name = "ci-agent"
sha256 = "{HASH}"
kind = "workload"
acts_for = "alice@example.com"
"#
        ));
        assert_eq!(cfg.validate(), Ok(()));
        assert_eq!(cfg.oidc[0].default_kind, IdentityKind::Workload);
        assert_eq!(cfg.oidc[0].subject_claim, "sub");
        assert_eq!(cfg.clock_skew(), Ok(Duration::from_secs(30)));
    }

    #[test]
    fn unknown_keys_are_refused() {
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct File {
            identity: IdentityConfig,
        }
        let err = toml::from_str::<File>("[identity]\nclock_skwe = \"1s\"\n").unwrap_err();
        assert!(err.to_string().contains("clock_skwe"), "{err}");
    }

    #[test]
    fn alg_none_is_refused() {
        let cfg = parse(&oidc(
            "jwks_url = \"https://idp.example.com/jwks\"\nalgorithms = [\"none\"]",
        ));
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::ForbiddenAlgorithm { .. })
        ));
    }

    #[test]
    fn hs256_is_refused_for_oidc_issuers() {
        let cfg = parse(&oidc(
            "jwks_url = \"https://idp.example.com/jwks\"\nalgorithms = [\"RS256\", \"HS256\"]",
        ));
        let err = cfg.validate().unwrap_err();
        assert!(matches!(err, ConfigError::ForbiddenAlgorithm { ref alg, .. } if alg == "HS256"));
        assert!(err.to_string().contains("identity.oidc[0].algorithms"));
    }

    #[test]
    fn issuer_needs_exactly_one_jwks_source() {
        let neither = parse(&oidc("algorithms = [\"RS256\"]"));
        assert!(matches!(
            neither.validate(),
            Err(ConfigError::JwksSource { .. })
        ));
        let both = parse(&oidc("jwks_url = \"https://idp.example.com/jwks\"\ndiscovery = true\nalgorithms = [\"RS256\"]"));
        assert!(matches!(
            both.validate(),
            Err(ConfigError::JwksSource { .. })
        ));
        let discovery = parse(&oidc("discovery = true\nalgorithms = [\"RS256\"]"));
        assert_eq!(discovery.validate(), Ok(()));
    }

    #[test]
    fn plain_http_jwks_url_is_refused_off_loopback() {
        let cfg = parse(&oidc(
            "jwks_url = \"http://idp.example.com/jwks\"\nalgorithms = [\"RS256\"]",
        ));
        assert!(matches!(cfg.validate(), Err(ConfigError::BadUrl { .. })));
        let local = parse(&oidc(
            "jwks_url = \"http://127.0.0.1:8080/jwks\"\nalgorithms = [\"RS256\"]",
        ));
        assert_eq!(local.validate(), Ok(()));
    }

    #[test]
    fn jwks_refetch_interval_below_one_second_is_refused() {
        for value in ["0s", "500ms"] {
            let cfg = parse(&oidc(&format!(
                "jwks_url = \"https://idp.example.com/jwks\"\nalgorithms = [\"RS256\"]\njwks_min_refetch = \"{value}\""
            )));
            let err = cfg.validate().unwrap_err();
            assert!(
                matches!(&err, ConfigError::RefetchTooOften { key, .. } if key == "identity.oidc[0].jwks_min_refetch"),
                "{value}: {err:?}"
            );
        }
        let cfg = parse(&oidc(
            "jwks_url = \"https://idp.example.com/jwks\"\nalgorithms = [\"RS256\"]\njwks_min_refetch = \"1s\"",
        ));
        assert_eq!(cfg.validate(), Ok(()));
    }

    #[test]
    fn clock_skew_above_five_minutes_is_refused() {
        let cfg = parse("[identity]\nclock_skew = \"6m\"\n");
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::SkewTooLarge { .. })
        ));
        let cfg = parse("[identity]\nclock_skew = \"5m\"\n");
        assert_eq!(cfg.validate(), Ok(()));
        let cfg = parse("[identity]\nclock_skew = \"soon\"\n");
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::BadDuration { .. })
        ));
    }

    #[test]
    fn bad_hex_in_static_token_is_refused_with_the_key() {
        let cfg = parse("[identity]\n[[identity.static_tokens]]\nname = \"a\"\nsha256 = \"zz\"\nkind = \"human\"\n");
        let err = cfg.validate().unwrap_err();
        assert_eq!(
            err,
            ConfigError::BadHash {
                key: "identity.static_tokens[0].sha256".into()
            }
        );
    }

    #[test]
    fn duplicate_static_token_names_and_hashes_are_refused() {
        let other = "a".repeat(64);
        let names = parse(&format!(
            "[identity]\n[[identity.static_tokens]]\nname = \"a\"\nsha256 = \"{HASH}\"\nkind = \"human\"\n\
             [[identity.static_tokens]]\nname = \"a\"\nsha256 = \"{other}\"\nkind = \"human\"\n"
        ));
        assert!(matches!(
            names.validate(),
            Err(ConfigError::DuplicateName { .. })
        ));
        let hashes = parse(&format!(
            "[identity]\n[[identity.static_tokens]]\nname = \"a\"\nsha256 = \"{HASH}\"\nkind = \"human\"\n\
             [[identity.static_tokens]]\nname = \"b\"\nsha256 = \"{}\"\nkind = \"human\"\n",
            HASH.to_uppercase()
        ));
        assert!(matches!(
            hashes.validate(),
            Err(ConfigError::DuplicateHash { .. })
        ));
    }

    #[test]
    fn static_token_addresses_must_be_plain_ascii_emails() {
        for (field, value) in [
            ("email", "alice@example.com\u{200b}"),
            ("acts_for", "\u{430}lice@example.com"),
            ("email", "alice"),
        ] {
            let cfg = parse(&format!(
                "[identity]\n[[identity.static_tokens]]\nname = \"a\"\nsha256 = \"{HASH}\"\n\
                 kind = \"workload\"\n{field} = \"{value}\"\n"
            ));
            let err = cfg.validate().unwrap_err();
            assert!(
                matches!(&err, ConfigError::NotAnEmail { key, .. } if key == &format!("identity.static_tokens[0].{field}")),
                "{field} = {value:?}: {err}"
            );
        }
    }

    #[test]
    fn scram_verifier_is_validated_with_its_key_and_may_replace_the_hash() {
        let v = "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";
        let ok = parse(&format!(
            "[identity]\n[[identity.static_tokens]]\nname = \"psql-ops\"\nkind = \"human\"\nscram_verifier = \"{v}\"\n"
        ));
        assert_eq!(ok.validate(), Ok(()));
        let bad = parse(&format!(
            "[identity]\n[[identity.static_tokens]]\nname = \"a\"\nsha256 = \"{HASH}\"\nkind = \"human\"\nscram_verifier = \"md5deadbeef\"\n"
        ));
        let err = bad.validate().unwrap_err();
        assert!(
            matches!(&err, ConfigError::BadScramVerifier { key, .. } if key == "identity.static_tokens[0].scram_verifier"),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("countersign scram-verifier"),
            "{err}"
        );
        let none =
            parse("[identity]\n[[identity.static_tokens]]\nname = \"a\"\nkind = \"human\"\n");
        assert!(matches!(
            none.validate(),
            Err(ConfigError::NoCredential { .. })
        ));
    }

    #[test]
    fn the_hash_of_an_empty_token_is_refused() {
        use sha2::Digest;
        assert_eq!(sha2::Sha256::digest(b"")[..], EMPTY_SHA256);
        let empty = hex::encode(EMPTY_SHA256);
        let err = parse(&format!(
            "[identity]\n[[identity.static_tokens]]\nname = \"a\"\nsha256 = \"{empty}\"\nkind = \"human\"\n"
        ))
        .validate()
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("identity.static_tokens[0].sha256") && err.contains("empty token"),
            "{err}"
        );
    }

    #[test]
    fn issuers_named_like_the_gateways_own_identities_are_refused() {
        for name in RESERVED_ISSUERS {
            let toml = format!("[[identity.oidc]]\nissuer = \"{name}\"\naudience = \"a\"\njwks_url = \"https://idp/j\"\nalgorithms = [\"RS256\"]\n");
            let err = parse(&format!("[identity]\n{toml}"))
                .validate()
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("identity.oidc[0].issuer") && err.contains("issuer URL"),
                "{err}"
            );
        }
    }

    #[test]
    fn duplicate_issuers_are_refused() {
        let one = "[[identity.oidc]]\nissuer = \"https://idp\"\naudience = \"a\"\njwks_url = \"https://idp/j\"\nalgorithms = [\"RS256\"]\n";
        let cfg = parse(&format!("[identity]\n{one}{one}"));
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::DuplicateIssuer { .. })
        ));
    }
}
