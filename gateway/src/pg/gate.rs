//! The boundary between the wire proxy and the engine (policy, approvals, store).
//!
//! The proxy depends on the rest of the gateway only through [`WireGate`] and the plain data types here.

pub use super::scram::ScramError;
pub use crate::identity::scram::ScramVerifier;
use crate::policy::{Action, Verdict, VerdictMemo};
use countersign_bot::{RequestId, RequesterChain, SessionId, StatementHash};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// Everything the proxy asks of the engine.
#[async_trait::async_trait]
pub trait WireGate: Send + Sync + 'static {
    /// Authenticate a client: database name = connection name, user = as sent, password = JWT or static token.
    async fn authenticate(
        &self,
        connection: &str,
        user: &str,
        password: &str,
    ) -> Result<RequesterChain, WireAuthError>;
    /// The SCRAM-SHA-256 verifier of `user` (the name of a static identity that has one). None: the user
    /// logs in with a token as cleartext password, or (with `[wire] auth = "scram"`) gets a mock exchange.
    fn scram_verifier(&self, _user: &str) -> Option<ScramVerifier> {
        None
    }
    /// `user`'s SCRAM proof verified: who the client is, and whether it may use `connection`.
    async fn scram_verified(
        &self,
        _connection: &str,
        user: &str,
    ) -> Result<RequesterChain, WireAuthError> {
        Err(WireAuthError::BadPassword {
            user: user.to_string(),
        })
    }
    /// A SCRAM login failed (wrong password, unknown user or a broken exchange): audit it like a refused
    /// token.
    async fn scram_refused(&self, _connection: &str, _user: &str, _error: &ScramError) {}
    /// A login was refused before any credential was checked (a password without TLS where TLS is
    /// required, a SASL mechanism that was not offered): audit it like a refused token. `code` is stable.
    async fn login_refused(
        &self,
        _connection: &str,
        _user: &str,
        _code: &'static str,
        _message: &str,
    ) {
    }
    /// Where and how to connect upstream for this connection name (None = unknown connection → 3D000).
    fn upstream(&self, connection: &str) -> Option<UpstreamTarget>;
    /// The connection's masking rules; None (the default) relays results untouched at no cost.
    fn masking(&self, _connection: &str) -> Option<Arc<crate::masking::Masker>> {
        None
    }
    /// Resolves table OIDs for the connection's table-qualified masking rules; None (the default) makes
    /// them match by column name (over-masking).
    fn table_lookup(&self, _connection: &str) -> Option<Arc<dyn crate::masking::TableLookup>> {
        None
    }
    /// Classify (cached by text and literal template): pure and fast. `memo` belongs to the calling
    /// session, whose connection and requester never change.
    fn classify(
        &self,
        connection: &str,
        requester: &RequesterChain,
        sql: &str,
        memo: &mut VerdictMemo,
    ) -> Arc<Verdict>;
    /// A statement classified `review`: create (or reuse) the approval request bound to `hash`.
    async fn hold(
        &self,
        session: &SessionInfo,
        sql: &str,
        hash: &StatementHash,
        verdict: &Verdict,
    ) -> Result<HoldTicket, GateError>;
    /// Wait until the request resolves or `timeout` passes. `Approved` means claimed: run it exactly once now.
    async fn wait(&self, id: RequestId, timeout: Duration) -> HoldOutcome;
    /// The client cancelled (CancelRequest) during the hold: cancel the request (audited).
    async fn cancel_hold(&self, id: RequestId, session: &SessionInfo);
    /// Report the result of running an approved statement; marks it executed or failed.
    async fn executed(&self, id: RequestId, outcome: ExecutionOutcome);
    /// A client session was established (after authentication and upstream connect).
    async fn session_started(&self, session: &SessionInfo);
    /// Statements finished (simple queries, or extended-protocol batches up to Sync), in the order they
    /// finished; recorded in batches, so this is called once per recorder tick, not per statement.
    async fn statements_finished(&self, batch: Vec<StatementRecord>);
    /// The client session ended.
    async fn session_ended(&self, session: &SessionInfo);
    /// True when a statement with this command tag may have changed what the policy reads from the
    /// database's catalog (functions, views, types: see `engine::row_functions`).
    fn changes_catalog(&self, _command_tag: &str) -> bool {
        false
    }
    /// True only when PostgreSQL's raw parser rejects `sql`, so sending it runs nothing (see
    /// [`super::syntax_probe`]); asked of statements held because the policy could not parse them.
    /// False (the default) holds them as before.
    async fn syntax_rejected(&self, _connection: &str, _sql: &str) -> bool {
        false
    }
    /// A session's catalog change is committed: read the database's lists again before its next
    /// statement is judged. False when they could not be read (the session keeps reviewing).
    async fn catalog_changed(&self, _connection: &str) -> bool {
        true
    }
    /// A session saw DDL commit on `connection`'s database: other sessions on it wait for the lists
    /// to be read again before judging their next statement.
    fn note_catalog_change(&self, _connection: &str) {}
    /// True while DDL another session committed on `connection`'s database has not been read.
    fn catalog_change_pending(&self, _connection: &str) -> bool {
        false
    }
}

