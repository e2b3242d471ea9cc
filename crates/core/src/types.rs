//! The protocol's data: indexes, entries, profiles, epoch heads and the realm configuration.

use crate::encoding::{decode_canonical, put_count, put_u64, put_var_bytes, Canonical, DecodeError, Reader};
use crate::hash::{hash, label, Digest};
use crate::identity::CanonicalUserId;
use crate::keys::PublicKey;
use crate::limits::*;
use crate::policy::Policy;
use crate::registration::RegistrationPolicy;
use crate::vrf::VrfPublicKey;
use std::collections::BTreeMap;
use std::fmt;

/// The position of an identity in the tree: the first 32 bytes of the VRF output over the
/// realm and user id. Only the VRF key's holder can map a user id to its index.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Index(pub [u8; 32]);

impl Index {
    /// The index a VRF output names: its first 32 bytes (docs/protocol.md, section 3).
    /// Replicas, verifiers and clients all derive indexes here.
    pub fn of_vrf_output(output: &crate::vrf::VrfOutput) -> Self {
        let mut index = [0u8; 32];
        index.copy_from_slice(&output.as_bytes()[..32]);
        Self(index)
    }

    /// Bit `i` of the index, most significant bit of byte 0 first (bit 0 decides the first
    /// branch under the root).
    pub fn bit(&self, i: usize) -> bool {
        debug_assert!(i < TREE_DEPTH_MAX);
        (self.0[i / 8] >> (7 - (i % 8))) & 1 == 1
    }

    /// The length of the common prefix of two indexes, in bits.
    pub fn common_prefix_bits(&self, other: &Index) -> usize {
        for (i, (a, b)) in self.0.iter().zip(other.0.iter()).enumerate() {
            let x = a ^ b;
            if x != 0 {
                return i * 8 + x.leading_zeros() as usize;
            }
        }
        TREE_DEPTH_MAX
    }
}

impl fmt::Debug for Index {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Index({})", hex::encode(self.0))
    }
}
impl fmt::Display for Index {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A user's public profile: the keys they publish, and a nonce that makes the commitment
/// hiding (the tree and the verifier stream carry only the commitment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// At least [`PROFILE_NONCE_BYTES_MIN`] random bytes chosen by the client.
    pub nonce: Vec<u8>,
    /// Application identifier (printable ASCII) to key bytes.
    pub keys: BTreeMap<String, Vec<u8>>,
}

impl Profile {
    /// The hiding commitment stored in the entry: `H(profile-commitment, profile bytes)`.
    pub fn commitment(&self) -> Digest {
        profile_commitment(&self.encode())
    }
}

/// The commitment over a profile's canonical bytes.
pub fn profile_commitment(profile_bytes: &[u8]) -> Digest {
    hash(label::PROFILE_COMMITMENT, &[profile_bytes])
}

fn valid_app_id(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= PROFILE_APP_ID_BYTES_MAX && id.iter().all(|b| (0x21..=0x7e).contains(b))
}

impl Canonical for Profile {
    const NAME: &'static str = "profile";

    fn encode_into(&self, out: &mut Vec<u8>) {
        put_var_bytes(out, &self.nonce);
        put_count(out, self.keys.len());
        for (app, key) in &self.keys {
            put_var_bytes(out, app.as_bytes());
            put_var_bytes(out, key);
        }
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let start = r.remaining();
        let nonce = r.var_bytes(PROFILE_NONCE_BYTES_MIN, PROFILE_NONCE_BYTES_MAX, "profile nonce")?.to_vec();
        let n = r.count(0, PROFILE_KEYS_MAX, "profile keys")?;
        let mut keys = BTreeMap::new();
        let mut last: Option<&[u8]> = None;
        for _ in 0..n {
            let app = r.var_bytes(1, PROFILE_APP_ID_BYTES_MAX, "profile app id")?;
            if !valid_app_id(app) {
                return Err(DecodeError::Invalid {
                    what: "profile app id",
                    why: "must be printable ASCII without spaces",
                });
            }
            if last.is_some_and(|l| l >= app) {
                return Err(DecodeError::NonCanonical {
                    what: "profile keys",
                    why: "app ids not sorted strictly ascending",
                });
            }
            last = Some(app);
            let key = r.var_bytes(1, PROFILE_KEY_BYTES_MAX, "profile key")?;
            // valid_app_id guarantees ASCII, so this cannot fail; map it anyway rather than unwrap.
            let app = String::from_utf8(app.to_vec())
                .map_err(|_| DecodeError::Invalid { what: "profile app id", why: "not UTF-8" })?;
            keys.insert(app, key.to_vec());
        }
        let used = start - r.remaining();
        if used > PROFILE_BYTES_MAX {
            return Err(DecodeError::TooLong { what: "profile", max: PROFILE_BYTES_MAX, got: used });
        }
        Ok(Self { nonce, keys })
    }
}

