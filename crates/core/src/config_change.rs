//! Realm configuration changes ratified in the chain (protocol version 2).
//!
//! A realm's configuration (replica, verifier and registrar keys, the registration policy,
//! the replicas' node ids) changes only through a [`SignedConfigChange`]: the hash of the
//! configuration in force and the complete new configuration, signed by a strict majority of
//! the replicas *of the configuration in force*. Replicas apply it from the log at an epoch
//! boundary: the epoch open when it is applied stays under the configuration it opened with,
//! and the next epoch is checked under the new one, its head the first to commit to the new
//! `config_hash` (so every update of an epoch is checked under one configuration, the one its
//! head commits to); verifiers receive it
//! on their stream; clients fetch the chain of changes and follow it from the configuration
//! they trust (their realm file) to the newest one. All three call [`check_config_change`]
//! and [`follow_chain`]: one rule, one function.
//!
//! ```text
//! ConfigChange       = [32] previous_config_hash || RealmConfig (the new one, to the end)
//! SignedConfigChange = list<[32] signer || [64] signature> (0..9, sorted by signer)
//!                      || ConfigChange
//! signed message     = u8(24) || "keyraft/v2/config-change" || ConfigChange
//! ```
//!
//! What a change may not do: rename the realm, replace the VRF key (no user id is stored, so
//! nothing could be re-indexed under a new key), go back to protocol version 1, or skip or
//! repeat a generation (each change's generation is the previous one plus 1; a version-1
//! configuration counts as generation 0, so its one way forward is a version-2 configuration
//! of generation 1: the upgrade).

use crate::encoding::{decode_canonical, Canonical, DecodeError, Reader};
use crate::hash::{context, signed_message, Digest};
use crate::keys::{decode_signature_set, encode_signature_set, KeySignature, PublicKey};
use crate::limits::REPLICAS_MAX;
use crate::lookup::ClientRealm;
use crate::types::RealmConfig;
use crate::verified::Verified;
use thiserror::Error;

/// A proposed configuration: what replicas sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigChange {
    /// [`RealmConfig::hash`] of the configuration this change follows.
    pub previous_config_hash: Digest,
    /// The configuration in force after the change.
    pub new_config: RealmConfig,
}

impl ConfigChange {
    /// A change from `previous` to `new_config`.
    pub fn new(previous: &RealmConfig, new_config: RealmConfig) -> Self {
        Self { previous_config_hash: previous.hash(), new_config }
    }

    /// The message each approving replica signs.
    pub fn signing_message(&self) -> Vec<u8> {
        signed_message(context::CONFIG_CHANGE, &[&self.encode()])
    }
}

impl Canonical for ConfigChange {
    const NAME: &'static str = "config change";

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.previous_config_hash);
        self.new_config.encode_into(out);
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let previous_config_hash = r.array("config change previous config hash")?;
        let new_config = RealmConfig::decode_from(r)?;
        Ok(Self { previous_config_hash, new_config })
    }
}

/// A change with the approvals gathered so far (none in a fresh proposal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedConfigChange {
    /// The change.
    pub change: ConfigChange,
    /// Replica signatures over [`ConfigChange::signing_message`], sorted by signer.
    pub signatures: Vec<KeySignature>,
}

impl SignedConfigChange {
    /// A proposal nobody has signed yet.
    pub fn unsigned(change: ConfigChange) -> Self {
        Self { change, signatures: Vec::new() }
    }

    /// Adds (or replaces) `signer`'s signature, keeping the set sorted.
    pub fn add_signature(&mut self, signature: KeySignature) {
        match self.signatures.binary_search_by(|s| s.signer.cmp(&signature.signer)) {
            Ok(i) => self.signatures[i] = signature,
            Err(i) => self.signatures.insert(i, signature),
        }
    }

    /// Decodes a change from its canonical bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_canonical(bytes)
    }
}

impl Canonical for SignedConfigChange {
    const NAME: &'static str = "signed config change";

