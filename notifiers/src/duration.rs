//! Durations in notifier config sections: `90`, `90s`, `15m`, `2h`, `7d` (a bare number is seconds).

use std::time::Duration;

/// Parse `90`, `90s`, `15m`, `2h`, `1d` or `1h30m` (the shared grammar of
/// [`countersign_bot::duration`], plus bare seconds); `None` for anything else or on overflow.
pub fn parse_duration(s: &str) -> Option<Duration> {
    countersign_bot::duration::parse_duration_or_seconds(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

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
