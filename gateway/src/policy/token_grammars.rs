//! PostgreSQL statements sqlparser does not parse but whose whole grammar is small enough to check token by
//! token: `VACUUM` / `ANALYZE` with options (`pgbench -i` sends `vacuum analyze t`), `CHECKPOINT`, `MOVE`
//! and `FETCH` (in the forms sqlparser rejects), and `SET CONSTRAINTS` (ORMs defer foreign keys while
//! loading fixtures), `DO` (its code is opaque: always reviewed unless a rule allows it), and two-phase
//! commit (`PREPARE TRANSACTION`, `COMMIT PREPARED`, `ROLLBACK PREPARED`).
//!
//! A statement recognised here counts as parsed, so a rule may allow it; anything that strays from the
//! grammar returns `None` and stays an unparsed statement (held, never allowed).

use sqlparser::tokenizer::Token;

use super::fallback::{is_keyword, keyword, StatementTokens};
use super::verdict::{Action, StatementFacts};

/// Facts for a statement of the small grammars above, or `None` when it is not exactly one of them.
pub fn classify_by_grammar(tokens: &StatementTokens) -> Option<StatementFacts> {
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
        _ => None,
    }
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
        Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_lowercase()),
        Token::Word(w) if w.quote_style == Some('"') => Some(w.value.clone()),
        _ => None,
    }
}

/// `[ ( option [value] [, …] ) ] [FULL] [FREEZE] [VERBOSE] [ANALYZE] [table [ (column [, …]) ] [, …]]`
/// (`ANALYZE` takes only `VERBOSE` among the bare words); the tables named.
fn vacuum_targets(tokens: &[Token], vacuum: bool) -> Option<Vec<String>> {
    let mut i = 0;
    if tokens.first() == Some(&Token::LParen) {
        // option name, then an optional value: a word, a number or a string
        i = list_in_parens(tokens, 0, |i| {
            keyword(tokens.get(i)?)?;
            Some(match tokens.get(i + 1)? {
                Token::Word(_) | Token::Number(_, _) | Token::SingleQuotedString(_) => i + 2,
                _ => i + 1,
            })
        })?;
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
        let mut name = name_part(tokens.get(i)?)?;
        i += 1;
        while tokens.get(i) == Some(&Token::Period) {
            name.push('.');
            name.push_str(&name_part(tokens.get(i + 1)?)?);
            i += 2;
        }
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
