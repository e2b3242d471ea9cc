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
//!   "endpoints": ["127.0.0.1:7001", ...],
//!   "tls": { "ca_pem": "-----BEGIN CERTIFICATE-----\n..." },
//!   "protocol_version": 2,
//!   "registration": {
//!     "local_part_rule": "case_insensitive",
//!     "registrar_keys": ["<64 hex>"],
//!     "namespaces": [
//!       { "namespace": "*@example.com",
//!         "methods": ["registrar", "email",
//!                     { "oidc": { "issuer": "https://accounts.example.com", "audience": "keyraft" } }] },
//!       { "namespace": "*", "methods": ["open"] }
//!     ]
//!   }
//! }
//! ```
//!
//! A file without `protocol_version` is of version 1 and has no `registration`.
//!
//! The schema and the rules are docs/protocol.md section 5.3. Keys are checked when the file
//! is read (64 lower-case hex digits, canonical, not of small order), key lists must already
//! be sorted strictly ascending, unknown and duplicate fields are refused, and the realm
//! configuration is validated, so a bad file is refused before anything trusts it. Sorting
//! silently would let two implementations read one file as different key positions (proofs
//! name signers by position), so an unsorted list is the file writer's error.

use crate::identity::LocalPartRule;
use crate::lookup::ClientRealm;
use crate::registration::{Method, NamespaceRule, RegistrationPolicy, OIDC_CLAIM_DEFAULT};
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
    /// The replicas' head-signing keys, hex (protocol version 1; version 2 has `replicas`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replica_keys: Vec<String>,
    /// The replicas, each a Raft node id and its head-signing key (protocol version 2 only,
    /// where it is required), sorted by key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Vec<ReplicaFile>>,
    /// How many configuration changes led to this configuration (protocol version 2 only;
    /// default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
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
    /// The protocol version: 1 (the default, for files written before version 2) or 2.
    #[serde(default = "protocol_version_1", skip_serializing_if = "is_version_1")]
    pub protocol_version: u8,
    /// Who may register identities (version 2 only, where it is required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<RegistrationFile>,
    /// How clients authenticate the replicas' public listeners: TLS with this CA. Absent: the
    /// replicas serve plaintext. Not part of the realm's configuration (no head commits to
    /// it): proofs are the root of trust, TLS keeps who looks up whom from the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFile>,
}

/// The realm file's `tls` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// The certificates (PEM) that replicas' certificates must chain to: clients accept a
    /// replica whose certificate is issued by one of them for the endpoint's host.
    pub ca_pem: String,
}

/// The PEM label of a certificate.
const PEM_CERTIFICATE_BEGIN: &str = "-----BEGIN CERTIFICATE-----";

fn protocol_version_1() -> u8 {
    1
}

/// A version-1 file is written as before version 2 existed, so that readers written for
/// version 1 (which refuse unknown fields) still read it.
fn is_version_1(v: &u8) -> bool {
    *v == 1
}

/// A replica in a version-2 realm file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaFile {
    /// The Raft node id of the replica (at least 1).
    pub node_id: u64,
    /// Its head-signing key, hex.
    pub key: String,
}

/// The realm file's `registration` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationFile {
    /// `case_insensitive` (default) or `case_sensitive`.
    #[serde(default = "case_insensitive")]
    pub local_part_rule: String,
    /// Keys that sign registrar attestations, hex, sorted ascending.
    #[serde(default)]
    pub registrar_keys: Vec<String>,
    /// The rules, in order: the first whose namespace matches a canonical id decides.
    pub namespaces: Vec<NamespaceFile>,
    /// The veto window of recoveries in milliseconds (default a day); 0 disables recovery.
    #[serde(default = "recovery_window_default")]
    pub recovery_window_ms: u64,
}

fn recovery_window_default() -> u64 {
    crate::registration::RECOVERY_WINDOW_MS_DEFAULT
}

fn case_insensitive() -> String {
    LocalPartRule::CaseInsensitive.name().to_owned()
}

