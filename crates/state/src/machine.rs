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

use crate::corrupt;
use crate::keys;
use keyraft_core::lookup::{head_signing_message, ratification_message};
use keyraft_core::tree::TreeProof;
use keyraft_core::update::check_update;
use keyraft_core::{
    decode_canonical, Canonical, Digest, EpochHead, Index, PublicKey, RealmConfig, Signature, Update, UpdateRejection,
};
use keyraft_core::{Command, LogPosition};
use keyraft_epoch::head::{close_epoch, ChainTip, ClosedEpoch};
use keyraft_epoch::tree;
use keyraft_epoch::StateError;
use keyraft_storage::{check_format_version, prefix_successor, Batch, Direction, Storage};
use std::collections::BTreeMap;

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

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&self.last_epoch.to_be_bytes());
        out.extend_from_slice(&self.last_issue_time_ms.to_be_bytes());
        out.extend_from_slice(&self.last_head_hash);
        out.extend_from_slice(&self.ratified_epoch.to_be_bytes());
        out.extend_from_slice(&self.pending_updates.to_be_bytes());
        out
    }

    fn decode(b: &[u8]) -> Result<Self, StateError> {
        if b.len() != 64 {
            return Err(corrupt("epoch state has the wrong length"));
        }
        let u = |r: std::ops::Range<usize>| keys::be_u64(&b[r]).ok_or_else(|| corrupt("epoch state"));
        let mut last_head_hash = [0u8; 32];
        last_head_hash.copy_from_slice(&b[16..48]);
        Ok(Self {
            last_epoch: u(0..8)?,
            last_issue_time_ms: u(8..16)?,
            last_head_hash,
            ratified_epoch: u(48..56)?,
            pending_updates: u(56..64)?,
        })
    }
}

/// What applying one command did.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// A well-formed command that does not apply to the current state; nothing changed.
    Ignored(Ignored),
    /// A command with an invalid signature or an unknown signer; nothing changed.
    Rejected(Rejected),
}

/// Why a command was ignored: stale, duplicate or premature, all harmless.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ignored {
    /// A delimiter for an epoch other than the open one (a stale retry or a duplicate).
    DelimiterForOtherEpoch {
        /// The open epoch.
        open: u64,
        /// The delimiter's epoch.
        got: u64,
    },
    /// A delimiter while the previous epoch still lacks a replica majority.
    PreviousEpochNotRatified {
        /// The epoch lacking signatures.
        epoch: u64,
    },
    /// A signature that is already stored.
    DuplicateSignature {
        /// The epoch.
        epoch: u64,
    },
}

/// Why a command was refused as invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    /// The signer is not one of the realm's replicas.
    UnknownReplica(PublicKey),
    /// The signer is not a registered verifier.
    UnknownVerifier(PublicKey),
    /// The signature does not verify over the stored head.
    BadSignature {
        /// The epoch.
        epoch: u64,
        /// The signer.
        signer: PublicKey,
    },
    /// No head exists for the epoch.
    UnknownEpoch(u64),
    /// Verifiers only ratify epochs that a replica majority already signed.
    EpochNotKeyserverRatified(u64),
}

/// Work to do after the step's batch is durable (and only then).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Answer whoever waits for the update `id`.
    UpdateDecided {
        /// The update's identifier.
        id: Digest,
    },
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
}

/// The keyserver state: the tree, the entries and the epochs, over any [`Storage`].
#[derive(Debug)]
pub struct StateMachine<S> {
    store: S,
    config: RealmConfig,
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
}

/// The indexes updated in `epoch` with their entry hashes (the `e` keyspace), in index order.
fn epoch_leaves(store: &dyn Storage, epoch: u64) -> Result<Vec<(Index, Digest)>, StateError> {
    let mut out = Vec::new();
    for item in store.scan_prefix(&keys::epoch_prefix(keys::EPOCH_UPDATES, epoch)) {
        let (key, value) = item?;
        let index: [u8; 32] =
            key.get(9..41).and_then(|k| k.try_into().ok()).ok_or_else(|| corrupt("epoch update key"))?;
        let hash: Digest = value.as_slice().try_into().map_err(|_| corrupt("epoch update entry hash"))?;
        out.push((Index(index), hash));
    }
    Ok(out)
}

