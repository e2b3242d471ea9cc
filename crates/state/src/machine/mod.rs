//! The deterministic step function.
//!
//! `step(state, position, command)` reads the stored state, decides, and returns the atomic
//! batch that moves the state forward plus the effects to run once that batch is durable
//! (deferred IO). It reads no clock, no randomness and no network: time comes from the
//! epoch delimiter, written by the leader into the log, so every replica that applies the same
//! log reaches byte-identical storage.
//!
//! Invariants the step relies on and keeps:
//! - the applied log position is written in the same batch as the state it produced, so a
//!   replica that crashes replays exactly the entries it had not made durable;
//! - epochs close in order (`epoch == last_epoch + 1`) and only after the previous epoch is
//!   keyserver-ratified, so ratification happens in epoch order too;
//! - at most one update per index is staged in the open epoch.
//!
//! The module is split along its jobs:
//! - this file: the types a step produces and the state it runs over, and opening that state;
//! - `step`: the step function, one decision per command kind;
//! - `commit`: writing steps, at once or deferred into one later batch;
//! - `queries`: read accessors over the stored state (updates, heads, signatures, proofs);
//! - `retention`: pruning the trees of old epochs (a replica's own setting, outside the step);
//! - `codec`: the byte layout of the persisted epoch state and log position.

mod codec;
mod commit;
mod configs;
mod queries;
pub mod retention;
mod step;

pub use self::configs::AppliedChange;
use self::configs::{ConfigHistory, ConfigUpdate};
use self::queries::epoch_leaves;
use crate::corrupt;
use crate::keys;
use keyraft_core::ed25519::VerifiedSignatures;
use keyraft_core::LogPosition;
use keyraft_core::{
    ConfigChangeError, Digest, EpochHead, Index, PublicKey, RealmConfig, Signature, SignedConfigChange, UpdateRejection,
};
use keyraft_epoch::tree;
use keyraft_epoch::StateError;
use keyraft_storage::{check_format_version, Batch, Storage};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The on-disk format this build writes; bump it (with a migration) whenever a keyspace's
/// layout changes.
pub const STATE_FORMAT_VERSION: u32 = 1;

/// What the persisted state says about epochs; everything the proposers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EpochState {
    /// The last closed epoch (0 before the first delimiter).
    pub last_epoch: u64,
    /// Issue time of the last closed epoch's head.
    pub last_issue_time_ms: u64,
    /// Hash of the last head (zero before the first).
    pub last_head_hash: Digest,
    /// The newest keyserver-ratified epoch (0 if none).
    pub ratified_epoch: u64,
    /// Updates staged in the open epoch.
    pub pending_updates: u64,
}

impl EpochState {
    /// The epoch that updates applied now land in.
    pub fn open_epoch(&self) -> u64 {
        self.last_epoch + 1
    }

    /// Whether the last closed epoch has a replica majority (or no epoch was closed yet).
    pub fn last_epoch_ratified(&self) -> bool {
        self.ratified_epoch == self.last_epoch
    }
}

/// What applying one command did. It travels back to the command's proposer, also across the
/// network when a follower forwarded the command (hence serde), and is mapped to the client's
/// answer in one place in the server.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Outcome {
    /// The entry was at or before the applied position: already applied, nothing changed.
    AlreadyApplied,
    /// The update was staged into `epoch`.
    UpdateAccepted {
        /// The update's identifier.
        id: Digest,
        /// The epoch it will appear in.
        epoch: u64,
    },
    /// This exact update was applied before (or is already staged): nothing changed.
    UpdateDuplicate {
        /// The update's identifier.
        id: Digest,
        /// The epoch it appears (or will appear) in.
        epoch: u64,
    },
    /// The update breaks a rule.
    UpdateRejected {
        /// The update's identifier.
        id: Digest,
        /// Why.
        reason: UpdateRejection,
    },
    /// The open epoch was closed with this head.
    EpochClosed(EpochHead),
    /// A replica signature was stored; `ratified` if it completed the majority.
    ReplicaSignatureStored {
        /// The epoch signed.
        epoch: u64,
        /// Whether this signature made the epoch keyserver-ratified.
        ratified: bool,
    },
    /// A verifier ratification was stored.
    VerifierSignatureStored {
        /// The epoch ratified.
        epoch: u64,
    },
    /// A configuration change was checked and waits for the open epoch to close; `epoch`,
    /// the next one, is checked under the configuration of `generation` and its head is the
    /// first to commit to it.
    ConfigChangeStaged {
        /// The new configuration's generation.
        generation: u64,
        /// The epoch whose head will commit to it.
        epoch: u64,
    },
    /// A well-formed command that does not apply to the current state; nothing changed.
    Ignored(Ignored),
    /// A command with an invalid signature or an unknown signer; nothing changed.
    Rejected(Rejected),
}

