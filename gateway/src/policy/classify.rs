//! The built-in policy: classify each statement of a SQL string as allow, review or block.
//!
//! Only what is provably read-only is allowed; anything not understood fails closed to review.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    AccessExpr, AlterRoleOperation, BinaryOperator, CopySource, CopyTarget, DiscardObject, Expr,
    FunctionArg, FunctionArgExpr, FunctionArguments, Ident, LockTableMode, ObjectName, Query,
    Reset, RoleOption, Select, SelectItem, Set, SetExpr, Statement, TableFactor, UtilityOption,
    Value, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

use super::fallback::{
    classify_unparsed, classify_untokenizable, is_keyword, longest_chain, split_statements,
    statement_words, top_level_position, unicode_identifier, user_operators, StatementTokens,
    MAX_CHAIN_TOKENS,
};
use super::functions::check_function;
use super::reparse::classify_without_inert_clause;
use super::settings::{search_path_from_items, setting_verdict, value_decides};
use super::token_grammars::{classify_by_grammar, qualified_name};
use super::verdict::{identifier_prefix, Action, PreparedUse, StatementFacts, CHANGES_IDENTITY};

/// Classify every statement in `sql` with the built-in policy. Never panics; never returns an
/// empty vector (an empty string yields one `EMPTY` statement).
pub fn classify(sql: &str) -> Vec<StatementFacts> {
    let pieces = match split_statements(sql) {
        Ok(pieces) => pieces,
        Err(e) => return vec![classify_untokenizable(sql, &e)],
    };
    if pieces.is_empty() {
        return vec![StatementFacts {
            kind: "EMPTY".to_string(),
            action: Action::Allow,
            reasons: vec!["empty statement".to_string()],
            ..StatementFacts::default()
        }];
    }
    pieces.iter().map(classify_piece).collect()
}

fn classify_piece(tokens: &StatementTokens) -> StatementFacts {
    let chain = longest_chain(tokens);
    if chain > MAX_CHAIN_TOKENS {
        // Not parsed at all: the tree would be too deep to walk (see `MAX_CHAIN_TOKENS`).
        return classify_unparsed(
            tokens,
            &format!(
                "one expression holds {chain} tokens without a comma or bracket, more than the {MAX_CHAIN_TOKENS} the policy parses; split it into smaller statements or expressions"
            ),
        );
    }
    if unicode_identifier(tokens) {
        return classify_unparsed(
            tokens,
            "a U&\"…\" identifier, which the policy does not decode; write the name plainly or in ordinary double quotes",
        );
    }
    let mut facts = with_user_operators(classify_parsed_or_not(tokens), &user_operators(tokens));
    facts = with_non_ascii_capitals(facts, tokens);
    facts.words = statement_words(tokens);
    // `SHOW search_path` changes nothing: counted, it would fill the context and push out what did.
    facts.sets_name_resolution = facts.kind != "SHOW" && sets_name_resolution(&facts.words);
    facts
}

/// True when a statement with these words may change which objects later names resolve to: a
/// `search_path` change however spelled (`SET`, `SET SCHEMA`, `set_config`, `RESET`, `DISCARD`), a
/// role change (`$user` in the path), or a setting that changes how literals are read
/// ([`super::settings::MEANING_SETTINGS`]: `SET DateStyle`, `SET TIME ZONE`, …). Over-inclusion only
/// makes an approval more specific.
fn sets_name_resolution(words: &[String]) -> bool {
    // Setting names match in any case, quoted or not (`SET "Search_Path" = …`); quoted words are kept
    // as written.
    let mut lowered: Vec<String> = words.iter().map(|w| w.to_ascii_lowercase()).collect();
    lowered.sort();
    let has = |w: &str| super::verdict::has_word(&lowered, w);
    has("search_path")
        || has("set_config")
        || has("reset")
        || has("discard")
        || (has("set")
            && (has("schema")
                || has("role")
                || has("authorization")
                || has("names")
                || (has("time") && has("zone"))))
        || super::settings::MEANING_SETTINGS.iter().any(|s| has(s))
}

/// `facts` with a review for each user-defined operator the statement uses: the function behind it is
/// on no read-only list.
fn with_user_operators(mut facts: StatementFacts, operators: &[String]) -> StatementFacts {
    if operators.is_empty() || facts.action == Action::Block {
        return facts;
    }
    if facts.action == Action::Allow {
        facts.action = Action::Review;
        facts.review_beyond_kind = true;
        facts.reasons.clear();
    }
    for op in operators {
        facts.reasons.push(format!(
            "uses operator {op}, which is not PostgreSQL's own: the function behind it is not on the read-only list"
        ));
    }
    facts
}

/// `facts` reviewed when an unquoted name holds a non-ASCII capital letter (`Über`): PostgreSQL
/// keeps it as written in a UTF-8 database but lower-cases it by locale in a single-byte one, so the
/// object it names (a function with side effects, a type with a CHECK) depends on the database, and a
/// rule's tables or the catalog lists could be matched against the wrong name. Quoting the name
/// (`"Über"`) names one object everywhere.
fn with_non_ascii_capitals(mut facts: StatementFacts, tokens: &StatementTokens) -> StatementFacts {
    let Some(name) = tokens.0.iter().find_map(|t| match t {
        Token::Word(w)
            if w.quote_style.is_none()
                && w.value
                    .chars()
                    .any(|c| !c.is_ascii() && c.to_lowercase().ne(std::iter::once(c))) =>
        {
            Some(w.value.as_str())
        }
        _ => None,
    }) else {
        return facts;
    };
    if facts.action == Action::Block {
        return facts;
    }
    if facts.action == Action::Allow {
        facts.action = Action::Review;
        facts.reasons.clear();
    }
    facts.review_beyond_kind = true;
    facts.reasons.push(format!(
        "the unquoted name {name} has a non-ASCII capital letter, which PostgreSQL folds differently by database encoding and locale, so which object it names is not certain; write it in double quotes"
    ));
    facts
}

