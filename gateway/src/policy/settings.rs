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
            format!("{name} changes the session identity"),
        );
    }
    if name == "search_path" {
        return search_path_verdict(value);
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

/// A `search_path` is harmless unless it lists a schema ahead of `pg_catalog`: PostgreSQL searches
/// `pg_catalog` first only when the path does not name it, and the vetted read-only function list
/// trusts unqualified built-in names, which a function in an earlier schema could then shadow.
fn search_path_verdict(value: &str) -> (Action, String) {
    let schemas: Vec<String> = value
        .split(',')
        .map(|s| s.trim().trim_matches('"').to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
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
            ("ROLE", "admin", Action::Review),
            ("session_authorization", "admin", Action::Review),
            ("session_replication_role", "replica", Action::Review),
            ("work_mem", "64GB", Action::Review),
            ("local_preload_libraries", "x", Action::Review),
        ] {
            assert_eq!(setting_verdict(name, value).0, action, "{name}={value}");
        }
    }
}