impl Profile {
    /// Checks the limits that the decoder enforces, for profiles built in memory.
    pub fn validate(&self) -> Result<(), DecodeError> {
        for app in self.keys.keys() {
            if !valid_app_id(app.as_bytes()) {
                return Err(DecodeError::Invalid {
                    what: "profile app id",
                    why: "must be 1 to 64 printable ASCII bytes",
                });
            }
        }
        if self.keys.values().any(|k| k.is_empty() || k.len() > PROFILE_KEY_BYTES_MAX) {
            return Err(DecodeError::Invalid { what: "profile key", why: "must be 1 to 4096 bytes" });
        }
        if self.nonce.len() < PROFILE_NONCE_BYTES_MIN || self.nonce.len() > PROFILE_NONCE_BYTES_MAX {
            return Err(DecodeError::Invalid { what: "profile nonce", why: "must be 16 to 64 bytes" });
        }
        if self.keys.len() > PROFILE_KEYS_MAX {
            return Err(DecodeError::TooLong { what: "profile keys", max: PROFILE_KEYS_MAX, got: self.keys.len() });
        }
        let len = 4 + self.nonce.len() + self.keys.iter().map(|(a, k)| 4 + a.len() + k.len()).sum::<usize>();
        if len > PROFILE_BYTES_MAX {
            return Err(DecodeError::TooLong { what: "profile", max: PROFILE_BYTES_MAX, got: len });
        }
        Ok(())
    }
}

/// One version of an identity's record, the value committed in the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Where the entry lives in the tree.
    pub index: Index,
    /// 0 at registration, strictly increasing with every update.
    pub version: u64,
    /// Who may sign the next update.
    pub update_policy: Policy,
    /// [`Profile::commitment`] of the profile this version publishes.
    pub profile_commitment: Digest,
}

impl Entry {
    /// The value of the entry's leaf: `H(entry, entry bytes)`.
    pub fn hash(&self) -> Digest {
        entry_hash(&self.encode())
    }
}

/// The leaf value for an entry's canonical bytes.
pub fn entry_hash(entry_bytes: &[u8]) -> Digest {
    hash(label::ENTRY, &[entry_bytes])
}

impl Canonical for Entry {
    const NAME: &'static str = "entry";

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.index.0);
        put_u64(out, self.version);
        out.extend_from_slice(&self.profile_commitment);
        self.update_policy.encode_into(out);
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let start = r.remaining();
        let index = Index(r.array("entry index")?);
        let version = r.u64("entry version")?;
        let profile_commitment = r.array("entry profile commitment")?;
        let update_policy = Policy::decode_from(r)?;
        let used = start - r.remaining();
        if used > ENTRY_BYTES_MAX {
            return Err(DecodeError::TooLong { what: "entry", max: ENTRY_BYTES_MAX, got: used });
        }
        Ok(Self { index, version, update_policy, profile_commitment })
    }
}

/// The public configuration of a realm: what `config_hash` in every head commits to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealmConfig {
    /// The realm's name (for example a domain), bound into every index and head.
    pub realm: String,
    /// The key that maps user ids to indexes.
    pub vrf_public_key: VrfPublicKey,
    /// The replicas' head-signing keys, sorted ascending.
    pub replica_keys: Vec<PublicKey>,
    /// The registered third-party verifiers' keys, sorted ascending.
    pub verifier_keys: Vec<PublicKey>,
    /// Who may register identities and how user ids are canonicalized: `Some` in a realm of
    /// protocol version 2, `None` in one of version 1 (raw user ids, registration first come,
    /// first served). See [`crate::registration`].
    pub registration: Option<RegistrationPolicy>,
    /// How many ratified configuration changes led to this configuration: 0 for a realm's
    /// first, one more with every change (see [`crate::config_change`]), so no configuration
    /// repeats and no change can be replayed. Always 0 under protocol version 1.
    pub generation: u64,
    /// The Raft node id of each replica, aligned with `replica_keys` (distinct, at least 1):
    /// the node that signs heads with that key. Required under protocol version 2, empty
    /// under version 1.
    pub replica_node_ids: Vec<u64>,
}

/// The protocol versions this implementation speaks.
pub const PROTOCOL_VERSIONS: [u8; 2] = [1, 2];

