//! Read accessors over the stored state: updates and their history, heads, signatures, the
//! verifier log's epochs, tree roots and proofs.

use super::{PublishedEpoch, PublishedEpochBytes, StateMachine};
use crate::corrupt;
use crate::keys;
use keyraft_core::encoding::Reader;
use keyraft_core::recovery::PendingRecovery;
use keyraft_core::tree::TreeProof;
use keyraft_core::{
    decode_canonical, Canonical, Digest, EpochHead, Index, Profile, PublicKey, Signature, SignedEntry, Update,
};
use keyraft_epoch::tree;
use keyraft_epoch::StateError;
use keyraft_storage::{prefix_successor, Direction, Storage};

/// The indexes updated in `epoch` with their entry hashes (the `e` keyspace), in index order.
pub(super) fn epoch_leaves(store: &dyn Storage, epoch: u64) -> Result<Vec<(Index, Digest)>, StateError> {
    let mut out = Vec::new();
    for item in store.scan_prefix(&keys::epoch_prefix(keys::EPOCH_UPDATES, epoch)) {
        let (key, value) = item?;
        let index: [u8; 32] =
            key.get(9..41).and_then(|k| k.try_into().ok()).ok_or_else(|| corrupt("epoch update key"))?;
        let hash: Digest = value.as_slice().try_into().map_err(|_| corrupt("epoch update entry hash"))?;
        out.push((Index(index), hash));
    }
    Ok(out)
}

impl<S: Storage> StateMachine<S> {
    /// The newest update for `index` and its epoch, including one staged in the open epoch.
    pub fn latest_update(&self, index: &Index) -> Result<Option<(u64, Update)>, StateError> {
        self.update_at(index, u64::MAX)
    }

    /// The newest update for `index` in an epoch at or before `epoch`.
    pub fn update_at(&self, index: &Index, epoch: u64) -> Result<Option<(u64, Update)>, StateError> {
        let Some((epoch, bytes)) = self.update_bytes_at(index, epoch)? else { return Ok(None) };
        let update = decode_canonical(&bytes).map_err(|e| corrupt(format!("stored update: {e}")))?;
        Ok(Some((epoch, update)))
    }

    /// [`update_at`](Self::update_at) as the stored canonical bytes, not decoded.
    pub fn update_bytes_at(&self, index: &Index, epoch: u64) -> Result<Option<(u64, Vec<u8>)>, StateError> {
        let prefix = keys::update_prefix(index);
        let end = if epoch == u64::MAX { prefix_successor(&prefix) } else { Some(keys::update(index, epoch + 1)) };
        let found = self.store.range(&prefix, end.as_deref(), Direction::Reverse).next().transpose()?;
        let Some((key, value)) = found else { return Ok(None) };
        let epoch = keys::be_u64(&key[33..]).ok_or_else(|| corrupt("update key"))?;
        Ok(Some((epoch, value)))
    }

    /// The recovery of `index` pending as of the close of `epoch` (protocol version 2), with
    /// the recovery's profile, if any.
    pub fn pending_recovery_at(
        &self,
        index: &Index,
        epoch: u64,
    ) -> Result<Option<(PendingRecovery, Profile)>, StateError> {
        let prefix = keys::index_key(keys::PENDING, index);
        let end = keys::pending(index, epoch.saturating_add(1));
        let found = self.store.range(&prefix, Some(&end), Direction::Reverse).next().transpose()?;
        let Some((_, value)) = found else { return Ok(None) };
        if value.is_empty() {
            return Ok(None);
        }
        let mut r = Reader::new(&value);
        let pending = PendingRecovery::decode_from(&mut r).map_err(|e| corrupt(format!("pending recovery: {e}")))?;
        // The profile is the rest of the record.
        let profile = decode_canonical(&value[value.len() - r.remaining()..])
            .map_err(|e| corrupt(format!("pending recovery profile: {e}")))?;
        Ok(Some((pending, profile)))
    }

