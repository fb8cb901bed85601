//! SQL policy: classify statements and apply configured rules. Pure: no I/O.
//!
//! The built-in classification ([`classify`]) is computed once per SQL text and cached; configured
//! rules ([`PolicyRule`]) are applied per statement on every evaluation because they depend on the
//! connection and the requester.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

pub mod cache;
pub mod classify;
pub mod fallback;
pub mod functions;
pub mod kinds;
pub mod reparse;
pub mod rules;
pub mod settings;
pub mod template;
pub mod token_grammars;
pub mod verdict;

use countersign_bot::RequesterChain;

pub use cache::ClassificationCache;
pub use classify::classify;
pub use rules::{PolicyConfigError, PolicyDefaults, PolicyRule};
pub use verdict::{
    runs_code_anyway, Action, PreparedUse, ReviewRequirement, StatementFacts, Verdict,
    CHANGES_IDENTITY,
};

use rules::{compile_rules, resolve_defaults, CompiledRule};

/// Distinct SQL texts whose classification is kept by default.
const DEFAULT_CACHE_CAPACITY: usize = 10_000;

/// Who runs the SQL, and where; the input rules match on besides the statement itself.
#[derive(Debug, Clone, Copy)]
pub struct PolicyContext<'a> {
    /// Name of the configured upstream connection (matched by rule `connections` globs).
    pub connection: &'a str,
    /// The requester chain (matched by rule `requesters` / `requester_groups`).
    pub requester: &'a RequesterChain,
    /// What the connection's database defines that a statement's text alone can't show (see
    /// [`DatabaseFunctions`]); `None` when not known.
    pub db_functions: Option<&'a DatabaseFunctions>,
}

/// Functions of one database that can make a statement run code the classifier did not vet, as last
/// read from its catalog (by `engine::row_functions`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatabaseFunctions {
    /// Functions attribute notation can call on a row (`q.name` for `name(q)`), named as PostgreSQL
    /// stores them.
    pub row: HashSet<String>,
    /// Vetted read-only names that a function outside `pg_catalog` also has, each with those functions
    /// (`schema.name`): PostgreSQL picks among same-named functions by argument types before schema
    /// order, so an unqualified call may resolve to one of them.
    pub shadows: BTreeMap<String, Vec<String>>,
    /// Views (by name, in any schema) whose definition the policy would not allow as a statement (it
    /// calls a user function, `nextval` …), with why: reading the view runs that, though the text of a
    /// statement reading it shows none of it.
    pub views: BTreeMap<String, Vec<String>>,
    /// User types (by name) whose casts, operators, operator classes, range support or domain CHECK
    /// run code the policy would not allow in a statement's text, with why: a statement naming the
    /// type (`x::t`, `CAST(x AS t)`, `t 'literal'`) may run it.
    pub types: BTreeMap<String, Vec<String>>,
    /// Tables and views (by name, in any schema) with a column of such a type, with why: reading
    /// them may cast or compare the column.
    pub tables: BTreeMap<String, Vec<String>>,
    /// Operators between built-in types that are spelled like built-in operators and run such code
    /// (`public.=`), by name, with why: a statement using that operator may resolve to them.
    pub operators: BTreeMap<String, Vec<String>>,
    /// What makes any statement on this database run such code (an implicit cast between built-in
    /// types that runs a user function): every statement needs review while it exists.
    pub global: Vec<String>,
}

/// The configured policy: built-in classification, rules, defaults and the classification cache.
#[derive(Debug)]
pub struct Policy {
    rules: Vec<CompiledRule>,
    defaults: ReviewRequirement,
    cache: ClassificationCache,
}

/// How one statement was decided after rules.
struct Decision<'p> {
    action: Action,
    /// The built-in policy's action (with the database's lists), before any rule.
    builtin: Action,
    rule: &'p str,
    review: &'p ReviewRequirement,
    reasons: Vec<String>,
}