fn encode_position(p: LogPosition) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&p.term.to_be_bytes());
    out.extend_from_slice(&p.index.to_be_bytes());
    out
}

impl<S: Storage> StateMachine<S> {
    /// Opens the state in `store` for the realm `config`. A fresh store is initialised; a
    /// store written for another configuration is refused.
    pub fn open(store: S, config: RealmConfig) -> Result<Self, StateError> {
        check_format_version(&store, STATE_FORMAT_VERSION, &[])?;
        let config_bytes = config.encode();
        match store.get(keys::META_CONFIG)? {
            None => {
                let mut b = Batch::new();
                b.put(keys::META_CONFIG, config_bytes);
                store.write(b)?;
            }
            Some(stored) if stored == config_bytes => {}
            Some(stored) => {
                let name = decode_canonical::<RealmConfig>(&stored)
                    .map(|c| c.realm)
                    .unwrap_or_else(|_| "<undecodable>".into());
                return Err(StateError::ConfigMismatch(format!(
                    "stored realm {name:?}, configured {:?}",
                    config.realm
                )));
            }
        }
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
        Ok(Self {
            store,
            config,
            epoch_state,
            applied,
            pages: tree::PageCache::default(),
            open_leaves,
            unwritten: Batch::new(),
            unwritten_staged: BTreeMap::new(),
        })
    }

