//! What a third-party verifier recomputes: every published epoch's updates re-checked against
//! the entries they replace, the tree rebuilt, and the head recomputed byte for byte.
//!
//! A verifier sees no profiles and no user ids, only signed entries; it checks exactly the
//! rules that do not need them (versions, both policies, signatures, one update per index per
//! epoch) and that the replicas' head commits to the tree it rebuilt, chained to the previous
//! head. Any difference is a [`Mismatch`], with what was expected and what was received, for
//! evidence; a verifier signs only heads that passed ([`CheckedEpoch`]).
//!
//! Keyspaces (a verifier's own store): `t` the tree (as replicas store it), `c || index` the
//! current entry of each index, `mverifier` the last checked epoch.

use crate::error::{corrupt, StateError};
use crate::tree;
use keyraft_core::update::check_signed_entry;
use keyraft_core::{
    decode_canonical, Canonical, Digest, Entry, EpochHead, Index, RealmConfig, SignedEntry, UpdateRejection,
};
use keyraft_storage::{check_format_version, Batch, Storage};

const CURRENT: u8 = b'c';
const META: &[u8] = b"mverifier";
const META_CONFIG: &[u8] = b"mconfig";
/// The on-disk format of a verifier's store.
pub const VERIFIER_FORMAT_VERSION: u32 = 1;

fn current_key(index: &Index) -> Vec<u8> {
    let mut k = Vec::with_capacity(33);
    k.push(CURRENT);
    k.extend_from_slice(&index.0);
    k
}

/// Why a published epoch was not ratified. Each variant carries what is needed to show the
/// fault to anyone offline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    /// Epochs must arrive in order, each once.
    #[error("expected epoch {expected}, received epoch {got}")]
    OutOfOrder {
        /// The next epoch this verifier needs.
        expected: u64,
        /// What arrived.
        got: u64,
    },
    /// The epoch's updates are not in strictly increasing index order (two updates of one
    /// identity in one epoch, or a reordered stream).
    #[error("updates of epoch {epoch} are not in strictly increasing index order at position {position}")]
    UnorderedUpdates {
        /// The epoch.
        epoch: u64,
        /// Where the order breaks.
        position: usize,
    },
    /// An update the replicas applied breaks the update rules.
    #[error("epoch {epoch}: the update of index {index} breaks the rules: {reason}")]
    UnauthorizedUpdate {
        /// The epoch.
        epoch: u64,
        /// The index (hex).
        index: String,
        /// The rule broken.
        reason: UpdateRejection,
    },
    /// The head differs from the one recomputed.
    #[error("epoch {epoch}: the received head differs from the recomputed one")]
    HeadDiffers {
        /// The epoch.
        epoch: u64,
        /// The head this verifier computed.
        expected: Box<EpochHead>,
        /// The head received.
        got: Box<EpochHead>,
    },
}

/// A verifier's view of the realm.
#[derive(Debug)]
pub struct VerifierState<S> {
    store: S,
    config: RealmConfig,
    config_hash: Digest,
    pages: tree::PageCache,
    last: Option<EpochHead>,
}

/// An epoch that passed every check, ready to be committed and signed.
#[derive(Debug)]
pub struct CheckedEpoch {
    head: EpochHead,
    batch: Batch,
    written: tree::WrittenPages,
}

impl CheckedEpoch {
    /// The head that was recomputed and matched.
    pub fn head(&self) -> &EpochHead {
        &self.head
    }
}

impl<S: Storage> VerifierState<S> {
    /// Opens (or creates) a verifier's state for `config`.
    pub fn open(store: S, config: RealmConfig) -> Result<Self, StateError> {
        check_format_version(&store, VERIFIER_FORMAT_VERSION, &[])?;
        match store.get(META_CONFIG)? {
            None => {
                let mut b = Batch::new();
                b.put(META_CONFIG, config.encode());
                store.write(b)?;
            }
            Some(stored) if stored == config.encode() => {}
            Some(_) => return Err(StateError::ConfigMismatch("the verifier's store belongs to another realm".into())),
        }
        let last = match store.get(META)? {
            None => None,
            Some(b) => Some(EpochHead::from_bytes(&b).map_err(|e| corrupt(format!("verifier head: {e}")))?),
        };
        let config_hash = config.hash();
        Ok(Self { store, config, config_hash, pages: tree::PageCache::default(), last })
    }

