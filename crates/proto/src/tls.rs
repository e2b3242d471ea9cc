//! TLS for the channels of [`crate::transport`]: the one crypto provider, the client
//! configurations, and how a client trusts a realm's replicas.
//!
//! keyraft uses rustls with `ring` and nothing else. Every configuration is built with
//! [`provider`] passed explicitly, so no code path depends on a process-wide default provider
//! (rustls panics when two are compiled in and none is installed); binaries also install it
//! as the default at start ([`install_default_provider`]) for libraries that build their own.
//!
//! Proofs, not TLS, are what a client trusts a replica's answers for. TLS keeps who looks up
//! whom from the network, and between replicas it says which node is speaking (mutual TLS:
//! the server side is in `keyraft-server`).

use keyraft_core::RealmFile;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

/// The ALPN protocol of gRPC (HTTP/2).
pub const ALPN_H2: &[u8] = b"h2";

/// The crypto provider of every TLS configuration in keyraft.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes [`provider`] the process-wide default, for libraries that build configurations
/// without naming one. Call once at the start of a binary; a second call changes nothing.
pub fn install_default_provider() {
    // Err: a default is already installed (by an earlier call): nothing to do.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A TLS setting that cannot be used; says which and why.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{what} {path}: {source}")]
    Read {
        /// The setting.
        what: String,
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Certificates or a key that are not what they should be.
    #[error("{what}: {message}")]
    Invalid {
        /// The setting or field.
        what: String,
        /// Why.
        message: String,
    },
}

impl TlsError {
    /// `what` is unusable because of `message`.
    pub fn invalid(what: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Self::Invalid { what: what.into(), message: message.to_string() }
    }
}

/// The certificates in `pem`; at least one. `what` names where they come from.
pub fn certificates_from_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::invalid(what, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::invalid(what, "holds no certificate (-----BEGIN CERTIFICATE-----)"));
    }
    Ok(certs)
}

/// The certificates of the PEM file at `path`; `what` names the setting.
pub fn read_certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        what: what.to_owned(),
        path: path.display().to_string(),
        source,
    })?;
    certificates_from_pem(&pem, &format!("{what} {}", path.display()))
}

/// The private key (PKCS#8, SEC1 or PKCS#1 PEM) at `path`, a secret file that only its owner
/// may read; `what` names the setting.
pub fn read_private_key(path: &Path, what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    keyraft_core::key_file::check_owner_only(path, what).map_err(|e| TlsError::invalid(what, e))?;
    let pem = keyraft_core::key_file::Secret::new(std::fs::read(path).map_err(|source| TlsError::Read {
        what: what.to_owned(),
        path: path.display().to_string(),
        source,
    })?);
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| TlsError::invalid(format!("{what} {}", path.display()), format!("not a PEM private key: {e}")))
}

/// A trust store of `certs` (the CAs whose certificates are accepted).
pub fn roots(certs: &[CertificateDer<'static>], what: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        roots
            .add(cert.clone())
            .map_err(|e| TlsError::invalid(what, format!("certificate {i} is no usable CA: {e}")))?;
    }
    Ok(roots)
}

/// A client configuration trusting `roots`, presenting `identity` (a certificate chain and
/// its key) if given, speaking gRPC's ALPN.
pub fn client_config(
    roots: RootCertStore,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::invalid("TLS versions", e))?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| TlsError::invalid("client certificate", format!("does not go with its key: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// A TLS configuration replaceable while in use: each new connection takes the current one,
/// open connections keep theirs (a certificate reloaded on SIGHUP). Clones share it.
#[derive(Debug)]
pub struct Reloadable<T> {
    current: Arc<RwLock<Arc<T>>>,
}

impl<T> Clone for Reloadable<T> {
    fn clone(&self) -> Self {
        Self { current: self.current.clone() }
    }
}

impl<T> Reloadable<T> {
    /// Starting with `config`.
    pub fn new(config: T) -> Self {
        Self { current: Arc::new(RwLock::new(Arc::new(config))) }
    }

    /// The configuration new connections use.
    pub fn config(&self) -> Arc<T> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Replaces the configuration for new connections.
    pub fn replace(&self, config: T) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
    }
}

/// A client's TLS configuration.
pub type TlsClient = Reloadable<ClientConfig>;

impl TlsClient {
    /// How a client reaches the replicas of the realm `file` describes: TLS trusting its
    /// `tls.ca_pem`, or `None` (plaintext) if it has none.
    pub fn for_realm(file: &RealmFile) -> Result<Option<Self>, TlsError> {
        let Some(tls) = &file.tls else { return Ok(None) };
        let certs = certificates_from_pem(tls.ca_pem.as_bytes(), "realm file tls.ca_pem")?;
        let config = client_config(roots(&certs, "realm file tls.ca_pem")?, None)?;
        Ok(Some(Self::new(config)))
    }
}

/// The file names of an operator's TLS directory (`keyraft admin --tls-dir`): the realm's CA
/// certificate, the operator's certificate and its key.
pub const OPERATOR_FILES: [&str; 3] = ["ca.crt", "admin.crt", "admin.key"];

/// What an operator dials the peer services with: the realm's CA and the operator's
/// certificate (`admin.<realm>`) from `dir` ([`OPERATOR_FILES`]).
pub fn operator_client(dir: &Path) -> Result<TlsClient, TlsError> {
    let [ca, cert, key] = OPERATOR_FILES.map(|f| dir.join(f));
    let ca = read_certificates(&ca, "the realm's CA certificate")?;
    let chain = read_certificates(&cert, "the operator certificate")?;
    let key = read_private_key(&key, "the operator key")?;
    Ok(TlsClient::new(client_config(roots(&ca, "the realm's CA certificate")?, Some((chain, key)))?))
}

/// The name in a replica's certificate (a DNS subject alternative name) that says it is node
/// `id` of `realm`: replicas check it on each other, in both directions.
pub fn node_name(id: u64, realm: &str) -> String {
    format!("node-{id}.{realm}")
}

/// The name in an operator's certificate: `admin.<realm>`, or `<who>.admin.<realm>` to tell
/// operators apart in the log.
pub fn admin_name(who: Option<&str>, realm: &str) -> String {
    match who {
        Some(who) => format!("{who}.admin.{realm}"),
        None => format!("admin.{realm}"),
    }
}

/// Who a client certificate of a realm says its holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertIdentity {
    /// A replica: `node-<id>.<realm>`.
    Node(u64),
    /// An operator: `admin.<realm>` or `<who>.admin.<realm>` (the name).
    Admin(String),
}

