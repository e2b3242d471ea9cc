//! What a deterministic simulation replaces to run a whole realm in one process: the clock,
//! the storage engine, the network and openraft's randomness. [`Seams::default`] is the
//! production choice for each; `docs/architecture.md` section 7 lists where each is used.

use keyraft_core::clock::{self, Clock};
use keyraft_proto::transport::Connector;
use keyraft_storage::MemoryStorage;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// The replaceable parts of a replica, handed to [`crate::run`] in [`crate::Loaded`].
#[derive(Clone)]
pub struct Seams {
    /// The clock epochs are stamped with (default: the host's).
    pub clock: Arc<dyn Clock>,
    /// Where the Raft log and the state live (default: the configured engine under the data
    /// directory).
    pub storage: StorageEngine,
    /// Opens the connections of peer channels (default, `None`: TCP).
    pub network: Option<Arc<dyn Connector>>,
    /// Seeds openraft's randomness, its election timeout (default, `None`: the thread's
    /// generator).
    pub raft_seed: Option<u64>,
}

impl Default for Seams {
    fn default() -> Self {
        Self { clock: clock::system(), storage: StorageEngine::Disk, network: None, raft_seed: None }
    }
}

impl std::fmt::Debug for Seams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seams")
            .field("clock", &self.clock)
            .field("storage", &self.storage)
            .field("network", &if self.network.is_some() { "custom" } else { "tcp" })
            .field("raft_seed", &self.raft_seed)
            .finish()
    }
}

/// The storage engine of the Raft log and the state.
#[derive(Debug, Clone, Default)]
pub enum StorageEngine {
    /// Databases of the engine `[storage]` names, under the data directory.
    #[default]
    Disk,
    /// In memory, in this handle: a replica started again with (a clone of) the same handle
    /// finds what it had written, and [`MemoryEngine::crash`] keeps only what was flushed.
    Memory(MemoryEngine),
}

/// A replica's stores in memory. Clones share the data.
#[derive(Debug, Clone, Default)]
pub struct MemoryEngine {
    /// The Raft log.
    pub log: MemoryStorage,
    /// The state's generations.
    pub state: MemoryState,
}

impl MemoryEngine {
    /// What a process would find after a crash: only what each store had flushed.
    #[must_use]
    pub fn crash(&self) -> MemoryEngine {
        MemoryEngine { log: self.log.crash(), state: self.state.crash() }
    }
}

/// The state's generations in memory, and which one is current: what the state directory
/// and its `CURRENT` file are on disk. Clones share them.
#[derive(Debug, Clone, Default)]
pub struct MemoryState {
    inner: Arc<Mutex<Generations>>,
}

#[derive(Debug, Default)]
struct Generations {
    current: u64,
    stores: BTreeMap<u64, MemoryStorage>,
}

impl MemoryState {
    fn lock(&self) -> MutexGuard<'_, Generations> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The generation a replica opens at start.
    pub fn current(&self) -> u64 {
        self.lock().current
    }

    /// Makes `generation` the one opened at start (the rename of `CURRENT` on disk).
    pub fn set_current(&self, generation: u64) {
        self.lock().current = generation;
    }

    /// Generation `generation`'s store, empty if it was never opened.
    pub fn generation(&self, generation: u64) -> MemoryStorage {
        self.lock().stores.entry(generation).or_default().clone()
    }

    /// Forgets generation `generation` (a replaced state).
    pub fn remove(&self, generation: u64) {
        self.lock().stores.remove(&generation);
    }

    /// Every generation as a crash leaves it; the `CURRENT` pointer is synced when it is
    /// moved, so it survives as is.
    #[must_use]
    pub fn crash(&self) -> MemoryState {
        let g = self.lock();
        let stores = g.stores.iter().map(|(n, s)| (*n, s.crash())).collect();
        MemoryState { inner: Arc::new(Mutex::new(Generations { current: g.current, stores })) }
    }
}