impl Policy {
    /// Validate `rules` and `defaults` into a policy; `issuers` are the configured identity issuers
    /// ([`crate::identity::IdentityConfig::issuers`]), the only ones an allow rule's requesters match.
    pub fn new(
        rules: Vec<PolicyRule>,
        defaults: PolicyDefaults,
        issuers: &[String],
    ) -> Result<Policy, PolicyConfigError> {
        let defaults = resolve_defaults(&defaults)?;
        let rules = compile_rules(&rules, &defaults, issuers)?;
        Ok(Policy {
            rules,
            defaults,
            cache: ClassificationCache::new(DEFAULT_CACHE_CAPACITY),
        })
    }

    /// The built-in policy alone: no rules, quorum 2, one-hour requests, no approver-group restriction.
    pub fn builtin() -> Policy {
        Policy {
            rules: Vec::new(),
            defaults: ReviewRequirement {
                approver_groups: Vec::new(),
                quorum: 2,
                ttl_secs: 3600,
                reminders: Default::default(),
            },
            cache: ClassificationCache::new(DEFAULT_CACHE_CAPACITY),
        }
    }

    /// Replace the classification cache with one holding `capacity` SQL texts.
    pub fn with_cache_capacity(mut self, capacity: usize) -> Policy {
        self.cache = ClassificationCache::new(capacity);
        self
    }

    /// Decide what happens to `sql` (one or more statements) for this context.
    pub fn evaluate(&self, ctx: &PolicyContext<'_>, sql: &str) -> Verdict {
        self.judge(ctx, self.cache.get_or_insert_with(sql, classify))
    }

    /// Like `evaluate`, for a caller whose context never changes (a wire session): a statement whose
    /// classification `memo` has seen gets the verdict reached then, skipping rule matching.
    pub fn evaluate_memo(
        &self,
        ctx: &PolicyContext<'_>,
        sql: &str,
        memo: &mut VerdictMemo,
    ) -> Arc<Verdict> {
        let statements = self.cache.get_or_insert_with(sql, classify);
        if let Some(verdict) = memo.get(&statements) {
            return verdict;
        }
        let verdict = Arc::new(self.judge(ctx, Arc::clone(&statements)));
        memo.insert(statements, Arc::clone(&verdict));
        verdict
    }

    /// Apply the rules to each classified statement and combine the decisions.
    fn judge(&self, ctx: &PolicyContext<'_>, statements: Arc<[StatementFacts]>) -> Verdict {
        let decisions: Vec<Decision<'_>> = statements
            .iter()
            .map(|facts| self.decide(ctx, facts))
            .collect();
        let action = decisions
            .iter()
            .map(|d| d.action)
            .max()
            .unwrap_or(Action::Review);
        let rule = decisions
            .iter()
            .find(|d| d.action == action)
            .map_or("default", |d| d.rule)
            .to_string();
        let mut reasons: Vec<String> = Vec::new();
        // Reasons of the deciding (strictest) statements first, then the rest.
        for strictest_first in [true, false] {
            for d in decisions
                .iter()
                .filter(|d| (d.action == action) == strictest_first)
            {
                for r in &d.reasons {
                    if !reasons.contains(r) {
                        reasons.push(r.clone());
                    }
                }
            }
        }
        let review = (action == Action::Review).then(|| {
            merge_reviews(
                decisions
                    .iter()
                    .filter(|d| d.action == Action::Review)
                    .map(|d| d.review),
            )
        });
        let code_free = decisions.iter().all(|d| d.builtin == Action::Allow)
            && statements
                .iter()
                .all(|s| !verdict::runs_code_anyway(&s.kind));
        Verdict {
            action,
            reasons,
            statements,
            rule,
            review,
            code_free,
        }
    }

    /// `(hits, misses)` of the classification cache.
    pub fn cache_stats(&self) -> (u64, u64) {
        self.cache.stats()
    }

