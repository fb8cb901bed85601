//! Statements sqlparser rejects only because of a clause that cannot change the verdict: they are judged
//! as the statement without that clause, and only when what remains parses as the same kind of statement.
//! The SQL sent upstream is always the original text; this only decides how it is classified. Statement
//! tokens carry no whitespace or EOF (see `split_statements`).
//!
//! - `[NOT] DEFERRABLE` among transaction modes (tokio-postgres' and psycopg's transaction builders):
//!   it only makes a serializable read-only transaction wait for a safe snapshot.
//! - COPY options after `STDIN` / `STDOUT` (`pgbench -i` sends `copy t from stdin with (freeze on)`):
//!   they set the data format and how rows load; what is copied, and where, is in the part still parsed.
//! - `FOR NO KEY UPDATE` / `FOR KEY SHARE` row locks (ORMs' optimistic locking): judged as the stronger
//!   `FOR UPDATE` / `FOR SHARE`.
//! - `CREATE USER` with PostgreSQL's role options (sqlparser knows another dialect's CREATE USER): it is
//!   `CREATE ROLE … LOGIN`, and judged as that `CREATE ROLE`.
//! - `COST n` / `ROWS n` of `CREATE FUNCTION`, `ONLY` in `CREATE INDEX … ON ONLY t`, and a domain's
//!   `NOT NULL` / `NULL` constraints (all in `pg_dump` output); PostgreSQL's `CREATE PROCEDURE` is judged
//!   as the `CREATE FUNCTION … RETURNS void` with the same arguments and body.
//! - `WITH [NO] DATA` at the end of `CREATE MATERIALIZED VIEW` (judged as filled at once).
//! - Array element assignment in `UPDATE … SET a[i] = v` (judged as `SET a = (i) + v`).
//! - `CREATE INDEX … TABLESPACE t`; `ALTER COLUMN … DROP IDENTITY` (as `DROP DEFAULT`) and a type
//!   change's `COLLATE`; `EXPLAIN (SELECT …) UNION …`; a lock clause's `OF a, b` list (Django's).
//! - Spellings of the same expressions sqlparser lacks (`BETWEEN SYMMETRIC`, `IS DOCUMENT`, `COLLATION
//!   FOR`, `substring(… SIMILAR …)`, window `EXCLUDE`, `ROWS FROM`, …: see
//!   [`with_plain_spellings`]).

use sqlparser::ast::{CopyTarget, Set, Statement};
use sqlparser::tokenizer::Token;

use super::classify::{classify_statement, parse_one};
use super::fallback::{is_keyword, keyword, top_level_position, StatementTokens};
use super::verdict::StatementFacts;

/// `tokens` rewritten by a case above, parsed: `None` when the case did not apply (`changed` is false),
/// or what it made does not parse as a statement `is_kind` accepts.
fn reparsed(
    tokens: Vec<Token>,
    changed: bool,
    is_kind: fn(&Statement) -> bool,
) -> Option<Statement> {
    if !changed {
        return None;
    }
    let statement = parse_one(tokens).ok()?;
    is_kind(&statement).then_some(statement)
}

/// Facts of `tokens` judged without an inert clause, or `None` when none of the cases above applies.
pub fn classify_without_inert_clause(tokens: &StatementTokens) -> Option<StatementFacts> {
    let statement = without_deferrable(&tokens.0)
        .or_else(|| without_copy_options(&tokens.0))
        .or_else(|| with_strong_row_locks(&tokens.0))
        .or_else(|| user_as_role(&tokens.0))
        .or_else(|| catalog_operators_plain(&tokens.0))
        .or_else(|| routine_without_planner_hints(&tokens.0))
        .or_else(|| index_on_only(&tokens.0))
        .or_else(|| index_without_tablespace(&tokens.0))
        .or_else(|| alter_column_plainly(&tokens.0))
        .or_else(|| explain_parenthesised_query(&tokens.0))
        .or_else(|| domain_without_null_constraints(&tokens.0))
        .or_else(|| materialized_view_without_data_clause(&tokens.0))
        .or_else(|| element_assignment_as_whole(&tokens.0))
        .or_else(|| without_referential_action_columns(&tokens.0))
        .or_else(|| with_plain_spellings(&tokens.0));
    if let Some(statement) = statement {
        return Some(classify_statement(&statement));
    }
    let statement = procedure_as_function(&tokens.0)?;
    let mut facts = classify_statement(&statement);
    facts.kind = "CREATE PROCEDURE".to_string();
    Some(facts)
}

