//! Secrets are referenced, never written into the config: an env var name or a file path.

/// A referenced secret that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The env var is unset or empty.
    #[error("`{key}`: environment variable {var} is not set (export it, or point `{key}` at another variable)")]
    MissingEnv {
        /// Config key.
        key: String,
        /// Variable name.
        var: String,
    },
    /// The file is unreadable.
    #[error("`{key}`: cannot read {path}: {reason} (check the path and its permissions)")]
    File {
        /// Config key.
        key: String,
        /// Path.
        path: String,
        /// Why.
        reason: String,
    },
    /// The secret is too short to be a key.
    #[error("`{key}`: the key has {len} bytes; use at least {min} random bytes (e.g. `openssl rand -hex 32`)")]
    TooShort {
        /// Config key.
        key: String,
        /// Its length.
        len: usize,
        /// The least accepted.
        min: usize,
    },
    /// A key file could not be created.
    #[error("`{key}`: cannot create the key file {path}: {reason} (make its directory writable, or set `{key}`)")]
    Create {
        /// Config key.
        key: String,
        /// Path.
        path: String,
        /// Why.
        reason: String,
    },
    /// Nothing was referenced.
    #[error("`{key}`: no secret given (set `{key}` to an environment variable name, or use the matching `_file` key)")]
    Missing {
        /// Config key.
        key: String,
    },
}

/// Read a secret from an env var (preferred) or a file; trailing newlines of files are dropped.
pub fn resolve_secret(
    key: &str,
    env: Option<&str>,
    file: Option<&std::path::Path>,
) -> Result<String, SecretError> {
    if let Some(var) = env {
        return match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(v),
            _ => Err(SecretError::MissingEnv {
                key: key.to_string(),
                var: var.to_string(),
            }),
        };
    }
    if let Some(path) = file {
        return std::fs::read_to_string(path)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
            .map_err(|e| SecretError::File {
                key: key.to_string(),
                path: path.display().to_string(),
                reason: e.to_string(),
            });
    }
    Err(SecretError::Missing {
        key: key.to_string(),
    })
}
