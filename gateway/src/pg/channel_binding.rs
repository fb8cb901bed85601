//! `tls-server-end-point` channel binding data (RFC 5929 §4.1) for SCRAM-SHA-256-PLUS: a hash of the TLS
//! server's own certificate, with the hash function of the certificate's signature algorithm, MD5 and
//! SHA-1 replaced by SHA-256. PostgreSQL computes it the same way on both ends; the gateway computes it for
//! the upstream's certificate (as a client) and for its listener's certificate (as a server).

use der::asn1::{AnyRef, BitStringRef, ContextSpecific};
use der::{Decode, Reader, SliceReader, TagNumber};
use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};
use spki::AlgorithmIdentifierRef;

/// The only channel-binding type PostgreSQL and the gateway use.
pub const TLS_SERVER_END_POINT: &str = "tls-server-end-point";

/// The hash function for a certificate's end-point data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndPointHash {
    /// SHA-224 (sha224With… signatures).
    Sha224,
    /// SHA-256 (also for MD5 and SHA-1 signatures).
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

/// Why a certificate yields no channel-binding data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndPointError {
    /// Not an X.509 certificate the parser understands.
    #[error("the certificate is not valid DER ({0})")]
    Malformed(String),
    /// The signature algorithm has no single hash function (Ed25519, Ed448, unknown algorithms).
    #[error("the certificate's signature algorithm {0} has no hash function for tls-server-end-point channel binding (RFC 5929); use an RSA or ECDSA certificate")]
    NoHash(String),
}

impl From<der::Error> for EndPointError {
    fn from(e: der::Error) -> Self {
        Self::Malformed(e.to_string())
    }
}

impl EndPointHash {
    /// The hash RFC 5929 picks for a certificate (DER), from its outer `signatureAlgorithm`.
    pub fn for_certificate(cert_der: &[u8]) -> Result<Self, EndPointError> {
        let mut reader = SliceReader::new(cert_der)?;
        let algorithm = reader.sequence(|cert| {
            let _tbs_certificate = AnyRef::decode(cert)?;
            let algorithm = AlgorithmIdentifierRef::decode(cert)?;
            let _signature = BitStringRef::decode(cert)?;
            Ok(algorithm)
        })?;
        reader.finish(())?;
        Self::for_algorithm(&algorithm)
    }

    fn for_algorithm(algorithm: &AlgorithmIdentifierRef<'_>) -> Result<Self, EndPointError> {
        use EndPointHash::*;
        Ok(match algorithm.oid.to_string().as_str() {
            // md5WithRSAEncryption, sha1WithRSAEncryption, ecdsa-with-SHA1, dsa-with-sha1: SHA-256 instead.
            "1.2.840.113549.1.1.4"
            | "1.2.840.113549.1.1.5"
            | "1.2.840.10045.4.1"
            | "1.2.840.10040.4.3" => Sha256,
            // sha224WithRSAEncryption, ecdsa-with-SHA224, dsa-with-sha224.
            "1.2.840.113549.1.1.14" | "1.2.840.10045.4.3.1" | "2.16.840.1.101.3.4.3.1" => Sha224,
            // sha256WithRSAEncryption, ecdsa-with-SHA256, dsa-with-sha256.
            "1.2.840.113549.1.1.11" | "1.2.840.10045.4.3.2" | "2.16.840.1.101.3.4.3.2" => Sha256,
            // sha384WithRSAEncryption, ecdsa-with-SHA384.
            "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => Sha384,
            // sha512WithRSAEncryption, ecdsa-with-SHA512.
            "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => Sha512,
            // RSASSA-PSS: the hash is a parameter (default SHA-1, so SHA-256 here).
            "1.2.840.113549.1.1.10" => Self::for_pss(algorithm.parameters)?,
            other => return Err(EndPointError::NoHash(other.to_string())),
        })
    }

