//! A replica's TLS: its certificate on both listeners, mutual TLS on the peer listener, and
//! reloading the files without a restart.
//!
//! Each node has one certificate, issued by the realm's CA (`ca_file`), valid for
//! `node-<id>.<realm>` and for the host names and addresses clients reach it by. It serves
//! both listeners with it and presents it as a client to its peers:
//!
//! - **public listener**: TLS 1.3, no client certificate (clients trust the realm file's
//!   `tls.ca_pem`); ALPN `h2` for gRPC and `http/1.1` for HTTP clients;
//! - **peer listener**: TLS 1.3, a client certificate issued by the realm's CA required. The
//!   peer service reads who is calling from the certificate's name
//!   ([`keyraft_proto::tls::identity_of`]): a replica is `node-<id>.<realm>`, and every Raft
//!   message must come from the node its certificate names; an operator is
//!   `admin.<realm>`;
//! - **to peers**: a node checks that the peer it dials has the certificate of the node id it
//!   means to reach (`node-<target>.<realm>`), whatever its address.
//!
//! The files are read again on [`NodeTls::reload`] (SIGHUP): new connections use the new
//! certificate, open ones keep theirs. A reload that fails keeps the files in use and says why.
//! The node's own certificate is checked at load like a peer would check it (issued by
//! `ca_file`, valid now, named for this node), so a wrong file fails at start, not at the
//! first election.

use crate::config::TlsSettings;
use crate::Error;
use keyraft_proto::tls::{self as ptls, TlsClient, TlsError, ALPN_H2};
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use std::path::PathBuf;
use std::sync::Arc;

/// The ALPN protocol of HTTP/1.1 (the public listener's HTTP clients).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// A listener's TLS configuration, replaceable while it serves.
pub type ServerTls = keyraft_proto::tls::Reloadable<ServerConfig>;

/// The files of `[tls]`, paths resolved.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The node's certificate chain (PEM).
    pub cert_file: PathBuf,
    /// Its private key (PEM), owner-only.
    pub key_file: PathBuf,
    /// The realm's CA certificates (PEM).
    pub ca_file: PathBuf,
}

impl TlsFiles {
    /// The files `settings` name, or `None` if it says plaintext; an error if it says
    /// neither or both.
    pub fn from_settings(settings: &TlsSettings) -> Result<Option<Self>, Error> {
        match (settings.plaintext, &settings.cert_file, &settings.key_file, &settings.ca_file) {
            (true, None, None, None) => Ok(None),
            (true, ..) => Err(Error::config("[tls] plaintext = true goes without cert_file, key_file and ca_file")),
            (false, Some(cert), Some(key), Some(ca)) => {
                Ok(Some(Self { cert_file: cert.clone(), key_file: key.clone(), ca_file: ca.clone() }))
            }
            (false, ..) => Err(Error::config(
                "[tls] needs cert_file, key_file and ca_file (or plaintext = true, for development only)",
            )),
        }
    }
}

/// The three configurations one set of files gives.
struct Built {
    public: ServerConfig,
    peer: ServerConfig,
    peer_client: rustls::ClientConfig,
}

/// A node's TLS: what its listeners serve and what it dials peers with.
#[derive(Debug)]
pub struct NodeTls {
    files: TlsFiles,
    node_id: u64,
    realm: String,
    public: ServerTls,
    peer: ServerTls,
    peer_client: TlsClient,
}

impl NodeTls {
    /// Reads and checks the files for node `node_id` of `realm`.
    pub fn load(files: TlsFiles, node_id: u64, realm: &str) -> Result<Self, Error> {
        let built = build(&files, node_id, realm).map_err(|e| Error::config_because("[tls]", e))?;
        Ok(Self {
            files,
            node_id,
            realm: realm.to_owned(),
            public: ServerTls::new(built.public),
            peer: ServerTls::new(built.peer),
            peer_client: TlsClient::new(built.peer_client),
        })
    }

    /// Reads the files again; on success new connections (both listeners, and to peers) use
    /// them. On failure the files in use stay in use.
    pub fn reload(&self) -> Result<(), Error> {
        let built = build(&self.files, self.node_id, &self.realm).map_err(|e| Error::config_because("[tls]", e))?;
        self.public.replace(built.public);
        self.peer.replace(built.peer);
        self.peer_client.replace(built.peer_client);
        Ok(())
    }

