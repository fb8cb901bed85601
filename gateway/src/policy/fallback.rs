//! Token-level view of SQL: statement splitting, leading-keyword kinds, and the fail-closed
//! classification of statements sqlparser cannot parse.
//!
//! sqlparser is permissive in places and incomplete in others (`DO`, `ALTER SYSTEM`,
//! `DROP DATABASE … WITH (FORCE)`), but its tokenizer understands every quoting form, so splitting
//! and block-class detection work on tokens even when parsing fails.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

use super::functions::check_function;
use super::verdict::{Action, StatementFacts};

/// Modifiers between a DDL verb and its object type, skipped when naming the kind.
const DDL_MODIFIERS: &[&str] = &[
    "OR",
    "REPLACE",
    "UNIQUE",
    "TEMP",
    "TEMPORARY",
    "UNLOGGED",
    "GLOBAL",
    "LOCAL",
    "TRUSTED",
    "PROCEDURAL",
    "RECURSIVE",
    "CONSTRAINT",
    "DEFAULT",
];

/// Object types spelled with two words (`MATERIALIZED VIEW`, `FOREIGN TABLE`, …).
const TWO_WORD_OBJECTS: &[&str] = &[
    "MATERIALIZED",
    "FOREIGN",
    "EVENT",
    "TEXT",
    "ACCESS",
    "OPERATOR",
    "USER",
];

/// Verbs whose kind includes the object type (`CREATE TABLE`, `DROP DATABASE`).
const OBJECT_VERBS: &[&str] = &["CREATE", "ALTER", "DROP", "COMMENT", "SECURITY", "IMPORT"];

/// The tokens of one statement, comments and whitespace removed.
#[derive(Debug, Clone)]
pub struct StatementTokens(pub Vec<Token>);

impl StatementTokens {
    /// Upper-cased unquoted words, in order (quoted identifiers and literals are not words here).
    fn words(&self) -> impl Iterator<Item = String> + '_ {
        self.0.iter().filter_map(keyword)
    }

    /// True when the unquoted word `upper` appears anywhere in the statement.
    fn has_word(&self, upper: &str) -> bool {
        self.words().any(|w| w == upper)
    }

    /// The leading keyword(s) naming the statement, e.g. `SELECT`, `CREATE TABLE`, `ALTER SYSTEM`.
    pub fn kind(&self) -> String {
        let mut words = self.0.iter().map_while(keyword);
        let Some(verb) = words.next() else {
            return "UNKNOWN".to_string();
        };
        if !OBJECT_VERBS.contains(&verb.as_str()) {
            return verb;
        }
        let mut object = words
            .by_ref()
            .find(|w| !DDL_MODIFIERS.contains(&w.as_str()));
        if verb == "COMMENT" || verb == "SECURITY" {
            // `COMMENT ON …`, `SECURITY LABEL …`: the verb alone is the useful kind.
            object = None;
        }
        match object {
            None => verb,
            Some(o) if TWO_WORD_OBJECTS.contains(&o.as_str()) => match words.next() {
                Some(second) if o != "USER" || second == "MAPPING" => {
                    format!("{verb} {o} {second}")
                }
                _ => format!("{verb} {o}"),
            },
            Some(o) => format!("{verb} {o}"),
        }
    }
}

/// The token as an upper-cased keyword when it is an unquoted word (quoted identifiers and literals are
/// not keywords).
pub(super) fn keyword(token: &Token) -> Option<String> {
    match token {
        Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
        _ => None,
    }
}

/// The index of the first token outside any brackets for which `hit` holds; `None` when there is none
/// or a `)` closes more than was opened.
pub(super) fn top_level_position(tokens: &[Token], hit: impl Fn(&Token) -> bool) -> Option<usize> {
    let mut depth = 0usize;
    for (i, t) in tokens.iter().enumerate() {
        match t {
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.checked_sub(1)?,
            _ if depth == 0 && hit(t) => return Some(i),
            _ => {}
        }
    }
    None
}

/// True when the token is the unquoted word `upper`, in any case.
pub(super) fn is_keyword(token: &Token, upper: &str) -> bool {
    matches!(token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(upper))
}

