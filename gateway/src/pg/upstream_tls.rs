//! TLS from the gateway to the upstream database, as libpq's `sslmode` and `sslrootcert` describe it:
//! SSLRequest, then a rustls handshake on 'S'; on 'N' plaintext only for `prefer`.
//!
//! | sslmode       | TLS            | certificate checked                                        |
//! |---------------|----------------|------------------------------------------------------------|
//! | `disable`     | never          | —                                                          |
//! | `prefer`      | if offered     | chain against `sslrootcert` when set, else not at all      |
//! | `require`     | always         | chain against `sslrootcert` when set, else not at all      |
//! | `verify-ca`   | always         | chain against `sslrootcert` (required)                     |
//! | `verify-full` | always         | chain against `sslrootcert` (required) and the host name   |
//!
//! `sslrootcert=system` uses the operating system's roots and, as in libpq, requires `verify-full`.
//! `sslcert` and `sslkey` (given together) name a PEM client certificate and its key, presented when the
//! server asks for one.
//! The connection is either [`UpstreamStream::Plain`] or [`UpstreamStream::Tls`]; the relay is generic over
//! the socket halves, so the plain path has no extra indirection.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::fmt;
use std::io::BufReader;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// TLS when the server offers it (libpq's default).
    Prefer,
    /// TLS or fail.
    Require,
    /// TLS with a certificate chain to `sslrootcert`.
    VerifyCa,
    /// As `verify-ca`, and the certificate must name the host.
    VerifyFull,
}

impl SslMode {
    /// Parses the URL value (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`).
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }

    /// The URL spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// True when a server without TLS must be refused.
    pub fn requires_tls(self) -> bool {
        matches!(self, Self::Require | Self::VerifyCa | Self::VerifyFull)
    }
}

/// libpq's `channel_binding`: whether the SCRAM login binds to the TLS session (SCRAM-SHA-256-PLUS with
/// `tls-server-end-point`), which detects a machine in the middle even when the certificate isn't verified.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ChannelBindingMode {
    /// Never bind.
    Disable,
    /// Bind when the connection is TLS and the server offers SCRAM-SHA-256-PLUS (libpq's default).
    #[default]
    Prefer,
    /// Fail unless the login was SCRAM-SHA-256-PLUS (so also for trust, password and md5 logins).
    Require,
}

impl ChannelBindingMode {
    /// Parses the URL value (`disable`, `prefer`, `require`).
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            _ => return None,
        })
    }
}

/// Where the trusted roots come from (`sslrootcert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file of CA certificates.
    File(PathBuf),
    /// The operating system's trust store (`sslrootcert=system`).
    System,
}

/// A client certificate and its private key (`sslcert` / `sslkey`), both PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// The certificate chain, the client's own certificate first.
    pub cert: PathBuf,
    /// The private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    pub key: PathBuf,
}

