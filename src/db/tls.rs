//! TLS to PostgreSQL with libpq's meaning of `sslmode`, `sslrootcert`,
//! `sslcert` and `sslkey`.
//!
//! The stack is rustls (with the `ring` provider): pure Rust, so the
//! release binary, the package and the `FROM scratch` image need no system
//! TLS library, and one stack serves the daemon, the commands and the tools.
//!
//! | `sslmode` | TLS | certificate chain | host name |
//! |---|---|---|---|
//! | `disable` | never | | |
//! | `allow`, `prefer` (default) | if the server offers it | checked when a root certificate is at hand | no |
//! | `require` | always | checked when a root certificate is at hand | no |
//! | `verify-ca` | always | always | no |
//! | `verify-full` | always | always | yes |
//!
//! "A root certificate at hand" is `sslrootcert`, or libpq's default
//! `~/.postgresql/root.crt` when that file exists; `sslrootcert=system`
//! takes the operating system's store and, as in libpq 16, allows only
//! `verify-full`. `allow` behaves as `prefer` (libpq tries without TLS
//! first; a server that accepts both gets TLS here).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// `sslmode`, as libpq spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS if the server offers it (here: as `prefer`).
    Allow,
    /// TLS if the server offers it.
    #[default]
    Prefer,
    /// TLS or no connection.
    Require,
    /// TLS, and the server's certificate chains to a trusted root.
    VerifyCa,
    /// As `verify-ca`, and the certificate names the host connected to.
    VerifyFull,
}

impl SslMode {
    /// Parses libpq's spelling.
    pub fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// libpq's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres is told: whether to ask for TLS, and whether
    /// to insist.
    pub fn negotiation(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Allow | SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
        }
    }
}

/// Where trusted roots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// None given and no `~/.postgresql/root.crt`.
    None,
    /// A PEM file of CA certificates.
    File(PathBuf),
    /// The operating system's store (`sslrootcert=system`).
    System,
}

/// The TLS settings of a connection string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsSettings {
    /// `sslmode`.
    pub mode: SslMode,
    /// `sslrootcert` as given (`None`: libpq's default file, if it exists).
    pub root_cert: Option<String>,
    /// `sslcert`: a client certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// `sslkey`: the client certificate's private key (PEM).
    pub key: Option<PathBuf>,
    /// Whether `sslmode` was given (`sslrootcert=system` makes `verify-full`
    /// the default).
    pub mode_given: bool,
}

/// Why the TLS settings cannot be used; each names its key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A setting contradicts another or its file cannot be used.
    #[error("`{key}`: {message}")]
    Setting {
        /// The connection-string key (`sslrootcert`, `sslcert`, …).
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

fn setting(key: &'static str, message: impl Into<String>) -> TlsError {
    TlsError::Setting { key, message: message.into() }
}

/// libpq's directory of defaults: `~/.postgresql`.
fn default_file(name: &str) -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let path = Path::new(&home).join(".postgresql").join(name);
    path.is_file().then_some(path)
}

impl TlsSettings {
    /// The roots in force.
    pub fn roots(&self) -> Roots {
        match self.root_cert.as_deref() {
            Some("system") => Roots::System,
            Some(path) => Roots::File(PathBuf::from(path)),
            None => default_file("root.crt").map_or(Roots::None, Roots::File),
        }
    }

    /// The mode in force (`sslrootcert=system` without `sslmode`: `verify-full`).
    pub fn effective_mode(&self) -> SslMode {
        if !self.mode_given && self.root_cert.as_deref() == Some("system") {
            SslMode::VerifyFull
        } else {
            self.mode
        }
    }

    /// The client certificate and key files, given or libpq's defaults.
    fn client_files(&self) -> Result<Option<(PathBuf, PathBuf)>, TlsError> {
        match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Ok(Some((c.clone(), k.clone()))),
            (Some(_), None) => Err(setting("sslkey", "`sslcert` is set but `sslkey` is not: give the key's file")),
            (None, Some(_)) => {
                Err(setting("sslcert", "`sslkey` is set but `sslcert` is not: give the certificate's file"))
            }
            (None, None) => Ok(default_file("postgresql.crt").zip(default_file("postgresql.key"))),
        }
    }

    /// The rustls configuration these settings ask for, with every file
    /// read now (so a missing or unreadable file fails at start).
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mode = self.effective_mode();
        let roots = self.roots();
        if roots == Roots::System && mode != SslMode::VerifyFull {
            return Err(setting(
                "sslmode",
                format!("`{}` may not be used with sslrootcert=system (use verify-full)", mode.as_str()),
            ));
        }
        let store = match &roots {
            Roots::None => None,
            Roots::File(path) => Some(read_roots(path)?),
            Roots::System => Some(system_roots()?),
        };
        let verifier: Arc<dyn ServerCertVerifier> = match (mode, store) {
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                return Err(setting(
                    "sslrootcert",
                    format!(
                        "sslmode={} needs the CA certificate: set sslrootcert=/path/to/ca.pem (or sslrootcert=system \
                         for the operating system's store)",
                        mode.as_str()
                    ),
                ))
            }
            (_, None) => Arc::new(AnyCertificate(provider.clone())),
            (mode, Some(store)) => {
                let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
                    .build()
                    .map_err(|e| setting("sslrootcert", format!("cannot use the root certificates: {e}")))?;
                if mode == SslMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(ChainOnly(webpki))
                }
            }
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| setting("sslmode", e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        match self.client_files()? {
            None => Ok(builder.with_no_client_auth()),
            Some((cert, key)) => {
                let chain = read_certs(&cert).map_err(|m| setting("sslcert", m))?;
                let key = PrivateKeyDer::from_pem_file(&key)
                    .map_err(|e| setting("sslkey", format!("cannot read a private key from {}: {e}", key.display())))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| setting("sslkey", format!("the key does not fit the certificate: {e}")))
            }
        }
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in read_certs(path).map_err(|m| setting("sslrootcert", m))? {
        store
            .add(cert)
            .map_err(|e| setting("sslrootcert", format!("{}: not a usable CA certificate: {e}", path.display())))?;
    }
    Ok(store)
}

