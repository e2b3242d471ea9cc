//! The next head in the chain: the one rule by which a replica closes an epoch and a verifier
//! recomputes it. Both call [`close_epoch`]; if they computed the head apart, a difference
//! of one byte would make every verifier halt on the first epoch.

use crate::error::StateError;
use crate::tree;
use keyraft_core::{Digest, EpochHead, Index, RealmConfig};
use keyraft_storage::{Batch, Storage};

/// The end of the head chain an epoch is appended to: what the next head commits to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChainTip {
    /// The last closed epoch (0 before the first).
    pub epoch: u64,
    /// Its head's hash (zero before the first).
    pub head_hash: Digest,
    /// Its head's issue time (0 before the first).
    pub issue_time_ms: u64,
}

impl ChainTip {
    /// The tip after `head`.
    pub fn of(head: &EpochHead) -> Self {
        Self { epoch: head.epoch, head_hash: head.hash(), issue_time_ms: head.issue_time_ms }
    }

    /// The epoch the next head closes.
    pub fn next_epoch(&self) -> u64 {
        self.epoch + 1
    }
}

/// The head that follows `tip` for a tree of root `root` holding `update_count` new updates,
/// stamped `proposed_time_ms` by the leader.
///
/// The leader's clock is no one's to check, but heads never go back in time: a new leader
/// whose clock lags the old one's issues the previous head's time again.
pub fn next_head(
    config: &RealmConfig,
    tip: &ChainTip,
    root: Digest,
    proposed_time_ms: u64,
    update_count: u64,
) -> EpochHead {
    EpochHead {
        realm: config.realm.clone(),
        epoch: tip.next_epoch(),
        root,
        previous_head_hash: tip.head_hash,
        issue_time_ms: next_issue_time_ms(tip, proposed_time_ms),
        update_count,
        config_hash: config.hash(),
    }
}

/// The issue time of the head after `tip` when the leader proposed `proposed_time_ms`: never
/// before the previous head's. Recovery windows are counted in these times, so the step
/// computes them before the tree (a pending recovery's leaf commits to its effective time).
pub fn next_issue_time_ms(tip: &ChainTip, proposed_time_ms: u64) -> u64 {
    proposed_time_ms.max(tip.issue_time_ms)
}

/// An epoch closed: its head, and the tree pages it wrote (for the page cache, once the batch
/// is written).
#[derive(Debug)]
pub struct ClosedEpoch {
    /// The new head.
    pub head: EpochHead,
    /// The page versions written into the batch.
    pub written: tree::WrittenPages,
}

/// Closes the epoch after `tip`: applies `leaves` (the epoch's updated indexes and entry
/// hashes, sorted, distinct) to the tree of `tip.epoch`, writing the new pages into `batch`,
/// and returns the [`next_head`] over the new root.
pub fn close_epoch(
    store: &dyn Storage,
    pages: &tree::PageCache,
    config: &RealmConfig,
    tip: &ChainTip,
    leaves: &[(Index, Digest)],
    proposed_time_ms: u64,
    batch: &mut Batch,
) -> Result<ClosedEpoch, StateError> {
    close_epoch_counted(store, pages, config, tip, leaves, proposed_time_ms, leaves.len() as u64, batch)
}

/// [`close_epoch`] for an epoch whose head counts `update_count` updates, which under protocol
/// version 2 may differ from the leaves it changes: a recovery that takes effect changes a
/// leaf without an update of the epoch (docs/protocol.md section 6.3).
#[allow(clippy::too_many_arguments)]
pub fn close_epoch_counted(
    store: &dyn Storage,
    pages: &tree::PageCache,
    config: &RealmConfig,
    tip: &ChainTip,
    leaves: &[(Index, Digest)],
    proposed_time_ms: u64,
    update_count: u64,
    batch: &mut Batch,
) -> Result<ClosedEpoch, StateError> {
    let epoch = tip.next_epoch();
    let previous = (tip.epoch > 0).then_some(tip.epoch);
    let (root, written) = tree::apply_epoch(store, pages, previous, epoch, leaves, batch)?;
    let head = next_head(config, tip, root, proposed_time_ms, update_count);
    Ok(ClosedEpoch { head, written })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_chain_and_never_go_back_in_time() {
        let config = crate::testing::realm_config("chain.example");
        let first = next_head(&config, &ChainTip::default(), [1; 32], 5_000, 2);
        assert_eq!((first.epoch, first.previous_head_hash, first.issue_time_ms), (1, [0; 32], 5_000));
        let second = next_head(&config, &ChainTip::of(&first), [2; 32], 4_000, 0);
        assert_eq!(second.epoch, 2);
        assert_eq!(second.previous_head_hash, first.hash());
        assert_eq!(second.issue_time_ms, 5_000, "a lagging leader's clock does not move the chain back");
        assert_eq!(second.config_hash, config.hash());
    }
}
