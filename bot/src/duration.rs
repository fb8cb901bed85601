//! Durations as every config section writes them: a sum of numbers with units, `500ms`, `30s`, `5m`,
//! `1h`, `2d`, `1h30m`. One grammar for the whole product, so a value that works in one section works
//! in all of them.

use std::time::Duration;

/// A duration that does not parse; the message says how to write one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a duration ({problem}); write e.g. \"500ms\", \"30s\", \"5m\", \"1h\", \"2d\" or \"1h30m\"")]
pub struct DurationError {
    text: String,
    problem: &'static str,
}

/// Parses `500ms`, `30s`, `5m`, `1h`, `2d` and sums such as `1h30m`. Every number needs a unit.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    parse(text, false)
}

/// [`parse_duration`], also taking a bare number as seconds (`90`), as the notifier sections
/// always have.
pub fn parse_duration_or_seconds(text: &str) -> Result<Duration, DurationError> {
    parse(text, true)
}

fn parse(text: &str, bare_seconds: bool) -> Result<Duration, DurationError> {
    let t = text.trim();
    let err = |problem| DurationError {
        text: text.to_owned(),
        problem,
    };
    if t.is_empty() {
        return Err(err("empty"));
    }
    if bare_seconds && t.bytes().all(|c| c.is_ascii_digit()) {
        let n: u64 = t.parse().map_err(|_| err("too long"))?;
        return Ok(Duration::from_secs(n));
    }
    let mut total_ms: u64 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(err("a unit without a number"));
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err("too long"))?;
        rest = &rest[digits..];
        let letters = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        let ms_per_unit: u64 = match &rest[..letters] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err(err("a number without a unit")),
            _ => return Err(err("unknown unit")),
        };
        rest = &rest[letters..];
        total_ms = n
            .checked_mul(ms_per_unit)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| err("too long"))?;
    }
    Ok(Duration::from_millis(total_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_sums_parse_the_same_everywhere() {
        let ok: &[(&str, u64)] = &[
            ("500ms", 500),
            ("30s", 30_000),
            (" 5m ", 300_000),
            ("1h", 3_600_000),
            ("2d", 172_800_000),
            ("1h30m", 5_400_000),
            ("1m500ms", 60_500),
            ("0s", 0),
        ];
        for (text, ms) in ok {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(*ms)),
                "{text}"
            );
            assert_eq!(
                parse_duration_or_seconds(text),
                Ok(Duration::from_millis(*ms)),
                "{text}"
            );
        }
    }

    #[test]
    fn bad_durations_say_what_is_wrong_and_how_to_write_one() {
        for (text, problem) in [
            ("", "empty"),
            ("10", "a number without a unit"),
            ("5w", "unknown unit"),
            ("1 h", "a number without a unit"),
            ("h", "a unit without a number"),
            ("1h30", "a number without a unit"),
            ("-5s", "a unit without a number"),
            ("99999999999999999999d", "too long"),
            ("999999999999999d", "too long"),
        ] {
            let e = parse_duration(text).unwrap_err().to_string();
            assert!(e.contains(problem), "{text:?}: {e}");
            assert!(e.contains("\"1h30m\""), "{e}");
        }
    }

    #[test]
    fn a_bare_number_is_seconds_only_where_allowed() {
        assert_eq!(parse_duration_or_seconds("45"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("45").is_err());
        assert!(parse_duration_or_seconds("soon").is_err());
    }
}