/// A TLS setting that can't be used; the message says how to fix the URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamTlsError {
    /// `sslmode` has an unknown value.
    #[error("sslmode={0:?} is unknown; use disable, prefer, require, verify-ca or verify-full")]
    BadMode(String),
    /// verify-* without roots.
    #[error(
        "sslmode={0} needs trusted roots; add sslrootcert=/path/to/ca.pem (or sslrootcert=system)"
    )]
    NoRootCert(&'static str),
    /// `sslrootcert=system` with a mode that does not check the host name.
    #[error(
        "sslrootcert=system requires sslmode=verify-full (as in libpq); set it or name a CA file"
    )]
    SystemNeedsVerifyFull,
    /// The root file can't be read or holds no certificate.
    #[error("sslrootcert {path}: {reason}; point it at a readable PEM file of CA certificates")]
    RootCert {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Only one of `sslcert` and `sslkey` is set.
    #[error("{given} is set but {missing} is not; give both sslcert=/path/client.crt and sslkey=/path/client.key, or neither")]
    ClientCertHalf {
        /// The parameter that is set.
        given: &'static str,
        /// The one that is missing.
        missing: &'static str,
    },
    /// The client certificate or key file can't be read or holds nothing usable.
    #[error("{param} {path}: {reason}; {fix}")]
    ClientCert {
        /// `sslcert` or `sslkey`.
        param: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
        /// What to do about it.
        fix: &'static str,
    },
    /// `channel_binding` has an unknown value.
    #[error("channel_binding={0:?} is unknown; use disable, prefer or require")]
    BadChannelBinding(String),
    /// `channel_binding=require` on a connection that can never be TLS.
    #[error("channel_binding=require needs TLS, but {0}; use sslmode=require (or verify-ca, verify-full) over TCP, or lower channel_binding")]
    ChannelBindingWithoutTls(&'static str),
    /// A libpq TLS parameter the gateway does not implement.
    #[error("{0} is not supported by the gateway's upstream client; remove it (CRLs and encrypted keys are not implemented)")]
    Unsupported(String),
}

/// How to secure one upstream connection: the mode and, unless disabled, a ready rustls configuration.
#[derive(Clone)]
pub struct UpstreamTls {
    mode: SslMode,
    root_cert: Option<RootCert>,
    client_cert: Option<ClientCert>,
    channel_binding: ChannelBindingMode,
    config: Option<Arc<ClientConfig>>,
}

impl Default for UpstreamTls {
    /// `disable`: what a target built by hand gets. URLs without `sslmode` get `prefer`, as in libpq.
    fn default() -> Self {
        Self {
            mode: SslMode::Disable,
            root_cert: None,
            client_cert: None,
            channel_binding: ChannelBindingMode::Prefer,
            config: None,
        }
    }
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("mode", &self.mode)
            .field("root_cert", &self.root_cert)
            .field("client_cert", &self.client_cert)
            .field("channel_binding", &self.channel_binding)
            .finish()
    }
}

// Two settings are equal when they were written the same; the built configuration follows from them.
impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.mode == other.mode
            && self.root_cert == other.root_cert
            && self.client_cert == other.client_cert
            && self.channel_binding == other.channel_binding
    }
}
impl Eq for UpstreamTls {}

impl UpstreamTls {
    /// Loads the roots and the client certificate and builds the rustls configuration once (at config
    /// load), so connecting never touches the file system and a bad file fails at start-up.
    pub fn new(
        mode: SslMode,
        root_cert: Option<RootCert>,
        client_cert: Option<ClientCert>,
    ) -> Result<Self, UpstreamTlsError> {
        if mode == SslMode::Disable {
            return Ok(Self {
                mode,
                root_cert,
                client_cert,
                channel_binding: ChannelBindingMode::Prefer,
                config: None,
            });
        }
        if root_cert == Some(RootCert::System) && mode != SslMode::VerifyFull {
            return Err(UpstreamTlsError::SystemNeedsVerifyFull);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = root_cert.as_ref().map(load_roots).transpose()?;
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| UpstreamTlsError::Unsupported(e.to_string()))?;
        let builder = match (mode, roots) {
            (SslMode::VerifyFull, Some(roots)) => builder.with_root_certificates(roots),
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                return Err(UpstreamTlsError::NoRootCert(mode.as_str()))
            }
            // libpq: with a root file, prefer/require check the chain like verify-ca.
            (_, Some(roots)) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly {
                    roots: Arc::new(roots),
                    provider,
                })),
            (_, None) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified { provider })),
        };
        let config = match &client_cert {
            None => builder.with_no_client_auth(),
            Some(files) => {
                let (chain, key) = load_client_cert(files)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| UpstreamTlsError::ClientCert {
                        param: "sslkey",
                        path: files.key.clone(),
                        reason: format!("unusable with sslcert {} ({e})", files.cert.display()),
                        fix: "give the key that belongs to the certificate (RSA, ECDSA P-256/P-384 or Ed25519)",
                    })?
            }
        };
        Ok(Self {
            mode,
            root_cert,
            client_cert,
            channel_binding: ChannelBindingMode::Prefer,
            config: Some(Arc::new(config)),
        })
    }

    /// The configured `sslmode`.
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// The configured `sslrootcert`.
    pub fn root_cert(&self) -> Option<&RootCert> {
        self.root_cert.as_ref()
    }

    /// The configured `sslcert` / `sslkey`.
    pub fn client_cert(&self) -> Option<&ClientCert> {
        self.client_cert.as_ref()
    }

    /// Sets `channel_binding`; `require` is refused with `sslmode=disable`, where it could never succeed.
    pub fn with_channel_binding(
        mut self,
        mode: ChannelBindingMode,
    ) -> Result<Self, UpstreamTlsError> {
        if mode == ChannelBindingMode::Require && self.mode == SslMode::Disable {
            return Err(UpstreamTlsError::ChannelBindingWithoutTls(
                "sslmode=disable never uses it",
            ));
        }
        self.channel_binding = mode;
        Ok(self)
    }

    /// The configured `channel_binding`.
    pub fn channel_binding(&self) -> ChannelBindingMode {
        self.channel_binding
    }
}