/// `CREATE [OR REPLACE] FUNCTION|PROCEDURE`: the index of the routine word, or `None`.
fn routine_word(tokens: &[Token], word: &str) -> Option<usize> {
    if !is_keyword(tokens.first()?, "CREATE") {
        return None;
    }
    let at = if is_keyword(tokens.get(1)?, "OR") && is_keyword(tokens.get(2)?, "REPLACE") {
        3
    } else {
        1
    };
    is_keyword(tokens.get(at)?, word).then_some(at)
}

/// Follows `(`/`[` nesting: `depth` after token `t`.
fn nest(depth: &mut usize, t: &Token) {
    match t {
        Token::LParen | Token::LBracket => *depth += 1,
        Token::RParen | Token::RBracket => *depth = depth.saturating_sub(1),
        _ => {}
    }
}

/// `tokens` without each `word number` pair outside brackets; `None` when there is none.
fn without_numbered_options(tokens: &[Token], words: &[&str]) -> Option<Vec<Token>> {
    let mut kept = Vec::with_capacity(tokens.len());
    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let t = &tokens[i];
        nest(&mut depth, t);
        if depth == 0
            && words.iter().any(|w| is_keyword(t, w))
            && matches!(tokens.get(i + 1), Some(Token::Number(_, _)))
        {
            i += 2;
            continue;
        }
        kept.push(t.clone());
        i += 1;
    }
    (kept.len() < tokens.len()).then_some(kept)
}

/// `CREATE FUNCTION … COST n` / `ROWS n` without those planner estimates (`pg_dump` writes them for
/// functions whose estimates were changed): they change how a plan is costed, never what runs.
fn routine_without_planner_hints(tokens: &[Token]) -> Option<Statement> {
    routine_word(tokens, "FUNCTION")?;
    let kept = without_numbered_options(tokens, &["COST", "ROWS"])?;
    let statement = parse_one(kept).ok()?;
    matches!(statement, Statement::CreateFunction(_)).then_some(statement)
}

/// PostgreSQL's `CREATE PROCEDURE name (args) …` (sqlparser knows another dialect's) read as the
/// `CREATE FUNCTION name (args) RETURNS void …` with the same arguments, language and body, so it is
/// judged as that function would be (a C routine loaded from a file is blocked either way).
fn procedure_as_function(tokens: &[Token]) -> Option<Statement> {
    let at = routine_word(tokens, "PROCEDURE")?;
    let open = at + 1 + tokens[at + 1..].iter().position(|t| t == &Token::LParen)?;
    let mut depth = 0usize;
    let mut close = None;
    for (i, t) in tokens.iter().enumerate().skip(open) {
        match t {
            Token::LParen => depth += 1,
            Token::RParen => {
                depth -= 1;
                if depth == 0 {
                    close = Some(i);
                    break;
                }
            }
            _ => {}
        }
    }
    let close = close?;
    let mut out = Vec::with_capacity(tokens.len() + 2);
    out.extend_from_slice(&tokens[..at]);
    out.push(Token::make_keyword("FUNCTION"));
    out.extend_from_slice(&tokens[at + 1..=close]);
    out.push(Token::make_keyword("RETURNS"));
    out.push(Token::make_word("void", None));
    out.extend_from_slice(&tokens[close + 1..]);
    let statement = parse_one(out).ok()?;
    matches!(statement, Statement::CreateFunction(_)).then_some(statement)
}

