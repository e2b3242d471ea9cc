//! Lookup proofs and their verification by clients.
//!
//! A client accepts an answer about `user_id` only if every check below passes, in this
//! order (each failure has its own [`VerifyError`] variant):
//! 1. the head is the realm's (name and configuration hash): the cheapest check, and the one
//!    that names the usual mistake (a proof checked against another realm's file) instead of
//!    reporting it as a VRF failure;
//! 2. the VRF proof verifies for `user_id` under the realm's VRF key; its output gives the index;
//! 3. the head is fresh: `issue_time + ttl >= now`, and not from the future beyond the skew;
//! 4. a strict majority of the replicas signed the head (always required), and at least the
//!    client's threshold of registered verifiers ratified it; every signature present must
//!    be valid and from a distinct registered key;
//! 5. the tree proof leads from the index to the head's root;
//! 6. the entry hashes to the leaf's value and is at the index;
//! 7. the profile matches the entry's commitment; a pending recovery (which the leaf value
//!    commits to, check 6) obeys the recovery rules and has not matured by the head's epoch;
//! 8. the epoch is not older than the newest one this client has seen for the realm.
//!
//! [`verify_lookup_at`] checks a proof about a past epoch (history, a saved proof checked as
//! historical): every check but 3 and 8, and the head must be of the epoch asked for.
//!
//! Signatures appear once over the single head carried in the proof, so "all heads are
//! identical" holds by construction.

use crate::encoding::{decode_canonical, put_count, put_var_bytes, Canonical, DecodeError, Reader};
use crate::hash::{context, signed_message};
use crate::human;
use crate::keys::{PublicKey, Signature};
use crate::limits::{
    ENTRY_BYTES_MAX, LOOKUP_PROOF_BYTES_MAX, PENDING_RECOVERY_BYTES_MAX, PROFILE_BYTES_MAX, REPLICAS_MAX,
    USER_ID_BYTES_MAX, VERIFIERS_MAX,
};
use crate::recovery::{check_pending_in_head, leaf_value, PendingRecovery, PendingRecoveryError};
use crate::tree::{TreeAnswer, TreeProof, TreeProofError};
use crate::types::{validate_user_id, vrf_input, EpochHead, Index, Profile, RealmConfig};
use crate::verified::Verified;
use crate::vrf::{VrfError, VrfProof};
use thiserror::Error;

/// The message a replica signs for a head.
pub fn head_signing_message(head: &EpochHead) -> Vec<u8> {
    signed_message(context::EPOCH_HEAD, &[&head.encode()])
}

/// The message a verifier signs to ratify a head.
pub fn ratification_message(head: &EpochHead) -> Vec<u8> {
    signed_message(context::VERIFIER_RATIFICATION, &[&head.encode()])
}

/// A signature by the key at `position` in the realm's sorted replica (or verifier) keys.
///
/// Positions instead of keys keep proofs small (1 byte instead of 32 per signature); the
/// head's `config_hash` pins the key list the positions refer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PositionalSignature {
    /// Position of the signer's key in the realm configuration.
    pub position: u8,
    /// The signature.
    pub signature: Signature,
}

/// Everything a client needs to check an answer about one user id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupProof {
    /// The identity asked about.
    pub user_id: String,
    /// The VRF proof mapping the user id to its index.
    pub vrf_proof: VrfProof,
    /// The head of the epoch answered from.
    pub head: EpochHead,
    /// Replica signatures over the head, sorted by position.
    pub replica_signatures: Vec<PositionalSignature>,
    /// Verifier ratifications of the head, sorted by position.
    pub verifier_signatures: Vec<PositionalSignature>,
    /// Inclusion or absence of the index in the head's tree.
    pub tree_proof: TreeProof,
    /// The entry and its profile, present exactly when the tree proof shows inclusion.
    pub entry: Option<(crate::types::Entry, Profile)>,
    /// The recovery pending for the identity (protocol version 2), which its leaf commits to
    /// next to the entry: a proof cannot leave it out. Encoded as a trailing optional field,
    /// so proofs without one keep their version-1 bytes.
    pub pending_recovery: Option<PendingRecovery>,
}