    /// Apply the first matching rule to one statement, within the safety floor: a rule never
    /// relaxes a built-in block and never allows an unparsed statement.
    fn decide<'p>(&'p self, ctx: &PolicyContext<'_>, facts: &StatementFacts) -> Decision<'p> {
        let called;
        let facts = match database_function_calls(ctx, facts) {
            Some(f) => {
                called = f;
                &called
            }
            None => facts,
        };
        let builtin = facts.action;
        let Some(rule) = self
            .rules
            .iter()
            .find(|r| r.matches(ctx.connection, ctx.requester, facts))
        else {
            return Decision {
                action: builtin,
                builtin,
                rule: "default",
                review: &self.defaults,
                reasons: facts.reasons.clone(),
            };
        };
        let wanted = rule.action;
        let floor = |why: &str| -> Decision<'p> {
            let mut reasons = facts.reasons.clone();
            reasons.push(format!(
                "rule {} asks to {} this {}, but {why}",
                rule.name,
                wanted.as_str(),
                facts.kind
            ));
            Decision {
                action: builtin,
                builtin,
                rule: "default",
                review: &self.defaults,
                reasons,
            }
        };
        if wanted < builtin && builtin == Action::Block {
            return floor("a built-in block cannot be relaxed by a rule");
        }
        if wanted < builtin && facts.unparsed {
            return floor("a statement that could not be parsed is never allowed");
        }
        if wanted < builtin && facts.review_beyond_kind && rule.is_scoped() {
            return floor(
                "the rule vouches for its kinds and tables, not for the rest of what this statement does (only a rule without kinds or tables allows that)",
            );
        }
        let mut reasons = vec![format!(
            "rule {}: {} {}",
            rule.name,
            wanted.as_str(),
            facts.kind
        )];
        if wanted >= builtin {
            reasons.extend(facts.reasons.iter().cloned());
        }
        Decision {
            action: wanted,
            builtin,
            rule: &rule.name,
            review: &rule.review,
            reasons,
        }
    }
}

/// Verdicts already reached in one fixed context, keyed by the cached classification they came from
/// (the memo keeps that classification alive, so a pointer match is an identity match).
#[derive(Debug, Default)]
pub struct VerdictMemo {
    entries: Vec<(Arc<[StatementFacts]>, Arc<Verdict>)>,
    next: usize,
    /// The database's function lists the verdicts were reached with: a verdict on `p.archive` or on
    /// `length(x)` depends on them.
    db_functions: Option<Arc<DatabaseFunctions>>,
    /// The session changed the database's functions, views or types (DDL) and the lists have not been
    /// read since it committed: its statements are judged as with unknown lists (all reviewed).
    pub catalog_pending: bool,
}

/// Distinct statements a session remembers verdicts for; older ones are replaced round-robin.
const MEMO_ENTRIES: usize = 64;

impl VerdictMemo {
    /// Forgets every verdict when the connection's function lists are no longer the ones they were
    /// reached with (a function created or dropped since), so the next evaluation judges afresh.
    pub fn for_db_functions(&mut self, current: Option<&Arc<DatabaseFunctions>>) {
        let same = match (&self.db_functions, current) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        if !same {
            self.entries.clear();
            self.next = 0;
            self.db_functions = current.cloned();
        }
    }

    fn get(&self, statements: &Arc<[StatementFacts]>) -> Option<Arc<Verdict>> {
        self.entries
            .iter()
            .find(|(facts, _)| Arc::ptr_eq(facts, statements))
            .map(|(_, verdict)| Arc::clone(verdict))
    }

    fn insert(&mut self, statements: Arc<[StatementFacts]>, verdict: Arc<Verdict>) {
        if self.entries.len() < MEMO_ENTRIES {
            self.entries.push((statements, verdict));
        } else {
            self.entries[self.next] = (statements, verdict);
            self.next = (self.next + 1) % MEMO_ENTRIES;
        }
    }
}