/// Split SQL into statements on `;` tokens; comments and whitespace are dropped, empty statements
/// skipped. Errors when the text cannot be tokenized (e.g. an unterminated quote).
pub fn split_statements(sql: &str) -> Result<Vec<StatementTokens>, String> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize()
        .map_err(|e| e.to_string())?;
    if let Some(why) = operator_runs_unlike_postgres(&tokens) {
        return Err(why);
    }
    if let Some(why) = reads_unlike_postgres(sql, &tokens) {
        return Err(why);
    }
    let mut out = Vec::new();
    let mut current = Vec::new();
    for token in tokens {
        match token {
            Token::SemiColon => {
                if !current.is_empty() {
                    out.push(StatementTokens(std::mem::take(&mut current)));
                }
            }
            Token::Whitespace(_) | Token::EOF => {}
            other => current.push(other),
        }
    }
    if !current.is_empty() {
        out.push(StatementTokens(current));
    }
    Ok(out)
}

/// Why PostgreSQL would read a run of operator characters differently from sqlparser's tokens for it.
/// PostgreSQL takes the whole run as one operator, ends it where `--` or `/*` starts (the rest is a
/// comment), and then drops trailing `+`/`-` from a run of only `+ - * / < > =` (so `2*-1` is `*`
/// then a minus). sqlparser splits runs by its own table: `?--` is its `?-` then `-` (no comment), `^-`
/// is `^` then `-` (PostgreSQL's `^-`, a user operator if anything). A comment inside a run, or a run
/// PostgreSQL reads as operators other than sqlparser's that are not all its built-ins, is refused.
fn operator_runs_unlike_postgres(tokens: &[Token]) -> Option<String> {
    let mut run = String::new();
    let mut parts: Vec<String> = Vec::new();
    for token in tokens.iter().chain(std::iter::once(&Token::EOF)) {
        let text = token.to_string();
        if !matches!(token, Token::Whitespace(_) | Token::EOF) && is_operator_name(&text) {
            run.push_str(&text);
            parts.push(text);
            continue;
        }
        if run.is_empty() {
            continue;
        }
        if run.contains("--") || run.contains("/*") {
            return Some(format!(
                "operator {run:?} runs into a comment: PostgreSQL ends the operator where `--` or `/*` starts and reads the rest as a comment, which the policy does not; put a space before the comment"
            ));
        }
        if parts.len() > 1 {
            let read = postgres_operators(&run);
            let unknown = read
                .iter()
                .find(|op| !BUILTIN_OPERATORS.contains(op) && !SYNTAX_OPERATORS.contains(op));
            if read != parts && unknown.is_some() {
                return Some(format!(
                    "PostgreSQL reads {run:?} as the operator {:?}, which is not one of its own, where the policy's parser reads {parts:?}; put spaces between operators",
                    unknown.copied().unwrap_or_default()
                ));
            }
        }
        run.clear();
        parts.clear();
    }
    None
}

/// The operators PostgreSQL's lexer makes of a run of operator characters with no comment in it.
fn postgres_operators(run: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = run;
    while !rest.is_empty() {
        let op = as_postgres_lexes(rest);
        out.push(op);
        rest = &rest[op.len()..];
    }
    out
}

/// Why PostgreSQL would split `sql` (tokenized as `tokens`) into strings, comments and code differently
/// than sqlparser did, for the few spellings where the two lexers differ; `None` when they agree.
/// Such text could hide code from the policy inside what sqlparser takes for a literal or comment.
fn reads_unlike_postgres(sql: &str, tokens: &[Token]) -> Option<String> {
    // PostgreSQL's dollar-quote tag is `[A-Za-z\x80-\xFF_][A-Za-z\x80-\xFF_0-9]*`; sqlparser's takes only
    // alphanumeric characters, so `$a€$ … $a€$` is a string to PostgreSQL and code to sqlparser, and it
    // takes a tag starting with a digit, which PostgreSQL reads as a parameter.
    let mut chars = sql.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        if c != '$' {
            continue;
        }
        let mut tag = String::new();
        while let Some(&(_, t)) = chars.peek() {
            if t.is_ascii_alphanumeric() || t == '_' || !t.is_ascii() {
                tag.push(t);
                chars.next();
            } else {
                break;
            }
        }
        if tag.chars().any(|t| !t.is_ascii() && !t.is_alphanumeric()) {
            return Some(format!(
                "`${tag}` holds a character PostgreSQL takes into a dollar-quote tag or name and the policy's parser does not; spell the tag with letters, digits and `_` only"
            ));
        }
        if tag.starts_with(|t: char| t.is_ascii_digit())
            && chars.peek().is_some_and(|&(_, t)| t == '$')
        {
            return Some(format!(
                "`${tag}$` is a parameter to PostgreSQL and a dollar-quote to the policy's parser; start a dollar-quote tag with a letter"
            ));
        }
    }
    for token in tokens {
        match token {
            // PostgreSQL reads `\` in X'…' as itself (it then rejects the digit); sqlparser takes `\'` as
            // an escaped quote and reads on past PostgreSQL's end of the string.
            Token::HexStringLiteral(hex) if !hex.chars().all(|c| c.is_ascii_hexdigit()) => {
                return Some(format!(
                    "X'{hex}' is not a hexadecimal string (PostgreSQL rejects it), and the policy's parser and PostgreSQL disagree on where it ends"
                ));
            }
            // sqlparser takes the lines after `COPY … FROM STDIN;` for the copy's data; PostgreSQL
            // runs them as statements once the client's data ends.
            Token::CopyData { data, .. } if !data.trim().is_empty() => {
                return Some(
                    "text follows COPY … FROM STDIN in the same query string; PostgreSQL runs it as SQL after the copied rows, which the policy does not read that way: send it as a query of its own"
                        .to_string(),
                );
            }
            _ => {}
        }
    }
    None
}

