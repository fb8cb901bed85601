//! Upstream error and notice text on masked connections.
//!
//! PostgreSQL quotes values in its messages: `SELECT ssn::int FROM people` fails with
//! `invalid input syntax for type integer: "123-45-6789"`, `ssn::regclass` with `relation "…" does not
//! exist`, `ssn::json` puts the value in DETAIL and CONTEXT, a unique violation in DETAIL, and a function's
//! `RAISE` says whatever it was given. No rule can follow a value into that text, so on a masked
//! connection the message of an ErrorResponse or NoticeResponse is kept only for SQLSTATEs PostgreSQL
//! builds from the statement, identifiers and types alone, and only when every quoted part of it appears
//! in the statement (a `syntax_error` also reports a bad tsquery value: `syntax error in tsquery:
//! "123-45-6789)"`); every other message is withheld, and DETAIL, CONTEXT and the internal query are
//! always dropped. **Fail closed:** an unknown code loses its text.
//!
//! A message that quotes anything (or ends in an unquoted name after a colon) must also carry a cursor
//! position (`P`): PostgreSQL sets one only for errors of parse analysis, which reads the statement and
//! the catalogs but no row. The same codes raised while the statement runs (a `regclass` cast of
//! `'x' || ssn`, dynamic SQL in a function) have none, and "appears in the statement" proves nothing
//! then: a value may hold a `"` of its own, and a comment can list every candidate character.

use bytes::{BufMut, BytesMut};

/// SQLSTATEs whose message and hint name only what the statement itself wrote (identifiers, types,
/// its own text), never a value read from a row: they keep their text. Codes like `42P01`, `42704` and
/// `42883` are not here: a cast to `regclass`, `regtype` or `regproc` quotes the value it failed on.
const TEXT_ONLY: &[&str] = &[
    "42601", // syntax_error (quotes the statement's own text, or a value: see `quotes_the_statement`)
    "42P01", // undefined_table (a `regclass` cast quotes its value: see `quotes_the_statement`)
    "42703", // undefined_column
    "42702", // ambiguous_column
    "42725", // ambiguous_function
    "42803", // grouping_error
    "42804", // datatype_mismatch
    "42846", // cannot_coerce
    "42P10", // invalid_column_reference
    "42P18", // indeterminate_datatype
    "42501", // insufficient_privilege
    "25001", // active_sql_transaction
    "25P01", // no_active_sql_transaction
    "25P02", // in_failed_sql_transaction
    "26000", // invalid_sql_statement_name
    "34000", // invalid_cursor_name
    "22012", // division_by_zero
    "40001", // serialization_failure
    "40P01", // deadlock_detected
    "55P03", // lock_not_available
    "57014", // query_canceled
    "57P01", // admin_shutdown
];

/// True when a message with this SQLSTATE keeps its text on a masked connection: the code is one whose
/// text names only what the statement wrote, everything the message quotes is in `statement`, and so
/// is any unquoted text it ends with after a colon; a message quoting anything at all must also be
/// `positioned` (come from parse analysis, see the module's notes).
pub fn keeps_text(sqlstate: &str, message: &str, statement: &str, positioned: bool) -> bool {
    TEXT_ONLY.contains(&sqlstate)
        && (positioned || !names_anything(message))
        && quotes_the_statement(message, statement)
        && unquoted_parts_are_plain(message, statement)
}

/// True when all a message quotes is in `statement`: shown to approvers, such a message repeats only
/// what they saw. `invalid input syntax for type integer: "123-45-6789"` quotes a row's value, and
/// approvers never see result data. (Unquoted text after a colon is kept: there PostgreSQL puts its
/// own words, `COPY from stdin failed: <the client's reason>`, far more often than a value.)
pub fn quotes_only_the_statement(message: &str, statement: &str) -> bool {
    quotes_the_statement(message, statement)
}

/// What approvers read instead of an execution error that quotes something the statement does not.
pub const WITHHELD_FROM_APPROVERS: &str = "PostgreSQL's error text is withheld from approvers: it quotes something the statement does not hold (a row's value, say), and approvers never see result data; the requester's client received it";

/// True when the message quotes something or ends with an unquoted name after a colon.
fn names_anything(message: &str) -> bool {
    message.contains('"') || colon_tail(message).is_some()
}

/// The text after the last `": "` of `text`, trimmed, when there is any.
fn colon_tail(text: &str) -> Option<&str> {
    text.rsplit_once(": ")
        .map(|(_, tail)| tail.trim())
        .filter(|tail| !tail.is_empty())
}

