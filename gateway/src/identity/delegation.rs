//! RFC 8693 `act` claims → requester chain.
//!
//! In a token, `sub` is the principal on whose behalf the call is made, the top-level `act` is the
//! current actor and deeper `act`s are prior actors. Our chain is direct caller first:
//! `[act.sub, act.act.sub, …, sub]`.

use super::claims::ClaimMapping;
use super::error::AuthError;
use super::static_tokens::STATIC_ISSUER;
use countersign_bot::{IdentityKind, RequesterChain};
use serde_json::{Map, Value};

/// Issuer names the gateway gives identities it proves itself (Slack users, e-mail approval links).
const RESERVED: [&str; 2] = ["slack", "email"];

/// Most actors accepted in one chain; deeper nesting is refused rather than truncated.
pub const MAX_ACTORS: usize = 8;

/// Builds the chain from verified claims of a token issued by `issuer`; `vouched_elsewhere` tells
/// which other issuers the gateway trusts itself (an actor of theirs is proven by their tokens only).
pub fn requester_chain(
    claims: &Map<String, Value>,
    issuer: &str,
    mapping: &ClaimMapping,
    vouched_elsewhere: impl Fn(&str) -> bool,
) -> Result<RequesterChain, AuthError> {
    let principal = mapping.identity(claims, issuer, None)?;
    let mut actors = Vec::new();
    let mut next = claims.get("act");
    while let Some(act) = next {
        let act = act
            .as_object()
            .ok_or_else(|| AuthError::malformed("the act claim is not an object"))?;
        if actors.len() == MAX_ACTORS {
            return Err(AuthError::DelegationTooDeep { max: MAX_ACTORS });
        }
        // An actor from another issuer keeps its own `iss`; the signing issuer vouches for it either way.
        // But not for configured static identities: those are proven by their own tokens only, and an
        // actor named `static|<name>` would otherwise share their requester key (and so reuse, claim or
        // cancel their requests).
        // The same goes for another configured issuer's identities, and the names the gateway gives
        // its own (Slack users, e-mail links): a token of issuer A naming an actor of issuer B would
        // pass B's allow rules and share B's workload's requester key.
        let actor_issuer = match act.get("iss") {
            Some(Value::String(s)) if s == STATIC_ISSUER => {
                return Err(AuthError::malformed(
                    "an act claim names the issuer \"static\", which is reserved for configured static tokens; have the IdP name the actor's real issuer",
                ))
            }
            Some(Value::String(s)) if s != issuer && (vouched_elsewhere(s) || RESERVED.contains(&s.as_str())) => {
                return Err(AuthError::malformed(
                    "an act claim names an actor of another issuer the gateway trusts (or one of its own: slack, email), which only that issuer's tokens prove; present that issuer's token",
                ))
            }
            Some(Value::String(s)) => s.as_str(),
            _ => issuer,
        };
        actors.push(mapping.identity(act, actor_issuer, Some(IdentityKind::Workload))?);
        next = act.get("act");
    }
    actors.push(principal);
    Ok(RequesterChain(actors))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::claims::tests::issuer_config;
    use serde_json::json;

    fn mapping() -> ClaimMapping {
        ClaimMapping::new(0, &issuer_config("human_subjects = [\"user:*\"]")).unwrap()
    }

    /// The chain of a token from `https://idp`, where `https://other-idp` is trusted too.
    fn chain_of(claims: &Value) -> Result<RequesterChain, AuthError> {
        requester_chain(
            claims.as_object().unwrap(),
            "https://idp",
            &mapping(),
            |i| i == "https://other-idp",
        )
    }

    #[test]
    fn an_actor_of_another_trusted_issuer_or_a_gateway_issuer_is_refused() {
        for iss in ["https://other-idp", "slack", "email", "static"] {
            let claims = json!({"sub": "svc-random", "act": {"sub": "svc-deploy", "iss": iss}});
            let err = chain_of(&claims).unwrap_err();
            assert!(matches!(err, AuthError::Malformed { .. }), "{iss}: {err:?}");
        }
        // Its own issuer, or one the gateway does not trust (an allow rule never counts it).
        for iss in ["https://idp", "https://agents"] {
            let claims = json!({"sub": "svc-random", "act": {"sub": "svc-deploy", "iss": iss}});
            assert!(chain_of(&claims).is_ok());
        }
    }

    #[test]
    fn nested_act_orders_current_actor_first_and_principal_last() {
        let claims = json!({
            "sub": "user:alice", "email": "alice@example.com",
            "act": {"sub": "subagent-7", "act": {"sub": "deploy-agent", "iss": "https://agents"}}
        });
        let chain = chain_of(&claims).unwrap();
        let subjects: Vec<_> = chain.0.iter().map(|i| i.subject.as_str()).collect();
        assert_eq!(subjects, ["subagent-7", "deploy-agent", "user:alice"]);
        let kinds: Vec<_> = chain.0.iter().map(|i| i.kind).collect();
        assert_eq!(
            kinds,
            [
                IdentityKind::Workload,
                IdentityKind::Workload,
                IdentityKind::Human
            ]
        );
        assert_eq!(chain.0[1].issuer, "https://agents");
        assert_eq!(chain.0[0].issuer, "https://idp");
    }

    #[test]
    fn actor_matching_the_human_rule_is_a_person() {
        let claims = json!({"sub": "svc-report", "act": {"sub": "user:bob"}});
        let chain = chain_of(&claims).unwrap();
        assert_eq!(chain.0[0].kind, IdentityKind::Human);
        assert_eq!(chain.0[1].kind, IdentityKind::Workload);
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_refused() {
        let mut act = json!({"sub": "actor-last"});
        for i in 0..MAX_ACTORS {
            act = json!({"sub": format!("actor-{i}"), "act": act});
        }
        let claims = json!({"sub": "user:alice", "act": act});
        let err = chain_of(&claims).unwrap_err();
        assert_eq!(err, AuthError::DelegationTooDeep { max: MAX_ACTORS });
    }

    #[test]
    fn nesting_at_the_limit_is_accepted() {
        let mut act = json!({"sub": "actor-last"});
        for i in 0..MAX_ACTORS - 1 {
            act = json!({"sub": format!("actor-{i}"), "act": act});
        }
        let claims = json!({"sub": "user:alice", "act": act});
        let chain = chain_of(&claims).unwrap();
        assert_eq!(chain.0.len(), MAX_ACTORS + 1);
    }

    #[test]
    fn actor_claiming_the_static_issuer_is_refused() {
        // Would be keyed `sub:static|agent <- email:alice@example.com`, exactly like the configured
        // static agent acting for alice.
        let claims = json!({
            "sub": "user:alice", "email": "alice@example.com",
            "act": {"sub": "agent", "iss": "static"}
        });
        let err = chain_of(&claims).unwrap_err();
        assert_eq!(err.code(), "malformed");
    }

    #[test]
    fn act_that_is_not_an_object_is_malformed() {
        let claims = json!({"sub": "user:alice", "act": "agent"});
        let err = chain_of(&claims).unwrap_err();
        assert_eq!(err.code(), "malformed");
    }
}