/// A lookup proof's fields by reference, with the entry and profile as their canonical bytes:
/// the one statement of the proof's layout, which [`LookupProof`] encodes through and a replica
/// writes from its stored update's bytes with (no key decompressed only to be encoded again).
#[derive(Debug, Clone, Copy)]
pub struct LookupProofFields<'a> {
    /// See [`LookupProof::user_id`].
    pub user_id: &'a str,
    /// See [`LookupProof::vrf_proof`].
    pub vrf_proof: &'a VrfProof,
    /// See [`LookupProof::head`].
    pub head: &'a EpochHead,
    /// See [`LookupProof::replica_signatures`].
    pub replica_signatures: &'a [PositionalSignature],
    /// See [`LookupProof::verifier_signatures`].
    pub verifier_signatures: &'a [PositionalSignature],
    /// See [`LookupProof::tree_proof`].
    pub tree_proof: &'a TreeProof,
    /// The canonical bytes of the entry and of its profile (see [`LookupProof::entry`]).
    pub entry: Option<(&'a [u8], &'a [u8])>,
    /// See [`LookupProof::pending_recovery`].
    pub pending_recovery: Option<&'a PendingRecovery>,
}

impl LookupProofFields<'_> {
    /// Appends the canonical encoding of the proof these fields make.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        put_var_bytes(out, self.user_id.as_bytes());
        out.extend_from_slice(self.vrf_proof.as_bytes());
        put_var_bytes(out, &self.head.encode());
        encode_positional(out, self.replica_signatures);
        encode_positional(out, self.verifier_signatures);
        self.tree_proof.encode_into(out);
        match self.entry {
            None => out.push(0),
            Some((entry, profile)) => {
                out.push(1);
                put_var_bytes(out, entry);
                put_var_bytes(out, profile);
            }
        }
        if let Some(pending) = self.pending_recovery {
            out.push(1);
            put_var_bytes(out, &pending.encode());
        }
    }

    /// The canonical encoding, in a buffer allocated once.
    pub fn encode(&self) -> Vec<u8> {
        // Signatures are 65 bytes with their positions, siblings at most 33 with their tags.
        let signatures = self.replica_signatures.len() + self.verifier_signatures.len();
        let entry = self.entry.map_or(0, |(e, p)| e.len() + p.len());
        let mut out = Vec::with_capacity(
            512 + self.user_id.len() + 65 * signatures + 33 * self.tree_proof.siblings.len() + entry,
        );
        self.encode_into(&mut out);
        out
    }
}

fn encode_positional(out: &mut Vec<u8>, sigs: &[PositionalSignature]) {
    put_count(out, sigs.len());
    for s in sigs {
        out.push(s.position);
        out.extend_from_slice(&s.signature.0);
    }
}

fn decode_positional(
    r: &mut Reader<'_>,
    max: usize,
    what: &'static str,
) -> Result<Vec<PositionalSignature>, DecodeError> {
    let n = r.count(0, max, what)?;
    let mut out: Vec<PositionalSignature> = Vec::with_capacity(n);
    for _ in 0..n {
        let position = r.u8(what)?;
        if out.last().is_some_and(|p| p.position >= position) {
            return Err(DecodeError::NonCanonical { what, why: "positions not sorted strictly ascending" });
        }
        out.push(PositionalSignature { position, signature: Signature(r.array(what)?) });
    }
    Ok(out)
}

impl Canonical for LookupProof {
    const NAME: &'static str = "lookup proof";

