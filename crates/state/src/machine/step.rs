//! The step function: one log command in, the batch and effects it produces out, one
//! function per command kind. Reads storage (and the deferred staged updates), writes nothing.

use super::codec::encode_position;
use super::configs::{encode_applied, AppliedChange, ConfigUpdate};
use super::{Effect, EpochState, Ignored, Outcome, Rejected, StateMachine, Step};
use crate::corrupt;
use crate::keys;
use keyraft_core::config_change::check_config_change;
use keyraft_core::lookup::{head_signing_message, ratification_message};
use keyraft_core::recovery::{self, check_recovery, leaf_value, PendingRecovery};
use keyraft_core::update::{check_update, check_update_memo};
use keyraft_core::{
    decode_canonical, Canonical, Digest, Index, PublicKey, Signature, SignedConfigChange, Update, UpdateRejection,
};
use keyraft_core::{Command, LogPosition};
use keyraft_epoch::head::{close_epoch_counted, next_issue_time_ms, ChainTip, ClosedEpoch};
use keyraft_epoch::StateError;
use keyraft_storage::{Batch, Storage};
use std::collections::BTreeMap;

/// The index in a key of the `s` or `q` keyspace (one prefix byte, then the index).
fn index_of(key: &[u8]) -> Result<Index, StateError> {
    key.get(1..33).and_then(|k| k.try_into().ok()).map(Index).ok_or_else(|| corrupt("recovery keyspace key"))
}

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
            // Not deferrable: it changes the pending-recovery keyspaces, which the step reads
            // from storage (see `step_recovery`).
            Command::RecoveryRequest(update) => self.step_recovery(update, &mut step)?,
            Command::ConfigChange(change) => self.step_config_change(change, &mut step),
        };
        step.batch.put(keys::META_APPLIED, encode_position(position));
        if step.epoch_state != self.epoch_state {
            step.batch.put(keys::META_EPOCH, step.epoch_state.encode());
        }
        Ok(step)
    }

    /// Verifies the signatures of the updates and recovery requests among `commands` in
    /// batches through the signature memo, so that their steps find them verified: a replica
    /// applying an entry of many commands it did not receive itself verifies them at about
    /// half the cost of one by one. No outcome changes (see
    /// [`keyraft_core::update::verify_signatures_batched`]); without a memo it does nothing.
    /// Commands at positions applied already are skipped, as [`Self::step`] skips them: a
    /// restarted replica replaying its log verifies nothing twice.
    pub fn verify_signatures_ahead<'c>(&self, commands: impl IntoIterator<Item = (LogPosition, &'c Command)>) {
        let Some(memo) = &self.signatures else { return };
        let signed: Vec<&keyraft_core::SignedEntry> = commands
            .into_iter()
            .filter(|(position, _)| position.index > self.applied.index)
            .filter_map(|(_, c)| match c {
                Command::Update(u) | Command::RecoveryRequest(u) => Some(&u.signed),
                _ => None,
            })
            .collect();
        keyraft_core::update::verify_signatures_batched(&self.open_epoch_config().realm, &signed, memo);
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
        // One command per index per epoch, recovery requests included.
        if self.store.get(&keys::index_key(keys::STAGED_RECOVERY, &index))?.is_some() {
            return Ok(Outcome::UpdateRejected { id, reason: UpdateRejection::AlreadyUpdatedInEpoch { epoch: open } });
        }
        let current = self.update_at(&index, self.epoch_state.last_epoch)?;
        if let Some((epoch, cur)) = &current {
            if cur.signed.entry.encode() == entry_bytes {
                return Ok(Outcome::UpdateDuplicate { id, epoch: *epoch });
            }
        }
        let current_entry = current.as_ref().map(|(_, u)| &u.signed.entry);
        let checked = match &self.signatures {
            Some(memo) => check_update_memo(self.open_epoch_config(), current_entry, update, memo),
            None => check_update(self.open_epoch_config(), current_entry, update),
        };
        if let Err(reason) = checked {
            return Ok(Outcome::UpdateRejected { id, reason });
        }
        // An update under the current policy while a recovery is pending is the owner's veto:
        // the leaf it makes commits to no pending recovery, and none is pending from this
        // epoch on. Written now (lookups read closed epochs only) and not deferred, because
        // the delimiter reads the pending keyspace from storage.
        let pending_now = keys::index_key(keys::PENDING_NOW, &index);
        if self.store.get(&pending_now)?.is_some() {
            step.deferrable = false;
            step.batch.delete(pending_now);
            step.batch.put(keys::pending(&index, open), Vec::new());
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

    /// A recovery request: checked with the recovery rules against the current entry, and
    /// staged in its own keyspace (`s`). Its pending record needs the issue time of the epoch
    /// that applies it, so the delimiter writes it (`step_delimiter`). The step is not
    /// deferred: later steps and the delimiter read the recovery keyspaces from storage.
    fn step_recovery(&self, update: &Update, step: &mut Step) -> Result<Outcome, StateError> {
        let id = update.id();
        let index = update.signed.entry.index;
        let open = self.epoch_state.open_epoch();
        let entry_bytes = update.signed.entry.encode();
        let already = UpdateRejection::AlreadyUpdatedInEpoch { epoch: open };
        if self.unwritten_staged.contains_key(&index) || self.store.get(&keys::update(&index, open))?.is_some() {
            return Ok(Outcome::UpdateRejected { id, reason: already });
        }
        let staged_key = keys::index_key(keys::STAGED_RECOVERY, &index);
        if let Some(staged) = self.store.get(&staged_key)? {
            let staged: Update = decode_canonical(&staged).map_err(|e| corrupt(format!("staged recovery: {e}")))?;
            if staged.signed.entry.encode() == entry_bytes {
                return Ok(Outcome::UpdateDuplicate { id, epoch: open });
            }
            return Ok(Outcome::UpdateRejected { id, reason: already });
        }
        let current = self.update_at(&index, self.epoch_state.last_epoch)?;
        if let Some((pending, _)) = self.pending_recovery_at(&index, self.epoch_state.last_epoch)? {
            if pending.signed.entry.encode() == entry_bytes {
                return Ok(Outcome::UpdateDuplicate { id, epoch: pending.requested_epoch });
            }
        }
        let current_entry = current.as_ref().map(|(_, u)| &u.signed.entry);
        if let Err(reason) = check_recovery(self.open_epoch_config(), current_entry, update) {
            return Ok(Outcome::UpdateRejected { id, reason });
        }
        let Some(current_entry) = current_entry else {
            return Err(corrupt("a recovery passed its rules without a current entry"));
        };
        let encoded = update.encode();
        step.batch.put(staged_key, encoded.clone());
        // A recovery pending before is replaced (its window restarts with this one).
        step.batch.delete(keys::index_key(keys::PENDING_NOW, &index));
        // The leaf is only known once the epoch's issue time is: the delimiter overwrites this
        // placeholder (the leaf as it is) with the leaf committing to the pending recovery.
        let placeholder = current_entry.hash();
        step.batch.put(keys::epoch_update(open, &index), placeholder.to_vec());
        step.staged = Some((index, placeholder, encoded));
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
        let mut leaves: BTreeMap<Index, Digest> = self.open_leaves.clone();
        if leaves.len() as u64 != st.pending_updates {
            return Err(corrupt(format!("{} staged updates, epoch state says {}", leaves.len(), st.pending_updates)));
        }
        let tip = ChainTip { epoch: st.last_epoch, head_hash: st.last_head_hash, issue_time_ms: st.last_issue_time_ms };
        // This epoch's updates were checked under the configuration in force when it opened,
        // and its head commits to that one, as verifiers check it. A change applied during
        // the epoch takes effect with the next: the epoch this delimiter opens is checked
        // under it and its head is the first to commit to it.
        let config = self.configs.config();
        if let Some((change, next)) = &self.configs.pending {
            let first_epoch = epoch + 1;
            step.batch.put(keys::config_change(next.generation), encode_applied(first_epoch, change));
            step.batch.delete(keys::META_PENDING_CONFIG);
            step.config_update = Some(ConfigUpdate::Committed(AppliedChange {
                first_epoch,
                change: change.clone(),
                config: next.clone(),
            }));
        }
        let issue_time_ms = next_issue_time_ms(&tip, timestamp_ms);
        self.close_recoveries(config, epoch, issue_time_ms, &mut leaves, &mut step.batch)?;
        let leaves: Vec<(Index, Digest)> = leaves.into_iter().collect();
        // The head counts the commands the epoch applied (as verifiers receive them), not the
        // recoveries that took effect by themselves.
        let ClosedEpoch { head, written } = close_epoch_counted(
            &self.store,
            &self.pages,
            config,
            &tip,
            &leaves,
            timestamp_ms,
            st.pending_updates,
            &mut step.batch,
        )?;
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

    /// The recovery half of closing `epoch` (issued at `issue_time_ms`): each recovery request
    /// staged in it becomes pending (its leaf commits to the entry and the pending record,
    /// effective the issue time plus the window), and each recovery pending before whose time
    /// has come becomes the entry. Both in index order, from the small `s` and `q` keyspaces.
    fn close_recoveries(
        &self,
        config: &keyraft_core::RealmConfig,
        epoch: u64,
        issue_time_ms: u64,
        leaves: &mut BTreeMap<Index, Digest>,
        batch: &mut Batch,
    ) -> Result<(), StateError> {
        let last = self.epoch_state.last_epoch;
        for item in self.store.scan_prefix(&[keys::STAGED_RECOVERY]) {
            let (key, value) = item?;
            let index = index_of(&key)?;
            let update: Update = decode_canonical(&value).map_err(|e| corrupt(format!("staged recovery: {e}")))?;
            let (_, current) =
                self.update_at(&index, last)?.ok_or_else(|| corrupt("a staged recovery of an index without entry"))?;
            let effective_ms = recovery::effective_ms(config, issue_time_ms)
                .ok_or_else(|| corrupt("a staged recovery in a realm without recovery"))?;
            let pending = PendingRecovery { signed: update.signed, requested_epoch: epoch, effective_ms };
            let leaf = leaf_value(&current.signed.entry, Some(&pending));
            let mut record = pending.encode();
            record.extend_from_slice(&update.profile.encode());
            batch.put(keys::pending(&index, epoch), record);
            let mut now = epoch.to_be_bytes().to_vec();
            now.extend_from_slice(&effective_ms.to_be_bytes());
            batch.put(keys::index_key(keys::PENDING_NOW, &index), now);
            batch.delete(key);
            batch.put(keys::epoch_update(epoch, &index), leaf.to_vec());
            if leaves.insert(index, leaf).is_none() {
                return Err(corrupt("a staged recovery without its staged leaf"));
            }
        }
        for item in self.store.scan_prefix(&[keys::PENDING_NOW]) {
            let (key, value) = item?;
            let index = index_of(&key)?;
            let (requested, effective) = match (value.get(..8), value.get(8..)) {
                (Some(r), Some(e)) if e.len() == 8 => (
                    keys::be_u64(r).ok_or_else(|| corrupt("pending recovery epoch"))?,
                    keys::be_u64(e).ok_or_else(|| corrupt("pending recovery time"))?,
                ),
                _ => return Err(corrupt("pending recovery record has the wrong length")),
            };
            if leaves.contains_key(&index) {
                // Staging an update or a recovery of the index removed its `q` record.
                return Err(corrupt("a pending recovery of an index updated in the closing epoch"));
            }
            let (pending, profile) = self
                .pending_recovery_at(&index, last)?
                .ok_or_else(|| corrupt("a recovery listed as pending without its record"))?;
            if (pending.requested_epoch, pending.effective_ms) != (requested, effective) {
                return Err(corrupt("a pending recovery's record and listing disagree"));
            }
            if !pending.matures_in(epoch, issue_time_ms) {
                continue;
            }
            let matured = Update { signed: pending.signed, profile };
            leaves.insert(index, matured.signed.entry.hash());
            batch.put(keys::update(&index, epoch), matured.encode());
            batch.put(keys::pending(&index, epoch), Vec::new());
            batch.delete(key);
        }
        Ok(())
    }

    /// A configuration change: checked against the configuration in force with the one core
    /// rule, then kept pending until the next delimiter, after which it is in force: the epoch
    /// that delimiter opens is checked under it and its head is the first to commit to it.
    /// One change at a time: the next must follow the configuration this one leads to.
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
                Outcome::ConfigChangeStaged { generation, epoch: self.epoch_state.open_epoch() + 1 }
            }
        }
    }

    /// The configuration the open epoch's updates are checked under and its head will commit
    /// to: the one in force when it opened (a change pending in it waits for the next epoch).
    pub(super) fn open_epoch_config(&self) -> &keyraft_core::RealmConfig {
        self.configs.config()
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