/// `CREATE INDEX … ON ONLY t …` (`pg_dump`'s index on a partitioned table's parent alone) as the
/// same index on `t`: the table and columns judged are the same.
fn index_on_only(tokens: &[Token]) -> Option<Statement> {
    if !is_keyword(tokens.first()?, "CREATE") {
        return None;
    }
    let only = tokens
        .windows(2)
        .position(|w| is_keyword(&w[0], "ON") && is_keyword(&w[1], "ONLY"))?
        + 1;
    let mut kept = tokens.to_vec();
    kept.remove(only);
    let statement = parse_one(kept).ok()?;
    matches!(statement, Statement::CreateIndex(_)).then_some(statement)
}

/// `CREATE INDEX … TABLESPACE name`: where the index is stored, not what it reads.
fn index_without_tablespace(tokens: &[Token]) -> Option<Statement> {
    if !is_keyword(tokens.first()?, "CREATE") {
        return None;
    }
    let at = tokens.iter().position(|t| is_keyword(t, "TABLESPACE"))?;
    let mut kept = tokens.to_vec();
    kept.drain(at..(at + 2).min(tokens.len()));
    let statement = parse_one(kept).ok()?;
    matches!(statement, Statement::CreateIndex(_)).then_some(statement)
}

/// `ALTER TABLE … ALTER [COLUMN] c DROP IDENTITY [IF EXISTS]`, judged as `… ALTER COLUMN c DROP
/// DEFAULT` (the same table altered, the same way: the column stops generating values); and a column
/// type change's `COLLATE name` dropped (the same column of the same table changes type).
fn alter_column_plainly(tokens: &[Token]) -> Option<Statement> {
    if !is_keyword(tokens.first()?, "ALTER") || !is_keyword(tokens.get(1)?, "TABLE") {
        return None;
    }
    let mut out: Vec<Token> = Vec::with_capacity(tokens.len());
    let mut changed = false;
    let mut i = 0;
    while i < tokens.len() {
        let word = |k: usize, w: &str| tokens.get(i + k).is_some_and(|t| is_keyword(t, w));
        if word(0, "DROP") && word(1, "IDENTITY") {
            out.extend([Token::make_keyword("DROP"), Token::make_keyword("DEFAULT")]);
            i += if word(2, "IF") && word(3, "EXISTS") {
                4
            } else {
                2
            };
            changed = true;
        } else if word(0, "COLLATE") && out.iter().any(|t| is_keyword(t, "TYPE")) {
            i += 2;
            changed = true;
        } else {
            out.push(tokens[i].clone());
            i += 1;
        }
    }
    reparsed(out, changed, |s| matches!(s, Statement::AlterTable(_)))
}

/// `EXPLAIN (SELECT …) UNION (SELECT …)` (a query starting with a parenthesis, which sqlparser takes
/// for EXPLAIN's option list), judged as `EXPLAIN SELECT * FROM (that query) AS q`: the same query
/// planned.
fn explain_parenthesised_query(tokens: &[Token]) -> Option<Statement> {
    let [explain, Token::LParen, first, ..] = tokens else {
        return None;
    };
    if !is_keyword(explain, "EXPLAIN")
        || !["SELECT", "WITH", "VALUES"]
            .iter()
            .any(|w| is_keyword(first, w))
    {
        return None;
    }
    let mut out = vec![
        explain.clone(),
        Token::make_keyword("SELECT"),
        Token::Mul,
        Token::make_keyword("FROM"),
        Token::LParen,
    ];
    out.extend_from_slice(&tokens[1..]);
    out.extend([
        Token::RParen,
        Token::make_keyword("AS"),
        Token::make_word("q", None),
    ]);
    let statement = parse_one(out).ok()?;
    matches!(statement, Statement::Explain { .. }).then_some(statement)
}

