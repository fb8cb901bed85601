//! PostgreSQL statements sqlparser does not parse but whose whole grammar is small enough to check token by
//! token: `VACUUM` / `ANALYZE` with options (`pgbench -i` sends `vacuum analyze t`), `CHECKPOINT`, `MOVE`
//! and `FETCH` (in the forms sqlparser rejects), and `SET CONSTRAINTS` (ORMs defer foreign keys while
//! loading fixtures), `DO` (its code is opaque: always reviewed unless a rule allows it), and two-phase
//! commit (`PREPARE TRANSACTION`, `COMMIT PREPARED`, `ROLLBACK PREPARED`), `REINDEX`, `CLUSTER`, `ALTER SEQUENCE`
//! and `ALTER <object> … OWNER TO role` (all of them in `pg_dump` output or routine maintenance).
//!
//! A statement recognised here counts as parsed, so a rule may allow it; anything that strays from the
//! grammar returns `None` and stays an unparsed statement (held, never allowed).

use sqlparser::tokenizer::Token;

use super::fallback::{is_keyword, keyword, StatementTokens};
use super::verdict::{Action, StatementFacts};

/// Facts for a statement of the small grammars above, or `None` when it is not exactly one of them.
pub fn classify_by_grammar(tokens: &StatementTokens) -> Option<StatementFacts> {
    small_grammar(tokens).or_else(|| catalog_ddl(&tokens.0))
}

/// DDL `pg_dump` writes (and DBAs run) that sqlparser does not read, by its leading keywords, longest
/// first. Each only records catalog entries when it runs (an operator or cast names its function, it
/// does not call it), so it is reviewed as DDL and a rule that allows everything may allow it.
const CATALOG_DDL: &[&[&str]] = &[
    &["ALTER", "LARGE", "OBJECT"],
    &["CREATE", "DATABASE"],
    &["ALTER", "DATABASE"],
    &["CREATE", "TEXT", "SEARCH", "CONFIGURATION"],
    &["CREATE", "TEXT", "SEARCH", "DICTIONARY"],
    &["CREATE", "TEXT", "SEARCH", "PARSER"],
    &["CREATE", "TEXT", "SEARCH", "TEMPLATE"],
    &["ALTER", "TEXT", "SEARCH", "CONFIGURATION"],
    &["ALTER", "TEXT", "SEARCH", "DICTIONARY"],
    &["CREATE", "PUBLICATION"],
    &["ALTER", "PUBLICATION"],
    &["DROP", "PUBLICATION"],
    &["CREATE", "OPERATOR", "CLASS"],
    &["CREATE", "OPERATOR", "FAMILY"],
    &["ALTER", "OPERATOR", "FAMILY"],
    &["CREATE", "OPERATOR"],
    &["CREATE", "CAST"],
    &["CREATE", "CONVERSION"],
    &["CREATE", "EVENT", "TRIGGER"],
    &["ALTER", "EVENT", "TRIGGER"],
    &["DROP", "OWNED"],
    &["REASSIGN", "OWNED"],
    &["DROP", "AGGREGATE"],
    &["ALTER", "EXTENSION"],
    &["SECURITY", "LABEL"],
    &["IMPORT", "FOREIGN", "SCHEMA"],
];

/// A [`CATALOG_DDL`] statement: its keywords, then at least one more token, none of them a dollar
/// quote, a parameter or a stray character (which the grammars of these statements never hold).
fn catalog_ddl(tokens: &[Token]) -> Option<StatementFacts> {
    let prefix = CATALOG_DDL.iter().find(|words| {
        tokens.len() > words.len() && words.iter().zip(tokens).all(|(w, t)| is_keyword(t, w))
    })?;
    let body = &tokens[prefix.len()..];
    if body.iter().any(|t| {
        matches!(
            t,
            Token::DollarQuotedString(_)
                | Token::Placeholder(_)
                | Token::SemiColon
                | Token::Backslash
                | Token::Char(_)
        )
    }) {
        return None;
    }
    let kind = prefix.join(" ");
    Some(StatementFacts {
        reasons: vec![format!(
            "{kind} changes the database's catalog (DDL), which is not on the read-only list"
        )],
        kind,
        action: Action::Review,
        ..StatementFacts::default()
    })
}

