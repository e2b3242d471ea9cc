//! The state-machine store: openraft's view of [`keyraft_state::StateMachine`].
//!
//! Applying an entry computes the step under a read lock (an epoch close takes a while and
//! lookups keep being served meanwhile), then commits it under a short write lock together
//! with openraft's last-applied log id and membership, in one atomic batch.
//!
//! Snapshots are the whole state (the tree of every epoch and all epoch data) as a file of
//! key-value records closed by a SHA-256 digest (see [`snapshot_file`]). A snapshot is built
//! while apply is paused, so it is a consistent view. Installing one loads it into a fresh
//! generation of the state directory and then switches the `CURRENT` pointer with an atomic
//! rename: a crash at any point leaves either the old state or the new one.

use super::io_err;
use super::snapshot_data::SnapshotData;
use super::types::{
    ApplyResponse, ApplyResponses, CommandRefused, Entry, LogId, NodeAddr, NodeId, RaftStorageError, StoredMembership,
    TypeConfig, COMMANDS_PER_ENTRY_MAX,
};
use crate::effects::{Applied, Effects};
use crate::snapshot_file;
use keyraft_core::ed25519::VerifiedSignatures;
use keyraft_core::Command;
use keyraft_core::RealmConfig;
use keyraft_proto::convert::decode_log_entry;
use keyraft_state::{Effect, LogPosition, Outcome, StateMachine};
use keyraft_storage::{Batch, DiskEngine, Storage, StorageError};
use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard};

/// The state machine over a run-time chosen engine.
pub type Machine = StateMachine<Arc<dyn Storage>>;

const RAFT_APPLIED: &[u8] = b"xraft-applied";
const RAFT_MEMBERSHIP: &[u8] = b"xraft-membership";

/// Where the state lives.
#[derive(Debug, Clone)]
pub enum StateLocation {
    /// In memory, in this handle: a replica reopening the same handle finds its state.
    Memory(crate::seams::MemoryState),
    /// Databases under this directory, one per generation, chosen by `CURRENT`.
    Dir {
        /// The state directory.
        path: PathBuf,
        /// The engine and its settings.
        engine: DiskEngine,
    },
}

/// The state shared by the apply path, the services and the proposers.
pub struct SharedState {
    machine: RwLock<Machine>,
    effects: Effects,
    /// Update signatures verified in this process: by the request handlers on arrival, by the
    /// step function when applying (each is verified once; see `VerifiedSignatures`).
    pub(crate) signatures: Arc<VerifiedSignatures>,
}

impl std::fmt::Debug for SharedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedState").field("applied", &self.applied()).finish()
    }
}

impl SharedState {
    /// Read access to the state machine. Never hold it across an await.
    pub fn read(&self) -> RwLockReadGuard<'_, Machine> {
        self.machine.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The published effects of applying the log, to subscribe to.
    pub fn effects(&self) -> &Effects {
        &self.effects
    }

    /// The latest applied view.
    pub fn applied(&self) -> Applied {
        self.effects.applied()
    }

    fn applied_now(&self, raft_index: u64) -> Applied {
        Applied { raft_index, epoch_state: self.read().epoch_state() }
    }

    /// One round of retention keeping the trees of the newest `epochs_kept` epochs, run
    /// beside apply and reads (see `keyraft_state::retention`); `None` if the horizon has not
    /// moved far enough (an eighth of `epochs_kept`) since the last round. Blocks: call it off
    /// the async runtime.
    pub(crate) fn prune(&self, epochs_kept: u64) -> Result<Option<Pruned>, keyraft_state::StateError> {
        use keyraft_state::retention::{delete_pruned, plan_prune};
        let started = std::time::Instant::now();
        let (store, horizon) = {
            let machine = self.read();
            let Some(horizon) = machine.retention_horizon(epochs_kept, epochs_kept / 8) else { return Ok(None) };
            (Arc::clone(machine.store()), horizon)
        };
        // The walk reads trees no step writes again, without a lock.
        let garbage = plan_prune(store.as_ref(), horizon)?;
        {
            let mut machine = self.write_when_free();
            // A snapshot installed meanwhile replaced the state: its next round starts afresh.
            if !std::ptr::addr_eq(Arc::as_ptr(machine.store()), Arc::as_ptr(&store)) {
                return Ok(None);
            }
            // Under the write lock: no lookup is halfway through a tree that is about to go,
            // and no snapshot dump began before the horizon it records.
            machine.begin_prune(horizon)?;
        }
        delete_pruned(store.as_ref(), &garbage.keys)?;
        store.flush()?;
        Ok(Some(Pruned { trees_from: horizon, chunks: garbage.chunks, took: started.elapsed() }))
    }

