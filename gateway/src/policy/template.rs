//! Literal templates: the SQL text with each plain string and number literal replaced by a marker, so
//! `... WHERE aid = 17` and `... WHERE aid = 42` share one classification.
//!
//! Sharing is sound only when two texts with the same template tokenize identically in PostgreSQL
//! apart from literal values. The scanner therefore gives up (returns `None`) on anything whose
//! lexing depends on settings or on more context than it tracks: comments, dollar quotes, escape or
//! prefixed strings (`E'…'`, `U&'…'`, `B'…'`), backslashes inside strings (their meaning depends on
//! `standard_conforming_strings`), numbers glued to identifiers (`0x1F`, `1_000`, `12abc`), and NUL.
//! Whether a classification may be shared at all is decided by the cache (`literal_insensitive`).

/// Marks a string literal in a template; NUL never occurs in a text that gets a template.
const STRING_MARK: &str = "\0s";
/// Marks a number literal in a template.
const NUMBER_MARK: &str = "\0n";

/// The literal template of `sql`, or `None` when the text holds no literal or anything the scanner
/// does not model exactly (see the module documentation).
pub fn literal_template(sql: &str) -> Option<String> {
    let bytes = sql.as_bytes();
    if bytes.contains(&0) {
        return None;
    }
    let mut out = String::with_capacity(sql.len());
    let mut copied = 0;
    let mut i = 0;
    let mut replaced = false;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\\' => return None,
            b'$' if !is_parameter(bytes, i) => return None,
            b'-' if bytes.get(i + 1) == Some(&b'-') => return None,
            b'/' if bytes.get(i + 1) == Some(&b'*') => return None,
            b'"' => {
                // A quoted identifier is copied as is; `U&"…"` has escapes of its own.
                if i > 0 && bytes[i - 1] == b'&' {
                    return None;
                }
                i = end_of_quoted(bytes, i, b'"')?;
            }
            b'\'' => {
                if i > 0 && (is_ident_byte(bytes[i - 1]) || bytes[i - 1] == b'&') {
                    return None;
                }
                let end = end_of_quoted(bytes, i, b'\'')?;
                if bytes[i..end].contains(&b'\\') {
                    return None;
                }
                out.push_str(&sql[copied..i]);
                out.push_str(STRING_MARK);
                copied = end;
                replaced = true;
                i = end;
            }
            b'0'..=b'9' if i == 0 || !is_ident_byte(bytes[i - 1]) => {
                if i > 0 && bytes[i - 1] == b'.' {
                    return None;
                }
                let end = end_of_number(bytes, i)?;
                out.push_str(&sql[copied..i]);
                out.push_str(NUMBER_MARK);
                copied = end;
                replaced = true;
                i = end;
            }
            _ if is_ident_byte(b) => {
                // Skip the whole word so digits inside identifiers (`t1`, `a$1`) are never numbers.
                while i < bytes.len() && is_ident_byte(bytes[i]) {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    if !replaced {
        return None;
    }
    out.push_str(&sql[copied..]);
    Some(out)
}

/// `$1`-style parameter: a `$` followed by digits, not glued to a word before it.
fn is_parameter(bytes: &[u8], i: usize) -> bool {
    (i == 0 || !is_ident_byte(bytes[i - 1])) && bytes.get(i + 1).is_some_and(u8::is_ascii_digit)
}

/// Bytes that continue a PostgreSQL identifier or keyword (multi-byte UTF-8 counts as letters).
fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// Index just past a quoted token starting at `start`; doubled quotes are escapes.
fn end_of_quoted(bytes: &[u8], start: usize, quote: u8) -> Option<usize> {
    let mut i = start + 1;
    loop {
        match bytes.get(i)? {
            q if *q == quote => {
                if bytes.get(i + 1) == Some(&quote) {
                    i += 2;
                } else {
                    return Some(i + 1);
                }
            }
            _ => i += 1,
        }
    }
}

/// Index just past `digits [. digits] [e [+-] digits]`; `None` when the number runs into a word or
/// another dot, where PostgreSQL versions lex differently (`0x1F`, `1_000`, `1.2.3`, `12abc`).
fn end_of_number(bytes: &[u8], start: usize) -> Option<usize> {
    let digits = |mut i: usize| {
        while bytes.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    let mut i = digits(start);
    if bytes.get(i) == Some(&b'.') && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
        i = digits(i + 1);
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        if matches!(bytes.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        if !bytes.get(j).is_some_and(u8::is_ascii_digit) {
            return None;
        }
        i = digits(j);
    }
    match bytes.get(i) {
        Some(&b) if is_ident_byte(b) || b == b'.' => None,
        _ => Some(i),
    }
}

#[cfg(test)]
mod tests {
    use super::literal_template;

    #[test]
    fn literals_become_markers_and_the_rest_is_kept_byte_for_byte() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;",
                Some("SELECT abalance FROM pgbench_accounts WHERE aid = \0n;"),
            ),
            (
                "UPDATE t SET a = 'it''s', b = -1.5e-3 WHERE id IN (1,2)",
                Some("UPDATE t SET a = \0s, b = -\0n WHERE id IN (\0n,\0n)"),
            ),
            (
                "SELECT \"it's\" FROM t1 WHERE c = 'x'",
                Some("SELECT \"it's\" FROM t1 WHERE c = \0s"),
            ),
            ("SELECT * FROM t WHERE a = $1", None),
            ("SELECT col1 FROM t2", None),
            ("SELECT 'a' -- comment\n", None),
            ("SELECT /* 'a' */ 1", None),
            ("SELECT $$a$$", None),
            ("SELECT $tag$ 1 $tag$", None),
            ("SELECT E'a\\'b'", None),
            ("SELECT 'a\\'; DELETE FROM t; --'", None),
            ("SELECT U&'d\\0061t'", None),
            ("SELECT U&\"d\"", None),
            ("SELECT B'101'", None),
            ("SELECT 0x1F", None),
            ("SELECT 1_000", None),
            ("SELECT 12abc", None),
            ("SELECT 1.2.3", None),
            ("SELECT 1.", None),
            ("SELECT .5", None),
            ("SELECT 1e", None),
            ("SELECT 'unterminated", None),
            ("SELECT \"unterminated", None),
            ("SELECT 'a\0'", None),
            (
                "SELECT a$1 FROM t WHERE b = 2",
                Some("SELECT a$1 FROM t WHERE b = \0n"),
            ),
            (
                "SELECT 'é' FROM ü1 WHERE x=3",
                Some("SELECT \0s FROM ü1 WHERE x=\0n"),
            ),
        ];
        for (sql, want) in cases {
            assert_eq!(literal_template(sql).as_deref(), *want, "{sql:?}");
        }
    }

    #[test]
    fn different_structure_never_shares_a_template() {
        let pairs = [
            ("SELECT 1 FROM a", "SELECT 1 FROM b"),
            ("SELECT 'x' AS a", "SELECT 1 AS a"),
            (
                "DELETE FROM t WHERE id = 1",
                "DELETE FROM t WHERE id = 1 OR 1 = 1",
            ),
        ];
        for (a, b) in pairs {
            assert_ne!(literal_template(a), literal_template(b), "{a:?} vs {b:?}");
        }
        // A doubled quote stays inside its literal: both are `SELECT <string>`.
        assert_eq!(
            literal_template("SELECT 'a'"),
            literal_template("SELECT 'a''; DELETE FROM t'")
        );
    }
}