/// Reads the client certificate chain and its private key (PKCS#8, PKCS#1 or SEC1).
fn load_client_cert(
    files: &ClientCert,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), UpstreamTlsError> {
    let cert_err = |reason: String| UpstreamTlsError::ClientCert {
        param: "sslcert",
        path: files.cert.clone(),
        reason,
        fix: "point it at a readable PEM file holding the client certificate",
    };
    let key_err = |reason: String| UpstreamTlsError::ClientCert {
        param: "sslkey",
        path: files.key.clone(),
        reason,
        fix: "point it at a readable, unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1)",
    };
    let file = std::fs::File::open(&files.cert).map_err(|e| cert_err(e.to_string()))?;
    let chain = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("no certificate found".into()));
    }
    let file = std::fs::File::open(&files.key).map_err(|e| key_err(e.to_string()))?;
    let key = rustls_pemfile::private_key(&mut BufReader::new(file))
        .map_err(|e| key_err(e.to_string()))?
        .ok_or_else(|| key_err("no private key found".into()))?;
    Ok((chain, key))
}

fn load_roots(root: &RootCert) -> Result<RootCertStore, UpstreamTlsError> {
    let mut store = RootCertStore::empty();
    match root {
        RootCert::File(path) => {
            let err = |reason: String| UpstreamTlsError::RootCert {
                path: path.clone(),
                reason,
            };
            let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
            for cert in rustls_pemfile::certs(&mut BufReader::new(file)) {
                let cert = cert.map_err(|e| err(e.to_string()))?;
                store.add(cert).map_err(|e| err(e.to_string()))?;
            }
            if store.is_empty() {
                return Err(err("no certificate found".into()));
            }
        }
        RootCert::System => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err(UpstreamTlsError::RootCert {
                    path: "system".into(),
                    reason: "the operating system's trust store is empty or unreadable".into(),
                });
            }
        }
    }
    Ok(store)
}

/// Accepts any certificate (`prefer`/`require` without roots, as libpq) but still checks that the server
/// holds its key, so the session is at least encrypted to whoever answered.
#[derive(Debug)]
struct Unverified {
    provider: Arc<CryptoProvider>,
}

