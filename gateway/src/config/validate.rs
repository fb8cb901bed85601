//! Semantic checks that TOML parsing can't do; every problem names the file, the key and a fix.

use super::Config;
use crate::policy::Policy;
use std::collections::HashSet;
use std::fmt;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted key, e.g. `connections[0].upstream_url`.
    pub key: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// Every problem found in one file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigReport {
    /// The file.
    pub file: String,
    /// Problems, in file order.
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: {} problem(s):", self.file, self.problems.len())?;
        for p in &self.problems {
            writeln!(f, "  {}: {}: {}", self.file, p.key, p.message)?;
        }
        Ok(())
    }
}

impl ConfigReport {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(ConfigProblem {
            key: key.into(),
            message: message.into(),
        });
    }
}

/// Why a `[logging] level` filter would not log what it looks like it asks for. A bare word that is not
/// a level is read by the filter as a module name (`warning` logs only a module called `warning`,
/// which is nothing), so each comma-separated part must be a level or `target=level`.
fn logging_level_problem(filter: &str) -> Option<String> {
    const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];
    let is_level = |w: &str| LEVELS.contains(&w.trim().to_ascii_lowercase().as_str());
    for part in filter.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let ok = match part.split_once('=') {
            Some((target, level)) => !target.trim().is_empty() && is_level(level),
            None => is_level(part),
        };
        if !ok {
            return Some(format!(
                "{part:?} is not a log level or target=level; use one of trace, debug, info, warn, error, off (e.g. \"info\" or \"info,countersign=debug\")"
            ));
        }
    }
    None
}

/// The built-in rule's name, which verdicts report when no configured rule matched.
const BUILTIN_RULE: &str = "default";

/// Parse a duration such as `500ms`, `30s`, `5m`, `1h`, `2d` or `1h30m`
/// ([`countersign_bot::duration`]).
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    countersign_bot::duration::parse_duration(text).ok()
}

impl Config {
    /// Names that must refer to something the file defines: connections named by rules and webhooks,
    /// requester groups (when every identity's groups are in this file), and rule names apart from the
    /// built-in rule's.
    fn check_references(&self, r: &mut ConfigReport, connections: &HashSet<&str>) {
        let matches_a_connection = |pattern: &str| {
            globset::GlobBuilder::new(pattern)
                .case_insensitive(true)
                .build()
                .map(|g| {
                    let m = g.compile_matcher();
                    connections.iter().any(|c| m.is_match(c))
                })
                .unwrap_or(true) // a bad glob is reported by the policy check
        };
        let defined = || {
            let mut list: Vec<&str> = connections.iter().copied().collect();
            list.sort();
            list.join(", ")
        };
        // Without connections nothing is served; the names can't be checked against anything.
        let have_connections = !connections.is_empty();
        // Static tokens carry the only groups when no OIDC issuer is configured.
        let known_groups: Option<HashSet<&str>> = self.identity.oidc.is_empty().then(|| {
            self.identity
                .static_tokens
                .iter()
                .flat_map(|t| t.groups.iter().map(String::as_str))
                .collect()
        });
        for (i, rule) in self.policy.rules.iter().enumerate() {
            if rule.name.trim().eq_ignore_ascii_case(BUILTIN_RULE) {
                r.push(
                    format!("policy.rules[{i}].name"),
                    format!("{BUILTIN_RULE:?} is the built-in rule's name, so verdicts could not tell them apart; rename the rule"),
                );
            }
            for c in rule.connections.iter().flatten() {
                if have_connections && !matches_a_connection(c) {
                    r.push(
                        format!("policy.rules[{i}].connections"),
                        format!("{c:?} matches no [[connections]] entry, so the rule never applies there; use one of: {}", defined()),
                    );
                }
            }
            if let Some(known) = &known_groups {
                for g in rule.requester_groups.iter().flatten() {
                    if !known.iter().any(|k| k.eq_ignore_ascii_case(g.trim())) {
                        r.push(
                            format!("policy.rules[{i}].requester_groups"),
                            format!("no identity is in group {g:?} (only static tokens are configured, and none lists it in `groups`), so the rule never applies; fix the name or add the group to the tokens"),
                        );
                    }
                }
            }
        }
        for (i, ep) in self.webhooks.iter().flat_map(|w| &w.endpoints).enumerate() {
            for c in &ep.connections {
                if have_connections && !connections.contains(c.as_str()) {
                    r.push(
                        format!("webhooks.endpoints[{i}].connections"),
                        format!("{c:?} is not a [[connections]] name, so no event would be sent for it; use one of: {}", defined()),
                    );
                }
            }
        }
    }

