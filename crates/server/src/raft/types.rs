//! The openraft type configuration and the values it carries.
//!
//! A log entry's application data is the canonical `keyraft.v1.LogEntry` protobuf
//! ([`keyraft_proto::convert::encode_log_entry`]), kept as bytes: the leader encodes a command
//! once and every replica decodes exactly those bytes, so what is replicated is what is
//! specified in `proto/keyraft/v1/log.proto`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// One command of the keyraft log, as its canonical `LogEntry` bytes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogCommand(pub Vec<u8>);

impl fmt::Debug for LogCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LogCommand({} bytes)", self.0.len())
    }
}

/// What applying one entry did, returned to the proposer of that entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyResponse {
    /// A Raft-internal entry (blank or membership).
    Internal,
    /// The entry was at or before the applied position (replayed after a restart).
    AlreadyApplied,
    /// The update was staged into `epoch`.
    UpdateAccepted {
        /// Update id.
        id: [u8; 32],
        /// The epoch it lands in.
        epoch: u64,
    },
    /// The same update was applied before.
    UpdateDuplicate {
        /// Update id.
        id: [u8; 32],
        /// The epoch it appears in.
        epoch: u64,
    },
    /// The update broke a rule that depends on the state.
    UpdateRejected {
        /// Update id.
        id: [u8; 32],
        /// Why, for humans.
        reason: String,
        /// Whether resubmitting later may succeed.
        retryable: bool,
    },
    /// The open epoch was closed.
    EpochClosed {
        /// The closed epoch.
        epoch: u64,
    },
    /// A replica or verifier signature was stored.
    SignatureStored {
        /// The epoch signed.
        epoch: u64,
    },
    /// A well-formed entry that did not apply (stale, duplicate, premature).
    Ignored(String),
    /// An entry refused as invalid (bad signature, unknown signer, undecodable).
    Refused(String),
}

/// How peers and clients reach a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    /// host:port of the peer listener (Raft and admin).
    pub peer_addr: String,
    /// host:port of the public listener (clients and verifiers).
    pub public_addr: String,
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer={} public={}", self.peer_addr, self.public_addr)
    }
}

/// Raft node ids; distinct from the realm's replica keys (a node that is wiped and re-added
/// gets a new id but may keep its replica key).
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The keyraft Raft type configuration.
    pub TypeConfig:
        D = LogCommand,
        R = ApplyResponse,
        NodeId = NodeId,
        Node = NodeAddr,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log id.
pub type LogId = openraft::LogId<NodeId>;
/// A stored membership.
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeAddr>;
/// openraft's storage error.
pub type RaftStorageError = openraft::StorageError<NodeId>;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