fn classify_parsed_or_not(tokens: &StatementTokens) -> StatementFacts {
    match parse_one(tokens.0.clone()) {
        Ok(statement) => classify_statement(&statement),
        Err(error) => {
            if let Some(facts) = classify_table_shorthand(tokens) {
                return facts;
            }
            if let Some(facts) = classify_without_inert_clause(tokens) {
                return facts;
            }
            if let Some(facts) = classify_by_grammar(tokens) {
                return facts;
            }
            if let Some(facts) = classify_copy_where(tokens) {
                return facts;
            }
            classify_unparsed(tokens, &error)
        }
    }
}

/// Parse exactly one statement; a parser panic counts as a parse failure (fail closed).
pub(super) fn parse_one(tokens: Vec<Token>) -> Result<Statement, String> {
    let parsed = std::panic::catch_unwind(|| {
        Parser::new(&PostgreSqlDialect {})
            .with_tokens(tokens)
            .parse_statements()
    });
    match parsed {
        Ok(Ok(mut statements)) if statements.len() == 1 => Ok(statements.remove(0)),
        Ok(Ok(statements)) => Err(format!(
            "expected one statement, found {}",
            statements.len()
        )),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the SQL parser failed on this input".to_string()),
    }
}

/// `COPY t … FROM … WHERE condition` (asyncpg's `copy_records_to_table(where=…)`), which sqlparser does
/// not read: judged as the COPY without its WHERE together with `SELECT 1 FROM t WHERE condition`, so the
/// condition's calls count as any query's would.
fn classify_copy_where(tokens: &StatementTokens) -> Option<StatementFacts> {
    let t = &tokens.0;
    if !is_keyword(t.first()?, "COPY") {
        return None;
    }
    let at = top_level_position(t, |token| is_keyword(token, "WHERE"))?;
    if !t[..at].iter().any(|x| is_keyword(x, "FROM")) {
        return None;
    }
    let copy = classify_parsed_or_not(&StatementTokens(t[..at].to_vec()));
    if copy.unparsed || copy.kind != "COPY" {
        return None;
    }
    let (_, name_end) = qualified_name(t, 1)?;
    let mut select = split_statements("SELECT 1 FROM").ok()?.pop()?.0;
    select.extend_from_slice(&t[1..name_end]);
    select.extend_from_slice(&t[at..]);
    let condition = classify_statement(&parse_one(select).ok()?);
    let mut facts = copy;
    if condition.action > facts.action {
        facts.action = condition.action;
        facts.reasons = condition.reasons;
    } else if condition.action != Action::Allow && condition.action == facts.action {
        facts.reasons.extend(condition.reasons);
    }
    facts.review_beyond_kind |= condition.action != Action::Allow;
    for f in condition.functions {
        if !facts.functions.contains(&f) {
            facts.functions.push(f);
        }
    }
    facts.qualified_names.extend(condition.qualified_names);
    Some(facts)
}

/// `TABLE name …` is by definition `SELECT * FROM name …`; sqlparser lacks the shorthand.
fn classify_table_shorthand(tokens: &StatementTokens) -> Option<StatementFacts> {
    if !is_keyword(tokens.0.first()?, "TABLE") {
        return None;
    }
    let mut rewritten = split_statements("SELECT * FROM").ok()?.pop()?.0;
    rewritten.extend(tokens.0[1..].iter().cloned());
    let statement = parse_one(rewritten).ok()?;
    let mut facts = classify_statement(&statement);
    facts.kind = "TABLE".to_string();
    Some(facts)
}

/// Classify one parsed statement.
pub fn classify_statement(statement: &Statement) -> StatementFacts {
    if let Statement::Explain {
        analyze,
        statement: inner,
        options,
        ..
    } = statement
    {
        let runs = *analyze || options.iter().flatten().any(explain_option_runs);
        return if runs {
            let mut facts = classify_statement(inner);
            facts
                .reasons
                .insert(0, format!("EXPLAIN ANALYZE executes the {}", facts.kind));
            facts
        } else {
            classify_plain_explain(inner)
        };
    }
    if let Statement::Prepare {
        name,
        statement: inner,
        ..
    } = statement
    {
        return classify_prepare(name, inner);
    }
    let mut seen = Collector::default();
    let _ = statement.visit(&mut seen);
    if let Some(setting) = setting_pinned_by_where(statement) {
        for call in &mut seen.functions {
            if call.first_arg.is_none() && call.name.rsplit('.').next() == Some("set_config") {
                call.first_arg = Some(setting.clone());
            }
        }
    }
    // `WITH … DELETE …` is a DELETE (PostgreSQL's DeleteStmt with a WITH clause), not a query: judged,
    // named and matched by rules as the write it is.
    let statement = main_write(statement).unwrap_or(statement);
    let mut facts = StatementFacts {
        kind: statement_kind(statement),
        tables: seen.tables.into_iter().collect(),
        functions: function_names(&seen.functions),
        qualified_names: seen.qualified.into_iter().collect(),
        ..StatementFacts::default()
    };
    let (action, reason) = statement_action(statement, &facts);
    let mut verdicts: Vec<(Action, String)> = vec![(action, reason)];
    if !seen.nested_writes.is_empty() {
        verdicts.push((
            Action::Review,
            format!("data-modifying {} inside WITH", join(&seen.nested_writes)),
        ));
    }
    if seen.locking {
        verdicts.push((
            Action::Review,
            "locking read (FOR UPDATE/SHARE) takes row locks".to_string(),
        ));
    }
    if seen.select_into {
        verdicts.push((Action::Review, "SELECT INTO creates a table".to_string()));
    }
    verdicts.extend(seen.functions.iter().map(function_verdict));
    verdicts.extend(
        facts
            .tables
            .iter()
            .filter_map(|t| super::functions::relation_check(t)),
    );
    let kind_action = action;
    // What the statement does besides its kind on its tables, which a rule naming kinds or tables
    // does not vouch for. For a write, row locks (`… FOR UPDATE SKIP LOCKED` picking the rows) and
    // `nextval` of one of its tables' own sequences (a new key) are part of the write.
    let beyond_kind = if kind_action == Action::Allow {
        verdicts[1..].iter().any(|(a, _)| *a != Action::Allow)
    } else {
        !seen.nested_writes.is_empty()
            || seen.select_into
            || seen.functions.iter().any(|call| {
                function_verdict(call).0 != Action::Allow && !is_own_nextval(call, &facts.tables)
            })
            || facts
                .tables
                .iter()
                .any(|t| super::functions::relation_check(t).is_some())
    };
    facts.missing_where = missing_where(statement);
    if facts.missing_where {
        let table = facts
            .tables
            .first()
            .map(String::as_str)
            .unwrap_or("its table");
        verdicts.push((
            Action::Review,
            format!("{} without WHERE on {table}", facts.kind),
        ));
    }
    let mut facts = finish(facts, verdicts);
    facts.setting_from_parameter = seen
        .functions
        .iter()
        .any(|c| c.second_is_parameter && c.name.rsplit('.').next() == Some("set_config"));
    facts.review_beyond_kind = facts.action == Action::Review && beyond_kind;
    facts.prepared = prepared_use(statement).map(Box::new);
    facts
}

