//! Errors of the state machine. None of them is caused by a client: bad client or peer input
//! becomes an [`Outcome`](crate::Outcome) that says why it was refused. These mean the
//! replica's own storage failed or holds bytes it cannot read, and the replica must stop.

use keyraft_storage::StorageError;
use thiserror::Error;

/// A failure of this replica's storage; the replica cannot continue applying the log.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StateError {
    /// The storage engine failed.
    #[error("storage failed: {0}")]
    Storage(#[from] StorageError),
    /// Stored bytes do not decode: the data directory is damaged or was written by a bug.
    #[error("stored state is corrupt: {0}")]
    Corrupt(String),
    /// The data directory belongs to another realm or configuration.
    #[error("the data directory holds state for another realm configuration ({0}); refusing to open it")]
    ConfigMismatch(String),
}

pub(crate) fn corrupt(what: impl std::fmt::Display) -> StateError {
    StateError::Corrupt(what.to_string())
}
