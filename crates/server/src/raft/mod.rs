//! The openraft adapters: types, the log store, the state-machine store and the network.
//! Every openraft type stays inside this module, so moving to openraft 0.10 stays local.

pub mod log_store;
pub mod network;
pub mod runtime;
pub mod sm_store;
pub mod snapshot_data;
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

/// Completes once the Raft core has stopped on its own (a storage error such as a full disk,
/// a panic), with the reason; never while it runs.
pub async fn core_stopped(raft: &types::Raft) -> String {
    let mut metrics = raft.metrics();
    loop {
        if let Err(fatal) = &metrics.borrow_and_update().running_state {
            return fatal.to_string();
        }
        if metrics.changed().await.is_err() {
            // The sender is dropped when the core's task ends, a panic included.
            return match &metrics.borrow().running_state {
                Err(fatal) => fatal.to_string(),
                Ok(()) => "the Raft core's task ended".into(),
            };
        }
    }
}

pub(crate) fn postcard_err(e: postcard::Error) -> StorageError {
    StorageError::Corrupt { what: format!("undecodable raft record: {e}") }
}
