//! The `options` startup parameter (libpq's `options=`, `PGOPTIONS`). PostgreSQL splits it on
//! whitespace (a backslash keeps the next character) and reads `-c name=value` and `--name=value` as
//! settings; the gateway reads it the same way, so every setting an agent asks for at connect time is
//! judged as a `SET` would be.

/// An `options` value the gateway will not pass on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// A server switch other than a setting (`-d 5`, `-P`, …).
    #[error("startup option {0:?} is not a setting; only -c name=value (or --name=value) may pass through the gateway")]
    NotASetting(String),
    /// `-c` without `name=value`.
    #[error("startup option {0:?} needs name=value")]
    MissingValue(String),
    /// A character PostgreSQL may split on or not depending on the server's locale.
    #[error("startup options must be ASCII without control characters other than space and tab ({0:?} found); set such values with SET in the session")]
    Ambiguous(char),
}

/// The settings `options` asks for, in order: names lower-cased with `-` read as `_`, as PostgreSQL
/// reads them.
pub fn settings_in(options: &str) -> Result<Vec<(String, String)>, OptionsError> {
    // PostgreSQL splits with the server locale's isspace(): in a single-byte locale a byte of a
    // UTF-8 character may count as a space, and control characters (vertical tab, form feed) do in
    // every locale. Such text would be judged as one word here and applied as several there.
    if let Some(c) = options
        .chars()
        .find(|&c| !c.is_ascii() || (c.is_ascii_control() && c != '\t'))
    {
        return Err(OptionsError::Ambiguous(c));
    }
    let words = split(options);
    let mut settings = Vec::new();
    let mut words = words.into_iter();
    while let Some(word) = words.next() {
        let assignment = if word == "-c" {
            words
                .next()
                .ok_or_else(|| OptionsError::MissingValue(word.clone()))?
        } else if let Some(rest) = word.strip_prefix("-c") {
            rest.to_string()
        } else if let Some(rest) = word.strip_prefix("--") {
            rest.to_string()
        } else {
            return Err(OptionsError::NotASetting(word));
        };
        let Some((name, value)) = assignment.split_once('=') else {
            return Err(OptionsError::MissingValue(assignment));
        };
        settings.push((
            name.to_ascii_lowercase().replace('-', "_"),
            value.to_string(),
        ));
    }
    Ok(settings)
}

/// Splits as PostgreSQL's `pg_split_opts`: whitespace (C's `isspace`, vertical tab included) separates
/// words, `\` keeps the next character.
fn split(options: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        if c.is_ascii_whitespace() || c == '\u{b}' {
            words.extend(word.take());
            continue;
        }
        let w = word.get_or_insert_with(String::new);
        match c {
            '\\' => w.extend(chars.next()),
            _ => w.push(c),
        }
    }
    words.extend(word);
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(options: &str) -> Vec<(String, String)> {
        settings_in(options).unwrap()
    }

    #[test]
    fn settings_are_read_as_postgres_reads_them() {
        let want = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert_eq!(pairs(""), want(&[]));
        assert_eq!(
            pairs("-c statement_timeout=5s  -cwork_mem=4MB --search-path=public"),
            want(&[
                ("statement_timeout", "5s"),
                ("work_mem", "4MB"),
                ("search_path", "public")
            ])
        );
        assert_eq!(
            pairs(r"-c application_name=a\ b -c Role=admin"),
            want(&[("application_name", "a b"), ("role", "admin")])
        );
    }

    #[test]
    fn switches_that_are_not_settings_are_refused() {
        for (options, err) in [
            ("-d 5", OptionsError::NotASetting("-d".into())),
            ("-P", OptionsError::NotASetting("-P".into())),
            ("-c", OptionsError::MissingValue("-c".into())),
            ("-c role", OptionsError::MissingValue("role".into())),
            ("--role", OptionsError::MissingValue("role".into())),
            (
                "-capplication_name=a\u{b}-crole=admin",
                OptionsError::Ambiguous('\u{b}'),
            ),
            (
                "-c application_name=a\u{c}b",
                OptionsError::Ambiguous('\u{c}'),
            ),
            (
                "-c application_name=a\r-crole=x",
                OptionsError::Ambiguous('\r'),
            ),
            (
                "-c application_name=caf\u{e9}",
                OptionsError::Ambiguous('\u{e9}'),
            ),
        ] {
            assert_eq!(settings_in(options), Err(err), "{options}");
        }
    }
}
