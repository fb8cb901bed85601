//! A throwaway certificate authority for TLS tests: server certificates, client certificates and the
//! rustls acceptors that present or demand them. Names are IP addresses only: nothing here resolves names.

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::PathBuf;
use std::sync::Arc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A CA, and the certificates it signed, with a temporary directory for their files (removed on drop).
pub struct Pki {
    pub dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

/// A certificate and its key, as PEM files.
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    /// A CA with an ECDSA P-256 key: what it signs carries ecdsa-with-SHA256.
    pub fn new() -> Self {
        Self::with_algorithm(&rcgen::PKCS_ECDSA_P256_SHA256)
    }

    /// A CA whose key (and so the signature on everything it signs) uses `alg`.
    pub fn with_algorithm(alg: &'static rcgen::SignatureAlgorithm) -> Self {
        let dir = std::env::temp_dir().join(format!("cs_pki_{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("countersign test CA {}", dir.display()),
        );
        let ca_key = rcgen::KeyPair::generate_for(alg).unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        Self { dir, ca, ca_key }
    }

    /// Writes the CA certificate; returns its path.
    pub fn ca_file(&self, name: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, self.ca.pem()).unwrap();
        path
    }

    fn issue(
        &self,
        names: &[&str],
        common_name: &str,
        usage: rcgen::ExtendedKeyUsagePurpose,
    ) -> (rcgen::Certificate, rcgen::KeyPair) {
        let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.extended_key_usages = vec![usage];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        (cert, key)
    }

    fn write(&self, stem: &str, cert: &rcgen::Certificate, key: &rcgen::KeyPair) -> CertFiles {
        let files = CertFiles {
            cert: self.dir.join(format!("{stem}.crt")),
            key: self.dir.join(format!("{stem}.key")),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }

    /// A server certificate for `names`, written as `<stem>.crt` / `<stem>.key`.
    pub fn server_files(&self, names: &[&str], stem: &str) -> CertFiles {
        let (cert, key) = self.issue(
            names,
            names.first().copied().unwrap_or("server"),
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        );
        self.write(stem, &cert, &key)
    }

    /// A client certificate with common name `user`, written as `<stem>.crt` / `<stem>.key`.
    pub fn client_files(&self, user: &str, stem: &str) -> CertFiles {
        let (cert, key) = self.issue(&[], user, rcgen::ExtendedKeyUsagePurpose::ClientAuth);
        self.write(stem, &cert, &key)
    }

    fn server_config(&self, names: &[&str], clients: Option<&Pki>) -> rustls::ServerConfig {
        let (cert, key) = self.issue(names, "server", rcgen::ExtendedKeyUsagePurpose::ServerAuth);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match clients {
            None => builder.with_no_client_auth(),
            Some(client_ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots
                    .add(CertificateDer::from(client_ca.ca.der().to_vec()))
                    .unwrap();
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        };
        builder
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap()
    }

    /// Presents a server certificate for `names`; asks for no client certificate.
    pub fn acceptor(&self, names: &[&str]) -> TlsAcceptor {
        TlsAcceptor::from(Arc::new(self.server_config(names, None)))
    }

    /// Presents a server certificate for `names` and demands a client certificate signed by `clients`.
    pub fn acceptor_requiring_client_certs(&self, names: &[&str], clients: &Pki) -> TlsAcceptor {
        TlsAcceptor::from(Arc::new(self.server_config(names, Some(clients))))
    }
}

impl Pki {
    /// A TLS client that trusts this CA (and nothing else).
    pub fn connector(&self) -> TlsConnector {
        self.connector_offering(&[])
    }

    /// A client trusting this CA that offers the ALPN protocols `alpn` (none: no ALPN extension).
    pub fn connector_offering(&self, alpn: &[&[u8]]) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.ca.der().to_vec()))
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut config = config;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
