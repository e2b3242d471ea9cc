//! Assembling the server's half of a lookup proof from stored state.

use crate::corrupt;
use crate::machine::StateMachine;
use keyraft_core::lookup::{LookupProofFields, PositionalSignature};
use keyraft_core::recovery::{leaf_value_of_bytes, PendingRecovery};
use keyraft_core::tree::{Terminal, TreeProof};
use keyraft_core::vrf::VrfProof;
use keyraft_core::{decode_canonical, EpochHead, Index, LookupProof, PublicKey, Signature, Update};
use keyraft_epoch::StateError;
use keyraft_storage::Storage;

/// Everything in a lookup proof except the user id and the VRF proof, which only the edge
/// (holding the VRF secret key and the user id) can add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupParts {
    /// The epoch's head.
    pub head: EpochHead,
    /// A replica majority's signatures (the first by position), sorted by position.
    pub replica_signatures: Vec<PositionalSignature>,
    /// Up to the requested number of verifier ratifications, sorted by position.
    pub verifier_signatures: Vec<PositionalSignature>,
    /// Inclusion or absence proof.
    pub tree_proof: TreeProof,
    /// The canonical bytes of the entry and of its profile when present, as stored (a
    /// replica writes them into the proof without decoding them).
    pub entry: Option<(Vec<u8>, Vec<u8>)>,
    /// The recovery pending in the epoch, which the leaf commits to (protocol version 2).
    pub pending_recovery: Option<PendingRecovery>,
}

impl LookupParts {
    /// The canonical bytes of the whole lookup proof, with what only the edge knows: the user
    /// id and its VRF proof.
    pub fn encode_proof(&self, user_id: &str, vrf_proof: &VrfProof) -> Vec<u8> {
        LookupProofFields {
            user_id,
            vrf_proof,
            head: &self.head,
            replica_signatures: &self.replica_signatures,
            verifier_signatures: &self.verifier_signatures,
            tree_proof: &self.tree_proof,
            entry: self.entry.as_ref().map(|(e, p)| (e.as_slice(), p.as_slice())),
            pending_recovery: self.pending_recovery.as_ref(),
        }
        .encode()
    }

    /// The whole lookup proof, decoded (the entry's keys decompressed).
    ///
    /// # Errors
    /// Stored entry or profile bytes that do not decode.
    pub fn into_proof(self, user_id: &str, vrf_proof: VrfProof) -> Result<LookupProof, StateError> {
        let entry = match self.entry {
            None => None,
            Some((entry, profile)) => Some((
                decode_canonical(&entry).map_err(|e| corrupt(format!("stored entry: {e}")))?,
                decode_canonical(&profile).map_err(|e| corrupt(format!("stored profile: {e}")))?,
            )),
        };
        Ok(LookupProof {
            user_id: user_id.to_owned(),
            vrf_proof,
            head: self.head,
            replica_signatures: self.replica_signatures,
            verifier_signatures: self.verifier_signatures,
            tree_proof: self.tree_proof,
            entry,
            pending_recovery: self.pending_recovery,
        })
    }
}

fn positional(
    keys: &[PublicKey],
    sigs: Vec<(PublicKey, Signature)>,
    max: usize,
) -> Result<Vec<PositionalSignature>, StateError> {
    let mut out = Vec::new();
    for (signer, signature) in sigs.into_iter().take(max) {
        let pos = keys.binary_search(&signer).map_err(|_| corrupt("stored signature by a key outside the realm"))?;
        let position = u8::try_from(pos).map_err(|_| corrupt("signer position above 255"))?;
        out.push(PositionalSignature { position, signature });
    }
    Ok(out)
}

impl<S: Storage> StateMachine<S> {
    /// The server's half of a proof about `index` in `epoch`, carrying a replica majority and
    /// at most `verifiers_max` ratifications. `None` if the epoch has no head.
    ///
    /// Stored signatures are sorted by key, and keys are sorted in the realm configuration,
    /// so the positions come out sorted as the proof format requires.
    pub fn lookup_parts(
        &self,
        index: &Index,
        epoch: u64,
        verifiers_max: usize,
    ) -> Result<Option<LookupParts>, StateError> {
        let Some(head) = self.head(epoch)? else { return Ok(None) };
        // Positions refer to the keys of the configuration the head commits to.
        let config = self.config_of_epoch(epoch);
        let replica_signatures =
            positional(&config.replica_keys, self.replica_signatures(epoch)?, config.replica_majority())?;
        let verifier_signatures = positional(&config.verifier_keys, self.verifier_signatures(epoch)?, verifiers_max)?;
        let tree_proof = self.tree_proof(epoch, index)?;
        let (entry, pending_recovery) = match tree_proof.terminal {
            Terminal::Leaf { value } => {
                let (_, stored) =
                    self.update_bytes_at(index, epoch)?.ok_or_else(|| corrupt("tree leaf without a stored update"))?;
                let parts = Update::split_bytes(&stored).map_err(|e| corrupt(format!("stored update: {e}")))?;
                // A leaf is the entry's hash exactly when no recovery is pending (with one, it
                // hashes both under another label), so only a leaf that is not needs the pending
                // recovery read (a reverse range scan); the leaf is checked against the stored
                // state either way.
                let pending = if leaf_value_of_bytes(parts.entry, None) == value {
                    None
                } else {
                    let pending = self.pending_recovery_at(index, epoch)?.map(|(p, _)| p);
                    if pending.is_none() || leaf_value_of_bytes(parts.entry, pending.as_ref()) != value {
                        return Err(corrupt(
                            "tree leaf value differs from the stored entry's (and pending recovery's)",
                        ));
                    }
                    pending
                };
                (Some((parts.entry.to_vec(), parts.profile.to_vec())), pending)
            }
            _ => (None, None),
        };
        Ok(Some(LookupParts { head, replica_signatures, verifier_signatures, tree_proof, entry, pending_recovery }))
    }
}
