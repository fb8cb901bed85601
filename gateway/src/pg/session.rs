//! One client connection from TCP accept to relay: SSLRequest/GSSENCRequest negotiation, CancelRequest,
//! the startup packet, authentication (see `auth`), and the upstream login.

use super::cancel::{BackendKey, CancelRegistry, CancelSignal, FrontendKey, UpstreamAddr};
use super::codec::{
    put_auth, put_backend_key, put_cstr, put_error, put_ready, send, sqlstate, Severity,
};
use super::config::WireConfig;
use super::error::WireError;
use super::gate::{SessionInfo, WireGate};
use super::recorder::Recorder;
use super::relay::{Relay, SessionCtx};
use super::scram::Offer;
use super::upstream::{self, Upstream};
use super::upstream_tls::UpstreamStream;
use bytes::{BufMut, BytesMut};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

const SSL_REQUEST: i32 = 80877103;
const GSSENC_REQUEST: i32 = 80877104;
const CANCEL_REQUEST: i32 = 80877102;
const MAX_STARTUP_PACKET: usize = 10 * 1024;

/// State shared by all connections of one listener.
pub struct Shared {
    /// Listener configuration.
    pub cfg: WireConfig,
    /// The engine.
    pub gate: Arc<dyn WireGate>,
    /// TLS, when configured.
    pub tls: Option<TlsAcceptor>,
    /// The listener certificate's `tls-server-end-point` data for SCRAM-SHA-256-PLUS; `None` without TLS
    /// or when the certificate's signature algorithm defines no hash (then PLUS is not offered).
    pub tls_end_point: Option<Vec<u8>>,
    /// Cancel keys of live sessions.
    pub cancels: CancelRegistry,
    /// Session recording.
    pub recorder: Recorder,
    /// Per-process secret that derives stable fake SCRAM salts for users without a verifier.
    pub scram_mock_secret: [u8; 32],
    /// Turns true when the gateway is shutting down (None: never, as in tests that drop the server).
    pub shutdown: Option<tokio::sync::watch::Receiver<bool>>,
    /// Turns true when statements still running at shutdown are to be cancelled (None: never).
    pub cancel_busy: Option<tokio::sync::watch::Receiver<bool>>,
}

enum Packet {
    Ssl,
    Gss,
    Cancel(FrontendKey),
    Startup {
        minor: u16,
        params: Vec<(String, String)>,
    },
}

enum PacketError {
    Io(std::io::Error),
    Bad(&'static str, String),
}

/// Streams the relay can split into independently usable halves.
trait Halves: AsyncRead + AsyncWrite + Unpin + Send {
    type R: AsyncRead + Unpin + Send;
    type W: AsyncWrite + Unpin + Send;
    fn halves(self) -> (Self::R, Self::W);
}

impl Halves for TcpStream {
    type R = tokio::net::tcp::OwnedReadHalf;
    type W = tokio::net::tcp::OwnedWriteHalf;
    fn halves(self) -> (Self::R, Self::W) {
        self.into_split()
    }
}

impl Halves for TlsStream<TcpStream> {
    type R = tokio::io::ReadHalf<Self>;
    type W = tokio::io::WriteHalf<Self>;
    fn halves(self) -> (Self::R, Self::W) {
        tokio::io::split(self)
    }
}

/// Serves one accepted client until it disconnects; errors are logged, never propagated as panics.
pub async fn handle_connection(tcp: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _ = tcp.set_nodelay(true);
    // The config bounds the timeout; a checked add keeps an unbounded one from panicking the thread.
    let now = Instant::now();
    let deadline = now
        .checked_add(shared.cfg.startup_timeout)
        .unwrap_or(now + Duration::from_secs(3600));
    if let Err(e) = negotiate(tcp, peer, &shared, deadline).await {
        tracing::debug!(%peer, error = %e, "wire session ended with an error");
    }
}

async fn negotiate(
    mut tcp: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    deadline: Instant,
) -> Result<(), WireError> {
    if let Some(acceptor) = &shared.tls {
        if opens_with_tls_handshake(&tcp, deadline).await? {
            let mut tls = handshake(acceptor, tcp, deadline).await?;
            // As PostgreSQL 17: a direct TLS connection must have agreed on the `postgresql` protocol,
            // which keeps a TLS connection meant for another service (HTTPS) from being read as ours.
            if tls.get_ref().1.alpn_protocol() != Some(ALPN_POSTGRESQL) {
                return Err(fatal(
                    &mut tls,
                    sqlstate::PROTOCOL_VIOLATION,
                    "direct TLS connection without ALPN protocol \"postgresql\"; use sslnegotiation=direct with libpq 17 or later, or the standard SSLRequest",
                )
                .await);
            }
            return after_tls(tls, peer, shared, deadline).await;
        }
    }
    loop {
        match next_packet(&mut tcp, deadline).await? {
            Packet::Ssl => match &shared.tls {
                Some(acceptor) => {
                    tcp.write_all(b"S").await?;
                    let tls = handshake(acceptor, tcp, deadline).await?;
                    return after_tls(tls, peer, shared, deadline).await;
                }
                None => tcp.write_all(b"N").await?,
            },
            Packet::Gss => tcp.write_all(b"N").await?,
            Packet::Cancel(key) => {
                shared.cancels.cancel(key).await;
                return Ok(());
            }
            Packet::Startup { minor, params } => {
                return serve(tcp, false, minor, params, peer, shared, deadline).await
            }
        }
    }
}

/// The ALPN protocol name PostgreSQL registered, offered by libpq 17+ (and required with
/// `sslnegotiation=direct`).
pub(super) const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// The first byte of a TLS record carrying a handshake: a client using `sslnegotiation=direct` starts
/// TLS at once instead of sending an SSLRequest (whose first byte, a length, is 0).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Whether the client's first byte starts a TLS handshake, without consuming it.
async fn opens_with_tls_handshake(tcp: &TcpStream, deadline: Instant) -> Result<bool, WireError> {
    let mut first = [0u8; 1];
    match timeout_at(deadline, tcp.peek(&mut first)).await {
        Ok(Ok(0)) => Ok(false),
        Ok(Ok(_)) => Ok(first[0] == TLS_HANDSHAKE_RECORD),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(WireError::Protocol(
            "startup timed out; the client must finish connecting promptly".into(),
        )),
    }
}

async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    deadline: Instant,
) -> Result<TlsStream<TcpStream>, WireError> {
    match timeout_at(deadline, acceptor.accept(tcp)).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(WireError::Protocol("TLS handshake timed out".into())),
    }
}