/// Union of approver groups, the largest quorum and the shortest lifetime; for reminders the earliest
/// delays and the union of escalation targets.
fn merge_reviews<'a>(reviews: impl Iterator<Item = &'a ReviewRequirement>) -> ReviewRequirement {
    let mut merged: Option<ReviewRequirement> = None;
    for r in reviews {
        match &mut merged {
            None => merged = Some(r.clone()),
            Some(m) => {
                for g in &r.approver_groups {
                    if !m.approver_groups.contains(g) {
                        m.approver_groups.push(g.clone());
                    }
                }
                m.quorum = m.quorum.max(r.quorum);
                m.ttl_secs = m.ttl_secs.min(r.ttl_secs);
                let earliest = |a: Option<u64>, b: Option<u64>| match (a, b) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                m.reminders.remind_after_secs =
                    earliest(m.reminders.remind_after_secs, r.reminders.remind_after_secs);
                m.reminders.escalate_after_secs = earliest(
                    m.reminders.escalate_after_secs,
                    r.reminders.escalate_after_secs,
                );
                for t in &r.reminders.escalate_to {
                    if !m.reminders.escalate_to.contains(t) {
                        m.reminders.escalate_to.push(t.clone());
                    }
                }
            }
        }
    }
    merged.unwrap_or(ReviewRequirement {
        approver_groups: Vec::new(),
        quorum: 2,
        ttl_secs: 3600,
        reminders: Default::default(),
    })
}

/// `facts` judged with what the connection's database defines (see [`DatabaseFunctions`]): each
/// `q.name` that may call a function on a whole row, and each unqualified call of a vetted name that a
/// function outside `pg_catalog` shares, is judged as a call of that unvetted function and needs
/// review. `None` when there is none.
fn database_function_calls(
    ctx: &PolicyContext<'_>,
    facts: &StatementFacts,
) -> Option<StatementFacts> {
    database_code_in(ctx.db_functions?, facts)
}

/// [`database_function_calls`] with the database's lists at hand (also how a view's definition is
/// judged, with the lists built so far).
pub(crate) fn database_code_in(
    db: &DatabaseFunctions,
    facts: &StatementFacts,
) -> Option<StatementFacts> {
    let row_calls: Vec<&String> = facts
        .qualified_names
        .iter()
        .filter(|n| db.row.contains(*n))
        .collect();
    // A `schema.name` call needs no look: only `pg_catalog.name` is vetted, and that one PostgreSQL
    // never resolves elsewhere; any other schema is already reviewed as an unvetted function.
    // A function a superuser created in pg_catalog itself captures `pg_catalog.name` too.
    let shadowed: Vec<(&String, &Vec<String>)> = facts
        .functions
        .iter()
        .filter_map(|name| {
            let bare = name.strip_prefix("pg_catalog.").unwrap_or(name);
            if bare.contains('.') {
                return None;
            }
            let by = db.shadows.get(bare)?;
            let reaches = bare == name.as_str() || by.iter().any(|b| b.starts_with("pg_catalog."));
            reaches.then_some((name, by))
        })
        .collect();
    // A table name may be schema-qualified or quoted as written; a view of that name in any schema
    // counts (the statement's search_path decides which one it reads).
    let views: Vec<(&String, &Vec<String>)> = facts
        .tables
        .iter()
        .filter_map(|t| {
            db.views
                .get(&verdict::relation_key(t))
                .map(|calls| (t, calls))
        })
        .collect();
    let code = user_code_runs(db, facts);
    if row_calls.is_empty() && shadowed.is_empty() && views.is_empty() && code.is_empty() {
        return None;
    }
    let mut judged = facts.clone();
    // Code the statement's text does not show is beyond what any kind or table rule vouches for,
    // a write's as much as a read's.
    judged.review_beyond_kind = true;
    judged.action = judged.action.max(Action::Review);
    for (name, by) in shadowed.into_iter().rev() {
        judged.reasons.insert(
            0,
            format!(
                "{name} is also defined as {}; the call may resolve to it (PostgreSQL picks by argument types before schema order), which is not on the read-only list; write pg_catalog.{name} to call the built-in",
                by.join(", ")
            ),
        );
    }
    for why in code.into_iter().rev() {
        judged.reasons.insert(0, why);
    }
    for (view, calls) in views.into_iter().rev() {
        judged.reasons.insert(
            0,
            format!(
                "reads view {view}, whose definition the policy would not allow by itself ({}): reading the view runs it",
                calls.join("; ")
            ),
        );
    }
    for name in row_calls {
        judged.reasons.insert(
            0,
            format!("x.{name} may call the database function {name}(x) on a whole row (attribute notation); it is not on the read-only list"),
        );
        if !judged.functions.contains(name) {
            judged.functions.push(name.clone());
        }
    }
    Some(judged)
}

