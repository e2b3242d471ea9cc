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
//! Keys are checked when the file is read (canonical, not of small order), and the realm
//! configuration is validated, so a bad file is refused before anything trusts it.

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
    /// A key that does not decode.
    #[error("realm file field {field}: {message}")]
    Key {
        /// Which field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The configuration breaks a rule.
    #[error("realm file describes an invalid realm: {0}")]
    Invalid(String),
}

fn key32(field: &'static str, s: &str) -> Result<[u8; 32], RealmFileError> {
    let bytes = hex::decode(s).map_err(|e| RealmFileError::Key { field, message: e.to_string() })?;
    bytes.try_into().map_err(|_| RealmFileError::Key { field, message: "expected 32 bytes (64 hex digits)".into() })
}

fn keys(field: &'static str, list: &[String]) -> Result<Vec<PublicKey>, RealmFileError> {
    list.iter()
        .map(|s| {
            PublicKey::from_bytes(&key32(field, s)?).map_err(|e| RealmFileError::Key { field, message: e.to_string() })
        })
        .collect()
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
            .map_err(|e| RealmFileError::Key { field: "vrf_public_key", message: e.to_string() })?;
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