/// How to reach and log in to the real database behind a connection name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTarget {
    /// Host name or IP address, or (starting with `/`) the directory of a Unix-domain socket.
    pub host: String,
    /// TCP port, or the number in the Unix socket's name (`.s.PGSQL.<port>`).
    pub port: u16,
    /// Upstream user; the client never sees it.
    pub user: String,
    /// Upstream password (None for trust auth).
    pub password: Option<String>,
    /// Upstream database name.
    pub database: String,
    /// TLS and channel-binding settings from the URL (`sslmode`, `sslrootcert`, `sslcert`/`sslkey`,
    /// `channel_binding`; `disable` when built by hand).
    pub tls: super::upstream_tls::UpstreamTls,
}

/// One client session as recorded.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// Session id, also used in audit records.
    pub id: SessionId,
    /// Connection name (the database name the client asked for).
    pub connection: String,
    /// Who is connected.
    pub requester: RequesterChain,
    /// The client's socket address.
    pub client_addr: SocketAddr,
    /// `application_name` from the startup packet, if any.
    pub application_name: Option<String>,
    /// When the session was established.
    pub started_at: OffsetDateTime,
}

/// Result of [`WireGate::hold`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldTicket {
    /// Approved earlier and now claimed for this one execution.
    Approved {
        /// The approval request.
        id: RequestId,
    },
    /// Waiting for humans.
    Pending {
        /// The approval request.
        id: RequestId,
        /// Who may approve (display names or groups).
        approvers: Vec<String>,
        /// When the request expires.
        expires_at: OffsetDateTime,
        /// Distinct approvals needed.
        quorum: u32,
    },
}

/// Result of [`WireGate::wait`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldOutcome {
    /// Approved and claimed: run the statement once now.
    Approved,
    /// Denied by these people.
    Denied {
        /// Who denied.
        by: Vec<String>,
        /// Their reason, if given.
        reason: Option<String>,
    },
    /// The request expired without a decision.
    Expired,
    /// The request was cancelled (by the requester or an admin).
    Cancelled,
    /// Another session (a re-send of the same statement) claimed the approval's single execution:
    /// it is running or ran there (its result when known), and does not run here.
    RanElsewhere(Option<String>),
    /// The wait timed out; the request stays pending.
    TimedOut,
    /// The gateway is shutting down; the request stays pending and can be re-run once approved.
    ShuttingDown,
    /// The state store failed while waiting or claiming (what it said); the request is unchanged
    /// there and can be re-run once the store is back.
    Unavailable(String),
}

/// What happened when an approved statement ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionOutcome {
    /// Last CommandComplete tag, e.g. `DELETE 3`.
    pub command_tag: Option<String>,
    /// Rows affected or returned, from the tag.
    pub rows: Option<u64>,
    /// The upstream error message, if it failed.
    pub error: Option<String>,
    /// Wall time from forwarding to ReadyForQuery.
    pub duration: Duration,
}

/// One recorded statement of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementRecord {
    /// The session that sent it.
    pub session_id: SessionId,
    /// Statement text (statements of one extended batch joined by `;\n`).
    pub sql: Arc<str>,
    /// Hash of the text and Bind parameters.
    pub hash: StatementHash,
    /// What the policy decided.
    pub decision: Action,
    /// The approval request, for held statements.
    pub request_id: Option<RequestId>,
    /// Wall time from receipt to ReadyForQuery (including any hold).
    pub duration: Duration,
    /// Wall-clock time the gateway received it.
    pub received_at: time::OffsetDateTime,
    /// Last CommandComplete tag.
    pub command_tag: Option<String>,
    /// Rows from the tag.
    pub rows: Option<u64>,
    /// Error sent to the client (upstream error, block, denial...).
    pub error: Option<String>,
    /// Result fields the masker replaced.
    pub masked_fields: u64,
}

/// Why a client could not log in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireAuthError {
    /// Wrong token or password (SQLSTATE 28P01).
    #[error(
        "password authentication failed for user \"{user}\": pass your agent token as the password, or, for an identity with a SCRAM verifier, its password"
    )]
    BadPassword {
        /// The user as sent.
        user: String,
    },
    /// Authenticated, but the database name is no configured connection (SQLSTATE 3D000, as PostgreSQL
    /// reports a database that does not exist, after the login, so only an authenticated client learns the
    /// names).
    #[error("no connection named \"{connection}\" is configured; use one of: {}", configured.join(", "))]
    UnknownConnection {
        /// The database name as sent.
        connection: String,
        /// The connection names the gateway has.
        configured: Vec<String>,
    },
}

/// The engine could not handle a hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GateError {
    /// The store or workflow failed; the statement was not run.
    #[error("could not create the approval request: {0}; retry the statement later")]
    Unavailable(String),
    /// The statement can't be held for this requester (what to do instead); it was not run.
    #[error("{0}")]
    Refused(String),
}
