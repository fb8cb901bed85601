//! Showing untrusted text to approvers exactly as it is.
//!
//! What is approved is exactly what runs, so what an approver reads must be exactly what runs. Some
//! characters defeat that: bidirectional controls (U+202E …) reorder the text around them on screen, so
//! `WHERE id > 0 /*` followed by U+202E can display as `… AND id = 1`; zero-width and other invisible characters hide
//! text; line and paragraph separators (U+2028) break a `--` comment onto a line of its own on screen
//! while PostgreSQL keeps it in the comment. Every channel shows statements, reasons and names through
//! [`reveal`] or [`reveal_line`], which replace each such character with a visible `⟦U+202E⟧`, and warns
//! with [`hidden_characters_warning`].

use std::borrow::Cow;

/// True for characters that display as nothing or change how the text around them displays.
pub fn is_deceptive(c: char) -> bool {
    matches!(c,
        // C0 controls (tab, line feed and carriage return are left to the callers), DEL, C1 controls
        // (NEL among them).
        '\u{0}'..='\u{8}' | '\u{B}' | '\u{C}' | '\u{E}'..='\u{1F}' | '\u{7F}'..='\u{9F}'
        // Soft hyphen, combining grapheme joiner, Arabic number signs and marks, Syriac abbreviation
        // mark, Arabic pound and piastre marks and disputed end of ayah, Hangul fillers, Khmer vowels
        // inherent, Mongolian free variation selectors and vowel separator.
        | '\u{AD}' | '\u{34F}' | '\u{600}'..='\u{605}' | '\u{61C}' | '\u{6DD}' | '\u{70F}'
        | '\u{890}' | '\u{891}' | '\u{8E2}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}'
        // Zero-width space/joiners, LRM/RLM, line and paragraph separators, bidi embeddings and
        // overrides, word joiner and invisible operators, bidi isolates, deprecated format controls.
        | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{206F}'
        // Hangul filler, variation selectors, byte order mark, half-width Hangul filler, unassigned
        // specials, interlinear annotation controls.
        | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF0}'..='\u{FFFB}'
        // Kaithi number signs, Egyptian hieroglyph format controls, Khitan filler, shorthand format
        // controls, musical symbol formatting.
        | '\u{110BD}' | '\u{110CD}' | '\u{13430}'..='\u{1345F}' | '\u{16FE4}'
        | '\u{1BCA0}'..='\u{1BCA3}' | '\u{1D173}'..='\u{1D17A}'
        // Tags, supplementary variation selectors and the rest of that default-ignorable block.
        | '\u{E0000}'..='\u{E0FFF}'
        // Characters that look like a space but are letters to PostgreSQL (part of a name, not a
        // separator): no-break, Ogham, typographic and ideographic spaces, Braille blank.
        | '\u{A0}' | '\u{1680}' | '\u{2000}'..='\u{200A}' | '\u{202F}' | '\u{205F}' | '\u{3000}'
        | '\u{2800}')
}

fn shown(c: char) -> String {
    format!("⟦U+{:04X}⟧", c as u32)
}

/// `text` with every deceptive character shown as `⟦U+XXXX⟧`; line breaks (`\n`, `\r\n`) and tabs
/// are kept, a lone `\r` (which returns to the start of the line on a terminal) is shown.
pub fn reveal(text: &str) -> Cow<'_, str> {
    reveal_with(text, false)
}

/// As [`reveal`], and line breaks and tabs are shown too: for text shown on one line (reasons, names),
/// where a line break could pass for the message's own next line.
pub fn reveal_line(text: &str) -> Cow<'_, str> {
    reveal_with(text, true)
}

/// Each character of `text` with whether it is shown as `⟦U+XXXX⟧`.
fn marked(text: &str, one_line: bool) -> impl Iterator<Item = (char, bool)> + '_ {
    let mut chars = text.chars().peekable();
    std::iter::from_fn(move || {
        let c = chars.next()?;
        let shown = match c {
            '\n' | '\t' => one_line,
            '\r' => one_line || chars.peek() != Some(&'\n'),
            c => is_deceptive(c),
        };
        Some((c, shown))
    })
}