/// Why a command was ignored: stale, duplicate or premature, all harmless.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum Ignored {
    /// A delimiter for an epoch other than the open one (a stale retry or a duplicate).
    #[error("a delimiter for epoch {got}, but epoch {open} is open")]
    DelimiterForOtherEpoch {
        /// The open epoch.
        open: u64,
        /// The delimiter's epoch.
        got: u64,
    },
    /// A delimiter while the previous epoch still lacks a replica majority.
    #[error("a delimiter while epoch {epoch} still lacks a replica majority")]
    PreviousEpochNotRatified {
        /// The epoch lacking signatures.
        epoch: u64,
    },
    /// A signature that is already stored.
    #[error("this signature over epoch {epoch} is already stored")]
    DuplicateSignature {
        /// The epoch.
        epoch: u64,
    },
    /// A configuration change that is already applied (pending, or in a head).
    #[error("this configuration change (to generation {generation}) is already applied")]
    DuplicateConfigChange {
        /// The generation it leads to.
        generation: u64,
    },
}

/// Why a command was refused as invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum Rejected {
    /// The signer is not one of the realm's replicas.
    #[error("signer {0} is not one of the realm's replicas")]
    UnknownReplica(PublicKey),
    /// The signer is not a registered verifier.
    #[error("signer {0} is not one of the realm's verifiers")]
    UnknownVerifier(PublicKey),
    /// The signature does not verify over the stored head.
    #[error("the signature by {signer} does not verify over the head of epoch {epoch}")]
    BadSignature {
        /// The epoch.
        epoch: u64,
        /// The signer.
        signer: PublicKey,
    },
    /// No head exists for the epoch.
    #[error("epoch {0} does not exist")]
    UnknownEpoch(u64),
    /// Verifiers only ratify epochs that a replica majority already signed.
    #[error("epoch {0} is not keyserver-ratified yet: verifiers ratify only what a replica majority signed")]
    EpochNotKeyserverRatified(u64),
    /// A configuration change that does not follow from the configuration in force.
    #[error("configuration change refused: {0}")]
    ConfigChange(ConfigChangeError),
    /// A second configuration change before the first is in force.
    #[error(
        "a configuration change (to generation {pending_generation}) is pending until the open epoch closes; submit this one after it"
    )]
    ConfigChangePending {
        /// The generation of the pending change.
        pending_generation: u64,
    },
}

/// What others must learn once the step's batch is written (and only then): the server
/// publishes these to its proposers, waiting lookups, watch and verifier streams. The proposer
/// of a command learns its [`Outcome`] through the log's response instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A head was stored: the signature proposer should sign it.
    HeadStored {
        /// The epoch.
        epoch: u64,
    },
    /// Signatures for `epoch` changed: wake lookups waiting for a quorum.
    SignaturesChanged {
        /// The epoch.
        epoch: u64,
    },
    /// The epoch reached a replica majority: publish it to verifiers; the epoch proposer may
    /// cut the next epoch.
    EpochRatified {
        /// The epoch.
        epoch: u64,
    },
    /// The open epoch gained an update: the epoch proposer should re-evaluate.
    PendingUpdatesChanged,
}

/// The result of one step: the batch to write atomically, what happened and what to do next.
#[derive(Debug)]
pub struct Step {
    /// Writes that make up the new state, including the applied log position.
    pub batch: Batch,
    /// What the command did.
    pub outcome: Outcome,
    /// Deferred IO, to run after the batch is durable.
    pub effects: Vec<Effect>,
    epoch_state: EpochState,
    applied: LogPosition,
    base_applied: LogPosition,
    written_pages: tree::WrittenPages,
    /// A leaf staged into the open epoch by this step, with the staged update's bytes.
    staged: Option<(Index, Digest, Vec<u8>)>,
    /// Whether this step closed the open epoch.
    closed_epoch: bool,
    /// How this step changes the configuration history.
    config_update: Option<ConfigUpdate>,
    /// Whether its writes may be deferred: an update's step reads only closed epochs and the
    /// staged updates (which deferral keeps visible to the step function).
    deferrable: bool,
}

/// One epoch of the verifier log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedEpoch {
    /// The epoch's updates in index order, as verifiers replay them.
    pub updates: Vec<keyraft_core::SignedEntry>,
    /// The epoch's head.
    pub head: EpochHead,
    /// A replica majority's signatures over the head, sorted by signer.
    pub replica_signatures: Vec<(PublicKey, Signature)>,
    /// The indexes among `updates` whose signed entry is a recovery request rather than an
    /// update (protocol version 2), in index order.
    pub recovery_requests: Vec<Index>,
    /// The configuration change this head is the first to commit to, if any: verifiers check
    /// it against their configuration in force before the epoch.
    pub config_change: Option<SignedConfigChange>,
}

/// An epoch as the verifier stream sends it: [`PublishedEpoch`] with each update as the
/// canonical bytes of its signed entry (verifiers decode and check them; a replica need not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedEpochBytes {
    /// The epoch's signed entries in index order, encoded.
    pub updates: Vec<Vec<u8>>,
    /// The epoch's head.
    pub head: EpochHead,
    /// A replica majority's signatures over the head, sorted by signer.
    pub replica_signatures: Vec<(PublicKey, Signature)>,
    /// The positions in `updates` of the recovery requests (protocol version 2), ascending.
    pub recovery_positions: Vec<usize>,
    /// The configuration change this head is the first to commit to, if any.
    pub config_change: Option<SignedConfigChange>,
}