/// Most tokens one comma-separated item may hold at one bracket level before the statement is judged
/// unparsed. sqlparser builds `a + b + …`, `x[1][2]…`, `x::t::t…` and `… UNION …` chains in a loop, with
/// no recursion limit, into trees as deep as the chain is long, and walking or dropping such a tree
/// recurses once per link: a chain of tens of thousands overflows a 2 MiB thread stack, which aborts
/// the process. A chain has at most as many links as this count, which stays well within that stack.
pub const MAX_CHAIN_TOKENS: usize = 5_000;

/// The most tokens in one comma-separated item at one level of `()` / `[]` nesting, counting an opening
/// bracket in the item it opens from: an upper bound on how deep a chain of operators, subscripts,
/// casts or set operations can nest the parsed statement without parentheses, which sqlparser limits.
/// `CASE … END` is a level of its own whose `WHEN`, `THEN` and `ELSE` end items as commas do:
/// sqlparser reads the branches in a loop, and pgJDBC's getUDTs sends a CASE with a branch per type.
pub fn longest_chain(tokens: &StatementTokens) -> usize {
    // Per open level, the outermost first: tokens so far in its current item, and whether a CASE
    // opened it.
    let mut levels: Vec<(usize, bool)> = vec![(0, false)];
    let mut longest = 0;
    let mut previous: Option<&Token> = None;
    for token in &tokens.0 {
        let top = levels.len() - 1;
        // After `.`, `::` or AS these words are names (`x.case`, `1::then`, `AS end`), which PostgreSQL
        // and sqlparser accept there: they open, split or close nothing.
        let named = matches!(previous, Some(Token::Period | Token::DoubleColon))
            || previous.is_some_and(|p| is_keyword(p, "AS"));
        previous = Some(token);
        let in_case = levels[top].1 && !named;
        match token {
            Token::Comma => levels[top].0 = 0,
            Token::RParen | Token::RBracket if top > 0 => {
                // A CASE left open inside the brackets closes with them.
                while levels.len() > 1 && levels[levels.len() - 1].1 {
                    levels.pop();
                }
                if levels.len() > 1 {
                    levels.pop();
                }
            }
            t if in_case && ["WHEN", "THEN", "ELSE"].iter().any(|k| is_keyword(t, k)) => {
                levels[top].0 = 0;
            }
            t if in_case && is_keyword(t, "END") => {
                levels.pop();
            }
            other => {
                levels[top].0 += 1;
                longest = longest.max(levels[top].0);
                if matches!(other, Token::LParen | Token::LBracket) {
                    levels.push((0, false));
                } else if !named && is_keyword(other, "CASE") {
                    levels.push((0, true));
                }
            }
        }
    }
    longest
}