    fn encode_into(&self, out: &mut Vec<u8>) {
        let entry = self.entry.as_ref().map(|(entry, profile)| (entry.encode(), profile.encode()));
        LookupProofFields {
            user_id: &self.user_id,
            vrf_proof: &self.vrf_proof,
            head: &self.head,
            replica_signatures: &self.replica_signatures,
            verifier_signatures: &self.verifier_signatures,
            tree_proof: &self.tree_proof,
            entry: entry.as_ref().map(|(e, p)| (e.as_slice(), p.as_slice())),
            pending_recovery: self.pending_recovery.as_ref(),
        }
        .encode_into(out);
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        if r.remaining() > LOOKUP_PROOF_BYTES_MAX {
            return Err(DecodeError::TooLong { what: "lookup proof", max: LOOKUP_PROOF_BYTES_MAX, got: r.remaining() });
        }
        let user_id = std::str::from_utf8(r.var_bytes(1, USER_ID_BYTES_MAX, "user id")?)
            .map_err(|_| DecodeError::Invalid { what: "user id", why: "not UTF-8" })?
            .to_owned();
        validate_user_id(&user_id)?;
        let vrf_proof = VrfProof::from_bytes(r.bytes(80, "vrf proof")?)
            .map_err(|_| DecodeError::Invalid { what: "vrf proof", why: "must be 80 bytes" })?;
        let head = decode_canonical(r.var_bytes(1, 512, "epoch head")?)?;
        let replica_signatures = decode_positional(r, REPLICAS_MAX, "replica signatures")?;
        let verifier_signatures = decode_positional(r, VERIFIERS_MAX, "verifier signatures")?;
        let tree_proof = TreeProof::decode_from(r)?;
        let entry = match r.u8("entry presence")? {
            0 => None,
            1 => {
                let entry = decode_canonical(r.var_bytes(1, ENTRY_BYTES_MAX, "entry")?)?;
                let profile = decode_canonical(r.var_bytes(1, PROFILE_BYTES_MAX, "profile")?)?;
                Some((entry, profile))
            }
            _ => return Err(DecodeError::Invalid { what: "entry presence", why: "must be 0 or 1" }),
        };
        // Absent is no byte at all (a version-1 proof's encoding), so the only tag is 1.
        let pending_recovery = if r.remaining() == 0 {
            None
        } else {
            if r.u8("pending recovery presence")? != 1 {
                return Err(DecodeError::Invalid {
                    what: "pending recovery presence",
                    why: "must be 1 (an absent pending recovery is no byte)",
                });
            }
            if entry.is_none() {
                return Err(DecodeError::Invalid {
                    what: "pending recovery",
                    why: "only an identity with an entry can have a pending recovery",
                });
            }
            Some(decode_canonical(r.var_bytes(1, PENDING_RECOVERY_BYTES_MAX, "pending recovery")?)?)
        };
        Ok(Self {
            user_id,
            vrf_proof,
            head,
            replica_signatures,
            verifier_signatures,
            tree_proof,
            entry,
            pending_recovery,
        })
    }
}

impl LookupProof {
    /// Decodes a proof from its canonical bytes (for example a saved proof file).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_canonical(bytes)
    }
}

/// What a client trusts: the realm's configuration plus its own quorum and freshness rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRealm {
    /// The realm's public configuration.
    pub config: RealmConfig,
    /// How many registered verifiers must have ratified an epoch (on top of the replica
    /// majority, which is always required).
    pub verifier_threshold: usize,
    /// The oldest head accepted, as an age in milliseconds.
    pub epoch_ttl_ms: u64,
    /// How far in the future a head's issue time may be, in milliseconds.
    pub clock_skew_ms: u64,
}

impl ClientRealm {
    /// Whether a head issued at `issue_time_ms` is older than this client's TTL at `now_ms`:
    /// the realm may be hiding newer epochs.
    pub fn head_expired(&self, issue_time_ms: u64, now_ms: u64) -> bool {
        issue_time_ms.saturating_add(self.epoch_ttl_ms) < now_ms
    }

    /// Check 3, the one freshness rule of lookups and watches: `head` is within the TTL at
    /// `now_ms` and not from further in the future than the allowed skew.
    pub fn check_fresh(&self, head: &EpochHead, now_ms: u64) -> Result<(), VerifyError> {
        if self.head_expired(head.issue_time_ms, now_ms) {
            return Err(VerifyError::HeadExpired {
                epoch: head.epoch,
                issue_time_ms: head.issue_time_ms,
                now_ms,
                ttl_ms: self.epoch_ttl_ms,
            });
        }
        if head.issue_time_ms > now_ms.saturating_add(self.clock_skew_ms) {
            return Err(VerifyError::HeadFromFuture {
                issue_time_ms: head.issue_time_ms,
                now_ms,
                skew_ms: self.clock_skew_ms,
            });
        }
        Ok(())
    }
}