/// One namespace rule in the realm file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceFile {
    /// A glob on canonical user ids (`*` matches anything).
    pub namespace: String,
    /// The methods: `"open"`, `"registrar"`, `"email"` or `{"oidc": {...}}`.
    pub methods: Vec<MethodFile>,
}

/// A registration method in the realm file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum MethodFile {
    /// First come, first served.
    Open,
    /// A registrar attestation.
    Registrar,
    /// A mailed code.
    Email,
    /// An OpenID Connect ID token.
    Oidc {
        /// The token's `iss`.
        issuer: String,
        /// A value its `aud` must hold.
        audience: String,
        /// The claim holding the identity (default `email`, which needs `email_verified`).
        #[serde(default = "default_claim")]
        claim: String,
    },
}

fn default_claim() -> String {
    OIDC_CLAIM_DEFAULT.to_owned()
}

impl RegistrationFile {
    /// The file form of `policy`.
    pub fn new(policy: &RegistrationPolicy) -> Self {
        Self {
            local_part_rule: policy.local_part_rule.name().to_owned(),
            registrar_keys: policy.registrar_keys.iter().map(|k| hex::encode(k.as_bytes())).collect(),
            namespaces: policy
                .rules
                .iter()
                .map(|r| NamespaceFile {
                    namespace: r.namespace.clone(),
                    methods: r
                        .methods
                        .iter()
                        .map(|m| match m {
                            Method::Open => MethodFile::Open,
                            Method::Registrar => MethodFile::Registrar,
                            Method::Email => MethodFile::Email,
                            Method::Oidc { issuer, audience, claim } => MethodFile::Oidc {
                                issuer: issuer.clone(),
                                audience: audience.clone(),
                                claim: claim.clone(),
                            },
                        })
                        .collect(),
                })
                .collect(),
            recovery_window_ms: policy.recovery_window_ms,
        }
    }

