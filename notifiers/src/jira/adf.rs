//! Atlassian Document Format builders. Request content only ever goes into text nodes (data, not markup), with
//! control characters removed and lengths capped so a statement can't exceed Jira's field limits.

use serde_json::{json, Value};

/// Longest text node we emit; Jira rejects documents over 32 767 characters.
const MAX_TEXT: usize = 4000;

/// Remove control characters (except newline and tab) and cap the length.
pub fn clean(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .take(max)
        .collect();
    if s.chars().count() > max {
        out.push('…');
    }
    out
}

/// A one-line version for summaries: whitespace runs become one space.
pub fn one_line(s: &str, max: usize) -> String {
    let flat = s.split_whitespace().collect::<Vec<_>>().join(" ");
    clean(&flat, max)
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
    let mut body = clean(code, max);
    if code.chars().count() > max {
        body.push_str("\n-- truncated: see the full statement on the request page");
    }
    let content: Vec<Value> = text(&body).into_iter().collect();
    json!({ "type": "codeBlock", "attrs": { "language": language }, "content": content })
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
        let t = block["content"][0]["text"].as_str().expect("text");
        assert!(t.starts_with(&"x".repeat(100)));
        assert!(!t.contains(&"x".repeat(101)));
        assert!(t.contains("truncated"));
    }

    #[test]
    fn control_characters_are_removed_and_empty_text_dropped() {
        assert_eq!(clean("a\u{0}b\u{1b}[31mc\nd", 100), "ab[31mc\nd");
        assert_eq!(
            paragraph([text(""), text("x")])["content"]
                .as_array()
                .map(Vec::len),
            Some(1)
        );
        assert_eq!(one_line("DELETE\n  FROM   t", 100), "DELETE FROM t");
    }
}
