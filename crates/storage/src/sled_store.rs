//! The sled engine (0.34.7): one database, one tree, keyspaces by key prefix, so that one
//! `apply_batch` is atomic across everything a step writes; large values in a value log
//! beside it.
//!
//! ## The value log
//!
//! sled is slow at large values: its leaf nodes hold up to 16 items and are rewritten whole
//! when they consolidate, so a node of 16 KiB values is written several times over, as a blob
//! file of its own once it passes 128 KiB. Closing an epoch of 10k updates on a million-entry
//! tree writes some 18 MB of tree chunks; through sled that took 250-500 ms on a 2-core VM.
//! So values of at least [`VALUE_LOG_MIN_BYTES`] (see [`SledOptions`]) are appended to `values.log` in the database
//! directory and sled stores a 17-byte pointer to them (WiscKey's separation of keys and
//! values). Writing them is a `pwrite` each and one `fdatasync` per batch.
//!
//! Every value in the sled tree starts with a tag byte:
//! - `0x00` + the value (inline);
//! - `0x01` + offset (u64 BE) + length (u32 BE) + CRC-32 of the value (u32 BE): the value is
//!   at that offset of `values.log`.
//!
//! A batch's large values are appended and synced *before* the batch goes to sled, so a
//! pointer never reaches the disk ahead of its bytes. A crash between the two leaves
//! unreferenced bytes at the end of the log; they are never read, and appends continue after
//! them. The log is never compacted or rewritten: keyraft's large values are tree chunks,
//! written once and never overwritten. They are deleted only by retention (`keyraft_state`'s
//! pruning of past epochs' trees), and the space of a deleted value is given back to the file
//! system by punching a hole over its bytes (`fallocate(PUNCH_HOLE)`; the file keeps its length
//! and its offsets). A hole is punched only once the deletion is durable: [`SledStorage::flush`]
//! punches the holes of the deletions written before it began, after sled's own flush, so no
//! durable pointer ever points into a hole. A crash in between leaves the bytes in place (space
//! not given back, never a pointer to zeroes). Overwriting a logged value (keyraft never does)
//! would leave its old bytes in the log.
//!
//! The engine format is recorded in sled's default tree (`keyraft-engine-format`, u32 BE), out
//! of sight of the store's keys. Format 1 (before the value log) kept untagged values in the
//! tree `keyraft`; opening such a database copies them into the tree `keyraft.2`, flushes,
//! records format 2 and drops the old tree, so a crash at any point redoes or finishes the
//! copy.
//!
//! Durability caveat: on Linux sled's flush uses `sync_file_range`, not `fsync`
//! (spacejam/sled#1452). A process crash loses nothing that was flushed; a power loss on a
//! disk with a volatile write cache might. Run replicas on storage with power-loss protection,
//! and keep them on independent power so that losing a minority is all that can happen.

use crate::{Batch, BatchOp, Direction, KeyIter, RangeIter, Storage, StorageError, Value};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The most keys a sled batch should carry ([`Storage::batch_keys_preferred_max`]).
pub const SLED_BATCH_KEYS_PREFERRED_MAX: usize = 2048;

/// Values of at least this many bytes go to the value log, by default.
pub const VALUE_LOG_MIN_BYTES: usize = 4096;

const ENGINE_FORMAT_KEY: &[u8] = b"keyraft-engine-format";
/// In sled's default tree: how far the value log had been written (and synced) when the last
/// batch with logged values was written; a log found shorter at open was cut.
const VALUE_LOG_END_KEY: &[u8] = b"keyraft-value-log-end";
const ENGINE_FORMAT: u32 = 2;
const LEGACY_TREE: &str = "keyraft";
const TREE: &str = "keyraft.2";
const VALUE_LOG_FILE: &str = "values.log";
/// Legacy values are copied in batches of about this many bytes.
const MIGRATION_BATCH_BYTES: usize = 4 * 1024 * 1024;

const TAG_INLINE: u8 = 0;
const TAG_LOGGED: u8 = 1;
const POINTER_BYTES: usize = 1 + 8 + 4 + 4;

