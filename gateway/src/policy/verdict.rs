//! The decision object computed once per statement; later stages act on it and never re-read SQL.

use countersign_bot::ReminderSettings;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// What happens to a statement. Defaults to `Review`: anything unclassified fails closed.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Forward to the upstream.
    Allow,
    /// Hold until a quorum of humans approves.
    #[default]
    Review,
    /// Refuse outright.
    Block,
}

impl Action {
    /// The stricter of two actions (block > review > allow).
    pub fn strictest(self, other: Action) -> Action {
        self.max(other)
    }

    /// Lower-case name as used in JSON and config.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Review => "review",
            Action::Block => "block",
        }
    }
}

/// Facts the classifier found about one statement of a (possibly multi-statement) string.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementFacts {
    /// Upper-case statement kind, e.g. `SELECT`, `DELETE`, `CREATE TABLE`, `DO` (token fallback).
    pub kind: String,
    /// Tables read or written, lower-cased, as written (schema-qualified when the SQL qualifies them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<String>,
    /// Functions called, lower-cased.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<String>,
    /// Last parts of qualified names (`q.name`), which PostgreSQL reads as `name(q)` when `q` is a row
    /// with no column `name` (attribute notation); judged against the database's functions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub qualified_names: Vec<String>,
    /// The statement's names (folded unless quoted) and operator tokens, judged against what the
    /// connection's database defines (`DatabaseFunctions`: types and operators that run user code).
    #[serde(skip)]
    pub words: Vec<String>,
    /// The statement may change how later statements resolve names (`search_path`, `SET SCHEMA`,
    /// `set_config`, roles, `RESET`/`DISCARD`): a wire session binds later approvals to it.
    #[serde(skip)]
    pub sets_name_resolution: bool,
    /// `set_config(…, $n, …)` takes its value from a parameter: bound by the client on the protocol, but
    /// computed by `EXECUTE`'s arguments for a SQL-level `PREPARE`.
    #[serde(skip)]
    pub setting_from_parameter: bool,
    /// UPDATE or DELETE without a WHERE clause.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub missing_where: bool,
    /// Something in the statement besides its kind needs review: a data-modifying WITH, row locks
    /// (in a read), SELECT INTO, a function not on the read-only list (but a write's `nextval`). A
    /// rule that names kinds or tables vouches for what such statements do, not for that.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub review_beyond_kind: bool,
    /// True when sqlparser could not parse the statement (classified from tokens, fail closed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unparsed: bool,
    /// The SQL-level prepared statement this statement creates, runs or drops, for the wire session
    /// that remembers which names it created (`pg::prepared`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepared: Option<Box<PreparedUse>>,
    /// The built-in classification of this statement alone.
    pub action: Action,
    /// Why this statement got its action.
    pub reasons: Vec<String>,
}

impl StatementFacts {
    /// True when the statement has `word` among its [`StatementFacts::words`].
    pub fn has_word(&self, word: &str) -> bool {
        has_word(&self.words, word)
    }
}

/// True when sorted `words` (as [`StatementFacts::words`] keeps them) hold `word`.
pub fn has_word(words: &[String], word: &str) -> bool {
    words.binary_search_by(|w| w.as_str().cmp(word)).is_ok()
}

/// The last part of a table name as a statement wrote it (`app."Orders"` → `Orders`): a table,
/// view or catalog entry of that name in any schema may be the one it reads.
pub fn bare_name(table: &str) -> &str {
    table.rsplit('.').next().unwrap_or(table).trim_matches('"')
}

/// How a relation name is matched against the database's catalog lists: its last part (as
/// [`bare_name`]), lower-cased and cut to PostgreSQL's 63 bytes, as PostgreSQL cuts identifiers. Both
/// the statement's names and the catalog's go through it, so a quoted `"UpperV"`, a quoted name with a
/// dot in it, or an over-long name still meets its catalog entry; names differing only in case meet
/// too, which can only hold more.
pub fn relation_key(name: &str) -> String {
    identifier_prefix(&bare_name(name).to_lowercase()).to_string()
}

