//! A loopback stand-in for a TLS-enabled PostgreSQL, or for a machine in the middle: it answers the
//! SSLRequest with 'S' and a TLS handshake when it has an acceptor (else 'N'), then forwards the decrypted
//! bytes to a backend, in plaintext or over a TLS session of its own. Counts completed TLS handshakes.

use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// SSLRequest: length 8, code 80877103.
pub const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Where the proxy forwards to.
#[derive(Clone)]
pub enum Backend {
    /// Plain TCP (e.g. the shared PostgreSQL at 127.0.0.1:5432).
    Plain(SocketAddr),
    /// SSLRequest, then TLS with `connector` (which must trust the backend's certificate for 127.0.0.1).
    Tls(SocketAddr, TlsConnector),
}

/// A running proxy.
pub struct TlsProxy {
    pub addr: SocketAddr,
    pub tls_sessions: Arc<AtomicUsize>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn connect(backend: &Backend) -> std::io::Result<Box<dyn Io>> {
    match backend {
        Backend::Plain(addr) => Ok(Box::new(TcpStream::connect(addr).await?)),
        Backend::Tls(addr, connector) => {
            let mut tcp = TcpStream::connect(addr).await?;
            tcp.write_all(&SSL_REQUEST).await?;
            let mut answer = [0u8; 1];
            tcp.read_exact(&mut answer).await?;
            if answer[0] != b'S' {
                return Err(std::io::Error::other("the backend does not offer TLS"));
            }
            let name = ServerName::IpAddress(addr.ip().into());
            Ok(Box::new(connector.connect(name, tcp).await?))
        }
    }
}

/// Starts a proxy on a loopback port.
pub async fn tls_proxy(acceptor: Option<TlsAcceptor>, backend: Backend) -> TlsProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls_sessions = Arc::new(AtomicUsize::new(0));
    let count = tls_sessions.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, backend, count) = (acceptor.clone(), backend.clone(), count.clone());
            tokio::spawn(async move {
                let mut first = [0u8; 8];
                client.read_exact(&mut first).await?;
                let mut server = connect(&backend).await?;
                if first != SSL_REQUEST {
                    server.write_all(&first).await?;
                    tokio::io::copy_bidirectional(&mut client, &mut server).await?;
                    return Ok::<_, std::io::Error>(());
                }
                match acceptor {
                    Some(acceptor) => {
                        client.write_all(b"S").await?;
                        let mut tls = acceptor.accept(client).await?;
                        count.fetch_add(1, Ordering::SeqCst);
                        tokio::io::copy_bidirectional(&mut tls, &mut server).await?;
                    }
                    None => {
                        client.write_all(b"N").await?;
                        tokio::io::copy_bidirectional(&mut client, &mut server).await?;
                    }
                }
                Ok(())
            });
        }
    });
    TlsProxy { addr, tls_sessions }
}
