//! Errors of a store that holds epochs (a replica's state, a verifier's store). None of them is
//! caused by a client or a peer: bad input becomes an outcome or a mismatch that says why it
//! was refused. These mean this process's own storage failed or holds what it cannot accept,
//! and the process must stop, except [`StateError::Pruned`]: a read of what retention deleted.

use keyraft_storage::StorageError;
use thiserror::Error;

/// A failure of this process's storage; it cannot continue applying or checking epochs.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StateError {
    /// The storage engine failed.
    #[error("storage failed: {0}")]
    Storage(#[from] StorageError),
    /// Stored bytes do not decode: the data directory is damaged or was written by a bug.
    #[error("stored state is corrupt: {0}")]
    Corrupt(String),
    /// The stored state contradicts itself about an epoch (a committed entry met a state no
    /// correct replica can reach): this replica's storage or code is at fault, not the log,
    /// so this replica stops instead of applying the entry; the others are unaffected unless
    /// their state is damaged the same way.
    #[error("stored state is inconsistent at epoch {epoch}: {what}; this replica stops (its data directory or its build is at fault, not the log)")]
    Inconsistent {
        /// The epoch the inconsistency is about.
        epoch: u64,
        /// What contradicts what.
        what: String,
    },
    /// The tree of `epoch` is no longer stored: this replica keeps only the trees from
    /// `oldest` on (its retention setting). Not a failure: the caller asked for what this
    /// replica chose not to keep; a replica without retention has it.
    #[error(
        "the tree of epoch {epoch} is not kept: this replica's retention keeps the trees from epoch {oldest} on; ask for a newer epoch, or a replica that keeps more"
    )]
    Pruned {
        /// The epoch asked for.
        epoch: u64,
        /// The oldest epoch whose tree is kept.
        oldest: u64,
    },
    /// The data directory belongs to another realm or configuration.
    #[error("the data directory holds state for another realm configuration ({0}); refusing to open it")]
    ConfigMismatch(String),
}

impl StateError {
    /// Stored bytes that do not decode, described.
    pub fn corrupt(what: impl std::fmt::Display) -> Self {
        Self::Corrupt(what.to_string())
    }
}

pub(crate) fn corrupt(what: impl std::fmt::Display) -> StateError {
    StateError::corrupt(what)
}
