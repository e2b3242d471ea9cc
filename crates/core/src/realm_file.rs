//! The realm file: what a client (and a replica) needs to know about a realm, as JSON.
//!
//! ```json
//! {
//!   "realm": "dev",
//!   "vrf_public_key": "<64 hex>",
//!   "replica_keys": ["<64 hex>", ...],
//!   "verifier_keys": [],
//!   "verifier_threshold": 0,
//!   "epoch_ttl_ms": 60000,
//!   "clock_skew_ms": 5000,
//!   "endpoints": ["127.0.0.1:7001", ...]
//! }
//! ```
//!
//! The schema and the rules are docs/protocol.md section 5.3. Keys are checked when the file
//! is read (64 lower-case hex digits, canonical, not of small order), key lists must already
//! be sorted strictly ascending, unknown and duplicate fields are refused, and the realm
//! configuration is validated, so a bad file is refused before anything trusts it. Sorting
//! silently would let two implementations read one file as different key positions (proofs
//! name signers by position), so an unsorted list is the file writer's error.

use crate::lookup::ClientRealm;
use crate::types::RealmConfig;
use crate::vrf::VrfPublicKey;
use crate::PublicKey;
use serde::{Deserialize, Serialize};

/// The realm file's contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealmFile {
    /// The realm name.
    pub realm: String,
    /// The VRF public key, hex.
    pub vrf_public_key: String,
    /// The replicas' head-signing keys, hex.
    pub replica_keys: Vec<String>,
    /// The registered verifiers' keys, hex.
    #[serde(default)]
    pub verifier_keys: Vec<String>,
    /// How many verifiers a client requires by default.
    #[serde(default)]
    pub verifier_threshold: usize,
    /// The oldest head a client accepts, in milliseconds.
    pub epoch_ttl_ms: u64,
    /// How far in the future a head may be, in milliseconds.
    pub clock_skew_ms: u64,
    /// Public addresses (host:port) of the replicas.
    #[serde(default)]
    pub endpoints: Vec<String>,
}

/// Why a realm file was refused.
#[derive(Debug, thiserror::Error)]
pub enum RealmFileError {
    /// Not JSON of the expected shape.
    #[error("realm file is malformed: {0}")]
    Json(String),
    /// A key that does not decode, or a key list out of order.
    #[error("realm file field {field}: {message}")]
    Key {
        /// Which field, with the position in a key list (`replica_keys[2]`).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The configuration breaks a rule.
    #[error("realm file describes an invalid realm: {0}")]
    Invalid(String),
}

fn key32(field: &str, s: &str) -> Result<[u8; 32], RealmFileError> {
    // One spelling per key: upper-case hex would compare differently as text than as bytes.
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(RealmFileError::Key {
            field: field.to_owned(),
            message: format!("expected 64 lower-case hex digits (32 bytes), got {s:?}"),
        });
    }
    let bytes = hex::decode(s).map_err(|e| RealmFileError::Key { field: field.to_owned(), message: e.to_string() })?;
    bytes.try_into().map_err(|_| RealmFileError::Key {
        field: field.to_owned(),
        message: "expected 32 bytes (64 hex digits)".into(),
    })
}

/// A key list as the file holds it: every key valid, sorted strictly ascending by bytes.
fn keys(field: &'static str, list: &[String]) -> Result<Vec<PublicKey>, RealmFileError> {
    let mut out: Vec<PublicKey> = Vec::with_capacity(list.len());
    for (i, s) in list.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let key = PublicKey::from_bytes(&key32(&at, s)?)
            .map_err(|e| RealmFileError::Key { field: at.clone(), message: e.to_string() })?;
        if let Some(previous) = out.last() {
            if *previous == key {
                return Err(RealmFileError::Key { field: at, message: format!("duplicate of {field}[{}]", i - 1) });
            }
            if *previous > key {
                return Err(RealmFileError::Key {
                    field: at,
                    message: format!(
                        "keys must be sorted strictly ascending (bytewise); this one sorts before {field}[{}]",
                        i - 1
                    ),
                });
            }
        }
        out.push(key);
    }
    Ok(out)
}

impl RealmFile {
    /// Parses and checks a realm file.
    pub fn from_json(json: &str) -> Result<Self, RealmFileError> {
        let file: Self = serde_json::from_str(json).map_err(|e| RealmFileError::Json(e.to_string()))?;
        file.client_realm()?;
        Ok(file)
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// A realm file for `config`.
    pub fn new(config: &RealmConfig, epoch_ttl_ms: u64, clock_skew_ms: u64, endpoints: Vec<String>) -> Self {
        Self {
            realm: config.realm.clone(),
            vrf_public_key: hex::encode(config.vrf_public_key.as_bytes()),
            replica_keys: config.replica_keys.iter().map(|k| hex::encode(k.as_bytes())).collect(),
            verifier_keys: config.verifier_keys.iter().map(|k| hex::encode(k.as_bytes())).collect(),
            verifier_threshold: 0,
            epoch_ttl_ms,
            clock_skew_ms,
            endpoints,
        }
    }

    /// The realm's configuration.
    pub fn config(&self) -> Result<RealmConfig, RealmFileError> {
        let vrf = VrfPublicKey::from_bytes(&key32("vrf_public_key", &self.vrf_public_key)?)
            .map_err(|e| RealmFileError::Key { field: "vrf_public_key".into(), message: e.to_string() })?;
        RealmConfig::new(
            self.realm.clone(),
            vrf,
            keys("replica_keys", &self.replica_keys)?,
            keys("verifier_keys", &self.verifier_keys)?,
        )
        .map_err(|e| RealmFileError::Invalid(e.to_string()))
    }

    /// What a client trusts.
    pub fn client_realm(&self) -> Result<ClientRealm, RealmFileError> {
        let config = self.config()?;
        if self.verifier_threshold > config.verifier_keys.len() {
            return Err(RealmFileError::Invalid(format!(
                "verifier_threshold {} exceeds the {} registered verifiers",
                self.verifier_threshold,
                config.verifier_keys.len()
            )));
        }
        Ok(ClientRealm {
            config,
            verifier_threshold: self.verifier_threshold,
            epoch_ttl_ms: self.epoch_ttl_ms,
            clock_skew_ms: self.clock_skew_ms,
        })
    }
}
