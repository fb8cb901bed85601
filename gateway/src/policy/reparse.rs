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

use sqlparser::ast::{CopyTarget, Set, Statement};
use sqlparser::tokenizer::Token;

use super::classify::{classify_statement, parse_one};
use super::fallback::{is_keyword, StatementTokens};
use super::verdict::StatementFacts;

/// Facts of `tokens` judged without an inert clause, or `None` when none of the cases above applies.
pub fn classify_without_inert_clause(tokens: &StatementTokens) -> Option<StatementFacts> {
    let statement = without_deferrable(&tokens.0)
        .or_else(|| without_copy_options(&tokens.0))
        .or_else(|| with_strong_row_locks(&tokens.0))
        .or_else(|| user_as_role(&tokens.0))
        .or_else(|| catalog_operators_plain(&tokens.0))?;
    Some(classify_statement(&statement))
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
    if !changed {
        return None;
    }
    parse_one(kept).ok()
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
    let mut depth = 0usize;
    let mut target = None;
    for (i, t) in tokens.iter().enumerate() {
        match t {
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.checked_sub(1)?,
            _ if depth == 0 && (is_keyword(t, "STDIN") || is_keyword(t, "STDOUT")) => {
                target = Some(i);
                break;
            }
            _ => {}
        }
    }
    let target = target?;
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
    while i < tokens.len() {
        let after_for = out.last().is_some_and(|t| is_keyword(t, "FOR"));
        let next = |k: usize, w: &str| tokens.get(i + k).is_some_and(|t| is_keyword(t, w));
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
    if !changed {
        return None;
    }
    let statement = parse_one(out).ok()?;
    matches!(statement, Statement::Query(_)).then_some(statement)
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