/// The identity `names` (a certificate's DNS names, already verified to chain to the realm's
/// CA) give in `realm`. Names of other realms and other names (host names, addresses) say
/// nothing; a certificate naming two identities is refused, or one node could speak as two.
pub fn identity_of<'a>(names: impl IntoIterator<Item = &'a str>, realm: &str) -> Result<CertIdentity, String> {
    let suffix = format!(".{realm}");
    let admin = admin_name(None, realm);
    let admin_suffix = format!(".{admin}");
    let mut found: Option<CertIdentity> = None;
    for name in names {
        let identity = if name.eq_ignore_ascii_case(&admin) || ends_with_ignore_case(name, &admin_suffix) {
            CertIdentity::Admin(name.to_ascii_lowercase())
        } else if let Some(id) = strip_node(name, &suffix) {
            CertIdentity::Node(id)
        } else {
            continue;
        };
        match &found {
            Some(other) if *other != identity => {
                return Err(format!(
                    "the certificate names two identities in realm {realm:?} ({other:?} and {identity:?})"
                ))
            }
            _ => found = Some(identity),
        }
    }
    found.ok_or_else(|| {
        format!(
            "the certificate names no identity in realm {realm:?} (a replica's is {}, an operator's {})",
            node_name(1, realm).replace("node-1", "node-<id>"),
            admin
        )
    })
}

fn ends_with_ignore_case(name: &str, suffix: &str) -> bool {
    name.len() > suffix.len() && name.is_char_boundary(name.len() - suffix.len()) && {
        let tail = &name[name.len() - suffix.len()..];
        tail.eq_ignore_ascii_case(suffix)
    }
}

/// `node-<id><suffix>` with a canonical decimal id (no leading zeros, at least 1).
fn strip_node(name: &str, suffix: &str) -> Option<u64> {
    if !ends_with_ignore_case(name, suffix) {
        return None;
    }
    let head = &name[..name.len() - suffix.len()];
    let digits = head.strip_prefix("node-").or_else(|| head.strip_prefix("NODE-"))?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_come_from_the_realms_names_only() {
        let id = |names: &[&str]| identity_of(names.iter().copied(), "dev.example");
        assert_eq!(id(&["localhost", "node-3.dev.example", "127.0.0.1"]), Ok(CertIdentity::Node(3)));
        assert_eq!(id(&["node-3.dev.example", "node-3.dev.example"]), Ok(CertIdentity::Node(3)));
        assert_eq!(id(&["admin.dev.example"]), Ok(CertIdentity::Admin("admin.dev.example".into())));
        assert_eq!(id(&["alice.admin.dev.example"]), Ok(CertIdentity::Admin("alice.admin.dev.example".into())));
        for refused in [
            &["node-3.other.example"][..],
            &["node-03.dev.example"],
            &["node-0.dev.example"],
            &["node-.dev.example"],
            &["node-3.dev.example.evil"],
            &["xnode-3.dev.example"],
            &["admin.other"],
            &[],
            &["node-1.dev.example", "node-2.dev.example"],
            &["node-1.dev.example", "admin.dev.example"],
        ] {
            assert!(id(refused).is_err(), "{refused:?}");
        }
    }
}
