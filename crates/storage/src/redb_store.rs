//! The redb engine (2.6): one database file, `data.redb`, in the store's directory; one table
//! holding every key, so that one write transaction is atomic across everything a step writes.
//!
//! ## Durability, mapped onto the store's contract
//!
//! [`Storage::write`] commits a write transaction with [`Durability::None`]: the batch is
//! visible to every read at once (redb's MVCC) and is not on disk. [`Storage::flush`] commits
//! an empty transaction with [`Durability::Immediate`], which makes it and every commit before
//! it durable: redb writes the pages, then flips its commit slot with an `fsync`. A crash
//! before a durable commit loses exactly the commits after the previous durable one: a suffix
//! of whole batches, as the contract allows. Unlike sled 0.34 (`sync_file_range`, see
//! `sled_store`), the flush is a real `fsync`.
//!
//! redb frees the pages that a commit replaced only at a durable commit, so a store written
//! without flushes would grow without bound (the state is flushed only at snapshots and
//! pruning). [`RedbStorage::write`] therefore makes a commit durable itself once the commits
//! since the last durable one may have written [`RedbOptions::durable_every_bytes`] of pages:
//! each op is counted as a whole page ([`REDB_PAGE_BYTES`], the leaf it copies on write) plus its
//! own bytes, as random keys land in different leaves (counting only the batches' bytes let a
//! million-entry state grow to 7 times sled's size). The count is of bytes, not time, so that
//! no clock and no thread is involved.
//!
//! With [`RedbOptions::quick_repair`] every durable commit also saves the allocator state (with
//! a two-phase commit), so that a database reopened after a crash needs no walk over all of
//! its pages: for the state, which is large and flushed rarely. The Raft log, flushed at every
//! group commit and kept small behind snapshots, goes without.
//!
//! The engine format is recorded in the table `keyraft-engine` (key `format`, u32 BE), out of
//! sight of the store's keys.

use crate::{Batch, BatchOp, Direction, RangeIter, Storage, StorageError, Value};
use redb::{Database, Durability, TableDefinition};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const TABLE: TableDefinition<'static, &[u8], &[u8]> = TableDefinition::new("keyraft");
const ENGINE_TABLE: TableDefinition<'static, &str, u32> = TableDefinition::new("keyraft-engine");
const ENGINE_FORMAT_KEY: &str = "format";
const ENGINE_FORMAT: u32 = 1;
/// What one op of a batch is counted as writing besides its own bytes: redb's page.
pub const REDB_PAGE_BYTES: u64 = 4096;
/// The database file inside the store's directory.
pub const REDB_FILE: &str = "data.redb";

/// Tuning knobs for redb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedbOptions {
    /// Page cache size, in bytes.
    pub cache_capacity_bytes: u64,
    /// Bytes of pages the commits since the last durable one may have written (each op a
    /// [`REDB_PAGE_BYTES`] page plus its own bytes) after which a write's commit is made durable, so
    /// that the pages they replaced are freed; `u64::MAX`: only flushes are.
    pub durable_every_bytes: u64,
    /// Whether durable commits save the allocator state, so that reopening after a crash is
    /// quick (each durable commit costs a second `fsync`).
    pub quick_repair: bool,
}

impl Default for RedbOptions {
    fn default() -> Self {
        Self { cache_capacity_bytes: 128 * 1024 * 1024, durable_every_bytes: 32 * 1024 * 1024, quick_repair: true }
    }
}

/// A store in a redb database directory. Clones share the database.
#[derive(Debug, Clone)]
pub struct RedbStorage {
    db: Arc<Database>,
    file: PathBuf,
    options: RedbOptions,
    /// Bytes of pages the commits since the last durable one may have written.
    undurable_bytes: Arc<AtomicU64>,
}

fn engine(e: impl Into<redb::Error>) -> StorageError {
    match e.into() {
        redb::Error::Io(source) => StorageError::Io { context: "accessing the redb database", source },
        redb::Error::Corrupted(what) => StorageError::Corrupt { what: format!("redb reports: {what}") },
        redb::Error::DatabaseAlreadyOpen => {
            StorageError::Engine("the database is in use by another process (or a handle of this one)".into())
        }
        other => StorageError::Engine(other.to_string()),
    }
}

