//! Errors of a replica process, by whose fault they are.

use keyraft_state::StateError;
use keyraft_storage::StorageError;
use std::path::PathBuf;

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
    /// The data directory cannot be used (read-only, missing permissions, unreadable stores).
    #[error("data directory {}: {message}", path.display())]
    DataDir {
        /// The directory (or the store inside it).
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// Raft stopped on its own while the replica ran, most often because its storage failed
    /// (a full disk). The replica stops serving: a supervisor restarts it once the cause is
    /// fixed, and it recovers from its log.
    #[error(
        "the Raft core stopped: {cause}; this replica stopped serving (data directory {}: free space \
         or fix the disk there, then restart it)",
        data_dir.display()
    )]
    RaftStopped {
        /// Why Raft stopped.
        cause: String,
        /// The replica's data directory.
        data_dir: PathBuf,
    },
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