/// The operator names PostgreSQL 15 defines in `pg_catalog` (`SELECT DISTINCT oprname FROM pg_operator`);
/// sorted. Any other operator is user-defined, and runs the function behind it.
const BUILTIN_OPERATORS: &[&str] = &[
    "!!", "!~", "!~*", "!~~", "!~~*", "#", "##", "#-", "#>", "#>>", "%", "&", "&&", "&<", "&<|",
    "&>", "*", "*<", "*<=", "*<>", "*=", "*>", "*>=", "+", "-", "->", "->>", "-|-", "/", "<",
    "<->", "<<", "<<=", "<<|", "<=", "<>", "<@", "<^", "=", ">", ">=", ">>", ">>=", ">^", "?",
    "?#", "?&", "?-", "?-|", "?|", "?||", "@", "@-@", "@>", "@?", "@@", "@@@", "^", "^@", "|",
    "|&>", "|/", "|>>", "||", "||/", "~", "~*", "~<=~", "~<~", "~=", "~>=~", "~>~", "~~", "~~*",
];

/// Operators a statement uses that are not PostgreSQL's own, so run a user function: `OPERATOR(s.op)`
/// with a schema other than `pg_catalog` (in an expression, `ORDER BY … USING`, anywhere), and operator
/// tokens whose name no built-in operator has.
pub fn user_operators(tokens: &StatementTokens) -> Vec<String> {
    let mut found = Vec::new();
    let t = &tokens.0;
    for (i, token) in t.iter().enumerate() {
        if is_keyword(token, "OPERATOR") && t.get(i + 1) == Some(&Token::LParen) {
            let inside: Vec<&Token> = t[i + 2..]
                .iter()
                .take_while(|t| **t != Token::RParen)
                .collect();
            let schema = match inside.as_slice() {
                [Token::Word(w), Token::Period, ..] => Some(match w.quote_style {
                    None => w.value.to_ascii_lowercase(),
                    Some(_) => w.value.clone(),
                }),
                _ => None,
            };
            if schema.is_some_and(|s| s != "pg_catalog") {
                let text: String = inside.iter().map(|t| t.to_string()).collect();
                found.push(format!("OPERATOR({text})"));
            }
        }
        let op = token.to_string();
        if is_operator_name(&op)
            && !SYNTAX_OPERATORS.contains(&op.as_str())
            && !BUILTIN_OPERATORS.contains(&as_postgres_lexes(&op))
        {
            found.push(op);
        }
    }
    found.dedup();
    found
}

/// The names (folded unless quoted) and operator tokens (as PostgreSQL lexes them) of a statement,
/// sorted and each once: what a statement is judged by against the database's own types and
/// operators (`DatabaseFunctions`).
pub fn statement_words(tokens: &StatementTokens) -> Vec<String> {
    let mut words: Vec<String> = tokens
        .0
        .iter()
        .filter_map(|token| match token {
            Token::Word(w) => Some(match w.quote_style {
                None => w.value.to_ascii_lowercase(),
                Some(_) => w.value.clone(),
            }),
            Token::Whitespace(_) | Token::Comma | Token::LParen | Token::RParen => None,
            Token::SingleQuotedString(_) | Token::Number(..) | Token::DollarQuotedString(_) => None,
            other => {
                let op = other.to_string();
                is_operator_name(&op).then(|| as_postgres_lexes(&op).to_string())
            }
        })
        .collect();
    words.sort();
    words.dedup();
    words
}

/// Spellings made of operator characters that are PostgreSQL syntax rather than operator names: `!=` is
/// read as `<>`, `=>` names a function argument.
const SYNTAX_OPERATORS: &[&str] = &["!=", "=>"];

/// True when `text` is spelled only with the characters PostgreSQL builds operator names from (so it
/// lexes as one operator there, whatever token sqlparser made of it: `<=>`, `==`, `//`, `~~~`).
fn is_operator_name(text: &str) -> bool {
    !text.is_empty()
        && text.chars().all(|c| {
            matches!(
                c,
                '+' | '-'
                    | '*'
                    | '/'
                    | '<'
                    | '>'
                    | '='
                    | '~'
                    | '!'
                    | '@'
                    | '#'
                    | '%'
                    | '^'
                    | '&'
                    | '|'
                    | '`'
                    | '?'
            )
        })
}

/// The operator PostgreSQL's lexer makes of `op`: a name of only `+ - * / < > =` loses trailing `+` and
/// `-` (so `*-` in `2*-1` is `*` followed by a minus sign).
fn as_postgres_lexes(op: &str) -> &str {
    if op.contains(['~', '!', '@', '#', '%', '^', '&', '|', '`', '?']) {
        return op;
    }
    let trimmed = op.trim_end_matches(['+', '-']);
    if trimmed.is_empty() {
        &op[..1]
    } else {
        trimmed
    }
}