fn small_grammar(tokens: &StatementTokens) -> Option<StatementFacts> {
    let (first, rest) = tokens.0.split_first()?;
    let facts = |kind: &str, tables: Vec<String>, action: Action, reason: String| StatementFacts {
        kind: kind.to_string(),
        tables,
        action,
        reasons: vec![reason],
        ..StatementFacts::default()
    };
    match keyword(first)?.as_str() {
        kind @ ("VACUUM" | "ANALYZE" | "ANALYSE") => {
            let tables = vacuum_targets(rest, kind == "VACUUM")?;
            let kind = if kind == "VACUUM" {
                "VACUUM"
            } else {
                "ANALYZE"
            };
            Some(facts(
                kind,
                tables,
                Action::Review,
                format!("{kind} is maintenance, not on the read-only list (it takes table locks)"),
            ))
        }
        "CHECKPOINT" if rest.is_empty() => Some(facts(
            "CHECKPOINT",
            vec![],
            Action::Review,
            "CHECKPOINT forces a server-wide checkpoint".to_string(),
        )),
        // FETCH as well: sqlparser wants FROM/IN and unsigned counts, which PostgreSQL does not.
        kind @ ("MOVE" | "FETCH") if is_cursor_move(rest) => Some(facts(
            kind,
            vec![],
            Action::Allow,
            "cursor or prepared-statement bookkeeping".to_string(),
        )),
        "DO" if is_do_block(rest) => Some(facts(
            "DO",
            vec![],
            Action::Review,
            "DO runs an anonymous code block; what it does is not visible to the policy"
                .to_string(),
        )),
        "SET" if is_set_constraints(rest) => Some(facts(
            "SET CONSTRAINTS",
            vec![],
            Action::Allow,
            "SET CONSTRAINTS only moves deferrable checks to commit; they still run".to_string(),
        )),
        // Two-phase commit, as transaction managers (XA, pg8000's tpc_*) send it.
        "PREPARE" if is_keyword_and_gid(rest, "TRANSACTION") => Some(facts(
            "PREPARE TRANSACTION",
            vec![],
            Action::Review,
            "PREPARE TRANSACTION keeps the transaction's locks and writes pending beyond the session"
                .to_string(),
        )),
        kind @ ("COMMIT" | "ROLLBACK") if is_keyword_and_gid(rest, "PREPARED") => Some(facts(
            &format!("{kind} PREPARED"),
            vec![],
            Action::Review,
            format!("{kind} PREPARED finishes a two-phase transaction, which any session may have prepared"),
        )),
        "REINDEX" => Some(facts(
            "REINDEX",
            reindex_target(rest)?,
            Action::Review,
            "REINDEX rebuilds indexes and blocks writes (reads too, for an index) while it runs"
                .to_string(),
        )),
        "CLUSTER" => Some(facts(
            "CLUSTER",
            cluster_target(rest)?,
            Action::Review,
            "CLUSTER rewrites a table and locks it against reads and writes while it runs"
                .to_string(),
        )),
        "ALTER" => alter_by_grammar(rest),
        "COMMENT" => Some(facts(
            "COMMENT",
            vec![constraint_comment(rest)?],
            Action::Review,
            "COMMENT changes an object's description".to_string(),
        )),
        "DROP" if is_drop_server(rest) => Some(facts(
            "DROP SERVER",
            vec![],
            Action::Review,
            "DROP SERVER removes a foreign server (and with CASCADE its user mappings and foreign tables)"
                .to_string(),
        )),
        "CREATE" if rest.first().is_some_and(|t| is_keyword(t, "STATISTICS")) => Some(facts(
            "CREATE STATISTICS",
            vec![statistics_table(&rest[1..])?],
            Action::Review,
            "CREATE STATISTICS adds an extended statistics object to a table".to_string(),
        )),
        _ => None,
    }
}