/// Checks the chain to the configured roots but not the host name (`verify-ca`).
#[derive(Debug)]
struct ChainOnly {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

/// Why TLS to the upstream could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NegotiateError {
    /// Socket failure.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The server answered 'N' but the mode requires TLS.
    #[error("the upstream database does not offer TLS but the connection's upstream_url has sslmode={0}; enable ssl on the server, or lower sslmode")]
    Refused(&'static str),
    /// The server answered something other than 'S' or 'N'.
    #[error("the upstream answered the SSLRequest with {0:?}; is it a PostgreSQL server?")]
    Unexpected(u8),
    /// The server asked for a client certificate and none is configured.
    #[error("the upstream database requires a TLS client certificate (it sent the alert {0}); add sslcert=/path/client.crt&sslkey=/path/client.key to upstream_url")]
    ClientCertRequired(String),
    /// The server did not accept the configured client certificate.
    #[error("the upstream database refused the gateway's client certificate {cert} (it sent the alert {alert}); use a certificate signed by a CA in the server's ssl_ca_file, and check that it is valid now")]
    ClientCertRefused {
        /// The configured `sslcert`.
        cert: PathBuf,
        /// The TLS alert.
        alert: String,
    },
    /// The handshake failed (certificate, protocol).
    #[error("TLS handshake with the upstream failed (sslmode={mode}): {reason}; check sslrootcert and that the server certificate is signed by it{names}")]
    Handshake {
        /// The configured mode.
        mode: &'static str,
        /// rustls' reason.
        reason: String,
        /// A hint about names for verify-full.
        names: &'static str,
    },
}

/// A connection to the upstream, plain or TLS.
pub enum UpstreamStream {
    /// Plain TCP (`disable`, or `prefer` against a server without TLS).
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
    /// A Unix-domain socket (host given as a directory); never encrypted, as in libpq.
    Unix(UnixStream),
}

impl UpstreamStream {
    /// True when an idle session's socket has been closed by the server, or holds bytes nobody asked
    /// for (PostgreSQL sends a FATAL before closing a terminated or timed-out session): such a session
    /// must not be used. Reads nothing from a healthy idle socket.
    pub fn idle_session_ended(&self) -> bool {
        let mut byte = [0u8; 1];
        let read = match self {
            UpstreamStream::Plain(s) => s.try_read(&mut byte),
            UpstreamStream::Tls(s) => s.get_ref().0.try_read(&mut byte),
            UpstreamStream::Unix(s) => s.try_read(&mut byte),
        };
        !matches!(read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// Opens the transport to `host`: a Unix-domain socket when `host` is a directory (`/…`), otherwise TCP
/// with TLS as `tls` asks.
pub async fn open(
    host: &str,
    port: u16,
    tls: &UpstreamTls,
) -> Result<UpstreamStream, NegotiateError> {
    if host.starts_with('/') {
        let path = format!("{}/.s.PGSQL.{port}", host.trim_end_matches('/'));
        return Ok(UpstreamStream::Unix(UnixStream::connect(path).await?));
    }
    let tcp = || async {
        let tcp = TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        Ok::<_, std::io::Error>(tcp)
    };
    match negotiate(tcp().await?, host, tls).await {
        // As libpq does for `prefer`: a server that offered TLS but could not complete the handshake
        // gets a second, plain connection.
        Err(NegotiateError::Handshake { reason, .. }) if tls.mode == SslMode::Prefer => {
            tracing::warn!(host, reason = %reason, "upstream TLS handshake failed; sslmode=prefer retries without TLS");
            Ok(UpstreamStream::Plain(tcp().await?))
        }
        other => other,
    }
}

/// Sends SSLRequest when the mode asks for TLS and completes the handshake on 'S'.
pub async fn negotiate(
    mut tcp: TcpStream,
    host: &str,
    tls: &UpstreamTls,
) -> Result<UpstreamStream, NegotiateError> {
    let Some(config) = &tls.config else {
        return Ok(UpstreamStream::Plain(tcp));
    };
    tcp.write_all(&SSL_REQUEST).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => {}
        b'N' if !tls.mode.requires_tls() => return Ok(UpstreamStream::Plain(tcp)),
        b'N' => return Err(NegotiateError::Refused(tls.mode.as_str())),
        other => return Err(NegotiateError::Unexpected(other)),
    }
    let handshake = |reason: String| NegotiateError::Handshake {
        mode: tls.mode.as_str(),
        reason,
        names: if tls.mode == SslMode::VerifyFull {
            ", and that its names include the host in upstream_url"
        } else {
            ""
        },
    };
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| handshake(format!("{host:?} is not a valid server name ({e})")))?;
    let stream = match TlsConnector::from(config.clone()).connect(name, tcp).await {
        Ok(stream) => stream,
        Err(e) => {
            return Err(match tls.explain_io(e) {
                NegotiateError::Io(e) => handshake(e.to_string()),
                about_client_cert => about_client_cert,
            })
        }
    };
    Ok(UpstreamStream::Tls(Box::new(stream)))
}

impl UpstreamTls {
    /// Turns a TLS alert about the client certificate into an error that says so. In TLS 1.3 the server
    /// checks the client's certificate after the client's side of the handshake is done, so its alert
    /// arrives as an I/O error on the first read of the session, not during [`negotiate`].
    pub fn explain_io(&self, e: std::io::Error) -> NegotiateError {
        use rustls::AlertDescription as A;
        let alert = match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(rustls::Error::AlertReceived(
                a @ (A::CertificateRequired
                | A::BadCertificate
                | A::UnknownCA
                | A::CertificateUnknown
                | A::CertificateExpired
                | A::CertificateRevoked
                | A::UnsupportedCertificate
                | A::AccessDenied),
            )) => format!("{a:?}"),
            // What a server says when the certificate names a trusted CA but another key signed it.
            Some(rustls::Error::AlertReceived(a @ A::DecryptError))
                if self.client_cert.is_some() =>
            {
                format!("{a:?}")
            }
            _ => return NegotiateError::Io(e),
        };
        match &self.client_cert {
            None => NegotiateError::ClientCertRequired(alert),
            Some(files) => NegotiateError::ClientCertRefused {
                cert: files.cert.clone(),
                alert,
            },
        }
    }
}

impl UpstreamStream {
    /// True when the session is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Tls(_))
    }