/// `nextval('t_id_seq')` with `t` one of `tables`: the sequence PostgreSQL names for `t`'s serial or
/// identity column (`{table}_{column}_seq`), in the table's schema when the call names one.
fn is_own_nextval(call: &Call, tables: &[String]) -> bool {
    if !matches!(call.name.as_str(), "nextval" | "pg_catalog.nextval") || call.second_arg.is_some()
    {
        return false;
    }
    let Some(sequence) = call.first_arg.as_deref() else {
        return false;
    };
    let sequence = sequence.to_ascii_lowercase();
    let (seq_schema, seq_name) = schema_and_name(&sequence);
    tables.iter().any(|table| {
        let (schema, name) = schema_and_name(table);
        seq_schema == schema
            && seq_name
                .strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('_'))
                .is_some_and(|rest| rest.ends_with("_seq") && rest.len() > "_seq".len())
    })
}

/// A dotted name's schema part (if any) and last part.
fn schema_and_name(name: &str) -> (Option<&str>, &str) {
    match name.rsplit_once('.') {
        Some((schema, last)) => (Some(schema), last),
        None => (None, name),
    }
}

/// `PREPARE name AS statement` runs nothing, but every later `EXECUTE name` runs the statement: it is
/// judged, and matched by rules, as that statement (its kind, tables and functions), so that a session
/// may create names only for what it could run directly. The statement's text is kept so that an
/// `EXECUTE` is judged from it again (with its arguments) in the session that saw the PREPARE succeed.
fn classify_prepare(name: &Ident, inner: &Statement) -> StatementFacts {
    // Judged from the printed text, the same text each EXECUTE is judged from.
    let text = inner.to_string();
    let mut facts = match <[StatementFacts; 1]>::try_from(classify(&text)) {
        Ok([one]) => one,
        Err(_) => StatementFacts {
            kind: "PREPARE".to_string(),
            action: Action::Review,
            reasons: vec!["PREPARE of a statement the policy cannot judge on its own".to_string()],
            ..StatementFacts::default()
        },
    };
    let name = prepared_name(name);
    if facts.setting_from_parameter && facts.action != Action::Block {
        let why = "set_config with a parameter value in a PREPARE: EXECUTE's arguments may be computed from table data, which the setting would then hand back unmasked".to_string();
        if facts.action == Action::Allow {
            facts.action = Action::Review;
            facts.reasons = vec![why];
        } else {
            facts.reasons.push(why);
        }
        // Beyond what a kind or table rule vouches for, a write's as much as a read's.
        facts.review_beyond_kind = true;
    }
    facts.reasons.insert(
        0,
        format!("PREPARE {name} stores this {} to run later", facts.kind),
    );
    facts.prepared = Some(Box::new(PreparedUse::Prepare {
        name,
        statement: text,
    }));
    facts
}

/// What `statement` does to SQL-level prepared statements, when it is an EXECUTE, DEALLOCATE or
/// DISCARD ALL in PostgreSQL's form.
fn prepared_use(statement: &Statement) -> Option<PreparedUse> {
    match statement {
        Statement::Execute {
            name: Some(name),
            parameters,
            immediate: false,
            into,
            using,
            output: false,
            default: false,
            ..
        } if into.is_empty() && using.is_empty() => {
            let [part] = name.0.as_slice() else {
                return None;
            };
            let arguments = (!parameters.is_empty()).then(|| {
                let list: Vec<String> = parameters.iter().map(|p| format!("({p})")).collect();
                format!("SELECT {}", list.join(", "))
            });
            Some(PreparedUse::Execute {
                name: prepared_name(part.as_ident()?),
                arguments,
            })
        }
        // sqlparser reads `DEALLOCATE ALL` as a name; PostgreSQL's keyword is the unquoted one.
        Statement::Deallocate { name, .. } => Some(PreparedUse::Deallocate {
            name: (name.quote_style.is_some() || !name.value.eq_ignore_ascii_case("all"))
                .then(|| prepared_name(name)),
        }),
        Statement::Discard {
            object_type: DiscardObject::ALL,
        } => Some(PreparedUse::Deallocate { name: None }),
        _ => None,
    }
}