/// `ALTER SEQUENCE …` with only words, numbers and names (every option of the statement, `pg_dump`'s
/// `OWNED BY t.c` among them), and `ALTER <object> name OWNER TO role` for the objects sqlparser does
/// not read it for (`pg_dump` writes one for every object it restores).
fn alter_by_grammar(tokens: &[Token]) -> Option<StatementFacts> {
    let object = keyword(tokens.first()?)?;
    let review = |kind: String, tables: Vec<String>, reason: String| StatementFacts {
        kind,
        tables,
        action: Action::Review,
        reasons: vec![reason],
        ..StatementFacts::default()
    };
    if object == "SEQUENCE" {
        let mut i = 1;
        if tokens.get(i).is_some_and(|t| is_keyword(t, "IF"))
            && tokens.get(i + 1).is_some_and(|t| is_keyword(t, "EXISTS"))
        {
            i += 2;
        }
        let (name, after) = qualified_name(tokens, i)?;
        sequence_options(&tokens[after..]).then_some(())?;
        return Some(review(
            "ALTER SEQUENCE".to_string(),
            vec![name],
            "ALTER SEQUENCE changes a sequence's definition or ownership".to_string(),
        ));
    }
    if object == "TABLE" {
        let (table, reason) =
            alter_column_storage(&tokens[1..]).or_else(|| table_schema_or_cluster(&tokens[1..]))?;
        return Some(review(
            "ALTER TABLE".to_string(),
            vec![table],
            reason.to_string(),
        ));
    }
    if object == "INDEX" {
        // `ALTER INDEX [IF EXISTS] parent ATTACH PARTITION child` (`pg_dump` of partitioned tables)
        let (_, after) = qualified_name(tokens, 1)?;
        let [attach, partition, rest @ ..] = &tokens[after..] else {
            return None;
        };
        if !is_keyword(attach, "ATTACH") || !is_keyword(partition, "PARTITION") {
            return None;
        }
        (qualified_name(rest, 0)?.1 == rest.len()).then_some(())?;
        return Some(review(
            "ALTER INDEX".to_string(),
            vec![],
            "ALTER INDEX … ATTACH PARTITION changes an index's definition".to_string(),
        ));
    }
    if object == "TYPE" {
        if let Some(name) = type_attribute_changes(tokens) {
            let mut facts = review(
                "ALTER TYPE".to_string(),
                vec![],
                format!("ALTER TYPE changes the attributes of composite type {name}"),
            );
            // Changing an attribute's type rewrites the tables of that type (`CASCADE`), re-checking
            // their constraints and rebuilding their indexes: user code may run.
            if tokens
                .iter()
                .skip(1)
                .any(|t| is_keyword(t, "CASCADE") || is_keyword(t, "TYPE"))
            {
                facts.review_beyond_kind = true;
                facts.reasons.push(
                    "with CASCADE or a new attribute type it rewrites the tables of that type, whose constraints and index expressions may run code; only a rule without kinds or tables allows that".to_string(),
                );
            }
            return Some(facts);
        }
    }
    // `ALTER TYPE name OWNER TO role`, `ALTER FUNCTION f(integer) OWNER TO role`, …
    let [head @ .., owner_kw, to_kw, role] = tokens else {
        return None;
    };
    if !is_keyword(owner_kw, "OWNER") || !is_keyword(to_kw, "TO") || name_part(role).is_none() {
        return None;
    }
    let words: Vec<String> = head.iter().map_while(keyword).collect();
    let object = OWNED_OBJECTS
        .iter()
        .filter(|o| {
            o.len() <= words.len()
                && o.len() < head.len()
                && o.iter().zip(&words).all(|(a, b)| a == b)
        })
        .max_by_key(|o| o.len())?;
    let (name, mut after) = qualified_name(head, object.len())?;
    let signed = matches!(
        object[0],
        "FUNCTION" | "PROCEDURE" | "ROUTINE" | "AGGREGATE"
    );
    if signed && head.get(after) == Some(&Token::LParen) {
        after = signature_end(head, after)?;
    }
    (after == head.len()).then_some(())?;
    let relation = matches!(object[0], "TABLE" | "VIEW" | "SEQUENCE" | "MATERIALIZED")
        || object == &["FOREIGN", "TABLE"];
    Some(review(
        format!("ALTER {}", object.join(" ")),
        if relation { vec![name] } else { vec![] },
        "OWNER TO hands the object, and every privilege on it, to another role".to_string(),
    ))
}

