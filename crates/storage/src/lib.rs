//! # keyraft-storage
//!
//! The storage seam of a keyraft replica: an ordered key-value store with point reads, range
//! scans, atomic batches and an explicit durable flush, and nothing else, so that the engine
//! underneath (sled by default, or redb) can be replaced without touching the state machine.
//!
//! Contract of every [`Storage`]:
//! - keys are compared bytewise; integers inside keys are big-endian so that byte order is
//!   numeric order;
//! - [`Storage::write`] applies a [`Batch`] atomically: after it returns, every read sees all
//!   of the batch; no read and no crash ever exposes part of it;
//! - a write is *durable* only once a later [`Storage::flush`] returned: a crash may lose
//!   writes that were not flushed, but always a suffix of whole batches;
//! - iterators never see a torn batch; they may or may not see batches written after they
//!   were created.
//!
//! The first key byte `0x00` is reserved for this crate ([`format`]). Threads that write a store
//! behind their owner's back are started through [`threads`], so that a simulation can run them.
#![forbid(unsafe_code)]

pub mod format;
mod memory;
mod redb_store;
mod sled_store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod threads;

pub use format::{check_format_version, FormatOutcome, Migration, RESERVED_PREFIX};
pub use memory::MemoryStorage;
pub use redb_store::{RedbOptions, RedbStorage, REDB_FILE, REDB_PAGE_BYTES};
pub use sled_store::{SledOptions, SledStorage, SLED_BATCH_KEYS_PREFERRED_MAX, VALUE_LOG_MIN_BYTES};
pub use threads::{ThreadHandle, ThreadSpawner};

use thiserror::Error;

/// A key.
pub type Key = Vec<u8>;
/// A value.
pub type Value = Vec<u8>;
/// Key/value pairs of a range, in the order requested.
pub type RangeIter<'a> = Box<dyn Iterator<Item = Result<(Key, Value), StorageError>> + Send + 'a>;
/// Keys of a range, without their values.
pub type KeyIter<'a> = Box<dyn Iterator<Item = Result<Key, StorageError>> + Send + 'a>;

/// One write of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    /// Sets `key` to `value`.
    Put {
        /// The key.
        key: Key,
        /// The value.
        value: Value,
    },
    /// Removes `key`.
    Delete {
        /// The key.
        key: Key,
    },
}

/// An atomic group of writes, applied in order (a later op on the same key wins).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    ops: Vec<BatchOp>,
    bytes: usize,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put.
    pub fn put(&mut self, key: impl Into<Key>, value: impl Into<Value>) {
        let (key, value) = (key.into(), value.into());
        self.bytes += key.len() + value.len();
        self.ops.push(BatchOp::Put { key, value });
    }

    /// Adds a delete.
    pub fn delete(&mut self, key: impl Into<Key>) {
        let key = key.into();
        self.bytes += key.len();
        self.ops.push(BatchOp::Delete { key });
    }

    /// Whether the batch has no ops.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Number of ops.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// The ops, in order.
    pub fn ops(&self) -> &[BatchOp] {
        &self.ops
    }

    /// Sum of key and value sizes, in bytes.
    pub fn approximate_bytes(&self) -> usize {
        self.bytes
    }

    /// Appends another batch's ops after this one's.
    pub fn extend(&mut self, other: Batch) {
        self.bytes += other.bytes;
        self.ops.extend(other.ops);
    }

    /// Consumes the batch into its ops.
    pub fn into_ops(self) -> Vec<BatchOp> {
        self.ops
    }
}

/// Scan direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Ascending keys.
    Forward,
    /// Descending keys.
    Reverse,
}

/// A storage failure. None of these is a client's fault: the disk, the engine, or the bytes
/// on disk are at fault, and the replica should stop rather than guess.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The operating system refused an IO operation.
    #[error("storage IO failed while {context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// Stored bytes are damaged.
    #[error("storage is corrupt: {what}")]
    Corrupt {
        /// What is damaged.
        what: String,
    },
    /// The data was written by a newer keyraft; upgrade rather than risk misreading it.
    #[error("on-disk format version {found} is newer than the supported version {supported}; run a newer keyraft")]
    FormatTooNew {
        /// The version found.
        found: u32,
        /// The version this build writes.
        supported: u32,
    },
    /// The data is too old and no migration path exists.
    #[error("on-disk format version {found} cannot be migrated to {supported}; export and re-import the data")]
    FormatTooOld {
        /// The version found.
        found: u32,
        /// The version this build writes.
        supported: u32,
    },
    /// The engine reported another failure.
    #[error("storage engine failed: {0}")]
    Engine(String),
}