    fn encode_into(&self, out: &mut Vec<u8>) {
        encode_signature_set(out, &self.signatures);
        self.change.encode_into(out);
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let signatures = decode_signature_set(r, REPLICAS_MAX, "config change signatures", &[])?;
        let change = ConfigChange::decode_from(r)?;
        Ok(Self { change, signatures })
    }
}

/// A public key's 32 bytes, as errors name a signer (a decoded key is six times larger).
pub type KeyBytes = [u8; 32];

/// Why a configuration change was refused. Each names what the change's authors got wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error, serde::Serialize, serde::Deserialize)]
pub enum ConfigChangeError {
    /// The change follows another configuration than the one in force.
    #[error(
        "the change follows configuration {}, but the configuration in force is {}",
        hex::encode(&previous[..8]),
        hex::encode(&in_force[..8])
    )]
    NotAfterConfigInForce {
        /// Hash of the configuration in force.
        in_force: Digest,
        /// The change's `previous_config_hash`.
        previous: Digest,
    },
    /// The new configuration names another realm.
    #[error("the change renames realm {from:?} to {to:?}; a realm's name never changes")]
    RealmRenamed {
        /// The realm's name.
        from: String,
        /// The name in the new configuration.
        to: String,
    },
    /// The new configuration has another VRF key.
    #[error("the change replaces the VRF key, which cannot be rotated (no user id is stored to re-index)")]
    VrfKeyChanged,
    /// The new configuration is of protocol version 1.
    #[error("the new configuration is of protocol version 1; changes lead to version 2 configurations only")]
    NotVersion2,
    /// The new configuration's generation is not the next one.
    #[error("the new configuration has generation {got}, expected {expected} (the configuration in force's plus 1)")]
    GenerationNotNext {
        /// The configuration in force's generation plus 1.
        expected: u64,
        /// The new configuration's.
        got: u64,
    },
    /// A signer appears twice (only possible in a change built in memory).
    #[error("replica {} signed the change twice", hex::encode(.0))]
    DuplicateSigner(KeyBytes),
    /// A signer is not a replica of the configuration in force.
    #[error("signer {} is not a replica of the configuration in force", hex::encode(.0))]
    UnknownSigner(KeyBytes),
    /// A signature does not verify.
    #[error("the signature by replica {} does not verify over the change", hex::encode(.0))]
    BadSignature(KeyBytes),
    /// Fewer than a strict majority of the configuration in force's replicas signed.
    #[error("the change is signed by {got} replicas of the configuration in force; it needs a majority of {need}")]
    NotEnoughSignatures {
        /// Valid signatures from distinct replicas.
        got: usize,
        /// The configuration in force's replica majority.
        need: usize,
    },
}

/// Checks `change` against the configuration in force and returns the configuration it
/// leads to. The one rule of replicas (applying the change from the log), verifiers (reading
/// it from their stream) and clients (following the chain).
///
/// Checks, in this order: the change follows `in_force`; same realm name; same VRF key; the
/// new configuration is of protocol version 2; its generation is `in_force`'s plus 1; every
/// signature is from a distinct replica of `in_force` and verifies; they reach `in_force`'s
/// replica majority.
pub fn check_config_change(
    in_force: &RealmConfig,
    change: &SignedConfigChange,
) -> Result<RealmConfig, ConfigChangeError> {
    let in_force_hash = in_force.hash();
    let ConfigChange { previous_config_hash, new_config } = &change.change;
    if *previous_config_hash != in_force_hash {
        return Err(ConfigChangeError::NotAfterConfigInForce {
            in_force: in_force_hash,
            previous: *previous_config_hash,
        });
    }
    if new_config.realm != in_force.realm {
        return Err(ConfigChangeError::RealmRenamed { from: in_force.realm.clone(), to: new_config.realm.clone() });
    }
    if new_config.vrf_public_key != in_force.vrf_public_key {
        return Err(ConfigChangeError::VrfKeyChanged);
    }
    if new_config.protocol_version() != 2 {
        return Err(ConfigChangeError::NotVersion2);
    }
    let expected = in_force.generation.saturating_add(1);
    if new_config.generation != expected || in_force.generation == u64::MAX {
        return Err(ConfigChangeError::GenerationNotNext { expected, got: new_config.generation });
    }
    let message = change.change.signing_message();
    let mut previous: Option<&PublicKey> = None;
    for s in &change.signatures {
        if previous.is_some_and(|p| *p >= s.signer) {
            return Err(ConfigChangeError::DuplicateSigner(*s.signer.as_bytes()));
        }
        previous = Some(&s.signer);
        if in_force.replica_keys.binary_search(&s.signer).is_err() {
            return Err(ConfigChangeError::UnknownSigner(*s.signer.as_bytes()));
        }
        if !s.signer.verify(&message, &s.signature) {
            return Err(ConfigChangeError::BadSignature(*s.signer.as_bytes()));
        }
    }
    if !in_force.is_replica_majority(change.signatures.len()) {
        return Err(ConfigChangeError::NotEnoughSignatures {
            got: change.signatures.len(),
            need: in_force.replica_majority(),
        });
    }
    Ok(new_config.clone())
}