/// `TYPE name action [, …]` with each action `ADD ATTRIBUTE name type`, `DROP ATTRIBUTE [IF EXISTS]
/// name` or `ALTER ATTRIBUTE name [SET DATA] TYPE type` (with `COLLATE`, `CASCADE`, `RESTRICT`): the
/// type's name. Types are words, names, numbers and brackets only, never expressions.
fn type_attribute_changes(tokens: &[Token]) -> Option<String> {
    let (name, after) = qualified_name(tokens, 1)?;
    let rest = &tokens[after..];
    let mut depth = 0usize;
    let mut actions: Vec<Vec<&Token>> = vec![Vec::new()];
    for t in rest {
        match t {
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket => depth = depth.checked_sub(1)?,
            Token::Comma if depth == 0 => {
                actions.push(Vec::new());
                continue;
            }
            // Numbers only as a type modifier or array bound.
            Token::Number(..) if depth == 0 => return None,
            Token::Comma | Token::Period | Token::Number(..) | Token::Word(_) => {}
            _ => return None,
        }
        actions.last_mut()?.push(t);
    }
    (depth == 0).then_some(())?;
    for action in &actions {
        let [verb, attribute, ..] = action.as_slice() else {
            return None;
        };
        let verb = keyword(verb)?;
        if !matches!(verb.as_str(), "ADD" | "DROP" | "ALTER") || !is_keyword(attribute, "ATTRIBUTE")
        {
            return None;
        }
        // A name, then (but for DROP) the type.
        (action.len() >= if verb == "DROP" { 3 } else { 4 }).then_some(())?;
    }
    Some(name)
}

/// `COMMENT ON CONSTRAINT name ON [DOMAIN] table IS 'text' | NULL` (which sqlparser does not read): the
/// table (or domain).
fn constraint_comment(tokens: &[Token]) -> Option<String> {
    let [on, constraint, constraint_name, on2, rest @ ..] = tokens else {
        return None;
    };
    if !is_keyword(on, "ON")
        || !is_keyword(constraint, "CONSTRAINT")
        || name_part(constraint_name).is_none()
        || !is_keyword(on2, "ON")
    {
        return None;
    }
    let start = usize::from(rest.first().is_some_and(|t| is_keyword(t, "DOMAIN")));
    let (table, after) = qualified_name(rest, start)?;
    match &rest[after..] {
        [is, Token::SingleQuotedString(_)] if is_keyword(is, "IS") => Some(table),
        [is, null] if is_keyword(is, "IS") && is_keyword(null, "NULL") => Some(table),
        _ => None,
    }
}

/// `SERVER [IF EXISTS] name [, …] [CASCADE | RESTRICT]` after `DROP`.
fn is_drop_server(rest: &[Token]) -> bool {
    let Some((server, mut rest)) = rest.split_first() else {
        return false;
    };
    if !is_keyword(server, "SERVER") {
        return false;
    }
    if let [i, e, after @ ..] = rest {
        if is_keyword(i, "IF") && is_keyword(e, "EXISTS") {
            rest = after;
        }
    }
    if let [body @ .., last] = rest {
        if is_keyword(last, "CASCADE") || is_keyword(last, "RESTRICT") {
            rest = body;
        }
    }
    !rest.is_empty()
        && rest.iter().enumerate().all(|(i, t)| {
            if i % 2 == 1 {
                *t == Token::Comma
            } else {
                name_part(t).is_some()
            }
        })
        && rest.len() % 2 == 1
}