/// The text outside `"…"` is PostgreSQL's own English template, except where a template puts a value
/// unquoted after a colon (`improper relation name (too many dotted names): a.b.c.d`, from a cast to
/// `regclass` of a value read from a row): that tail must be in `statement`. A non-ASCII character
/// outside quotes means a translated message (`lc_messages`), whose quotes (`»…«`, `« … »`) the
/// check above cannot see: withheld.
fn unquoted_parts_are_plain(message: &str, statement: &str) -> bool {
    let outside: Vec<&str> = message.split('"').step_by(2).collect();
    if outside.iter().any(|part| !part.is_ascii()) {
        return false;
    }
    let Some(last) = outside.last() else {
        return true;
    };
    colon_tail(last).is_none_or(|tail| statement.to_lowercase().contains(&tail.to_lowercase()))
}

/// True when every `"…"` part of `message` appears in `statement` (case-insensitively: PostgreSQL
/// folds identifiers). An unpaired quote counts as not found.
fn quotes_the_statement(message: &str, statement: &str) -> bool {
    let parts: Vec<&str> = message.split('"').collect();
    if parts.len().is_multiple_of(2) {
        return false;
    }
    let statement = statement.to_lowercase();
    parts
        .iter()
        .skip(1)
        .step_by(2)
        .all(|quoted| statement.contains(&quoted.to_lowercase()))
}

/// The message that replaces a withheld one.
pub fn withheld(sqlstate: &str) -> String {
    format!(
        "the gateway withheld PostgreSQL's message text (SQLSTATE {sqlstate}) because this connection masks results and the text can quote a masked value; run the statement on a connection without masking rules to read it"
    )
}

/// Fields that are dropped whatever the SQLSTATE: DETAIL, CONTEXT, internal query and its position.
fn always_dropped(field: u8) -> bool {
    matches!(field, b'D' | b'W' | b'q' | b'p')
}

/// Re-encodes the ErrorResponse or NoticeResponse `frame` (tag `E` or `N`) that answered `statement`
/// into `out` with its value carrying text removed. Returns false (and writes nothing) when nothing had
/// to change.
pub fn redact_frame(frame: &[u8], statement: &str, out: &mut BytesMut) -> bool {
    let (Some(&tag), Some(body)) = (frame.first(), frame.get(5..)) else {
        return false;
    };
    let fields: Vec<(u8, &[u8])> = crate::pg::codec::error_fields(body).collect();
    let sqlstate = fields
        .iter()
        .find(|(f, _)| *f == b'C')
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default();
    let message = fields
        .iter()
        .find(|(f, _)| *f == b'M')
        .map(|(_, v)| String::from_utf8_lossy(v))
        .unwrap_or_default();
    let positioned = fields.iter().any(|(f, _)| *f == b'P');
    // Raised in code (a CONTEXT or an internal query): `RAISE … USING MESSAGE = (SELECT ssn …),
    // ERRCODE = '42601'` chooses both its text and a SQLSTATE whose text is otherwise kept.
    let from_code = fields.iter().any(|(f, _)| matches!(f, b'W' | b'q'));
    let keep = !from_code && keeps_text(&sqlstate, &message, statement, positioned);
    if keep && !fields.iter().any(|(f, _)| always_dropped(*f)) {
        return false;
    }
    let replacement = withheld(&sqlstate);
    let start = out.len();
    out.put_u8(tag);
    out.put_i32(0);
    for (field, value) in fields {
        let value = match field {
            f if always_dropped(f) => continue,
            b'H' if !keep => continue,
            b'M' if !keep => replacement.as_bytes(),
            _ => value,
        };
        out.put_u8(field);
        out.put_slice(value);
        out.put_u8(0);
    }
    out.put_u8(0);
    crate::pg::codec::patch_len(out, start);
    true
}

