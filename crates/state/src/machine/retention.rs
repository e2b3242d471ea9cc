//! Retention: keeping only the trees of recent epochs.
//!
//! Every epoch writes new versions of the tree pages it changes and, by default, every version
//! stays, so that any past epoch can be proven. A replica configured to keep the trees of its
//! newest `n` epochs prunes the rest every so often:
//!
//! 1. [`plan_prune`] walks the tree of the new horizon and lists the page versions of earlier
//!    epochs that no tree from the horizon on reaches (`keyraft_epoch::tree::garbage_before`).
//!    It only reads, from trees no step writes again, so it runs beside apply and lookups.
//! 2. [`StateMachine::begin_prune`] records the horizon (`mtrees-from`) and from then on
//!    refuses reads of the trees before it ([`StateError::Pruned`]), before anything is gone
//!    (in memory at once; on disk ahead of every deletion, batches being durable in order).
//! 3. [`delete_pruned`] deletes the listed keys, in batches.
//!
//! Only trees are pruned: heads, signatures, updates and the verifier log stay, so verifiers
//! still replay the realm from its first epoch, and lookups and histories are refused only
//! where they need a pruned tree. Retention is each replica's own choice and never affects
//! the step function, which does not read `mtrees-from` and never reads a tree older than the
//! last closed epoch's: replicas with different settings apply the log identically and differ
//! only in which old trees they still hold. A crash between the steps leaves garbage that the
//! next pruning finds again; it never leaves a kept tree damaged, because what is deleted is
//! decided by the tree of the horizon, which is never deleted.

use super::StateMachine;
use crate::keys;
use keyraft_epoch::tree::{self, Garbage};
use keyraft_epoch::StateError;
use keyraft_storage::{Batch, Key, Storage};

/// Keys deleted per storage batch: sled's memory grows with the size of its batches.
pub const PRUNE_BATCH_KEYS_MAX: usize = 2_000;

/// What retention deletes below `horizon` (step 1). `horizon` must be an epoch whose tree is
/// stored.
pub fn plan_prune(store: &dyn Storage, horizon: u64) -> Result<Garbage, StateError> {
    tree::garbage_before(store, horizon)
}

pub(super) fn read_trees_from(store: &dyn Storage) -> Result<u64, StateError> {
    match store.get(keys::META_TREES_FROM)? {
        None => Ok(0),
        Some(b) => keys::be_u64(&b).ok_or_else(|| crate::corrupt("mtrees-from is not 8 bytes")),
    }
}

impl<S: Storage> StateMachine<S> {
    /// The oldest epoch whose tree this store keeps (0 or 1: all of them).
    pub fn trees_from(&self) -> u64 {
        self.trees_from
    }

    /// Refuses a read of the tree of `epoch` if retention pruned it.
    pub(super) fn check_tree_kept(&self, epoch: u64) -> Result<(), StateError> {
        if epoch < self.trees_from {
            return Err(StateError::Pruned { epoch, oldest: self.trees_from });
        }
        Ok(())
    }

    /// The horizon that keeping the trees of the newest `epochs_kept` closed epochs asks
    /// for, if it is past the current one by at least `step` epochs.
    pub fn retention_horizon(&self, epochs_kept: u64, step: u64) -> Option<u64> {
        let last = self.epoch_state.last_epoch;
        let horizon = last.checked_sub(epochs_kept.max(1))? + 1;
        (horizon >= self.trees_from.max(1).saturating_add(step.max(1))).then_some(horizon)
    }

    /// Records that the trees before `horizon` are no longer kept (step 2): reads of them are
    /// refused from now on. A horizon at or below the current one changes nothing.
    ///
    /// No flush is needed before the deletions: a store loses only a suffix of whole batches
    /// in a crash (the `Storage` contract), so no deletion is durable without this record, and
    /// no restart serves a tree whose pages are gone. (Callers hold a lock that stalls reads:
    /// a flush there would stall them for its duration.)
    pub fn begin_prune(&mut self, horizon: u64) -> Result<(), StateError> {
        assert!(horizon <= self.epoch_state.last_epoch, "the tree of the horizon itself is kept");
        if horizon <= self.trees_from {
            return Ok(());
        }
        let mut batch = Batch::new();
        batch.put(keys::META_TREES_FROM, horizon.to_be_bytes().to_vec());
        self.store.write(batch)?;
        self.trees_from = horizon;
        Ok(())
    }
}

/// Deletes `keys` from `store` (step 3): what [`plan_prune`] listed below a horizon already
/// passed to [`StateMachine::begin_prune`]. Needs no lock: no reader or step touches them any
/// more. The space comes back once `store` is flushed.
pub fn delete_pruned(store: &dyn Storage, keys: &[Key]) -> Result<(), StateError> {
    for chunk in keys.chunks(PRUNE_BATCH_KEYS_MAX) {
        let mut batch = Batch::new();
        for key in chunk {
            assert!(key.first() == Some(&keyraft_epoch::keys::TREE), "retention deletes tree keys only");
            batch.delete(key.clone());
        }
        store.write(batch)?;
    }
    Ok(())
}