/// The statement with PostgreSQL spellings sqlparser does not read replaced by ones it does that
/// evaluate the same expressions and read the same tables (only the shape of the result differs):
/// `BETWEEN SYMMETRIC` → `BETWEEN`, `IS [NOT] DOCUMENT` → `IS [NOT] NULL`, `COLLATION FOR (x)` → `(x)`,
/// `substring(x SIMILAR p ESCAPE e)` → `substring(x, p, e)`, a window frame's `EXCLUDE …` dropped,
/// `ROWS FROM (f(), g())` →
/// `(SELECT f(), g())`, `GROUP BY DISTINCT` → `GROUP BY`, `WHERE CURRENT OF c` → `WHERE TRUE` (one row
/// of the write's own table), `LIKE t INCLUDING …` options dropped, `DROP INDEX CONCURRENTLY` →
/// `DROP INDEX`.
fn with_plain_spellings(tokens: &[Token]) -> Option<Statement> {
    let word = |i: usize, w: &str| tokens.get(i).is_some_and(|t| is_keyword(t, w));
    let mut out: Vec<Token> = Vec::with_capacity(tokens.len());
    // Depths at which a `substring(` call's arguments are read (its SIMILAR and ESCAPE become commas).
    let mut substring_depths: Vec<usize> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let t = &tokens[i];
        match t {
            Token::LParen => {
                depth += 1;
                if out.last().is_some_and(|p| is_keyword(p, "SUBSTRING")) {
                    substring_depths.push(depth);
                }
            }
            Token::RParen => {
                if substring_depths.last() == Some(&depth) {
                    substring_depths.pop();
                }
                depth = depth.saturating_sub(1);
            }
            _ => {}
        }
        let after = |w: &str| out.last().is_some_and(|p: &Token| is_keyword(p, w));
        if (is_keyword(t, "SYMMETRIC") || is_keyword(t, "ASYMMETRIC")) && after("BETWEEN") {
            i += 1;
            continue;
        }
        if is_keyword(t, "DOCUMENT")
            && (after("IS")
                || (after("NOT") && out.len() >= 2 && is_keyword(&out[out.len() - 2], "IS")))
        {
            out.push(Token::make_keyword("NULL"));
            i += 1;
            continue;
        }
        if is_keyword(t, "COLLATION")
            && word(i + 1, "FOR")
            && tokens.get(i + 2) == Some(&Token::LParen)
        {
            i += 2;
            continue;
        }
        if (is_keyword(t, "SIMILAR") || is_keyword(t, "ESCAPE"))
            && substring_depths.last() == Some(&depth)
        {
            out.push(Token::Comma);
            i += 1;
            continue;
        }
        if is_keyword(t, "EXCLUDE") && depth > 0 {
            let skip = if (word(i + 1, "CURRENT") && word(i + 2, "ROW"))
                || (word(i + 1, "NO") && word(i + 2, "OTHERS"))
            {
                3
            } else if word(i + 1, "GROUP") || word(i + 1, "TIES") {
                2
            } else {
                0
            };
            if skip > 0 && tokens.get(i + skip) == Some(&Token::RParen) {
                i += skip;
                continue;
            }
        }
        let in_from =
            after("FROM") || after("JOIN") || after("LATERAL") || out.last() == Some(&Token::Comma);
        if is_keyword(t, "ROWS")
            && word(i + 1, "FROM")
            && tokens.get(i + 2) == Some(&Token::LParen)
            && in_from
        {
            out.push(Token::LParen);
            out.push(Token::make_keyword("SELECT"));
            depth += 1;
            i += 3;
            continue;
        }
        if is_keyword(t, "DISTINCT")
            && after("BY")
            && out.len() >= 2
            && is_keyword(&out[out.len() - 2], "GROUP")
        {
            i += 1;
            continue;
        }
        if is_keyword(t, "CURRENT") && word(i + 1, "OF") && after("WHERE") && tokens.len() == i + 3
        {
            matches!(tokens.get(i + 2)?, Token::Word(_)).then_some(())?;
            out.push(Token::make_keyword("TRUE"));
            i += 3;
            continue;
        }
        // `LIKE t INCLUDING ALL EXCLUDING COMMENTS` inside CREATE TABLE's list: only right after the
        // `LIKE name` (or an option already dropped), where nothing but options may stand.
        let after_like = match out.as_slice() {
            [.., like, Token::Word(_), Token::Period, Token::Word(_)] => is_keyword(like, "LIKE"),
            [.., like, Token::Word(_)] => is_keyword(like, "LIKE"),
            _ => false,
        };
        if (is_keyword(t, "INCLUDING") || is_keyword(t, "EXCLUDING"))
            && depth == 1
            && after_like
            && word(0, "CREATE")
            && tokens.get(i + 1).and_then(keyword).is_some()
            && matches!(
                tokens.get(i + 2),
                Some(Token::RParen | Token::Comma) | Some(Token::Word(_))
            )
        {
            i += 2;
            continue;
        }
        if is_keyword(t, "CONCURRENTLY")
            && after("INDEX")
            && out.len() == 2
            && is_keyword(&out[0], "DROP")
        {
            i += 1;
            continue;
        }
        out.push(t.clone());
        i += 1;
    }
    if out.as_slice() == tokens {
        return None;
    }
    parse_one(out).ok()
}