/// A prepared statement's name as PostgreSQL stores it: ASCII letters folded unless quoted, cut to
/// 63 bytes (NAMEDATALEN - 1), so two spellings PostgreSQL reads as one name are one name here.
fn prepared_name(ident: &Ident) -> String {
    let kept = identifier_prefix(&ident.value);
    match ident.quote_style {
        None => kept.to_ascii_lowercase(),
        Some(_) => kept.to_string(),
    }
}

/// The INSERT, UPDATE, DELETE or MERGE a query with a WITH clause stands for (`WITH x AS (…) DELETE …`).
fn main_write(statement: &Statement) -> Option<&Statement> {
    let Statement::Query(query) = statement else {
        return None;
    };
    match query.body.as_ref() {
        SetExpr::Insert(write)
        | SetExpr::Update(write)
        | SetExpr::Delete(write)
        | SetExpr::Merge(write) => Some(write),
        _ => None,
    }
}

/// `EXPLAIN` without ANALYZE plans but does not run its statement: allowed unless the plan names
/// functions that need a look (the planner may evaluate immutable user functions).
fn classify_plain_explain(inner: &Statement) -> StatementFacts {
    let mut seen = Collector::default();
    let _ = inner.visit(&mut seen);
    let facts = StatementFacts {
        kind: "EXPLAIN".to_string(),
        tables: seen.tables.into_iter().collect(),
        functions: function_names(&seen.functions),
        qualified_names: seen.qualified.into_iter().collect(),
        ..StatementFacts::default()
    };
    let mut verdicts = vec![(
        Action::Allow,
        format!(
            "EXPLAIN without ANALYZE does not run the {}",
            statement_kind(inner)
        ),
    )];
    // Planning a write folds the table's column defaults (and generated columns) that are immutable
    // over constants, which runs them, and no statement text names them.
    let folds_defaults = match inner {
        Statement::Insert(_) | Statement::Merge(_) => true,
        // Only `SET col = DEFAULT` brings a default into an UPDATE.
        Statement::Update(_) => inner.to_string().to_ascii_lowercase().contains("default"),
        _ => false,
    };
    // Planning the prepared statement folds the functions its text calls (a protocol Parse the
    // policy held still prepares it upstream), and that text is not in this statement.
    if matches!(inner, Statement::Execute { .. }) {
        verdicts.push((
            Action::Review,
            "EXPLAIN EXECUTE plans a prepared statement whose text is not visible here; planning evaluates the functions it calls".into(),
        ));
    }
    if folds_defaults {
        verdicts.push((
            Action::Review,
            format!(
                "planning an {} evaluates the table's column defaults, which may run code the policy has not seen",
                statement_kind(inner)
            ),
        ));
    }
    verdicts.extend(seen.functions.iter().map(function_verdict));
    let mut facts = finish(facts, verdicts);
    facts.review_beyond_kind = facts.action == Action::Review;
    facts
}

/// Strictest action wins; reasons of that action come first, allow-reasons only when nothing is stricter.
fn finish(mut facts: StatementFacts, verdicts: Vec<(Action, String)>) -> StatementFacts {
    let action = verdicts
        .iter()
        .map(|(a, _)| *a)
        .max()
        .unwrap_or(Action::Review);
    let mut reasons: Vec<String> = Vec::new();
    for wanted in [Action::Block, Action::Review, Action::Allow] {
        if wanted == Action::Allow && action != Action::Allow {
            break;
        }
        for (a, r) in &verdicts {
            if *a == wanted && !r.is_empty() && !reasons.contains(r) {
                reasons.push(r.clone());
            }
        }
    }
    facts.action = action;
    facts.reasons = reasons;
    facts
}

fn function_verdict(call: &Call) -> (Action, String) {
    let name = call.name.as_str();
    // Only PostgreSQL's own set_config (unqualified, or in pg_catalog) is read by its arguments; another
    // schema's is an unvetted function (an unqualified call that may resolve to another is flagged
    // from the catalog: `DatabaseFunctions::shadows`).
    if matches!(name, "set_config" | "pg_catalog.set_config") {
        return match (call.first_arg.as_deref(), call.second_arg.as_deref()) {
            // A protocol-bound value is the client's own, like a literal: a setting whose verdict
            // does not depend on the value is judged as with any literal. (A SQL-level PREPARE of it
            // is reviewed: EXECUTE's arguments may be computed; see `classify_prepare`.)
            (Some(setting), None) if call.second_is_parameter && !value_decides(setting) => {
                match setting_verdict(setting, "") {
                    (Action::Allow, _) => (Action::Allow, String::new()),
                    (action, reason) => (action, format!("set_config('{setting}', …): {reason}")),
                }
            }
            // Even a harmless setting is reviewed with a computed value: a value read from a table
            // would carry that data into the setting, where SHOW and current_setting() hand it back
            // past the masking of the table's columns.
            (Some(setting), None) => (
                Action::Review,
                if value_decides(setting) {
                    format!("set_config('{setting}', …) with a computed value")
                } else {
                    format!("set_config('{setting}', …) with a computed value, which could copy table data into the setting; give the value as a literal")
                },
            ),
            (Some(setting), Some(value)) => match setting_verdict(setting, value) {
                (Action::Allow, _) => (Action::Allow, String::new()),
                (action, reason) => (action, format!("set_config('{setting}', …): {reason}")),
            },
            (None, _) => (
                Action::Review,
                "set_config changes a server setting at run time".to_string(),
            ),
        };
    }
    let check = check_function(name);
    (check.action, check.reason)
}

/// EXPLAIN options that only shape the plan output; PostgreSQL rejects any option it does not know.
const INERT_EXPLAIN_OPTIONS: &[&str] = &[
    "buffers",
    "costs",
    "format",
    "generic_plan",
    "memory",
    "serialize",
    "settings",
    "summary",
    "timing",
    "verbose",
    "wal",
];

