//! The step function: one log command in, the batch and effects it produces out, one
//! function per command kind. Reads storage (and the deferred staged updates), writes nothing.

use super::codec::encode_position;
use super::configs::{encode_applied, AppliedChange, ConfigUpdate};
use super::{Effect, EpochState, Ignored, Outcome, Rejected, StateMachine, Step};
use crate::corrupt;
use crate::keys;
use keyraft_core::config_change::check_config_change;
use keyraft_core::lookup::{head_signing_message, ratification_message};
use keyraft_core::update::check_update;
use keyraft_core::{
    decode_canonical, Canonical, Digest, Index, PublicKey, Signature, SignedConfigChange, Update, UpdateRejection,
};
use keyraft_core::{Command, LogPosition};
use keyraft_epoch::head::{close_epoch, ChainTip, ClosedEpoch};
use keyraft_epoch::StateError;
use keyraft_storage::{Batch, Storage};

impl<S: Storage> StateMachine<S> {
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
            config_update: None,
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
            Command::ConfigChange(change) => self.step_config_change(change, &mut step),
        };
        step.batch.put(keys::META_APPLIED, encode_position(position));
        if step.epoch_state != self.epoch_state {
            step.batch.put(keys::META_EPOCH, step.epoch_state.encode());
        }
        Ok(step)
    }

    fn step_update(&self, update: &Update, step: &mut Step) -> Result<Outcome, StateError> {
        let id = update.id();
        let index = update.signed.entry.index;
        let open = self.epoch_state.open_epoch();
        let entry_bytes = update.signed.entry.encode();

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
        if let Err(reason) =
            check_update(&self.open_epoch_config().realm, current.as_ref().map(|(_, u)| &u.signed.entry), update)
        {
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
        // A pending configuration change takes effect here: this head commits to it.
        let config = match &self.configs.pending {
            Some((change, config)) => {
                step.batch.put(keys::config_change(config.generation), encode_applied(epoch, change));
                step.batch.delete(keys::META_PENDING_CONFIG);
                step.config_update = Some(ConfigUpdate::Committed(AppliedChange {
                    first_epoch: epoch,
                    change: change.clone(),
                    config: config.clone(),
                }));
                config
            }
            None => self.configs.config(),
        };
        let ClosedEpoch { head, written } =
            close_epoch(&self.store, &self.pages, config, &tip, &leaves, timestamp_ms, &mut step.batch)?;
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
        // The signers of a head are the replicas of the configuration it commits to.
        let config = self.configs.config_of_epoch(epoch);
        if config.replica_keys.binary_search(signer).is_err() {
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
        let ratified = config.is_replica_majority(stored) && !config.is_replica_majority(stored - 1);
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
        if self.configs.config_of_epoch(epoch).verifier_keys.binary_search(verifier).is_err() {
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

    /// A configuration change: checked against the configuration in force with the one core
    /// rule, then kept pending until the next delimiter, whose head commits to it. One change
    /// at a time: the next must follow the configuration this one leads to, which is in force
    /// only once a head commits to it.
    fn step_config_change(&self, change: &SignedConfigChange, step: &mut Step) -> Outcome {
        let generation = change.change.new_config.generation;
        let already = |c: &SignedConfigChange| c.change == change.change;
        if self.configs.changes.iter().any(|c| already(&c.change))
            || self.configs.pending.as_ref().is_some_and(|(c, _)| already(c))
        {
            return Outcome::Ignored(Ignored::DuplicateConfigChange { generation });
        }
        if let Some((_, pending)) = &self.configs.pending {
            return Outcome::Rejected(Rejected::ConfigChangePending { pending_generation: pending.generation });
        }
        match check_config_change(self.configs.config(), change) {
            Err(e) => Outcome::Rejected(Rejected::ConfigChange(e)),
            Ok(config) => {
                step.batch.put(keys::META_PENDING_CONFIG, change.encode());
                step.config_update = Some(ConfigUpdate::Pending(change.clone(), config));
                Outcome::ConfigChangeStaged { generation, epoch: self.epoch_state.open_epoch() }
            }
        }
    }

    /// The configuration the open epoch's head will commit to: a pending change's, or the
    /// one in force.
    pub(super) fn open_epoch_config(&self) -> &keyraft_core::RealmConfig {
        self.configs.pending.as_ref().map_or(self.configs.config(), |(_, config)| config)
    }

    fn count(&self, prefix: &[u8]) -> Result<usize, StateError> {
        let mut n = 0;
        for item in self.store.scan_prefix(prefix) {
            item?;
            n += 1;
        }
        Ok(n)
    }
}