async fn after_tls(
    mut tls: TlsStream<TcpStream>,
    peer: SocketAddr,
    shared: &Shared,
    deadline: Instant,
) -> Result<(), WireError> {
    match next_packet(&mut tls, deadline).await? {
        Packet::Startup { minor, params } => {
            serve(tls, true, minor, params, peer, shared, deadline).await
        }
        Packet::Cancel(key) => {
            shared.cancels.cancel(key).await;
            // close_notify, as PostgreSQL ends a cancel connection: libpq 17+ waits for the close and
            // reports "unexpected eof" (a failed cancel) when TLS just stops.
            let _ = tls.shutdown().await;
            Ok(())
        }
        Packet::Ssl | Packet::Gss => Err(fatal(
            &mut tls,
            sqlstate::PROTOCOL_VIOLATION,
            "encryption requested twice; send a startup packet",
        )
        .await),
    }
}

/// Reads the next startup-phase packet; timeouts and bad packets are answered with FATAL.
async fn next_packet<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    deadline: Instant,
) -> Result<Packet, WireError> {
    match timeout_at(deadline, read_packet(stream)).await {
        Err(_) => Err(fatal(
            stream,
            sqlstate::PROTOCOL_VIOLATION,
            "startup timed out; the client must finish connecting promptly",
        )
        .await),
        Ok(Err(PacketError::Io(e))) => Err(e.into()),
        Ok(Err(PacketError::Bad(code, msg))) => Err(fatal(stream, code, &msg).await),
        Ok(Ok(p)) => Ok(p),
    }
}

