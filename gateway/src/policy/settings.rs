//! Session settings: which ones an agent may change without review, however it changes them (`SET`,
//! `set_config`, or startup parameters and `options` at connect time).

use super::functions::{is_harmless_setting, is_identity_setting};
use super::Action;

/// The verdict on setting `name` (any case) to `value`.
pub fn setting_verdict(name: &str, value: &str) -> (Action, String) {
    let name = name.to_ascii_lowercase();
    if is_identity_setting(&name) {
        return (
            Action::Review,
            format!("{name} {}", super::verdict::CHANGES_IDENTITY),
        );
    }
    if name == "search_path" {
        return search_path_verdict(value);
    }
    if name == "standard_conforming_strings" {
        return conforming_strings_verdict(value);
    }
    if name == "client_encoding" {
        return client_encoding_verdict(value);
    }
    if is_harmless_setting(&name) {
        (Action::Allow, String::new())
    } else {
        (
            Action::Review,
            format!("{name}: setting not on the harmless list"),
        )
    }
}

/// Settings besides `search_path` and the role that change what a statement's text means: how
/// literals are read (dates, times, numbers, text search), or whether triggers and rules fire. A
/// session that changed one holds its statements for approvals bound to that change.
pub const MEANING_SETTINGS: &[&str] = &[
    "datestyle",
    "timezone",
    "intervalstyle",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "transform_null_equals",
    "session_replication_role",
    "default_text_search_config",
    "array_nulls",
];

/// True when setting `name` (any case, `-` read as `_`) may change what later statements mean:
/// the names they resolve to (`search_path`, the role) or how their literals are read.
pub fn shapes_meaning(name: &str) -> bool {
    let name = name.to_ascii_lowercase().replace('-', "_");
    name == "search_path" || is_identity_setting(&name) || MEANING_SETTINGS.contains(&name.as_str())
}

/// True for the settings whose verdict depends on the value: a value the policy cannot see (a
/// `set_config` argument computed at run time) must be reviewed.
pub fn value_decides(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "search_path" | "standard_conforming_strings" | "client_encoding"
    )
}

/// The policy reads statement text as PostgreSQL does with `standard_conforming_strings` on (a
/// backslash is an ordinary character in `'…'`). With it off, PostgreSQL reads `'a\'; DELETE …'` as
/// one string where the policy sees a string, a `;` and a DELETE — or the other way round, so a write
/// could pass as the tail of a string literal. Only turning it on (or back to the default) passes.
fn conforming_strings_verdict(value: &str) -> (Action, String) {
    match value.trim().to_ascii_lowercase().as_str() {
        "" | "default" | "on" | "true" | "yes" | "1" => (Action::Allow, String::new()),
        _ => (
            Action::Review,
            "standard_conforming_strings off makes backslashes escape quotes, so PostgreSQL would split statements where the policy does not".to_string(),
        ),
    }
}

/// Client encodings in which every byte below 0x80 is the ASCII character, as in the UTF-8 text the
/// policy reads: UTF-8, SQL_ASCII, the single-byte encodings and the EUC/MULE families (PostgreSQL's
/// names and aliases, normalised as PostgreSQL does: lower case, letters and digits only).
const ASCII_SAFE_ENCODINGS: &[&str] = &[
    "abc",
    "alt",
    "euccn",
    "eucjis2004",
    "eucjp",
    "euckr",
    "euctw",
    "iso88591",
    "iso885910",
    "iso885913",
    "iso885914",
    "iso885915",
    "iso885916",
    "iso88592",
    "iso88593",
    "iso88594",
    "iso88595",
    "iso88596",
    "iso88597",
    "iso88598",
    "iso88599",
    "koi8",
    "koi8r",
    "koi8u",
    "latin1",
    "latin10",
    "latin2",
    "latin3",
    "latin4",
    "latin5",
    "latin6",
    "latin7",
    "latin8",
    "latin9",
    "muleinternal",
    "sqlascii",
    "tcvn",
    "tcvn5712",
    "unicode",
    "utf8",
    "vscii",
    "win",
    "win1250",
    "win1251",
    "win1252",
    "win1253",
    "win1254",
    "win1255",
    "win1256",
    "win1257",
    "win1258",
    "win866",
    "win874",
    "windows1250",
    "windows1251",
    "windows1252",
    "windows1253",
    "windows1254",
    "windows1255",
    "windows1256",
    "windows1257",
    "windows1258",
    "windows866",
    "windows874",
];

/// PostgreSQL converts a statement from the client encoding before reading it, the policy reads it as
/// UTF-8. In the client-only encodings (SJIS, BIG5, GBK, GB18030, UHC, JOHAB) the second byte of a
/// character may be `\`, so valid UTF-8 such as `E'丁\'; DELETE …'` ends a string early for
/// PostgreSQL and hides a statement from the policy. Only encodings that keep ASCII intact pass.
fn client_encoding_verdict(value: &str) -> (Action, String) {
    let normalised: String = value
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if normalised.is_empty()
        || normalised == "default"
        || ASCII_SAFE_ENCODINGS
            .binary_search(&normalised.as_str())
            .is_ok()
    {
        (Action::Allow, String::new())
    } else {
        (
            Action::Review,
            format!(
                "client_encoding {value}: PostgreSQL would read statements in an encoding whose characters can contain a backslash, which the policy does not; use UTF8"
            ),
        )
    }
}