impl RedbStorage {
    /// Opens (or creates) the database in directory `path` with default options.
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        Self::open_with(path, RedbOptions::default())
    }

    /// Opens (or creates) the database in directory `path`, repairing it after a crash.
    pub fn open_with(path: &Path, options: RedbOptions) -> Result<Self, StorageError> {
        std::fs::create_dir_all(path)
            .map_err(|source| StorageError::Io { context: "creating the redb database directory", source })?;
        let file = path.join(REDB_FILE);
        let created = !file.exists();
        let cache = usize::try_from(options.cache_capacity_bytes).unwrap_or(usize::MAX);
        let db = Database::builder().set_cache_size(cache).create(&file).map_err(engine)?;
        if created {
            // The file's name must be durable before anything written into it is.
            std::fs::File::open(path)
                .and_then(|dir| dir.sync_all())
                .map_err(|source| StorageError::Io { context: "syncing the database directory", source })?;
        }
        let store = Self { db: Arc::new(db), file, options, undurable_bytes: Arc::new(AtomicU64::new(0)) };
        store.check_engine_format()?;
        Ok(store)
    }

    /// Records the engine format in a new database and refuses one it cannot read.
    fn check_engine_format(&self) -> Result<(), StorageError> {
        let found = {
            let txn = self.db.begin_read().map_err(engine)?;
            match txn.open_table(ENGINE_TABLE) {
                Ok(t) => t.get(ENGINE_FORMAT_KEY).map_err(engine)?.map(|v| v.value()),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(engine(e)),
            }
        };
        match found {
            Some(found) if found > ENGINE_FORMAT => Err(StorageError::FormatTooNew { found, supported: ENGINE_FORMAT }),
            Some(found) if found < ENGINE_FORMAT => Err(StorageError::FormatTooOld { found, supported: ENGINE_FORMAT }),
            Some(_) => Ok(()),
            None => {
                let mut txn = self.db.begin_write().map_err(engine)?;
                txn.set_quick_repair(self.options.quick_repair);
                {
                    txn.open_table(ENGINE_TABLE)
                        .map_err(engine)?
                        .insert(ENGINE_FORMAT_KEY, ENGINE_FORMAT)
                        .map_err(engine)?;
                    // Created here, so that readers of an empty store find the table.
                    txn.open_table(TABLE).map_err(engine)?;
                }
                txn.commit().map_err(engine)
            }
        }
    }

    /// Bytes the database file occupies on disk.
    pub fn size_on_disk_bytes(&self) -> Result<u64, StorageError> {
        std::fs::metadata(&self.file)
            .map(|m| m.len())
            .map_err(|source| StorageError::Io { context: "reading the redb file's length", source })
    }

    fn read_table(&self) -> Result<redb::ReadOnlyTable<&'static [u8], &'static [u8]>, StorageError> {
        self.db.begin_read().map_err(engine)?.open_table(TABLE).map_err(engine)
    }

    /// A durable commit of nothing: makes every earlier commit durable.
    fn commit_durable(&self) -> Result<(), StorageError> {
        let mut txn = self.db.begin_write().map_err(engine)?;
        txn.set_durability(Durability::Immediate);
        txn.set_quick_repair(self.options.quick_repair);
        txn.commit().map_err(engine)
    }
}

fn bounds<'a>(start: &'a [u8], end: Option<&'a [u8]>) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    (Bound::Included(start), end.map_or(Bound::Unbounded, Bound::Excluded))
}

type Guards = (redb::AccessGuard<'static, &'static [u8]>, redb::AccessGuard<'static, &'static [u8]>);

fn owned(item: Result<Guards, redb::StorageError>) -> Result<(Vec<u8>, Vec<u8>), StorageError> {
    let (k, v) = item.map_err(engine)?;
    Ok((k.value().to_vec(), v.value().to_vec()))
}

impl Storage for RedbStorage {
    fn get(&self, key: &[u8]) -> Result<Option<Value>, StorageError> {
        Ok(self.read_table()?.get(key).map_err(engine)?.map(|v| v.value().to_vec()))
    }

    fn range(&self, start: &[u8], end: Option<&[u8]>, direction: Direction) -> RangeIter<'_> {
        if end.is_some_and(|e| e <= start) {
            return Box::new(std::iter::empty());
        }
        let range = self.read_table().and_then(|t| t.range::<&[u8]>(bounds(start, end)).map_err(engine));
        match (range, direction) {
            (Err(e), _) => Box::new(std::iter::once(Err(e))),
            (Ok(r), Direction::Forward) => Box::new(r.map(owned)),
            (Ok(r), Direction::Reverse) => Box::new(r.rev().map(owned)),
        }
    }

    fn write(&self, batch: Batch) -> Result<(), StorageError> {
        if batch.is_empty() {
            return Ok(());
        }
        let bytes = (batch.approximate_bytes() as u64).saturating_add(batch.len() as u64 * REDB_PAGE_BYTES);
        let undurable = self.undurable_bytes.fetch_add(bytes, Ordering::AcqRel).saturating_add(bytes);
        let durable = undurable >= self.options.durable_every_bytes;
        let mut txn = self.db.begin_write().map_err(engine)?;
        if durable {
            txn.set_durability(Durability::Immediate);
            txn.set_quick_repair(self.options.quick_repair);
        } else {
            txn.set_durability(Durability::None);
        }
        {
            let mut table = txn.open_table(TABLE).map_err(engine)?;
            for op in batch.into_ops() {
                match op {
                    BatchOp::Put { key, value } => {
                        table.insert(key.as_slice(), value.as_slice()).map_err(engine)?;
                    }
                    BatchOp::Delete { key } => {
                        table.remove(key.as_slice()).map_err(engine)?;
                    }
                }
            }
        }
        txn.commit().map_err(engine)?;
        if durable {
            self.undurable_bytes.store(0, Ordering::Release);
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.undurable_bytes.store(0, Ordering::Release);
        self.commit_durable()
    }
}
