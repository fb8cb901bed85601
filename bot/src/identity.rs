//! Who is asking and who is voting: identities and delegation chains.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Whether an identity is a person (may vote) or a workload (may only request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityKind {
    /// A person; may approve or deny, except their own requests.
    Human,
    /// A CI pipeline, bot or AI agent; never votes.
    Workload,
}

/// An authenticated principal, as established by the gateway's identity module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Token issuer (OIDC `iss`) or `static` for configured bearer tokens.
    pub issuer: String,
    /// Subject within the issuer (OIDC `sub`, or the static identity's name).
    pub subject: String,
    /// Verified e-mail address, when the issuer provides one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// An address the issuer sent but says it has not verified: never an identifier for voting or
    /// rules, but the person it names is still kept from approving this identity's requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unverified_email: Option<String>,
    /// Human or workload.
    pub kind: IdentityKind,
    /// IdP groups the identity belongs to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

impl Identity {
    /// The key under which this identity counts once, across every channel.
    ///
    /// Humans are keyed by their e-mail address when known (see [`canonical_email`]), so the same person
    /// arriving through Slack, e-mail and the API is one voter; otherwise by issuer and subject.
    pub fn canonical(&self) -> CanonicalId {
        match &self.email {
            Some(e) if !e.trim().is_empty() => CanonicalId(format!("email:{}", canonical_email(e))),
            _ => CanonicalId(format!(
                "sub:{}|{}",
                key_part(&self.issuer),
                key_part(&self.subject)
            )),
        }
    }

    /// A short label for messages and logs.
    pub fn display_name(&self) -> String {
        match &self.email {
            Some(e) => e.clone(),
            None => self.subject.clone(),
        }
    }

    /// True for people.
    pub fn is_human(&self) -> bool {
        self.kind == IdentityKind::Human
    }

    /// True when a (verified) e-mail address is known: the key that tells people apart across
    /// channels.
    pub fn has_email(&self) -> bool {
        self.email.as_deref().is_some_and(|e| !e.trim().is_empty())
    }
}

/// A part of a key with the characters that separate parts (`|` between issuer and subject, `<` of
/// the ` <- ` between identities) and `%` percent-encoded, so distinct identities never share a key:
/// a subject `svc <- email:alice@example.com` or `a|b` is not a chain or another issuer's subject.
/// Parts without them (the usual case) are unchanged, so keys stored earlier still match.
fn key_part(part: &str) -> std::borrow::Cow<'_, str> {
    if !part.contains(['%', '|', '<']) {
        return std::borrow::Cow::Borrowed(part);
    }
    std::borrow::Cow::Owned(
        part.replace('%', "%25")
            .replace('|', "%7C")
            .replace('<', "%3C"),
    )
}

/// An e-mail address as the mailbox it reaches: trimmed, lower-cased, without a `+tag` sub-address and
/// without a trailing dot on the domain. `Alice+ops@Example.com.` and `alice@example.com` are one person,
/// for quorum and for separation of duties alike.
pub fn canonical_email(email: &str) -> String {
    let email = email.trim().to_lowercase();
    match email.rsplit_once('@') {
        Some((local, domain)) => {
            let mailbox = local
                .split_once('+')
                .map_or(local, |(mailbox, _tag)| mailbox);
            format!("{mailbox}@{}", domain.trim_end_matches('.'))
        }
        None => email,
    }
}

/// True when `email` can key a person: printable ASCII with an `@` between non-empty parts.
///
/// People are told apart by e-mail ([`canonical_email`]). An address holding a zero-width or other
/// invisible character, a full-width `＠` or a letter from another script looks like someone else's
/// and would be a different key for the same person, so such an address is not trusted as anyone's.
pub fn is_comparable_email(email: &str) -> bool {
    let email = email.trim();
    email.bytes().all(|b| b.is_ascii_graphic())
        && email
            .rsplit_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
}

/// The stable key of one human or workload, used for separation of duties and quorum counting.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CanonicalId(pub String);

impl fmt::Display for CanonicalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who is requesting: the direct caller first, then whoever it acts for (RFC 8693 `act`), outermost last.
///
/// For a subagent acting for an agent acting for a human: `[subagent, agent, human]`.
/// Everyone in the chain is "the requester" for separation of duties.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequesterChain(pub Vec<Identity>);

impl RequesterChain {
    /// A chain of one.
    pub fn single(identity: Identity) -> Self {
        Self(vec![identity])
    }

    /// The direct caller.
    pub fn caller(&self) -> Option<&Identity> {
        self.0.first()
    }

    /// True when `who` is anyone in the chain (same canonical id, or same e-mail / subject).
    pub fn contains(&self, who: &Identity) -> bool {
        let key = who.canonical();
        self.0.iter().any(|m| {
            m.canonical() == key
                || (m.issuer == who.issuer && m.subject == who.subject)
                || matches!((&m.email, &who.email), (Some(a), Some(b)) if canonical_email(a) == canonical_email(b))
                || matches!((&m.unverified_email, &who.email), (Some(a), Some(b)) if canonical_email(a) == canonical_email(b))
        })
    }

    /// The first human in the chain known only by issuer and subject (no e-mail): reviewers are told
    /// apart by e-mail across channels, so such a person could approve their own request unnoticed.
    pub fn human_without_email(&self) -> Option<&Identity> {
        self.0.iter().find(|i| i.is_human() && !i.has_email())
    }