/// True when an EXPLAIN option makes PostgreSQL run the statement: `ANALYZE` (which PostgreSQL also
/// spells `ANALYSE`) unless set false, and, failing closed, any option not known to be inert.
fn explain_option_runs(option: &UtilityOption) -> bool {
    let name = option.name.value.to_ascii_lowercase();
    if name == "analyze" || name == "analyse" {
        return !is_false_option(option.arg.as_ref());
    }
    !INERT_EXPLAIN_OPTIONS.contains(&name.as_str())
}

fn is_false_option(arg: Option<&Expr>) -> bool {
    match arg {
        Some(Expr::Value(v)) => match &v.value {
            Value::Boolean(b) => !b,
            Value::Number(n, _) => n == "0",
            Value::SingleQuotedString(s) => {
                matches!(s.to_ascii_lowercase().as_str(), "false" | "off" | "0")
            }
            _ => false,
        },
        Some(Expr::Identifier(i)) => {
            matches!(i.value.to_ascii_lowercase().as_str(), "false" | "off")
        }
        _ => false,
    }
}

fn function_names(calls: &[Call]) -> Vec<String> {
    let mut names: Vec<String> = Vec::with_capacity(calls.len());
    for call in calls {
        if !names.contains(&call.name) {
            names.push(call.name.clone());
        }
    }
    names
}

/// True when a user function named `name` would share its name with a function on the vetted
/// read-only list: PostgreSQL resolves an unqualified call to the closest argument types across the
/// search path, so such a function could run where the built-in was vetted.
fn shadows_vetted_function(name: &ObjectName) -> bool {
    let name = object_name(name);
    let base = name.rsplit('.').next().unwrap_or(&name);
    name.rsplit_once('.').map(|(schema, _)| schema) != Some("pg_catalog")
        && super::functions::is_vetted_read_only(base)
}

/// The setting a `set_config(name, …)` call sets in `SELECT set_config(name, '…', …) FROM pg_settings
/// WHERE name = 'setting'`, the form pg_dump uses to set a setting only a newer server knows: the WHERE
/// clause leaves `name` no other value. Only that exact shape (one call in the select list, the
/// catalog view alone, an equality with a literal) is read; anything else leaves the name unknown.
fn setting_pinned_by_where(statement: &Statement) -> Option<String> {
    let Statement::Query(query) = statement else {
        return None;
    };
    if query.with.is_some() {
        return None;
    }
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    let [from] = &select.from[..] else {
        return None;
    };
    let TableFactor::Table {
        name, args: None, ..
    } = &from.relation
    else {
        return None;
    };
    if !from.joins.is_empty()
        || !matches!(
            object_name(name).as_str(),
            "pg_settings" | "pg_catalog.pg_settings"
        )
    {
        return None;
    }
    let [SelectItem::UnnamedExpr(Expr::Function(call))
    | SelectItem::ExprWithAlias {
        expr: Expr::Function(call),
        ..
    }] = &select.projection[..]
    else {
        return None;
    };
    let FunctionArguments::List(list) = &call.args else {
        return None;
    };
    let first_is_name = matches!(
        list.args.first(),
        Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Identifier(i)))) if folded(i) == "name"
    );
    let literal_args = list.args.iter().skip(1).all(|a| {
        matches!(
            a,
            FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(_)))
        )
    });
    if !first_is_name
        || !literal_args
        || function_name(&call.name).rsplit('.').next() != Some("set_config")
    {
        return None;
    }
    match select.selection.as_ref()? {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => match (left.as_ref(), right.as_ref()) {
            (Expr::Identifier(column), Expr::Value(v)) if folded(column) == "name" => {
                match &v.value {
                    Value::SingleQuotedString(setting) => Some(setting.to_ascii_lowercase()),
                    _ => None,
                }
            }
            _ => None,
        },
        _ => None,
    }
}

fn join(items: &[&str]) -> String {
    items.join(", ")
}

fn missing_where(statement: &Statement) -> bool {
    match statement {
        Statement::Update(u) => u.selection.is_none(),
        Statement::Delete(d) => d.selection.is_none(),
        _ => false,
    }
}