    /// The write lock, taken only when no one holds the lock. A writer waiting in `write()`
    /// holds back every new reader until it gets the lock, and a snapshot dump holds a read
    /// lock for seconds: retention waiting that way would stall every lookup meanwhile.
    fn write_when_free(&self) -> std::sync::RwLockWriteGuard<'_, Machine> {
        loop {
            match self.machine.try_write() {
                Ok(guard) => return guard,
                Err(std::sync::TryLockError::Poisoned(e)) => return e.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => std::thread::sleep(std::time::Duration::from_millis(1)),
            }
        }
    }
}

/// What a round of retention did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pruned {
    /// The oldest epoch whose tree is kept now.
    pub(crate) trees_from: u64,
    /// Tree chunks deleted.
    pub(crate) chunks: usize,
    /// How long the round took.
    pub(crate) took: std::time::Duration,
}

/// openraft's state machine.
pub struct StateMachineStore {
    shared: Arc<SharedState>,
    location: StateLocation,
    generation: u64,
    snapshot_dir: PathBuf,
    config: RealmConfig,
    /// Deferred storage writes at which an apply call writes them before going on.
    deferred_writes_max: usize,
    /// Where epoch apply times are recorded.
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Snapshot files are read and written in place, not on the blocking pool
    /// ([`SnapshotData`]).
    files_in_place: bool,
}

impl std::fmt::Debug for StateMachineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachineStore")
            .field("location", &self.location)
            .field("generation", &self.generation)
            .finish()
    }
}

fn sm_err(verb: ErrorVerb, e: impl std::fmt::Display) -> RaftStorageError {
    io_err(ErrorSubject::StateMachine, verb, e)
}

fn snap_err(verb: ErrorVerb, e: impl std::fmt::Display) -> RaftStorageError {
    io_err(ErrorSubject::Snapshot(None), verb, e)
}

fn open_generation(location: &StateLocation, generation: u64) -> Result<Arc<dyn Storage>, StorageError> {
    match location {
        StateLocation::Memory(state) => Ok(Arc::new(state.generation(generation))),
        StateLocation::Dir { path, engine } => engine.open(&path.join(format!("gen-{generation}"))),
    }
}

fn io(context: &'static str) -> impl Fn(std::io::Error) -> StorageError {
    move |source| StorageError::Io { context, source }
}

/// Reads the current generation from `CURRENT` (0 when absent).
fn current_generation(dir: &Path) -> Result<u64, StorageError> {
    match std::fs::read_to_string(dir.join("CURRENT")) {
        Ok(s) => s
            .trim()
            .strip_prefix("gen-")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| StorageError::Corrupt { what: format!("state CURRENT file holds {s:?}") }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(StorageError::Io { context: "reading the state CURRENT file", source: e }),
    }
}

/// Points `CURRENT` at `generation`: write a temporary file, fsync it, rename it over, fsync
/// the directory.
fn set_current_generation(dir: &Path, generation: u64) -> Result<(), StorageError> {
    let tmp = dir.join("CURRENT.tmp");
    std::fs::write(&tmp, format!("gen-{generation}\n")).map_err(io("writing CURRENT.tmp"))?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io("syncing CURRENT.tmp"))?;
    std::fs::rename(&tmp, dir.join("CURRENT")).map_err(io("renaming CURRENT"))?;
    std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(io("syncing the state directory"))
}