/// A verified answer about one user id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// The identity.
    pub user_id: String,
    /// Its index.
    pub index: Index,
    /// The head the answer is from.
    pub head: EpochHead,
    /// The entry and profile, or `None` if the identity is not registered.
    pub entry: Option<(crate::types::Entry, Profile)>,
    /// The verifiers whose ratification was checked.
    pub ratified_by: Vec<PublicKey>,
    /// A recovery of the identity waiting for its veto window (protocol version 2): its
    /// owner's devices alert, and veto it with an ordinary update if it is not theirs.
    pub pending_recovery: Option<PendingRecovery>,
}

impl Lookup {
    /// The epoch of the answer.
    pub fn epoch(&self) -> u64 {
        self.head.epoch
    }
}

/// Why a lookup proof was refused. Every variant means the server (or whoever relayed the
/// proof) sent something that does not prove the answer; none of them is fixed by retrying
/// the same server, except [`VerifyError::HeadExpired`] when a realm has just stalled.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The proof's bytes are malformed.
    #[error("malformed proof: {0}")]
    Malformed(#[from] DecodeError),
    /// Check 2: the VRF proof does not verify for this user id.
    #[error("VRF proof rejected: {0}")]
    Vrf(VrfError),
    /// The proof is about another user id.
    #[error("proof is for user id {got:?}, not {expected:?}")]
    UserIdMismatch {
        /// The user id asked about.
        expected: String,
        /// The one in the proof.
        got: String,
    },
    /// Check 1: the head is of another realm than the client's realm file: another name, or
    /// another configuration (replica, verifier or VRF keys) under the same name.
    #[error(
        "this proof is for a different realm: realm {got_realm:?} (config hash {}), your realm file has realm {expected_realm:?} (config hash {})",
        short_hex(got_config_hash),
        short_hex(expected_config_hash)
    )]
    RealmMismatch {
        /// The client's realm name.
        expected_realm: String,
        /// The head's realm name.
        got_realm: String,
        /// The hash of the client's realm configuration.
        expected_config_hash: [u8; 32],
        /// The configuration hash the head commits to.
        got_config_hash: [u8; 32],
    },
    /// Check 3: the head is older than the client's TTL: the realm may be hiding newer epochs.
    #[error(
        "head of epoch {epoch} was issued at {}, {} before the client's clock ({}): older than the TTL of {}",
        human::utc(*.issue_time_ms), human::duration(.now_ms.saturating_sub(*.issue_time_ms)), human::utc(*.now_ms),
        human::duration(*.ttl_ms)
    )]
    HeadExpired {
        /// The head's epoch.
        epoch: u64,
        /// Its issue time.
        issue_time_ms: u64,
        /// The client's clock.
        now_ms: u64,
        /// The client's TTL.
        ttl_ms: u64,
    },
    /// Check 3: the head claims to come from the future.
    #[error(
        "head issued at {} is {} ahead of the client's clock ({}): more than the allowed skew of {}",
        human::utc(*.issue_time_ms), human::duration(.issue_time_ms.saturating_sub(*.now_ms)), human::utc(*.now_ms),
        human::duration(*.skew_ms)
    )]
    HeadFromFuture {
        /// Its issue time.
        issue_time_ms: u64,
        /// The client's clock.
        now_ms: u64,
        /// The allowed skew.
        skew_ms: u64,
    },
    /// Check 4: a signature names a replica position the realm does not have.
    #[error("replica signature position {position} is not a replica of this realm")]
    UnknownReplica {
        /// The position.
        position: u8,
    },
    /// Check 4: a replica signature does not verify.
    #[error("replica {signer}'s signature over the head does not verify")]
    BadReplicaSignature {
        /// The replica's key, hex.
        signer: String,
    },
    /// Check 4: fewer than a majority of replicas signed. Always required.
    #[error("only {have} replica signatures, a majority needs {need}")]
    ReplicaMajorityMissing {
        /// Valid replica signatures.
        have: usize,
        /// The majority.
        need: usize,
    },
    /// Check 4: a signature names a verifier position the realm does not have.
    #[error("verifier signature position {position} is not a registered verifier")]
    UnknownVerifier {
        /// The position.
        position: u8,
    },
    /// Check 4: a verifier signature does not verify.
    #[error("verifier {signer}'s ratification of the head does not verify")]
    BadVerifierSignature {
        /// The verifier's key, hex.
        signer: String,
    },
    /// Check 4: too few verifiers ratified the epoch.
    #[error("only {have} verifier ratifications, the client requires {need}")]
    VerifierQuorumMissing {
        /// Valid ratifications.
        have: usize,
        /// The client's threshold.
        need: usize,
    },
    /// Check 5: the tree proof does not lead to the signed root.
    #[error("tree proof rejected: {0}")]
    TreeProof(TreeProofError),
    /// Check 6: the tree shows the index present but the proof carries no entry, or the reverse.
    #[error("the tree proof shows the identity {}, but the proof {} an entry", if *tree_says_present { "present" } else { "absent" }, if *tree_says_present { "lacks" } else { "carries" })]
    EntryPresenceMismatch {
        /// What the tree says.
        tree_says_present: bool,
    },
    /// Check 6: the entry does not hash to the leaf value.
    #[error("the entry does not hash to the value in the tree")]
    EntryHashMismatch,
    /// Check 6: the entry is for another index.
    #[error("the entry's index is not the identity's index")]
    EntryIndexMismatch,
    /// Check 7: the profile is not the one the entry commits to.
    #[error("the profile does not match the entry's commitment")]
    ProfileCommitmentMismatch,
    /// A historical proof is of another epoch than the one asked for.
    #[error("proof is of epoch {got}, not the epoch {asked} asked for")]
    EpochMismatch {
        /// The epoch asked for.
        asked: u64,
        /// The proof's epoch.
        got: u64,
    },
    /// Check 7b: the pending recovery the leaf commits to cannot be what replicas hold.
    #[error("pending recovery rejected: {0}")]
    PendingRecovery(PendingRecoveryError),
    /// Check 8: the server answered from an epoch older than one the client already saw.
    #[error("epoch {got} is older than epoch {last_seen} already seen for this realm (rollback)")]
    Rollback {
        /// The newest epoch seen before.
        last_seen: u64,
        /// The proof's epoch.
        got: u64,
    },
}

