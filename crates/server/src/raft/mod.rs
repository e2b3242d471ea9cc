//! The openraft adapters: types, the log store, the state-machine store and the network.
//! Every openraft type stays inside this module, so moving to openraft 0.10 stays local.

pub mod log_store;
pub mod network;
pub mod sm_store;
pub mod types;

use keyraft_storage::StorageError;
use openraft::{ErrorSubject, ErrorVerb, StorageIOError};

/// Wraps our storage error for openraft.
pub(crate) fn io_err(
    subject: ErrorSubject<types::NodeId>,
    verb: ErrorVerb,
    e: impl std::fmt::Display,
) -> types::RaftStorageError {
    StorageIOError::new(subject, verb, openraft::AnyError::error(e.to_string())).into()
}

pub(crate) fn postcard_err(e: postcard::Error) -> StorageError {
    StorageError::Corrupt { what: format!("undecodable raft record: {e}") }
}