/// Tuning knobs for sled.
#[derive(Debug, Clone, Copy)]
pub struct SledOptions {
    /// Page cache size, in bytes.
    pub cache_capacity_bytes: u64,
    /// Values of at least this many bytes go to the value log; `None` keeps every new value in
    /// sled. The value log never reclaims space, so use it for stores whose large values are
    /// written once and kept (the state: tree chunks), not for stores that delete them (the
    /// Raft log, purged behind snapshots).
    pub value_log_min_bytes: Option<usize>,
}

impl Default for SledOptions {
    fn default() -> Self {
        Self { cache_capacity_bytes: 128 * 1024 * 1024, value_log_min_bytes: Some(VALUE_LOG_MIN_BYTES) }
    }
}

/// Set once a write or flush of a sled database of this process failed on I/O (a full or
/// failed disk). From then on no database of the process is closed: see [`KeepOpenOnFailure`].
static DISK_FAILED: AtomicBool = AtomicBool::new(false);

fn noting_disk_failure<T>(result: Result<T, StorageError>) -> Result<T, StorageError> {
    if let Err(StorageError::Io { .. }) = &result {
        DISK_FAILED.store(true, Ordering::Release);
    }
    result
}

/// Handles on a database, dropped with the last clone of its [`SledStorage`], unless a disk
/// failed: then they are leaked and the database stays open until the process exits. sled's
/// `Drop for Log` unwraps `sync_all()` unless that very database met the error, and a replica
/// has two databases on its disk (the Raft log and the state): the one that had not met it
/// panicked on the way out of a replica stopping on a read-only disk (found by the chaos run,
/// `crates/storage/tests/disk_failure.rs`). Leaking loses nothing: what was flushed is on the
/// disk, and a sync on a failed disk fails anyway.
#[derive(Debug)]
struct KeepOpenOnFailure {
    db: Option<sled::Db>,
    tree: Option<sled::Tree>,
}

impl Drop for KeepOpenOnFailure {
    fn drop(&mut self) {
        if DISK_FAILED.load(Ordering::Acquire) {
            std::mem::forget(self.db.take());
            std::mem::forget(self.tree.take());
        }
    }
}

/// A store in a sled database directory. Clones share the database.
#[derive(Debug, Clone)]
pub struct SledStorage {
    db: sled::Db,
    tree: sled::Tree,
    _keep: Arc<KeepOpenOnFailure>,
    values: Arc<ValueLog>,
    /// Values at least this long are appended to the value log.
    value_log_min_bytes: usize,
}

/// The append-only file of large values.
#[derive(Debug)]
struct ValueLog {
    file: File,
    /// Where the next append goes (the file's length). Pointers in sled are always below it.
    end: AtomicU64,
    /// Serialises writers, so that appends and the batches pointing at them are in one order.
    writer: Mutex<()>,
    /// Byte ranges (offset, length) of values whose deletion is written but not yet flushed:
    /// their holes are punched by the next flush.
    deleted: Mutex<Vec<(u64, u32)>>,
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

fn tagged(value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + value.len());
    v.push(TAG_INLINE);
    v.extend_from_slice(value);
    v
}