/// Verifies a lookup proof for `user_id` at the client's clock `now_ms`, given the newest epoch
/// the client has seen for the realm. See the module documentation for the checks.
pub fn verify_lookup(
    realm: &ClientRealm,
    user_id: &str,
    proof: &LookupProof,
    now_ms: u64,
    last_seen_epoch: Option<u64>,
) -> Result<Verified<Lookup>, VerifyError> {
    verify(realm, user_id, proof, When::Present { now_ms, last_seen_epoch })
}

/// Verifies a proof of what `user_id` was in a past `epoch` (a `History` page, a lookup at a
/// given epoch, a saved proof): every check except freshness (3) and rollback (8), which are
/// about the present, plus the head being of `epoch`. The answer says nothing about the
/// identity today.
pub fn verify_lookup_at(
    realm: &ClientRealm,
    user_id: &str,
    proof: &LookupProof,
    epoch: u64,
) -> Result<Verified<Lookup>, VerifyError> {
    verify(realm, user_id, proof, When::Past(epoch))
}

/// What a proof is checked as: the present answer (at the client's clock, with the newest
/// epoch it has seen), or a statement about a past epoch.
#[derive(Debug, Clone, Copy)]
enum When {
    Present { now_ms: u64, last_seen_epoch: Option<u64> },
    Past(u64),
}