impl RealmConfig {
    /// Builds and validates a configuration (keys may be given in any order).
    pub fn new(
        realm: impl Into<String>,
        vrf_public_key: VrfPublicKey,
        mut replica_keys: Vec<PublicKey>,
        mut verifier_keys: Vec<PublicKey>,
    ) -> Result<Self, DecodeError> {
        replica_keys.sort();
        verifier_keys.sort();
        let config = Self {
            realm: realm.into(),
            vrf_public_key,
            replica_keys,
            verifier_keys,
            registration: None,
            generation: 0,
            replica_node_ids: Vec::new(),
        };
        config.validate()?;
        Ok(config)
    }

    /// This configuration under protocol version 2 with `policy` (its registrar keys sorted).
    /// Replicas not yet bound to node ids (see [`RealmConfig::with_replica_node_ids`]) are
    /// bound to nodes 1, 2, ... in the order of their sorted keys.
    pub fn with_registration(mut self, mut policy: RegistrationPolicy) -> Result<Self, DecodeError> {
        policy.registrar_keys.sort();
        policy.sort_methods();
        self.registration = Some(policy);
        if self.replica_node_ids.is_empty() {
            self.replica_node_ids = (1..=self.replica_keys.len() as u64).collect();
        }
        self.validate()?;
        Ok(self)
    }

    /// Binds each replica key to the Raft node id that signs with it (protocol version 2;
    /// call before or after [`RealmConfig::with_registration`]). Every replica key must be
    /// bound exactly once, and node ids must be distinct and at least 1.
    pub fn with_replica_node_ids(mut self, bindings: &[(u64, PublicKey)]) -> Result<Self, DecodeError> {
        if bindings.len() != self.replica_keys.len() {
            return Err(DecodeError::Invalid {
                what: "replica node ids",
                why: "every replica key needs exactly one node id",
            });
        }
        let mut ids = Vec::with_capacity(bindings.len());
        for key in &self.replica_keys {
            let mut bound = bindings.iter().filter(|(_, k)| k == key);
            match (bound.next(), bound.next()) {
                (Some((id, _)), None) => ids.push(*id),
                _ => {
                    return Err(DecodeError::Invalid {
                        what: "replica node ids",
                        why: "every replica key needs exactly one node id",
                    })
                }
            }
        }
        self.replica_node_ids = ids;
        if self.registration.is_some() {
            self.validate()?;
        }
        Ok(self)
    }

    /// The Raft node id bound to replica `key` (protocol version 2).
    pub fn replica_node_id(&self, key: &PublicKey) -> Option<u64> {
        let position = self.replica_keys.binary_search(key).ok()?;
        self.replica_node_ids.get(position).copied()
    }

    /// The replica key bound to Raft node `node_id` (protocol version 2).
    pub fn replica_key_of_node(&self, node_id: u64) -> Option<PublicKey> {
        let position = self.replica_node_ids.iter().position(|id| *id == node_id)?;
        self.replica_keys.get(position).copied()
    }

    /// The protocol version: 2 with a registration policy, else 1.
    pub fn protocol_version(&self) -> u8 {
        if self.registration.is_some() {
            2
        } else {
            1
        }
    }

    /// The id a user id stands for in this realm: under protocol version 2 its canonical
    /// form (docs/protocol.md section 3.1), under version 1 the id as given (checked against
    /// the user id rule only). The one function the client and the edge both call before the
    /// VRF.
    pub fn canonical_user_id(&self, raw: &str) -> Result<String, crate::identity::IdentityError> {
        match &self.registration {
            Some(policy) => {
                crate::identity::canonical_user_id(raw, policy.local_part_rule).map(CanonicalUserId::into_string)
            }
            None => {
                validate_user_id(raw).map_err(crate::identity::IdentityError::Limits)?;
                Ok(raw.to_owned())
            }
        }
    }