/// True when `tokens` hold a `U&"…"` identifier (PostgreSQL's Unicode-escaped name), which sqlparser
/// reads as `U & "…"`: the name it stands for (`U&"\0061rchive"` is `archive`) is never seen, so a
/// statement with one can't be judged by its names.
pub fn unicode_identifier(tokens: &StatementTokens) -> bool {
    tokens.0.windows(3).any(|w| {
        matches!(&w[0], Token::Word(u) if u.quote_style.is_none() && u.value.eq_ignore_ascii_case("u"))
            && w[1] == Token::Ampersand
            && matches!(&w[2], Token::Word(q) if q.quote_style == Some('"'))
    })
}

/// [`unicode_identifier`] for any statement of `sql` (text that does not tokenize has none).
pub fn has_unicode_identifier(sql: &str) -> bool {
    split_statements(sql).is_ok_and(|pieces| pieces.iter().any(unicode_identifier))
}

/// True when a statement of `sql` holds a chain longer than [`MAX_CHAIN_TOKENS`], which must not be
/// handed to sqlparser (its tree could overflow the stack); text that does not tokenize is not.
pub fn exceeds_chain_limit(sql: &str) -> bool {
    split_statements(sql).is_ok_and(|pieces| {
        pieces
            .iter()
            .any(|piece| longest_chain(piece) > MAX_CHAIN_TOKENS)
    })
}

/// Classify a statement the parser rejected: never `allow`; `block` when its tokens show a
/// block-class operation.
pub fn classify_unparsed(tokens: &StatementTokens, parse_error: &str) -> StatementFacts {
    let kind = tokens.kind();
    let mut facts = StatementFacts {
        kind: kind.clone(),
        unparsed: true,
        action: Action::Review,
        ..StatementFacts::default()
    };
    let mut block = |reason: String| {
        facts.action = Action::Block;
        facts.reasons.push(reason);
    };
    match kind.as_str() {
        "DROP DATABASE" => block("DROP DATABASE destroys a whole database".to_string()),
        "ALTER SYSTEM" => block("ALTER SYSTEM changes the server configuration".to_string()),
        "LOAD" => block("LOAD loads a shared library from the server filesystem".to_string()),
        _ => {}
    }
    if kind == "COPY" && tokens.has_word("PROGRAM") {
        block("COPY … PROGRAM runs a shell command on the server".to_string());
    } else if kind == "COPY" && copies_server_file(tokens) {
        block("COPY reads or writes a file on the server".to_string());
    }
    let role_statement = matches!(
        kind.as_str(),
        "CREATE ROLE"
            | "CREATE USER"
            | "CREATE GROUP"
            | "ALTER ROLE"
            | "ALTER USER"
            | "ALTER GROUP"
    );
    if role_statement && tokens.has_word("SUPERUSER") {
        block(format!("{kind} grants SUPERUSER"));
    }
    if matches!(kind.as_str(), "CREATE FUNCTION" | "CREATE PROCEDURE") && loads_native_code(tokens)
    {
        block(format!(
            "{kind} with LANGUAGE C loads code from the server filesystem"
        ));
    }
    // Only block-class calls are reported: without a parse, `t (` in `CREATE TABLE t (` looks
    // like a call too.
    for name in called_names(tokens) {
        let check = check_function(&name);
        if check.action == Action::Block {
            block(check.reason);
            facts.functions.push(name);
        }
    }
    facts.functions.dedup();
    if facts.action != Action::Block {
        facts.reasons.push(format!(
            "{kind} could not be parsed ({parse_error}); held for review because an unparsed statement is never allowed"
        ));
    }
    facts
}

/// Classify text that cannot even be tokenized; scans the upper-cased text for block-class words.
pub fn classify_untokenizable(sql: &str, error: &str) -> StatementFacts {
    let upper = sql.to_ascii_uppercase();
    let kind = upper
        .split(|c: char| !c.is_ascii_alphabetic())
        .find(|w| !w.is_empty())
        .unwrap_or("UNKNOWN")
        .to_string();
    let mut facts = StatementFacts {
        kind,
        unparsed: true,
        action: Action::Review,
        ..StatementFacts::default()
    };
    let block_markers = [
        "DROP DATABASE",
        "ALTER SYSTEM",
        "PROGRAM",
        "SUPERUSER",
        "PG_READ",
        "PG_LS_",
        "LO_IMPORT",
        "LO_EXPORT",
    ];
    if let Some(marker) = block_markers.iter().find(|m| upper.contains(*m)) {
        facts.action = Action::Block;
        facts.reasons.push(format!(
            "text cannot be tokenized ({error}) and mentions {marker}"
        ));
    } else {
        facts.reasons.push(format!(
            "text cannot be tokenized ({error}); held for review because unparsed SQL is never allowed"
        ));
    }
    facts
}

