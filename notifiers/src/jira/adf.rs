//! Atlassian Document Format builders. Request content only ever goes into text nodes (data, not markup), with
//! control characters removed and lengths capped so a statement can't exceed Jira's field limits.

use serde_json::{json, Value};

/// Longest text node we emit; Jira rejects documents over 32 767 characters.
const MAX_TEXT: usize = 4000;

/// Shows deceptive characters visibly (see [`countersign_bot::reveal`]) and caps the length.
pub fn clean(s: &str, max: usize) -> String {
    let shown = countersign_bot::reveal::reveal(s);
    let mut out: String = shown.chars().take(max).collect();
    if shown.chars().count() > max {
        out.push('…');
    }
    out
}

/// A one-line version for summaries: the first line, with a count of the lines left out (joining them
/// would let a `--` comment on the first seem to swallow the next). Only ASCII white space is
/// collapsed: a Unicode space is part of a name to PostgreSQL, and is shown.
pub fn one_line(s: &str, max: usize) -> String {
    let mut lines = s
        .lines()
        .filter(|l| !l.trim_matches(|c: char| c.is_ascii_whitespace()).is_empty());
    let first = lines.next().unwrap_or_default();
    let rest = lines.count();
    let flat = first
        .split(|c: char| c.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let more = match rest {
        0 => String::new(),
        1 => " … (+1 more line)".to_string(),
        n => format!(" … (+{n} more lines)"),
    };
    let shown = clean(&flat, max.saturating_sub(more.chars().count()));
    format!("{shown}{more}")
}

/// A text node of text its author controls shown on one line (line breaks visible), for reasons,
/// names and error messages.
pub fn text_line(s: &str) -> Option<Value> {
    text(&countersign_bot::reveal::reveal_line(s))
}

/// A text node, or nothing for empty text (Jira rejects empty text nodes).
pub fn text(s: &str) -> Option<Value> {
    let t = clean(s, MAX_TEXT);
    (!t.is_empty()).then(|| json!({ "type": "text", "text": t }))
}

/// A text node in bold.
pub fn strong(s: &str) -> Option<Value> {
    text(s).map(|mut v| {
        v["marks"] = json!([{ "type": "strong" }]);
        v
    })
}

/// A link node; `href` must be built by us, never taken from request content.
pub fn link(label: &str, href: &str) -> Option<Value> {
    text(label).map(|mut v| {
        v["marks"] = json!([{ "type": "link", "attrs": { "href": href } }]);
        v
    })
}

/// A paragraph of inline nodes (empty ones dropped).
pub fn paragraph(parts: impl IntoIterator<Item = Option<Value>>) -> Value {
    let content: Vec<Value> = parts.into_iter().flatten().collect();
    json!({ "type": "paragraph", "content": content })
}

/// A code block; the statement is truncated to `max` characters with a note pointing to the full request.
pub fn code_block(language: &str, code: &str, max: usize) -> Value {
    let shown = countersign_bot::reveal::reveal(code);
    let chars: Vec<char> = shown.chars().collect();
    let cut = chars.len() > max;
    // Text nodes of at most MAX_TEXT characters each, so a long statement is shown whole up to `max`,
    // and the truncation note is a node of its own that no cap removes.
    let mut content: Vec<Value> = chars[..chars.len().min(max)]
        .chunks(MAX_TEXT)
        .map(|c| json!({ "type": "text", "text": c.iter().collect::<String>() }))
        .collect();
    if cut {
        content.push(json!({ "type": "text", "text": format!(
            "\n-- truncated: {max} of {} characters shown; this statement can't be approved from Jira",
            chars.len()
        ) }));
    }
    json!({ "type": "codeBlock", "attrs": { "language": language }, "content": content })
}

/// Whether `code` is shown whole by a [`code_block`] of `max` characters.
pub fn shown_whole(code: &str, max: usize) -> bool {
    countersign_bot::reveal::reveal(code).chars().count() <= max
}

/// The reasons a statement needs review, one list item each; every reason is shown on one line (line
/// breaks in names it quotes are shown, not followed) and capped, so none crowds the others out.
pub fn reasons_list(reasons: &[String]) -> Value {
    let items: Vec<Value> = reasons
        .iter()
        .map(|r| {
            let line = countersign_bot::reveal::reveal_line(r);
            json!({ "type": "listItem", "content": [paragraph([text(&clean(&line, 500))])] })
        })
        .collect();
    if items.is_empty() {
        return paragraph([text("(none given)")]);
    }
    json!({ "type": "bulletList", "content": items })
}

/// A whole document from block nodes.
pub fn doc(blocks: impl IntoIterator<Item = Value>) -> Value {
    json!({ "type": "doc", "version": 1, "content": blocks.into_iter().collect::<Vec<_>>() })
}

/// All text in a document, concatenated (for tests and logs).
pub fn plain_text(v: &Value) -> String {
    let mut out = String::new();
    fn walk(v: &Value, out: &mut String) {
        if let Some(t) = v.get("text").and_then(Value::as_str) {
            out.push_str(t);
        }
        if let Some(children) = v.get("content").and_then(Value::as_array) {
            for c in children {
                walk(c, out);
            }
            out.push('\n');
        }
    }
    walk(v, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_content_stays_plain_text() {
        let p = paragraph([text("[click](https://evil.example) *bold* {color:red}")]);
        assert_eq!(
            p["content"][0]["text"],
            "[click](https://evil.example) *bold* {color:red}"
        );
        assert!(p["content"][0].get("marks").is_none());
    }

    #[test]
    fn long_statements_are_truncated_with_a_note() {
        let sql = "x".repeat(500);
        let block = code_block("sql", &sql, 100);
        let t = plain_text(&block);
        assert!(t.starts_with(&"x".repeat(100)));
        assert!(!t.contains(&"x".repeat(101)));
        assert!(t.contains("truncated: 100 of 500 characters shown"), "{t}");
        assert!(!shown_whole(&sql, 100) && shown_whole(&sql, 500));
    }

    #[test]
    fn a_statement_longer_than_one_text_node_is_shown_whole_and_the_note_survives() {
        let sql = "y".repeat(9_000);
        let whole = plain_text(&code_block("sql", &sql, 10_000));
        assert!(whole.contains(&sql) && !whole.contains("truncated"));
        let cut = plain_text(&code_block("sql", &sql, 5_000));
        assert!(cut.contains(&"y".repeat(5_000)) && !cut.contains(&"y".repeat(5_001)));
        assert!(
            cut.contains("truncated: 5000 of 9000"),
            "note kept past 4,000 characters"
        );
    }

    #[test]
    fn control_and_bidi_characters_are_shown_and_empty_text_dropped() {
        assert_eq!(
            clean("a\u{0}b\u{1b}[31mc\nd\u{202E}", 100),
            "a⟦U+0000⟧b⟦U+001B⟧[31mc\nd⟦U+202E⟧"
        );
        assert_eq!(
            paragraph([text(""), text("x")])["content"]
                .as_array()
                .map(Vec::len),
            Some(1)
        );
        assert_eq!(one_line("DELETE  FROM   t", 100), "DELETE FROM t");
        assert_eq!(
            one_line("SELECT 1; -- check\nDELETE FROM t", 100),
            "SELECT 1; -- check … (+1 more line)"
        );
    }
}