/// Objects whose `ALTER … name OWNER TO role` is read here (sqlparser reads it for few of them).
const OWNED_OBJECTS: &[&[&str]] = &[
    &["TABLE"],
    &["VIEW"],
    &["MATERIALIZED", "VIEW"],
    &["SEQUENCE"],
    &["FOREIGN", "TABLE"],
    &["FOREIGN", "DATA", "WRAPPER"],
    &["TYPE"],
    &["DOMAIN"],
    &["SCHEMA"],
    &["DATABASE"],
    &["COLLATION"],
    &["CONVERSION"],
    &["FUNCTION"],
    &["PROCEDURE"],
    &["ROUTINE"],
    &["AGGREGATE"],
    &["LANGUAGE"],
    &["PROCEDURAL", "LANGUAGE"],
    &["EVENT", "TRIGGER"],
    &["PUBLICATION"],
    &["SUBSCRIPTION"],
    &["STATISTICS"],
    &["SERVER"],
    &["TABLESPACE"],
    &["TEXT", "SEARCH", "CONFIGURATION"],
    &["TEXT", "SEARCH", "DICTIONARY"],
];

/// A routine's argument types in parentheses starting at `open` (`(integer, character varying(10),
/// text[])`): words, names, numbers, commas and nested brackets only — types, never expressions. The
/// index after the closing `)`.
fn signature_end(tokens: &[Token], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, t) in tokens.iter().enumerate().skip(open) {
        match t {
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return (t == &Token::RParen).then_some(i + 1);
                }
            }
            Token::Comma | Token::Period | Token::Number(_, _) => {}
            t if name_part(t).is_some() && !is_keyword(t, "DEFAULT") => {}
            _ => return None,
        }
    }
    None
}

/// `[IF EXISTS] [ONLY] table ALTER [COLUMN] column` and one of `SET STATISTICS n`, `SET STORAGE mode`,
/// `SET COMPRESSION method`, or `ADD GENERATED { ALWAYS | BY DEFAULT } AS IDENTITY [ ( sequence options ) ]`
/// (`pg_dump` writes each as a statement of its own): the table, and what the change does.
fn alter_column_storage(tokens: &[Token]) -> Option<(String, &'static str)> {
    let mut i = 0;
    let word = |i: usize, w: &str| tokens.get(i).is_some_and(|t| is_keyword(t, w));
    if word(0, "IF") && word(1, "EXISTS") {
        i = 2;
    }
    if word(i, "ONLY") {
        i += 1;
    }
    let (table, after) = qualified_name(tokens, i)?;
    i = after;
    word(i, "ALTER").then_some(())?;
    i += 1;
    if word(i, "COLUMN") {
        i += 1;
    }
    name_part(tokens.get(i)?)?;
    i += 1;
    let rest = &tokens[i..];
    let is = |t: &Token, w: &str| is_keyword(t, w);
    let reason = match rest {
        [set, stat, n] | [set, stat, Token::Minus, n]
            if is(set, "SET") && is(stat, "STATISTICS") && matches!(n, Token::Number(_, _)) =>
        {
            "SET STATISTICS changes how much ANALYZE samples a column"
        }
        [set, storage, mode]
            if is(set, "SET") && is(storage, "STORAGE") && keyword(mode).is_some() =>
        {
            "SET STORAGE changes how a column's values are stored"
        }
        [set, compression, method]
            if is(set, "SET") && is(compression, "COMPRESSION") && name_part(method).is_some() =>
        {
            "SET COMPRESSION changes how a column's values are compressed"
        }
        [add, generated, rest @ ..] if is(add, "ADD") && is(generated, "GENERATED") => {
            let rest = match rest {
                [always, rest @ ..] if is(always, "ALWAYS") => rest,
                [by, default, rest @ ..] if is(by, "BY") && is(default, "DEFAULT") => rest,
                _ => return None,
            };
            let [as_kw, identity, options @ ..] = rest else {
                return None;
            };
            if !is(as_kw, "AS") || !is(identity, "IDENTITY") {
                return None;
            }
            if let [Token::LParen, inner @ .., Token::RParen] = options {
                sequence_options(inner).then_some(())?;
            } else if !options.is_empty() {
                return None;
            }
            "ADD GENERATED AS IDENTITY makes a column take its values from a new sequence"
        }
        _ => return None,
    };
    Some((table, reason))
}

