//! Command-line interface. `anyhow` lives here, at the binary's edge.

/// `println!` that exits quietly when stdout is closed early (e.g. piped into `head`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

mod inspect;
mod serve;
mod store_lock;

use crate::config::{Config, ConfigError};
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// The quickstart configuration, embedded so `countersign serve` runs with no files at all.
pub const QUICKSTART_TOML: &str = include_str!("../../../manifests/examples/quickstart.toml");

/// Countersign: an approval gateway between automation and production databases.
#[derive(Debug, Parser)]
#[command(name = "countersign", version, about)]
pub struct Cli {
    /// Config file (TOML). Default: $COUNTERSIGN_CONFIG, else the embedded quickstart.
    #[arg(long, global = true, env = "COUNTERSIGN_CONFIG")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (HTTP API, wire proxy, notifiers, expiry).
    Serve,
    /// Check the config file and report every problem with file, key and fix, including environment
    /// variables (`*_env`) not set and files (`*_file`) not readable here.
    CheckConfig {
        /// Check the file only, not the environment variables and files it names (for checking a
        /// config on a machine other than the one that runs it).
        #[arg(long)]
        skip_secrets: bool,
    },
    /// Policy tools.
    Policy {
        /// Policy subcommand.
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The tamper-evident audit trail.
    Audit {
        /// Audit subcommand.
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Approval requests.
    Requests {
        /// Requests subcommand.
        #[command(subcommand)]
        command: RequestsCommand,
    },
    /// Recorded sessions.
    Sessions {
        /// Sessions subcommand.
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// Notification deliveries.
    Outbox {
        /// Outbox subcommand.
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// Print the SHA-256 of a token for `[[identity.static_tokens]] sha256 = …` (reads stdin when omitted).
    HashToken {
        /// The token.
        token: Option<String>,
    },
    /// Print a SCRAM-SHA-256 verifier for `[[identity.static_tokens]] scram_verifier = …`; the password is
    /// read from stdin (one line), so it stays out of shell history and `ps`.
    ScramVerifier {
        /// PBKDF2 iterations (PostgreSQL's default is 4096).
        #[arg(long, default_value_t = crate::identity::scram::DEFAULT_ITERATIONS)]
        iterations: u32,
    },
}

/// `policy …`
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Classify SQL and print the verdict as JSON (SQL from --sql or stdin).
    Explain {
        /// Connection name the rules match on; defaults to the config's only connection (required
        /// when it defines several).
        #[arg(long)]
        connection: Option<String>,
        /// The SQL; read from stdin when omitted.
        #[arg(long)]
        sql: Option<String>,
    },
}

/// `audit …`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the hash chain; names the first broken record. Prints the head to keep outside the store.
    Verify {
        /// A head printed by an earlier run (`SEQ:HASH`): the trail must still hold that record, so
        /// records cut from the end (and an older head put back) are found.
        #[arg(long, value_name = "SEQ:HASH")]
        expect_head: Option<String>,
    },
    /// Write every record as JSON Lines.
    Export {
        /// Output file (default stdout).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

/// `requests …`
#[derive(Debug, Subcommand)]
pub enum RequestsCommand {
    /// Newest requests as a table.
    List {
        /// Only this status (pending, approved, denied, expired, cancelled, executing, executed, failed).
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One request with its votes.
    Show {
        /// Request id.
        id: String,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `sessions …`
#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// Newest sessions as a table.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One session with its statements.
    Show {
        /// Session id.
        id: String,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `outbox …`
#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Deliveries as a table.
    List {
        /// Only this status (pending, delivered, dead).
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Re-queue a dead-lettered delivery.
    Retry {
        /// Outbox id.
        id: i64,
    },
}

/// Load the config named on the command line, or the embedded quickstart.
pub fn load_config(path: Option<&PathBuf>) -> Result<(Config, String), ConfigError> {
    match path {
        Some(p) => Ok((Config::load(p)?, p.display().to_string())),
        None => {
            let file = "<embedded quickstart.toml>".to_string();
            let cfg = Config::from_toml(QUICKSTART_TOML, &file)?;
            Ok((cfg, file))
        }
    }
}

fn init_logging(cfg: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(cfg.logging.level.as_deref().unwrap_or("info")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cfg.logging.format.as_deref() == Some("json") {
        let _ = builder.json().flatten_event(true).try_init();
    } else {
        let _ = builder.try_init();
    }
}

/// Run a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::CheckConfig { skip_secrets } => {
            let path = cli.config.as_ref();
            match load_config(path) {
                Ok((cfg, file)) => {
                    let source = match path {
                        Some(p) if !skip_secrets => std::fs::read_to_string(p).unwrap_or_default(),
                        _ => String::new(),
                    };
                    let missing = crate::config::references::missing_references(&source, &|name| {
                        std::env::var(name).ok()
                    });
                    if !missing.is_empty() {
                        for m in &missing {
                            eprintln!("{file}: `{}`: {}", m.key, m.problem);
                        }
                        eprintln!(
                            "{file}: {} secret reference(s) cannot be resolved here (pass --skip-secrets to check the file alone)",
                            missing.len()
                        );
                        return Ok(ExitCode::from(2));
                    }
                    let unusable = if skip_secrets {
                        Vec::new()
                    } else {
                        let mut all = crate::channels::secret_problems(&cfg);
                        let source = if path.is_some() {
                            source.as_str()
                        } else {
                            QUICKSTART_TOML
                        };
                        all.extend(
                            crate::config::preflight::start_problems(&cfg, source, &|name| {
                                std::env::var(name).ok()
                            })
                            .iter()
                            .map(|p| p.to_string()),
                        );
                        all
                    };
                    if !unusable.is_empty() {
                        for problem in &unusable {
                            eprintln!("{file}: {problem}");
                        }
                        eprintln!(
                            "{file}: {} problem(s) with the secrets or files the config names: `serve` would refuse to start",
                            unusable.len()
                        );
                        return Ok(ExitCode::from(2));
                    }
                    for w in cfg.warnings() {
                        eprintln!("{file}: warning: {}: {}", w.key, w.message);
                    }
                    out!("{file}: OK");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{e}");
                    Ok(ExitCode::from(2))
                }
            }
        }
        Command::Policy {
            command: PolicyCommand::Explain { connection, sql },
        } => input_errors(inspect::policy_explain(
            cli.config.as_ref(),
            connection.as_deref(),
            sql,
        )),
        Command::HashToken { token } => {
            let token = match token {
                Some(t) => t,
                None => {
                    let mut s = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                        .context("reading the token from stdin")?;
                    s.trim_end_matches(['\n', '\r']).to_string()
                }
            };
            if token.is_empty() {
                eprintln!("error: the token is empty (an unset variable?); pass the token, or pipe it in, e.g. `printf %s \"$TOKEN\" | countersign hash-token`");
                return Ok(ExitCode::from(2));
            }
            use sha2::Digest;
            out!("{}", hex::encode(sha2::Sha256::digest(token.as_bytes())));
            Ok(ExitCode::SUCCESS)
        }
        Command::ScramVerifier { iterations } => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .context("reading the password from stdin")?;
            let password = s.trim_end_matches(['\n', '\r']);
            out!("{}", scram_verifier(password, iterations)?);
            Ok(ExitCode::SUCCESS)
        }
        command => {
            let (cfg, _file) =
                load_config(cli.config.as_ref()).map_err(|e| anyhow::anyhow!("{e}"))?;
            init_logging(&cfg);
            match command {
                Command::Serve => {
                    let source = match cli.config.as_ref() {
                        Some(p) => std::fs::read_to_string(p)
                            .with_context(|| format!("reading {}", p.display()))?,
                        None => QUICKSTART_TOML.to_string(),
                    };
                    serve::serve(cfg, &source).await.map(|_| ExitCode::SUCCESS)
                }
                Command::Audit { command } => input_errors(inspect::audit(&cfg, command).await),
                Command::Requests { command } => {
                    input_errors(inspect::requests(&cfg, command).await)
                }
                Command::Sessions { command } => {
                    input_errors(inspect::sessions(&cfg, command).await)
                }
                Command::Outbox { command } => input_errors(inspect::outbox(&cfg, command).await),
                Command::CheckConfig { .. }
                | Command::Policy { .. }
                | Command::HashToken { .. }
                | Command::ScramVerifier { .. } => unreachable!("handled above"),
            }
        }
    }
}

/// An [`inspect::InputError`] is the caller's to fix: told on stderr, exit code 2.
fn input_errors(result: anyhow::Result<ExitCode>) -> anyhow::Result<ExitCode> {
    match result {
        Err(e) if e.is::<inspect::InputError>() => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(2))
        }
        other => other,
    }
}

/// A verifier for `password` with a fresh salt; refuses an empty password and out-of-range iterations.
fn scram_verifier(password: &str, iterations: u32) -> anyhow::Result<String> {
    use crate::identity::scram::{ScramVerifier, MAX_ITERATIONS, MIN_ITERATIONS};
    anyhow::ensure!(
        !password.is_empty(),
        "the password on stdin is empty; pipe it in, e.g. `printf %s \"$PW\" | countersign scram-verifier`"
    );
    anyhow::ensure!(
        (MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations),
        "--iterations must be from {MIN_ITERATIONS} to {MAX_ITERATIONS} (4096 is PostgreSQL's default)"
    );
    Ok(ScramVerifier::generate_with(password, iterations).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_token_refuses_an_empty_token() {
        let run_with =
            |token: &'static str| run(Cli::parse_from(["countersign", "hash-token", token]));
        assert_eq!(run_with("").await.unwrap(), ExitCode::from(2));
        assert_eq!(run_with("t0ken").await.unwrap(), ExitCode::SUCCESS);
    }

    #[test]
    fn scram_verifier_command_output_parses_and_matches_the_password() {
        let text = scram_verifier("s3cret", 4096).unwrap();
        let v: crate::identity::scram::ScramVerifier = text.parse().unwrap();
        let again = crate::identity::scram::ScramVerifier::derive("s3cret", v.salt.clone(), 4096);
        assert_eq!(v, again);
        assert!(scram_verifier("", 4096).is_err());
        assert!(scram_verifier("x", 0).is_err());
    }
}
