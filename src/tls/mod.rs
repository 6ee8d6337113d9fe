//! TLS as this process speaks it to every server (PostgreSQL, and HTTPS endpoints): rustls with
//! ring, certificates and keys read from PEM files (a key readable by others refused, as the
//! seeds are), the three ways of checking a server (its chain and name, its chain alone, nothing
//! but the handshake's signatures), and a failed handshake told by what went wrong.
//!
//! - [`libpq`]: PostgreSQL's TLS settings, as libpq reads them, and its connector.
//!
//! Imports nothing of the crate: configuration, the database sessions and push build on it.

pub mod libpq;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};

/// What is wrong with a TLS file or setting, before anything was sent.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path} holds no PEM certificate: give the CA's (or the client's) certificate in PEM (-----BEGIN CERTIFICATE-----)")]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("{what} {path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1): give the key that belongs to the certificate")]
    NoKey { what: &'static str, path: PathBuf },
    #[error("{what} {path} may be read by others (mode {mode:o}): `chmod 600 {path}` (as libpq demands)")]
    KeyExposed {
        what: &'static str,
        path: PathBuf,
        mode: u32,
    },
    #[error("the client certificate and key do not belong together ({cert}, {key}): {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("no trusted CA could be loaded from this host's certificate store: install the CA certificates (apt-get install ca-certificates) or name a CA file")]
    NoSystemRoots,
    #[error("the server's certificate is to be checked and no trusted CA was loaded: name a CA file that holds the CA's certificate")]
    NoAnchors,
}

/// How a server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Chain to a trusted CA, valid now, and issued for the name connected to.
    Full,
    /// Chain to a trusted CA and valid now, whatever name it carries (libpq's `verify-ca`).
    Chain,
    /// Not at all: the connection is encrypted, the server not authenticated (libpq's
    /// `prefer` and `require` without a root certificate).
    Nothing,
}

/// The crypto provider of every TLS connection this process makes (async-nats and reqwest use
/// ring too).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate of a PEM file.
pub fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// A private key from a PEM file that only its owner may read (0600 or less; 0640 or less when
/// root owns it, as libpq allows).
pub fn read_key(what: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let read = |source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    };
    check_private(what, path)?;
    let pem = std::fs::read(path).map_err(read)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::NoKey {
        what,
        path: path.to_owned(),
    })
}

/// Refuses a key file others may read: 0600 or less, 0640 or less when root owns it.
pub fn check_private(what: &'static str, path: &Path) -> Result<(), TlsError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).map_err(|source| TlsError::Read {
            what,
            path: path.to_owned(),
            source,
        })?;
        let mode = meta.mode() & 0o7777;
        let allowed = if meta.uid() == 0 { 0o640 } else { 0o600 };
        if mode & !allowed & 0o777 != 0 {
            return Err(TlsError::KeyExposed {
                what,
                path: path.to_owned(),
                mode,
            });
        }
    }
    Ok(())
}

/// Trusted CAs: those of a PEM file, or this host's store (`None`).
pub fn roots(file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    match file {
        Some(path) => {
            let (added, _) = roots.add_parsable_certificates(read_certs("root certificate", path)?);
            // A block that is not a certificate (a line lost in a copy): no anchor at all
            // must never mean no check at all.
            if added == 0 {
                return Err(TlsError::NoCertificate {
                    what: "root certificate",
                    path: path.to_owned(),
                });
            }
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if roots.is_empty() {
                return Err(TlsError::NoSystemRoots);
            }
        }
    }
    Ok(roots)
}