/// `[IF EXISTS] [ONLY] table SET SCHEMA s`, `… CLUSTER ON index` or `… SET WITHOUT CLUSTER`: the table,
/// and what the change does.
fn table_schema_or_cluster(tokens: &[Token]) -> Option<(String, &'static str)> {
    let word = |i: usize, w: &str| tokens.get(i).is_some_and(|t| is_keyword(t, w));
    let mut i = 0;
    if word(0, "IF") && word(1, "EXISTS") {
        i = 2;
    }
    if word(i, "ONLY") {
        i += 1;
    }
    let (table, after) = qualified_name(tokens, i)?;
    let rest = &tokens[after..];
    let reason = match rest {
        [set, schema, name]
            if is_keyword(set, "SET")
                && is_keyword(schema, "SCHEMA")
                && name_part(name).is_some() =>
        {
            "SET SCHEMA moves the table, and what its name resolves to, into another schema"
        }
        [cluster, on, index]
            if is_keyword(cluster, "CLUSTER")
                && is_keyword(on, "ON")
                && name_part(index).is_some() =>
        {
            "CLUSTER ON picks the index a later CLUSTER orders the table by"
        }
        [set, without, cluster]
            if is_keyword(set, "SET")
                && is_keyword(without, "WITHOUT")
                && is_keyword(cluster, "CLUSTER") =>
        {
            "SET WITHOUT CLUSTER forgets the table's clustering index"
        }
        _ => return None,
    };
    Some((table, reason))
}

/// `[IF NOT EXISTS] name [ ( kind [, …] ) ] ON column, column [, …] FROM table`: plain columns only (an
/// expression statistic would run its expression at every ANALYZE). The table.
fn statistics_table(tokens: &[Token]) -> Option<String> {
    let mut i = 0;
    if tokens.first().is_some_and(|t| is_keyword(t, "IF")) {
        (is_keyword(tokens.get(1)?, "NOT") && is_keyword(tokens.get(2)?, "EXISTS")).then_some(())?;
        i = 3;
    }
    i = qualified_name(tokens, i)?.1;
    if tokens.get(i) == Some(&Token::LParen) {
        i = list_in_parens(tokens, i, |i| keyword(tokens.get(i)?).map(|_| i + 1))?;
    }
    is_keyword(tokens.get(i)?, "ON").then_some(())?;
    i += 1;
    loop {
        name_part(tokens.get(i)?)?;
        i += 1;
        match tokens.get(i)? {
            Token::Comma => i += 1,
            t if is_keyword(t, "FROM") => break,
            _ => return None,
        }
    }
    let (table, end) = qualified_name(tokens, i + 1)?;
    (end == tokens.len()).then_some(table)
}

/// A possibly schema-qualified name starting at `i`: the name as PostgreSQL folds it and the index after it.
pub(super) fn qualified_name(tokens: &[Token], mut i: usize) -> Option<(String, usize)> {
    let mut name = name_part(tokens.get(i)?)?;
    i += 1;
    while tokens.get(i) == Some(&Token::Period) {
        name.push('.');
        name.push_str(&name_part(tokens.get(i + 1)?)?);
        i += 2;
    }
    Some((name, i))
}

/// The options of `ALTER SEQUENCE`: words, (signed) numbers, and `.`-qualified names (`OWNED BY s.t.c`,
/// `AS bigint`, `OWNER TO r`, `RENAME TO n`, `SET SCHEMA s`), nothing else.
fn sequence_options(tokens: &[Token]) -> bool {
    !tokens.is_empty()
        && tokens.iter().all(|t| {
            matches!(
                t,
                Token::Number(_, _) | Token::Minus | Token::Plus | Token::Period
            ) || name_part(t).is_some()
        })
}