/// A sequence of configurations, each reached from the previous one by a checked change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigChain {
    configs: Vec<RealmConfig>,
    changes: Vec<SignedConfigChange>,
}

impl ConfigChain {
    /// The configuration the chain was followed from.
    pub fn trusted(&self) -> &RealmConfig {
        &self.configs[0]
    }

    /// The newest configuration.
    pub fn newest(&self) -> &RealmConfig {
        // `follow_chain` always starts the list with the trusted configuration.
        &self.configs[self.configs.len() - 1]
    }

    /// Every configuration, the trusted one first.
    pub fn configs(&self) -> &[RealmConfig] {
        &self.configs
    }

    /// The changes followed, in order (`changes()[i]` leads from `configs()[i]`).
    pub fn changes(&self) -> &[SignedConfigChange] {
        &self.changes
    }

    /// The configuration of the chain whose hash is `config_hash` (what a head commits to).
    pub fn config_by_hash(&self, config_hash: &Digest) -> Option<&RealmConfig> {
        self.configs.iter().rev().find(|c| &c.hash() == config_hash)
    }

    /// What a client trusts for a head committing to `config_hash`: `base` (its thresholds
    /// and freshness rules) with that configuration of the chain, so a proof of any epoch
    /// is checked against the keys of its own epoch. `None` if the chain does not hold it
    /// (the client fetches the newer changes, or the proof is not of this realm).
    pub fn client_realm(&self, base: &ClientRealm, config_hash: &Digest) -> Option<ClientRealm> {
        let config = self.config_by_hash(config_hash)?;
        Some(ClientRealm { config: config.clone(), ..base.clone() })
    }
}

/// A change of a chain that was refused, with its position in the list followed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("configuration change {position} of the chain: {error}")]
pub struct ChainError {
    /// The position in the list of changes given (0 for the first).
    pub position: usize,
    /// Why it was refused.
    pub error: ConfigChangeError,
}

/// Follows `changes` from the `trusted` configuration, checking each against the one before
/// with [`check_config_change`]. An empty list gives a chain of `trusted` alone.
pub fn follow_chain(
    trusted: &RealmConfig,
    changes: &[SignedConfigChange],
) -> Result<Verified<ConfigChain>, ChainError> {
    let chain = ConfigChain { configs: vec![trusted.clone()], changes: Vec::new() };
    extend(chain, changes)
}

/// Continues a verified chain with further changes (from its newest configuration).
pub fn extend_chain(
    chain: &Verified<ConfigChain>,
    changes: &[SignedConfigChange],
) -> Result<Verified<ConfigChain>, ChainError> {
    extend(chain.get().clone(), changes)
}

fn extend(mut chain: ConfigChain, changes: &[SignedConfigChange]) -> Result<Verified<ConfigChain>, ChainError> {
    for (position, change) in changes.iter().enumerate() {
        let next = check_config_change(chain.newest(), change).map_err(|error| ChainError { position, error })?;
        chain.configs.push(next);
        chain.changes.push(change.clone());
    }
    Ok(Verified::new(chain))
}