/// The keyserver state: the tree, the entries and the epochs, over any [`Storage`].
#[derive(Debug)]
pub struct StateMachine<S> {
    store: S,
    configs: ConfigHistory,
    epoch_state: EpochState,
    applied: LogPosition,
    pages: tree::PageCache,
    /// The open epoch's staged leaves, mirroring the `e` keyspace of the open epoch so that
    /// closing an epoch does not scan storage (sled iterates slowly). Rebuilt on open.
    open_leaves: BTreeMap<Index, Digest>,
    /// Writes of deferred commits not yet in storage (see [`StateMachine::commit_deferred`]).
    unwritten: Batch,
    /// The staged updates among them, by index, for the step function to see.
    unwritten_staged: BTreeMap<Index, Vec<u8>>,
    /// The oldest epoch whose tree is kept (see `retention`); never read by the step.
    trees_from: u64,
    /// Signatures this process verified already (see [`StateMachine::with_signature_memo`]).
    signatures: Option<Arc<VerifiedSignatures>>,
}

impl<S: Storage> StateMachine<S> {
    /// Opens the state in `store` for the realm `config`. A fresh store is initialised; a
    /// store written for another realm is refused. `config` may be any configuration of the
    /// stored chain of changes; the newest stored one is in force.
    pub fn open(store: S, config: RealmConfig) -> Result<Self, StateError> {
        check_format_version(&store, STATE_FORMAT_VERSION, &[])?;
        let configs = ConfigHistory::open(&store, &config)?;
        let epoch_state = match store.get(keys::META_EPOCH)? {
            None => EpochState::default(),
            Some(b) => EpochState::decode(&b)?,
        };
        let applied = match store.get(keys::META_APPLIED)? {
            None => LogPosition::default(),
            Some(b) if b.len() == 16 => LogPosition {
                term: keys::be_u64(&b[..8]).ok_or_else(|| corrupt("applied position"))?,
                index: keys::be_u64(&b[8..]).ok_or_else(|| corrupt("applied position"))?,
            },
            Some(_) => return Err(corrupt("applied position has the wrong length")),
        };
        let open_leaves: BTreeMap<Index, Digest> =
            epoch_leaves(&store, epoch_state.open_epoch())?.into_iter().collect();
        if open_leaves.len() as u64 != epoch_state.pending_updates {
            return Err(corrupt(format!(
                "{} staged updates, epoch state says {}",
                open_leaves.len(),
                epoch_state.pending_updates
            )));
        }
        let trees_from = retention::read_trees_from(&store)?;
        Ok(Self {
            store,
            configs,
            epoch_state,
            applied,
            pages: tree::PageCache::default(),
            open_leaves,
            unwritten: Batch::new(),
            unwritten_staged: BTreeMap::new(),
            trees_from,
            signatures: None,
        })
    }

    /// Verifies update signatures through `memo`, which the process's request handlers fill
    /// when they check updates on arrival: a replica then verifies each signature once, not
    /// once on arrival and again here. The step's outcomes are the same with or without it
    /// (the memo remembers only signatures that verified, see [`VerifiedSignatures`]).
    #[must_use]
    pub fn with_signature_memo(mut self, memo: Arc<VerifiedSignatures>) -> Self {
        self.signatures = Some(memo);
        self
    }

    /// The realm configuration in force: the open epoch's, under which updates are checked and
    /// which its head will commit to (the first, or the newest change's).
    pub fn config(&self) -> &RealmConfig {
        self.configs.config()
    }

    /// The configuration the head of `epoch` commits to (for an epoch without a head, the
    /// configuration in force): the one whose keys its signatures are checked against.
    pub fn config_of_epoch(&self, epoch: u64) -> &RealmConfig {
        self.configs.config_of_epoch(epoch)
    }

    /// The configuration changes in heads, oldest first, with their first epochs.
    pub fn config_changes(&self) -> &[AppliedChange] {
        &self.configs.changes
    }

    /// The changes that lead from the configuration whose hash is `from_config_hash` to the
    /// one in force; `None` if that configuration is not one of this realm's.
    pub fn config_changes_after(&self, from_config_hash: &Digest) -> Option<Vec<SignedConfigChange>> {
        self.configs.changes_after(from_config_hash)
    }

    /// The change applied from the log that is in force once the open epoch closes, if any.
    pub fn pending_config_change(&self) -> Option<&SignedConfigChange> {
        self.configs.pending.as_ref().map(|(change, _)| change)
    }

    /// The storage underneath.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The last applied log position (persisted with the state).
    pub fn applied(&self) -> LogPosition {
        self.applied
    }

    /// The persisted epoch state.
    pub fn epoch_state(&self) -> EpochState {
        self.epoch_state
    }
}