impl SledStorage {
    /// Opens (or creates) the database in `path` with default options.
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        Self::open_with(path, SledOptions::default())
    }

    /// Opens (or creates) the database in `path`, migrating an older engine format.
    pub fn open_with(path: &Path, options: SledOptions) -> Result<Self, StorageError> {
        let db = open_waiting_for_lock(path, options)?;
        let has_legacy = db.tree_names().iter().any(|n| n == LEGACY_TREE.as_bytes());
        match db.get(ENGINE_FORMAT_KEY).map_err(engine)? {
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_ref()).map(u32::from_be_bytes).map_err(|_| {
                    StorageError::Corrupt { what: format!("engine format is {} bytes, expected 4", v.len()) }
                })?;
                if found > ENGINE_FORMAT {
                    return Err(StorageError::FormatTooNew { found, supported: ENGINE_FORMAT });
                }
                if found < ENGINE_FORMAT {
                    return Err(StorageError::FormatTooOld { found, supported: ENGINE_FORMAT });
                }
            }
            None => {
                if has_legacy {
                    migrate_legacy(&db)?;
                }
                db.insert(ENGINE_FORMAT_KEY, &ENGINE_FORMAT.to_be_bytes()).map_err(engine)?;
                db.flush().map_err(engine)?;
            }
        }
        if has_legacy {
            db.drop_tree(LEGACY_TREE).map_err(engine)?;
        }
        let tree = db.open_tree(TREE).map_err(engine)?;
        let log_path = path.join(VALUE_LOG_FILE);
        let created = !log_path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&log_path)
            .map_err(|source| StorageError::Io { context: "opening the value log", source })?;
        if created {
            // The file's name must be durable before any pointer into it is.
            File::open(path)
                .and_then(|dir| dir.sync_all())
                .map_err(|source| StorageError::Io { context: "syncing the database directory", source })?;
        }
        let end = file
            .metadata()
            .map_err(|source| StorageError::Io { context: "reading the value log's length", source })?
            .len();
        check_value_log_length(&db, end)?;
        Ok(Self {
            _keep: Arc::new(KeepOpenOnFailure { db: Some(db.clone()), tree: Some(tree.clone()) }),
            db,
            tree,
            values: Arc::new(ValueLog {
                file,
                end: AtomicU64::new(end),
                writer: Mutex::new(()),
                deleted: Mutex::new(Vec::new()),
            }),
            value_log_min_bytes: options.value_log_min_bytes.unwrap_or(usize::MAX),
        })
    }

    /// Bytes the database occupies on disk, value log included.
    pub fn size_on_disk_bytes(&self) -> Result<u64, StorageError> {
        Ok(self.db.size_on_disk().map_err(engine)? + self.values.end.load(Ordering::Acquire))
    }
}

/// Refuses a value log shorter than the end recorded by the last batch that appended to it
/// (a file truncated or replaced from outside): every pointer past its end would fail later,
/// one read at a time, as "corrupt". Stores written before the record existed are not checked.
fn check_value_log_length(db: &sled::Db, len: u64) -> Result<(), StorageError> {
    let Some(v) = db.get(VALUE_LOG_END_KEY).map_err(engine)? else { return Ok(()) };
    let recorded = <[u8; 8]>::try_from(v.as_ref()).map(u64::from_be_bytes).map_err(|_| StorageError::Corrupt {
        what: format!("the value log's recorded end is {} bytes, expected 8", v.len()),
    })?;
    if recorded > len {
        return Err(StorageError::Corrupt {
            what: format!(
                "{VALUE_LOG_FILE} is {len} bytes long, but values were written to it up to byte {recorded}: \
                 the file was cut short or replaced; restore the data directory from a backup (or, on a \
                 replica, remove it and let the replica catch up from its peers)"
            ),
        });
    }
    Ok(())
}

/// How long opening waits for sled's lock on the database directory.
const LOCK_WAIT_MS_MAX: u64 = 5_000;