/// The same for an error the HTTP API reports (and an approved execution records) for `statement`.
pub fn redact_upstream_error(e: &mut crate::upstream::UpstreamSqlError, statement: &str) {
    e.detail = None;
    if e.from_code || !keeps_text(&e.sqlstate, &e.message, statement, e.positioned) {
        e.message = withheld(&e.sqlstate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::codec::error_fields;

    fn frame(tag: u8, fields: &[(u8, &str)]) -> BytesMut {
        let mut out = BytesMut::new();
        out.put_u8(tag);
        out.put_i32(0);
        for (f, v) in fields {
            out.put_u8(*f);
            out.put_slice(v.as_bytes());
            out.put_u8(0);
        }
        out.put_u8(0);
        crate::pg::codec::patch_len(&mut out, 0);
        out
    }

    fn text(frame: &[u8]) -> String {
        error_fields(&frame[5..])
            .map(|(f, v)| format!("{}={} ", f as char, String::from_utf8_lossy(v)))
            .collect()
    }

    #[test]
    fn messages_quoting_values_are_withheld_with_their_detail_and_context() {
        for (code, message, detail) in [
            (
                "22P02",
                r#"invalid input syntax for type integer: "SSNVAL3""#,
                None,
            ),
            ("42P01", r#"relation "ssnval3" does not exist"#, None),
            (
                "22P02",
                "invalid input syntax for type json",
                Some(r#"Token "SSNVAL3" is invalid."#),
            ),
            (
                "23505",
                "duplicate key value violates unique constraint \"people_ssn_key\"",
                Some("Key (ssn)=(SSNVAL3) already exists."),
            ),
            ("P0001", "SSNVAL3", None),
            // A `regclass` cast of a dotted value names it unquoted.
            (
                "42601",
                "improper relation name (too many dotted names): x.x.x.ssnval3/ssnval3",
                None,
            ),
            // A translated message quotes with other marks.
            ("42P01", "Relation »ssnval3« existiert nicht", None),
        ] {
            let mut fields = vec![(b'S', "ERROR"), (b'C', code), (b'M', message)];
            if let Some(d) = detail {
                fields.push((b'D', d));
            }
            fields.push((b'W', "JSON data, line 1: SSNVAL3"));
            fields.push((b'H', "SSNVAL3"));
            let mut out = BytesMut::new();
            let statement = "SELECT ssn::int FROM people";
            assert!(
                redact_frame(&frame(b'E', &fields), statement, &mut out),
                "{message}"
            );
            let shown = text(&out);
            assert!(!shown.to_lowercase().contains("ssnval3"), "{shown}");
            assert!(shown.contains(&format!("C={code} ")), "{shown}");
            assert!(shown.contains("withheld"), "{shown}");
        }
        // A NoticeResponse (a function's RAISE NOTICE) alike, and it stays a notice.
        let notice = frame(
            b'N',
            &[(b'S', "NOTICE"), (b'C', "00000"), (b'M', "ssn is SSNVAL3")],
        );
        let mut out = BytesMut::new();
        assert!(redact_frame(&notice, "SELECT f()", &mut out));
        assert_eq!(out[0], b'N');
        assert!(!text(&out).contains("SSNVAL3"));
    }

    #[test]
    fn messages_built_from_the_statement_alone_keep_their_text() {
        let syntax = frame(
            b'E',
            &[
                (b'S', "ERROR"),
                (b'C', "42601"),
                (b'M', r#"syntax error at or near "SELEC""#),
                (b'P', "1"),
            ],
        );
        let mut out = BytesMut::new();
        assert!(!redact_frame(&syntax, "SELEC 1", &mut out));
        assert!(out.is_empty());
        // The same codes quoting what the statement didn't write: a bad tsquery value, a regclass cast.
        for (code, message) in [
            ("42601", r#"syntax error in tsquery: "SSNVAL3)""#),
            ("42P01", r#"relation "ssnval3" does not exist"#),
            ("42601", r#"unpaired "quote"#),
        ] {
            let f = frame(b'E', &[(b'C', code), (b'M', message)]);
            let mut out = BytesMut::new();
            let statement = "SELECT (ssn || ')')::tsquery, ssn::regclass FROM people";
            assert!(redact_frame(&f, statement, &mut out), "{message}");
            assert!(!text(&out).to_lowercase().contains("ssnval3"), "{message}");
        }
        let missing = frame(
            b'E',
            &[
                (b'C', "42P01"),
                (b'M', r#"relation "peple" does not exist"#),
                (b'P', "15"),
            ],
        );
        assert!(!redact_frame(&missing, "SELECT * FROM Peple", &mut out));
        let dotted = frame(
            b'E',
            &[
                (b'C', "42601"),
                (
                    b'M',
                    "improper relation name (too many dotted names): a.b.c.d",
                ),
                (b'P', "8"),
            ],
        );
        assert!(!redact_frame(
            &dotted,
            "SELECT 'a.b.c.d'::regclass",
            &mut out
        ));
        // Their DETAIL and CONTEXT still go (a deadlock's DETAIL quotes other sessions' statements).
        let deadlock = frame(
            b'E',
            &[
                (b'C', "40P01"),
                (b'M', "deadlock detected"),
                (b'D', "Process 1: UPDATE people SET ssn = 'SSNVAL3'"),
                (b'H', "See server log for query details."),
            ],
        );
        assert!(redact_frame(&deadlock, "UPDATE people SET n = 1", &mut out));
        let shown = text(&out);
        assert!(shown.contains("M=deadlock detected"), "{shown}");
        assert!(shown.contains("H=See server log"), "{shown}");
        assert!(!shown.contains("SSNVAL3"), "{shown}");
    }

    #[test]
    fn runtime_errors_naming_anything_are_withheld_however_the_statement_reads() {
        // Raised while the statement ran (no cursor position): a value with quotes of its own splits
        // into parts the statement holds, and a comment can list every candidate character or name.
        let statement = r#"SELECT quote_ident('a"' || ssn || '"b')::regclass, (substr(ssn, 2, 1) || '.a.b.c')::regclass FROM people /* x0 x1 x2 x3 2.a.b.c */"#;
        for (code, message) in [
            ("42P01", r#"relation "a"123-45-6789"b" does not exist"#),
            ("42P01", r#"relation "x2" does not exist"#),
            (
                "42601",
                "improper relation name (too many dotted names): 2.a.b.c",
            ),
        ] {
            let f = frame(b'E', &[(b'C', code), (b'M', message)]);
            let mut out = BytesMut::new();
            assert!(redact_frame(&f, statement, &mut out), "{message}");
            assert!(text(&out).contains(&withheld(code)), "{message}");
        }
        // A message that names nothing keeps its text without a position.
        let zero = frame(b'E', &[(b'C', "22012"), (b'M', "division by zero")]);
        let mut out = BytesMut::new();
        assert!(!redact_frame(&zero, "SELECT 1/0", &mut out));
    }

    #[test]
    fn api_errors_lose_value_carrying_text() {
        use crate::upstream::UpstreamSqlError;
        let mut e = UpstreamSqlError {
            sqlstate: "22P02".into(),
            message: "invalid input syntax for type json".into(),
            detail: Some(r#"Token "SSNVAL3" is invalid."#.into()),
            positioned: false,
            from_code: false,
        };
        redact_upstream_error(&mut e, "SELECT ssn::json FROM people");
        assert_eq!(e.detail, None);
        assert_eq!(e.message, withheld("22P02"));
        let mut e = UpstreamSqlError {
            sqlstate: "42703".into(),
            message: r#"column "nope" does not exist"#.into(),
            detail: None,
            positioned: true,
            from_code: false,
        };
        redact_upstream_error(&mut e, "SELECT nope FROM people");
        assert_eq!(e.message, r#"column "nope" does not exist"#);
        // The same text raised at run time (dynamic SQL naming a value) carries no position.
        let mut e = UpstreamSqlError {
            sqlstate: "42703".into(),
            message: r#"column "nope" does not exist"#.into(),
            detail: None,
            positioned: false,
            from_code: false,
        };
        redact_upstream_error(&mut e, "SELECT nope FROM people");
        assert_eq!(e.message, withheld("42703"));
        // A RAISE picks a SQLSTATE whose text is otherwise kept.
        let mut e = UpstreamSqlError {
            sqlstate: "42601".into(),
            message: "ZQX-SSN-000222".into(),
            detail: None,
            positioned: false,
            from_code: true,
        };
        redact_upstream_error(
            &mut e,
            "DO $$BEGIN RAISE EXCEPTION USING MESSAGE = 'x'; END$$",
        );
        assert_eq!(e.message, withheld("42601"));
    }

    #[test]
    fn text_raised_in_code_is_withheld_whatever_its_sqlstate() {
        let sql = "DO $$BEGIN RAISE EXCEPTION USING MESSAGE = (SELECT ssn FROM people), ERRCODE = '42601'; END$$";
        let f = frame(
            b'E',
            &[
                (b'S', "ERROR"),
                (b'C', "42601"),
                (b'M', "ZQX-SSN-000222"),
                (b'H', "CARDSECRET5555"),
                (b'W', "PL/pgSQL function inline_code_block line 1 at RAISE"),
            ],
        );
        let mut out = BytesMut::new();
        assert!(redact_frame(&f, sql, &mut out));
        let shown = text(&out);
        assert!(
            !shown.contains("ZQX") && !shown.contains("CARDSECRET"),
            "{shown}"
        );
    }
}
