//! Updates and the rules that decide whether one may be applied.
//!
//! The same functions run at the edge (the replica that receives an update), inside the
//! deterministic step function on every replica, and in every third-party verifier, so all
//! of them accept exactly the same updates.
//!
//! The rules, for a new entry `new` signed by `signatures`, given the `current` entry at the
//! same index (if any):
//! 1. registration (`current` is absent) requires `new.version == 0`; otherwise, under
//!    protocol version 2, `new.version == current.version + 1` (so an identity's versions
//!    form an unbroken chain from 0 and a history can be checked for completeness by
//!    counting), and under version 1 `new.version > current.version`;
//! 2. each signature is by a key of the current policy or of the new one, and valid over
//!    `len(label) || "keyraft/v1/entry-update" || len(realm) (u16) || realm || entry bytes`;
//! 3. the valid signers satisfy the current policy (the owner consents) and the new policy
//!    (the new key holders consent);
//! 4. with a profile, `new.profile_commitment` is the profile's commitment.

use crate::ed25519::VerifiedSignatures;
use crate::encoding::{decode_canonical, put_var_bytes, Canonical, DecodeError, Reader};
use crate::hash::{context, signed_message, Digest};
use crate::keys::{decode_signature_set, encode_signature_set, public_key_of, KeySignature, PublicKey, Signature};
use crate::limits::{ENTRY_BYTES_MAX, PROFILE_BYTES_MAX, UPDATE_BYTES_MAX, UPDATE_SIGNATURES_MAX};
use crate::policy::Policy;
use crate::types::{profile_commitment, Entry, Profile, RealmConfig};
use ed25519_dalek::{Signer as _, SigningKey};
use std::collections::BTreeSet;
use thiserror::Error;

/// An entry with the owners' signatures: what verifiers see of an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedEntry {
    /// The new entry.
    pub entry: Entry,
    /// Signatures sorted by signer, each over [`entry_update_message`].
    pub signatures: Vec<KeySignature>,
}

/// A complete update as a client submits it: the signed entry and the profile it commits to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The signed entry.
    pub signed: SignedEntry,
    /// The profile whose commitment is in the entry.
    pub profile: Profile,
}

/// The message owners sign to authorize `entry` in `realm`.
pub fn entry_update_message(realm: &str, entry_bytes: &[u8]) -> Vec<u8> {
    let mut realm_field = Vec::with_capacity(2 + realm.len());
    put_var_bytes(&mut realm_field, realm.as_bytes());
    signed_message(context::ENTRY_UPDATE, &[&realm_field, entry_bytes])
}

/// Signs `entry` for `realm` with each key, as the update rules require: one signature per
/// key, sorted by signer.
pub fn sign_entry(realm: &str, entry: &Entry, keys: &[&SigningKey]) -> Vec<KeySignature> {
    let message = entry_update_message(realm, &entry.encode());
    let mut sigs: Vec<KeySignature> = keys
        .iter()
        .map(|k| KeySignature { signer: public_key_of(k), signature: Signature(k.sign(&message).to_bytes()) })
        .collect();
    sigs.sort_by_key(|s| s.signer);
    sigs.dedup_by(|a, b| a.signer == b.signer);
    sigs
}

impl Canonical for SignedEntry {
    const NAME: &'static str = "signed entry";

    fn encode_into(&self, out: &mut Vec<u8>) {
        put_var_bytes(out, &self.entry.encode());
        encode_signature_set(out, &self.signatures);
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let entry: Entry = decode_canonical(r.var_bytes(1, ENTRY_BYTES_MAX, "entry")?)?;
        let signatures =
            decode_signature_set(r, UPDATE_SIGNATURES_MAX, "update signatures", entry.update_policy.keys())?;
        Ok(Self { entry, signatures })
    }
}

impl Canonical for Update {
    const NAME: &'static str = "update";