    /// `RSASSA-PSS-params ::= SEQUENCE { hashAlgorithm [0] HashAlgorithm DEFAULT sha1, … }`.
    fn for_pss(parameters: Option<AnyRef<'_>>) -> Result<Self, EndPointError> {
        let Some(parameters) = parameters else {
            return Err(EndPointError::Malformed(
                "RSASSA-PSS without parameters".into(),
            ));
        };
        let hash = parameters.sequence(|params| {
            let hash = ContextSpecific::<AlgorithmIdentifierRef<'_>>::decode_explicit(
                params,
                TagNumber::N0,
            )?;
            // The other fields are not needed; skip them.
            while !params.is_finished() {
                AnyRef::decode(params)?;
            }
            Ok(hash.map(|h| h.value.oid.to_string()))
        })?;
        use EndPointHash::*;
        Ok(match hash.as_deref() {
            None | Some("1.3.14.3.2.26") => Sha256, // SHA-1
            Some("2.16.840.1.101.3.4.2.4") => Sha224,
            Some("2.16.840.1.101.3.4.2.1") => Sha256,
            Some("2.16.840.1.101.3.4.2.2") => Sha384,
            Some("2.16.840.1.101.3.4.2.3") => Sha512,
            Some(other) => return Err(EndPointError::NoHash(format!("RSASSA-PSS with {other}"))),
        })
    }

    /// The hash of `data`.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha224 => Sha224::digest(data).to_vec(),
            Self::Sha256 => Sha256::digest(data).to_vec(),
            Self::Sha384 => Sha384::digest(data).to_vec(),
            Self::Sha512 => Sha512::digest(data).to_vec(),
        }
    }
}

/// The `tls-server-end-point` channel-binding data for a server certificate (DER).
pub fn tls_server_end_point(cert_der: &[u8]) -> Result<Vec<u8>, EndPointError> {
    Ok(EndPointHash::for_certificate(cert_der)?.digest(cert_der))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    /// A self-signed RSA certificate from `openssl req` with extra `args` (digest, PSS options).
    fn openssl_rsa(args: &[&str]) -> Vec<u8> {
        let dir = std::env::temp_dir().join(format!("cs-cb-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "k.pem",
            ])
            .args([
                "-subj",
                "/CN=gateway",
                "-days",
                "1",
                "-outform",
                "DER",
                "-out",
                "c.der",
            ])
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("openssl must be installed");
        assert!(out.status.success(), "{out:?}");
        let der = std::fs::read(dir.join("c.der")).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
        der
    }

    #[test]
    fn the_hash_follows_the_signature_algorithm() {
        use EndPointHash::*;
        for (alg, hash) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, Sha256),
            (&rcgen::PKCS_ECDSA_P384_SHA384, Sha384),
        ] {
            let der = self_signed(alg);
            assert_eq!(EndPointHash::for_certificate(&der), Ok(hash));
            assert_eq!(tls_server_end_point(&der).unwrap(), hash.digest(&der));
        }
        for (args, hash) in [
            (&["-sha256"][..], Sha256),
            (&["-sha512"][..], Sha512),
            (&["-sha224"][..], Sha224),
            (&["-sigopt", "rsa_padding_mode:pss", "-sha384"][..], Sha384),
        ] {
            let der = openssl_rsa(args);
            assert_eq!(EndPointHash::for_certificate(&der), Ok(hash), "{args:?}");
        }
        assert_eq!(Sha384.digest(b"x").len(), 48);
        assert_eq!(Sha512.digest(b"x").len(), 64);
    }

    #[test]
    fn sha1_and_md5_signatures_are_upgraded_to_sha256() {
        // RFC 5929 §4.1: "if the certificate's signatureAlgorithm uses a single hash function and that
        // hash function is either MD5 or SHA-1, then use SHA-256".
        let der = openssl_rsa(&["-sha1"]);
        assert_eq!(
            EndPointHash::for_certificate(&der),
            Ok(EndPointHash::Sha256)
        );
        assert_eq!(tls_server_end_point(&der).unwrap().len(), 32);
    }

    #[test]
    fn ed25519_and_garbage_yield_no_binding_data() {
        let ed = self_signed(&rcgen::PKCS_ED25519);
        let err = tls_server_end_point(&ed).unwrap_err();
        assert_eq!(err, EndPointError::NoHash("1.3.101.112".into()));
        assert!(err.to_string().contains("RSA or ECDSA"), "{err}");
        assert!(matches!(
            tls_server_end_point(b"not a certificate"),
            Err(EndPointError::Malformed(_))
        ));
        let mut truncated = self_signed(&rcgen::PKCS_ECDSA_P256_SHA256);
        truncated.truncate(truncated.len() - 5);
        assert!(matches!(
            tls_server_end_point(&truncated),
            Err(EndPointError::Malformed(_))
        ));
    }
}