async fn read_packet<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Packet, PacketError> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.map_err(PacketError::Io)?;
    let len = i32::from_be_bytes(len);
    if !(8..=MAX_STARTUP_PACKET as i32).contains(&len) {
        return Err(PacketError::Bad(
            sqlstate::PROTOCOL_VIOLATION,
            format!("invalid startup packet length {len}"),
        ));
    }
    let mut body = vec![0u8; len as usize - 4];
    stream
        .read_exact(&mut body)
        .await
        .map_err(PacketError::Io)?;
    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    match code {
        SSL_REQUEST => Ok(Packet::Ssl),
        GSSENC_REQUEST => Ok(Packet::Gss),
        CANCEL_REQUEST if body.len() >= 12 => Ok(Packet::Cancel(FrontendKey {
            pid: i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
            secret: i32::from_be_bytes([body[8], body[9], body[10], body[11]]),
        })),
        // As PostgreSQL: the parameter list ends with an empty name, so the packet's last byte is a
        // NUL; without it names and values can't be told apart for certain.
        v if v >> 16 == 3 && body.last() != Some(&0) => Err(PacketError::Bad(
            sqlstate::PROTOCOL_VIOLATION,
            "invalid startup packet layout: expected terminator as last byte".into(),
        )),
        CANCEL_REQUEST => Err(PacketError::Bad(
            sqlstate::PROTOCOL_VIOLATION,
            "invalid length of cancel request packet".into(),
        )),
        v if v >> 16 == 3 => {
            let mut params = Vec::new();
            let mut parts = body[4..].split(|&b| b == 0);
            while let Some(key) = parts.next().filter(|k| !k.is_empty()) {
                let value = parts.next().unwrap_or_default();
                let bad = || {
                    PacketError::Bad(
                        sqlstate::PROTOCOL_VIOLATION,
                        "startup parameters must be UTF-8".into(),
                    )
                };
                let key = std::str::from_utf8(key).map_err(|_| bad())?.to_string();
                let value = std::str::from_utf8(value).map_err(|_| bad())?.to_string();
                params.push((key, value));
            }
            Ok(Packet::Startup {
                minor: (v & 0xffff) as u16,
                params,
            })
        }
        v => Err(PacketError::Bad(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!(
                "unsupported frontend protocol {}.{}: the gateway speaks 3.0",
                v >> 16,
                v & 0xffff
            ),
        )),
    }
}

/// Sends a FATAL ErrorResponse, closes the stream, and returns the matching error.
pub(super) async fn fatal<S: AsyncWrite + Unpin>(
    stream: &mut S,
    code: &str,
    message: &str,
) -> WireError {
    let mut buf = BytesMut::new();
    put_error(&mut buf, Severity::Fatal, code, message, None);
    let _ = send(stream, &buf).await;
    let _ = stream.shutdown().await;
    WireError::Protocol(format!("{code}: {message}"))
}

fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

async fn serve<S: Halves>(
    mut stream: S,
    tls: bool,
    minor: u16,
    params: Vec<(String, String)>,
    peer: SocketAddr,
    shared: &Shared,
    deadline: Instant,
) -> Result<(), WireError> {
    let Some(user) = param(&params, "user")
        .filter(|u| !u.is_empty())
        .map(str::to_string)
    else {
        return Err(fatal(
            &mut stream,
            sqlstate::INVALID_AUTHORIZATION,
            "no user name in the startup packet; pass -U/user",
        )
        .await);
    };
    let connection = param(&params, "database").unwrap_or(&user).to_string();
    if param(&params, "replication").is_some_and(|v| !matches!(v, "false" | "off" | "0" | "no")) {
        let msg = "replication connections are not supported through the gateway; connect to the database directly";
        return Err(fatal(&mut stream, sqlstate::FEATURE_NOT_SUPPORTED, msg).await);
    }
    let mut out = BytesMut::new();
    let unknown: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.as_str())
        .collect();
    if minor > 0 || !unknown.is_empty() {
        // NegotiateProtocolVersion: we speak 3.0 and no protocol extensions.
        let start = out.len();
        out.put_u8(b'v');
        out.put_i32(0);
        // The newest minor version of protocol 3 this side speaks: 3.0.
        out.put_i32(3 << 16);
        out.put_i32(unknown.len() as i32);
        for name in unknown {
            put_cstr(&mut out, name.as_bytes());
        }
        super::codec::patch_len(&mut out, start);
    }
    if !tls && !shared.cfg.cleartext_allowed_without_tls() {
        let msg = "the gateway accepts passwords only over TLS; connect with sslmode=require";
        shared
            .gate
            .login_refused(&connection, &user, "tls_required", msg)
            .await;
        return Err(fatal(&mut stream, sqlstate::INVALID_AUTHORIZATION, msg).await);
    }
    let offer = match (tls, &shared.tls_end_point) {
        (true, Some(end_point)) => Offer::WithPlus(end_point.clone()),
        _ => Offer::ScramOnly,
    };
    let login = super::auth::authenticate(
        &mut stream,
        out,
        &connection,
        &user,
        offer,
        shared,
        deadline,
    );
    let requester = match login.await? {
        Some(r) => r,
        None => return Ok(()),
    };
    let Some(target) = shared.gate.upstream(&connection) else {
        let msg = format!("connection \"{connection}\" does not exist; use a connection name the gateway is configured with");
        return Err(fatal(&mut stream, sqlstate::INVALID_CATALOG_NAME, &msg).await);
    };
    if let Err(msg) = startup_settings_allowed(&params) {
        tracing::warn!(connection = %connection, requester = %requester.key(), reason = %msg, "refused a startup setting");
        return Err(fatal(&mut stream, sqlstate::INSUFFICIENT_PRIVILEGE, &msg).await);
    }
    let passthrough: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| is_setting_parameter(k))
        .cloned()
        .collect();
    let upstream = match timeout_at(deadline, upstream::connect(&target, &passthrough)).await {
        Ok(Ok(u)) => u,
        Ok(Err(e)) => {
            tracing::warn!(connection = %connection, error = ?e, "upstream login failed");
            return Err(fatal(&mut stream, sqlstate::CONNECTION_FAILURE, &e.to_string()).await);
        }
        Err(_) => {
            let msg = "timed out connecting to the upstream database; check that it is reachable";
            return Err(fatal(&mut stream, sqlstate::CONNECTION_FAILURE, msg).await);
        }
    };
    let Upstream {
        stream: upstream_stream,
        parameter_status,
        notices,
        key: backend_key,
        ready_status,
        leftover,
    } = upstream;
    let upstream_addr = (target.host.clone(), target.port, target.tls.clone());
    let (key, signal) = shared.cancels.register(upstream_addr.clone(), backend_key);

    let mut hello = BytesMut::with_capacity(parameter_status.len() + notices.len() + 64);
    put_auth(&mut hello, 0);
    put_login_notices(
        &mut hello,
        &notices,
        shared.gate.masking(&connection).is_some(),
    );
    hello.extend_from_slice(&parameter_status);
    put_backend_key(&mut hello, key.pid, key.secret);
    put_ready(&mut hello, ready_status);
    if let Err(e) = send(&mut stream, &hello).await {
        shared.cancels.unregister(key);
        return Err(e.into());
    }

    let session = Arc::new(SessionInfo {
        id: countersign_bot::SessionId::new(),
        connection,
        requester,
        client_addr: peer,
        application_name: param(&params, "application_name").map(str::to_string),
        started_at: countersign_bot::clock::now(),
    });
    shared.recorder.started(&session).await;
    let result = relay(
        stream,
        upstream_stream,
        (leftover, parameter_status, name_context(&passthrough)),
        ready_status,
        &session,
        (signal, (upstream_addr, backend_key)),
        shared,
    )
    .await;
    shared.cancels.unregister(key);
    shared.recorder.ended(&session).await;
    result
}