/// Operators PostgreSQL also applies without their token in the text: `IN`, `BETWEEN`, `CASE x
/// WHEN`, `ORDER BY`, `DISTINCT`, joins `USING` … compare with them.
/// The SQL spellings of a built-in type's catalog name (`int8` is written `bigint`, `int8[]` is
/// `_int8`): a statement naming the type either way reaches its casts and operators.
fn type_spellings(name: &str) -> &'static [&'static str] {
    match name.strip_prefix('_').unwrap_or(name) {
        "int8" => &["bigint", "bigserial", "serial8"],
        "int4" => &["integer", "int", "serial", "serial4"],
        "int2" => &["smallint", "smallserial", "serial2"],
        "bool" => &["boolean"],
        "float8" => &["double", "float"],
        "float4" => &["real", "float"],
        "bpchar" => &["character", "char", "nchar"],
        "varchar" => &["varying", "character", "char"],
        "numeric" => &["decimal", "dec"],
        "timestamptz" | "timestamp" => &["timestamp"],
        "timetz" | "time" => &["time"],
        "varbit" => &["varying", "bit"],
        "interval" => &["interval"],
        _ => &[],
    }
}

/// `NOT LIKE` is `!~~`, `SIMILAR TO` is `~` (and `NOT SIMILAR TO` `!~`) over a rewritten pattern.
const IMPLIED_OPERATORS: &[&str] = &[
    "=", "<>", "<", ">", "<=", ">=", "~~", "~~*", "!~~", "!~~*", "~", "!~", "~*", "!~*",
];

/// Words of constructs that compare values with an operator their text does not spell.
const COMPARING_WORDS: &[&str] = &[
    "all",
    "any",
    "between",
    "case",
    "distinct",
    "except",
    "greatest",
    "group",
    "ilike",
    "in",
    "intersect",
    "join",
    "least",
    "like",
    "max",
    "min",
    "natural",
    "nullif",
    "order",
    "over",
    "partition",
    "similar",
    "some",
    "union",
    "using",
    "window",
];

/// Why `facts` may run user code that the database attaches to types and operators, one reason per
/// cause: naming a type whose casts, operators or CHECK run such code; reading a table with a column
/// of such a type; using (or, for comparisons, implying) an operator spelled like a built-in one that
/// runs such code.
fn user_code_runs(db: &DatabaseFunctions, facts: &StatementFacts) -> Vec<String> {
    let mut out = Vec::new();
    if db.types.is_empty()
        && db.tables.is_empty()
        && db.operators.is_empty()
        && db.global.is_empty()
    {
        return out;
    }
    // Ending or marking a transaction runs no code of the database's (a session must be able to roll
    // back while its lists are unknown); COMMIT may fire deferred triggers, so it is not among them.
    const RUNS_NO_CODE: &[&str] = &[
        "ROLLBACK",
        "SAVEPOINT",
        "RELEASE",
        "BEGIN",
        "START TRANSACTION",
    ];
    if !RUNS_NO_CODE
        .iter()
        .any(|k| facts.kind.eq_ignore_ascii_case(k))
    {
        out.extend(db.global.iter().cloned());
    }
    let has = |w: &str| facts.has_word(w);
    for (name, why) in &db.types {
        if has(name) || type_spellings(name).iter().any(|w| has(w)) {
            out.push(format!(
                "names type {name}, which runs code not on the read-only list: {}",
                why.join("; ")
            ));
        }
    }
    for t in &facts.tables {
        if let Some(why) = db.tables.get(&verdict::relation_key(t)) {
            out.push(format!(
                "reads {t}, whose {}; reading it may run that code",
                why.join("; ")
            ));
        }
    }
    let compares = COMPARING_WORDS.iter().any(|w| has(w));
    for (op, why) in &db.operators {
        if has(op) || (compares && IMPLIED_OPERATORS.contains(&op.as_str())) {
            out.push(format!(
                "operator {op} may resolve to a database-defined one: {}",
                why.join("; ")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests;