/// The statement's own action, before functions and nested writes are considered.
fn statement_action(statement: &Statement, facts: &StatementFacts) -> (Action, String) {
    let kind = &facts.kind;
    let on = |prefix: &str| match facts.tables.first() {
        Some(t) => format!("{prefix} on {t}"),
        None => prefix.to_string(),
    };
    let allow = |why: &str| (Action::Allow, why.to_string());
    let review = |why: String| (Action::Review, why);
    let block = |why: String| (Action::Block, why);
    match statement {
        Statement::Query(_) => allow("read-only query"),
        Statement::StartTransaction { statements, .. } if statements.is_empty() => {
            allow("transaction control")
        }
        Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. } => allow("transaction control"),
        Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowSchemas { .. }
        | Statement::ShowDatabases { .. }
        | Statement::ShowFunctions { .. }
        | Statement::ShowViews { .. }
        | Statement::ExplainTable { .. } => allow("SHOW reads settings or metadata"),
        Statement::Discard { .. } => allow("DISCARD only drops this session's state"),
        Statement::LISTEN { .. } | Statement::UNLISTEN { .. } => {
            allow("LISTEN/UNLISTEN only subscribe this session")
        }
        Statement::Declare { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. }
        | Statement::Deallocate { .. } => allow("cursor or prepared-statement bookkeeping"),
        Statement::Set(set) => classify_set(set),
        Statement::Reset(reset) => match &reset.reset {
            Reset::ALL => allow("RESET ALL restores session defaults"),
            Reset::SessionAuthorization => {
                review(format!("RESET SESSION AUTHORIZATION {CHANGES_IDENTITY}"))
            }
            Reset::ConfigurationParameter(name) => {
                // Back to the default: judged as setting it to the empty (default) value.
                match setting_verdict(&object_name(name), "") {
                    (Action::Allow, _) => allow("RESET of a harmless session setting"),
                    (_, reason) => review(format!("RESET {reason}")),
                }
            }
        },
        Statement::Copy { to, target, .. } => match (target, to) {
            (CopyTarget::Program { .. }, _) => {
                block("COPY … PROGRAM runs a shell command on the server".into())
            }
            (CopyTarget::File { filename }, _) => {
                block(format!("COPY reads or writes the server file '{filename}'"))
            }
            (CopyTarget::Stdout, true) => allow("COPY TO STDOUT reads data"),
            // The rows come after the approval, so reviewers must know they approve the table and
            // columns, not the data.
            (CopyTarget::Stdin, false) => review(format!(
                "{}: the approval covers this statement, not the rows the client sends with it (any number, sent only once it runs)",
                on("COPY FROM STDIN writes data")
            )),
            _ => review(on("COPY FROM writes data")),
        },
        Statement::Insert(_) => review(on("INSERT writes data")),
        Statement::Update(_) => review(on("UPDATE changes data")),
        Statement::Delete(_) => review(on("DELETE removes data")),
        Statement::Merge(_) => review(on("MERGE changes data")),
        Statement::Truncate(_) => review(on("TRUNCATE removes all rows")),
        // ACCESS SHARE is the lock every SELECT takes on what it reads (pg_dump takes it up front so no
        // table changes shape mid-dump); it conflicts only with ACCESS EXCLUSIVE, and PostgreSQL accepts
        // LOCK only inside a transaction block, where a SELECT would hold the same lock as long. So it
        // is judged as a read of its tables: table-scoped rules still see them.
        Statement::Lock(lock) if lock.lock_mode == Some(LockTableMode::AccessShare) => {
            allow("LOCK … IN ACCESS SHARE MODE takes only the lock a SELECT of its tables takes")
        }
        Statement::Lock(_) | Statement::LockTables { .. } => review(on("LOCK takes table locks")),
        Statement::Drop { object_type, .. }
            if object_type.to_string().eq_ignore_ascii_case("DATABASE") =>
        {
            block("DROP DATABASE destroys a whole database".into())
        }
        Statement::CreateRole(role) if role.superuser == Some(true) => {
            block(format!("{kind} grants SUPERUSER"))
        }
        Statement::AlterRole {
            operation: AlterRoleOperation::WithOptions { options },
            ..
        } if options
            .iter()
            .any(|o| matches!(o, RoleOption::SuperUser(true))) =>
        {
            block(format!("{kind} grants SUPERUSER"))
        }
        Statement::CreateUser(_) | Statement::AlterUser(_)
            if display_has_word(statement, "SUPERUSER") =>
        {
            block(format!("{kind} grants SUPERUSER"))
        }
        Statement::CreateFunction(f)
            if f.language.as_ref().is_some_and(|l| {
                matches!(l.value.to_ascii_lowercase().as_str(), "c" | "internal")
            }) =>
        {
            block(format!(
                "{kind} with LANGUAGE {} loads code from the server filesystem",
                f.language.as_ref().map(|l| l.value.as_str()).unwrap_or("C")
            ))
        }
        Statement::CreateFunction(f) if shadows_vetted_function(&f.name) => block(format!(
            "{kind} {} would shadow a built-in function the read-only list trusts (a known privilege \
             escalation pattern); give it another name",
            object_name(&f.name)
        )),
        // Renaming a function to a vetted name shadows the built-in as creating it under that name would.
        Statement::AlterFunction(f)
            if matches!(
                &f.operation,
                sqlparser::ast::AlterFunctionOperation::RenameTo { new_name }
                    if super::functions::is_vetted_read_only(&folded(new_name))
            ) =>
        {
            block(format!(
                "{kind} renames a function to the name of a built-in the read-only list trusts (a known \
                 privilege escalation pattern); give it another name"
            ))
        }
        Statement::Load { .. } | Statement::LoadData { .. } | Statement::Install { .. } => {
            block(format!("{kind} loads files from the server filesystem"))
        }
        Statement::NOTIFY { .. } => review("NOTIFY sends a notification to listeners".into()),
        Statement::Call(f) => review(format!("CALL runs procedure {}", object_name(&f.name))),
        Statement::Prepare { .. } => review("PREPARE stores a statement to run later".into()),
        Statement::Execute { .. } => {
            review("EXECUTE runs a prepared statement whose text is not visible here".into())
        }
        Statement::Grant(_)
        | Statement::Revoke(_)
        | Statement::GrantRole(_)
        | Statement::RevokeRole(_)
        | Statement::AlterDefaultPrivileges(_) => review(format!("{kind} changes privileges")),
        Statement::CreateRole(_)
        | Statement::AlterRole { .. }
        | Statement::CreateUser(_)
        | Statement::AlterUser(_) => review(format!("{kind} changes roles")),
        _ => review(format!(
            "{kind} is not on the read-only list (DDL or server change)"
        )),
    }
}