async fn relay<S: Halves>(
    stream: S,
    upstream: UpstreamStream,
    (leftover, startup_status, name_context): (BytesMut, BytesMut, Vec<String>),
    ready_status: u8,
    session: &Arc<SessionInfo>,
    (signal, upstream_key): (Arc<CancelSignal>, (UpstreamAddr, BackendKey)),
    shared: &Shared,
) -> Result<(), WireError> {
    let mut sbuf = BytesMut::with_capacity(32 * 1024);
    sbuf.extend_from_slice(&leftover);
    let ctx = SessionCtx {
        gate: shared.gate.clone(),
        session: session.clone(),
        recorder: shared.recorder.clone(),
        signal,
        hold_wait: shared.cfg.hold_wait,
        max_message_size: shared.cfg.max_message_size,
        masking: shared.gate.masking(&session.connection),
        table_lookup: shared.gate.table_lookup(&session.connection),
        startup_status,
        name_context,
        shutdown: shared.shutdown.clone(),
        cancel_busy: shared.cancel_busy.clone(),
        upstream_key,
    };
    // One monomorphised relay per upstream kind: the plain path reads and writes the TCP halves directly.
    match upstream {
        UpstreamStream::Plain(tcp) => {
            Relay::new(stream.halves(), tcp.into_split(), sbuf, ready_status, ctx)
                .run()
                .await
        }
        UpstreamStream::Unix(unix) => {
            Relay::new(stream.halves(), unix.into_split(), sbuf, ready_status, ctx)
                .run()
                .await
        }
        UpstreamStream::Tls(tls) => {
            Relay::new(
                stream.halves(),
                tokio::io::split(*tls),
                sbuf,
                ready_status,
                ctx,
            )
            .run()
            .await
        }
    }
}