    fn encode_into(&self, out: &mut Vec<u8>) {
        self.signed.encode_into(out);
        put_var_bytes(out, &self.profile.encode());
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let start = r.remaining();
        let signed = SignedEntry::decode_from(r)?;
        let profile = decode_canonical(r.var_bytes(1, PROFILE_BYTES_MAX, "profile")?)?;
        let used = start - r.remaining();
        if used > UPDATE_BYTES_MAX {
            return Err(DecodeError::TooLong { what: "update", max: UPDATE_BYTES_MAX, got: used });
        }
        Ok(Self { signed, profile })
    }
}

impl Update {
    /// The canonical bytes of the signed entry that an update's canonical bytes begin with,
    /// found from the lengths alone: no key is decompressed and no field checked beyond its
    /// length, so this is for bytes that were checked when they were stored. A replica streams
    /// its stored updates to verifiers this way; they decode and check every byte themselves,
    /// and decoding each update only to encode it again was a fifth of a replica's CPU while a
    /// verifier caught up (a key decompression per update).
    ///
    /// # Errors
    /// Bytes whose lengths do not add up to an update (signed entry, then profile, nothing
    /// after).
    pub fn signed_entry_bytes(bytes: &[u8]) -> Result<&[u8], DecodeError> {
        Ok(Self::split_bytes(bytes)?.signed_entry)
    }

    /// An update's canonical bytes cut into its parts from the lengths alone, with the same
    /// trust as [`signed_entry_bytes`](Self::signed_entry_bytes): for bytes that were checked
    /// when they were stored. A lookup proof carries the entry's and the profile's bytes.
    ///
    /// # Errors
    /// Bytes whose lengths do not add up to an update.
    pub fn split_bytes(bytes: &[u8]) -> Result<UpdateBytes<'_>, DecodeError> {
        let mut r = Reader::new(bytes);
        let entry = r.var_bytes(1, ENTRY_BYTES_MAX, "entry")?;
        let signatures = r.count(0, UPDATE_SIGNATURES_MAX, "update signatures")?;
        r.bytes(signatures * KeySignature::BYTES, "update signatures")?;
        let signed = bytes.len() - r.remaining();
        let profile = r.var_bytes(1, PROFILE_BYTES_MAX, "profile")?;
        r.finish("update")?;
        Ok(UpdateBytes { entry, signed_entry: &bytes[..signed], profile })
    }

    /// A stable identifier for the update (entry and profile; signatures excluded so that
    /// the same update re-signed is still recognised), used to report its status.
    pub fn id(&self) -> Digest {
        crate::hash::hash("keyraft/v1/update-id", &[&self.signed.entry.encode(), &self.profile.encode()])
    }
}

/// The parts of an update's canonical bytes ([`Update::split_bytes`]), each the canonical
/// bytes of what it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateBytes<'a> {
    /// The entry's.
    pub entry: &'a [u8],
    /// The signed entry's: the entry's, length-prefixed, then the signatures.
    pub signed_entry: &'a [u8],
    /// The profile's.
    pub profile: &'a [u8],
}