fn verify(
    realm: &ClientRealm,
    user_id: &str,
    proof: &LookupProof,
    when: When,
) -> Result<Verified<Lookup>, VerifyError> {
    let config = &realm.config;
    // The id asked about stands for its canonical form in this realm (protocol version 2,
    // docs/protocol.md section 3.1; under version 1 the id as given): the proof must be about
    // exactly that. An id with no canonical form matches no proof.
    let canonical = config.canonical_user_id(user_id);
    let user_id = canonical.as_deref().unwrap_or(user_id);
    if proof.user_id != user_id {
        return Err(VerifyError::UserIdMismatch { expected: user_id.to_owned(), got: proof.user_id.clone() });
    }
    // 1. Realm. Before the VRF: every check must pass, so the order is free, and this cheap
    // one names the actual mistake (a proof checked against another realm's file).
    let head = &proof.head;
    let config_hash = config.hash();
    if head.realm != config.realm || head.config_hash != config_hash {
        return Err(VerifyError::RealmMismatch {
            expected_realm: config.realm.clone(),
            got_realm: head.realm.clone(),
            expected_config_hash: config_hash,
            got_config_hash: head.config_hash,
        });
    }
    // A past epoch's proof is of that epoch (checked after the realm: another realm's epochs
    // are not this one's).
    if let When::Past(asked) = when {
        if head.epoch != asked {
            return Err(VerifyError::EpochMismatch { asked, got: head.epoch });
        }
    }

    // 2. VRF.
    let output =
        config.vrf_public_key.verify(&vrf_input(&config.realm, user_id), &proof.vrf_proof).map_err(VerifyError::Vrf)?;
    let index = Index::of_vrf_output(&output);

    // 3. Freshness.
    if let When::Present { now_ms, .. } = when {
        realm.check_fresh(head, now_ms)?;
    }

    // 4. Quorum.
    let ratified_by = check_quorum(realm, proof)?;

    // 5. Tree proof.
    let answer = proof.tree_proof.verify(&head.root, &index).map_err(VerifyError::TreeProof)?;

    // 6, 7. Entry and profile.
    match (answer, &proof.entry) {
        (TreeAnswer::Absent, None) => {}
        (TreeAnswer::Present(value), Some((entry, profile))) => {
            // The leaf commits to the pending recovery too, so a proof leaving it out (or
            // carrying another) fails here.
            if leaf_value(entry, proof.pending_recovery.as_ref()) != value {
                return Err(VerifyError::EntryHashMismatch);
            }
            if entry.index != index {
                return Err(VerifyError::EntryIndexMismatch);
            }
            if profile.commitment() != entry.profile_commitment {
                return Err(VerifyError::ProfileCommitmentMismatch);
            }
            // 7b. Recovery: what the client can check of the pending recovery.
            if let Some(pending) = &proof.pending_recovery {
                check_pending_in_head(config, head, entry, pending).map_err(VerifyError::PendingRecovery)?;
            }
        }
        (TreeAnswer::Absent, Some(_)) => return Err(VerifyError::EntryPresenceMismatch { tree_says_present: false }),
        (TreeAnswer::Present(_), None) => return Err(VerifyError::EntryPresenceMismatch { tree_says_present: true }),
    }

    // 8. Rollback.
    if let When::Present { last_seen_epoch: Some(last_seen), .. } = when {
        if head.epoch < last_seen {
            return Err(VerifyError::Rollback { last_seen, got: head.epoch });
        }
    }

    Ok(Verified::new(Lookup {
        user_id: user_id.to_owned(),
        index,
        head: head.clone(),
        entry: proof.entry.clone(),
        ratified_by,
        pending_recovery: proof.pending_recovery.clone(),
    }))
}