    /// The last epoch checked and committed (0 before the first).
    pub fn last_epoch(&self) -> u64 {
        self.last.as_ref().map_or(0, |h| h.epoch)
    }

    /// The last committed head, if any.
    pub fn last_head(&self) -> Option<&EpochHead> {
        self.last.as_ref()
    }

    /// The store underneath.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Re-checks `epoch`'s updates and recomputes its head; compares it with `head`.
    pub fn check_epoch(&self, updates: &[SignedEntry], head: &EpochHead) -> Result<CheckedEpoch, VerifyFailure> {
        let epoch = self.last_epoch() + 1;
        if head.epoch != epoch {
            return Err(Mismatch::OutOfOrder { expected: epoch, got: head.epoch }.into());
        }
        let mut batch = Batch::new();
        let mut leaves = Vec::with_capacity(updates.len());
        let mut current = Vec::with_capacity(updates.len());
        for (position, update) in updates.iter().enumerate() {
            let index = update.entry.index;
            if position > 0 && updates[position - 1].entry.index >= index {
                return Err(Mismatch::UnorderedUpdates { epoch, position }.into());
            }
            current.push(match self.store.get(&current_key(&index)).map_err(StateError::from)? {
                None => None,
                Some(b) => Some(decode_canonical::<Entry>(&b).map_err(|e| corrupt(format!("verifier entry: {e}")))?),
            });
        }
        // Signatures dominate catch-up and are independent: check them on every core.
        let checked = crate::parallel::try_map(updates, |position, update| {
            check_signed_entry(&self.config.realm, current[position].as_ref(), update)
        });
        if let Err((position, reason)) = checked {
            let index = hex::encode(updates[position].entry.index.0);
            return Err(Mismatch::UnauthorizedUpdate { epoch, index, reason }.into());
        }
        for update in updates {
            batch.put(current_key(&update.entry.index), update.entry.encode());
            leaves.push((update.entry.index, update.entry.hash()));
        }
        let previous = self.last.as_ref().map(|h| h.epoch);
        let (root, written) = tree::apply_epoch(&self.store, &self.pages, previous, epoch, &leaves, &mut batch)?;
        let last_time = self.last.as_ref().map_or(0, |h| h.issue_time_ms);
        let expected = EpochHead {
            realm: self.config.realm.clone(),
            epoch,
            root,
            previous_head_hash: self.last.as_ref().map_or([0; 32], EpochHead::hash),
            // The leader's clock is not ours to check, but heads never go back in time.
            issue_time_ms: head.issue_time_ms.max(last_time),
            update_count: updates.len() as u64,
            config_hash: self.config_hash,
        };
        if expected != *head {
            return Err(
                Mismatch::HeadDiffers { epoch, expected: Box::new(expected), got: Box::new(head.clone()) }.into()
            );
        }
        batch.put(META, head.encode());
        Ok(CheckedEpoch { head: expected, batch, written })
    }

    /// Commits a checked epoch (not yet durable: flush the store).
    pub fn commit(&mut self, checked: CheckedEpoch) -> Result<(), StateError> {
        assert_eq!(checked.head.epoch, self.last_epoch() + 1, "checked epochs are committed in order");
        if let Err(e) = self.store.write(checked.batch) {
            self.pages.clear();
            return Err(e.into());
        }
        self.pages.commit(checked.written);
        self.last = Some(checked.head);
        Ok(())
    }
}

/// Why an epoch could not be checked: the realm misbehaved, or this verifier's storage failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyFailure {
    /// The realm published something wrong: evidence, do not sign.
    #[error(transparent)]
    Mismatch(#[from] Mismatch),
    /// Local storage failed: stop, and retry after repair.
    #[error(transparent)]
    State(#[from] StateError),
}