    /// A stable key for "the same requester" (used to let a re-sent approved statement run once, and
    /// to let a requester cancel their own request). Humans are keyed by their mailbox, as for voting;
    /// a workload always by issuer and subject, since workload tokens often carry a person's e-mail
    /// (a CI job's, a service account's) without being that person.
    pub fn key(&self) -> String {
        self.0
            .iter()
            .map(|i| {
                if i.is_human() {
                    key_part(&i.canonical().0).into_owned()
                } else {
                    format!("workload:{}|{}", key_part(&i.issuer), key_part(&i.subject))
                }
            })
            .collect::<Vec<_>>()
            .join(" <- ")
    }

    /// Human-readable chain, e.g. `subagent-7 → deploy-agent → alice@example.com`.
    pub fn display(&self) -> String {
        self.0
            .iter()
            .map(|i| i.display_name())
            .collect::<Vec<_>>()
            .join(" → ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unverified_address_on_a_requester_still_keeps_that_person_from_approving() {
        let ci = RequesterChain::single(Identity {
            issuer: "https://idp".into(),
            subject: "svc-agent".into(),
            email: None,
            unverified_email: Some("Alice+x@Example.com".into()),
            kind: IdentityKind::Workload,
            groups: vec![],
        });
        assert!(ci.contains(&human("alice@example.com")));
        assert!(!ci.contains(&human("bob@example.com")));
    }

    #[test]
    fn a_workload_carrying_a_persons_email_is_not_that_person_as_requester() {
        let alice = RequesterChain::single(human("alice@example.com"));
        let ci = RequesterChain::single(Identity {
            issuer: "https://idp".into(),
            subject: "svc-ci-job-123".into(),
            email: Some("alice@example.com".into()),
            unverified_email: None,
            kind: IdentityKind::Workload,
            groups: vec![],
        });
        assert_ne!(alice.key(), ci.key());
        // Alice through another channel or token is still alice.
        let mut again = human("Alice+ops@Example.com");
        again.subject = "other".into();
        assert_eq!(alice.key(), RequesterChain::single(again).key());
        // For separation of duties the workload still counts as her (stricter is safe).
        assert!(alice.contains(&ci.0[0]));
    }

    fn human(email: &str) -> Identity {
        Identity {
            issuer: "https://idp".into(),
            subject: format!("sub-{email}"),
            email: Some(email.into()),
            unverified_email: None,
            kind: IdentityKind::Human,
            groups: vec![],
        }
    }

    #[test]
    fn addresses_with_invisible_wide_or_foreign_characters_cannot_key_a_person() {
        for ok in [
            "alice@example.com",
            " Alice+ops@Example.com. ",
            "a.b-c_d@x.co",
        ] {
            assert!(is_comparable_email(ok), "{ok:?} keys a person");
        }
        for bad in [
            "alice@example.com\u{200b}",
            "ali\u{200d}ce@example.com",
            "alice\u{ff20}example.com",
            "\u{430}lice@example.com",
            "alice @example.com",
            "alice@exa\tmple.com",
            "alice@",
            "@example.com",
            "alice",
            "",
        ] {
            assert!(
                !is_comparable_email(bad),
                "{bad:?} refused as a person's key"
            );
        }
    }

    #[test]
    fn canonical_id_ignores_case_and_issuer_for_email() {
        let mut a = human("Alice@Example.com");
        let b = human("alice@example.com");
        a.issuer = "static".into();
        assert_eq!(a.canonical(), b.canonical());
    }

    #[test]
    fn a_sub_addressed_mailbox_is_the_same_person() {
        let plain = human("alice@example.com");
        for same in [
            "Alice+ops@Example.com",
            " alice+a+b@example.com ",
            "alice@example.com.",
        ] {
            assert_eq!(human(same).canonical(), plain.canonical(), "{same}");
            assert!(
                RequesterChain::single(plain.clone()).contains(&human(same)),
                "{same}"
            );
        }
        assert_ne!(human("alicia@example.com").canonical(), plain.canonical());
        assert_ne!(human("alice@example.org").canonical(), plain.canonical());
    }

    #[test]
    fn a_subject_spelling_a_chain_or_a_split_does_not_share_its_key() {
        let workload = |issuer: &str, subject: &str| Identity {
            issuer: issuer.into(),
            subject: subject.into(),
            email: None,
            unverified_email: None,
            kind: IdentityKind::Workload,
            groups: vec![],
        };
        let chain = RequesterChain(vec![
            workload("https://idp", "svc-a"),
            human("alice@example.com"),
        ]);
        let forged =
            RequesterChain::single(workload("https://idp", "svc-a <- email:alice@example.com"));
        assert_ne!(chain.key(), forged.key());
        // `|` splits issuer from subject: moving it between the two is another identity.
        assert_ne!(
            RequesterChain::single(workload("a|b", "c")).key(),
            RequesterChain::single(workload("a", "b|c")).key()
        );
        let nameless = |issuer: &str, subject: &str| Identity {
            kind: IdentityKind::Human,
            ..workload(issuer, subject)
        };
        assert_ne!(
            nameless("a|b", "c").canonical(),
            nameless("a", "b|c").canonical()
        );
        // Ordinary keys are as they always were (requests stored earlier still match).
        assert_eq!(
            chain.key(),
            "workload:https://idp|svc-a <- email:alice@example.com"
        );
        assert_eq!(
            RequesterChain::single(workload("iss", "100%|x")).key(),
            "workload:iss|100%25%7Cx"
        );
    }

    #[test]
    fn chain_contains_the_human_behind_the_agent() {
        let agent = Identity {
            issuer: "https://idp".into(),
            subject: "agent".into(),
            email: None,
            unverified_email: None,
            kind: IdentityKind::Workload,
            groups: vec![],
        };
        let chain = RequesterChain(vec![agent, human("alice@example.com")]);
        assert!(chain.contains(&human("ALICE@example.com")));
        assert!(!chain.contains(&human("bob@example.com")));
    }
}
