//! Client authentication after the startup packet: SCRAM-SHA-256 for users that name a static identity
//! with a verifier (or for every user when `[wire] auth = "scram"`), else a cleartext password carrying
//! the agent's JWT or static token. Over TLS, SCRAM-SHA-256-PLUS is offered first (channel binding to
//! the listener's certificate).

use super::codec::{put_auth, read_frame_exact, send, sqlstate};
use super::config::WireAuth;
use super::error::WireError;
use super::gate::WireAuthError;
use super::scram::{Mechanism, Offer, ScramError, ScramServer};
use super::session::{fatal, Shared};
use bytes::{BufMut, Bytes, BytesMut};
use countersign_bot::RequesterChain;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{timeout_at, Instant};

const MAX_PASSWORD_MESSAGE: usize = 64 * 1024;

/// AuthenticationSASL / SASLContinue / SASLFinal codes.
const AUTH_SASL: i32 = 10;
const AUTH_SASL_CONTINUE: i32 = 11;
const AUTH_SASL_FINAL: i32 = 12;
const AUTH_CLEARTEXT: i32 = 3;

/// Who logged in, or `None` when the client hung up at the password prompt (psql does, to ask for one).
pub(super) type Login = Option<RequesterChain>;

/// Runs the authentication exchange; `out` holds anything to send before the first request
/// (NegotiateProtocolVersion); `offer` says whether SCRAM-SHA-256-PLUS is offered (TLS) and with which
/// binding data. On success the caller sends AuthenticationOk.
pub(super) async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    mut out: BytesMut,
    connection: &str,
    user: &str,
    offer: Offer,
    shared: &Shared,
    deadline: Instant,
) -> Result<Login, WireError> {
    let verifier = shared.gate.scram_verifier(user);
    if verifier.is_none() && shared.cfg.auth == WireAuth::Auto {
        put_auth(&mut out, AUTH_CLEARTEXT);
        send(stream, &out).await?;
        return cleartext(stream, connection, user, shared, deadline).await;
    }
    put_sasl(&mut out, AUTH_SASL, |b| {
        for mechanism in offer.mechanisms() {
            b.put_slice(mechanism.as_bytes());
            b.put_u8(0);
        }
        b.put_u8(0);
    });
    send(stream, &out).await?;

    let Some(body) = next_message(stream, deadline).await? else {
        return Ok(None);
    };
    let (mechanism, first) = match sasl_initial_response(&body, &offer) {
        Ok(chosen) => chosen,
        Err(msg) => {
            shared
                .gate
                .login_refused(connection, user, "sasl_mechanism", &msg)
                .await;
            return Err(fatal(stream, sqlstate::PROTOCOL_VIOLATION, &msg).await);
        }
    };
    let mut scram = ScramServer::new(verifier, user, &shared.scram_mock_secret, offer);
    let server_first = match scram.client_first(mechanism, first) {
        Ok(m) => m,
        Err(e) => return Err(scram_failed(stream, e, connection, user, shared).await),
    };
    let mut out = BytesMut::new();
    put_sasl(&mut out, AUTH_SASL_CONTINUE, |b| b.put_slice(&server_first));
    send(stream, &out).await?;

    let Some(body) = next_message(stream, deadline).await? else {
        return Ok(None);
    };
    let server_final = match scram.client_final(&body) {
        Ok(m) => m,
        Err(e) => return Err(scram_failed(stream, e, connection, user, shared).await),
    };
    let requester = match shared.gate.scram_verified(connection, user).await {
        Ok(r) => r,
        Err(e) => return Err(refused(stream, e).await),
    };
    let mut out = BytesMut::new();
    put_sasl(&mut out, AUTH_SASL_FINAL, |b| b.put_slice(&server_final));
    send(stream, &out).await?;
    Ok(Some(requester))
}

async fn cleartext<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    connection: &str,
    user: &str,
    shared: &Shared,
    deadline: Instant,
) -> Result<Login, WireError> {
    let Some(body) = next_message(stream, deadline).await? else {
        return Ok(None);
    };
    let Some(Ok(password)) = body.strip_suffix(&[0]).map(std::str::from_utf8) else {
        let msg = "expected a password message";
        return Err(fatal(stream, sqlstate::PROTOCOL_VIOLATION, msg).await);
    };
    match shared.gate.authenticate(connection, user, password).await {
        Ok(r) => Ok(Some(r)),
        Err(e) => Err(refused(stream, e).await),
    }
}