/// Deferred storage writes (keys) at which an apply call writes them before going on, on an
/// engine with no preferred batch size ([`Storage::batch_keys_preferred_max`]): a bound on the
/// call's own memory, not the engine's.
pub const DEFERRED_WRITES_MAX: usize = 65_536;

impl StateMachineStore {
    /// Opens the state at `location` for `config`; snapshots go to `snapshot_dir`.
    pub fn open(location: StateLocation, snapshot_dir: PathBuf, config: RealmConfig) -> Result<Self, crate::Error> {
        std::fs::create_dir_all(&snapshot_dir).map_err(|e| crate::Error::io("creating the snapshot directory", e))?;
        let generation = match &location {
            StateLocation::Memory(state) => state.current(),
            StateLocation::Dir { path, .. } => {
                std::fs::create_dir_all(path).map_err(|e| crate::Error::io("creating the state directory", e))?;
                current_generation(path)?
            }
        };
        let store = open_generation(&location, generation)?;
        let deferred_writes_max = store.batch_keys_preferred_max().unwrap_or(DEFERRED_WRITES_MAX);
        let signatures = Arc::new(VerifiedSignatures::default());
        let machine = StateMachine::open(store, config.clone())?.with_signature_memo(signatures.clone());
        let applied = Applied {
            raft_index: read_applied(machine.store())?.map(|l| l.index).unwrap_or(0),
            epoch_state: machine.epoch_state(),
        };
        let shared =
            Arc::new(SharedState { machine: RwLock::new(machine), effects: Effects::new(applied), signatures });
        Ok(Self {
            shared,
            location,
            generation,
            snapshot_dir,
            config,
            deferred_writes_max,
            metrics: None,
            files_in_place: false,
        })
    }

    /// Records epoch apply times and sizes in `metrics`.
    #[must_use]
    pub fn with_metrics(self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        Self { metrics: Some(metrics), ..self }
    }

    /// Reads and writes snapshot files in place where `threads` runs blocking work in place
    /// (a simulation on one thread: see [`SnapshotData`]).
    #[must_use]
    pub fn with_threads(self, threads: &keyraft_storage::ThreadSpawner) -> Self {
        Self { files_in_place: threads.in_place(), ..self }
    }

    /// The state shared with services and proposers.
    pub fn shared(&self) -> Arc<SharedState> {
        self.shared.clone()
    }

    /// Writes deferred updates once this many storage writes are pending in an apply call
    /// (default: the engine's preferred batch size, else [`DEFERRED_WRITES_MAX`]); tests lower
    /// it to split calls at every entry.
    pub fn set_deferred_writes_max(&mut self, writes: usize) {
        self.deferred_writes_max = writes;
    }

    fn write_lock(&self) -> std::sync::RwLockWriteGuard<'_, Machine> {
        self.shared.machine.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies one entry's commands, appending their effects to `effects`.
    fn apply_one(&self, entry: Entry, effects: &mut Vec<Effect>) -> Result<ApplyResponses, StorageError> {
        let log_id = entry.log_id;
        let mut meta = Batch::new();
        meta.put(RAFT_APPLIED, postcard::to_allocvec(&log_id).map_err(super::postcard_err)?);
        let commands = match entry.payload {
            EntryPayload::Blank => None,
            EntryPayload::Membership(m) => {
                let stored = StoredMembership::new(Some(log_id), m);
                meta.put(RAFT_MEMBERSHIP, postcard::to_allocvec(&stored).map_err(super::postcard_err)?);
                None
            }
            EntryPayload::Normal(commands) => Some(commands),
        };
        let Some(commands) = commands else {
            self.write_lock().defer(meta);
            return Ok(ApplyResponses(vec![ApplyResponse::Internal]));
        };
        let decoded: Vec<Result<Command, CommandRefused>> =
            commands.0.iter().enumerate().map(|(k, bytes)| decode_command(log_id, k, bytes)).collect();
        // A follower received none of these updates itself: verify their signatures in
        // batches now rather than one by one in each step.
        self.shared.read().verify_signatures_ahead(
            decoded.iter().enumerate().filter_map(|(k, c)| c.as_ref().ok().map(|c| (command_position(log_id, k), c))),
        );
        let mut apply_all = || -> Result<Vec<ApplyResponse>, StorageError> {
            let mut responses = Vec::with_capacity(decoded.len());
            for (k, command) in decoded.iter().enumerate() {
                responses.push(match command {
                    Ok(command) => ApplyResponse::Applied(self.apply_command(log_id, k, command, effects)?),
                    Err(refused) => ApplyResponse::Refused(refused.clone()),
                });
            }
            Ok(responses)
        };
        // Closing an epoch takes long enough to starve other tasks on this worker; hand the
        // worker's other work to another thread for it. Other commands are short.
        let responses = if decoded.iter().any(|c| matches!(c, Ok(Command::EpochDelimiter { .. }))) {
            crate::blocking::in_place(apply_all)
        } else {
            apply_all()
        }?;
        // The entry counts as applied once all its commands are; a crash in between replays
        // the entry, and the commands already applied are skipped by their positions.
        self.write_lock().defer(meta);
        Ok(ApplyResponses(responses))
    }