/// A `search_path` is harmless unless it lists a schema ahead of `pg_catalog`: PostgreSQL searches
/// `pg_catalog` first only when the path does not name it, and the vetted read-only function list
/// trusts unqualified built-in names, which a function in an earlier schema could then shadow. Only the
/// schema PostgreSQL reads as `pg_catalog` counts: `"PG_CATALOG"` or `" pg_catalog"` name other schemas.
fn search_path_verdict(value: &str) -> (Action, String) {
    let Some(schemas) = search_path_schemas(value) else {
        return (
            Action::Review,
            format!("search_path {value:?} is not a list PostgreSQL reads the way the policy does"),
        );
    };
    match schemas.iter().position(|s| s == "pg_catalog") {
        Some(i) if i > 0 => (
            Action::Review,
            format!(
                "search_path puts {} ahead of pg_catalog, so built-in function names could resolve to user functions",
                schemas[..i].join(", ")
            ),
        ),
        _ => (Action::Allow, String::new()),
    }
}

/// The schema names of a `search_path` value as PostgreSQL splits it (`SplitIdentifierString`):
/// comma-separated, whitespace around each name dropped, unquoted names folded to lower case, quoted
/// names kept exactly (`""` is a quote). `None` for text PostgreSQL rejects.
fn search_path_schemas(value: &str) -> Option<Vec<String>> {
    let mut schemas = Vec::new();
    let mut chars = value.chars().peekable();
    let skip_space = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| {
        while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            chars.next();
        }
    };
    skip_space(&mut chars);
    if chars.peek().is_none() {
        return Some(schemas);
    }
    loop {
        let mut name = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        name.push('"');
                    }
                    '"' => break,
                    c => name.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' || c.is_ascii_whitespace() {
                    break;
                }
                if c == '"' {
                    return None;
                }
                name.push(c.to_ascii_lowercase());
                chars.next();
            }
            if name.is_empty() {
                return None;
            }
        }
        schemas.push(name);
        skip_space(&mut chars);
        match chars.next() {
            None => return Some(schemas),
            Some(',') => skip_space(&mut chars),
            Some(_) => return None,
        }
    }
}

/// The text PostgreSQL makes of `SET search_path = a, "B", 'c d'`: each item one schema name, an
/// unquoted one folded to lower case, a quoted one or a string kept exactly (`quote_identifier`).
pub fn search_path_from_items<'a>(items: impl Iterator<Item = (&'a str, bool)>) -> String {
    items
        .map(|(name, quoted)| {
            let name = if quoted {
                name.to_string()
            } else {
                name.to_ascii_lowercase()
            };
            format!("\"{}\"", name.replace('"', "\"\""))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_pass_only_when_they_grant_nothing() {
        for (name, value, action) in [
            ("TimeZone", "UTC", Action::Allow),
            ("DateStyle", "ISO", Action::Allow),
            ("extra_float_digits", "3", Action::Allow),
            ("enable_seqscan", "off", Action::Allow),
            ("jit", "off", Action::Allow),
            ("search_path", "\"$user\", public", Action::Allow),
            ("search_path", "pg_catalog, app", Action::Allow),
            ("search_path", "app, pg_catalog", Action::Review),
            // Quoted names keep their case and spaces: these are other schemas, ahead of pg_catalog.
            (
                "search_path",
                "\"PG_CATALOG\", evil, pg_catalog",
                Action::Review,
            ),
            (
                "search_path",
                "\" pg_catalog\", evil, pg_catalog",
                Action::Review,
            ),
            ("search_path", "\"pg_catalog\", evil", Action::Allow),
            ("search_path", "Pg_Catalog, evil", Action::Allow),
            ("search_path", "\"a,b\", pg_catalog", Action::Review),
            ("search_path", "\"unterminated, pg_catalog", Action::Review),
            ("search_path", "", Action::Allow),
            ("ROLE", "admin", Action::Review),
            ("session_authorization", "admin", Action::Review),
            ("session_replication_role", "replica", Action::Review),
            ("work_mem", "64GB", Action::Review),
            ("local_preload_libraries", "x", Action::Review),
            ("standard_conforming_strings", "on", Action::Allow),
            ("standard_conforming_strings", "", Action::Allow),
            ("standard_conforming_strings", "off", Action::Review),
            ("standard_conforming_strings", "false", Action::Review),
            ("standard_conforming_strings", "0", Action::Review),
            ("client_encoding", "UTF8", Action::Allow),
            ("client_encoding", "utf-8", Action::Allow),
            ("client_encoding", "LATIN1", Action::Allow),
            ("client_encoding", "EUC_JP", Action::Allow),
            ("client_encoding", "GBK", Action::Review),
            ("client_encoding", "SJIS", Action::Review),
            ("client_encoding", "Shift_JIS_2004", Action::Review),
            ("client_encoding", "BIG5", Action::Review),
            ("client_encoding", "GB18030", Action::Review),
            ("client_encoding", "UHC", Action::Review),
            ("client_encoding", "JOHAB", Action::Review),
            ("client_encoding", "win932", Action::Review),
        ] {
            assert_eq!(setting_verdict(name, value).0, action, "{name}={value}");
        }
    }

    #[test]
    fn ascii_safe_encodings_are_sorted_so_binary_search_finds_every_entry() {
        assert!(ASCII_SAFE_ENCODINGS.windows(2).all(|w| w[0] < w[1]));
    }
}
