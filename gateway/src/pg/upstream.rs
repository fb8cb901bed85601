//! Connecting and logging in to the real database with the gateway's credential (trust, cleartext,
//! MD5, SCRAM-SHA-256, or over TLS SCRAM-SHA-256-PLUS bound to the server's certificate as libpq's
//! `channel_binding` says), over TLS when the target's `sslmode` asks for it. The client never sees that
//! credential.

use super::cancel::BackendKey;
use super::channel_binding::tls_server_end_point;
use super::codec::{error_fields, read_frame, send};
use super::gate::UpstreamTarget;
use super::upstream_tls::{open, ChannelBindingMode, NegotiateError, UpstreamStream};
use bytes::{Bytes, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{
    ChannelBinding, ScramSha256, SCRAM_SHA_256, SCRAM_SHA_256_PLUS,
};
use postgres_protocol::message::frontend;

const MAX_STARTUP_FRAME: usize = 1024 * 1024;

/// An upstream session ready for queries.
pub struct Upstream {
    /// The connection (plain or TLS), positioned after the first ReadyForQuery.
    pub stream: UpstreamStream,
    /// Raw ParameterStatus frames to relay to the client.
    pub parameter_status: BytesMut,
    /// Raw NoticeResponse frames of the login (e.g. an `application_name` PostgreSQL truncates), in
    /// order, to relay to the client as PostgreSQL would.
    pub notices: BytesMut,
    /// The upstream's cancel key.
    pub key: BackendKey,
    /// Transaction status of the first ReadyForQuery.
    pub ready_status: u8,
    /// Bytes read past the first ReadyForQuery (normally none).
    pub leftover: BytesMut,
}

/// Why the upstream session could not be established.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP or I/O failure.
    #[error("could not reach the upstream database: {0}; check that it is running and reachable")]
    Io(#[from] std::io::Error),
    /// The upstream answered with an error.
    #[error("the upstream database refused the session (SQLSTATE {code}); check the connection's upstream credential and database")]
    Refused {
        /// Upstream SQLSTATE.
        code: String,
        /// Upstream message; logged, not shown to clients (it can name the upstream user).
        message: String,
    },
    /// TLS was required but refused, or its handshake failed.
    #[error(transparent)]
    Tls(NegotiateError),
    /// `channel_binding=require` and the login would not be bound to the TLS session.
    #[error("the upstream login is not channel-bound, but the connection's upstream_url has channel_binding=require: {0}")]
    ChannelBinding(String),
    /// The upstream asked for something the gateway can't do.
    #[error("the upstream database requires {0}; configure a password or trust/md5/SCRAM-SHA-256 auth for the gateway's user")]
    Unsupported(String),
}

/// Connects and logs in; `params` are the client's startup parameters to pass through.
pub async fn connect(
    target: &UpstreamTarget,
    params: &[(String, String)],
) -> Result<Upstream, UpstreamError> {
    let mut stream = match open(&target.host, target.port, &target.tls).await {
        Ok(s) => s,
        Err(NegotiateError::Io(e)) => return Err(e.into()),
        Err(e) => return Err(UpstreamError::Tls(e)),
    };
    let mut out = BytesMut::new();
    let all = [
        ("user", target.user.as_str()),
        ("database", target.database.as_str()),
    ]
    .into_iter()
    .chain(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    frontend::startup_message(all, &mut out)?;
    // A TLS alert about the client certificate can arrive on the first read (TLS 1.3): say so.
    let io = |e: std::io::Error| match target.tls.explain_io(e) {
        NegotiateError::Io(e) => UpstreamError::Io(e),
        e => UpstreamError::Tls(e),
    };
    send(&mut stream, &out).await.map_err(io)?;

    let mut buf = BytesMut::with_capacity(4096);
    let mut parameter_status = BytesMut::new();
    let mut notices = BytesMut::new();
    let mut key = BackendKey { pid: 0, secret: 0 };
    let mut login = Login::default();
    loop {
        let (tag, body) = read_frame(&mut stream, &mut buf, MAX_STARTUP_FRAME)
            .await
            .map_err(io)?;
        match tag {
            b'R' => {
                out.clear();
                authenticate_step(target, &stream, &body, &mut login, &mut out)?;
                if !out.is_empty() {
                    send(&mut stream, &out).await.map_err(io)?;
                }
            }
            b'S' => put_frame(&mut parameter_status, tag, &body),
            b'N' => put_frame(&mut notices, tag, &body),
            b'K' if body.len() >= 8 => {
                key = BackendKey {
                    pid: i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                    secret: i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
                };
            }
            b'E' => {
                let mut code = String::new();
                let mut message = String::new();
                for (field, value) in error_fields(&body) {
                    match field {
                        b'C' => code = String::from_utf8_lossy(value).into_owned(),
                        b'M' => message = String::from_utf8_lossy(value).into_owned(),
                        _ => {}
                    }
                }
                return Err(UpstreamError::Refused { code, message });
            }
            b'Z' => {
                let ready_status = body.first().copied().unwrap_or(b'I');
                return Ok(Upstream {
                    stream,
                    parameter_status,
                    notices,
                    key,
                    ready_status,
                    leftover: buf,
                });
            }
            // NegotiateProtocolVersion: nothing to do.
            _ => {}
        }
    }
}

/// Where the authentication exchange stands.
#[derive(Default)]
struct Login {
    scram: Option<ScramSha256>,
    /// SCRAM-SHA-256-PLUS was selected.
    bound: bool,
    /// The server's SCRAM signature was verified (AuthenticationSASLFinal).
    scram_done: bool,
}

fn authenticate_step(
    target: &UpstreamTarget,
    stream: &UpstreamStream,
    body: &Bytes,
    login: &mut Login,
    out: &mut BytesMut,
) -> Result<(), UpstreamError> {
    let code = body
        .get(..4)
        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(-1);
    let data = body.get(4..).unwrap_or_default();
    let password = || {
        target
            .password
            .as_deref()
            .ok_or_else(|| UpstreamError::Unsupported("a password, but none is configured".into()))
    };
    let require = target.tls.channel_binding() == ChannelBindingMode::Require;
    // As libpq: with channel_binding=require, no password leaves for a login that can't be bound.
    let unbound = |method: &str| {
        UpstreamError::ChannelBinding(format!(
            "the server asked for {method}; have it authenticate the gateway's user with scram-sha-256 on a hostssl line, or set channel_binding=prefer"
        ))
    };
    match code {
        0 if login.scram.is_some() && !login.scram_done => {
            // A server that skips its own proof could be anyone.
            return Err(UpstreamError::Unsupported(
                "a SCRAM login that ends before the server proved it knows the password".into(),
            ));
        }
        0 if require && !login.bound => {
            return Err(unbound(if login.scram.is_some() {
                "SCRAM-SHA-256 without channel binding"
            } else {
                "no authentication (trust)"
            }))
        }
        0 => {}
        3 if require => return Err(unbound("a cleartext password")),
        3 => frontend::password_message(password()?.as_bytes(), out)?,
        5 if require => return Err(unbound("an MD5 password")),
        5 => {
            let salt: [u8; 4] = data
                .get(..4)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| UpstreamError::Unsupported("a malformed MD5 challenge".into()))?;
            let hashed = md5_hash(target.user.as_bytes(), password()?.as_bytes(), salt);
            frontend::password_message(hashed.as_bytes(), out)?;
        }
        10 => {
            let offered = |name: &str| data.split(|&b| b == 0).any(|m| m == name.as_bytes());
            let (mechanism, binding) = choose_mechanism(
                target.tls.channel_binding(),
                stream,
                offered(SCRAM_SHA_256_PLUS),
                offered(SCRAM_SHA_256),
            )?;
            let client = ScramSha256::new(password()?.as_bytes(), binding);
            frontend::sasl_initial_response(mechanism, client.message(), out)?;
            login.bound = mechanism == SCRAM_SHA_256_PLUS;
            login.scram = Some(client);
        }
        11 => {
            let client = login
                .scram
                .as_mut()
                .ok_or_else(|| UpstreamError::Unsupported("SASL out of order".into()))?;
            client.update(data)?;
            frontend::sasl_response(client.message(), out)?;
        }
        12 => {
            let client = login
                .scram
                .as_mut()
                .ok_or_else(|| UpstreamError::Unsupported("SASL out of order".into()))?;
            client.finish(data)?;
            login.scram_done = true;
        }
        other => {
            return Err(UpstreamError::Unsupported(format!(
                "authentication method {other}"
            )))
        }
    }
    Ok(())
}

/// Picks the SASL mechanism and the GS2 channel-binding flag as libpq does: SCRAM-SHA-256-PLUS with the
/// server certificate's hash when the session is TLS, the server offers it and binding isn't disabled;
/// otherwise SCRAM-SHA-256 with `y` (the client could bind but the server didn't offer it: a server that
/// did will see the downgrade) over TLS, or `n` over plaintext or with `channel_binding=disable`.
fn choose_mechanism(
    mode: ChannelBindingMode,
    stream: &UpstreamStream,
    offers_plus: bool,
    offers_scram: bool,
) -> Result<(&'static str, ChannelBinding), UpstreamError> {
    let require = mode == ChannelBindingMode::Require;
    let cert = stream.server_certificate();
    if mode != ChannelBindingMode::Disable && offers_plus {
        if let Some(cert) = cert {
            match tls_server_end_point(cert) {
                Ok(hash) => {
                    return Ok((
                        SCRAM_SHA_256_PLUS,
                        ChannelBinding::tls_server_end_point(hash),
                    ))
                }
                Err(e) if require => {
                    return Err(UpstreamError::ChannelBinding(format!(
                        "the upstream's certificate can't be bound to: {e}"
                    )))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "upstream SCRAM login without channel binding");
                    // 'n': this client can't bind to this certificate; 'y' would read as a downgrade.
                    if offers_scram {
                        return Ok((SCRAM_SHA_256, ChannelBinding::unsupported()));
                    }
                }
            }
        }
    }
    if require {
        return Err(UpstreamError::ChannelBinding(if cert.is_none() {
            "the upstream connection is not TLS (the server did not offer it, and sslmode=prefer went on without); set sslmode=require".into()
        } else {
            "the server did not offer SCRAM-SHA-256-PLUS; have it authenticate the gateway's user with scram-sha-256 on a hostssl line, or set channel_binding=prefer".into()
        }));
    }
    if !offers_scram {
        return Err(UpstreamError::Unsupported(if offers_plus {
            "SCRAM-SHA-256-PLUS only, which channel_binding=disable (or a plaintext connection) rules out".into()
        } else {
            "a SASL mechanism other than SCRAM-SHA-256".into()
        }));
    }
    let binding = if cert.is_some() && mode != ChannelBindingMode::Disable {
        ChannelBinding::unrequested()
    } else {
        ChannelBinding::unsupported()
    };
    Ok((SCRAM_SHA_256, binding))
}

fn put_frame(buf: &mut BytesMut, tag: u8, body: &[u8]) {
    buf.extend_from_slice(&[tag]);
    buf.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    buf.extend_from_slice(body);
}
