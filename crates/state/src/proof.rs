//! Assembling the server's half of a lookup proof from stored state.

use crate::corrupt;
use crate::machine::StateMachine;
use keyraft_core::lookup::PositionalSignature;
use keyraft_core::recovery::{leaf_value, PendingRecovery};
use keyraft_core::tree::{Terminal, TreeProof};
use keyraft_core::{Entry, EpochHead, Index, Profile, PublicKey, Signature};
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
    /// The entry and profile when present.
    pub entry: Option<(Entry, Profile)>,
    /// The recovery pending in the epoch, which the leaf commits to (protocol version 2).
    pub pending_recovery: Option<PendingRecovery>,
}

impl LookupParts {
    /// The whole lookup proof, with what only the edge knows: the user id and its VRF proof.
    pub fn into_proof(self, user_id: &str, vrf_proof: keyraft_core::vrf::VrfProof) -> keyraft_core::LookupProof {
        keyraft_core::LookupProof {
            user_id: user_id.to_owned(),
            vrf_proof,
            head: self.head,
            replica_signatures: self.replica_signatures,
            verifier_signatures: self.verifier_signatures,
            tree_proof: self.tree_proof,
            entry: self.entry,
            pending_recovery: self.pending_recovery,
        }
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
                let (_, update) =
                    self.update_at(index, epoch)?.ok_or_else(|| corrupt("tree leaf without a stored update"))?;
                let pending = self.pending_recovery_at(index, epoch)?.map(|(p, _)| p);
                if leaf_value(&update.signed.entry, pending.as_ref()) != value {
                    return Err(corrupt("tree leaf value differs from the stored entry's (and pending recovery's)"));
                }
                (Some((update.signed.entry, update.profile)), pending)
            }
            _ => (None, None),
        };
        Ok(Some(LookupParts { head, replica_signatures, verifier_signatures, tree_proof, entry, pending_recovery }))
    }
}