fn system_roots() -> Result<RootCertStore, TlsError> {
    let loaded = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    store.add_parsable_certificates(loaded.certs);
    if store.is_empty() {
        let why = loaded.errors.first().map_or_else(|| "it is empty".to_string(), |e| e.to_string());
        return Err(setting(
            "sslrootcert",
            format!("sslrootcert=system: no CA certificate in the system's store: {why}"),
        ));
    }
    Ok(store)
}

/// `verify-ca`: the chain must verify; the name is not looked at.
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
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
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

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer`/`require` with no root at hand: encryption without
/// authentication of the server, as libpq does. The handshake's signatures
/// are still checked against the certificate presented, a version 1
/// certificate's too (webpki parses version 3 only; OpenSSL, and so libpq,
/// takes both, and Citus makes a version 1 certificate for every node it
/// sets up).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl AnyCertificate {
    /// Checks the handshake's signature of `message` with the public key of
    /// `cert` when it is a version 1 or 2 certificate (which webpki does not
    /// parse), with rustls' own rules for the key and the scheme: in TLS 1.3
    /// the scheme's one algorithm, in TLS 1.2 those it maps to whose key type
    /// is the certificate's. `None` when `cert` is a version 3 certificate
    /// or no certificate at all (webpki's error stands).
    fn verify_with_key(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
        tls13: bool,
    ) -> Option<Result<HandshakeSignatureValid, rustls::Error>> {
        use x509_cert::der::{Decode, Encode};
        let parsed = x509_cert::Certificate::from_der(cert.as_ref()).ok()?;
        if parsed.tbs_certificate.version == x509_cert::certificate::Version::V3 {
            return None;
        }
        let spki = SubjectPublicKeyInfoDer::from(parsed.tbs_certificate.subject_public_key_info.to_der().ok()?);
        let algorithms = &self.0.signature_verification_algorithms;
        if tls13 {
            return Some(rustls::crypto::verify_tls13_signature_with_raw_key(message, &spki, dss, algorithms));
        }
        let key = webpki::RawPublicKeyEntity::try_from(&spki).ok()?;
        let Some((_, candidates)) = algorithms.mapping.iter().find(|(scheme, _)| *scheme == dss.scheme) else {
            return Some(Err(rustls::Error::PeerMisbehaved(
                rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
            )));
        };
        // (a candidate for another key type fails on the key's algorithm)
        let valid = candidates.iter().any(|alg| key.verify_signature(*alg, message, dss.signature()).is_ok());
        Some(if valid {
            Ok(HandshakeSignatureValid::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::BadSignature))
        })
    }
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
            .or_else(|e| self.verify_with_key(message, cert, dss, false).unwrap_or(Err(e)))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
            .or_else(|e| self.verify_with_key(message, cert, dss, true).unwrap_or(Err(e)))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One line for a failed handshake's cause, naming what to fix; `None`
/// when `e` is not a rustls error.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let tls = e.downcast_ref::<rustls::Error>().or_else(|| {
        e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()).and_then(|inner| inner.downcast_ref())
    })?;
    Some(match tls {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => {
                "the server's certificate is signed by an unknown CA (not one of sslrootcert's)".to_string()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "the server's certificate does not name the host connected to (sslmode=verify-full checks the host \
                 name)"
                    .to_string()
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server's certificate has expired".to_string()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the server's certificate is not valid yet".to_string()
            }
            other => format!("the server's certificate is not accepted: {other:?}"),
        },
        rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired) => {
            "the server requires a client certificate: set sslcert and sslkey".to_string()
        }
        rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA) => {
            "the server does not trust the client certificate (sslcert)".to_string()
        }
        other => format!("TLS: {other}"),
    })
}
