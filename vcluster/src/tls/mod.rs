//! TLS for the controller's API and the host agents' APIs (docs/security.md).
//!
//! - [`identity`]: the certificates a server presents. `vcluster serve` makes its own CA
//!   and a server certificate signed by it on first start (or loads the operator's); a
//!   host agent makes a self-signed certificate in its state dir.
//! - [`ServerTrust`]: how a client decides a server is the one it means: a CA from a file,
//!   or a pinned SHA-256 [`Fingerprint`] of a certificate in the server's chain (the
//!   controller's CA for the CLI and the agents; the agent's own certificate for the
//!   controller). Either way the chain's signatures, validity and the server's name are
//!   verified against that one trust anchor; nothing trusts the system's CA bundle.
//! - [`listener`]: a TLS listener for `axum::serve`.
//! - [`plain_http_allowed`]: the one rule for when plain HTTP may be spoken.
//!
//! Every config here uses rustls with the `ring` provider explicitly, never a
//! process-wide default.

pub mod identity;
pub mod listener;

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use thiserror::Error;

pub use identity::{ControllerTls, ServerIdentity};

/// Why a certificate, key or pin could not be used.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Pem { path: PathBuf, what: String },
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{0}")]
    Verifier(String),
    #[error("fingerprint {given:?}: expected a SHA-256 in hex (64 hex digits, colons allowed)")]
    Fingerprint { given: String },
}

/// The ring provider, the only one this crate builds with. rustls marks it deprecated
/// because ring has no post-quantum key exchange; its alternative (aws-lc-rs) needs a C
/// toolchain build of its own, which this project keeps out for now (docs/security.md).
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// ---------------------------------------------------------------------------------------
// Fingerprints

/// The SHA-256 of a certificate's DER encoding, as `openssl x509 -fingerprint -sha256`
/// shows it (upper-case hex pairs joined by colons).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub fn of(der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(der).into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = TlsError;
    /// Hex, either case, with or without colons (or spaces), with or without a
    /// `sha256:` / `SHA256 Fingerprint=` prefix as tools print it.
    fn from_str(s: &str) -> Result<Fingerprint, TlsError> {
        let bad = || TlsError::Fingerprint {
            given: s.to_string(),
        };
        let t = s.trim();
        let t = t.rsplit_once('=').map_or(t, |(_, v)| v);
        let t = t
            .strip_prefix("sha256:")
            .or_else(|| t.strip_prefix("SHA256:"))
            .unwrap_or(t);
        let hex: Vec<u8> = t
            .bytes()
            .filter(|b| *b != b':' && !b.is_ascii_whitespace())
            .collect();
        if hex.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.chunks(2).enumerate() {
            let pair = std::str::from_utf8(pair).map_err(|_| bad())?;
            out[i] = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(Fingerprint(out))
    }
}

// ---------------------------------------------------------------------------------------
// Files

/// Every certificate in a PEM file, in order (a chain: the leaf first).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            what: format!("not a PEM certificate file: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            what: "holds no certificate (expected -----BEGIN CERTIFICATE-----)".into(),
        });
    }
    Ok(certs)
}

// ---------------------------------------------------------------------------------------
// Trust: how a client knows the server

/// How a client recognises the server it calls.
#[derive(Clone, Debug)]
pub enum ServerTrust {
    /// Trust anchors (a CA's certificate, usually one) read from a file.
    Ca(Vec<CertificateDer<'static>>),
    /// The certificate in the server's chain with this fingerprint is the trust anchor:
    /// the controller's CA (it sends it after its own certificate).
    Fingerprint(Fingerprint),
    /// The server's own certificate must be exactly this one (a host agent's
    /// self-signed certificate, pinned at registration as SSH pins a host key); its name
    /// is not looked at, the pin is the identity.
    Certificate(Fingerprint),
}

impl ServerTrust {
    pub fn ca_file(path: &Path) -> Result<ServerTrust, TlsError> {
        Ok(ServerTrust::Ca(read_certs(path)?))
    }

    /// A rustls client config that accepts only servers this trust recognises.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let provider = provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let verifier: Arc<dyn ServerCertVerifier> = match self {
            ServerTrust::Ca(certs) => {
                let mut roots = RootCertStore::empty();
                for c in certs {
                    roots.add(c.clone())?;
                }
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| TlsError::Verifier(e.to_string()))?
            }
            ServerTrust::Fingerprint(pin) => Arc::new(PinnedAnchor {
                pin: *pin,
                provider,
            }),
            ServerTrust::Certificate(pin) => Arc::new(PinnedCertificate {
                pin: *pin,
                provider,
            }),
        };
        Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth())
    }

    /// A reqwest client builder speaking TLS with this trust only.
    pub fn reqwest_builder(&self) -> Result<reqwest::ClientBuilder, TlsError> {
        Ok(reqwest::Client::builder()
            .use_preconfigured_tls(self.client_config()?)
            .https_only(true))
    }
}