fn classify_set(set: &Set) -> (Action, String) {
    match set {
        Set::SingleAssignment {
            variable, values, ..
        } => {
            let name = object_name(variable);
            let value = if name == "search_path" {
                search_path_value(values)
            } else {
                values
                    .iter()
                    .map(|v| v.to_string().trim_matches(['\'', '"']).to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            match setting_verdict(&name, &value) {
                (Action::Allow, _) => (
                    Action::Allow,
                    format!("SET {name} is a harmless session setting"),
                ),
                (action, reason) => (action, format!("SET {reason}")),
            }
        }
        Set::SetTimeZone { .. } => (
            Action::Allow,
            "SET TIME ZONE is a harmless session setting".into(),
        ),
        Set::SetTransaction { .. } => (
            Action::Allow,
            "SET TRANSACTION only sets transaction modes".into(),
        ),
        Set::SetRole { .. } => (Action::Review, format!("SET ROLE {CHANGES_IDENTITY}")),
        Set::SetSessionAuthorization(_) => (
            Action::Review,
            format!("SET SESSION AUTHORIZATION {CHANGES_IDENTITY}"),
        ),
        other => (
            Action::Review,
            format!("{other}: setting not on the harmless list"),
        ),
    }
}

/// `SET search_path = …` items as the list text PostgreSQL makes of them: each item is one schema
/// name (`'a, b'` is a single schema), folded to lower case only when it is an unquoted identifier.
fn search_path_value(values: &[Expr]) -> String {
    let items: Vec<(String, bool)> = values
        .iter()
        .map(|v| match v {
            Expr::Identifier(ident) => (ident.value.clone(), ident.quote_style.is_some()),
            Expr::Value(v) => match &v.value {
                Value::SingleQuotedString(s) => (s.clone(), true),
                other => (other.to_string(), true),
            },
            other => (other.to_string(), true),
        })
        .collect();
    search_path_from_items(items.iter().map(|(name, quoted)| (name.as_str(), *quoted)))
}

fn display_has_word(statement: &Statement, upper: &str) -> bool {
    statement
        .to_string()
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .any(|w| w.eq_ignore_ascii_case(upper))
}

/// Dotted name without quotes, each part cut to the 63 bytes PostgreSQL keeps of an identifier and,
/// unquoted, folded as PostgreSQL folds it in a UTF-8 database: ASCII letters only (`Über` stays
/// `Über`; the Kelvin sign is no `k`). See [`with_non_ascii_capitals`] for other encodings.
fn object_name(name: &ObjectName) -> String {
    let mut out = String::new();
    for (i, part) in name.0.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        match part.as_ident() {
            // Quoted names keep their case, as PostgreSQL keeps it: `"Reports"` is not `reports`.
            Some(ident) if ident.quote_style.is_some() => {
                out.push_str(identifier_prefix(&ident.value))
            }
            Some(ident) => out.push_str(&identifier_prefix(&ident.value).to_ascii_lowercase()),
            None => out.push_str(&part.to_string().to_ascii_lowercase()),
        }
    }
    out
}

/// A function's dotted name as PostgreSQL resolves it: unquoted parts lower-cased, quoted parts exactly
/// as written, so `"LOWER"(x)` or `"PG_CATALOG".lower(x)` (another function, in another schema) is never
/// taken for the vetted built-in `lower`.
fn function_name(name: &ObjectName) -> String {
    let mut out = String::new();
    for (i, part) in name.0.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        match part.as_ident() {
            Some(ident) => out.push_str(&folded(ident)),
            None => out.push_str(&part.to_string()),
        }
    }
    out
}

/// An identifier as PostgreSQL stores it in a UTF-8 database: cut to 63 bytes, then, unless quoted,
/// its ASCII letters lower-cased (PostgreSQL leaves other characters as written).
fn folded(ident: &Ident) -> String {
    let kept = identifier_prefix(&ident.value);
    match ident.quote_style {
        None => kept.to_ascii_lowercase(),
        Some(_) => kept.to_string(),
    }
}

/// Upper-case kind for the statements on hot paths; others are named from their SQL text.
fn statement_kind(statement: &Statement) -> String {
    let fixed = match statement {
        Statement::Query(_) => "SELECT",
        Statement::Insert(_) => "INSERT",
        Statement::Update(_) => "UPDATE",
        Statement::Delete(_) => "DELETE",
        Statement::Merge(_) => "MERGE",
        Statement::StartTransaction { begin: true, .. } => "BEGIN",
        Statement::StartTransaction { .. } => "START TRANSACTION",
        Statement::Commit { .. } => "COMMIT",
        Statement::Rollback { .. } => "ROLLBACK",
        Statement::Savepoint { .. } => "SAVEPOINT",
        Statement::ReleaseSavepoint { .. } => "RELEASE",
        Statement::Set(_) => "SET",
        Statement::Reset(_) => "RESET",
        Statement::ShowVariable { .. } => "SHOW",
        Statement::Copy { .. } => "COPY",
        Statement::Truncate(_) => "TRUNCATE",
        Statement::Explain { .. } => "EXPLAIN",
        Statement::CreateTable(_) => "CREATE TABLE",
        Statement::CreateRole(_) => "CREATE ROLE",
        Statement::AlterRole { .. } => "ALTER ROLE",
        _ => "",
    };
    if !fixed.is_empty() {
        return fixed.to_string();
    }
    match split_statements(&statement.to_string()) {
        Ok(parts) if !parts.is_empty() => parts[0].kind(),
        _ => "UNKNOWN".to_string(),
    }
}

/// The function an expression sqlparser parses as special syntax stands for, when PostgreSQL reads it
/// as an ordinary, unqualified call (so resolved by name and argument types, like `length(x)`):
/// `substring(a, b, c)` (PostgreSQL turns only the `FROM`/`FOR` forms into `pg_catalog.substring`),
/// `substr(…)`, `ceil(…)`, `floor(…)` and `convert(…)`, none of which are syntax to PostgreSQL.
/// `overlay`, `position`, `trim` and `extract` are parsed as calls only in their keyword forms, which
/// PostgreSQL binds to `pg_catalog`; sqlparser rejects `overlay(a, b, c)`, which is then never allowed.
fn special_syntax_call(expr: &Expr) -> Option<&'static str> {
    match expr {
        Expr::Substring {
            shorthand: true, ..
        } => Some("substr"),
        Expr::Substring {
            special,
            substring_from,
            substring_for,
            ..
        } if *special || (substring_from.is_none() && substring_for.is_none()) => Some("substring"),
        Expr::Ceil { .. } => Some("ceil"),
        Expr::Floor { .. } => Some("floor"),
        Expr::Convert { .. } => Some("convert"),
        _ => None,
    }
}

