//! Upstream connections for the HTTP API: URL parsing, a simple-query client over the same login code the
//! wire proxy uses (so results carry the exact command tags), and a small idle-connection pool.

use crate::masking::tables::{LookupError, Relation};
use crate::pg::codec::{error_fields, read_cstr, read_frame, read_i16, read_i32};
pub use crate::pg::gate::UpstreamTarget;
use crate::pg::upstream::{connect, Upstream, UpstreamError};
use crate::pg::upstream_tls::{
    ChannelBindingMode, ClientCert, RootCert, SslMode, UpstreamTls, UpstreamTlsError,
};
use bytes::BytesMut;
use postgres_protocol::message::frontend;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;
use tokio::io::AsyncWriteExt;

/// Largest backend message the API client accepts (a single row).
const MAX_FRAME: usize = 256 * 1024 * 1024;

/// The most result data one API query may hold (values plus per-value bookkeeping). The API answers with
/// the whole result as JSON, so the gateway holds it in memory, several copies deep while it is masked and
/// serialised; without a cap one allowed `SELECT` of a large table could take the process's memory and
/// every session with it. The wire protocol streams and has no such limit.
pub const MAX_RESULT_BYTES: usize = 32 * 1024 * 1024;

/// Bookkeeping counted per value held, besides its bytes (a `String` and its `Option` in a row).
const PER_VALUE: usize = 32;

/// A URL that doesn't describe a usable Postgres upstream.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// The URL's shape is wrong.
    #[error("upstream URL is invalid: {0}; write postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=…&sslrootcert=…&sslcert=…&sslkey=…]")]
    Syntax(String),
    /// Its TLS parameters can't be used.
    #[error("upstream URL: {0}")]
    Tls(#[from] UpstreamTlsError),
}

fn percent_decode(s: &str) -> Result<String, UrlError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .ok_or_else(|| UrlError::Syntax("truncated %-escape".into()))?;
            out.push(
                u8::from_str_radix(hex, 16)
                    .map_err(|_| UrlError::Syntax(format!("bad %-escape %{hex}")))?,
            );
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UrlError::Syntax("escape is not UTF-8".into()))
}

impl UpstreamTarget {
    /// Parse `postgres://user:password@host:port/database?sslmode=…&sslrootcert=…&sslcert=…&sslkey=…`.
    /// `sslmode` defaults to `prefer` as in libpq; the root, certificate and key files are read here, so a
    /// bad one fails at config load. Other query
    /// parameters are ignored, except libpq TLS parameters the gateway does not implement, which are refused.
    /// As in libpq, a host that is an absolute path (`%2Fvar%2Frun%2Fpostgresql` in the authority, or
    /// `?host=/var/run/postgresql`) names the directory of a Unix-domain socket; TLS is never used there.
    pub fn parse(url: &str) -> Result<UpstreamTarget, UrlError> {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or_else(|| UrlError::Syntax("it must start with postgres://".into()))?;
        let rest = rest.split('#').next().unwrap_or("");
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let tls = parse_tls(query)?;
        let (auth, hostpart) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        let (hostport, database) = hostpart.split_once('/').unwrap_or((hostpart, ""));
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            let (h, p) = h
                .split_once(']')
                .ok_or_else(|| UrlError::Syntax("unclosed [ in host".into()))?;
            (h.to_string(), p.strip_prefix(':').unwrap_or(""))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p),
                None => (hostport.to_string(), ""),
            }
        };
        let host = match query_param(query, "host")? {
            Some(dir) => dir,
            None => percent_decode(&host)?,
        };
        if host.is_empty() {
            return Err(UrlError::Syntax("no host".into()));
        }
        if host.starts_with('/') && tls.channel_binding() == ChannelBindingMode::Require {
            let why = "the host is a Unix-domain socket, which never uses TLS";
            return Err(UpstreamTlsError::ChannelBindingWithoutTls(why).into());
        }
        let port = if port.is_empty() {
            5432
        } else {
            port.parse()
                .map_err(|_| UrlError::Syntax(format!("bad port {port:?}")))?
        };
        let (user, password) = match auth {
            Some(a) => match a.split_once(':') {
                Some((u, p)) => (percent_decode(u)?, Some(percent_decode(p)?)),
                None => (percent_decode(a)?, None),
            },
            None => ("postgres".to_string(), None),
        };
        let database = if database.is_empty() {
            user.clone()
        } else {
            percent_decode(database)?
        };
        Ok(UpstreamTarget {
            host,
            port,
            user,
            password,
            database,
            tls,
        })
    }
}

/// The last value of query parameter `key`, percent-decoded.
fn query_param(query: &str, key: &str) -> Result<Option<String>, UrlError> {
    let mut found = None;
    for pair in query.split('&') {
        if let Some((k, v)) = pair.split_once('=') {
            if k == key {
                found = Some(percent_decode(v)?);
            }
        }
    }
    Ok(found)
}