    fn validate(&self) -> Result<(), DecodeError> {
        validate_realm_name(&self.realm)?;
        if self.replica_keys.is_empty() || self.replica_keys.len() > REPLICAS_MAX {
            return Err(DecodeError::Invalid { what: "realm replica keys", why: "need between 1 and 9 replicas" });
        }
        if self.verifier_keys.len() > VERIFIERS_MAX {
            return Err(DecodeError::TooLong {
                what: "realm verifier keys",
                max: VERIFIERS_MAX,
                got: self.verifier_keys.len(),
            });
        }
        for keys in [&self.replica_keys, &self.verifier_keys] {
            if keys.windows(2).any(|w| w[0] >= w[1]) {
                return Err(DecodeError::NonCanonical { what: "realm keys", why: "not sorted strictly ascending" });
            }
        }
        if self.replica_keys.iter().any(|k| self.verifier_keys.binary_search(k).is_ok()) {
            return Err(DecodeError::Invalid { what: "realm keys", why: "a key is both a replica and a verifier key" });
        }
        match &self.registration {
            None if self.generation != 0 || !self.replica_node_ids.is_empty() => {
                return Err(DecodeError::Invalid {
                    what: "realm config",
                    why: "generations and replica node ids need protocol version 2",
                });
            }
            Some(_) if self.replica_node_ids.len() != self.replica_keys.len() => {
                return Err(DecodeError::Invalid {
                    what: "replica node ids",
                    why: "every replica key needs exactly one node id",
                });
            }
            _ => {}
        }
        let mut ids = self.replica_node_ids.clone();
        ids.sort_unstable();
        if ids.first() == Some(&0) || ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(DecodeError::Invalid { what: "replica node ids", why: "must be distinct and at least 1" });
        }
        if let Some(policy) = &self.registration {
            policy.validate()?;
            if policy
                .registrar_keys
                .iter()
                .any(|k| self.replica_keys.binary_search(k).is_ok() || self.verifier_keys.binary_search(k).is_ok())
            {
                return Err(DecodeError::Invalid {
                    what: "realm keys",
                    why: "a registrar key is also a replica or verifier key",
                });
            }
        }
        Ok(())
    }

    /// The number of replica signatures that make an epoch keyserver-ratified: a strict majority.
    pub fn replica_majority(&self) -> usize {
        self.replica_keys.len() / 2 + 1
    }

    /// Whether `signers` distinct replicas make a strict majority: the one majority rule of
    /// replicas (ratifying an epoch), verifiers (accepting a streamed head) and clients
    /// (accepting a proof).
    pub fn is_replica_majority(&self, signers: usize) -> bool {
        signers >= self.replica_majority()
    }

    /// `H(realm-config, encoding)`, carried in every head.
    pub fn hash(&self) -> Digest {
        hash(label::REALM_CONFIG, &[&self.encode()])
    }
}

/// Checks a realm name: 1 to 64 bytes of printable ASCII.
pub fn validate_realm_name(realm: &str) -> Result<(), DecodeError> {
    if realm.is_empty() || realm.len() > REALM_NAME_BYTES_MAX || !realm.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(DecodeError::Invalid { what: "realm name", why: "must be 1 to 64 printable ASCII bytes" });
    }
    Ok(())
}

fn decode_realm_name(r: &mut Reader<'_>) -> Result<String, DecodeError> {
    let raw = r.var_bytes(1, REALM_NAME_BYTES_MAX, "realm name")?;
    let s = std::str::from_utf8(raw).map_err(|_| DecodeError::Invalid { what: "realm name", why: "not UTF-8" })?;
    validate_realm_name(s)?;
    Ok(s.to_owned())
}

fn decode_key_set(
    r: &mut Reader<'_>,
    min: usize,
    max: usize,
    what: &'static str,
) -> Result<Vec<PublicKey>, DecodeError> {
    let n = r.count(min, max, what)?;
    let mut keys = Vec::with_capacity(n);
    for _ in 0..n {
        keys.push(PublicKey::decode_from(r, what)?);
    }
    Ok(keys)
}

impl Canonical for RealmConfig {
    const NAME: &'static str = "realm config";

    fn encode_into(&self, out: &mut Vec<u8>) {
        // Version 1 starts with the realm name's u16 length, whose high byte is 0 (names are
        // at most 64 bytes); version 2 starts with its version byte, so one decoder reads both
        // and a version-1 configuration keeps its encoding, hence its hash.
        if self.registration.is_some() {
            out.push(2);
        }
        put_var_bytes(out, self.realm.as_bytes());
        out.extend_from_slice(self.vrf_public_key.as_bytes());
        for keys in [&self.replica_keys, &self.verifier_keys] {
            put_count(out, keys.len());
            for k in keys {
                out.extend_from_slice(k.as_bytes());
            }
        }
        if let Some(policy) = &self.registration {
            policy.encode_into(out);
            put_u64(out, self.generation);
            put_count(out, self.replica_node_ids.len());
            for id in &self.replica_node_ids {
                put_u64(out, *id);
            }
        }
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let version2 = match r.peek_u8("realm config")? {
            0 => false,
            2 => {
                r.u8("realm config version")?;
                true
            }
            _ => return Err(DecodeError::Invalid { what: "realm config", why: "unknown protocol version" }),
        };
        let realm = decode_realm_name(r)?;
        let vrf_public_key = VrfPublicKey::from_bytes(r.bytes(32, "vrf public key")?)
            .map_err(|_| DecodeError::Invalid { what: "vrf public key", why: "not a valid VRF public key" })?;
        let replica_keys = decode_key_set(r, 1, REPLICAS_MAX, "replica keys")?;
        let verifier_keys = decode_key_set(r, 0, VERIFIERS_MAX, "verifier keys")?;
        let (registration, generation, replica_node_ids) = if version2 {
            let policy = RegistrationPolicy::decode_from(r)?;
            let generation = r.u64("realm config generation")?;
            let n = r.count(replica_keys.len(), replica_keys.len(), "replica node ids")?;
            let ids = (0..n).map(|_| r.u64("replica node id")).collect::<Result<Vec<_>, _>>()?;
            (Some(policy), generation, ids)
        } else {
            (None, 0, Vec::new())
        };
        let config =
            Self { realm, vrf_public_key, replica_keys, verifier_keys, registration, generation, replica_node_ids };
        config.validate()?;
        Ok(config)
    }
}