/// Why an update cannot be applied. The client is at fault for all of these except
/// [`UpdateRejection::AlreadyUpdatedInEpoch`], which asks it to retry after the epoch.
#[derive(Debug, Clone, PartialEq, Eq, Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum UpdateRejection {
    /// A first entry must have version 0.
    #[error("registration must use version 0, got {got}")]
    RegistrationVersionNotZero {
        /// The version submitted.
        got: u64,
    },
    /// Versions must strictly increase (protocol version 1).
    #[error("version {got} does not exceed the current version {current}")]
    VersionNotIncreasing {
        /// The current version.
        current: u64,
        /// The version submitted.
        got: u64,
    },
    /// Under protocol version 2 each update's version is the current one plus one, so that
    /// no version can be left out of a history (and none can jump to the last one).
    #[error("version {got} is not the next version after the current version {current} (protocol version 2 requires {current} + 1)")]
    VersionNotNext {
        /// The current version.
        current: u64,
        /// The version submitted.
        got: u64,
    },
    /// The entry's commitment is not the profile's.
    #[error("the entry's profile commitment does not match the profile")]
    ProfileCommitmentMismatch,
    /// A signature comes from a key that is in neither policy.
    #[error("signature by {signer}, which is in neither the current nor the new policy")]
    UnknownSigner {
        /// The key, hex.
        signer: String,
    },
    /// A signature does not verify.
    #[error("signature by {signer} does not verify over this entry")]
    BadSignature {
        /// The key, hex.
        signer: String,
    },
    /// The current policy is not satisfied: the owner did not consent.
    #[error("signatures do not satisfy the current entry's update policy")]
    CurrentPolicyNotSatisfied,
    /// The new policy is not satisfied: its key holders did not consent.
    #[error("signatures do not satisfy the new entry's update policy")]
    NewPolicyNotSatisfied,
    /// The identity was already updated in the open epoch; retry once it is cut.
    #[error("this identity already has an update in epoch {epoch}; retry after that epoch is published")]
    AlreadyUpdatedInEpoch {
        /// The open epoch.
        epoch: u64,
    },
    /// A recovery request breaks a rule of its own (docs/protocol.md section 6.3).
    #[error("recovery refused: {0}")]
    Recovery(crate::recovery::RecoveryRejection),
}

impl UpdateRejection {
    /// Whether the same update may succeed if resubmitted later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::AlreadyUpdatedInEpoch { .. })
    }
}

/// Rule 1: whether `new` may follow `current` (None: a registration) in a realm whose
/// configuration is `config`. The one version rule of replicas, verifiers and clients (a
/// history is complete when consecutive versions pass it).
pub fn check_version(config: &RealmConfig, current: Option<&Entry>, new: &Entry) -> Result<(), UpdateRejection> {
    match current {
        None if new.version != 0 => Err(UpdateRejection::RegistrationVersionNotZero { got: new.version }),
        None => Ok(()),
        Some(cur) if config.protocol_version() >= 2 => match cur.version.checked_add(1) {
            Some(next) if next == new.version => Ok(()),
            _ => Err(UpdateRejection::VersionNotNext { current: cur.version, got: new.version }),
        },
        Some(cur) if new.version <= cur.version => {
            Err(UpdateRejection::VersionNotIncreasing { current: cur.version, got: new.version })
        }
        Some(_) => Ok(()),
    }
}

/// Checks rules 1 to 3 for a signed entry against the current entry at its index.
pub fn check_signed_entry(
    config: &RealmConfig,
    current: Option<&Entry>,
    new: &SignedEntry,
) -> Result<(), UpdateRejection> {
    check_signed_entry_with(config, current, new, None)
}

/// [`check_signed_entry`], verifying signatures through `memo` (the same verdict).
pub fn check_signed_entry_memo(
    config: &RealmConfig,
    current: Option<&Entry>,
    new: &SignedEntry,
    memo: &VerifiedSignatures,
) -> Result<(), UpdateRejection> {
    check_signed_entry_with(config, current, new, Some(memo))
}

/// Signatures checked in one batch by [`verify_signatures_batched`]. Per signature
/// (`cargo bench -p keyraft-core --bench ed25519`, 2026-12-02): ~50 us alone, ~28 us in
/// batches of 64, ~23 us of 256, ~18 us of 512. A failing batch is paid again in single
/// checks, but only a forged signature fails one, and none reaches an honest log.
pub const SIGNATURES_PER_BATCH_MAX: usize = 256;