    /// The epochs in `(after, upto]` in which the pending recovery of `index` changed (one was
    /// requested, vetoed, replaced or took effect), increasing. With the epochs of its updates,
    /// these are the epochs in which the identity's leaf changed.
    pub fn pending_change_epochs(&self, index: &Index, after: u64, upto: u64) -> Result<Vec<u64>, StateError> {
        if upto <= after {
            return Ok(Vec::new());
        }
        let start = keys::pending(index, after.saturating_add(1));
        let end = keys::pending(index, upto.saturating_add(1));
        let mut out = Vec::new();
        for item in self.store.range(&start, Some(&end), Direction::Forward) {
            let (key, _) = item?;
            out.push(keys::be_u64(&key[33..]).ok_or_else(|| corrupt("pending recovery key"))?);
        }
        Ok(out)
    }

    /// Updates of `index` in epochs before `before_epoch` (staged ones included), newest first,
    /// at most `limit` of them: an identity's history, one page at a time.
    pub fn update_history(
        &self,
        index: &Index,
        before_epoch: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Update)>, StateError> {
        let prefix = keys::update_prefix(index);
        let end = keys::update(index, before_epoch);
        let mut out = Vec::new();
        for item in self.store.range(&prefix, Some(&end), Direction::Reverse).take(limit) {
            let (key, value) = item?;
            let epoch = keys::be_u64(&key[33..]).ok_or_else(|| corrupt("update key"))?;
            let update = decode_canonical(&value).map_err(|e| corrupt(format!("stored update: {e}")))?;
            out.push((epoch, update));
        }
        Ok(out)
    }

    /// The head of `epoch`, if that epoch is closed.
    pub fn head(&self, epoch: u64) -> Result<Option<EpochHead>, StateError> {
        match self.store.get(&keys::head(epoch))? {
            None => Ok(None),
            Some(b) => EpochHead::from_bytes(&b).map(Some).map_err(|e| corrupt(format!("head {epoch}: {e}"))),
        }
    }

    /// Replica signatures stored for `epoch`, sorted by signer.
    pub fn replica_signatures(&self, epoch: u64) -> Result<Vec<(PublicKey, Signature)>, StateError> {
        self.signatures(keys::REPLICA_SIG, epoch)
    }

    /// Verifier ratifications stored for `epoch`, sorted by verifier.
    pub fn verifier_signatures(&self, epoch: u64) -> Result<Vec<(PublicKey, Signature)>, StateError> {
        self.signatures(keys::VERIFIER_SIG, epoch)
    }

    fn signatures(&self, space: u8, epoch: u64) -> Result<Vec<(PublicKey, Signature)>, StateError> {
        let mut out = Vec::new();
        // Every lookup answer carries these: take the signers' decoded keys from the realm
        // configuration rather than decompressing each (a square root, ~8 us) per answer.
        let config = self.config();
        let known = config.replica_keys.iter().chain(&config.verifier_keys);
        for item in self.store.scan_prefix(&keys::epoch_prefix(space, epoch)) {
            let (k, v) = item?;
            let bytes = &k[9..];
            let signer = match known.clone().find(|key| key.as_bytes().as_slice() == bytes) {
                Some(key) => *key,
                // A key of an earlier configuration.
                None => PublicKey::from_slice(bytes).map_err(|e| corrupt(format!("signer key: {e}")))?,
            };
            let signature = Signature::from_slice(&v).map_err(|e| corrupt(format!("signature: {e}")))?;
            out.push((signer, signature));
        }
        Ok(out)
    }

    /// The indexes updated in `epoch`, in index order (the order verifiers replay them in).
    pub fn epoch_indexes(&self, epoch: u64) -> Result<Vec<Index>, StateError> {
        Ok(epoch_leaves(&self.store, epoch)?.into_iter().map(|(index, _)| index).collect())
    }

