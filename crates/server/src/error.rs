//! Errors of a replica process, by whose fault they are.

use keyraft_state::StateError;
use keyraft_storage::StorageError;
use std::path::{Path, PathBuf};

/// The error underneath, kept so that a reader (or `{:#}`) sees the whole chain.
pub(crate) type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a replica could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operator's configuration is wrong: `what` says what to fix, `source` what was
    /// found wrong with it (a parse error, a bad key file...).
    #[error("configuration error: {what}")]
    Config {
        /// The setting or file at fault, and what to fix.
        what: String,
        /// What was wrong with it, when another error says so.
        #[source]
        source: Option<Cause>,
    },
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
    /// A snapshot file is unusable: it came from a peer, or from this replica's disk, and is
    /// truncated, corrupt or over a bound.
    #[error("snapshot {}: {problem}", file.display())]
    Snapshot {
        /// The snapshot file (or `current.json`).
        file: PathBuf,
        /// What is wrong with it.
        problem: String,
        /// The error underneath, if any.
        #[source]
        source: Option<Cause>,
    },
    /// Raft could not start: its log or state storage failed underneath (this replica's disk).
    #[error("raft could not start (this replica's storage failed underneath)")]
    Raft(#[source] Box<openraft::error::Fatal<crate::raft::types::NodeId>>),
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
    /// A listener could not be started: the configured address is in use or not this host's
    /// (the operator's to fix).
    #[error("network: binding the {listener} listener {addr} (check that the address is this host's and free)")]
    Network {
        /// Which listener: "public" or "peer".
        listener: &'static str,
        /// The configured address.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// An IO error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }

    /// The operator's configuration is wrong, with nothing underneath.
    pub fn config(what: impl Into<String>) -> Self {
        Self::Config { what: what.into(), source: None }
    }

    /// The operator's configuration is wrong, as `source` says.
    pub fn config_because(what: impl Into<String>, source: impl Into<Cause>) -> Self {
        Self::Config { what: what.into(), source: Some(source.into()) }
    }

    /// The snapshot `file` is unusable, as `problem` says.
    pub(crate) fn snapshot(file: &Path, problem: String) -> Self {
        Self::Snapshot { file: file.to_owned(), problem, source: None }
    }
}