/// The head of an epoch: what replicas sign and verifiers ratify. (Serde is for messages
/// between replicas; what is signed is always the canonical encoding.)
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EpochHead {
    /// The realm's name.
    pub realm: String,
    /// The epoch number, starting at 1 and increasing by one.
    pub epoch: u64,
    /// The root of the tree after the epoch's updates.
    pub root: Digest,
    /// [`EpochHead::hash`] of the previous epoch's head; all zero for epoch 1.
    pub previous_head_hash: Digest,
    /// When the epoch was cut, from the leader's clock, in milliseconds since the Unix epoch.
    pub issue_time_ms: u64,
    /// How many updates the epoch applied.
    pub update_count: u64,
    /// [`RealmConfig::hash`] of the configuration in force.
    pub config_hash: Digest,
}

impl EpochHead {
    /// `H(epoch-head-hash, head bytes)`, chaining the next head to this one.
    pub fn hash(&self) -> Digest {
        hash(label::EPOCH_HEAD, &[&self.encode()])
    }

    /// Decodes a head from its canonical bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_canonical(bytes)
    }
}

impl Canonical for EpochHead {
    const NAME: &'static str = "epoch head";

    fn encode_into(&self, out: &mut Vec<u8>) {
        put_var_bytes(out, self.realm.as_bytes());
        put_u64(out, self.epoch);
        out.extend_from_slice(&self.root);
        out.extend_from_slice(&self.previous_head_hash);
        put_u64(out, self.issue_time_ms);
        put_u64(out, self.update_count);
        out.extend_from_slice(&self.config_hash);
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let realm = decode_realm_name(r)?;
        let epoch = r.u64("head epoch")?;
        if epoch == 0 {
            return Err(DecodeError::Invalid { what: "head epoch", why: "epochs start at 1" });
        }
        let root = r.array("head root")?;
        let previous_head_hash: Digest = r.array("head previous hash")?;
        // Epoch 1 has no predecessor: any other value would be a second encoding of "none".
        if epoch == 1 && previous_head_hash != [0; 32] {
            return Err(DecodeError::Invalid { what: "head previous hash", why: "must be all zero in epoch 1" });
        }
        Ok(Self {
            realm,
            epoch,
            root,
            previous_head_hash,
            issue_time_ms: r.u64("head issue time")?,
            update_count: r.u64("head update count")?,
            config_hash: r.array("head config hash")?,
        })
    }
}

/// The VRF input for a user id: `len(label) || label || len(realm) (u16) || realm || user id`.
pub fn vrf_input(realm: &str, user_id: &str) -> Vec<u8> {
    let mut out = crate::hash::framed_label(label::VRF_INDEX);
    put_var_bytes(&mut out, realm.as_bytes());
    out.extend_from_slice(user_id.as_bytes());
    out
}

/// Checks a user id: 1 to 256 bytes of UTF-8 without control characters.
pub fn validate_user_id(user_id: &str) -> Result<(), DecodeError> {
    validate_user_id_length(user_id)?;
    if user_id.chars().any(char::is_control) {
        return Err(DecodeError::Invalid { what: "user id", why: "contains control characters" });
    }
    Ok(())
}

/// The length half of [`validate_user_id`]: 1 to [`USER_ID_BYTES_MAX`] bytes of UTF-8.
/// Separate so that [`crate::identity`] can apply it first and then name a control
/// character's position itself.
pub fn validate_user_id_length(user_id: &str) -> Result<(), DecodeError> {
    if user_id.is_empty() || user_id.len() > USER_ID_BYTES_MAX {
        return Err(DecodeError::Invalid { what: "user id", why: "must be 1 to 256 bytes" });
    }
    Ok(())
}