/// `sslmode`, `sslrootcert`, `sslcert`, `sslkey` and `channel_binding` from the query string.
fn parse_tls(query: &str) -> Result<UpstreamTls, UrlError> {
    let mut mode = SslMode::Prefer;
    let mut channel_binding = ChannelBindingMode::Prefer;
    let mut root = None;
    let (mut ssl_cert, mut ssl_key) = (None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value)?;
        match key {
            "sslmode" => {
                mode = SslMode::parse(&value).ok_or(UpstreamTlsError::BadMode(value))?;
            }
            "sslrootcert" if value == "system" => root = Some(RootCert::System),
            "sslrootcert" if !value.is_empty() => root = Some(RootCert::File(value.into())),
            "channel_binding" => {
                channel_binding = ChannelBindingMode::parse(&value)
                    .ok_or(UpstreamTlsError::BadChannelBinding(value))?;
            }
            "sslcert" => ssl_cert = Some(value).filter(|v| !v.is_empty()),
            "sslkey" => ssl_key = Some(value).filter(|v| !v.is_empty()),
            // SNI is sent for host names and never for IP addresses, whatever this says.
            "sslsni" => {}
            "sslnegotiation" if value == "postgres" => {}
            k if k.starts_with("ssl") || k == "requiressl" => {
                return Err(UpstreamTlsError::Unsupported(format!("{k}={value}")).into())
            }
            _ => {}
        }
    }
    // libpq falls back to ~/.postgresql/postgresql.crt; the gateway uses only what the URL names.
    let client_cert = match (ssl_cert, ssl_key) {
        (Some(cert), Some(key)) => Some(ClientCert {
            cert: cert.into(),
            key: key.into(),
        }),
        (None, None) => None,
        (Some(_), None) => {
            let (given, missing) = ("sslcert", "sslkey");
            return Err(UpstreamTlsError::ClientCertHalf { given, missing }.into());
        }
        (None, Some(_)) => {
            let (given, missing) = ("sslkey", "sslcert");
            return Err(UpstreamTlsError::ClientCertHalf { given, missing }.into());
        }
    };
    Ok(UpstreamTls::new(mode, root, client_cert)?.with_channel_binding(channel_binding)?)
}

/// One column of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// Postgres type OID.
    pub type_oid: u32,
}

/// One result set (one statement of the query string).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ResultSet {
    /// Columns, empty for statements that return no rows.
    pub columns: Vec<Column>,
    /// Rows in text format; `None` is SQL NULL.
    pub rows: Vec<Vec<Option<String>>>,
    /// The upstream's command tag, e.g. `DELETE 3`.
    pub command_tag: Option<String>,
}

/// An error the upstream returned for the statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpstreamSqlError {
    /// SQLSTATE.
    pub sqlstate: String,
    /// Message.
    pub message: String,
    /// Detail, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Whether PostgreSQL gave a cursor position in the statement (set by parse analysis, never by a
    /// value read from a row): masking keeps quoted message text only then.
    #[serde(skip)]
    pub positioned: bool,
    /// Raised in code (PostgreSQL gave a CONTEXT or an internal query): a `RAISE` chooses its text
    /// and SQLSTATE, so masking never keeps that text.
    #[serde(skip)]
    pub from_code: bool,
}

/// What running a query string produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueryOutcome {
    /// Result sets in order (statements before an error).
    pub results: Vec<ResultSet>,
    /// The error, if one statement failed (later ones did not run).
    pub error: Option<UpstreamSqlError>,
    /// Wall time in microseconds.
    pub duration_us: u64,
    /// Fields masked in `results` (set by the engine).
    pub masked_fields: u64,
    /// The table OID of each column of each result (0: not a table column), for table-qualified
    /// masking rules; never serialized.
    #[serde(skip)]
    pub table_oids: Vec<Vec<u32>>,
    /// Per result set, each column's attribute number in its table (0 for none).
    pub attnums: Vec<Vec<i16>>,
}

/// Why a query could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// Connecting failed.
    #[error(transparent)]
    Connect(#[from] UpstreamError),
    /// The connection broke mid-query.
    #[error("the upstream connection failed during the query: {0}; the statement may or may not have run")]
    Io(#[from] std::io::Error),
    /// The upstream sent something unexpected.
    #[error("the upstream sent an unexpected message: {0}")]
    Protocol(String),
    /// The result passed [`MAX_RESULT_BYTES`]; the upstream session was closed, which stops the query.
    #[error("the result is larger than the HTTP API's {} MiB limit, so it was not returned (the upstream session was closed, which stops the query; a statement that changes data and had not finished is rolled back): add LIMIT or select fewer columns, or use the wire protocol (psql, a PostgreSQL driver), which streams results of any size", MAX_RESULT_BYTES / (1024 * 1024))]
    ResultTooLarge,
    /// PostgreSQL would read the statement's text differently from the policy on this connection.
    #[error("the upstream session has {name} = {value} (a database or role default), so PostgreSQL may read the backslashes or non-ASCII characters in this statement differently from the policy; send it in ASCII without backslashes, or have the default changed")]
    Misread {
        /// The setting.
        name: String,
        /// Its value.
        value: String,
    },
}

/// The longest a pooled session's connect and login may take (the wire path has its startup deadline).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A query under way on a pooled session ([`UpstreamPool::track`]): listed in its pool while it
/// lives, so a shutdown can cancel it. Dropped while `armed` (its caller went away mid-query: an HTTP
/// client hanging up drops the future), it sends the query a CancelRequest rather than leave it
/// running (a runaway read, say) on a session no one reads any more.
struct Running<'a> {
    pool: &'a UpstreamPool,
    id: u64,
    armed: bool,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let listed = self
            .pool
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        let (true, Some((addr, key)), Ok(runtime)) =
            (self.armed, listed, tokio::runtime::Handle::try_current())
        else {
            return;
        };
        runtime.spawn(async move {
            if let Err(e) = crate::pg::cancel::send_upstream_cancel(&addr, key).await {
                tracing::warn!(error = %e, "could not cancel the query of a caller that went away");
            }
        });
    }
}