/// Reads the next PasswordMessage / SASLInitialResponse / SASLResponse (all tagged `p`); `None` on EOF.
async fn next_message<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    deadline: Instant,
) -> Result<Option<Bytes>, WireError> {
    // Exactly one frame: a client may pipeline its first query behind the password.
    match timeout_at(deadline, read_frame_exact(stream, MAX_PASSWORD_MESSAGE)).await {
        Err(_) => {
            let msg = "startup timed out waiting for the password";
            Err(fatal(stream, sqlstate::PROTOCOL_VIOLATION, msg).await)
        }
        // Clients such as psql hang up here to prompt for a password, then reconnect.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Ok(Err(e)) => Err(fatal(stream, sqlstate::PROTOCOL_VIOLATION, &e.to_string()).await),
        Ok(Ok((b'p', body))) => Ok(Some(body)),
        Ok(Ok(_)) => {
            let msg = "expected a password or SASL response message";
            Err(fatal(stream, sqlstate::PROTOCOL_VIOLATION, msg).await)
        }
    }
}

/// The chosen mechanism and the client-first-message inside a SASLInitialResponse (mechanism, Int32
/// length, data); the mechanism must be one that `offer` advertised.
fn sasl_initial_response<'b>(
    body: &'b [u8],
    offer: &Offer,
) -> Result<(Mechanism, &'b [u8]), String> {
    let nul = body
        .iter()
        .position(|&b| b == 0)
        .ok_or("malformed SASLInitialResponse")?;
    let Some(mechanism) = offer.choose(&body[..nul]) else {
        return Err(format!(
            "the client selected SASL mechanism \"{}\"; the gateway offers only {} on this connection{}",
            String::from_utf8_lossy(&body[..nul]),
            offer.mechanisms().join(" and "),
            match offer {
                Offer::ScramOnly => " (channel binding needs TLS: connect with sslmode=require)",
                Offer::WithPlus(_) => "",
            }
        ));
    };
    let rest = &body[nul + 1..];
    let len = rest
        .get(..4)
        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or("malformed SASLInitialResponse")?;
    let data = &rest[4..];
    if len < 0 || len as usize != data.len() {
        return Err("SASLInitialResponse without a client-first-message".into());
    }
    Ok((mechanism, data))
}

async fn scram_failed<S: AsyncWrite + Unpin>(
    stream: &mut S,
    error: ScramError,
    connection: &str,
    user: &str,
    shared: &Shared,
) -> WireError {
    shared.gate.scram_refused(connection, user, &error).await;
    match error {
        ScramError::Malformed(msg) => fatal(stream, sqlstate::PROTOCOL_VIOLATION, &msg).await,
        ScramError::Failed => {
            let e = WireAuthError::BadPassword {
                user: user.to_string(),
            };
            refused(stream, e).await
        }
        ScramError::ChannelBinding(msg) => {
            fatal(stream, sqlstate::INVALID_AUTHORIZATION, &msg).await
        }
    }
}

async fn refused<S: AsyncWrite + Unpin>(stream: &mut S, error: WireAuthError) -> WireError {
    let code = match error {
        WireAuthError::BadPassword { .. } => sqlstate::INVALID_PASSWORD,
        WireAuthError::UnknownConnection { .. } => sqlstate::INVALID_CATALOG_NAME,
    };
    fatal(stream, code, &error.to_string()).await
}

fn put_sasl(out: &mut BytesMut, code: i32, data: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_u8(b'R');
    out.put_i32(0);
    out.put_i32(code);
    data(out);
    super::codec::patch_len(out, start);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sasl_initial_response_yields_the_mechanism_and_the_client_first_message() {
        let plaintext = Offer::ScramOnly;
        let tls = Offer::WithPlus(vec![1; 32]);
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        body.extend_from_slice(&7i32.to_be_bytes());
        body.extend_from_slice(b"n,,n=,r");
        for offer in [&plaintext, &tls] {
            assert_eq!(
                sasl_initial_response(&body, offer).unwrap(),
                (Mechanism::Scram, &b"n,,n=,r"[..])
            );
        }
        let mut plus = b"SCRAM-SHA-256-PLUS\0".to_vec();
        plus.extend_from_slice(&4i32.to_be_bytes());
        plus.extend_from_slice(b"p=x,");
        // PLUS is offered, and so accepted, only over TLS.
        assert_eq!(
            sasl_initial_response(&plus, &tls).unwrap(),
            (Mechanism::ScramPlus, &b"p=x,"[..])
        );
        let refused = sasl_initial_response(&plus, &plaintext).unwrap_err();
        assert!(
            refused.contains("offers only SCRAM-SHA-256 on"),
            "{refused}"
        );
        assert!(refused.contains("sslmode=require"), "{refused}");
        let mut none = b"SCRAM-SHA-256\0".to_vec();
        none.extend_from_slice(&(-1i32).to_be_bytes());
        assert!(sasl_initial_response(&none, &tls).is_err());
        assert!(sasl_initial_response(b"SCRAM", &tls).is_err());
    }

    #[test]
    fn sasl_frames_carry_their_code_and_length() {
        let mut out = BytesMut::new();
        put_sasl(&mut out, AUTH_SASL_FINAL, |b| b.put_slice(b"v=abc"));
        assert_eq!(
            &out[..],
            &[b'R', 0, 0, 0, 13, 0, 0, 0, 12, b'v', b'=', b'a', b'b', b'c']
        );
    }
}