/// `[ ( option [value] [, …] ) ] { INDEX | TABLE | SCHEMA | DATABASE | SYSTEM } [ CONCURRENTLY ] [ name ]
/// [ FORCE ]`: the table named by `REINDEX TABLE`, none otherwise.
fn reindex_target(tokens: &[Token]) -> Option<Vec<String>> {
    let mut i = 0;
    if tokens.first() == Some(&Token::LParen) {
        i = options_in_parens(tokens)?;
    }
    let object = keyword(tokens.get(i)?)?;
    if !["INDEX", "TABLE", "SCHEMA", "DATABASE", "SYSTEM"].contains(&object.as_str()) {
        return None;
    }
    i += 1;
    if tokens.get(i).is_some_and(|t| is_keyword(t, "CONCURRENTLY")) {
        i += 1;
    }
    let mut tables = Vec::new();
    if i < tokens.len() && !is_keyword(&tokens[i], "FORCE") {
        let (name, after) = qualified_name(tokens, i)?;
        if object == "TABLE" {
            tables.push(name);
        }
        i = after;
    } else if !matches!(object.as_str(), "DATABASE" | "SYSTEM") {
        return None;
    }
    if tokens.get(i).is_some_and(|t| is_keyword(t, "FORCE")) {
        i += 1;
    }
    (i == tokens.len()).then_some(tables)
}

/// `[VERBOSE] [ table [ USING index ] ]`, `( option [value] [, …] ) [ table [ USING index ] ]`, or the
/// old `index ON table`: the table named, if any.
fn cluster_target(tokens: &[Token]) -> Option<Vec<String>> {
    let mut i = 0;
    if tokens.first() == Some(&Token::LParen) {
        i = options_in_parens(tokens)?;
    } else if tokens.first().is_some_and(|t| is_keyword(t, "VERBOSE")) {
        i = 1;
    }
    if i == tokens.len() {
        return Some(vec![]);
    }
    let (first, after) = qualified_name(tokens, i)?;
    match tokens.get(after) {
        None => Some(vec![first]),
        Some(t) if is_keyword(t, "USING") => {
            let (_, end) = qualified_name(tokens, after + 1)?;
            (end == tokens.len()).then(|| vec![first])
        }
        Some(t) if is_keyword(t, "ON") && i == 0 => {
            let (table, end) = qualified_name(tokens, after + 1)?;
            (end == tokens.len()).then(|| vec![table])
        }
        _ => None,
    }
}

/// `( option [value] [, …] )` at the start of `tokens`, each option a word with an optional word,
/// number or string value: the index after the `)`.
fn options_in_parens(tokens: &[Token]) -> Option<usize> {
    list_in_parens(tokens, 0, |i| {
        keyword(tokens.get(i)?)?;
        Some(match tokens.get(i + 1)? {
            Token::Word(_) | Token::Number(_, _) | Token::SingleQuotedString(_) => i + 2,
            _ => i + 1,
        })
    })
}

/// `keyword 'transaction id'`: the rest of `PREPARE TRANSACTION` / `COMMIT PREPARED` / `ROLLBACK PREPARED`.
fn is_keyword_and_gid(tokens: &[Token], word: &str) -> bool {
    matches!(tokens, [k, Token::SingleQuotedString(_)] if is_keyword(k, word))
}

/// `[LANGUAGE name] code [LANGUAGE name]` with the code one string literal and the language named once.
fn is_do_block(tokens: &[Token]) -> bool {
    let code = |t: &Token| {
        matches!(
            t,
            Token::SingleQuotedString(_)
                | Token::EscapedStringLiteral(_)
                | Token::DollarQuotedString(_)
        )
    };
    let language = |t: &[Token]| {
        matches!(t, [l, name] if is_keyword(l, "LANGUAGE")
            && (name_part(name).is_some() || matches!(name, Token::SingleQuotedString(_))))
    };
    match tokens {
        [c] => code(c),
        [c, tail @ ..] if code(c) => language(tail),
        [head @ .., c] if code(c) => language(head),
        _ => false,
    }
}