/// Idle upstream sessions per connection name, reused by the HTTP API, and a cap on how many sessions the
/// API opens per connection at once (so a burst of approvals can't exhaust the upstream's connections).
pub struct UpstreamPool {
    idle: Mutex<HashMap<String, Vec<Upstream>>>,
    open: Mutex<HashMap<String, std::sync::Arc<tokio::sync::Semaphore>>>,
    /// Queries under way, by a number of their own: where to send each one's CancelRequest.
    running: Mutex<
        HashMap<
            u64,
            (
                crate::pg::cancel::UpstreamAddr,
                crate::pg::cancel::BackendKey,
            ),
        >,
    >,
    next_run: std::sync::atomic::AtomicU64,
    max_idle: usize,
    max_open: usize,
    connect_timeout: std::time::Duration,
}

impl UpstreamPool {
    /// A pool keeping at most `max_idle` sessions per connection.
    pub fn new(max_idle: usize) -> Self {
        Self::with_limits(max_idle, (max_idle * 2).max(4))
    }

    /// A pool keeping at most `max_idle` idle sessions and opening at most `max_open` per connection.
    pub fn with_limits(max_idle: usize, max_open: usize) -> Self {
        Self {
            idle: Mutex::new(HashMap::new()),
            open: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            next_run: std::sync::atomic::AtomicU64::new(0),
            max_idle,
            max_open: max_open.max(1),
            connect_timeout: CONNECT_TIMEOUT,
        }
    }

    /// The same pool giving up on a connect and login after `limit` (default 10 s).
    pub fn with_connect_timeout(mut self, limit: std::time::Duration) -> Self {
        self.connect_timeout = limit;
        self
    }

    fn permits(&self, name: &str) -> std::sync::Arc<tokio::sync::Semaphore> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.entry(name.to_string())
            .or_insert_with(|| std::sync::Arc::new(tokio::sync::Semaphore::new(self.max_open)))
            .clone()
    }

    /// An idle session still open at the server, if any: one the server ended while it sat idle (a
    /// restart, `pg_terminate_backend`, an idle timeout) is dropped here, before a statement is sent on
    /// it, so an approved statement's single execution is never spent on a dead connection.
    fn take(&self, name: &str) -> Option<Upstream> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let sessions = idle.get_mut(name)?;
        while let Some(up) = sessions.pop() {
            if !up.stream.idle_session_ended() {
                return Some(up);
            }
            tracing::debug!(connection = %name, "dropped an idle upstream session the server had ended");
        }
        None
    }

    fn give_back(&self, name: &str, up: Upstream) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let v = idle.entry(name.to_string()).or_default();
        if v.len() < self.max_idle {
            v.push(up);
        }
    }

    /// Lists a query under way until the returned guard is dropped (see [`Running`]).
    fn track(
        &self,
        addr: crate::pg::cancel::UpstreamAddr,
        key: crate::pg::cancel::BackendKey,
    ) -> Running<'_> {
        let id = self
            .next_run
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (addr, key));
        Running {
            pool: self,
            id,
            armed: true,
        }
    }

    /// Cancels every query under way (at shutdown, once running statements had their grace), as
    /// PostgreSQL's fast shutdown does: each caller gets its `57014` and a result to record. Returns
    /// how many were asked to stop.
    pub async fn cancel_running(&self) -> usize {
        let running: Vec<_> = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for (addr, key) in &running {
            if let Err(e) = crate::pg::cancel::send_upstream_cancel(addr, *key).await {
                tracing::warn!(error = %e, "could not cancel an API statement at shutdown");
            }
        }
        running.len()
    }

    /// Run `sql` with the simple query protocol on connection `name`. The session returns to the pool only
    /// when `stateless` (the caller knows the SQL changes no session state) and it ended idle, so one caller's
    /// `SET` or open transaction can never leak to another.
    pub async fn simple_query(
        &self,
        name: &str,
        target: &UpstreamTarget,
        sql: &str,
        stateless: bool,
    ) -> Result<QueryOutcome, ExecError> {
        // Waiting for a permit queues the query instead of failing it when the connection is busy.
        let permits = self.permits(name);
        let _permit = permits
            .acquire_owned()
            .await
            .map_err(|_| ExecError::Protocol("upstream pool closed".into()))?;
        let mut up = match self.take(name) {
            Some(u) => u,
            // UTF-8 whatever the database's or role's default: the API sends and decodes UTF-8 text,
            // and the policy reads it so.
            None => {
                let params = [
                    ("application_name".into(), "countersign".into()),
                    ("client_encoding".into(), "UTF8".into()),
                ];
                tokio::time::timeout(self.connect_timeout, connect(target, &params))
                    .await
                    .map_err(|_| {
                        // Nothing was sent but a login: callers treat it as any failed connect.
                        UpstreamError::Io(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("no completed login within {:?}", self.connect_timeout),
                        ))
                    })??
            }
        };
        if !crate::pg::backend::reads_the_same_anyhow(sql) {
            let misread = crate::pg::backend::misread_settings(&up.parameter_status);
            if let Some((setting, value)) = misread.into_iter().next() {
                self.give_back(name, up);
                return Err(ExecError::Misread {
                    name: setting,
                    value,
                });
            }
        }
        let mut running = self.track(
            (target.host.clone(), target.port, target.tls.clone()),
            up.key,
        );
        let ran = run_simple(&mut up, sql).await;
        running.armed = false;
        drop(running);
        let (outcome, reusable) = ran?;
        if reusable && (stateless || reset(&mut up).await) {
            self.give_back(name, up);
        }
        Ok(outcome)
    }
}

