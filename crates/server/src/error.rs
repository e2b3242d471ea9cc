//! Errors of a replica process, by whose fault they are.

use keyraft_state::StateError;
use keyraft_storage::StorageError;

/// Why a replica could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operator's configuration is wrong: the message says what to fix.
    #[error("configuration error: {0}")]
    Config(String),
    /// A file could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The local storage failed or holds data this build cannot use.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The state machine refused to open or apply.
    #[error(transparent)]
    State(#[from] StateError),
    /// A snapshot file is unusable.
    #[error("snapshot: {0}")]
    Snapshot(String),
    /// Raft failed fatally (a storage error underneath, or shutdown).
    #[error("raft: {0}")]
    Raft(String),
    /// A listener could not be started.
    #[error("network: {0}")]
    Network(String),
}

impl Error {
    /// An IO error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }
}