/// A name part: an unquoted word (lower-cased, as PostgreSQL folds it) or a double-quoted identifier.
fn name_part(token: &Token) -> Option<String> {
    match token {
        Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_lowercase()),
        Token::Word(w) if w.quote_style == Some('"') => Some(w.value.clone()),
        _ => None,
    }
}

/// `[ ( option [value] [, …] ) ] [FULL] [FREEZE] [VERBOSE] [ANALYZE] [table [ (column [, …]) ] [, …]]`
/// (`ANALYZE` takes only `VERBOSE` among the bare words); the tables named.
fn vacuum_targets(tokens: &[Token], vacuum: bool) -> Option<Vec<String>> {
    let mut i = 0;
    if tokens.first() == Some(&Token::LParen) {
        i = options_in_parens(tokens)?;
    }
    let bare: &[&str] = if vacuum {
        &["FULL", "FREEZE", "VERBOSE", "ANALYZE", "ANALYSE"]
    } else {
        &["VERBOSE"]
    };
    while let Some(word) = tokens.get(i).and_then(keyword) {
        if !bare.contains(&word.as_str()) {
            break;
        }
        i += 1;
    }
    let mut tables = Vec::new();
    while i < tokens.len() {
        if !tables.is_empty() {
            (tokens[i] == Token::Comma).then_some(())?;
            i += 1;
        }
        let (name, after) = qualified_name(tokens, i)?;
        i = after;
        if tokens.get(i) == Some(&Token::LParen) {
            i = list_in_parens(tokens, i, |i| name_part(tokens.get(i)?).map(|_| i + 1))?;
        }
        tables.push(name);
    }
    Some(tables)
}

/// `( item [, item …] )` starting at `open` (a `(`): the index after the `)`. `item` takes the index of
/// an item's first token and returns the index after it.
fn list_in_parens(
    tokens: &[Token],
    open: usize,
    item: impl Fn(usize) -> Option<usize>,
) -> Option<usize> {
    let mut i = open + 1;
    loop {
        i = item(i)?;
        match tokens.get(i)? {
            Token::Comma => i += 1,
            Token::RParen => return Some(i + 1),
            _ => return None,
        }
    }
}

/// `MOVE` / `FETCH [direction] [FROM | IN] cursor`: words and (signed) counts only, ending in the
/// cursor's name.
fn is_cursor_move(tokens: &[Token]) -> bool {
    let Some((cursor, direction)) = tokens.split_last() else {
        return false;
    };
    name_part(cursor).is_some()
        && direction.len() <= 4
        && direction.iter().all(|t| match t {
            Token::Number(_, _) | Token::Minus => true,
            t => keyword(t).is_some_and(|w| {
                [
                    "NEXT", "PRIOR", "FIRST", "LAST", "ABSOLUTE", "RELATIVE", "ALL", "FORWARD",
                    "BACKWARD", "FROM", "IN",
                ]
                .contains(&w.as_str())
            }),
        })
}

/// `CONSTRAINTS { ALL | name [, …] } { DEFERRED | IMMEDIATE }` (after `SET`).
fn is_set_constraints(tokens: &[Token]) -> bool {
    let [first, names @ .., mode] = tokens else {
        return false;
    };
    if keyword(first).as_deref() != Some("CONSTRAINTS")
        || !keyword(mode).is_some_and(|m| m == "DEFERRED" || m == "IMMEDIATE")
    {
        return false;
    }
    if let [all] = names {
        if keyword(all).as_deref() == Some("ALL") {
            return true;
        }
    }
    // name [, name …], each possibly schema-qualified
    let mut expect_name = true;
    for t in names {
        expect_name = match t {
            Token::Comma if !expect_name => true,
            Token::Period if !expect_name => true,
            t if expect_name && name_part(t).is_some() && keyword(t).as_deref() != Some("ALL") => {
                false
            }
            _ => return false,
        };
    }
    !names.is_empty() && !expect_name
}
