//! Making request content inert in Slack messages.
//!
//! Request content (SQL, reasons, names) only ever goes into `plain_text` objects and rich-text `text`
//! runs, which Slack never parses for formatting, links or mentions; on top of that `&`, `<` and `>` are
//! entity-escaped as Slack requires, so `<!channel>` or `<https://evil|click>` stays literal text even if it
//! were ever shown as mrkdwn.

/// Escape the three characters Slack treats as control characters in message text.
pub fn escape_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// Escaped text cut to at most `max` characters (an ellipsis marks the cut). Cuts before escaping, so an
/// entity is never split.
pub fn escape_short(s: &str, max: usize) -> String {
    escape_text(&shorten(s, max.saturating_sub(1).max(1)))
}

/// The first `max` characters of `s`, with an ellipsis when anything was cut.
pub fn shorten(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match truncate_chars(s, max) {
        (cut, true) => format!("{cut}…").into(),
        (all, false) => all.into(),
    }
}

/// The first `max` characters of `s`, and whether anything was cut.
pub fn truncate_chars(s: &str, max: usize) -> (&str, bool) {
    match s.char_indices().nth(max) {
        Some((i, _)) => (&s[..i], true),
        None => (s, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasts_links_and_user_mentions_are_entity_escaped() {
        let e = escape_text("<!channel> <@U123> <https://evil.example|click> a&b");
        assert_eq!(
            e,
            "&lt;!channel&gt; &lt;@U123&gt; &lt;https://evil.example|click&gt; a&amp;b"
        );
        assert!(!e.contains('<') && !e.contains('>'));
    }

    #[test]
    fn truncation_counts_characters_not_bytes_and_never_splits_an_entity() {
        assert_eq!(truncate_chars("ééé", 2), ("éé", true));
        assert_eq!(truncate_chars("ab", 5), ("ab", false));
        assert_eq!(escape_short("<<<<<<", 4), "&lt;&lt;&lt;…");
        assert_eq!(escape_short("ok", 4), "ok");
    }
}
