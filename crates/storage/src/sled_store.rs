//! The sled engine (0.34.7): one database, one tree, keyspaces by key prefix, so that one
//! `apply_batch` is atomic across everything a step writes.
//!
//! Durability caveat: on Linux sled's flush uses `sync_file_range`, not `fsync`
//! (spacejam/sled#1452). A process crash loses nothing that was flushed; a power loss on a
//! disk with a volatile write cache might. Run replicas on storage with power-loss protection,
//! and keep them on independent power so that losing a minority is all that can happen.

use crate::{Batch, BatchOp, Direction, RangeIter, Storage, StorageError, Value};
use std::path::Path;

/// Tuning knobs for sled.
#[derive(Debug, Clone, Copy)]
pub struct SledOptions {
    /// Page cache size, in bytes.
    pub cache_capacity_bytes: u64,
}

impl Default for SledOptions {
    fn default() -> Self {
        Self { cache_capacity_bytes: 128 * 1024 * 1024 }
    }
}

/// A store in a sled database directory. Clones share the database.
#[derive(Debug, Clone)]
pub struct SledStorage {
    db: sled::Db,
    tree: sled::Tree,
}

fn engine(e: sled::Error) -> StorageError {
    match e {
        sled::Error::Io(source) => StorageError::Io { context: "accessing the sled database", source },
        sled::Error::Corruption { at, .. } => {
            StorageError::Corrupt { what: format!("sled reports corruption at {at:?}") }
        }
        other => StorageError::Engine(other.to_string()),
    }
}

impl SledStorage {
    /// Opens (or creates) the database in `path` with default options.
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        Self::open_with(path, SledOptions::default())
    }

    /// Opens (or creates) the database in `path`.
    pub fn open_with(path: &Path, options: SledOptions) -> Result<Self, StorageError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(options.cache_capacity_bytes)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(engine)?;
        let tree = db.open_tree("keyraft").map_err(engine)?;
        Ok(Self { db, tree })
    }

    /// Bytes the database occupies on disk.
    pub fn size_on_disk_bytes(&self) -> Result<u64, StorageError> {
        self.db.size_on_disk().map_err(engine)
    }
}

impl Storage for SledStorage {
    fn get(&self, key: &[u8]) -> Result<Option<Value>, StorageError> {
        Ok(self.tree.get(key).map_err(engine)?.map(|v| v.to_vec()))
    }

    fn range(&self, start: &[u8], end: Option<&[u8]>, direction: Direction) -> RangeIter<'_> {
        if end.is_some_and(|e| e <= start) {
            return Box::new(std::iter::empty());
        }
        let iter = match end {
            Some(e) => self.tree.range(start.to_vec()..e.to_vec()),
            None => self.tree.range(start.to_vec()..),
        };
        let map = |r: sled::Result<(sled::IVec, sled::IVec)>| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(engine);
        match direction {
            Direction::Forward => Box::new(iter.map(map)),
            Direction::Reverse => Box::new(iter.rev().map(map)),
        }
    }

    fn write(&self, batch: Batch) -> Result<(), StorageError> {
        let mut b = sled::Batch::default();
        for op in batch.into_ops() {
            match op {
                BatchOp::Put { key, value } => b.insert(key, value),
                BatchOp::Delete { key } => b.remove(key),
            }
        }
        self.tree.apply_batch(b).map_err(engine)
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.db.flush().map(|_| ()).map_err(engine)
    }
}