/// The part of an identifier PostgreSQL keeps: at most 63 bytes (NAMEDATALEN - 1), whole characters.
pub fn identifier_prefix(name: &str) -> &str {
    let mut end = name.len().min(63);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// What a statement does to SQL-level prepared statements (`PREPARE`, `EXECUTE`, `DEALLOCATE`,
/// `DISCARD ALL`). Names are as PostgreSQL stores them: folded unless quoted, cut to 63 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PreparedUse {
    /// `PREPARE name AS statement`: the facts are the prepared statement's, as if it ran.
    Prepare {
        /// The name.
        name: String,
        /// The prepared statement's text (as the parser prints it), judged again at each EXECUTE.
        statement: String,
    },
    /// `EXECUTE name [(arguments)]`.
    Execute {
        /// The name.
        name: String,
        /// `SELECT` of the argument expressions (they run at EXECUTE), None without arguments.
        arguments: Option<String>,
    },
    /// `DEALLOCATE name`, or with no name `DEALLOCATE ALL` / `DISCARD ALL`.
    Deallocate {
        /// The name; None for all.
        name: Option<String>,
    },
}

/// Approval requirements of a `review` verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewRequirement {
    /// Approver groups whose members may vote.
    pub approver_groups: Vec<String>,
    /// Distinct humans needed.
    pub quorum: u32,
    /// Seconds before the request expires.
    pub ttl_secs: u64,
    /// The rule's reminder and escalation timings; unset fields use the global `[reminders]` plan.
    #[serde(default, skip_serializing_if = "ReminderSettings::is_unset")]
    pub reminders: ReminderSettings,
}

/// The outcome of classifying a SQL string against the policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// The strictest action over all statements, after rules.
    pub action: Action,
    /// Human-readable reasons, most important first.
    pub reasons: Vec<String>,
    /// One entry per statement in the string (shared with the classification cache).
    #[serde(
        serialize_with = "shared::serialize",
        deserialize_with = "shared::deserialize"
    )]
    pub statements: Arc<[StatementFacts]>,
    /// Name of the config rule that decided, or `default` for the built-in policy.
    pub rule: String,
    /// Present when `action` is `review`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<ReviewRequirement>,
    /// The built-in policy allows every statement (database lists applied) and none is of a kind that
    /// runs code the text does not show ([`runs_code_anyway`]): running it runs no user code, so it
    /// cannot change what prepared names hold. False for whatever only a rule allowed.
    #[serde(default)]
    pub code_free: bool,
}

/// The words ending every reason given for a statement that changes the session's role or session
/// authorization (`SET ROLE`, `SET SESSION AUTHORIZATION`, `set_config('role', …)`, their `RESET`s).
pub const CHANGES_IDENTITY: &str = "changes the session identity";

/// Kinds the built-in policy allows that still run code their text does not show: `COMMIT` / `END`
/// and `SET CONSTRAINTS` fire deferred triggers, `FETCH` / `MOVE` run a cursor's query (declared by
/// an approved statement, it may call anything), `EXECUTE` runs a prepared statement.
pub fn runs_code_anyway(kind: &str) -> bool {
    matches!(
        kind,
        "COMMIT" | "END" | "SET CONSTRAINTS" | "FETCH" | "MOVE" | "EXECUTE" | "COMMIT PREPARED"
    )
}

/// Serde for the shared statement list, as a plain JSON array.
mod shared {
    use super::StatementFacts;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::sync::Arc;

    pub fn serialize<S: Serializer>(v: &Arc<[StatementFacts]>, s: S) -> Result<S::Ok, S::Error> {
        v[..].serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<[StatementFacts]>, D::Error> {
        Vec::<StatementFacts>::deserialize(d).map(Arc::from)
    }
}
