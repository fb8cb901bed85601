//! What `serve` needs beyond a well-formed file, checked before it opens the store or binds a port, and
//! by `check-config`: the wire listener's TLS certificate and key load and belong together, the audit key
//! is long enough, and no secret is still an example placeholder (`CHANGE-ME`).

use super::{Config, KeyFile};
use std::io::BufReader;
use std::path::Path;

/// Text that marks a value copied from an example (`manifests/examples/secret.example.yaml`).
pub const PLACEHOLDER: &str = "CHANGE-ME";

/// One problem: the dotted key and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartProblem {
    /// Dotted key, e.g. `wire.tls.cert`.
    pub key: String,
    /// What is wrong and the fix.
    pub problem: String,
}

impl std::fmt::Display for StartProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}`: {}", self.key, self.problem)
    }
}

/// Every problem `serve` would meet with `cfg` (loaded from the TOML text `source`), in a stable order.
/// `env` looks a variable up (the process environment outside tests).
pub fn start_problems(
    cfg: &Config,
    source: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<StartProblem> {
    let mut out = Vec::new();
    if let Some(tls) = cfg.wire.as_ref().and_then(|w| w.tls.as_ref()) {
        if let Err(p) = check_tls_pair(&tls.cert, &tls.key) {
            out.push(p);
        }
    }
    out.extend(placeholder_secrets(source, env));
    // A placeholder audit key is reported above; its length would be a second, misleading message.
    if !out.iter().any(|p| p.key.starts_with("store.audit_key")) {
        if let Some(p) = audit_key_problem(cfg, env) {
            out.push(p);
        }
    }
    out
}

/// The audit key `serve` would refuse: too short (or, for the SQLite store's own key file, unreadable).
/// An unset variable or unreadable file is left to [`super::references`], which names it already.
fn audit_key_problem(cfg: &Config, env: &dyn Fn(&str) -> Option<String>) -> Option<StartProblem> {
    use countersign_bot::audit::MIN_AUDIT_KEY_BYTES;
    let store = &cfg.store;
    let (key, secret) = if let Some(var) = &store.audit_key_env {
        ("store.audit_key_env", env(var)?)
    } else if let Some(file) = &store.audit_key_file {
        let text = std::fs::read_to_string(file).ok()?;
        (
            "store.audit_key_file",
            text.trim_end_matches(['\n', '\r']).to_string(),
        )
    } else {
        let url = store.resolved_url().ok()?;
        return store
            .audit_key(&url, KeyFile::ReadOnly)
            .err()
            .map(|e| StartProblem {
                key: "store.audit_key_file".into(),
                problem: e.to_string(),
            });
    };
    (secret.len() < MIN_AUDIT_KEY_BYTES).then(|| StartProblem {
        key: key.into(),
        problem: format!(
            "the key has {} bytes; `serve` needs at least {MIN_AUDIT_KEY_BYTES} random bytes: set it to e.g. the output of `openssl rand -hex 32`",
            secret.len()
        ),
    })
}

/// The wire listener's certificate chain and private key: readable PEM, at least one certificate, a
/// key, and a key that goes with the certificate (as the listener will load them).
pub fn check_tls_pair(cert: &Path, key: &Path) -> Result<(), StartProblem> {
    let (certs, private_key) = load_tls_pair(cert, key)?;
    rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .and_then(|b| b.with_no_client_auth().with_single_cert(certs, private_key))
    .map_err(|e| StartProblem {
        key: "wire.tls.key".into(),
        problem: format!(
            "{} cannot serve {} ({e}); give the private key that belongs to the certificate",
            key.display(),
            cert.display()
        ),
    })?;
    Ok(())
}

/// The wire listener's certificate chain and private key read from their PEM files (the listener
/// loads them with this too), or the problem naming the key to fix.
pub fn load_tls_pair(
    cert: &Path,
    key: &Path,
) -> Result<
    (
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ),
    StartProblem,
> {
    let problem = |k: &str, what: String| StartProblem {
        key: k.to_string(),
        problem: what,
    };
    let open = |k: &str, path: &Path| {
        std::fs::File::open(path).map(BufReader::new).map_err(|e| {
            problem(
                k,
                format!(
                    "cannot read {}: {e}; point it at the listener's PEM file (or remove [wire] tls to serve without TLS)",
                    path.display()
                ),
            )
        })
    };
    let not_a_cert = |why: String| {
        problem(
            "wire.tls.cert",
            format!(
                "{} {why}; give the PEM certificate chain (-----BEGIN CERTIFICATE-----), server certificate first",
                cert.display()
            ),
        )
    };
    let certs = rustls_pemfile::certs(&mut open("wire.tls.cert", cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| not_a_cert(format!("is not PEM ({e})")))?;
    if certs.is_empty() {
        return Err(not_a_cert("holds no certificate".into()));
    }
    let private_key = rustls_pemfile::private_key(&mut open("wire.tls.key", key)?)
        .map_err(|e| {
            problem(
                "wire.tls.key",
                format!("{} is not PEM ({e}); give the certificate's private key (PKCS#8, PKCS#1 or SEC1 PEM)", key.display()),
            )
        })?
        .ok_or_else(|| {
            problem(
                "wire.tls.key",
                format!("{} holds no private key; give the certificate's private key (PKCS#8, PKCS#1 or SEC1 PEM)", key.display()),
            )
        })?;
    Ok((certs, private_key))
}

/// Every `*_env` variable and `*_file` file named in `source` whose value still contains
/// [`PLACEHOLDER`]: an example secret copied as it was.
pub fn placeholder_secrets(
    source: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<StartProblem> {
    use super::references::SecretSource;
    super::references::secret_references(source)
        .into_iter()
        .filter_map(|r| {
            let (holder, secret) = match &r.names {
                SecretSource::Env(name) => (format!("environment variable {name}"), env(name)),
                SecretSource::File(file) => {
                    (format!("file {file}"), std::fs::read_to_string(file).ok())
                }
            };
            secret.is_some_and(|s| s.contains(PLACEHOLDER)).then(|| StartProblem {
                key: r.key,
                problem: format!(
                    "the {holder} holds an example value containing {PLACEHOLDER:?}; put the real secret there (e.g. `openssl rand -hex 32` for a key)"
                ),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "countersign-preflight-{tag}-{}",
            uuid::Uuid::new_v4()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn missing_or_non_certificate_tls_files_name_the_key() {
        let e = check_tls_pair(
            Path::new("/nonexistent/tls.crt"),
            Path::new("/nonexistent/tls.key"),
        )
        .unwrap_err();
        assert_eq!(e.key, "wire.tls.cert");
        assert!(e.problem.contains("/nonexistent/tls.crt"), "{e}");
        let dir = temp_dir("tls");
        let junk = write(&dir, "junk.crt", "not a certificate\n");
        let e = check_tls_pair(&junk, &junk).unwrap_err();
        assert_eq!(e.key, "wire.tls.cert");
        assert!(e.problem.contains("no certificate"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_short_audit_key_and_placeholder_secrets_are_start_problems() {
        let cfg = Config::from_toml(
            "[store]\nurl = \"postgres://db/x\"\naudit_key_env = \"AK\"\n",
            "c.toml",
        )
        .unwrap();
        let source = "[store]\nurl = \"postgres://db/x\"\naudit_key_env = \"AK\"\n";
        let short = |n: &str| (n == "AK").then(|| "abc".to_string());
        let got = start_problems(&cfg, source, &short);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].key, "store.audit_key_env");
        assert!(got[0].problem.contains("3 bytes"), "{got:?}");
        let placeholder = |n: &str| {
            (n == "AK").then(|| {
                "CHANGE-ME-to-64-hex-digits-from-openssl-rand-hex-32-000000000000".to_string()
            })
        };
        let got = start_problems(&cfg, source, &placeholder);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].key, "store.audit_key_env");
        assert!(got[0].problem.contains("CHANGE-ME"), "{got:?}");
        assert!(start_problems(&cfg, source, &|_| Some("k".repeat(32))).is_empty());
    }
}
