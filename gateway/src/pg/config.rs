//! `[wire]` configuration: where the Postgres listener binds and how it treats clients.

use serde::{Deserialize, Deserializer};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

/// Configuration of the Postgres wire listener (`[wire]`). Durations are seconds (may be fractional) or
/// duration strings (`"5m"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireConfig {
    /// Address to listen on, e.g. `127.0.0.1:6543`.
    pub listen: SocketAddr,
    /// Certificate and key for TLS (SSLRequest); without it clients get 'N'.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// Accept passwords (cleartext or SCRAM) without TLS; only honoured when `listen` is a loopback address.
    #[serde(default)]
    pub allow_cleartext_without_tls: bool,
    /// Which password exchange clients get: see [`WireAuth`].
    #[serde(default)]
    pub auth: WireAuth,
    /// How long a held statement keeps the client waiting before it gets "still pending".
    #[serde(default = "default_hold_wait", deserialize_with = "seconds")]
    pub hold_wait: Duration,
    /// Time allowed from TCP accept to ReadyForQuery (TLS, auth, upstream connect).
    #[serde(
        default = "default_startup_timeout",
        deserialize_with = "positive_seconds"
    )]
    pub startup_timeout: Duration,
    /// Largest client message accepted after startup, in bytes.
    #[serde(default = "default_max_message_size")]
    pub max_message_size: usize,
    /// Client connections open at once (sessions and connections still starting); past it a client is
    /// refused with 53300 "too many clients", as PostgreSQL does, so the process keeps file descriptors
    /// for its sessions' upstreams, the HTTP API and the store.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Threads running wire sessions, each a single-threaded runtime; sessions are shared out
    /// round-robin and stay on their thread. Default: one per CPU core, at most 4.
    #[serde(default, deserialize_with = "thread_count")]
    pub threads: Option<NonZeroUsize>,
    /// Microseconds a wire thread keeps polling without sleeping after its latest socket event (see
    /// `pg/spin.rs`); 0 turns busy-polling off.
    #[serde(default = "default_busy_poll_us", deserialize_with = "microseconds")]
    pub busy_poll_us: u64,
}

/// How wire clients prove who they are (`[wire] auth`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireAuth {
    /// SCRAM-SHA-256 when the startup `user` names a static identity with a `scram_verifier`; every other
    /// user sends a JWT or static token as a cleartext password. Which exchange a user name gets shows
    /// whether it has a verifier.
    #[default]
    Auto,
    /// SCRAM-SHA-256 for every user; a user without a verifier gets a mock exchange and the same
    /// "password authentication failed" (28P01) as a wrong password, so user names are not revealed.
    /// Tokens can't log in on the wire in this mode (the HTTP API still takes them).
    Scram,
}

/// PEM files for the listener's TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM, PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl WireConfig {
    /// Defaults for everything except the listen address.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            tls: None,
            allow_cleartext_without_tls: false,
            auth: WireAuth::Auto,
            hold_wait: default_hold_wait(),
            startup_timeout: default_startup_timeout(),
            max_message_size: default_max_message_size(),
            max_connections: default_max_connections(),
            threads: None,
            busy_poll_us: default_busy_poll_us(),
        }
    }

    /// How many threads run sessions: `threads`, or one per CPU core (at most 4) when unset.
    pub fn thread_count(&self) -> usize {
        match self.threads {
            Some(n) => n.get(),
            None => std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
        }
    }

    /// True when cleartext passwords may be accepted on a non-TLS connection.
    pub fn cleartext_allowed_without_tls(&self) -> bool {
        self.allow_cleartext_without_tls && self.listen.ip().is_loopback()
    }
}

fn default_hold_wait() -> Duration {
    Duration::from_secs(300)
}

fn default_startup_timeout() -> Duration {
    Duration::from_secs(15)
}

fn default_busy_poll_us() -> u64 {
    100
}

fn default_max_connections() -> usize {
    4096
}

fn default_max_message_size() -> usize {
    64 * 1024 * 1024
}

fn thread_count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NonZeroUsize>, D::Error> {
    let n = i64::deserialize(d)?;
    usize::try_from(n)
        .ok()
        .and_then(NonZeroUsize::new)
        .map(Some)
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "threads = {n}: give at least 1, or leave it out for one per CPU core (at most 4)"
            ))
        })
}

fn microseconds<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = i64::deserialize(d)?;
    u64::try_from(n).map_err(|_| {
        serde::de::Error::custom(format!(
            "busy_poll_us = {n}: give microseconds, 0 or more (0 turns busy-polling off; default 100)"
        ))
    })
}

/// The longest wire timeout accepted, a year: the wire threads add these to the clock, and a
/// deadline past what the clock can hold would panic.
pub const MAX_WIRE_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

/// A `[wire]` duration as TOML gives it: a number of seconds (`30`, `0.5`) or, as everywhere else in
/// the config, a duration string (`"30s"`, `"5m"`, `"500ms"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum WireDuration {
    Seconds(f64),
    Text(String),
}

fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let secs = match WireDuration::deserialize(d).map_err(|_| {
        serde::de::Error::custom(
            "expected a number of seconds (30, 0.5) or a duration (\"30s\", \"5m\")",
        )
    })? {
        WireDuration::Seconds(secs) => secs,
        WireDuration::Text(text) => countersign_bot::duration::parse_duration(&text)
            .map_err(serde::de::Error::custom)?
            .as_secs_f64(),
    };
    if !(0.0..=MAX_WIRE_SECONDS).contains(&secs) {
        return Err(serde::de::Error::custom(format!(
            "{secs} seconds is not from 0 to {MAX_WIRE_SECONDS} (a year); write e.g. 30, 0.5 or \"5m\""
        )));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| {
        serde::de::Error::custom("expected a non-negative number of seconds, e.g. 30 or 0.5")
    })
}

fn positive_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let d = seconds(d)?;
    if d.is_zero() {
        return Err(serde::de::Error::custom(
            "0 seconds would refuse every login; give more than 0, e.g. 30 or 0.5",
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_config_parses_seconds_and_rejects_unknown_keys() {
        let cfg: WireConfig =
            toml::from_str("listen = \"127.0.0.1:6543\"\nhold_wait = 1.5\n").unwrap();
        assert_eq!(cfg.hold_wait, Duration::from_millis(1500));
        // The duration grammar of every other section works here too.
        let text: WireConfig = toml::from_str(
            "listen = \"127.0.0.1:6543\"\nhold_wait = \"2m30s\"\nstartup_timeout = \"500ms\"\n",
        )
        .unwrap();
        assert_eq!(text.hold_wait, Duration::from_secs(150));
        assert_eq!(text.startup_timeout, Duration::from_millis(500));
        let bad =
            toml::from_str::<WireConfig>("listen = \"127.0.0.1:1\"\nhold_wait = \"5 minutes\"\n")
                .unwrap_err()
                .to_string();
        assert!(bad.contains("is not a duration"), "{bad}");
        let bad = toml::from_str::<WireConfig>("listen = \"127.0.0.1:1\"\nhold_wait = true\n")
            .unwrap_err()
            .to_string();
        assert!(bad.contains("a duration"), "{bad}");
        assert_eq!(cfg.max_message_size, 64 * 1024 * 1024);
        assert_eq!(cfg.auth, WireAuth::Auto);
        assert!(toml::from_str::<WireConfig>("listen = \"127.0.0.1:1\"\nbogus = 1\n").is_err());
        let scram: WireConfig =
            toml::from_str("listen = \"127.0.0.1:1\"\nauth = \"scram\"\n").unwrap();
        assert_eq!(scram.auth, WireAuth::Scram);
        assert!(
            toml::from_str::<WireConfig>("listen = \"127.0.0.1:1\"\nauth = \"md5\"\n").is_err()
        );
        assert!(
            toml::from_str::<WireConfig>("listen = \"127.0.0.1:1\"\nhold_wait = -1\n").is_err()
        );
        let two: WireConfig = toml::from_str("listen = \"127.0.0.1:1\"\nthreads = 2\n").unwrap();
        assert_eq!(two.thread_count(), 2);
        let zero = toml::from_str::<WireConfig>("listen = \"127.0.0.1:1\"\nthreads = 0\n")
            .unwrap_err()
            .to_string();
        assert!(zero.contains("at least 1"), "{zero}");
        let negative =
            toml::from_str::<WireConfig>("listen = \"127.0.0.1:1\"\nbusy_poll_us = -3\n")
                .unwrap_err()
                .to_string();
        assert!(negative.contains("0 turns busy-polling off"), "{negative}");
        let off: WireConfig =
            toml::from_str("listen = \"127.0.0.1:1\"\nbusy_poll_us = 0\n").unwrap();
        assert_eq!(off.busy_poll_us, 0);
        let default = WireConfig::new("127.0.0.1:1".parse().unwrap());
        assert!((1..=4).contains(&default.thread_count()));
    }

    #[test]
    fn wire_timeouts_the_clock_cannot_hold_are_refused_at_load() {
        // Both used to be accepted and then panicked the wire thread: hold_wait at the first held
        // statement, startup_timeout at every connection (`Instant + Duration` overflow).
        for key in ["hold_wait", "startup_timeout"] {
            let err =
                toml::from_str::<WireConfig>(&format!("listen = \"127.0.0.1:1\"\n{key} = 1e19\n"))
                    .unwrap_err()
                    .to_string();
            assert!(err.contains("from 0 to 31536000"), "{key}: {err}");
        }
        let year: WireConfig =
            toml::from_str("listen = \"127.0.0.1:1\"\nhold_wait = 31536000\n").unwrap();
        assert_eq!(year.hold_wait, Duration::from_secs(31_536_000));
        let zero = toml::from_str::<WireConfig>("listen = \"127.0.0.1:1\"\nstartup_timeout = 0\n")
            .unwrap_err()
            .to_string();
        assert!(zero.contains("more than 0"), "{zero}");
        let nowait: WireConfig =
            toml::from_str("listen = \"127.0.0.1:1\"\nhold_wait = 0\n").unwrap();
        assert!(nowait.hold_wait.is_zero());
    }

    #[test]
    fn cleartext_without_tls_is_only_honoured_on_loopback() {
        let mut cfg = WireConfig::new("0.0.0.0:6543".parse().unwrap());
        cfg.allow_cleartext_without_tls = true;
        assert!(!cfg.cleartext_allowed_without_tls());
        cfg.listen = "127.0.0.1:6543".parse().unwrap();
        assert!(cfg.cleartext_allowed_without_tls());
    }
}
