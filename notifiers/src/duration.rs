//! Durations in notifier config sections: `90`, `90s`, `15m`, `2h`, `7d` (a bare number is seconds).

use std::time::Duration;

/// Parse `90`, `90s`, `15m`, `2h`, `1d` or `1h30m` (the shared grammar of
/// [`countersign_bot::duration`], plus bare seconds); `None` for anything else or on overflow.
pub fn parse_duration(s: &str) -> Option<Duration> {
    countersign_bot::duration::parse_duration_or_seconds(s).ok()
}

/// Serde: a duration written as text (`"15m"`, `"900"`) or as a bare number of seconds (`900`, as in
/// `[wire]`), kept as text for [`parse_duration`].
pub fn text_or_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    d.deserialize_any(TextOrSeconds)
}

/// [`text_or_seconds`] for an optional key.
pub fn option_text_or_seconds<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    text_or_seconds(d).map(Some)
}

struct TextOrSeconds;

impl serde::de::Visitor<'_> for TextOrSeconds {
    type Value = String;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a duration such as \"900s\", \"15m\" or \"1h\", or a whole number of seconds such as 900")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
        Ok(format!("{v}s"))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
        u64::try_from(v).map(|v| format!("{v}s")).map_err(|_| {
            E::custom(format!(
                "{v} is negative; write a duration such as \"900s\" or \"15m\""
            ))
        })
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<String, E> {
        Err(E::custom(format!(
            "{v} is not a whole number of seconds; write a duration such as \"900s\" or \"500ms\""
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Section {
        #[serde(deserialize_with = "text_or_seconds")]
        after: String,
        #[serde(default, deserialize_with = "option_text_or_seconds")]
        then: Option<String>,
    }

    #[test]
    fn a_bare_number_of_seconds_reads_as_a_duration() {
        let s: Section = serde_json::from_str(r#"{"after": 900, "then": "1h"}"#).unwrap();
        assert_eq!(parse_duration(&s.after), Some(Duration::from_secs(900)));
        assert_eq!(s.then.as_deref(), Some("1h"));
        let s: Section = serde_json::from_str(r#"{"after": "15m"}"#).unwrap();
        assert_eq!((s.after.as_str(), s.then), ("15m", None));
        for bad in [
            r#"{"after": -5}"#,
            r#"{"after": 1.5}"#,
            r#"{"after": true}"#,
        ] {
            let e = serde_json::from_str::<Section>(bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains("\"900s\""), "{bad}: {e}");
        }
    }

    #[test]
    fn units_and_bare_seconds_parse() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("45"), Some(Duration::from_secs(45)));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("5w"), None);
        assert_eq!(parse_duration(""), None);
    }
}