/// Words directly followed by `(`: the function calls a statement makes, lower-cased.
fn called_names(tokens: &StatementTokens) -> Vec<String> {
    tokens
        .0
        .windows(2)
        .filter_map(|pair| match pair {
            [Token::Word(w), Token::LParen] => Some(w.value.to_lowercase()),
            _ => None,
        })
        .collect()
}

/// `COPY … FROM|TO 'file'`: a string literal right after FROM/TO names a server file.
fn copies_server_file(tokens: &StatementTokens) -> bool {
    tokens.0.windows(2).any(|pair| match pair {
        [Token::Word(w), Token::SingleQuotedString(_) | Token::EscapedStringLiteral(_)] => {
            let w = w.value.to_ascii_uppercase();
            w == "FROM" || w == "TO"
        }
        _ => false,
    })
}

/// `LANGUAGE C` / `LANGUAGE internal`, with or without quotes around the language name.
fn loads_native_code(tokens: &StatementTokens) -> bool {
    tokens.0.windows(2).any(|pair| match pair {
        [Token::Word(w), next] if w.value.eq_ignore_ascii_case("LANGUAGE") => {
            let lang = match next {
                Token::Word(l) => l.value.to_ascii_lowercase(),
                Token::SingleQuotedString(s) => s.to_ascii_lowercase(),
                _ => return false,
            };
            lang == "c" || lang == "internal"
        }
        _ => false,
    })
}