/// Resolves table OIDs for table-qualified masking rules with a catalog query, on a small pool of
/// upstream sessions of its own (so a busy API or a held statement never delays a wire session's lookup).
pub struct CatalogLookup {
    name: String,
    target: UpstreamTarget,
    pool: UpstreamPool,
}

impl CatalogLookup {
    /// Rows of a catalog query, or the reason it failed.
    async fn catalog_rows(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>, LookupError> {
        let out = self
            .pool
            .simple_query(&self.name, &self.target, sql, true)
            .await
            .map_err(|e| LookupError(e.to_string()))?;
        if let Some(e) = out.error {
            return Err(LookupError(format!("{} ({})", e.message, e.sqlstate)));
        }
        Ok(out.results.into_iter().flat_map(|r| r.rows).collect())
    }

    /// Lookups for connection `name`, logging in to `target` as the gateway does.
    pub fn new(name: &str, target: UpstreamTarget) -> Self {
        Self {
            name: format!("{name} (table lookups)"),
            target,
            pool: UpstreamPool::with_limits(2, 4),
        }
    }
}

/// The definitions (a JSON array, or NULL) of every view and materialized view the view `c` reads,
/// however deeply (through `pg_depend` on its rewrite rule), so a column another view renamed from a
/// masked column is still known as such.
const READS: &str = "WITH RECURSIVE reads(oid) AS (\
    SELECT d.refobjid FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_depend d \
      ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = r.oid \
      AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
    WHERE r.ev_class = c.oid AND d.refobjid <> c.oid \
  UNION \
    SELECT d.refobjid FROM reads JOIN pg_catalog.pg_rewrite r ON r.ev_class = reads.oid \
      JOIN pg_catalog.pg_depend d \
      ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = r.oid \
      AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid <> reads.oid) \
  SELECT pg_catalog.json_agg(pg_catalog.pg_get_viewdef(v.oid))::pg_catalog.text \
  FROM reads JOIN pg_catalog.pg_class v ON v.oid = reads.oid AND v.relkind IN ('v', 'm')";