    /// The public listener's.
    pub fn public(&self) -> ServerTls {
        self.public.clone()
    }

    /// The peer listener's.
    pub fn peer(&self) -> ServerTls {
        self.peer.clone()
    }

    /// What this node dials its peers with.
    pub fn peer_client(&self) -> TlsClient {
        self.peer_client.clone()
    }

    /// The realm name certificates are checked against.
    pub fn realm(&self) -> &str {
        &self.realm
    }
}

fn build(files: &TlsFiles, node_id: u64, realm: &str) -> Result<Built, TlsError> {
    let ca = ptls::read_certificates(&files.ca_file, "ca_file")?;
    let roots = Arc::new(ptls::roots(&ca, "ca_file")?);
    let chain = ptls::read_certificates(&files.cert_file, "cert_file")?;
    let key = ptls::read_private_key(&files.key_file, "key_file")?;
    check_own(&chain, &roots, node_id, realm, files)?;

    let server = |client_auth: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
                  alpn: &[&[u8]],
                  key: PrivateKeyDer<'static>|
     -> Result<ServerConfig, TlsError> {
        let builder = ServerConfig::builder_with_provider(ptls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::invalid("TLS versions", e))?;
        let builder = match client_auth {
            Some(verifier) => builder.with_client_cert_verifier(verifier),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain.clone(), key)
            .map_err(|e| TlsError::invalid("cert_file and key_file", format!("do not go together: {e}")))?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    };
    let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), ptls::provider())
        .build()
        .map_err(|e| TlsError::invalid("ca_file", format!("cannot check client certificates: {e}")))?;
    Ok(Built {
        public: server(None, &[ALPN_H2, ALPN_HTTP1], key.clone_key())?,
        peer: server(Some(clients), &[ALPN_H2], key.clone_key())?,
        peer_client: ptls::client_config((*roots).clone(), Some((chain.clone(), key)))?,
    })
}

/// Checks the node's own certificate as its peers will: issued by the CA, valid now, for
/// `node-<id>.<realm>`.
fn check_own(
    chain: &[CertificateDer<'static>],
    roots: &Arc<rustls::RootCertStore>,
    node_id: u64,
    realm: &str,
    files: &TlsFiles,
) -> Result<(), TlsError> {
    let name = ptls::node_name(node_id, realm);
    let server_name = ServerName::try_from(name.clone()).map_err(|_| {
        TlsError::invalid(
            "realm name",
            format!(
                "{realm:?} cannot name certificates ({name} is no DNS name): TLS needs a realm named like a domain"
            ),
        )
    })?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), ptls::provider())
        .build()
        .map_err(|e| TlsError::invalid("ca_file", e))?;
    let (end_entity, intermediates) = chain.split_first().ok_or_else(|| TlsError::invalid("cert_file", "empty"))?;
    verifier.verify_server_cert(end_entity, intermediates, &server_name, &[], UnixTime::now()).map_err(|e| {
        TlsError::invalid(
            format!("cert_file {}", files.cert_file.display()),
            format!(
                "is not a valid certificate of {name} issued by ca_file {}: {e} (each node's certificate names it \
                 {name}; `keyraft tls node` issues one)",
                files.ca_file.display()
            ),
        )
    })?;
    Ok(())
}

/// Reads the identity a peer-listener client's certificate gives in `realm`. The TLS handshake
/// already checked that the certificate chains to the realm's CA and is valid now.
pub fn client_identity(cert: &CertificateDer<'_>, realm: &str) -> Result<ptls::CertIdentity, String> {
    let parsed = webpki::EndEntityCert::try_from(cert).map_err(|e| format!("unreadable client certificate: {e}"))?;
    let identity = ptls::identity_of(parsed.valid_dns_names(), realm)?;
    // The names were only read above; this is the check webpki makes for a name.
    let name = match &identity {
        ptls::CertIdentity::Node(id) => ptls::node_name(*id, realm),
        ptls::CertIdentity::Admin(name) => name.clone(),
    };
    let server_name = ServerName::try_from(name.as_str()).map_err(|_| format!("{name} is no DNS name"))?;
    parsed.verify_is_valid_for_subject_name(&server_name).map_err(|e| format!("not valid for {name}: {e}"))?;
    Ok(identity)
}