/// Walks a statement (including subqueries, CTEs, nested statements and DDL expressions) and
/// records what it touches.
#[derive(Default)]
struct Collector {
    tables: BTreeSet<String>,
    /// Function calls, each once.
    functions: Vec<Call>,
    /// Last parts of qualified names (`q.name`) in expressions.
    qualified: BTreeSet<String>,
    nested_writes: Vec<&'static str>,
    locking: bool,
    select_into: bool,
    depth: usize,
    /// Set when a FROM item is a table function: its name must not be recorded as a table.
    next_relation_is_function: bool,
}

/// A function call: its name and its first two arguments when they are string literals (lower-cased
/// first, as written second), which is what `set_config` is judged by.
#[derive(PartialEq)]
struct Call {
    name: String,
    first_arg: Option<String>,
    second_arg: Option<String>,
    /// The second argument is a bound parameter (`$2`, `$2::text`).
    second_is_parameter: bool,
}

impl Call {
    /// A call whose arguments do not matter to the verdict.
    fn named(name: String) -> Call {
        Call {
            name,
            first_arg: None,
            second_arg: None,
            second_is_parameter: false,
        }
    }
}

/// `$n`, possibly cast or parenthesised.
fn is_parameter(e: &Expr) -> bool {
    match e {
        Expr::Value(v) => matches!(v.value, Value::Placeholder(_)),
        Expr::Cast { expr, .. } | Expr::Nested(expr) => is_parameter(expr),
        _ => false,
    }
}

impl Collector {
    /// `TABLE name` in a query (`SELECT … FROM (TABLE v) s`, `… UNION TABLE v`) reads `name`, but
    /// sqlparser keeps it as bare identifiers the relation visitor never sees. Nested queries come
    /// through `pre_visit_query` themselves.
    fn note_table_commands(&mut self, body: &SetExpr) {
        match body {
            SetExpr::Table(table) => {
                let parts: Vec<Ident> = table
                    .schema_name
                    .iter()
                    .chain(table.table_name.iter())
                    .cloned()
                    .collect();
                if !parts.is_empty() {
                    self.tables.insert(object_name(&ObjectName::from(parts)));
                }
            }
            SetExpr::SetOperation { left, right, .. } => {
                self.note_table_commands(left);
                self.note_table_commands(right);
            }
            _ => {}
        }
    }

    fn add_function(&mut self, call: Call) {
        if !self.functions.contains(&call) {
            self.functions.push(call);
        }
    }
}

impl Visitor for Collector {
    type Break = ();

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        if self.depth > 0 {
            let write = match statement {
                Statement::Insert(_) => Some("INSERT"),
                Statement::Update(_) => Some("UPDATE"),
                Statement::Delete(_) => Some("DELETE"),
                Statement::Merge(_) => Some("MERGE"),
                _ => None,
            };
            if let Some(w) = write {
                if !self.nested_writes.contains(&w) {
                    self.nested_writes.push(w);
                }
            }
        }
        if let Statement::Call(f) = statement {
            self.add_function(Call::named(function_name(&f.name)));
        }
        if let Statement::Copy {
            source: CopySource::Table { table_name, .. },
            ..
        } = statement
        {
            self.tables.insert(object_name(table_name));
        }
        self.depth += 1;
        ControlFlow::Continue(())
    }

    fn post_visit_statement(&mut self, _: &Statement) -> ControlFlow<()> {
        self.depth = self.depth.saturating_sub(1);
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if !query.locks.is_empty() {
            self.locking = true;
        }
        self.note_table_commands(&query.body);
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<()> {
        if select.into.is_some() {
            self.select_into = true;
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        match factor {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            } => {
                self.add_function(Call::named(function_name(name)));
                self.next_relation_is_function = true;
            }
            TableFactor::Function { name, .. } => {
                self.add_function(Call::named(function_name(name)))
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        if std::mem::take(&mut self.next_relation_is_function) {
            return ControlFlow::Continue(());
        }
        self.tables.insert(object_name(relation));
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = expr {
            let literal = |i: usize| match &f.args {
                FunctionArguments::List(list) => match list.args.get(i) {
                    Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v)))) => {
                        match &v.value {
                            Value::SingleQuotedString(s) => Some(s.clone()),
                            _ => None,
                        }
                    }
                    _ => None,
                },
                _ => None,
            };
            // `$n` (or `$n::type`): a value the client binds, which carries no table data.
            let parameter = |i: usize| match &f.args {
                FunctionArguments::List(list) => matches!(
                    list.args.get(i),
                    Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(e))) if is_parameter(e)
                ),
                _ => false,
            };
            self.add_function(Call {
                name: function_name(&f.name),
                first_arg: literal(0).map(|a| a.to_ascii_lowercase()),
                second_arg: literal(1),
                second_is_parameter: parameter(1),
            });
        }
        if let Some(name) = special_syntax_call(expr) {
            self.add_function(Call::named(name.to_string()));
        }
        // `q.name` is a column, or a call of `name` on `q`'s whole row (attribute notation): only the
        // catalog can tell, so the names are kept for the caller that knows the database's functions.
        if let Expr::CompoundIdentifier(parts) = expr {
            if let [_, .., last] = &parts[..] {
                self.qualified.insert(folded(last));
            }
        }
        // `(p).name`, `(people).name`, `(SELECT …).name`: a field selection on any expression is
        // attribute notation too, and each name in the chain may be a call on what precedes it.
        if let Expr::CompoundFieldAccess { access_chain, .. } = expr {
            for access in access_chain {
                match access {
                    AccessExpr::Dot(Expr::Identifier(ident)) => {
                        self.qualified.insert(folded(ident));
                    }
                    AccessExpr::Dot(Expr::CompoundIdentifier(parts)) => {
                        self.qualified.extend(parts.iter().map(folded));
                    }
                    _ => {}
                }
            }
        }
        ControlFlow::Continue(())
    }
}