/// Opens the sled database, waiting while its lock is held: sled releases the lock from its
/// background threads some time after the last handle of the database is dropped, so a
/// database closed and reopened in one process can find it still held for a moment. Another
/// process holding it gets an error after [`LOCK_WAIT_MS_MAX`].
fn open_waiting_for_lock(path: &Path, options: SledOptions) -> Result<sled::Db, StorageError> {
    let started = std::time::Instant::now();
    loop {
        let opened = sled::Config::new()
            .path(path)
            .cache_capacity(options.cache_capacity_bytes)
            .mode(sled::Mode::HighThroughput)
            .open();
        match opened {
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                if started.elapsed() >= std::time::Duration::from_millis(LOCK_WAIT_MS_MAX) {
                    return Err(StorageError::Engine(format!(
                        "{} is in use by another process (or a handle of this one): {e}",
                        path.display()
                    )));
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other.map_err(engine),
        }
    }
}

/// Copies engine format 1 (untagged values in [`LEGACY_TREE`]) into [`TREE`], from scratch
/// each time, so that a crash during the copy is harmless.
fn migrate_legacy(db: &sled::Db) -> Result<(), StorageError> {
    db.drop_tree(TREE).map_err(engine)?;
    let legacy = db.open_tree(LEGACY_TREE).map_err(engine)?;
    let tree = db.open_tree(TREE).map_err(engine)?;
    let mut batch = sled::Batch::default();
    let mut bytes = 0;
    for item in legacy.iter() {
        let (k, v) = item.map_err(engine)?;
        bytes += k.len() + v.len();
        batch.insert(k, tagged(&v));
        if bytes >= MIGRATION_BATCH_BYTES {
            tree.apply_batch(std::mem::take(&mut batch)).map_err(engine)?;
            bytes = 0;
        }
    }
    tree.apply_batch(batch).map_err(engine)?;
    db.flush().map_err(engine)?;
    Ok(())
}

/// The (offset, length) a stored value points to in the value log; `None` for an inline value
/// or one that is not a well-formed pointer (reading it reports that).
fn logged_range(stored: &[u8]) -> Option<(u64, u32)> {
    let (&tag, pointer) = stored.split_first()?;
    if tag != TAG_LOGGED || pointer.len() != POINTER_BYTES - 1 {
        return None;
    }
    let offset = u64::from_be_bytes(pointer[..8].try_into().ok()?);
    let len = u32::from_be_bytes(pointer[8..12].try_into().ok()?);
    Some((offset, len))
}

impl ValueLog {
    /// Gives the space of deleted values back to the file system. The caller has made their
    /// deletions durable.
    fn punch(&self, ranges: &[(u64, u32)]) -> Result<(), StorageError> {
        use nix::fcntl::{fallocate, FallocateFlags};
        use std::os::fd::AsRawFd as _;
        let mode = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        for &(offset, len) in ranges {
            let Ok(at) = i64::try_from(offset) else { continue };
            let len = i64::from(len);
            match fallocate(self.file.as_raw_fd(), mode, at, len) {
                Ok(()) => {}
                // A file system without holes keeps the bytes: retention then saves nothing
                // there, which is no reason to fail.
                Err(nix::errno::Errno::EOPNOTSUPP) => return Ok(()),
                Err(e) => {
                    return Err(StorageError::Io {
                        context: "punching a hole over deleted values in the value log",
                        source: e.into(),
                    })
                }
            }
        }
        Ok(())
    }

    /// The value a stored (tagged) sled value stands for.
    fn resolve(&self, stored: &[u8]) -> Result<Value, StorageError> {
        match stored.split_first() {
            Some((&TAG_INLINE, value)) => Ok(value.to_vec()),
            Some((&TAG_LOGGED, pointer)) if pointer.len() == POINTER_BYTES - 1 => {
                let be32 = |i: usize| u32::from_be_bytes([pointer[i], pointer[i + 1], pointer[i + 2], pointer[i + 3]]);
                let mut offset = [0u8; 8];
                offset.copy_from_slice(&pointer[..8]);
                let offset = u64::from_be_bytes(offset);
                let (len, crc) = (be32(8), be32(12));
                let end = self.end.load(Ordering::Acquire);
                if offset.checked_add(u64::from(len)).is_none_or(|e| e > end) {
                    return Err(StorageError::Corrupt {
                        what: format!("value pointer to {len} bytes at {offset} is past the value log's end ({end})"),
                    });
                }
                let mut value = vec![0u8; len as usize];
                self.file
                    .read_exact_at(&mut value, offset)
                    .map_err(|source| StorageError::Io { context: "reading the value log", source })?;
                if crc32fast::hash(&value) != crc {
                    return Err(StorageError::Corrupt {
                        what: format!("value of {len} bytes at {offset} of the value log fails its checksum"),
                    });
                }
                Ok(value)
            }
            Some((tag, _)) => {
                Err(StorageError::Corrupt { what: format!("stored value with tag {tag} and {} bytes", stored.len()) })
            }
            None => Err(StorageError::Corrupt { what: "stored value without a tag".into() }),
        }
    }
}

impl Storage for SledStorage {
    fn get(&self, key: &[u8]) -> Result<Option<Value>, StorageError> {
        match self.tree.get(key).map_err(engine)? {
            None => Ok(None),
            Some(stored) => self.values.resolve(&stored).map(Some),
        }
    }

    fn range(&self, start: &[u8], end: Option<&[u8]>, direction: Direction) -> RangeIter<'_> {
        if end.is_some_and(|e| e <= start) {
            return Box::new(std::iter::empty());
        }
        let iter = match end {
            Some(e) => self.tree.range(start.to_vec()..e.to_vec()),
            None => self.tree.range(start.to_vec()..),
        };
        let values = Arc::clone(&self.values);
        let map = move |r: sled::Result<(sled::IVec, sled::IVec)>| {
            let (k, v) = r.map_err(engine)?;
            Ok((k.to_vec(), values.resolve(&v)?))
        };
        match direction {
            Direction::Forward => Box::new(iter.map(map)),
            Direction::Reverse => Box::new(iter.rev().map(map)),
        }
    }

    fn write(&self, batch: Batch) -> Result<(), StorageError> {
        noting_disk_failure(self.write_batch(batch))
    }

    /// sled 0.34's memory grows with batch size far beyond its cache (docs/decisions.md,
    /// "Storage": 1.2M small keys took 229 MB in 200-key batches, 2.6 GB in 2,000-key ones).
    fn batch_keys_preferred_max(&self) -> Option<usize> {
        Some(SLED_BATCH_KEYS_PREFERRED_MAX)
    }

    fn flush(&self) -> Result<(), StorageError> {
        noting_disk_failure(self.flush_all())
    }

    fn range_keys(&self, start: &[u8], end: Option<&[u8]>) -> KeyIter<'_> {
        if end.is_some_and(|e| e <= start) {
            return Box::new(std::iter::empty());
        }
        let iter = match end {
            Some(e) => self.tree.range(start.to_vec()..e.to_vec()),
            None => self.tree.range(start.to_vec()..),
        };
        Box::new(iter.map(|r| r.map(|(k, _)| k.to_vec()).map_err(engine)))
    }
}

