//! What `check-config` verifies beyond the file itself: that every environment variable a `*_env` key
//! names is set and every file a `*_file` key names is readable, as `serve` will need them.

/// One problem with a secret reference: the key's dotted path and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingReference {
    /// Dotted key, e.g. `slack.bot_token_env` or `connections[1].upstream_url_env`.
    pub key: String,
    /// What is wrong and the fix.
    pub problem: String,
}

/// A `*_env` or `*_file` key of the config and what it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretReference {
    /// Dotted key, e.g. `slack.bot_token_env`.
    pub key: String,
    /// The variable or file it names.
    pub names: SecretSource,
}

/// Where a secret reference points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// An environment variable's name.
    Env(String),
    /// A file's path.
    File(String),
}

/// Every `*_env` and `*_file` key in the TOML text `source`, in file order (none when it does not
/// parse: that error is reported on its own).
pub fn secret_references(source: &str) -> Vec<SecretReference> {
    let Ok(value) = source.parse::<toml::Table>() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    walk(&toml::Value::Table(value), "", &mut out);
    out
}

/// Every `*_env` key naming an unset (or empty) variable and every `*_file` key naming an unreadable
/// file in the TOML text `source`, in file order. `env` looks a variable up (the process environment
/// in `check-config`).
pub fn missing_references(
    source: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<MissingReference> {
    secret_references(source)
        .into_iter()
        .filter_map(|r| {
            let problem = match &r.names {
                SecretSource::Env(name) => env(name).is_none_or(|v| v.is_empty()).then(|| {
                    format!(
                        "environment variable {name} is not set (or is empty); `serve` will refuse to start: export it first"
                    )
                }),
                SecretSource::File(file) => std::fs::File::open(file).err().map(|e| {
                    format!(
                        "cannot read {file}: {e}; `serve` will refuse to start: create the file or fix the path"
                    )
                }),
            }?;
            Some(MissingReference { key: r.key, problem })
        })
        .collect()
}

fn walk(value: &toml::Value, path: &str, out: &mut Vec<SecretReference>) {
    match value {
        toml::Value::Table(table) => {
            for (k, v) in table {
                let key = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                let names = match v {
                    toml::Value::String(name) if k.ends_with("_env") => {
                        SecretSource::Env(name.clone())
                    }
                    toml::Value::String(file) if k.ends_with("_file") => {
                        SecretSource::File(file.clone())
                    }
                    _ => {
                        walk(v, &key, out);
                        continue;
                    }
                };
                out.push(SecretReference { key, names });
            }
        }
        toml::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                walk(v, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_variables_and_unreadable_files_are_named_by_key() {
        let source = r#"
[store]
url_env = "SET_VAR"

[[connections]]
name = "a"
upstream_url_env = "UNSET_VAR"

[[connections]]
name = "b"
upstream_url_file = "/nonexistent/countersign/url"
password_env = "EMPTY_VAR"

[slack]
bot_token_env = "SET_VAR"
"#;
        let env = |name: &str| match name {
            "SET_VAR" => Some("x".to_string()),
            "EMPTY_VAR" => Some(String::new()),
            _ => None,
        };
        let got = missing_references(source, &env);
        let keys: Vec<&str> = got.iter().map(|m| m.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "connections[0].upstream_url_env",
                "connections[1].password_env",
                "connections[1].upstream_url_file"
            ]
        );
        assert!(got[0].problem.contains("UNSET_VAR"), "{got:?}");
        assert!(got[2].problem.contains("/nonexistent/countersign/url"));
    }
}