#[async_trait::async_trait]
impl crate::masking::TableLookup for CatalogLookup {
    async fn lookup(&self, oids: &[u32]) -> Result<Vec<(u32, Relation)>, LookupError> {
        if oids.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<String> = oids.iter().map(u32::to_string).collect();
        // Only a plain table that is nobody's partition or child, and has none, is trusted by name
        // (see masking::tables): a parent's rows include its children's, which a rule may name.
        // OIDs are formatted integers, so the text is safe to build.
        // A view's definition is read with it, so its columns computed from masked ones are found.
        let sql = format!(
            "SELECT c.oid, n.nspname, c.relname, \
                    c.relkind IN ('r', 'f') AND NOT c.relispartition \
                    AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i \
                                    WHERE i.inhrelid = c.oid OR i.inhparent = c.oid), \
                    CASE WHEN c.relkind IN ('v', 'm') THEN pg_catalog.pg_get_viewdef(c.oid) END, \
                    CASE WHEN c.relkind IN ('v', 'm') THEN ({READS}) END \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = ANY('{{{}}}'::pg_catalog.oid[])",
            list.join(",")
        );
        let rows = self.catalog_rows(&sql).await?;
        rows.into_iter()
            .map(|row| match &row[..] {
                [Some(oid), Some(schema), Some(table), Some(plain), view, reads] => {
                    let oid = oid
                        .parse()
                        .map_err(|_| LookupError(format!("pg_class returned OID {oid:?}")))?;
                    let relation = match (plain.as_str(), view) {
                        ("t", _) => Relation::Table {
                            schema: schema.clone(),
                            table: table.clone(),
                        },
                        (_, Some(definition)) => Relation::View {
                            definition: definition.clone(),
                            reads: match reads {
                                None => Vec::new(),
                                Some(json) => serde_json::from_str(json).map_err(|e| {
                                    LookupError(format!("view definitions it reads: {e}"))
                                })?,
                            },
                        },
                        _ => Relation::Derived,
                    };
                    Ok((oid, relation))
                }
                _ => Err(LookupError("pg_class returned an unexpected row".into())),
            })
            .collect()
    }
    async fn oids_of(&self, names: &[String]) -> Result<Vec<(String, u32)>, LookupError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        // Names come from a client's statement: quoted as literals (`'` doubled; a backslash or NUL,
        // which no name the caller needs holds, refuses the lookup rather than be quoted).
        if names.iter().any(|n| n.contains(['\\', '\0'])) {
            return Err(LookupError(
                "a relation name holds a backslash or NUL".into(),
            ));
        }
        let list: Vec<String> = names
            .iter()
            .map(|n| format!("'{}'", n.replace('\'', "''")))
            .collect();
        // A name is also every relation of its last part's name, in any schema: the client's session
        // may have another search_path than this one (SET, startup options), and its `pg_temp` is
        // another schema than this session's, so it may mean any of them. (As `name`, the part is cut
        // to the 63 bytes PostgreSQL keeps, as the client's statement's is.)
        let sql = format!(
            "SELECT n, pg_catalog.to_regclass(n)::pg_catalog.oid \
             FROM pg_catalog.unnest(ARRAY[{0}]::pg_catalog.text[]) AS n \
             UNION \
             SELECT n, c.oid FROM pg_catalog.unnest(ARRAY[{0}]::pg_catalog.text[]) AS n \
             JOIN pg_catalog.pg_class c \
               ON c.relname OPERATOR(pg_catalog.=) ((pg_catalog.parse_ident(n))\
                  [pg_catalog.cardinality(pg_catalog.parse_ident(n))])::pg_catalog.name",
            list.join(",")
        );
        let rows = self.catalog_rows(&sql).await?;
        let mut found = Vec::new();
        for row in rows {
            match &row[..] {
                [Some(name), Some(oid)] => {
                    let oid = oid
                        .parse()
                        .map_err(|_| LookupError(format!("to_regclass returned OID {oid:?}")))?;
                    found.push((name.clone(), oid));
                }
                [Some(_), None] => {}
                _ => return Err(LookupError("to_regclass returned an unexpected row".into())),
            }
        }
        Ok(found)
    }

    async fn columns(&self, oids: &[u32]) -> Result<Vec<(u32, i16, String)>, LookupError> {
        if oids.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<String> = oids.iter().map(u32::to_string).collect();
        let sql = format!(
            "SELECT a.attrelid, a.attnum, a.attname FROM pg_catalog.pg_attribute a \
             WHERE a.attrelid = ANY('{{{}}}'::pg_catalog.oid[]) AND a.attnum > 0 AND NOT a.attisdropped",
            list.join(",")
        );
        let rows = self.catalog_rows(&sql).await?;
        rows.into_iter()
            .map(|row| match &row[..] {
                [Some(oid), Some(attnum), Some(name)] => {
                    let bad = || LookupError(format!("pg_attribute returned {oid:?}/{attnum:?}"));
                    Ok((
                        oid.parse().map_err(|_| bad())?,
                        attnum.parse().map_err(|_| bad())?,
                        name.clone(),
                    ))
                }
                _ => Err(LookupError(
                    "pg_attribute returned an unexpected row".into(),
                )),
            })
            .collect()
    }
}

/// Clears what a statement may have left in the session (settings, role, prepared statements, temporary
/// tables, advisory locks, LISTEN) the way pgbouncer's `server_reset_query` does, so the next caller,
/// maybe another identity, starts clean; true when the session may be reused.
async fn reset(up: &mut Upstream) -> bool {
    matches!(run_simple(up, "DISCARD ALL").await, Ok((out, true)) if out.error.is_none())
}