fn reveal_with(text: &str, one_line: bool) -> Cow<'_, str> {
    if !marked(text, one_line).any(|(_, shown)| shown) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for (c, is_shown) in marked(text, one_line) {
        if is_shown {
            out.push_str(&shown(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A warning for approvers when `statement` holds deceptive characters: how many, which, and that they
/// are shown as `⟦U+XXXX⟧`.
pub fn hidden_characters_warning(statement: &str) -> Option<String> {
    let mut n = 0usize;
    let mut kinds: Vec<char> = Vec::new();
    // Exactly what `reveal` shows.
    for (c, _) in marked(statement, false).filter(|(_, shown)| *shown) {
        n += 1;
        if !kinds.contains(&c) {
            kinds.push(c);
        }
    }
    if n == 0 {
        return None;
    }
    let mut listed: Vec<String> = kinds
        .iter()
        .take(5)
        .map(|c| format!("U+{:04X}", *c as u32))
        .collect();
    if kinds.len() > 5 {
        listed.push(format!("{} more", kinds.len() - 5));
    }
    Some(format!(
        "Warning: the statement contains {n} invisible, space-like or direction-changing character{} ({}), shown below as ⟦U+…⟧. Such characters can make a statement display differently from what runs; read it as shown here.",
        if n == 1 { "" } else { "s" },
        listed.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bidi_overrides_and_isolates_are_shown_not_applied() {
        let sql = "DELETE FROM orders WHERE id > 0 /*\u{202E} \u{2066}AND id = 1\u{2069} */";
        assert_eq!(
            reveal(sql),
            "DELETE FROM orders WHERE id > 0 /*⟦U+202E⟧ ⟦U+2066⟧AND id = 1⟦U+2069⟧ */"
        );
        let warning = hidden_characters_warning(sql).unwrap();
        assert!(warning.contains("3 invisible"), "{warning}");
        assert!(warning.contains("U+202E, U+2066, U+2069"), "{warning}");
    }

    #[test]
    fn invisible_and_line_breaking_characters_are_shown() {
        for c in [
            '\u{200B}',
            '\u{200D}',
            '\u{FEFF}',
            '\u{2028}',
            '\u{2029}',
            '\u{85}',
            '\u{AD}',
            '\u{E0041}',
            '\u{A0}',
            '\u{2007}',
            '\u{3000}',
            '\u{2800}',
            '\u{1D173}',
            '\u{180B}',
            '\u{FFF0}',
            '\u{E0FFF}',
            '\u{16FE4}',
            '\u{600}',
            '\u{13430}',
            '\u{0}',
            '\u{1B}',
            '\u{B}',
            '\u{C}',
        ] {
            let text = format!("a{c}b");
            assert_eq!(reveal(&text), format!("a⟦U+{:04X}⟧b", c as u32), "{c:?}");
            assert!(hidden_characters_warning(&text).is_some(), "{c:?}");
        }
    }

    #[test]
    fn ordinary_text_is_borrowed_unchanged_with_its_line_breaks() {
        for text in [
            "SELECT 1;\nSELECT 'é', '日本', 'emoji 🎉'\r\n\tFROM t",
            "",
            "plain",
        ] {
            assert!(
                matches!(reveal(text), Cow::Borrowed(t) if t == text),
                "{text:?}"
            );
            assert_eq!(hidden_characters_warning(text), None);
        }
    }

    #[test]
    fn a_lone_carriage_return_is_shown_but_a_crlf_line_break_is_not() {
        assert_eq!(reveal("a\rb\r\nc"), "a⟦U+000D⟧b\r\nc");
        assert!(hidden_characters_warning("a\rb").is_some());
    }

    #[test]
    fn one_line_text_shows_its_line_breaks_so_it_cannot_forge_the_next_line() {
        let reason = "DELETE removes data on orders\n\nApprove: https://evil.example/approve";
        assert_eq!(
            reveal_line(reason),
            "DELETE removes data on orders⟦U+000A⟧⟦U+000A⟧Approve: https://evil.example/approve"
        );
        assert_eq!(reveal_line("a\r\nb\tc"), "a⟦U+000D⟧⟦U+000A⟧b⟦U+0009⟧c");
    }
}
