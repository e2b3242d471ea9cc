//! A realm's certificates: its CA, a certificate per node and per operator (`keyraft tls`,
//! `keyraft dev`, the tests).
//!
//! The CA is the realm's own: it signs nothing but the realm's node and operator
//! certificates, so a certificate of another CA (another realm's, a public one) is refused by
//! every replica. Names (docs/operations.md, "Certificates"):
//!
//! - a node: `node-<id>.<realm>`, plus the host names and addresses clients and operators
//!   reach it by;
//! - an operator: `admin.<realm>` or `<who>.admin.<realm>`.
//!
//! Keys are ECDSA P-256; private keys are written owner-only. The CA's key stays with whoever
//! issues certificates: replicas need only its certificate.

use keyraft_proto::tls::{admin_name, node_name};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// The CA certificate's file name in a TLS directory.
pub const CA_CERT_FILE: &str = "ca.crt";
/// The CA key's file name in a TLS directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// How long a CA made by `keyraft tls ca` is valid, in days.
pub const CA_VALID_DAYS: i64 = 3_650;
/// How long a node or operator certificate is valid unless asked otherwise, in days.
pub const CERT_VALID_DAYS: i64 = 365;

/// Issuing certificates failed; says which file or name.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// rcgen refused.
    #[error("{what}: {source}")]
    Rcgen {
        /// What was being made.
        what: String,
        /// Why.
        #[source]
        source: rcgen::Error,
    },
    /// A secret file others may read.
    #[error(transparent)]
    Exposed(#[from] keyraft_core::key_file::KeyFileError),
}

fn rcgen_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> CertError {
    let what = what.into();
    move |source| CertError::Rcgen { what, source }
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// From.
    pub not_before: OffsetDateTime,
    /// Until.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (clocks differ) for `days` days.
    pub fn days(days: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        Self { not_before: now - Duration::hours(1), not_after: now + Duration::days(days) }
    }

    /// Expired an hour ago (tests of refusal).
    pub fn expired() -> Self {
        let now = OffsetDateTime::now_utc();
        Self { not_before: now - Duration::days(30), not_after: now - Duration::hours(1) }
    }
}

/// A realm's CA, able to issue.
pub struct RealmCa {
    realm: String,
    key: KeyPair,
}

/// The CA's subject and constraints; the same whenever its key is loaded, so that what it
/// issues names it as the certificate it wrote says.
fn ca_params(realm: &str, validity: Validity) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, format!("keyraft CA of realm {realm}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    params
}

/// A temporary file beside `path`, renamed over it once written: a node reloading on SIGHUP
/// never reads half a file, and reissuing replaces the old certificate and key.
fn temporary(path: &Path) -> Result<PathBuf, CertError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| CertError::Io { path: parent.to_owned(), source })?;
    }
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(name);
    let _ = std::fs::remove_file(&tmp);
    Ok(tmp)
}

fn replace(tmp: &Path, path: &Path) -> Result<(), CertError> {
    std::fs::rename(tmp, path).map_err(|source| CertError::Io { path: path.to_owned(), source })
}

fn write(path: &Path, text: &str) -> Result<(), CertError> {
    let tmp = temporary(path)?;
    std::fs::write(&tmp, text).map_err(|source| CertError::Io { path: tmp.clone(), source })?;
    replace(&tmp, path)
}

fn write_secret(path: &Path, text: &str) -> Result<(), CertError> {
    let tmp = temporary(path)?;
    keyraft_core::key_file::write_secret_text(&tmp, text)?;
    replace(&tmp, path)
}

impl RealmCa {
    /// Makes a CA for `realm`, writing `dir/ca.crt` and `dir/ca.key` (owner-only).
    pub fn create(dir: &Path, realm: &str, validity: Validity) -> Result<Self, CertError> {
        let key = KeyPair::generate().map_err(rcgen_err("CA key"))?;
        let cert = ca_params(realm, validity).self_signed(&key).map_err(rcgen_err("CA certificate"))?;
        write_secret(&dir.join(CA_KEY_FILE), &key.serialize_pem())?;
        write(&dir.join(CA_CERT_FILE), &cert.pem())?;
        Ok(Self { realm: realm.to_owned(), key })
    }

    /// The CA of `realm` whose key is `dir/ca.key`.
    pub fn open(dir: &Path, realm: &str) -> Result<Self, CertError> {
        let path = dir.join(CA_KEY_FILE);
        keyraft_core::key_file::check_owner_only(&path, "the CA key")?;
        let pem = std::fs::read_to_string(&path).map_err(|source| CertError::Io { path: path.clone(), source })?;
        let key = KeyPair::from_pem(&pem).map_err(rcgen_err(format!("CA key {}", path.display())))?;
        Ok(Self { realm: realm.to_owned(), key })
    }

    /// Issues a certificate for `names` (DNS names or IP addresses; the first is the subject),
    /// writing it to `cert_path` and its new key to `key_path` (owner-only).
    pub fn issue(
        &self,
        names: &[String],
        validity: Validity,
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<(), CertError> {
        let what = names.first().cloned().unwrap_or_default();
        let mut params = CertificateParams::new(names.to_vec()).map_err(rcgen_err(format!("names {names:?}")))?;
        params.distinguished_name.push(DnType::CommonName, what.clone());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let key = KeyPair::generate().map_err(rcgen_err(format!("key of {what}")))?;
        // The issuer's subject and key are what the certificate names and is signed with.
        let issuer = Issuer::new(ca_params(&self.realm, validity), &self.key);
        let cert = params.signed_by(&key, &issuer).map_err(rcgen_err(format!("certificate of {what}")))?;
        write_secret(key_path, &key.serialize_pem())?;
        write(cert_path, &cert.pem())
    }

    /// Issues node `id`'s certificate (`node-<id>.<realm>` and `hosts`) as `dir/node-<id>.crt`
    /// and `.key`; returns their paths.
    pub fn issue_node(
        &self,
        dir: &Path,
        id: u64,
        hosts: &[String],
        validity: Validity,
    ) -> Result<(PathBuf, PathBuf), CertError> {
        let mut names = vec![node_name(id, &self.realm)];
        names.extend(hosts.iter().cloned());
        let (cert, key) = (dir.join(format!("node-{id}.crt")), dir.join(format!("node-{id}.key")));
        self.issue(&names, validity, &cert, &key)?;
        Ok((cert, key))
    }

    /// Issues an operator's certificate (`admin.<realm>`, or `<who>.admin.<realm>`) as
    /// `dir/admin.crt` and `.key` (or `dir/<who>.admin.crt`); returns their paths.
    pub fn issue_admin(
        &self,
        dir: &Path,
        who: Option<&str>,
        validity: Validity,
    ) -> Result<(PathBuf, PathBuf), CertError> {
        let stem = who.map_or_else(|| "admin".to_owned(), |w| format!("{w}.admin"));
        let (cert, key) = (dir.join(format!("{stem}.crt")), dir.join(format!("{stem}.key")));
        self.issue(&[admin_name(who, &self.realm)], validity, &cert, &key)?;
        Ok((cert, key))
    }
}