    fn apply_command(
        &self,
        log_id: LogId,
        k: usize,
        command: &Command,
        effects: &mut Vec<Effect>,
    ) -> Result<Outcome, StorageError> {
        let position = command_position(log_id, k);
        let started = std::time::Instant::now();
        let step = self.shared.read().step(position, command).map_err(state_to_storage)?;
        // Updates' writes are deferred to the end of the apply call (one storage write for the
        // whole batch of entries); everything else is written at once, after them.
        let (outcome, step_effects) = self.write_lock().commit_deferred(step).map_err(state_to_storage)?;
        effects.extend(step_effects);
        if let Outcome::EpochClosed(head) = &outcome {
            let took = started.elapsed();
            tracing::info!(
                epoch = head.epoch,
                updates = head.update_count,
                apply_ms = took.as_millis() as u64,
                "epoch applied"
            );
            if let Some(m) = &self.metrics {
                m.epoch_applied(took, head.update_count);
            }
        }
        Ok(outcome)
    }
}

/// The state machine's position of the `k`-th command of the Raft entry at `log_id`.
fn command_position(log_id: LogId, k: usize) -> LogPosition {
    // `decode_command` checked that this cannot overflow.
    LogPosition { term: log_id.leader_id.term, index: log_id.index * COMMANDS_PER_ENTRY_MAX + k as u64 }
}

/// Decodes the `k`-th command of the entry at `log_id`, or says why the log refuses it. Both
/// refusals are bugs or disk corruption (a proposer only proposes what it encoded itself);
/// refusing them the same way everywhere keeps every replica identical.
fn decode_command(log_id: LogId, k: usize, bytes: &[u8]) -> Result<Command, CommandRefused> {
    let positioned = (k as u64) < COMMANDS_PER_ENTRY_MAX && log_id.index < u64::MAX / COMMANDS_PER_ENTRY_MAX;
    if !positioned {
        tracing::error!(index = log_id.index, command = k, "refusing a command beyond the per-entry limit");
        return Err(CommandRefused::TooManyCommands { max: COMMANDS_PER_ENTRY_MAX });
    }
    decode_log_entry(bytes).map_err(|e| {
        tracing::error!(index = log_id.index, command = k, error = %e, "refusing an undecodable log command");
        CommandRefused::Undecodable { message: e.to_string() }
    })
}

fn state_to_storage(e: keyraft_state::StateError) -> StorageError {
    match e {
        keyraft_state::StateError::Storage(s) => s,
        other => StorageError::Corrupt { what: other.to_string() },
    }
}

fn read_applied(store: &Arc<dyn Storage>) -> Result<Option<LogId>, StorageError> {
    store.get(RAFT_APPLIED)?.map(|b| postcard::from_bytes(&b).map_err(super::postcard_err)).transpose()
}