    /// A keyserver-ratified epoch as the verifier log presents it: its updates in index order
    /// (signed entries, without profiles), then its head with a replica majority's
    /// signatures. `None` while the epoch has no majority (verifiers never see it before).
    ///
    /// The verifier log is the sequence of these, epoch after epoch; it is derived from the
    /// stored state rather than copied, so every replica serves identical positions.
    pub fn published_epoch(&self, epoch: u64) -> Result<Option<PublishedEpoch>, StateError> {
        let Some(p) = self.published_epoch_bytes(epoch)? else { return Ok(None) };
        let updates = p
            .updates
            .iter()
            .map(|bytes| decode_canonical::<SignedEntry>(bytes))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| corrupt(format!("stored update: {e}")))?;
        let recovery_requests = p.recovery_positions.iter().map(|&i| updates[i].entry.index).collect();
        Ok(Some(PublishedEpoch {
            updates,
            head: p.head,
            replica_signatures: p.replica_signatures,
            recovery_requests,
            config_change: p.config_change,
        }))
    }

    /// [`published_epoch`](Self::published_epoch) with each update as the canonical bytes of
    /// its signed entry, cut from the stored update without decoding it
    /// ([`Update::signed_entry_bytes`]): what the verifier stream sends.
    pub fn published_epoch_bytes(&self, epoch: u64) -> Result<Option<PublishedEpochBytes>, StateError> {
        if epoch == 0 || epoch > self.epoch_state.ratified_epoch {
            return Ok(None);
        }
        let head = self.head(epoch)?.ok_or_else(|| corrupt(format!("ratified epoch {epoch} has no head")))?;
        let mut updates = Vec::new();
        let mut recovery_positions = Vec::new();
        for index in self.epoch_indexes(epoch)? {
            match self.store.get(&keys::update(&index, epoch))? {
                Some(stored) => {
                    let signed =
                        Update::signed_entry_bytes(&stored).map_err(|e| corrupt(format!("stored update: {e}")))?;
                    updates.push(signed.to_vec());
                }
                // Not an update: a recovery request, whose record the epoch's close wrote.
                None => {
                    let (pending, _) = self
                        .pending_recovery_at(&index, epoch)?
                        .filter(|(p, _)| p.requested_epoch == epoch)
                        .ok_or_else(|| corrupt("epoch index without update or recovery request"))?;
                    recovery_positions.push(updates.len());
                    updates.push(pending.signed.encode());
                }
            }
        }
        if updates.len() as u64 != head.update_count {
            return Err(corrupt(format!(
                "epoch {epoch} lists {} updates, its head says {}",
                updates.len(),
                head.update_count
            )));
        }
        let mut replica_signatures = self.replica_signatures(epoch)?;
        replica_signatures.truncate(self.config_of_epoch(epoch).replica_majority());
        let config_change = self.config_changes().iter().find(|c| c.first_epoch == epoch).map(|c| c.change.clone());
        Ok(Some(PublishedEpochBytes { updates, head, replica_signatures, recovery_positions, config_change }))
    }

    /// The tree root as of `epoch`: from its head once retention pruned its tree (a verifier
    /// resuming there is still answered).
    pub fn root_at(&self, epoch: u64) -> Result<Digest, StateError> {
        if self.check_tree_kept(epoch).is_err() {
            if let Some(head) = self.head(epoch)? {
                return Ok(head.root);
            }
        }
        self.check_tree_kept(epoch)?;
        tree::root_at(&self.store, &self.pages, epoch)
    }

    /// The tree proof for `index` in the tree of `epoch`; [`StateError::Pruned`] if
    /// retention pruned it (reading it anyway would find no root page and prove an empty tree).
    pub fn tree_proof(&self, epoch: u64, index: &Index) -> Result<TreeProof, StateError> {
        self.check_tree_kept(epoch)?;
        tree::prove(&self.store, &self.pages, epoch, index)
    }
}