    /// The server's own (end-entity) certificate, on a TLS session.
    pub fn server_certificate(&self) -> Option<&CertificateDer<'static>> {
        match self {
            Self::Tls(tls) => tls.get_ref().1.peer_certificates()?.first(),
            Self::Plain(_) | Self::Unix(_) => None,
        }
    }
}

// Used by the upstream login and the HTTP API's client; the relay splits the variants instead.
impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that says 'S' to the first SSLRequest and then breaks the handshake, and records the first
    /// bytes of each later connection.
    async fn broken_tls_server() -> (u16, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut first = true;
            while let Ok((mut s, _)) = listener.accept().await {
                let mut head = [0u8; 8];
                if s.read_exact(&mut head).await.is_err() {
                    continue;
                }
                if first {
                    first = false;
                    let _ = s.write_all(b"Snot a TLS server hello").await;
                    let _ = s.shutdown().await;
                } else {
                    let _ = tx.send(head.to_vec());
                }
            }
        });
        (port, rx)
    }

    #[tokio::test]
    async fn prefer_retries_in_plaintext_after_a_failed_handshake_and_require_does_not() {
        let (port, mut seen) = broken_tls_server().await;
        let prefer = UpstreamTls::new(SslMode::Prefer, None, None).unwrap();
        let mut stream = open("127.0.0.1", port, &prefer).await.unwrap();
        assert!(!stream.is_tls());
        stream.write_all(b"startup!").await.unwrap();
        assert_eq!(seen.recv().await.unwrap(), b"startup!");

        let (port, _seen) = broken_tls_server().await;
        let require = UpstreamTls::new(SslMode::Require, None, None).unwrap();
        assert!(matches!(
            open("127.0.0.1", port, &require).await,
            Err(NegotiateError::Handshake { .. })
        ));
    }

    #[test]
    fn modes_parse_and_say_whether_tls_is_required() {
        for (text, requires) in [
            ("disable", false),
            ("prefer", false),
            ("require", true),
            ("verify-ca", true),
            ("verify-full", true),
        ] {
            let mode = SslMode::parse(text).unwrap();
            assert_eq!(mode.as_str(), text);
            assert_eq!(mode.requires_tls(), requires, "{text}");
        }
        assert_eq!(SslMode::parse("allow"), None);
    }

    #[test]
    fn verify_modes_need_roots_and_system_roots_need_verify_full() {
        assert_eq!(
            UpstreamTls::new(SslMode::VerifyFull, None, None).unwrap_err(),
            UpstreamTlsError::NoRootCert("verify-full")
        );
        assert_eq!(
            UpstreamTls::new(SslMode::VerifyCa, None, None).unwrap_err(),
            UpstreamTlsError::NoRootCert("verify-ca")
        );
        assert_eq!(
            UpstreamTls::new(SslMode::Require, Some(RootCert::System), None).unwrap_err(),
            UpstreamTlsError::SystemNeedsVerifyFull
        );
        let missing = UpstreamTls::new(
            SslMode::VerifyFull,
            Some(RootCert::File("/nonexistent/ca.pem".into())),
            None,
        )
        .unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/ca.pem"),
            "{missing}"
        );
        assert!(UpstreamTls::new(SslMode::Require, None, None)
            .unwrap()
            .config
            .is_some());
        assert!(UpstreamTls::new(SslMode::Disable, None, None)
            .unwrap()
            .config
            .is_none());
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let dir = std::env::temp_dir().join(format!("cs-tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("empty.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let err =
            UpstreamTls::new(SslMode::VerifyCa, Some(RootCert::File(path)), None).unwrap_err();
        assert!(err.to_string().contains("no certificate found"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Runs `openssl` with `args` in `dir` (the test machine has it; it writes the key formats rcgen can't).
    fn openssl(dir: &std::path::Path, args: &[&str]) {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl must be installed");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    }

    #[test]
    fn client_keys_load_as_pkcs8_sec1_and_pkcs1_and_must_match_the_certificate() {
        let dir = std::env::temp_dir().join(format!("cs-tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let rcgen::CertifiedKey {
            cert,
            key_pair: key,
        } = rcgen::generate_simple_self_signed(vec!["gateway".to_string()]).unwrap();
        std::fs::write(dir.join("ec.crt"), cert.pem()).unwrap();
        std::fs::write(dir.join("pkcs8.key"), key.serialize_pem()).unwrap();
        openssl(&dir, &["ec", "-in", "pkcs8.key", "-out", "sec1.key"]);
        openssl(
            &dir,
            &["genrsa", "-traditional", "-out", "pkcs1.key", "2048"],
        );
        openssl(
            &dir,
            &[
                "req",
                "-new",
                "-x509",
                "-key",
                "pkcs1.key",
                "-subj",
                "/CN=gateway",
                "-days",
                "1",
                "-out",
                "rsa.crt",
            ],
        );
        let pem_header = |name: &str| {
            let text = std::fs::read_to_string(dir.join(name)).unwrap();
            text.lines().next().unwrap().to_string()
        };
        assert_eq!(pem_header("sec1.key"), "-----BEGIN EC PRIVATE KEY-----");
        assert_eq!(pem_header("pkcs1.key"), "-----BEGIN RSA PRIVATE KEY-----");
        let with = |cert: &str, key: &str| {
            UpstreamTls::new(
                SslMode::Require,
                None,
                Some(ClientCert {
                    cert: dir.join(cert),
                    key: dir.join(key),
                }),
            )
        };
        for (cert, key) in [
            ("ec.crt", "pkcs8.key"),
            ("ec.crt", "sec1.key"),
            ("rsa.crt", "pkcs1.key"),
        ] {
            let tls = with(cert, key).unwrap_or_else(|e| panic!("{cert} + {key}: {e}"));
            assert!(tls.config.unwrap().client_auth_cert_resolver.has_certs());
        }
        let mismatch = with("ec.crt", "pkcs1.key").unwrap_err().to_string();
        assert!(mismatch.contains("pkcs1.key"), "{mismatch}");
        assert!(
            mismatch.contains("belongs to the certificate"),
            "{mismatch}"
        );
        let not_a_cert = with("pkcs8.key", "pkcs8.key").unwrap_err().to_string();
        assert!(not_a_cert.starts_with("sslcert "), "{not_a_cert}");
        assert!(not_a_cert.contains("no certificate found"), "{not_a_cert}");
        // A disabled connection never reads the files, as in libpq.
        assert!(UpstreamTls::new(
            SslMode::Disable,
            None,
            Some(ClientCert {
                cert: "/missing.crt".into(),
                key: "/missing.key".into()
            })
        )
        .is_ok());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