/// Check 4: returns the verifiers whose ratifications were checked.
fn check_quorum(realm: &ClientRealm, proof: &LookupProof) -> Result<Vec<PublicKey>, VerifyError> {
    let config = &realm.config;
    let head_message = head_signing_message(&proof.head);
    for s in &proof.replica_signatures {
        let signer = config
            .replica_keys
            .get(usize::from(s.position))
            .ok_or(VerifyError::UnknownReplica { position: s.position })?;
        if !signer.verify(&head_message, &s.signature) {
            return Err(VerifyError::BadReplicaSignature { signer: signer.to_string() });
        }
    }
    if !config.is_replica_majority(proof.replica_signatures.len()) {
        return Err(VerifyError::ReplicaMajorityMissing {
            have: proof.replica_signatures.len(),
            need: config.replica_majority(),
        });
    }
    let ratification = ratification_message(&proof.head);
    let mut ratified_by = Vec::with_capacity(proof.verifier_signatures.len());
    for s in &proof.verifier_signatures {
        let signer = config
            .verifier_keys
            .get(usize::from(s.position))
            .ok_or(VerifyError::UnknownVerifier { position: s.position })?;
        if !signer.verify(&ratification, &s.signature) {
            return Err(VerifyError::BadVerifierSignature { signer: signer.to_string() });
        }
        ratified_by.push(*signer);
    }
    if ratified_by.len() < realm.verifier_threshold {
        return Err(VerifyError::VerifierQuorumMissing { have: ratified_by.len(), need: realm.verifier_threshold });
    }
    Ok(ratified_by)
}

/// The first 8 bytes of a hash in hex: enough to tell two realms apart in a message.
fn short_hex(hash: &[u8; 32]) -> String {
    hex::encode(&hash[..8])
}

/// Decodes and verifies a proof in one step (for proofs read from files or the network).
pub fn verify_lookup_bytes(
    realm: &ClientRealm,
    user_id: &str,
    proof_bytes: &[u8],
    now_ms: u64,
    last_seen_epoch: Option<u64>,
) -> Result<Verified<Lookup>, VerifyError> {
    let proof = LookupProof::from_bytes(proof_bytes)?;
    verify_lookup(realm, user_id, &proof, now_ms, last_seen_epoch)
}

impl VerifyError {
    /// The stable name of the check that refused the proof (docs/protocol.md section 5.1):
    /// `decode`, `user_id`, `realm`, `vrf`, `freshness`, `quorum`, `tree`, `entry`, `profile`,
    /// `recovery`, `rollback`, or `epoch` for a historical proof of another epoch. Test vectors
    /// (docs/vectors) and other implementations name checks this way, not by step number,
    /// so that reordering steps does not rename them.
    pub fn check(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "decode",
            Self::UserIdMismatch { .. } => "user_id",
            Self::Vrf(_) => "vrf",
            Self::RealmMismatch { .. } => "realm",
            Self::HeadExpired { .. } | Self::HeadFromFuture { .. } => "freshness",
            Self::UnknownReplica { .. }
            | Self::BadReplicaSignature { .. }
            | Self::ReplicaMajorityMissing { .. }
            | Self::UnknownVerifier { .. }
            | Self::BadVerifierSignature { .. }
            | Self::VerifierQuorumMissing { .. } => "quorum",
            Self::TreeProof(_) => "tree",
            Self::EntryPresenceMismatch { .. } | Self::EntryHashMismatch | Self::EntryIndexMismatch => "entry",
            Self::ProfileCommitmentMismatch => "profile",
            Self::PendingRecovery(_) => "recovery",
            Self::EpochMismatch { .. } => "epoch",
            Self::Rollback { .. } => "rollback",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::VerifyError;

    /// Freshness failures read as times and exact durations, not raw milliseconds, so a user
    /// sees at once whether their clock or the realm is off.
    #[test]
    fn freshness_errors_speak_in_times() {
        let expired = VerifyError::HeadExpired {
            epoch: 7,
            issue_time_ms: 1_796_004_845_000,
            now_ms: 1_796_004_906_000,
            ttl_ms: 60_000,
        };
        assert_eq!(
            expired.to_string(),
            "head of epoch 7 was issued at 2026-11-30T02:14:05Z, 1 min 1 s before the client's clock \
             (2026-11-30T02:15:06Z): older than the TTL of 1 min"
        );
        let future =
            VerifyError::HeadFromFuture { issue_time_ms: 1_796_004_906_000, now_ms: 1_796_004_845_000, skew_ms: 5_000 };
        assert_eq!(
            future.to_string(),
            "head issued at 2026-11-30T02:15:06Z is 1 min 1 s ahead of the client's clock \
             (2026-11-30T02:14:05Z): more than the allowed skew of 5 s"
        );
    }
}