fn read_membership(store: &Arc<dyn Storage>) -> Result<StoredMembership, StorageError> {
    Ok(store
        .get(RAFT_MEMBERSHIP)?
        .map(|b| postcard::from_bytes(&b).map_err(super::postcard_err))
        .transpose()?
        .unwrap_or_default())
}

/// Builds snapshots from a file written while apply was paused.
#[derive(Debug)]
pub struct SnapshotBuilder {
    /// The snapshot's metadata, file and last epoch.
    prepared: Result<(SnapshotMeta<NodeId, NodeAddr>, PathBuf, u64), String>,
    snapshot_dir: PathBuf,
    files_in_place: bool,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, RaftStorageError> {
        let (meta, path, epoch) = self.prepared.clone().map_err(|e| snap_err(ErrorVerb::Write, e))?;
        snapshot_file::set_current(&self.snapshot_dir, &meta, &path, epoch)
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let file = SnapshotData::open(&path, self.files_in_place).await.map_err(|e| snap_err(ErrorVerb::Read, e))?;
        tracing::info!(snapshot = %meta.snapshot_id, last_log = ?meta.last_log_id, "snapshot built");
        Ok(Snapshot { meta, snapshot: Box::new(file) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), RaftStorageError> {
        let machine = self.shared.read();
        let applied = read_applied(machine.store()).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let membership = read_membership(machine.store()).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyResponses>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        let mut last = None;
        let mut effects = Vec::new();
        for entry in entries {
            let index = entry.log_id.index;
            out.push(self.apply_one(entry, &mut effects).map_err(|e| sm_err(ErrorVerb::Write, e))?);
            last = Some(index);
            // A replica catching up applies thousands of entries per call; one storage batch
            // for all of them would make sled hold gigabytes (its memory grows with the size
            // of its batches), so an engine names the batch size it takes well. Writing at an
            // entry boundary is what a shorter call would do.
            if self.shared.read().deferred_writes() >= self.deferred_writes_max {
                self.write_lock().write_deferred().map_err(|e| sm_err(ErrorVerb::Write, e))?;
            }
        }
        self.write_lock().write_deferred().map_err(|e| sm_err(ErrorVerb::Write, e))?;
        // Only now is everything the effects speak of in storage.
        if let Some(index) = last {
            self.shared.effects.publish(self.shared.applied_now(index), &effects);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let started = std::time::Instant::now();
        // Apply is paused while this runs: the dump is a consistent view of one log position.
        let prepared = crate::blocking::in_place(|| {
            let machine = self.shared.read();
            let store = machine.store();
            store.flush().map_err(|e| e.to_string())?;
            let last_log_id = read_applied(store).map_err(|e| e.to_string())?;
            let last_membership = read_membership(store).map_err(|e| e.to_string())?;
            let snapshot_id = snapshot_file::new_id(last_log_id.as_ref());
            let path = self.snapshot_dir.join(format!("{snapshot_id}.snap"));
            snapshot_file::write(store.as_ref(), &path).map_err(|e| e.to_string())?;
            let epoch = machine.epoch_state().last_epoch;
            Ok((SnapshotMeta { last_log_id, last_membership, snapshot_id }, path, epoch))
        });
        match &prepared {
            Err(e) => tracing::error!(error = %e, "building a snapshot failed"),
            Ok((_, path, _)) => {
                if let Some(m) = &self.metrics {
                    let bytes = std::fs::metadata(path).map(|md| md.len()).unwrap_or(0);
                    m.snapshot("built", started.elapsed(), bytes);
                }
            }
        }
        SnapshotBuilder { prepared, snapshot_dir: self.snapshot_dir.clone(), files_in_place: self.files_in_place }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, RaftStorageError> {
        let path = self.snapshot_dir.join(format!("{}.part", snapshot_file::new_id(None)));
        let file =
            SnapshotData::create_new(&path, self.files_in_place).await.map_err(|e| snap_err(ErrorVerb::Write, e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeAddr>,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), RaftStorageError> {
        let started = std::time::Instant::now();
        let mut received = snapshot.into_std().await;
        let bytes = received.metadata().map(|md| md.len()).unwrap_or(0);
        let meta = meta.clone();
        crate::blocking::in_place(|| self.install(&meta, &mut received)).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        self.shared.effects.publish_replaced(self.shared.applied_now(index));
        tracing::info!(snapshot = %meta.snapshot_id, last_log = ?meta.last_log_id, "snapshot installed");
        if let Some(m) = &self.metrics {
            m.snapshot("installed", started.elapsed(), bytes);
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        let Some(current) = snapshot_file::current(&self.snapshot_dir).map_err(|e| snap_err(ErrorVerb::Read, e))?
        else {
            return Ok(None);
        };
        let file =
            SnapshotData::open(&current.path, self.files_in_place).await.map_err(|e| snap_err(ErrorVerb::Read, e))?;
        Ok(Some(Snapshot { meta: current.meta, snapshot: Box::new(file) }))
    }
}

impl StateMachineStore {
    /// Replaces the state with the snapshot in `received` (a whole snapshot file), described
    /// by `meta`, and makes it the current snapshot. The snapshot's digest is checked before
    /// anything is replaced.
    pub(crate) fn install(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeAddr>,
        received: &mut std::fs::File,
    ) -> Result<(), crate::Error> {
        use std::io::Seek as _;
        // Keep the received file as our current snapshot: copy it under its id first.
        let path = self.snapshot_dir.join(format!("{}.snap", meta.snapshot_id));
        let tmp = path.with_extension("snap.tmp");
        received.rewind().map_err(|e| crate::Error::io("rewinding the received snapshot", e))?;
        {
            let mut out = std::fs::File::create(&tmp).map_err(|e| crate::Error::io("creating the snapshot copy", e))?;
            std::io::copy(received, &mut out).map_err(|e| crate::Error::io("copying the received snapshot", e))?;
            out.sync_all().map_err(|e| crate::Error::io("syncing the snapshot copy", e))?;
        }
        std::fs::rename(&tmp, &path).map_err(|e| crate::Error::io("renaming the snapshot copy", e))?;

        let generation = self.generation + 1;
        match &self.location {
            StateLocation::Dir { path: dir, .. } => {
                let stale = dir.join(format!("gen-{generation}"));
                if stale.exists() {
                    std::fs::remove_dir_all(&stale)
                        .map_err(|e| crate::Error::io("removing a stale state generation", e))?;
                }
            }
            StateLocation::Memory(state) => state.remove(generation),
        }
        let store = open_generation(&self.location, generation)?;
        snapshot_file::load(&path, store.as_ref())?;
        let mut b = Batch::new();
        b.put(RAFT_APPLIED, postcard::to_allocvec(&meta.last_log_id.unwrap_or_default()).map_err(super::postcard_err)?);
        b.put(RAFT_MEMBERSHIP, postcard::to_allocvec(&meta.last_membership).map_err(super::postcard_err)?);
        if meta.last_log_id.is_none() {
            b.delete(RAFT_APPLIED);
        }
        store.write(b)?;
        store.flush()?;
        let machine =
            StateMachine::open(store, self.config.clone())?.with_signature_memo(self.shared.signatures.clone());
        let epoch = machine.epoch_state().last_epoch;
        match &self.location {
            StateLocation::Dir { path: dir, .. } => set_current_generation(dir, generation)?,
            StateLocation::Memory(state) => state.set_current(generation),
        }
        let old = std::mem::replace(&mut *self.write_lock(), machine);
        drop(old);
        match &self.location {
            StateLocation::Dir { path: dir, .. } => {
                let previous = dir.join(format!("gen-{}", self.generation));
                if let Err(e) = std::fs::remove_dir_all(&previous) {
                    tracing::warn!(error = %e, dir = %previous.display(), "could not remove the previous state generation");
                }
            }
            StateLocation::Memory(state) => state.remove(self.generation),
        }
        self.generation = generation;
        snapshot_file::set_current(&self.snapshot_dir, meta, &path, epoch)?;
        snapshot_file::remove_partial(&self.snapshot_dir);
        Ok(())
    }
}
