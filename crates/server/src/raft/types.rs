//! The openraft type configuration and the values it carries.
//!
//! A log entry's application data is a batch of keyraft log commands, each the canonical
//! `keyraft.v1.LogEntry` protobuf ([`keyraft_proto::convert::encode_log_entry`]) kept as bytes:
//! the proposer encodes a command once and every replica decodes exactly those bytes, so what
//! is replicated is what is specified in `proto/keyraft/v1/log.proto`. Commands proposed
//! concurrently share one Raft entry (see [`crate::node`]): openraft 0.9 flushes a leader's
//! log once per entry, so one entry per update would cap throughput at one flush per update.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Commands of the keyraft log, applied in order, each as its canonical `LogEntry` bytes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogCommands(pub Vec<Vec<u8>>);

impl fmt::Debug for LogCommands {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LogCommands({} commands)", self.0.len())
    }
}

/// What applying one Raft entry did: one response per command (one `Internal` for a Raft
/// entry without commands).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResponses(pub Vec<ApplyResponse>);

/// Commands in one Raft entry, at most; the state machine numbers a command
/// `raft_index * COMMANDS_PER_ENTRY_MAX + position` so that replay skips exactly what was
/// applied.
pub const COMMANDS_PER_ENTRY_MAX: u64 = 1024;

/// What applying one command did, returned to its proposer.
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
        D = LogCommands,
        R = ApplyResponses,
        NodeId = NodeId,
        Node = NodeAddr,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = super::runtime::SeedableRuntime,
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
