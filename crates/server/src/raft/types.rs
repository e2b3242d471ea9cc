//! The openraft type configuration and the values it carries.
//!
//! A log entry's application data is a batch of keyraft log commands, each the canonical
//! `keyraft.v1.LogEntry` protobuf ([`keyraft_proto::convert::encode_log_entry`]) kept as bytes:
//! the proposer encodes a command once and every replica decodes exactly those bytes, so what
//! is replicated is what is specified in `proto/keyraft/v1/log.proto`. Commands proposed
//! concurrently share one Raft entry (see [`crate::node`]): openraft 0.9 flushes a leader's
//! log once per entry, so one entry per update would cap throughput at one flush per update.

use keyraft_state::Outcome;
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

/// What applying one command did, returned to its proposer (through the network, postcard
/// encoded, when a follower forwarded it). [`crate::outcome`] turns it into the proposer's
/// answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyResponse {
    /// A Raft-internal entry (blank or membership).
    Internal,
    /// The state machine applied the command (which may still have refused it: see
    /// [`Outcome`]).
    Applied(Outcome),
    /// The command never reached the state machine.
    Refused(CommandRefused),
}

/// Why a log command never reached the state machine. Both are bugs or corruption: a proposer
/// only proposes commands it encoded itself, one batch at a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CommandRefused {
    /// The entry holds more commands than positions are numbered for.
    #[error("more than {max} commands in one log entry")]
    TooManyCommands {
        /// Commands per entry, at most.
        max: u64,
    },
    /// The command's bytes are not a `LogEntry`.
    #[error("undecodable log command: {message}")]
    Undecodable {
        /// The decoder's complaint.
        message: String,
    },
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
        SnapshotData = super::snapshot_data::SnapshotData,
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