/// An ordered key-value store with atomic batches and durable flush. See the crate docs for
/// the contract.
pub trait Storage: Send + Sync + 'static {
    /// Reads one key.
    fn get(&self, key: &[u8]) -> Result<Option<Value>, StorageError>;

    /// Keys `k` with `start <= k < end` (`end = None`: unbounded), in `direction` order.
    fn range(&self, start: &[u8], end: Option<&[u8]>, direction: Direction) -> RangeIter<'_>;

    /// Applies `batch` atomically. Not necessarily durable until [`Storage::flush`].
    fn write(&self, batch: Batch) -> Result<(), StorageError>;

    /// Makes every write that returned before this call durable.
    fn flush(&self) -> Result<(), StorageError>;

    /// The keys `k` with `start <= k < end`, ascending, without reading their values (an
    /// engine that keeps large values apart skips them): for finding what to delete.
    fn range_keys(&self, start: &[u8], end: Option<&[u8]>) -> KeyIter<'_> {
        Box::new(self.range(start, end, Direction::Forward).map(|r| r.map(|(k, _)| k)))
    }

    /// Every key starting with `prefix`, ascending.
    fn scan_prefix(&self, prefix: &[u8]) -> RangeIter<'_> {
        let end = prefix_successor(prefix);
        self.range(prefix, end.as_deref(), Direction::Forward)
    }

    /// The first pair of a range, if any.
    fn first_in_range(&self, start: &[u8], end: Option<&[u8]>) -> Result<Option<(Key, Value)>, StorageError> {
        self.range(start, end, Direction::Forward).next().transpose()
    }

    /// The last pair of a range, if any.
    fn last_in_range(&self, start: &[u8], end: Option<&[u8]>) -> Result<Option<(Key, Value)>, StorageError> {
        self.range(start, end, Direction::Reverse).next().transpose()
    }

    /// The most keys this engine takes well in one batch, if it has such a limit (sled's
    /// memory grows with the size of its batches): writers that can split their work at a
    /// boundary of their own write at most about this many keys per batch. `None`: any size.
    fn batch_keys_preferred_max(&self) -> Option<usize> {
        None
    }
}

/// The smallest key greater than every key starting with `prefix`, or `None` if there is
/// none (the prefix is empty or all `0xff`).
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut out = prefix.to_vec();
    while let Some(last) = out.pop() {
        if last != 0xff {
            out.push(last + 1);
            return Some(out);
        }
    }
    None
}

/// A persistent engine with its settings, chosen at run time (a node's `storage.engine`).
#[derive(Debug, Clone, Copy)]
pub enum DiskEngine {
    /// sled ([`SledStorage`]).
    Sled(SledOptions),
    /// redb ([`RedbStorage`]).
    Redb(RedbOptions),
}

impl DiskEngine {
    /// The engine's name, as a configuration names it.
    pub fn name(&self) -> &'static str {
        match self {
            DiskEngine::Sled(_) => "sled",
            DiskEngine::Redb(_) => "redb",
        }
    }

    /// Opens (or creates) a store in directory `path`. A directory holding the other engine's
    /// database is refused: a store is always opened with the engine that created it.
    pub fn open(&self, path: &std::path::Path) -> Result<std::sync::Arc<dyn Storage>, StorageError> {
        let found = engine_in(path);
        if let Some(found) = found.filter(|f| *f != self.name()) {
            return Err(StorageError::Engine(format!(
                "{} holds a {found} database, and this node is configured for {} (storage.engine): \
                 set storage.engine = \"{found}\", or move to {} by restoring a backup into a new data directory",
                path.display(),
                self.name(),
                self.name()
            )));
        }
        Ok(match self {
            DiskEngine::Sled(options) => std::sync::Arc::new(SledStorage::open_with(path, *options)?),
            DiskEngine::Redb(options) => std::sync::Arc::new(RedbStorage::open_with(path, *options)?),
        })
    }
}

/// Which engine's database directory `path` holds, if any: by the files each one creates.
pub fn engine_in(path: &std::path::Path) -> Option<&'static str> {
    if path.join(REDB_FILE).exists() {
        Some("redb")
    } else if path.join("conf").exists() && path.join("db").exists() {
        Some("sled")
    } else {
        None
    }
}

/// Every pair in the store, in key order: for comparing two replicas byte for byte.
pub fn dump_all(store: &dyn Storage) -> Result<Vec<(Key, Value)>, StorageError> {
    store.range(&[], None, Direction::Forward).collect()
}

/// A shared handle to any engine, so that layers above can pick the engine at run time.
impl<T: Storage + ?Sized> Storage for std::sync::Arc<T> {
    fn get(&self, key: &[u8]) -> Result<Option<Value>, StorageError> {
        (**self).get(key)
    }

    fn range(&self, start: &[u8], end: Option<&[u8]>, direction: Direction) -> RangeIter<'_> {
        (**self).range(start, end, direction)
    }

    fn range_keys(&self, start: &[u8], end: Option<&[u8]>) -> KeyIter<'_> {
        (**self).range_keys(start, end)
    }

    fn write(&self, batch: Batch) -> Result<(), StorageError> {
        (**self).write(batch)
    }

    fn flush(&self) -> Result<(), StorageError> {
        (**self).flush()
    }

    fn batch_keys_preferred_max(&self) -> Option<usize> {
        (**self).batch_keys_preferred_max()
    }
}