/// Verifies the signatures of many signed entries in batches ([`VerifiedSignatures::verify_batch`])
/// so that the checks which follow through `memo` ([`check_update_memo`],
/// [`check_signed_entry_memo`]) find them verified: in batches of a few hundred a signature
/// costs about half a single check. It decides nothing: only signatures a passing batch proves valid are
/// remembered, and the checks still apply every rule (a signer outside both policies, an
/// unsatisfied policy) and verify singly whatever a failed batch left out.
pub fn verify_signatures_batched(realm: &str, entries: &[&SignedEntry], memo: &VerifiedSignatures) {
    let messages: Vec<Vec<u8>> = entries.iter().map(|e| entry_update_message(realm, &e.entry.encode())).collect();
    let items: Vec<(&PublicKey, &[u8], &Signature)> = entries
        .iter()
        .zip(&messages)
        .flat_map(|(e, m)| e.signatures.iter().map(move |s| (&s.signer, m.as_slice(), &s.signature)))
        .collect();
    for batch in items.chunks(SIGNATURES_PER_BATCH_MAX) {
        memo.verify_batch(batch);
    }
}

fn check_signed_entry_with(
    config: &RealmConfig,
    current: Option<&Entry>,
    new: &SignedEntry,
    memo: Option<&VerifiedSignatures>,
) -> Result<(), UpdateRejection> {
    check_version(config, current, &new.entry)?;
    debug_assert!(current.is_none_or(|c| c.index == new.entry.index), "current entry looked up at another index");

    check_signatures(config, new, current.map(|c| &c.update_policy), memo)
}

/// Rules 2 and 3: every signature is by a key of the new policy or of `current_policy` and
/// verifies, and each of the two policies is satisfied by its signers. A recovery passes no
/// current policy: the new policy alone signs it. Signatures found valid before in `memo` are
/// not verified again (the same verdict, see [`VerifiedSignatures`]).
pub(crate) fn check_signatures(
    config: &RealmConfig,
    new: &SignedEntry,
    current_policy: Option<&Policy>,
    memo: Option<&VerifiedSignatures>,
) -> Result<(), UpdateRejection> {
    let message = entry_update_message(&config.realm, &new.entry.encode());
    let new_policy = &new.entry.update_policy;
    let mut signed_new = BTreeSet::new();
    let mut signed_current = BTreeSet::new();
    for s in &new.signatures {
        let in_new = new_policy.position(&s.signer);
        let in_current = current_policy.and_then(|p: &Policy| p.position(&s.signer));
        if in_new.is_none() && in_current.is_none() {
            return Err(UpdateRejection::UnknownSigner { signer: s.signer.to_string() });
        }
        let valid = match memo {
            Some(memo) => memo.verify(&s.signer, &message, &s.signature),
            None => s.signer.verify(&message, &s.signature),
        };
        if !valid {
            return Err(UpdateRejection::BadSignature { signer: s.signer.to_string() });
        }
        if let Some(p) = in_new {
            signed_new.insert(p);
        }
        if let Some(p) = in_current {
            signed_current.insert(p);
        }
    }
    if let Some(policy) = current_policy {
        if !policy.is_satisfied_by(&signed_current) {
            return Err(UpdateRejection::CurrentPolicyNotSatisfied);
        }
    }
    if !new_policy.is_satisfied_by(&signed_new) {
        return Err(UpdateRejection::NewPolicyNotSatisfied);
    }
    Ok(())
}

/// Checks every rule for a complete update.
pub fn check_update(config: &RealmConfig, current: Option<&Entry>, update: &Update) -> Result<(), UpdateRejection> {
    check_update_with(config, current, update, None)
}

/// [`check_update`], verifying signatures through `memo`: the same verdict, each signature
/// verified once in a process that checks an update more than once (a replica checks it
/// when it arrives and when it applies it).
pub fn check_update_memo(
    config: &RealmConfig,
    current: Option<&Entry>,
    update: &Update,
    memo: &VerifiedSignatures,
) -> Result<(), UpdateRejection> {
    check_update_with(config, current, update, Some(memo))
}

fn check_update_with(
    config: &RealmConfig,
    current: Option<&Entry>,
    update: &Update,
    memo: Option<&VerifiedSignatures>,
) -> Result<(), UpdateRejection> {
    if update.signed.entry.profile_commitment != profile_commitment(&update.profile.encode()) {
        return Err(UpdateRejection::ProfileCommitmentMismatch);
    }
    check_signed_entry_with(config, current, &update.signed, memo)
}