    /// The realm configuration.
    pub fn config(&self) -> &RealmConfig {
        &self.config
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

    /// Computes the effect of `command` at `position` without changing anything.
    pub fn step(&self, position: LogPosition, command: &Command) -> Result<Step, StateError> {
        let mut step = Step {
            batch: Batch::new(),
            outcome: Outcome::AlreadyApplied,
            effects: Vec::new(),
            epoch_state: self.epoch_state,
            applied: self.applied,
            base_applied: self.applied,
            written_pages: Vec::new(),
            staged: None,
            closed_epoch: false,
            deferrable: false,
        };
        if position.index <= self.applied.index {
            return Ok(step);
        }
        step.applied = position;
        step.outcome = match command {
            Command::Update(update) => {
                step.deferrable = true;
                self.step_update(update, &mut step)?
            }
            Command::EpochDelimiter { epoch, timestamp_ms } => self.step_delimiter(*epoch, *timestamp_ms, &mut step)?,
            Command::ReplicaSignature { epoch, signer, signature } => {
                self.step_replica_signature(*epoch, signer, signature, &mut step)?
            }
            Command::VerifierSignature { epoch, verifier, signature } => {
                self.step_verifier_signature(*epoch, verifier, signature, &mut step)?
            }
        };
        step.batch.put(keys::META_APPLIED, encode_position(position));
        if step.epoch_state != self.epoch_state {
            step.batch.put(keys::META_EPOCH, step.epoch_state.encode());
        }
        Ok(step)
    }

    /// Steps and writes the batch (atomically, not yet durable). Call
    /// [`Storage::flush`] before running the returned effects.
    ///
    /// An error means this replica's storage failed; the replica must stop.
    pub fn apply(&mut self, position: LogPosition, command: &Command) -> Result<(Outcome, Vec<Effect>), StateError> {
        let step = self.step(position, command)?;
        self.commit(step)
    }

    /// Writes a step computed by [`StateMachine::step`] against the current state. Splitting
    /// the two lets a server compute a long step (closing an epoch) while readers keep
    /// reading, and take exclusive access only to write. The caller may add its own keys to
    /// `step.batch` (outside this crate's keyspaces) to make them atomic with the step.
    ///
    /// The step must have been computed against the current state and nothing else may have
    /// been committed in between.
    pub fn commit(&mut self, step: Step) -> Result<(Outcome, Vec<Effect>), StateError> {
        // A programming error, never a consequence of log contents: the caller committed a
        // step computed against another state. Panicking here is right.
        assert!(step.base_applied == self.applied, "a step must be committed onto the state it was computed from");
        let mut batch = std::mem::take(&mut self.unwritten);
        self.unwritten_staged.clear();
        let Step {
            batch: step_batch, outcome, effects, epoch_state, applied, written_pages, staged, closed_epoch, ..
        } = step;
        batch.extend(step_batch);
        if !batch.is_empty() {
            if let Err(e) = self.store.write(batch) {
                self.pages.clear();
                return Err(e.into());
            }
        }
        self.finish_commit(outcome, effects, epoch_state, applied, written_pages, staged, closed_epoch)
    }

    /// Like [`StateMachine::commit`], but keeps the step's writes in memory, to be written
    /// with the next [`StateMachine::commit`] or [`StateMachine::write_deferred`] in one
    /// atomic batch: applying many updates then costs one storage write instead of one each.
    ///
    /// Only updates' steps are deferred; any other step (delimiters, signatures, which read
    /// what earlier steps wrote) is committed at once, together with what was deferred. Until
    /// the deferred writes are written, readers of storage do not see them (the step function
    /// itself does: it consults the deferred staged updates). If writing fails the replica must
    /// stop, as after any storage error.
    pub fn commit_deferred(&mut self, step: Step) -> Result<(Outcome, Vec<Effect>), StateError> {
        // As in `commit`: a caller's programming error, not reachable from log contents.
        assert!(step.base_applied == self.applied, "a step must be committed onto the state it was computed from");
        if !step.deferrable || step.closed_epoch || !step.written_pages.is_empty() {
            return self.commit(step);
        }
        let Step { batch, outcome, effects, epoch_state, applied, written_pages, staged, closed_epoch, .. } = step;
        self.unwritten.extend(batch);
        if let Some((index, _, bytes)) = &staged {
            self.unwritten_staged.insert(*index, bytes.clone());
        }
        self.finish_commit(outcome, effects, epoch_state, applied, written_pages, staged, closed_epoch)
    }

    /// Adds `extra` (keys outside this crate's keyspaces) to the deferred writes, after what
    /// was deferred so far.
    pub fn defer(&mut self, extra: Batch) {
        self.unwritten.extend(extra);
    }

    /// Storage writes deferred so far (see [`StateMachine::commit_deferred`]).
    pub fn deferred_writes(&self) -> usize {
        self.unwritten.len()
    }

    /// Writes what [`StateMachine::commit_deferred`] kept in memory, atomically.
    pub fn write_deferred(&mut self) -> Result<(), StateError> {
        self.write_with_deferred(Batch::new())
    }

    /// Writes what was deferred followed by `extra` (keys outside this crate's keyspaces), in
    /// one atomic batch, so that nothing written after deferred steps can reach storage
    /// before them.
    pub fn write_with_deferred(&mut self, extra: Batch) -> Result<(), StateError> {
        let mut batch = std::mem::take(&mut self.unwritten);
        batch.extend(extra);
        self.unwritten_staged.clear();
        if !batch.is_empty() {
            self.store.write(batch)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_commit(
        &mut self,
        outcome: Outcome,
        effects: Vec<Effect>,
        epoch_state: EpochState,
        applied: LogPosition,
        written_pages: tree::WrittenPages,
        staged: Option<(Index, Digest, Vec<u8>)>,
        closed_epoch: bool,
    ) -> Result<(Outcome, Vec<Effect>), StateError> {
        self.pages.commit(written_pages);
        if closed_epoch {
            self.open_leaves.clear();
        }
        if let Some((index, hash, _)) = staged {
            self.open_leaves.insert(index, hash);
        }
        self.epoch_state = epoch_state;
        self.applied = applied;
        Ok((outcome, effects))
    }

    /// Stages updates into the open epoch without checking them or going through the log.
    /// Benchmarks use it to build large states quickly; nothing else may.
    #[doc(hidden)]
    pub fn bench_stage_unchecked(&mut self, updates: &[Update]) -> Result<(), StateError> {
        let mut batch = Batch::new();
        let open = self.epoch_state.open_epoch();
        for u in updates {
            let index = u.signed.entry.index;
            batch.put(keys::update(&index, open), u.encode());
            batch.put(keys::epoch_update(open, &index), u.signed.entry.hash().to_vec());
            self.open_leaves.insert(index, u.signed.entry.hash());
        }
        self.epoch_state.pending_updates += updates.len() as u64;
        batch.put(keys::META_EPOCH, self.epoch_state.encode());
        self.store.write(batch)?;
        Ok(())
    }

    fn step_update(&self, update: &Update, step: &mut Step) -> Result<Outcome, StateError> {
        let id = update.id();
        let index = update.signed.entry.index;
        let open = self.epoch_state.open_epoch();
        let entry_bytes = update.signed.entry.encode();
        step.effects.push(Effect::UpdateDecided { id });

        let staged = match self.unwritten_staged.get(&index) {
            Some(bytes) => Some(bytes.clone()),
            None => self.store.get(&keys::update(&index, open))?,
        };
        if let Some(staged) = staged {
            let staged: Update = decode_canonical(&staged).map_err(|e| corrupt(format!("staged update: {e}")))?;
            if staged.signed.entry.encode() == entry_bytes {
                return Ok(Outcome::UpdateDuplicate { id, epoch: open });
            }
            return Ok(Outcome::UpdateRejected { id, reason: UpdateRejection::AlreadyUpdatedInEpoch { epoch: open } });
        }
        let current = self.update_at(&index, self.epoch_state.last_epoch)?;
        if let Some((epoch, cur)) = &current {
            if cur.signed.entry.encode() == entry_bytes {
                return Ok(Outcome::UpdateDuplicate { id, epoch: *epoch });
            }
        }
        if let Err(reason) = check_update(&self.config.realm, current.as_ref().map(|(_, u)| &u.signed.entry), update) {
            return Ok(Outcome::UpdateRejected { id, reason });
        }
        // Staged updates are stored where they will live, under the open epoch, so closing the
        // epoch moves nothing; lookups never see them, as they only read closed epochs.
        let encoded = update.encode();
        step.batch.put(keys::update(&index, open), encoded.clone());
        let leaf = update.signed.entry.hash();
        step.batch.put(keys::epoch_update(open, &index), leaf.to_vec());
        step.staged = Some((index, leaf, encoded));
        step.epoch_state.pending_updates += 1;
        step.effects.push(Effect::PendingUpdatesChanged);
        Ok(Outcome::UpdateAccepted { id, epoch: open })
    }

    fn step_delimiter(&self, epoch: u64, timestamp_ms: u64, step: &mut Step) -> Result<Outcome, StateError> {
        let st = self.epoch_state;
        if epoch != st.open_epoch() {
            return Ok(Outcome::Ignored(Ignored::DelimiterForOtherEpoch { open: st.open_epoch(), got: epoch }));
        }
        if !st.last_epoch_ratified() {
            return Ok(Outcome::Ignored(Ignored::PreviousEpochNotRatified { epoch: st.last_epoch }));
        }
        // The open epoch's leaves are mirrored in memory (see `open_leaves`), already sorted.
        let leaves: Vec<(Index, Digest)> = self.open_leaves.iter().map(|(i, h)| (*i, *h)).collect();
        if leaves.len() as u64 != st.pending_updates {
            return Err(corrupt(format!("{} staged updates, epoch state says {}", leaves.len(), st.pending_updates)));
        }
        let tip = ChainTip { epoch: st.last_epoch, head_hash: st.last_head_hash, issue_time_ms: st.last_issue_time_ms };
        let ClosedEpoch { head, written } =
            close_epoch(&self.store, &self.pages, &self.config, &tip, &leaves, timestamp_ms, &mut step.batch)?;
        step.written_pages = written;
        step.closed_epoch = true;
        step.batch.put(keys::head(epoch), head.encode());
        step.epoch_state = EpochState {
            last_epoch: epoch,
            last_issue_time_ms: head.issue_time_ms,
            last_head_hash: head.hash(),
            ratified_epoch: st.ratified_epoch,
            pending_updates: 0,
        };
        step.effects.push(Effect::HeadStored { epoch });
        Ok(Outcome::EpochClosed(head))
    }

    fn step_replica_signature(
        &self,
        epoch: u64,
        signer: &PublicKey,
        signature: &Signature,
        step: &mut Step,
    ) -> Result<Outcome, StateError> {
        if self.config.replica_keys.binary_search(signer).is_err() {
            return Ok(Outcome::Rejected(Rejected::UnknownReplica(*signer)));
        }
        let Some(head) = self.head(epoch)? else {
            return Ok(Outcome::Rejected(Rejected::UnknownEpoch(epoch)));
        };
        let key = keys::signature(keys::REPLICA_SIG, epoch, signer.as_bytes());
        if self.store.get(&key)?.is_some() {
            return Ok(Outcome::Ignored(Ignored::DuplicateSignature { epoch }));
        }
        if !signer.verify(&head_signing_message(&head), signature) {
            return Ok(Outcome::Rejected(Rejected::BadSignature { epoch, signer: *signer }));
        }
        step.batch.put(key, signature.0.to_vec());
        let stored = self.count(&keys::epoch_prefix(keys::REPLICA_SIG, epoch))? + 1;
        step.effects.push(Effect::SignaturesChanged { epoch });
        // Ratified by this signature: a majority now, and not before it.
        let ratified = self.config.is_replica_majority(stored) && !self.config.is_replica_majority(stored - 1);
        if ratified {
            // Delimiters wait for ratification, so only the last epoch can be completing. An
            // older one completing means the stored signatures contradict the epoch state;
            // every replica would meet it on the same entry, so it stops this replica with an
            // error (its data is at fault) rather than a panic.
            if epoch != self.epoch_state.last_epoch {
                return Err(StateError::Inconsistent {
                    epoch,
                    what: format!(
                        "epoch {epoch} reached its replica majority only now, but epoch {} was closed after it, which requires epoch {epoch} ratified first",
                        self.epoch_state.last_epoch
                    ),
                });
            }
            step.epoch_state.ratified_epoch = epoch;
            step.effects.push(Effect::EpochRatified { epoch });
        }
        Ok(Outcome::ReplicaSignatureStored { epoch, ratified })
    }

    fn step_verifier_signature(
        &self,
        epoch: u64,
        verifier: &PublicKey,
        signature: &Signature,
        step: &mut Step,
    ) -> Result<Outcome, StateError> {
        if self.config.verifier_keys.binary_search(verifier).is_err() {
            return Ok(Outcome::Rejected(Rejected::UnknownVerifier(*verifier)));
        }
        let Some(head) = self.head(epoch)? else {
            return Ok(Outcome::Rejected(Rejected::UnknownEpoch(epoch)));
        };
        if epoch > self.epoch_state.ratified_epoch {
            return Ok(Outcome::Rejected(Rejected::EpochNotKeyserverRatified(epoch)));
        }
        let key = keys::signature(keys::VERIFIER_SIG, epoch, verifier.as_bytes());
        if self.store.get(&key)?.is_some() {
            return Ok(Outcome::Ignored(Ignored::DuplicateSignature { epoch }));
        }
        if !verifier.verify(&ratification_message(&head), signature) {
            return Ok(Outcome::Rejected(Rejected::BadSignature { epoch, signer: *verifier }));
        }
        step.batch.put(key, signature.0.to_vec());
        step.effects.push(Effect::SignaturesChanged { epoch });
        Ok(Outcome::VerifierSignatureStored { epoch })
    }

    fn count(&self, prefix: &[u8]) -> Result<usize, StateError> {
        let mut n = 0;
        for item in self.store.scan_prefix(prefix) {
            item?;
            n += 1;
        }
        Ok(n)
    }

    /// The newest update for `index` and its epoch, including one staged in the open epoch.
    pub fn latest_update(&self, index: &Index) -> Result<Option<(u64, Update)>, StateError> {
        self.update_at(index, u64::MAX)
    }

    /// The newest update for `index` in an epoch at or before `epoch`.
    pub fn update_at(&self, index: &Index, epoch: u64) -> Result<Option<(u64, Update)>, StateError> {
        let prefix = keys::update_prefix(index);
        let end = if epoch == u64::MAX { prefix_successor(&prefix) } else { Some(keys::update(index, epoch + 1)) };
        let found = self.store.range(&prefix, end.as_deref(), Direction::Reverse).next().transpose()?;
        let Some((key, value)) = found else { return Ok(None) };
        let epoch = keys::be_u64(&key[33..]).ok_or_else(|| corrupt("update key"))?;
        let update = decode_canonical(&value).map_err(|e| corrupt(format!("stored update: {e}")))?;
        Ok(Some((epoch, update)))
    }

    /// Updates of `index` in epochs before `before_epoch` (staged ones included), newest first,
    /// at most `limit` of them: an identity's history, one page at a time.
    pub fn update_history(
        &self,
        index: &Index,
        before_epoch: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Update)>, StateError> {
        let prefix = keys::update_prefix(index);
        let end = keys::update(index, before_epoch);
        let mut out = Vec::new();
        for item in self.store.range(&prefix, Some(&end), Direction::Reverse).take(limit) {
            let (key, value) = item?;
            let epoch = keys::be_u64(&key[33..]).ok_or_else(|| corrupt("update key"))?;
            let update = decode_canonical(&value).map_err(|e| corrupt(format!("stored update: {e}")))?;
            out.push((epoch, update));
        }
        Ok(out)
    }

    /// The head of `epoch`, if that epoch is closed.
    pub fn head(&self, epoch: u64) -> Result<Option<EpochHead>, StateError> {
        match self.store.get(&keys::head(epoch))? {
            None => Ok(None),
            Some(b) => EpochHead::from_bytes(&b).map(Some).map_err(|e| corrupt(format!("head {epoch}: {e}"))),
        }
    }

    /// Replica signatures stored for `epoch`, sorted by signer.
    pub fn replica_signatures(&self, epoch: u64) -> Result<Vec<(PublicKey, Signature)>, StateError> {
        self.signatures(keys::REPLICA_SIG, epoch)
    }

    /// Verifier ratifications stored for `epoch`, sorted by verifier.
    pub fn verifier_signatures(&self, epoch: u64) -> Result<Vec<(PublicKey, Signature)>, StateError> {
        self.signatures(keys::VERIFIER_SIG, epoch)
    }

    fn signatures(&self, space: u8, epoch: u64) -> Result<Vec<(PublicKey, Signature)>, StateError> {
        let mut out = Vec::new();
        for item in self.store.scan_prefix(&keys::epoch_prefix(space, epoch)) {
            let (k, v) = item?;
            let signer = PublicKey::from_slice(&k[9..]).map_err(|e| corrupt(format!("signer key: {e}")))?;
            let signature = Signature::from_slice(&v).map_err(|e| corrupt(format!("signature: {e}")))?;
            out.push((signer, signature));
        }
        Ok(out)
    }

    /// The indexes updated in `epoch`, in index order (the order verifiers replay them in).
    pub fn epoch_indexes(&self, epoch: u64) -> Result<Vec<Index>, StateError> {
        Ok(epoch_leaves(&self.store, epoch)?.into_iter().map(|(index, _)| index).collect())
    }

    /// A keyserver-ratified epoch as the verifier log presents it: its updates in index order
    /// (signed entries, without profiles), then its head with a replica majority's
    /// signatures. `None` while the epoch has no majority (verifiers never see it before).
    ///
    /// The verifier log is the sequence of these, epoch after epoch; it is derived from the
    /// stored state rather than copied, so every replica serves identical positions.
    pub fn published_epoch(&self, epoch: u64) -> Result<Option<PublishedEpoch>, StateError> {
        if epoch == 0 || epoch > self.epoch_state.ratified_epoch {
            return Ok(None);
        }
        let head = self.head(epoch)?.ok_or_else(|| corrupt(format!("ratified epoch {epoch} has no head")))?;
        let mut updates = Vec::new();
        for index in self.epoch_indexes(epoch)? {
            let stored =
                self.store.get(&keys::update(&index, epoch))?.ok_or_else(|| corrupt("epoch index without update"))?;
            let update: Update = decode_canonical(&stored).map_err(|e| corrupt(format!("stored update: {e}")))?;
            updates.push(update.signed);
        }
        if updates.len() as u64 != head.update_count {
            return Err(corrupt(format!(
                "epoch {epoch} lists {} updates, its head says {}",
                updates.len(),
                head.update_count
            )));
        }
        let mut replica_signatures = self.replica_signatures(epoch)?;
        replica_signatures.truncate(self.config.replica_majority());
        Ok(Some(PublishedEpoch { updates, head, replica_signatures }))
    }

    /// The tree root as of `epoch`.
    pub fn root_at(&self, epoch: u64) -> Result<Digest, StateError> {
        tree::root_at(&self.store, epoch)
    }

    /// The tree proof for `index` in the tree of `epoch`.
    pub fn tree_proof(&self, epoch: u64, index: &Index) -> Result<TreeProof, StateError> {
        tree::prove(&self.store, epoch, index)
    }
}