    /// Settings that are valid but probably not what was meant; `check-config` and `serve` print them.
    pub fn warnings(&self) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        if let Some(wire) = &self.wire {
            if wire.tls.is_none() && !wire.allow_cleartext_without_tls {
                out.push(ConfigProblem {
                    key: "wire.tls".into(),
                    message: "not set, and allow_cleartext_without_tls is off: every token login on the wire (a JWT or static token as the password) will be refused, only SCRAM logins work; add tls = { cert = \"…\", key = \"…\" } (or, on a loopback listener, allow_cleartext_without_tls = true)".into(),
                });
            }
            if wire.allow_cleartext_without_tls
                && wire.tls.is_none()
                && !wire.listen.ip().is_loopback()
            {
                out.push(ConfigProblem {
                    key: "wire.allow_cleartext_without_tls".into(),
                    message: format!("ignored: {} is not a loopback address, so tokens would cross the network in the clear; token logins without TLS are refused there: add [wire] tls, or listen on 127.0.0.1", wire.listen),
                });
            }
        }
        out
    }

    /// Check everything that can be checked without the network.
    pub fn validate(&self, file: &str) -> ConfigReport {
        let mut r = ConfigReport {
            file: file.to_string(),
            problems: vec![],
        };
        if let Some(level) = &self.logging.level {
            if let Some(problem) = logging_level_problem(level) {
                r.push("logging.level", problem);
            }
        }
        if let Some(format) = &self.logging.format {
            if !matches!(format.as_str(), "text" | "json") {
                r.push(
                    "logging.format",
                    format!("{format:?} is not a log format; use \"text\" or \"json\""),
                );
            }
        }
        // The sweep and the poll are timer periods (zero panicked the expiry task, silently stopping
        // expiry and the interrupted-execution sweep; a zero poll spins); a zero lease lets every
        // replica take the same item at once.
        for (key, value, positive) in [
            ("server.max_wait", &self.server.max_wait, false),
            ("server.expiry_sweep", &self.server.expiry_sweep, true),
            ("outbox.poll", &self.outbox.poll, true),
            ("outbox.lease", &self.outbox.lease, true),
        ] {
            match countersign_bot::duration::parse_duration(value) {
                Err(e) => r.push(key, e.to_string()),
                Ok(d) if positive && d.is_zero() => r.push(
                    key,
                    format!("{value:?} must be more than 0; write e.g. \"500ms\" or \"5s\""),
                ),
                Ok(_) => {}
            }
        }
        // Zero attempts would dead-letter every notification on its first failure (the worker counts the
        // failed attempt before comparing), so a momentary outage would silently drop approvals' messages.
        if self.outbox.max_attempts == 0 {
            r.push(
                "outbox.max_attempts",
                "0 would dead-letter every notification at its first failure; set it to at least 1 (the default is 12), or remove the key",
            );
        }
        if self.wire.as_ref().is_some_and(|w| w.max_connections == 0) {
            r.push(
                "wire.max_connections",
                "0 would refuse every client; set the number of wire connections served at once (the default is 4096)",
            );
        }
        if self.server.max_connections == 0 {
            r.push(
                "server.max_connections",
                "0 would never accept a connection; set the number of HTTP clients served at once (the default is 4096)",
            );
        }
        if let Some(url) = &self.server.public_base_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                r.push(
                    "server.public_base_url",
                    format!("{url:?} must start with http:// or https://"),
                );
            }
        }
        if let Some(url) = &self.store.url {
            if !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
            {
                r.push("store.url", format!("{url:?} has an unknown scheme; use sqlite://PATH or postgres://USER@HOST/DB"));
            }
            if self.store.url_env.is_some() {
                r.push("store.url", "set either `url` or `url_env`, not both");
            }
        }
        if let Err(e) = self.identity.validate() {
            let msg = e.to_string();
            r.push(
                "identity",
                msg.strip_prefix("identity: ").unwrap_or(&msg).to_string(),
            );
        }
        let mut names = HashSet::new();
        for (i, c) in self.connections.iter().enumerate() {
            let key = format!("connections[{i}]");
            if c.name.is_empty()
                || !c
                    .name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
            {
                r.push(format!("{key}.name"), format!("{:?} must be non-empty letters, digits, '-' or '_' (it is used in URLs and as the wire database name)", c.name));
            }
            if !names.insert(c.name.as_str()) {
                r.push(
                    format!("{key}.name"),
                    format!("connection {:?} is defined twice; rename one", c.name),
                );
            }
            if c.kind != "postgres" {
                r.push(
                    format!("{key}.kind"),
                    format!("{:?} is not supported; use \"postgres\"", c.kind),
                );
            }
            let sources = [
                c.upstream_url.is_some(),
                c.upstream_url_env.is_some(),
                c.upstream_url_file.is_some(),
            ];
            match sources.iter().filter(|s| **s).count() {
                0 => r.push(format!("{key}.upstream_url_env"), "no upstream given; set `upstream_url_env` to an env var holding postgres://user:password@host:port/db (or `upstream_url` for a password-less URL)"),
                1 => {}
                _ => r.push(format!("{key}.upstream_url"), "set exactly one of `upstream_url`, `upstream_url_env`, `upstream_url_file`"),
            }
            if let Some(m) = &c.masking {
                for (k, message) in m.problems(&format!("{key}.masking")) {
                    r.push(k, message);
                }
            }
            if let Some(url) = &c.upstream_url {
                match crate::upstream::UpstreamTarget::parse(url) {
                    Ok(t) if t.password.is_some() => r.push(
                        format!("{key}.upstream_url"),
                        "contains a password; move the URL to an env var and reference it with `upstream_url_env` (or the password alone with `password_env`)",
                    ),
                    Ok(_) => {}
                    Err(e) => r.push(format!("{key}.upstream_url"), e.to_string()),
                }
            }
        }
        let mut groups = HashSet::new();
        for (i, g) in self.approver_groups.iter().enumerate() {
            if !groups.insert(g.name.as_str()) {
                r.push(
                    format!("approver_groups[{i}].name"),
                    format!("group {:?} is defined twice; merge the entries", g.name),
                );
            }
            if g.members.is_empty() && g.idp_groups.is_empty() {
                r.push(
                    format!("approver_groups[{i}]"),
                    format!(
                        "group {:?} has no `members` and no `idp_groups`: nobody could approve",
                        g.name
                    ),
                );
            }
            for (j, m) in g.members.iter().enumerate() {
                if !countersign_bot::identity::is_comparable_email(m) {
                    r.push(
                        format!("approver_groups[{i}].members[{j}]"),
                        format!("{m:?} is not a plain ASCII e-mail address (name@domain, no spaces, invisible or non-ASCII characters); write the address the member's identities carry"),
                    );
                }
            }
        }
        match Policy::new(
            self.policy.rules.clone(),
            self.policy.defaults.clone(),
            &self.identity.issuers(),
        ) {
            Ok(_) => {}
            Err(e) => r.push("policy", e.to_string()),
        }
        let referenced = self
            .policy
            .rules
            .iter()
            .enumerate()
            .flat_map(|(i, rule)| {
                rule.approver_groups
                    .iter()
                    .flatten()
                    .map(move |g| (format!("policy.rules[{i}].approver_groups"), g.clone()))
            })
            .chain(
                self.policy
                    .defaults
                    .approver_groups
                    .iter()
                    .map(|g| ("policy.defaults.approver_groups".to_string(), g.clone())),
            )
            // Escalation mails and mentions go to the members of these groups.
            .chain(
                self.reminders
                    .iter()
                    .flat_map(|rem| rem.escalate_to.iter())
                    .map(|g| ("reminders.escalate_to".to_string(), g.clone())),
            )
            .chain(self.policy.rules.iter().enumerate().flat_map(|(i, rule)| {
                rule.escalate_to
                    .iter()
                    .flatten()
                    .map(move |g| (format!("policy.rules[{i}].escalate_to"), g.clone()))
            }));
        for (key, g) in referenced {
            if !groups.contains(g.as_str()) {
                r.push(key, format!("approver group {g:?} is not defined; add an [[approver_groups]] entry named {g:?}, or name a defined group"));
            }
        }
        // A quorum more people than can ever vote makes every held statement wait until it expires.
        let reachable = |names: &[String]| -> Option<usize> {
            let mut people = HashSet::new();
            for name in names {
                let g = self.approver_groups.iter().find(|g| &g.name == name)?;
                if !g.idp_groups.is_empty() {
                    return None; // membership by IdP group: not countable here
                }
                people.extend(
                    g.members
                        .iter()
                        .map(|m| countersign_bot::identity::canonical_email(m)),
                );
            }
            Some(people.len())
        };
        let defaults = &self.policy.defaults;
        let quorums = std::iter::once((
            "policy.defaults.quorum".to_string(),
            defaults.quorum,
            defaults.approver_groups.clone(),
        ))
        .chain(
            self.policy
                .rules
                .iter()
                .enumerate()
                .filter(|(_, rule)| rule.action == "review" || rule.quorum.is_some())
                .map(|(i, rule)| {
                    (
                        format!("policy.rules[{i}].quorum"),
                        rule.quorum.unwrap_or(defaults.quorum),
                        rule.approver_groups
                            .clone()
                            .unwrap_or_else(|| defaults.approver_groups.clone()),
                    )
                }),
        );
        for (key, quorum, names) in quorums {
            if names.is_empty() {
                continue;
            }
            if let Some(n) = reachable(&names) {
                if (quorum as usize) > n {
                    r.push(
                        key,
                        format!(
                            "quorum {quorum} needs more approvers than the {n} member(s) of {}: lower the quorum or add members (a requester never approves their own request)",
                            names.join(", ")
                        ),
                    );
                }
            }
        }
        if self.server.max_body_bytes < 1024 {
            r.push(
                "server.max_body_bytes",
                format!(
                    "{} bytes is too small for any request; give at least 1024 (default 1 MiB)",
                    self.server.max_body_bytes
                ),
            );
        }
        if let Some(wire) = &self.wire {
            let (http, pg) = (self.server.listen, wire.listen);
            // Port 0 picks a free port for each; an unspecified address (0.0.0.0) takes the port on
            // every address, so it clashes with any address on that port.
            let clash = http.port() == pg.port()
                && http.port() != 0
                && (http.ip() == pg.ip() || http.ip().is_unspecified() || pg.ip().is_unspecified());
            if clash {
                r.push(
                    "wire.listen",
                    format!("{pg} is also the HTTP listener's address (server.listen = {http}); give the wire listener its own port, e.g. {}:6432", pg.ip()),
                );
            }
            if wire.max_message_size < 8192 {
                r.push(
                    "wire.max_message_size",
                    format!("{} bytes is too small for PostgreSQL's messages; give at least 8192 (default 64 MiB)", wire.max_message_size),
                );
            }
            if wire.threads.is_some_and(|n| n.get() > 256) {
                r.push(
                    "wire.threads",
                    "more than 256 wire threads only adds memory and context switches; give at most 256 (default: one per core, at most 4)",
                );
            }
        }
        if self.policy.defaults.approver_groups.is_empty() && !self.approver_groups.is_empty() {
            r.push(
                "policy.defaults.approver_groups",
                "empty: statements held by the built-in policy could not be approved by anyone; list at least one approver group",
            );
        }
        if let Some(slack) = &self.slack {
            if let Err(e) = slack.validate() {
                r.push("slack", e.to_string());
            }
            for g in slack.routes.groups.keys() {
                if !groups.contains(g.as_str()) {
                    r.push(
                        format!("slack.routes.groups.{g}"),
                        format!("approver group {g:?} is not defined, so this route is never used; name an [[approver_groups]] entry (or add one named {g:?})"),
                    );
                }
            }
        }
        self.check_references(&mut r, &names);
        if let Some(email) = &self.email {
            if let Err(e) = email.validate() {
                r.push("email", e.to_string());
            }
        }
        if let Some(jira) = &self.jira {
            if let Err(errors) = jira.validate() {
                for e in errors {
                    r.push("jira", e.to_string());
                }
            }
        }
        if let Some(webhooks) = &self.webhooks {
            if let Err(errors) = webhooks.validate() {
                for e in errors {
                    r.push("webhooks", e.to_string());
                }
            }
        }
        if let Some(reminders) = &self.reminders {
            if let Err(errors) = reminders.validate() {
                for e in errors {
                    r.push("reminders", e.to_string());
                }
            }
        }
        if let Some(f) = &self.logging.format {
            if f != "text" && f != "json" {
                r.push(
                    "logging.format",
                    format!("{f:?} is not a format; use \"text\" or \"json\""),
                );
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys of the problems whose message says `needle`.
    fn keys_saying<'a>(report: &'a ConfigReport, needle: &str) -> Vec<&'a str> {
        report
            .problems
            .iter()
            .filter(|p| p.message.contains(needle))
            .map(|p| p.key.as_str())
            .collect()
    }

    #[test]
    fn a_quorum_no_group_can_reach_and_unusable_sizes_are_named() {
        let cfg = Config::from_toml(
            "[server]\nmax_body_bytes = 0\n[wire]\nlisten = \"127.0.0.1:0\"\nmax_message_size = 0\nthreads = 100000\n\
             [[approver_groups]]\nname = \"dba\"\nmembers = [\"a@example.com\", \"A+x@Example.com\", \"b@example.com\"]\n\
             [[approver_groups]]\nname = \"idp\"\nidp_groups = [\"admins\"]\n\
             [policy.defaults]\napprover_groups = [\"dba\"]\nquorum = 3\n\
             [[policy.rules]]\nname = \"r\"\naction = \"review\"\napprover_groups = [\"idp\"]\nquorum = 5\n",
            "c.toml",
        )
        .unwrap();
        let report = cfg.validate("c.toml");
        // Two people (a@ and its +tag are one mailbox) can't make a quorum of 3; IdP groups can't be counted.
        assert_eq!(
            keys_saying(&report, "needs more approvers"),
            ["policy.defaults.quorum"],
            "{report}"
        );
        assert_eq!(
            keys_saying(&report, "too small"),
            ["server.max_body_bytes", "wire.max_message_size"],
            "{report}"
        );
        assert_eq!(
            keys_saying(&report, "at most 256"),
            ["wire.threads"],
            "{report}"
        );
    }

    #[test]
    fn names_that_refer_to_nothing_defined_are_refused() {
        let cfg = Config::from_toml(
            "[[identity.static_tokens]]\nname = \"agent\"\nsha256 = \"ab00000000000000000000000000000000000000000000000000000000000000\"\nkind = \"workload\"\ngroups = [\"ci\"]\n\
             [[connections]]\nname = \"prod-eu\"\nupstream_url = \"postgres://u@h/db\"\n\
             [[approver_groups]]\nname = \"dba\"\nmembers = [\"a@example.com\", \"b@example.com\"]\n\
             [policy.defaults]\napprover_groups = [\"dba\"]\n\
             [[policy.rules]]\nname = \"Default\"\naction = \"allow\"\n\
             [[policy.rules]]\nname = \"r\"\naction = \"block\"\nconnections = [\"prod\", \"prod-*\"]\nrequester_groups = [\"nope\", \"CI\"]\n\
             [slack]\nbot_token_env = \"A\"\nsigning_secret_env = \"B\"\nroutes.groups = { dba = [\"C0DBA\"], nope = [\"C0X\"] }\n\
             [[webhooks.endpoints]]\nname = \"siem\"\nurl = \"https://siem.example.com/h\"\nsecret_env = \"W\"\nconnections = [\"nope\", \"prod-eu\"]\n",
            "c.toml",
        )
        .unwrap();
        let report = cfg.validate("c.toml");
        let keys: Vec<&str> = report.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "slack.routes.groups.nope",
                "policy.rules[0].name",
                "policy.rules[1].connections",
                "policy.rules[1].requester_groups",
                "webhooks.endpoints[0].connections",
            ],
            "{report}"
        );
        let text = report.to_string();
        assert!(
            text.contains("\"prod\"") && text.contains("use one of: prod-eu"),
            "{text}"
        );
        assert!(text.contains("\"nope\""), "{text}");
    }

    #[test]
    fn a_wire_listener_that_refuses_every_token_login_is_warned_about() {
        let warned = |wire: &str| -> Vec<String> {
            Config::from_toml(&format!("[wire]\n{wire}"), "c.toml")
                .unwrap()
                .warnings()
                .into_iter()
                .map(|w| w.key)
                .collect()
        };
        assert_eq!(warned("listen = \"127.0.0.1:6432\"\n"), ["wire.tls"]);
        assert_eq!(
            warned("listen = \"0.0.0.0:6432\"\nallow_cleartext_without_tls = true\n"),
            ["wire.allow_cleartext_without_tls"]
        );
        assert!(
            warned("listen = \"127.0.0.1:6432\"\nallow_cleartext_without_tls = true\n").is_empty()
        );
    }

    #[test]
    fn the_wire_listener_cannot_share_the_http_address() {
        for (http, wire, clash) in [
            ("127.0.0.1:8080", "127.0.0.1:8080", true),
            ("0.0.0.0:8080", "127.0.0.1:8080", true),
            ("127.0.0.1:8080", "127.0.0.1:6432", false),
            ("127.0.0.1:0", "127.0.0.1:0", false),
        ] {
            let cfg = Config::from_toml(
                &format!("[server]\nlisten = \"{http}\"\n[wire]\nlisten = \"{wire}\"\n"),
                "c.toml",
            )
            .unwrap();
            let report = cfg.validate("c.toml");
            assert_eq!(
                keys_saying(&report, "HTTP listener's address"),
                if clash { vec!["wire.listen"] } else { vec![] },
                "{http} {wire}: {report}"
            );
        }
    }

    #[test]
    fn escalation_targets_must_be_defined_approver_groups() {
        let cfg = Config::from_toml(
            "[[approver_groups]]\nname = \"dba\"\nmembers = [\"a@example.com\", \"b@example.com\"]\n\
             [[approver_groups]]\nname = \"leads\"\nmembers = [\"dave@example.com\"]\n\
             [policy.defaults]\napprover_groups = [\"dba\"]\n\
             [[policy.rules]]\nname = \"r\"\naction = \"review\"\nescalate_after = \"1h\"\nescalate_to = [\"leads\", \"cto\"]\n\
             [reminders]\nremind_after = \"2s\"\nescalate_after = \"2s\"\nescalate_to = [\"leads\", \"#oncall\"]\n",
            "c.toml",
        )
        .unwrap();
        let report = cfg.validate("c.toml");
        assert_eq!(
            keys_saying(&report, "is not defined"),
            ["reminders.escalate_to", "policy.rules[0].escalate_to"],
            "{report}"
        );
        assert!(report.to_string().contains("\"#oncall\""), "{report}");
        assert!(report.to_string().contains("\"cto\""), "{report}");
    }

    #[test]
    fn a_log_level_typo_is_named_instead_of_silencing_the_log() {
        for (level, bad) in [
            ("warning", true),
            ("inf", true),
            ("info,countersign=verbose", true),
            ("=debug", true),
            ("warn", false),
            ("INFO", false),
            ("info,countersign=debug,tower_http=off", false),
        ] {
            let cfg =
                Config::from_toml(&format!("[logging]\nlevel = {level:?}\n"), "c.toml").unwrap();
            let report = cfg.validate("c.toml");
            assert_eq!(
                keys_saying(&report, "is not a log level"),
                if bad { vec!["logging.level"] } else { vec![] },
                "{level}: {report}"
            );
        }
        let cfg = Config::from_toml("[logging]\nformat = \"jsonl\"\n", "c.toml").unwrap();
        assert_eq!(
            keys_saying(&cfg.validate("c.toml"), "not a log format"),
            ["logging.format"]
        );
    }

    #[test]
    fn every_duration_the_server_reads_is_checked_under_its_key() {
        let cfg = Config::from_toml(
            "[server]\nmax_wait = \"1h30m\"\nexpiry_sweep = \"5\"\n[outbox]\npoll = \"500ms\"\nlease = \"30 seconds\"\n",
            "c.toml",
        )
        .unwrap();
        let report = cfg.validate("c.toml");
        let bad = keys_saying(&report, "not a duration");
        assert_eq!(bad, ["server.expiry_sweep", "outbox.lease"], "{report}");
        assert!(report.to_string().contains("\"1h30m\""), "{report}");
    }

    #[test]
    fn timer_periods_and_the_lease_must_be_more_than_zero() {
        let cfg = Config::from_toml(
            "[server]\nmax_wait = \"0s\"\nexpiry_sweep = \"0s\"\n[outbox]\npoll = \"0ms\"\nlease = \"0s\"\n",
            "c.toml",
        )
        .unwrap();
        let report = cfg.validate("c.toml");
        let zero = keys_saying(&report, "must be more than 0");
        assert_eq!(
            zero,
            ["server.expiry_sweep", "outbox.poll", "outbox.lease"],
            "{report}"
        );
    }

    #[test]
    fn connection_caps_of_zero_are_refused() {
        let cfg = Config::from_toml(
            "[server]\nmax_connections = 0\n[wire]\nlisten = \"127.0.0.1:6432\"\nmax_connections = 0\n",
            "c.toml",
        )
        .unwrap();
        let report = cfg.validate("c.toml");
        assert_eq!(
            keys_saying(&report, "(the default is 4096)"),
            ["wire.max_connections", "server.max_connections"],
            "{report}"
        );
    }

    #[test]
    fn zero_outbox_attempts_are_refused_with_the_file_key_and_fix() {
        let cfg = Config::from_toml("[outbox]\nmax_attempts = 0\n", "c.toml").unwrap();
        let report = cfg.validate("c.toml");
        let text = report.to_string();
        assert_eq!(
            report
                .problems
                .iter()
                .map(|p| p.key.as_str())
                .collect::<Vec<_>>(),
            ["outbox.max_attempts"],
            "{text}"
        );
        assert!(
            text.contains("c.toml: outbox.max_attempts:") && text.contains("at least 1"),
            "{text}"
        );
        let ok = Config::from_toml("[outbox]\nmax_attempts = 1\n", "c.toml").unwrap();
        assert!(!ok
            .validate("c.toml")
            .problems
            .iter()
            .any(|p| p.key == "outbox.max_attempts"));
    }
}