/// Appends the upstream login's NoticeResponse `frames` (PostgreSQL sends them after AuthenticationOk,
/// before its ParameterStatus). On a masked connection their text is withheld as any notice's would be
/// (no statement has run, so nothing they quote was written by the client).
fn put_login_notices(out: &mut BytesMut, mut frames: &[u8], masked: bool) {
    while let Some((_, total)) = super::codec::frame_header(frames) {
        let Some(frame) = frames.get(..total).filter(|_| total != usize::MAX) else {
            break;
        };
        if !(masked && crate::masking::messages::redact_frame(frame, "", out)) {
            out.extend_from_slice(frame);
        }
        frames = &frames[total..];
    }
}

/// The startup settings that decide what statements mean (`search_path`, the role, DateStyle, …:
/// [`crate::policy::settings::shapes_meaning`]), as `name=value`, including those `options` sets
/// (however spelled: `-c search_path=…`, `--search-path=…`).
fn name_context(passthrough: &[(String, String)]) -> Vec<String> {
    use crate::policy::settings::shapes_meaning;
    let mut context = Vec::new();
    for (k, v) in passthrough {
        let k = k.to_ascii_lowercase();
        if k == "options" {
            match super::startup_options::settings_in(v) {
                Ok(settings) => context.extend(
                    settings
                        .into_iter()
                        .filter(|(name, _)| shapes_meaning(name))
                        .map(|(name, value)| format!("(at connect) {name}={value}")),
                ),
                // (Refused at login anyway; kept whole so it can only narrow an approval.)
                Err(_) => context.push(format!("(at connect) options={v}")),
            }
        } else if shapes_meaning(&k) {
            context.push(format!("(at connect) {k}={v}"));
        }
    }
    context
}

/// True for the startup parameters PostgreSQL applies as session settings: all but `user`, `database`,
/// `replication` and protocol extensions (`_pq_.…`).
fn is_setting_parameter(key: &str) -> bool {
    !matches!(key, "user" | "database" | "replication") && !key.starts_with("_pq_.")
}

/// Startup parameters other than `user`, `database` and `replication` are session settings to
/// PostgreSQL (and `options` carries more of them): each must be one policy lets `SET` change
/// without review, or the connection is refused with a message saying how to ask for it.
fn startup_settings_allowed(params: &[(String, String)]) -> Result<(), String> {
    use crate::policy::{settings::setting_verdict, Action};
    for (key, value) in params {
        if !is_setting_parameter(key) {
            continue;
        }
        let settings = if key == "options" {
            super::startup_options::settings_in(value).map_err(|e| e.to_string())?
        } else {
            vec![(key.to_ascii_lowercase(), value.clone())]
        };
        for (name, value) in settings {
            let (action, reason) = setting_verdict(&name, &value);
            if action != Action::Allow {
                return Err(format!(
                    "the startup setting {name} is not allowed through the gateway ({reason}); connect without it and run SET {name} in the session, where policy reviews it"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::codec::{put_error, Severity};

    #[test]
    fn connect_settings_that_shape_meaning_bind_approvals_however_spelled() {
        let p = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert_eq!(
            name_context(&p(&[
                ("application_name", "psql"),
                (
                    "options",
                    "--search-path=adv_s -c statement_timeout=5s -cDateStyle=ISO,DMY"
                ),
                ("TimeZone", "UTC"),
                ("client_encoding", "UTF8"),
            ])),
            vec![
                "(at connect) search_path=adv_s".to_string(),
                "(at connect) datestyle=ISO,DMY".to_string(),
                "(at connect) timezone=UTC".to_string(),
            ]
        );
        assert!(name_context(&p(&[("application_name", "psql")])).is_empty());
    }

    #[test]
    fn login_notices_pass_as_sent_and_lose_their_text_on_masked_connections() {
        let mut frames = BytesMut::new();
        let message = "identifier \"xxx\" will be truncated to \"xx\"";
        put_error(&mut frames, Severity::Notice, "42622", message, None);
        put_error(&mut frames, Severity::Notice, "01000", "second", None);
        let mut plain = BytesMut::new();
        put_login_notices(&mut plain, &frames, false);
        assert_eq!(plain, frames);
        let mut masked = BytesMut::new();
        put_login_notices(&mut masked, &frames, true);
        let text = String::from_utf8_lossy(&masked);
        let mut tags = Vec::new();
        let mut rest = &masked[..];
        while let Some((tag, total)) = crate::pg::codec::frame_header(rest) {
            tags.push(tag);
            rest = &rest[total..];
        }
        assert_eq!(tags, [b'N', b'N'], "{text}");
        assert!(
            !text.contains("identifier") && !text.contains("second"),
            "{text}"
        );
        assert!(text.contains("withheld"), "{text}");
    }
}