/// A client configuration: the server checked as `check` says against `roots`, and this
/// client's certificate chain and key if it has one.
pub fn client_config(
    roots: RootCertStore,
    check: Check,
    client: Option<(&Path, &Path)>,
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring offers the default protocol versions");
    let verifier: Arc<dyn ServerCertVerifier> = match check {
        // Only where no check was asked for: the handshake's signatures alone.
        Check::Nothing => Arc::new(Unverified(provider.clone())),
        Check::Full | Check::Chain => {
            // Asked to check and nothing to check against: refused, never unchecked.
            let full =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|_| TlsError::NoAnchors)?;
            if check == Check::Full {
                full
            } else {
                Arc::new(ChainOnly(full))
            }
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    Ok(match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = read_certs("client certificate", cert)?;
            let k = read_key("client key", key)?;
            builder
                .with_client_auth_cert(chain, k)
                .map_err(|e| TlsError::Mismatch {
                    cert: cert.to_owned(),
                    key: key.to_owned(),
                    reason: e.to_string(),
                })?
        }
    })
}

/// `verify-ca`: the chain checked in full, the name the certificate is for not at all.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain and its validity before the name: a name error means the rest
        // held.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Encryption without authentication: the handshake's signatures are checked (so the session
/// keys are the certificate holder's), the certificate itself is not.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Why a TLS handshake failed, as the one who must fix it needs to hear it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The server's certificate is not signed by a CA this client trusts.
    UnknownIssuer,
    /// The server's certificate has expired.
    Expired,
    /// The server's certificate is not valid yet.
    NotYetValid,
    /// The server's certificate is not for the name connected to.
    WrongName,
    /// The server refused this client's certificate (or its lack of one).
    ClientRefused(String),
    /// The server answered the handshake in plain text: it does not speak TLS there.
    NotTls,
    /// Anything else rustls said.
    Other(String),
}