    /// The policy this describes. Methods may be listed in any order (the canonical order is
    /// the encoding's); a method listed twice in one namespace is refused.
    pub fn policy(&self) -> Result<RegistrationPolicy, RealmFileError> {
        let local_part_rule = match self.local_part_rule.as_str() {
            "case_insensitive" => LocalPartRule::CaseInsensitive,
            "case_sensitive" => LocalPartRule::CaseSensitive,
            other => {
                return Err(RealmFileError::Invalid(format!(
                    "registration.local_part_rule {other:?}: expected \"case_insensitive\" or \"case_sensitive\""
                )))
            }
        };
        let registrar_keys = keys("registration.registrar_keys", &self.registrar_keys)?;
        let mut rules = Vec::with_capacity(self.namespaces.len());
        for (i, ns) in self.namespaces.iter().enumerate() {
            let mut methods: Vec<Method> = ns
                .methods
                .iter()
                .map(|m| match m {
                    MethodFile::Open => Method::Open,
                    MethodFile::Registrar => Method::Registrar,
                    MethodFile::Email => Method::Email,
                    MethodFile::Oidc { issuer, audience, claim } => {
                        Method::Oidc { issuer: issuer.clone(), audience: audience.clone(), claim: claim.clone() }
                    }
                })
                .collect();
            let listed = methods.len();
            methods.sort();
            methods.dedup();
            if methods.len() != listed {
                return Err(RealmFileError::Invalid(format!(
                    "registration.namespaces[{i}] ({:?}) lists a method twice",
                    ns.namespace
                )));
            }
            // Canonical ids have lower-case domains: a namespace with an upper-case ASCII
            // letter after its last `@` could never match, which is surely a mistake.
            if let Some((_, domain)) = ns.namespace.rsplit_once('@') {
                if domain.bytes().any(|b| b.is_ascii_uppercase()) {
                    return Err(RealmFileError::Invalid(format!(
                        "registration.namespaces[{i}] ({:?}): canonical ids have lower-case domains, so this \
                         namespace would never match; write the domain in lower case",
                        ns.namespace
                    )));
                }
            }
            rules.push(NamespaceRule { namespace: ns.namespace.clone(), methods });
        }
        let mut policy =
            RegistrationPolicy { local_part_rule, registrar_keys, rules, recovery_window_ms: self.recovery_window_ms };
        policy.sort_methods();
        policy.validate().map_err(|e| RealmFileError::Invalid(format!("registration: {e}")))?;
        Ok(policy)
    }
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

/// What serde alone would let through: `null` for an optional field (read as absent), a JSON
/// array in place of an object (read field by field in declaration order), `{"open": null}`
/// for a unit method. The spec allows none of them, and two readers must agree on every file.
fn check_shape(value: &serde_json::Value) -> Result<(), RealmFileError> {
    use serde_json::Value;
    fn shape(field: &str, message: &str) -> RealmFileError {
        RealmFileError::Key { field: field.to_owned(), message: message.to_owned() }
    }
    fn no_null(path: &str, v: &Value) -> Result<(), RealmFileError> {
        match v {
            Value::Null => Err(shape(path, "null is not a value of any field (leave the field out)")),
            Value::Array(items) => {
                items.iter().enumerate().try_for_each(|(i, item)| no_null(&format!("{path}[{i}]"), item))
            }
            Value::Object(map) => map.iter().try_for_each(|(k, item)| {
                no_null(&if path.is_empty() { k.clone() } else { format!("{path}.{k}") }, item)
            }),
            _ => Ok(()),
        }
    }
    let Value::Object(top) = value else { return Err(shape("(file)", "expected a JSON object")) };
    no_null("", value)?;
    if let Some(replicas) = top.get("replicas") {
        let Value::Array(replicas) = replicas else { return Err(shape("replicas", "expected a list")) };
        for (i, r) in replicas.iter().enumerate() {
            if !r.is_object() {
                return Err(shape(&format!("replicas[{i}]"), "expected an object with node_id and key"));
            }
        }
    }
    if top.get("tls").is_some_and(|tls| !tls.is_object()) {
        return Err(shape("tls", "expected an object with ca_pem"));
    }
    let Some(registration) = top.get("registration") else { return Ok(()) };
    let Value::Object(registration) = registration else { return Err(shape("registration", "expected an object")) };
    let Some(namespaces) = registration.get("namespaces") else { return Ok(()) };
    let Value::Array(namespaces) = namespaces else {
        return Err(shape("registration.namespaces", "expected a list"));
    };
    for (i, ns) in namespaces.iter().enumerate() {
        let at = format!("registration.namespaces[{i}]");
        let Value::Object(ns) = ns else { return Err(shape(&at, "expected an object")) };
        let Some(Value::Array(methods)) = ns.get("methods") else { continue };
        for (j, m) in methods.iter().enumerate() {
            let at = format!("{at}.methods[{j}]");
            match m {
                Value::String(_) => {}
                Value::Object(map) => {
                    for (name, body) in map {
                        if !body.is_object() {
                            return Err(shape(&format!("{at}.{name}"), "expected an object of the method's settings"));
                        }
                    }
                }
                _ => return Err(shape(&at, "expected a method name or an object")),
            }
        }
    }
    Ok(())
}

impl RealmFile {
    /// Parses and checks a realm file.
    pub fn from_json(json: &str) -> Result<Self, RealmFileError> {
        let value: serde_json::Value = serde_json::from_str(json).map_err(|e| RealmFileError::Json(e.to_string()))?;
        check_shape(&value)?;
        // Read again from the text: a `Value` keeps only the last of duplicate fields, which
        // the typed read refuses.
        let file: Self = serde_json::from_str(json).map_err(|e| RealmFileError::Json(e.to_string()))?;
        file.client_realm()?;
        if let Some(tls) = &file.tls {
            // The certificates themselves are parsed where TLS is set up (the transport).
            if !tls.ca_pem.contains(PEM_CERTIFICATE_BEGIN) {
                return Err(RealmFileError::Key {
                    field: "tls.ca_pem".into(),
                    message: format!("expected PEM certificates ({PEM_CERTIFICATE_BEGIN} ...)"),
                });
            }
        }
        Ok(file)
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// A realm file for `config`.
    pub fn new(config: &RealmConfig, epoch_ttl_ms: u64, clock_skew_ms: u64, endpoints: Vec<String>) -> Self {
        let version2 = config.registration.is_some();
        let hex_keys = || config.replica_keys.iter().map(|k| hex::encode(k.as_bytes()));
        Self {
            realm: config.realm.clone(),
            vrf_public_key: hex::encode(config.vrf_public_key.as_bytes()),
            replica_keys: if version2 { Vec::new() } else { hex_keys().collect() },
            replicas: version2.then(|| {
                config
                    .replica_node_ids
                    .iter()
                    .zip(hex_keys())
                    .map(|(node_id, key)| ReplicaFile { node_id: *node_id, key })
                    .collect()
            }),
            generation: version2.then_some(config.generation),
            verifier_keys: config.verifier_keys.iter().map(|k| hex::encode(k.as_bytes())).collect(),
            verifier_threshold: 0,
            epoch_ttl_ms,
            clock_skew_ms,
            endpoints,
            protocol_version: config.protocol_version(),
            registration: config.registration.as_ref().map(RegistrationFile::new),
            tls: None,
        }
    }

    /// The realm's configuration.
    pub fn config(&self) -> Result<RealmConfig, RealmFileError> {
        let vrf = VrfPublicKey::from_bytes(&key32("vrf_public_key", &self.vrf_public_key)?)
            .map_err(|e| RealmFileError::Key { field: "vrf_public_key".into(), message: e.to_string() })?;
        if !(1..=2).contains(&self.protocol_version) {
            return Err(RealmFileError::Invalid(format!(
                "protocol_version {} is not one this keyraft speaks (1 or 2); upgrade keyraft",
                self.protocol_version
            )));
        }
        let (replica_keys, bindings) =
            match (self.protocol_version, &self.replicas) {
                (2, Some(replicas)) => {
                    let listed: Vec<String> = replicas.iter().map(|r| r.key.clone()).collect();
                    let replica_keys = keys("replicas", &listed)?;
                    let bindings: Vec<(u64, PublicKey)> =
                        replicas.iter().map(|r| r.node_id).zip(replica_keys.iter().copied()).collect();
                    (replica_keys, Some(bindings))
                }
                (2, None) => return Err(RealmFileError::Invalid(
                    "protocol_version 2 lists its replicas as `replicas` ([{\"node_id\": N, \"key\": \"<hex>\"}]), \
                     binding each key to its Raft node id"
                        .into(),
                )),
                (_, Some(_)) => {
                    return Err(RealmFileError::Invalid(
                        "`replicas` needs protocol_version 2 (version 1 lists `replica_keys`)".into(),
                    ))
                }
                (_, None) => (keys("replica_keys", &self.replica_keys)?, None),
            };
        if self.protocol_version == 2 && !self.replica_keys.is_empty() {
            return Err(RealmFileError::Invalid(
                "protocol_version 2 lists its replicas as `replicas` with node ids, not `replica_keys`".into(),
            ));
        }
        if self.protocol_version != 2 && self.generation.is_some() {
            return Err(RealmFileError::Invalid("`generation` needs protocol_version 2".into()));
        }
        let mut config =
            RealmConfig::new(self.realm.clone(), vrf, replica_keys, keys("verifier_keys", &self.verifier_keys)?)
                .map_err(|e| RealmFileError::Invalid(e.to_string()))?;
        if let Some(bindings) = bindings {
            config.generation = self.generation.unwrap_or(0);
            config = config.with_replica_node_ids(&bindings).map_err(|e| RealmFileError::Invalid(e.to_string()))?;
        }
        match (self.protocol_version, &self.registration) {
            (1, None) => Ok(config),
            (1, Some(_)) => Err(RealmFileError::Invalid(
                "`registration` needs protocol_version 2 (version 1 realms register first come, first served)".into(),
            )),
            (2, Some(registration)) => {
                config.with_registration(registration.policy()?).map_err(|e| RealmFileError::Invalid(e.to_string()))
            }
            (2, None) => Err(RealmFileError::Invalid(
                "protocol_version 2 needs a `registration` object saying who may register identities".into(),
            )),
            (v, _) => Err(RealmFileError::Invalid(format!(
                "protocol_version {v} is not one this keyraft speaks (1 or 2); upgrade keyraft"
            ))),
        }
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
