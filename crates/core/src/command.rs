//! The commands of the replicated log, as the state machine applies them.

use crate::config_change::SignedConfigChange;
use crate::{PublicKey, Signature, Update};

/// A position in the Raft log. Raft's term and index are kept apart from keyraft's epochs and
/// versions: they only order log entries, and the state stores the last one it applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LogPosition {
    /// The Raft term of the entry.
    pub term: u64,
    /// The Raft log index of the entry.
    pub index: u64,
}

/// One command in the replicated log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A client's update, validated at the edge and re-checked by every replica.
    Update(Box<Update>),
    /// Closes the open epoch. Proposed by the leader's epoch proposer.
    EpochDelimiter {
        /// The epoch being closed (the last closed epoch plus one).
        epoch: u64,
        /// The leader's clock when it proposed the delimiter, in ms since the Unix epoch.
        timestamp_ms: u64,
    },
    /// A replica's signature over an epoch head.
    ReplicaSignature {
        /// The epoch signed.
        epoch: u64,
        /// The replica's key.
        signer: PublicKey,
        /// The signature over the head.
        signature: Signature,
    },
    /// A third-party verifier's ratification of an epoch head.
    VerifierSignature {
        /// The epoch ratified.
        epoch: u64,
        /// The verifier's key.
        verifier: PublicKey,
        /// The signature over the head.
        signature: Signature,
    },
    /// A recovery request (protocol version 2, docs/protocol.md section 6.3): an update signed
    /// by its new policy only, whose registration proof the edge checked. It becomes the entry
    /// after the realm's veto window unless an ordinary update cancels it first.
    RecoveryRequest(Box<Update>),
    /// A realm configuration change signed by a majority of the configuration in force's
    /// replicas (protocol version 2). In force from the epoch after the one open when it is
    /// applied: that epoch's head is the first to commit to the new configuration.
    ConfigChange(Box<SignedConfigChange>),
}
