//! The certificates servers present.
//!
//! The controller's TLS directory (`vcluster serve --tls-dir`, default `tls`):
//! `ca.pem`, `ca.key` (0600), `server.pem` (the server's certificate then the CA's, so a
//! client pinning the CA by fingerprint finds it in the chain), `server.key` (0600).
//! Made on first start; reused afterwards. A missing `server.pem`/`server.key` is issued
//! again from the CA's key (delete them to add `--tls-san` names); a missing CA is never
//! replaced behind the operator's back while a server certificate signed by it exists.
//!
//! A host agent keeps `agent.pem` and `agent.key` (0600) in its state dir: one
//! self-signed certificate whose fingerprint the controller pins at registration.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{Fingerprint, TlsError, provider, read_certs};
use crate::secret;

/// A server's certificate chain (its own first) and private key.
pub struct ServerIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("leaf", &self.leaf_fingerprint())
            .finish_non_exhaustive()
    }
}

impl Clone for ServerIdentity {
    fn clone(&self) -> Self {
        ServerIdentity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl ServerIdentity {
    /// An operator's certificate chain (PEM, the server's first) and key (PEM, mode 0600).
    pub fn from_files(cert: &Path, key: &Path) -> Result<ServerIdentity, TlsError> {
        secret::check_mode(key).map_err(|e| TlsError::Pem {
            path: key.to_path_buf(),
            what: e.to_string(),
        })?;
        let chain = read_certs(cert)?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Pem {
            path: key.to_path_buf(),
            what: format!("not a PEM private key: {e}"),
        })?;
        Ok(ServerIdentity { chain, key })
    }

    pub fn leaf_fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.chain[0])
    }

    /// A rustls server config presenting this identity (HTTP/1.1, no client certificates).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The controller's TLS: what it presents, and the CA clients pin (when it made one).
#[derive(Debug, Clone)]
pub struct ControllerTls {
    pub identity: ServerIdentity,
    /// The generated CA's certificate file and fingerprint; `None` for an operator's
    /// certificate.
    pub ca: Option<(PathBuf, Fingerprint)>,
    /// True when this start made a new CA.
    pub created_ca: bool,
}

const CA_NAME: &str = "vcluster controller CA";

fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(p)
}

/// The names a server certificate is valid for: `sans` plus `localhost`, the loopback
/// addresses and this machine's hostname, without duplicates.
pub fn default_sans(sans: &[String]) -> Vec<String> {
    let mut names: Vec<String> = sans.to_vec();
    names.extend(["localhost".into(), "127.0.0.1".into(), "::1".into()]);
    if let Some(h) = hostname() {
        names.push(h);
    }
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|n| !n.is_empty() && seen.insert(n.clone()));
    names
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

fn leaf_params(names: &[String], common_name: &str) -> Result<CertificateParams, TlsError> {
    let mut p = CertificateParams::new(names.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    p.distinguished_name = dn;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    Ok(p)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_public(path: &Path, pem: &str) -> Result<(), TlsError> {
    std::fs::write(path, pem).map_err(io(path))
}

fn write_key(path: &Path, key: &KeyPair) -> Result<(), TlsError> {
    secret::write_secret_file(path, key.serialize_pem().as_bytes()).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        what: e.to_string(),
    })
}

fn read_key(path: &Path) -> Result<KeyPair, TlsError> {
    secret::check_mode(path).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        what: e.to_string(),
    })?;
    let pem = std::fs::read_to_string(path).map_err(io(path))?;
    KeyPair::from_pem(&pem).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        what: format!("not a PEM private key: {e}"),
    })
}

fn create_dir_private(dir: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))
}

impl ControllerTls {
    /// Loads the CA and server certificate from `dir`, making what is missing (see the
    /// module doc). `sans` are the extra names of a newly issued server certificate.
    pub fn load_or_create(dir: &Path, sans: &[String]) -> Result<ControllerTls, TlsError> {
        create_dir_private(dir)?;
        let ca_pem = dir.join("ca.pem");
        let ca_key = dir.join("ca.key");
        let server_pem = dir.join("server.pem");
        let server_key = dir.join("server.key");
        let mut created_ca = false;
        let ca_key_pair = if ca_pem.exists() || ca_key.exists() {
            read_key(&ca_key)?
        } else if server_pem.exists() {
            return Err(TlsError::Pem {
                path: ca_pem,
                what: format!(
                    "missing while {} exists; restore the CA or remove the directory to make \
                     a new one (every agent and user must then pin the new CA)",
                    server_pem.display()
                ),
            });
        } else {
            let key = KeyPair::generate()?;
            let cert = ca_params()?.self_signed(&key)?;
            write_key(&ca_key, &key)?;
            write_public(&ca_pem, &cert.pem())?;
            created_ca = true;
            key
        };
        let ca_cert = read_certs(&ca_pem)?.remove(0);
        if !server_pem.exists() || !server_key.exists() {
            let issuer = Issuer::new(ca_params()?, ca_key_pair);
            let key = KeyPair::generate()?;
            let cert = leaf_params(&default_sans(sans), "vcluster controller")?
                .signed_by(&key, &issuer)?;
            write_key(&server_key, &key)?;
            // The chain: the server's certificate, then the CA's.
            let ca_text = std::fs::read_to_string(&ca_pem).map_err(io(&ca_pem))?;
            write_public(&server_pem, &format!("{}{ca_text}", cert.pem()))?;
        }
        let identity = ServerIdentity::from_files(&server_pem, &server_key)?;
        if !identity.chain.contains(&ca_cert) {
            return Err(TlsError::Pem {
                path: server_pem,
                what: format!("does not carry the CA of {}", ca_pem.display()),
            });
        }
        let fingerprint = Fingerprint::of(&ca_cert);
        Ok(ControllerTls {
            identity,
            ca: Some((ca_pem, fingerprint)),
            created_ca,
        })
    }

    /// An operator's certificate and key: no CA is made.
    pub fn from_files(cert: &Path, key: &Path) -> Result<ControllerTls, TlsError> {
        Ok(ControllerTls {
            identity: ServerIdentity::from_files(cert, key)?,
            ca: None,
            created_ca: false,
        })
    }
}

/// The host agent's own self-signed certificate in `state_dir` (`agent.pem`,
/// `agent.key`), made on first start for `names` (plus the defaults) and reused after.
pub fn agent_identity(state_dir: &Path, names: &[String]) -> Result<ServerIdentity, TlsError> {
    create_dir_private(state_dir)?;
    let pem = state_dir.join("agent.pem");
    let key_path = state_dir.join("agent.key");
    if !pem.exists() || !key_path.exists() {
        let key = KeyPair::generate()?;
        let mut params = leaf_params(&default_sans(names), "vcluster host agent")?;
        // A self-signed leaf: the controller pins it by fingerprint as its own anchor.
        params.is_ca = IsCa::NoCa;
        let cert = params.self_signed(&key)?;
        write_key(&key_path, &key)?;
        write_public(&pem, &cert.pem())?;
    }
    ServerIdentity::from_files(&pem, &key_path)
}