/// `UPDATE t SET a[i] = v, …` (array element or field assignment, which sqlparser does not read) as
/// `UPDATE t SET a = (i) + v, …`: the same table, column and WHERE, and every expression of the
/// subscripts still judged. A slice's bounds (`a[lo:hi]`, either may be left out) are judged alike:
/// `(lo) + (hi) + v`.
fn element_assignment_as_whole(tokens: &[Token]) -> Option<Statement> {
    if !is_keyword(tokens.first()?, "UPDATE") {
        return None;
    }
    let mut out: Vec<Token> = Vec::with_capacity(tokens.len() + 4);
    let mut depth = 0usize;
    let mut in_set = false;
    let mut changed = false;
    let mut i = 0;
    while i < tokens.len() {
        let t = &tokens[i];
        let target = in_set
            && depth == 0
            && matches!(t, Token::Word(_))
            && tokens.get(i + 1) == Some(&Token::LBracket)
            && out
                .last()
                .is_some_and(|p| p == &Token::Comma || is_keyword(p, "SET"));
        if target {
            // column [ sub ] [ sub ] … = value  →  column = ( sub ) + ( sub ) + … value
            out.push(t.clone());
            let mut subscripts: Vec<Token> = Vec::new();
            let mut j = i + 1;
            while tokens.get(j) == Some(&Token::LBracket) {
                let mut level = 0usize;
                let start = j;
                let mut colon = None;
                loop {
                    match tokens.get(j)? {
                        Token::LBracket => level += 1,
                        Token::RBracket => {
                            level -= 1;
                            if level == 0 {
                                break;
                            }
                        }
                        // One `:` per subscript: a slice's bounds.
                        Token::Colon if level == 1 && colon.replace(j).is_some() => return None,
                        _ => {}
                    }
                    j += 1;
                }
                let bounds = match colon {
                    Some(c) => [&tokens[start + 1..c], &tokens[c + 1..j]],
                    None => [&tokens[start + 1..j], &[][..]],
                };
                for bound in bounds {
                    if bound.iter().all(|t| matches!(t, Token::Whitespace(_))) {
                        continue;
                    }
                    subscripts.push(Token::LParen);
                    subscripts.extend_from_slice(bound);
                    subscripts.push(Token::RParen);
                    subscripts.push(Token::Plus);
                }
                j += 1;
            }
            if tokens.get(j) != Some(&Token::Eq) {
                return None;
            }
            out.push(Token::Eq);
            out.extend(subscripts);
            i = j + 1;
            changed = true;
            continue;
        }
        nest(&mut depth, t);
        if depth == 0 && is_keyword(t, "SET") {
            in_set = true;
        } else if depth == 0
            && ["FROM", "WHERE", "RETURNING"]
                .iter()
                .any(|w| is_keyword(t, w))
        {
            in_set = false;
        }
        out.push(t.clone());
        i += 1;
    }
    reparsed(out, changed, |s| matches!(s, Statement::Update(_)))
}

/// `CREATE MATERIALIZED VIEW … WITH [NO] DATA` without the clause, judged as the view filled at once
/// (its query runs), which `WITH NO DATA` only postpones to the first `REFRESH`.
fn materialized_view_without_data_clause(tokens: &[Token]) -> Option<Statement> {
    if !is_keyword(tokens.first()?, "CREATE") {
        return None;
    }
    let kept = match tokens {
        [head @ .., with, no, data]
            if is_keyword(with, "WITH") && is_keyword(no, "NO") && is_keyword(data, "DATA") =>
        {
            head
        }
        [head @ .., with, data] if is_keyword(with, "WITH") && is_keyword(data, "DATA") => head,
        _ => return None,
    };
    let statement = parse_one(kept.to_vec()).ok()?;
    matches!(statement, Statement::CreateView(ref v) if v.materialized).then_some(statement)
}