/// Run one simple query on an established session. Returns the outcome and whether the session is idle
/// (outside a transaction) and safe to reuse.
async fn run_simple(up: &mut Upstream, sql: &str) -> Result<(QueryOutcome, bool), ExecError> {
    let started = Instant::now();
    let mut out = BytesMut::new();
    frontend::query(sql, &mut out).map_err(|e| ExecError::Protocol(e.to_string()))?;
    up.stream.write_all(&out).await?;
    let mut buf = std::mem::take(&mut up.leftover);
    let mut results: Vec<ResultSet> = Vec::new();
    let mut current = ResultSet::default();
    let mut table_oids: Vec<Vec<u32>> = Vec::new();
    let mut current_oids: Vec<u32> = Vec::new();
    let mut attnums: Vec<Vec<i16>> = Vec::new();
    let mut current_attnums: Vec<i16> = Vec::new();
    let mut error = None;
    let mut held = 0usize;
    loop {
        let (tag, body) = read_frame(&mut up.stream, &mut buf, MAX_FRAME).await?;
        if matches!(tag, b'D' | b'd') {
            let values = if tag == b'd' {
                1
            } else {
                current.columns.len().max(1)
            };
            held = held.saturating_add(body.len() + values * PER_VALUE);
            if held > MAX_RESULT_BYTES {
                // Dropping the session (the caller never gets it back) closes it: PostgreSQL stops the
                // query at its next write instead of streaming the rest to a reader that discards it.
                return Err(ExecError::ResultTooLarge);
            }
        }
        match tag {
            b'T' => {
                current = ResultSet::default();
                current_oids.clear();
                current_attnums.clear();
                let mut pos = 0;
                let n = read_i16(&body, &mut pos)
                    .ok_or_else(|| ExecError::Protocol("short RowDescription".into()))?;
                for _ in 0..n.max(0) {
                    let name = read_cstr(&body, &mut pos)
                        .ok_or_else(|| ExecError::Protocol("bad column name".into()))?;
                    let name = String::from_utf8_lossy(name).into_owned();
                    current_oids.push(read_i32(&body, &mut pos).unwrap_or(0) as u32);
                    current_attnums.push(read_i16(&body, &mut pos).unwrap_or(0));
                    let type_oid = read_i32(&body, &mut pos).unwrap_or(0) as u32;
                    pos += 8; // typlen, typmod, format
                    current.columns.push(Column { name, type_oid });
                }
            }
            b'D' => {
                let mut pos = 0;
                let n = read_i16(&body, &mut pos)
                    .ok_or_else(|| ExecError::Protocol("short DataRow".into()))?;
                let mut row = Vec::with_capacity(n.max(0) as usize);
                for _ in 0..n.max(0) {
                    let len = read_i32(&body, &mut pos)
                        .ok_or_else(|| ExecError::Protocol("short DataRow".into()))?;
                    if len < 0 {
                        row.push(None);
                    } else {
                        let end = pos + len as usize;
                        let v = body
                            .get(pos..end)
                            .ok_or_else(|| ExecError::Protocol("DataRow overruns".into()))?;
                        row.push(Some(String::from_utf8_lossy(v).into_owned()));
                        pos = end;
                    }
                }
                current.rows.push(row);
            }
            b'C' => {
                let mut pos = 0;
                current.command_tag =
                    read_cstr(&body, &mut pos).map(|t| String::from_utf8_lossy(t).into_owned());
                results.push(std::mem::take(&mut current));
                table_oids.push(std::mem::take(&mut current_oids));
                attnums.push(std::mem::take(&mut current_attnums));
            }
            b'I' => {
                results.push(std::mem::take(&mut current));
                table_oids.push(std::mem::take(&mut current_oids));
                attnums.push(std::mem::take(&mut current_attnums));
            }
            b'E' => {
                let mut e = UpstreamSqlError {
                    sqlstate: String::new(),
                    message: String::new(),
                    detail: None,
                    positioned: false,
                    from_code: false,
                };
                for (f, v) in error_fields(&body) {
                    let v = String::from_utf8_lossy(v).into_owned();
                    match f {
                        b'C' => e.sqlstate = v,
                        b'M' => e.message = v,
                        b'D' => e.detail = Some(v),
                        b'P' => e.positioned = true,
                        b'W' | b'q' => e.from_code = true,
                        _ => {}
                    }
                }
                error = Some(e);
            }
            b'G' => {
                // COPY FROM STDIN needs a data stream the JSON API doesn't carry: refuse it cleanly.
                let mut fail = BytesMut::new();
                frontend::copy_fail(
                    "COPY FROM STDIN is not supported over the HTTP API; use the wire protocol",
                    &mut fail,
                )
                .map_err(|e| ExecError::Protocol(e.to_string()))?;
                up.stream.write_all(&fail).await?;
            }
            b'H' => {} // COPY TO STDOUT: rows arrive as CopyData below.
            b'd' => {
                let line = String::from_utf8_lossy(&body)
                    .trim_end_matches('\n')
                    .to_string();
                current.rows.push(vec![Some(line)]);
            }
            b'Z' => {
                let status = body.first().copied().unwrap_or(b'I');
                up.leftover = buf;
                let outcome = QueryOutcome {
                    results,
                    error,
                    duration_us: started.elapsed().as_micros() as u64,
                    masked_fields: 0,
                    table_oids,
                    attnums,
                };
                return Ok((outcome, status == b'I'));
            }
            _ => {} // NoticeResponse, ParameterStatus, NotificationResponse, CopyDone...
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_host_names_a_unix_socket() {
        let t =
            UpstreamTarget::parse("postgres://app@%2Fvar%2Frun%2Fpostgresql:5433/prod").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("/var/run/postgresql", 5433));
        let t = UpstreamTarget::parse("postgres://app@/prod?host=/tmp/pg%20sock").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.database.as_str()),
            ("/tmp/pg sock", 5432, "prod")
        );
        let t = UpstreamTarget::parse("postgres://app@localhost/prod?host=%2Frun").unwrap();
        assert_eq!(t.host, "/run", "host= overrides the authority, as in libpq");
    }

    #[test]
    fn parses_urls_with_and_without_credentials() {
        let t = UpstreamTarget::parse("postgres://postgres@127.0.0.1:5432/postgres").unwrap();
        assert_eq!(
            (
                t.host.as_str(),
                t.port,
                t.user.as_str(),
                t.database.as_str()
            ),
            ("127.0.0.1", 5432, "postgres", "postgres")
        );
        assert!(t.password.is_none());
        let t = UpstreamTarget::parse("postgresql://app:p%40ss@db.internal/prod?sslmode=require")
            .unwrap();
        assert_eq!(t.password.as_deref(), Some("p@ss"));
        assert_eq!((t.port, t.database.as_str()), (5432, "prod"));
        assert_eq!(t.tls.mode(), SslMode::Require);
        let t = UpstreamTarget::parse("postgres://u@127.0.0.1/db").unwrap();
        assert_eq!(t.tls.mode(), SslMode::Prefer, "libpq's default");
        assert!(UpstreamTarget::parse("mysql://x").is_err());
        assert!(UpstreamTarget::parse("postgres://u@h:notaport/db").is_err());
    }

    #[test]
    fn tls_parameters_are_parsed_or_refused_with_the_fix() {
        let t =
            UpstreamTarget::parse("postgres://u@127.0.0.1/db?sslmode=disable&sslrootcert=/x.pem")
                .unwrap();
        assert_eq!(t.tls.mode(), SslMode::Disable);
        assert_eq!(t.tls.root_cert(), Some(&RootCert::File("/x.pem".into())));
        let err = |url: &str| UpstreamTarget::parse(url).unwrap_err().to_string();
        assert!(err("postgres://u@h/db?sslmode=allowed").contains("verify-full"));
        assert!(err("postgres://u@h/db?sslmode=verify-full").contains("sslrootcert="));
        assert!(err("postgres://u@h/db?sslmode=require&sslcrl=/c.pem").contains("sslcrl"));
        assert!(
            err("postgres://u@h/db?sslmode=verify-ca&sslrootcert=/missing/ca.pem")
                .contains("/missing/ca.pem")
        );
        assert_eq!(
            t.tls.channel_binding(),
            ChannelBindingMode::Prefer,
            "libpq's default"
        );
        for (value, mode) in [
            ("disable", ChannelBindingMode::Disable),
            ("prefer", ChannelBindingMode::Prefer),
            ("require", ChannelBindingMode::Require),
        ] {
            let url = format!("postgres://u@h/db?sslmode=require&channel_binding={value}");
            assert_eq!(
                UpstreamTarget::parse(&url).unwrap().tls.channel_binding(),
                mode
            );
        }
        assert!(
            err("postgres://u@h/db?channel_binding=always").contains("disable, prefer or require")
        );
        let never = err("postgres://u@h/db?sslmode=disable&channel_binding=require");
        assert!(
            never.contains("channel_binding=require needs TLS, but sslmode=disable"),
            "{never}"
        );
        let unix = err("postgres://u@/db?host=/run/postgresql&channel_binding=require");
        assert!(unix.contains("Unix-domain socket"), "{unix}");
        // Unrelated libpq parameters are still ignored.
        let t =
            UpstreamTarget::parse("postgres://u@h/db?connect_timeout=5&sslmode=require").unwrap();
        assert_eq!(t.tls.mode(), SslMode::Require);
    }

    #[test]
    fn client_certificates_need_both_files_and_are_read_at_parse_time() {
        let err = |url: &str| UpstreamTarget::parse(url).unwrap_err().to_string();
        let half = err("postgres://u@h/db?sslmode=require&sslcert=/c.pem");
        assert!(half.contains("sslcert is set but sslkey is not"), "{half}");
        let half = err("postgres://u@h/db?sslmode=require&sslkey=/k.pem");
        assert!(half.contains("sslkey is set but sslcert is not"), "{half}");
        let missing =
            err("postgres://u@h/db?sslmode=require&sslcert=/missing/c.pem&sslkey=/missing/k.pem");
        assert!(missing.contains("sslcert /missing/c.pem"), "{missing}");

        let dir = std::env::temp_dir().join(format!("cs-url-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let rcgen::CertifiedKey {
            cert,
            key_pair: key,
        } = rcgen::generate_simple_self_signed(vec!["gateway".to_string()]).unwrap();
        let (cert_path, key_path) = (dir.join("c.pem"), dir.join("k.pem"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let url = format!(
            "postgres://u@h/db?sslmode=require&sslcert={}&sslkey={}",
            cert_path.display(),
            key_path.display()
        );
        let t = UpstreamTarget::parse(&url).unwrap();
        assert_eq!(
            t.tls.client_cert(),
            Some(&ClientCert {
                cert: cert_path.clone(),
                key: key_path.clone()
            })
        );
        // The key file is checked too: a certificate where the key should be names the key file.
        let swapped = url.replace("k.pem", "c.pem");
        let e = err(&swapped);
        assert!(
            e.contains(&format!("sslkey {}", cert_path.display())),
            "{e}"
        );
        assert!(e.contains("no private key found"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn runs_statements_with_exact_tags_and_errors() {
        let target = UpstreamTarget::parse("postgres://postgres@127.0.0.1:5432/postgres").unwrap();
        let pool = UpstreamPool::new(2);
        let out = pool
            .simple_query(
                "t",
                &target,
                "SELECT 1 AS one, NULL::text AS n; SELECT 'x' WHERE false",
                true,
            )
            .await
            .unwrap();
        assert_eq!(out.results.len(), 2);
        assert_eq!(out.results[0].columns[0].name, "one");
        assert_eq!(out.results[0].rows, vec![vec![Some("1".to_string()), None]]);
        assert_eq!(out.results[1].command_tag.as_deref(), Some("SELECT 0"));
        let out = pool
            .simple_query("t", &target, "SELECT 1/0", true)
            .await
            .unwrap();
        assert_eq!(out.error.unwrap().sqlstate, "22012");
        // The pooled session is reused after an error outside a transaction.
        let out = pool
            .simple_query("t", &target, "SELECT 2", true)
            .await
            .unwrap();
        assert_eq!(out.results[0].rows[0][0].as_deref(), Some("2"));
    }

    #[tokio::test]
    async fn a_server_that_accepts_but_never_answers_fails_the_connect_in_time() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        // Accepts and keeps the socket open without a byte of answer.
        let held = tokio::spawn(async move {
            let (socket, _) = silent.accept().await.unwrap();
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            drop(socket);
        });
        let target =
            UpstreamTarget::parse(&format!("postgres://postgres@127.0.0.1:{port}/test")).unwrap();
        let pool = UpstreamPool::new(1).with_connect_timeout(std::time::Duration::from_millis(300));
        let started = std::time::Instant::now();
        let out = pool.simple_query("silent", &target, "SELECT 1", true).await;
        match out {
            Err(ExecError::Connect(UpstreamError::Io(e))) => {
                assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}")
            }
            other => panic!("expected a connect timeout, got {other:?}"),
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        held.abort();
    }

    #[tokio::test]
    async fn a_result_past_the_api_limit_is_refused_and_the_pool_still_serves() {
        let target = UpstreamTarget::parse("postgres://postgres@127.0.0.1:5432/postgres").unwrap();
        let pool = UpstreamPool::new(2);
        let rows = MAX_RESULT_BYTES / 1_000_000 + 2;
        for sql in [
            format!("SELECT repeat('x', 1000000) FROM generate_series(1, {rows})"),
            // Many small values count their bookkeeping too.
            format!(
                "SELECT g FROM generate_series(1, {}) g",
                MAX_RESULT_BYTES / PER_VALUE + 1
            ),
            format!("COPY (SELECT repeat('y', 1000000) FROM generate_series(1, {rows})) TO STDOUT"),
        ] {
            let err = pool
                .simple_query("t", &target, &sql, true)
                .await
                .unwrap_err();
            assert!(matches!(err, ExecError::ResultTooLarge), "{sql}: {err}");
            assert!(err.to_string().contains("use the wire protocol"), "{err}");
        }
        // Just under the limit is returned whole.
        let out = pool
            .simple_query(
                "t",
                &target,
                &format!(
                    "SELECT repeat('x', 1000000) FROM generate_series(1, {})",
                    rows - 4
                ),
                true,
            )
            .await
            .unwrap();
        assert_eq!(out.results[0].rows.len(), rows - 4);
    }

    #[tokio::test]
    async fn session_state_never_reaches_the_next_caller() {
        let target = UpstreamTarget::parse("postgres://postgres@127.0.0.1:5432/postgres").unwrap();
        let pool = UpstreamPool::new(1);
        let run = |sql: &'static str, stateless: bool| {
            let (pool, target) = (&pool, &target);
            async move {
                let out = pool
                    .simple_query("t", target, sql, stateless)
                    .await
                    .unwrap();
                assert!(out.error.is_none(), "{sql}: {:?}", out.error);
                out.results
                    .last()
                    .and_then(|r| r.rows.first())
                    .and_then(|row| row[0].clone())
            }
        };
        let pid = run("SELECT pg_backend_pid()::text", true).await;
        run(
            "SET application_name = 'leaked'; CREATE TEMP TABLE t_leak (i int)",
            false,
        )
        .await;
        assert_eq!(
            run("SHOW application_name", true).await.as_deref(),
            Some("countersign")
        );
        let temp = run(
            "SELECT count(*)::text FROM pg_class WHERE relname = 't_leak'",
            true,
        )
        .await;
        assert_eq!(temp.as_deref(), Some("0"));
        // The session was reset and reused, not replaced.
        assert_eq!(run("SELECT pg_backend_pid()::text", true).await, pid);
    }
}