impl Refusal {
    /// The refusal a failed handshake's error chain holds, if any.
    pub fn of(e: &(dyn std::error::Error + 'static)) -> Option<Refusal> {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(c) = cause {
            if let Some(r) = c.downcast_ref::<rustls::Error>() {
                return Some(Refusal::from_rustls(r));
            }
            if let Some(io) = c.downcast_ref::<std::io::Error>() {
                if let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                    return Some(Refusal::from_rustls(r));
                }
            }
            cause = c.source();
        }
        // Some clients keep rustls's error only as text in their chain (an io::Error's source
        // skips its inner error): read rustls's own words.
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(c) = cause {
            if let Some(r) = Refusal::from_text(&c.to_string()) {
                return Some(r);
            }
            cause = c.source();
        }
        None
    }

    /// rustls's words for a refused certificate or a received alert, as a refusal.
    fn from_text(said: &str) -> Option<Refusal> {
        if let Some((_, what)) = said.split_once("invalid peer certificate: ") {
            return Some(
                if what.starts_with("UnknownIssuer") || what.starts_with("BadSignature") {
                    Refusal::UnknownIssuer
                } else if what.contains("expired") || what.starts_with("Expired") {
                    Refusal::Expired
                } else if what.contains("not valid yet") || what.starts_with("NotValidYet") {
                    Refusal::NotYetValid
                } else if what.contains("not valid for name") || what.starts_with("NotValidForName")
                {
                    Refusal::WrongName
                } else {
                    Refusal::Other(format!("invalid peer certificate: {what}"))
                },
            );
        }
        if said.contains("corrupt message of type InvalidContentType") {
            return Some(Refusal::NotTls);
        }
        let (_, alert) = said.split_once("received fatal alert: ")?;
        let alert = alert.split(|c: char| !c.is_alphanumeric()).next()?;
        matches!(
            alert,
            "CertificateRequired"
                | "BadCertificate"
                | "UnknownCA"
                | "CertificateUnknown"
                | "CertificateExpired"
                | "CertificateRevoked"
                | "UnsupportedCertificate"
                | "AccessDenied"
        )
        .then(|| Refusal::ClientRefused(alert.to_owned()))
    }

    fn from_rustls(e: &rustls::Error) -> Refusal {
        use rustls::AlertDescription as A;
        match e {
            rustls::Error::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                    Refusal::UnknownIssuer
                }
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    Refusal::Expired
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    Refusal::NotYetValid
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => Refusal::WrongName,
                CertificateError::Other(o) if o.to_string().contains("CaUsedAsEndEntity") => {
                    Refusal::Other("the server presents a CA certificate (CA:TRUE) as its own: issue it a server certificate signed by the CA, with its names as subject alternative names".into())
                }
                other => Refusal::Other(format!("{other:?}")),
            },
            rustls::Error::AlertReceived(
                a @ (A::CertificateRequired
                | A::BadCertificate
                | A::UnknownCA
                | A::CertificateUnknown
                | A::CertificateExpired
                | A::CertificateRevoked
                | A::UnsupportedCertificate
                | A::AccessDenied),
            ) => Refusal::ClientRefused(format!("{a:?}")),
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => {
                Refusal::NotTls
            }
            other => Refusal::Other(other.to_string()),
        }
    }

    /// What happened with the server at `peer`, and what to change; `ca` names where this
    /// client's trusted CAs come from (a setting and its value).
    pub fn describe(&self, peer: &str, ca: &str) -> String {
        match self {
            Refusal::UnknownIssuer => format!(
                "the certificate of {peer} is not signed by a CA this client trusts ({ca}): give the CA that signed the server's certificate"
            ),
            Refusal::Expired => format!(
                "the certificate of {peer} has expired: renew it on the server (or check this host's clock)"
            ),
            Refusal::NotYetValid => format!(
                "the certificate of {peer} is not valid yet: check this host's clock and the server's (or the certificate's start date)"
            ),
            Refusal::WrongName => format!(
                "the certificate of {peer} is not issued for that host name: connect by a name the certificate carries (its subject alternative names), or issue one for this name"
            ),
            Refusal::ClientRefused(alert) => format!(
                "{peer} refused this client's certificate ({alert}): give a client certificate and key signed by a CA the server trusts"
            ),
            Refusal::NotTls => format!(
                "{peer} does not speak TLS (it answered the handshake in plain text): turn TLS on on the server, or connect without TLS settings if it is meant to be plain"
            ),
            Refusal::Other(said) => format!("TLS with {peer} failed: {said}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Refusal;

    #[test]
    fn asked_to_check_with_nothing_to_check_against_is_refused_never_unchecked() {
        // A PEM block that is no certificate (a line lost in a copy): not an empty store.
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("ca.pem");
        std::fs::write(
            &bad,
            "-----BEGIN CERTIFICATE-----\nTUlJQm5vdCBhIGNlcnRpZmljYXRl\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(super::roots(Some(&bad)).is_err());
        for check in [super::Check::Full, super::Check::Chain] {
            assert!(matches!(
                super::client_config(rustls::RootCertStore::empty(), check, None),
                Err(super::TlsError::NoAnchors)
            ));
        }
        assert!(
            super::client_config(rustls::RootCertStore::empty(), super::Check::Nothing, None)
                .is_ok()
        );
    }

    #[test]
    fn rustls_words_in_a_chain_are_read_as_refusals() {
        for (said, r) in [
            ("client error (Connect): invalid peer certificate: UnknownIssuer", Refusal::UnknownIssuer),
            ("invalid peer certificate: certificate expired: verification time 1 (UNIX), but certificate is not valid after 0", Refusal::Expired),
            ("invalid peer certificate: certificate not valid for name \"x\"; certificate is only valid for DnsName(\"y\")", Refusal::WrongName),
            ("received fatal alert: UnknownCA", Refusal::ClientRefused("UnknownCA".into())),
            ("received corrupt message of type InvalidContentType", Refusal::NotTls),
        ] {
            assert_eq!(Refusal::from_text(said), Some(r), "{said}");
        }
        assert_eq!(
            Refusal::from_text("received fatal alert: HandshakeFailure"),
            None
        );
        assert_eq!(Refusal::from_text("connection refused"), None);
    }
}