/// A foreign key's `ON DELETE SET NULL (columns)` / `SET DEFAULT (columns)` (PostgreSQL 15) without
/// the column list, which sqlparser does not read: it only narrows which columns the action sets.
fn without_referential_action_columns(tokens: &[Token]) -> Option<Statement> {
    let mut kept: Vec<Token> = Vec::with_capacity(tokens.len());
    let mut changed = false;
    let mut i = 0;
    while i < tokens.len() {
        let t = &tokens[i];
        kept.push(t.clone());
        i += 1;
        let action_done = kept.len() >= 4
            && (is_keyword(t, "NULL") || is_keyword(t, "DEFAULT"))
            && is_keyword(&kept[kept.len() - 2], "SET")
            && is_keyword(&kept[kept.len() - 3], "DELETE")
            && is_keyword(&kept[kept.len() - 4], "ON");
        if action_done && tokens.get(i) == Some(&Token::LParen) {
            // Names and commas up to the closing bracket.
            let close = tokens[i..].iter().position(|t| *t == Token::RParen)? + i;
            if !tokens[i + 1..close]
                .iter()
                .all(|t| matches!(t, Token::Word(_) | Token::Comma))
            {
                return None;
            }
            i = close + 1;
            changed = true;
        }
    }
    reparsed(kept, changed, |_| true)
}

/// `CREATE DOMAIN … [CONSTRAINT name] NOT NULL` / `NULL` without those constraints, which sqlparser does
/// not read: they run no code (a `CHECK`, which may, is kept and judged). The `AS` before the data
/// type, which PostgreSQL lets out, is put in.
fn domain_without_null_constraints(tokens: &[Token]) -> Option<Statement> {
    if !is_keyword(tokens.first()?, "CREATE") || !is_keyword(tokens.get(1)?, "DOMAIN") {
        return None;
    }
    let mut changed = false;
    let mut name_end = 2;
    if !matches!(tokens.get(name_end)?, Token::Word(_)) {
        return None;
    }
    while tokens.get(name_end + 1) == Some(&Token::Period)
        && matches!(tokens.get(name_end + 2), Some(Token::Word(_)))
    {
        name_end += 2;
    }
    let with_as;
    let tokens = if tokens
        .get(name_end + 1)
        .is_some_and(|t| !is_keyword(t, "AS"))
    {
        with_as = [
            &tokens[..=name_end],
            &[Token::make_keyword("AS")][..],
            &tokens[name_end + 1..],
        ]
        .concat();
        changed = true;
        &with_as[..]
    } else {
        tokens
    };
    let mut kept: Vec<Token> = Vec::with_capacity(tokens.len());
    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let t = &tokens[i];
        nest(&mut depth, t);
        let not_null =
            is_keyword(t, "NOT") && tokens.get(i + 1).is_some_and(|n| is_keyword(n, "NULL"));
        let null = is_keyword(t, "NULL") && !kept.last().is_some_and(|p| is_keyword(p, "DEFAULT"));
        if depth == 0 && (not_null || null) {
            // A constraint name belongs to the constraint dropped.
            if kept.len() >= 2 && is_keyword(&kept[kept.len() - 2], "CONSTRAINT") {
                kept.truncate(kept.len() - 2);
            }
            i += if not_null { 2 } else { 1 };
            changed = true;
            continue;
        }
        kept.push(t.clone());
        i += 1;
    }
    reparsed(kept, changed, |s| matches!(s, Statement::CreateDomain(_)))
}