/// Verifies a server's chain against the one certificate in it whose SHA-256 is `pin`:
/// that certificate becomes the only trust anchor, and webpki then checks the chain's
/// signatures, validity and the server's name as for any CA.
#[derive(Debug)]
struct PinnedAnchor {
    pin: Fingerprint,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedAnchor {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let anchor = std::iter::once(end_entity)
            .chain(intermediates)
            .find(|c| Fingerprint::of(c) == self.pin)
            .ok_or_else(|| {
                rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                    Arc::new(PinMismatch(self.pin)),
                )))
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(anchor.clone().into_owned())?;
        let webpki =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[derive(Error)]
#[error("no certificate the server sent has the pinned SHA-256 fingerprint {0}")]
struct PinMismatch(Fingerprint);

/// rustls shows the cause of a refused certificate with `Debug`: make it the message.
impl fmt::Debug for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Accepts exactly one server certificate, by fingerprint; rustls still checks that the
/// server holds its private key (the handshake signature below).
#[derive(Debug)]
struct PinnedCertificate {
    pin: Fingerprint,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if Fingerprint::of(end_entity) == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(PinMismatch(self.pin))),
            )))
        }
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// An error and its causes joined by `: ` (reqwest's own Display hides the TLS reason,
/// such as a pin mismatch, in its sources).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// True when `e` (a reqwest error, say) comes from a server certificate we refused.
pub fn is_certificate_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<rustls::Error>() {
            return matches!(r, rustls::Error::InvalidCertificate(_));
        }
        // io::Error's own source() skips the error it wraps: look inside.
        if let Some(inner) = s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return matches!(inner, rustls::Error::InvalidCertificate(_));
        }
        source = s.source();
    }
    false
}

// ---------------------------------------------------------------------------------------
// Plain HTTP

/// Plain HTTP to or on `host` is allowed only on loopback, or when the operator said
/// `--insecure`. `host` is a URL's host or a listen address.
pub fn plain_http_allowed(host: &str, insecure: bool) -> bool {
    insecure || is_loopback(host)
}

/// True for `localhost`, 127.0.0.0/8 and ::1 (with or without brackets).
pub fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Checks a base URL before any request: `https://` is always fine (the trust decides);
/// `http://` only to loopback or with `--insecure`. `what` names the setting.
pub fn check_url(what: &str, url: &str, insecure: bool) -> Result<reqwest::Url, String> {
    let parsed: reqwest::Url = url
        .parse()
        .map_err(|e| format!("{what} {url:?} is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" => {
            let host = parsed.host_str().unwrap_or("");
            if plain_http_allowed(host, insecure) {
                Ok(parsed)
            } else {
                Err(format!(
                    "{what} {url} is plain HTTP to {host}, which is not loopback: tokens would \
                     cross the network readable; use https:// (the controller serves TLS by \
                     default) or pass --insecure if this network is trusted"
                ))
            }
        }
        other => Err(format!(
            "{what} {url:?}: scheme {other:?}, expected https:// (or http:// on loopback)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_parses_what_it_prints_and_what_openssl_prints() {
        let f = Fingerprint::of(b"certificate");
        let shown = f.to_string();
        assert_eq!(shown.len(), 32 * 3 - 1);
        assert_eq!(shown.parse::<Fingerprint>().unwrap(), f);
        let bare = shown.replace(':', "").to_lowercase();
        assert_eq!(bare.parse::<Fingerprint>().unwrap(), f);
        let openssl = format!("sha256 Fingerprint={shown}");
        assert_eq!(openssl.parse::<Fingerprint>().unwrap(), f);
        assert!("ab:cd".parse::<Fingerprint>().is_err());
        assert!(shown.replace('A', "G").parse::<Fingerprint>().is_err() || !shown.contains('A'));
    }

    #[test]
    fn plain_http_is_refused_off_loopback_without_insecure() {
        assert!(check_url("--api", "http://127.0.0.1:7200", false).is_ok());
        assert!(check_url("--api", "http://[::1]:7200", false).is_ok());
        assert!(check_url("--api", "http://localhost:7200", false).is_ok());
        let e = check_url("--api", "http://10.0.0.1:7200", false).unwrap_err();
        assert!(
            e.contains("not loopback") && e.contains("--insecure"),
            "{e}"
        );
        assert!(check_url("--api", "http://10.0.0.1:7200", true).is_ok());
        assert!(check_url("--api", "https://10.0.0.1:7200", false).is_ok());
        assert!(check_url("--api", "ftp://x", true).is_err());
    }
}