/// True when a token is only a comment or whitespace (used by tests).
#[cfg(test)]
fn is_trivia(token: &Token) -> bool {
    use sqlparser::tokenizer::Whitespace;
    matches!(
        token,
        Token::Whitespace(Whitespace::SingleLineComment { .. } | Whitespace::MultiLineComment(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_of(sql: &str) -> String {
        split_statements(sql).unwrap()[0].kind()
    }

    #[test]
    fn kinds_name_verb_and_object_type() {
        assert_eq!(
            kind_of("create or replace function f() ..."),
            "CREATE FUNCTION"
        );
        assert_eq!(kind_of("CREATE UNIQUE INDEX i ON t (a)"), "CREATE INDEX");
        assert_eq!(
            kind_of("create materialized view v as select 1"),
            "CREATE MATERIALIZED VIEW"
        );
        assert_eq!(kind_of("ALTER SYSTEM SET work_mem = '1GB'"), "ALTER SYSTEM");
        assert_eq!(kind_of("drop database x with (force)"), "DROP DATABASE");
        assert_eq!(kind_of("CREATE USER bob"), "CREATE USER");
        assert_eq!(
            kind_of("CREATE USER MAPPING FOR bob SERVER s"),
            "CREATE USER MAPPING"
        );
        assert_eq!(kind_of("vacuum analyze t"), "VACUUM");
        assert_eq!(kind_of("DO $$ BEGIN END $$"), "DO");
    }

    #[test]
    fn splitting_ignores_semicolons_in_strings_comments_and_dollar_quotes() {
        let parts = split_statements("SELECT ';'; /* ; */ DO $x$ a; b $x$; -- ;\n ;").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].kind(), "DO");
    }

    #[test]
    fn comments_are_removed_from_statement_tokens() {
        let parts = split_statements("/* DELETE */ SELECT 1 -- DROP").unwrap();
        assert_eq!(parts.len(), 1);
        assert!(!parts[0].0.iter().any(is_trivia));
        assert_eq!(parts[0].kind(), "SELECT");
    }

    #[test]
    fn unparsed_alter_system_is_blocked_and_unknown_text_reviewed() {
        let t = &split_statements("ALTER SYSTEM SET x = 1").unwrap()[0];
        assert_eq!(classify_unparsed(t, "e").action, Action::Block);
        let t = &split_statements("frobnicate the database").unwrap()[0];
        let facts = classify_unparsed(t, "e");
        assert_eq!(facts.action, Action::Review);
        assert!(facts.unparsed);
    }

    #[test]
    fn chains_are_measured_per_item_and_bracket_level() {
        let chain = |sql: &str| longest_chain(&split_statements(sql).unwrap()[0]);
        assert_eq!(chain("SELECT 1 + 1 + 1"), 6);
        // Commas end an item; brackets open a level of their own and count once where they open.
        assert_eq!(chain("SELECT a, b, f(1, 2, 3) + g(x)"), 5);
        assert_eq!(chain("VALUES (1, 2), (3, 4)"), 2);
        assert_eq!(chain("SELECT x[1][2][3]"), 5);
        // A stray closing bracket does not leave the outermost level.
        assert_eq!(chain("SELECT ) ) 1"), 4);
        // CASE branches are items of a level of their own, counted once where the CASE opens.
        assert_eq!(chain("SELECT CASE WHEN a = 1 THEN 2 + 2 ELSE 3 END + x"), 4);
        assert_eq!(chain("SELECT (CASE WHEN a THEN b) + 1"), 4);
        // END outside a CASE (END as COMMIT) is an ordinary word.
        assert_eq!(chain("END"), 1);
        // Keywords used as names open and split nothing: `x.case || 1 || x.then || 1` is one chain.
        assert_eq!(chain("SELECT x.case || 1 || x.then || 1 || x.end"), 16);
        assert_eq!(chain("SELECT 1 AS case + 1 + 1 + 1"), 10);
        assert_eq!(chain("SELECT CASE WHEN a THEN 2::then + 1 END"), 5);
    }

    #[test]
    fn an_operator_running_into_a_comment_is_never_tokenized_as_one() {
        // PostgreSQL: `<>` then a comment to the end of the line; sqlparser: one operator `<>--`.
        for sql in [
            "SELECT 1 <>-- $$\n0; DROP TABLE t; SELECT 1 <>-- $$ <>-- 1\n+ 0",
            "SELECT 1 >-- x\n1",
            "SELECT a ->>-- c\n'k' FROM t",
            "SELECT 1 -+-- c\n1",
            "SELECT 1 </* c */ 2",
        ] {
            let err = split_statements(sql).unwrap_err();
            assert!(err.contains("runs into a comment"), "{sql}: {err}");
        }
        // Comments after ordinary tokens, and operators with no comment in them, tokenize as before.
        for sql in [
            "SELECT 1 -- c\n, a->>'k', b <-> c, d @> e FROM t /* c */",
            "SELECT 1--c\n",
            "SELECT 2 - -1, 3 <> 4",
        ] {
            assert!(split_statements(sql).is_ok(), "{sql}");
        }
    }

    #[test]
    fn user_operators_are_those_outside_pg_catalog() {
        let ops = |sql: &str| user_operators(&split_statements(sql).unwrap()[0]);
        assert_eq!(ops("SELECT 1 OPERATOR(evil.+) 1"), vec!["OPERATOR(evil.+)"]);
        assert_eq!(ops("SELECT 1 ~~~ 2"), vec!["~~~"]);
        // Tokens sqlparser knows from other dialects are operator names to PostgreSQL too.
        assert_eq!(ops("SELECT a <=> b, a == b FROM t"), vec!["<=>", "=="]);
        assert_eq!(
            ops("SELECT * FROM t ORDER BY a USING OPERATOR(\"Evil\".<)"),
            vec!["OPERATOR(\"Evil\".<)"]
        );
        for builtin in [
            "SELECT c.relname OPERATOR(pg_catalog.~) '^(t)$' FROM pg_class c",
            "SELECT 1 OPERATOR(PG_CATALOG.+) 1, 2 OPERATOR(+) 2",
            "SELECT 2*-1, a=-1, b<-1, c>=-5, d+-1, e--1\n FROM t",
            "SELECT data @> '{}', data ?| array['a'], x <-> y, s ~~* 'a%', t @@@ q",
            "SELECT count(*), t.*, a != b, f(x => 1), -a, +b, a % 2, a ^ 2 FROM t",
        ] {
            assert!(ops(builtin).is_empty(), "{builtin}: {:?}", ops(builtin));
        }
    }

    #[test]
    fn untokenizable_text_is_never_allowed() {
        assert_eq!(
            classify_untokenizable("SELECT 'oops", "unterminated").action,
            Action::Review
        );
        assert_eq!(
            classify_untokenizable("DROP DATABASE x; SELECT 'oops", "e").action,
            Action::Block
        );
    }
}