/// The statement with every `OPERATOR(pg_catalog.op)` spelled as the plain `op`, which sqlparser does
/// not read before `ANY`/`ALL`/`SOME` (`relkind OPERATOR(pg_catalog.=) ANY (array[…])`, as pg_dump,
/// vacuumdb and psql write their catalog queries). Judging the plain spelling is never laxer: the
/// qualified one can only mean PostgreSQL's own operator, while a plain one may also resolve to a
/// database's own (which the operator lists then flag).
fn catalog_operators_plain(tokens: &[Token]) -> Option<Statement> {
    let mut kept: Vec<Token> = Vec::with_capacity(tokens.len());
    let mut i = 0;
    let mut changed = false;
    while i < tokens.len() {
        if let [op_kw, Token::LParen, Token::Word(schema), Token::Period, op, Token::RParen, ..] =
            &tokens[i..]
        {
            if is_keyword(op_kw, "OPERATOR")
                && schema.quote_style.is_none()
                && schema.value.eq_ignore_ascii_case("pg_catalog")
                && !matches!(op, Token::Word(_) | Token::LParen | Token::RParen)
            {
                kept.push(op.clone());
                i += 6;
                changed = true;
                continue;
            }
        }
        kept.push(tokens[i].clone());
        i += 1;
    }
    reparsed(kept, changed, |_| true)
}

/// `BEGIN` / `START TRANSACTION` / `SET [SESSION CHARACTERISTICS AS] TRANSACTION` without its
/// `[NOT] DEFERRABLE` modes.
fn without_deferrable(tokens: &[Token]) -> Option<Statement> {
    let first = tokens.first()?;
    if !["BEGIN", "START", "SET"]
        .iter()
        .any(|w| is_keyword(first, w))
    {
        return None;
    }
    let mut kept: Vec<Token> = Vec::with_capacity(tokens.len());
    for t in tokens {
        if is_keyword(t, "DEFERRABLE") {
            if kept.last().is_some_and(|last| is_keyword(last, "NOT")) {
                kept.pop();
            }
            continue;
        }
        kept.push(t.clone());
    }
    if kept.len() == tokens.len() {
        return None;
    }
    // Modes may be separated by commas: drop the commas the removal left leading, doubled or trailing.
    let mut cleaned: Vec<Token> = Vec::with_capacity(kept.len());
    for (i, t) in kept.iter().enumerate() {
        if matches!(t, Token::Comma) {
            let leading = cleaned.last().is_none_or(|p| {
                matches!(p, Token::Comma)
                    || ["BEGIN", "TRANSACTION", "WORK"]
                        .iter()
                        .any(|w| is_keyword(p, w))
            });
            let trailing = i + 1 == kept.len();
            if leading || trailing {
                continue;
            }
        }
        cleaned.push(t.clone());
    }
    let statement = parse_one(cleaned).ok()?;
    let transaction = matches!(statement, Statement::StartTransaction { .. })
        || matches!(&statement, Statement::Set(Set::SetTransaction { .. }));
    transaction.then_some(statement)
}

/// `COPY … FROM STDIN` / `COPY … TO STDOUT` without the options after the target: `[WITH] ( … )` holding
/// only option words, values and column lists, or the old bare-word form (`CSV HEADER`, `DELIMITER ','`).
fn without_copy_options(tokens: &[Token]) -> Option<Statement> {
    if !is_keyword(tokens.first()?, "COPY") {
        return None;
    }
    let target = top_level_position(tokens, |t| {
        is_keyword(t, "STDIN") || is_keyword(t, "STDOUT")
    })?;
    let mut rest = &tokens[target + 1..];
    if rest.first().is_some_and(|t| is_keyword(t, "WITH")) {
        rest = &rest[1..];
    }
    let inert = |t: &Token| {
        matches!(
            t,
            Token::Word(_)
                | Token::Number(_, _)
                | Token::SingleQuotedString(_)
                | Token::Comma
                | Token::Mul
        ) && !is_keyword(t, "WHERE")
    };
    if rest.first() == Some(&Token::LParen) {
        let mut depth = 0usize;
        for (i, t) in rest.iter().enumerate() {
            match t {
                // A column list follows an option name directly (`FORCE_QUOTE (a, b)`); a word
                // after a value (`FREEZE f(1)`) would be a call, which no option takes.
                Token::LParen if depth == 1 => {
                    let named = i >= 2
                        && matches!(rest[i - 1], Token::Word(_))
                        && matches!(rest[i - 2], Token::LParen | Token::Comma);
                    if !named {
                        return None;
                    }
                    depth += 1;
                }
                Token::LParen if depth == 0 => depth += 1,
                Token::LParen => return None,
                Token::RParen => {
                    depth -= 1;
                    if depth == 0 {
                        // Anything after the option list (a WHERE clause) keeps the statement unparsed.
                        if i + 1 < rest.len() {
                            return None;
                        }
                        break;
                    }
                }
                t if inert(t) => {}
                _ => return None,
            }
        }
        if depth != 0 {
            return None;
        }
    } else if !rest.iter().all(inert) {
        return None;
    }
    let statement = parse_one(tokens[..=target].to_vec()).ok()?;
    let to_client = matches!(
        &statement,
        Statement::Copy {
            target: CopyTarget::Stdin | CopyTarget::Stdout,
            ..
        }
    );
    to_client.then_some(statement)
}

