//! Committing steps: writing a step's batch at once, or deferring it so that many updates'
//! steps cost one storage write, and updating the in-memory mirrors after either.

use super::{Effect, EpochState, Outcome, StateMachine, Step};
use crate::keys;
use keyraft_core::{Canonical, Digest, Index, Update};
use keyraft_core::{Command, LogPosition};
use keyraft_epoch::tree;
use keyraft_epoch::StateError;
use keyraft_storage::{Batch, Storage};

impl<S: Storage> StateMachine<S> {
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
            batch: step_batch,
            outcome,
            effects,
            epoch_state,
            applied,
            written_pages,
            staged,
            closed_epoch,
            config_update,
            ..
        } = step;
        batch.extend(step_batch);
        if !batch.is_empty() {
            if let Err(e) = self.store.write(batch) {
                self.pages.clear();
                return Err(e.into());
            }
        }
        if let Some(update) = config_update {
            self.configs.apply(update);
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
        if !step.deferrable || step.closed_epoch || !step.written_pages.is_empty() || step.config_update.is_some() {
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
}