/// The work of [`Storage::write`] and [`Storage::flush`], whose failures are noted there.
impl SledStorage {
    fn write_batch(&self, batch: Batch) -> Result<(), StorageError> {
        let _writer =
            self.values.writer.lock().map_err(|_| StorageError::Engine("a storage writer panicked".into()))?;
        let base = self.values.end.load(Ordering::Acquire);
        let mut end = base;
        let mut b = sled::Batch::default();
        let mut deleted = Vec::new();
        for op in batch.into_ops() {
            match op {
                BatchOp::Put { key, value } if value.len() >= self.value_log_min_bytes => {
                    let len = u32::try_from(value.len())
                        .map_err(|_| StorageError::Engine(format!("a value of {} bytes is too large", value.len())))?;
                    // Written in place, value by value: gathering them first would copy every
                    // byte once more.
                    self.values
                        .file
                        .write_all_at(&value, end)
                        .map_err(|source| StorageError::Io { context: "appending to the value log", source })?;
                    let mut pointer = Vec::with_capacity(POINTER_BYTES);
                    pointer.push(TAG_LOGGED);
                    pointer.extend_from_slice(&end.to_be_bytes());
                    pointer.extend_from_slice(&len.to_be_bytes());
                    pointer.extend_from_slice(&crc32fast::hash(&value).to_be_bytes());
                    b.insert(key, pointer);
                    end += u64::from(len);
                }
                BatchOp::Put { key, value } => b.insert(key, tagged(&value)),
                BatchOp::Delete { key } => {
                    if let Some(range) = self.tree.get(&key).map_err(engine)?.as_deref().and_then(logged_range) {
                        deleted.push(range);
                    }
                    b.remove(key);
                }
            }
        }
        if end > base {
            // The bytes must be durable before any pointer to them can be.
            self.values
                .file
                .sync_data()
                .map_err(|source| StorageError::Io { context: "syncing the value log", source })?;
            // Before the pointers: sled recovers a prefix of its writes, so any pointer that
            // survives a crash has this record of the log's end beside it.
            self.db.insert(VALUE_LOG_END_KEY, &end.to_be_bytes()).map_err(engine)?;
            self.values.end.store(end, Ordering::Release);
        }
        self.tree.apply_batch(b).map_err(engine)?;
        if !deleted.is_empty() {
            self.values
                .deleted
                .lock()
                .map_err(|_| StorageError::Engine("a storage writer panicked".into()))?
                .append(&mut deleted);
        }
        Ok(())
    }

    fn flush_all(&self) -> Result<(), StorageError> {
        // Only deletions written before sled's flush begins are durable after it.
        let deleted = std::mem::take(
            &mut *self.values.deleted.lock().map_err(|_| StorageError::Engine("a storage writer panicked".into()))?,
        );
        self.db.flush().map_err(engine)?;
        self.values.punch(&deleted)
    }
}