/// A query with `FOR NO KEY UPDATE` / `FOR KEY SHARE` rewritten to `FOR UPDATE` / `FOR SHARE`.
fn with_strong_row_locks(tokens: &[Token]) -> Option<Statement> {
    let mut out: Vec<Token> = Vec::with_capacity(tokens.len());
    let mut changed = false;
    let mut i = 0;
    let mut depth = 0usize;
    // The lock strength of an `OF a, b` list being read, and the depth it is at: `FOR UPDATE OF a, b`
    // is read as `FOR UPDATE OF a FOR UPDATE OF b` (sqlparser takes one name per lock clause).
    let mut list: Option<(Token, usize)> = None;
    while i < tokens.len() {
        let after_for = out.last().is_some_and(|t| is_keyword(t, "FOR"));
        let next = |k: usize, w: &str| tokens.get(i + k).is_some_and(|t| is_keyword(t, w));
        match &tokens[i] {
            Token::LParen => depth += 1,
            Token::RParen => {
                depth = depth.saturating_sub(1);
                list = list.filter(|(_, d)| *d <= depth);
            }
            Token::Comma if list.as_ref().is_some_and(|(_, d)| *d == depth) => {
                let strength = list.as_ref().map(|(s, _)| s.clone())?;
                out.extend([
                    Token::make_keyword("FOR"),
                    strength,
                    Token::make_keyword("OF"),
                ]);
                i += 1;
                changed = true;
                continue;
            }
            t if ["NOWAIT", "SKIP", "FOR", "LIMIT", "OFFSET", "FETCH"]
                .iter()
                .any(|w| is_keyword(t, w)) =>
            {
                list = None;
            }
            t if is_keyword(t, "OF")
                && out
                    .last()
                    .is_some_and(|p| is_keyword(p, "UPDATE") || is_keyword(p, "SHARE")) =>
            {
                list = out.last().map(|p| (p.clone(), depth));
            }
            _ => {}
        }
        if after_for && next(0, "NO") && next(1, "KEY") && next(2, "UPDATE") {
            out.push(tokens[i + 2].clone());
            i += 3;
            changed = true;
        } else if after_for && next(0, "KEY") && next(1, "SHARE") {
            out.push(tokens[i + 1].clone());
            i += 2;
            changed = true;
        } else {
            out.push(tokens[i].clone());
            i += 1;
        }
    }
    reparsed(out, changed, |s| matches!(s, Statement::Query(_)))
}

/// `CREATE USER name [WITH] options` as the `CREATE ROLE` it abbreviates (PostgreSQL adds `LOGIN`).
fn user_as_role(tokens: &[Token]) -> Option<Statement> {
    let [create, user, rest @ ..] = tokens else {
        return None;
    };
    if !is_keyword(create, "CREATE") || !is_keyword(user, "USER") {
        return None;
    }
    let mut out = Vec::with_capacity(tokens.len());
    out.push(create.clone());
    out.push(Token::make_keyword("ROLE"));
    out.extend_from_slice(rest);
    let statement = parse_one(out).ok()?;
    matches!(statement, Statement::CreateRole(_)).then_some(statement)
}
