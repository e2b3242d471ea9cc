//! The Raft log on a [`Storage`].
//!
//! Keys (one keyspace per record, big-endian indexes so that key order is log order):
//! - `lv`: the vote; `lc`: the committed log id; `lp`: the last purged log id;
//! - `le` + index (u64 BE): one entry, postcard-encoded.
//!
//! Durability: `save_vote` flushes before it returns. `append` puts the entries in memory
//! (readable at once) and hands the completion callback to one flusher thread, which writes
//! everything appended meanwhile in one storage batch, flushes once, and then completes the
//! callbacks in submission order: appends are acknowledged only once durable, in order, and
//! concurrent appends share one write and one flush (group commit). openraft appends a leader's
//! entries one client write at a time, and a storage batch per entry is what sled does worst
//! (each batch seals its IO buffer and wakes its IO threads). The flusher is joined by
//! [`LogStore::close`] (or once the last clone is dropped); appends after that write and flush
//! in place.
//!
//! Two mutexes: `writes` serialises every write of entries to storage (the flusher, a
//! truncation, a purge, a vote), so a truncation or a purge never interleaves with the
//! flusher writing entries; `pending` covers the entries not yet written and is held only
//! briefly by the flusher (to copy them, and to drop them once written), never across a
//! storage write, so that `append` never waits for one. An entry leaves `pending` only after
//! it is written, so readers see each entry pending or stored, never neither. Truncations and
//! purges scan storage on a blocking thread.

use super::types::{Entry, LogId, NodeId, RaftStorageError, TypeConfig};
use super::{io_err, postcard_err};
use keyraft_storage::{Batch, Direction, Storage, StorageError, ThreadHandle, ThreadSpawner};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, RaftLogReader, Vote};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};

const VOTE: &[u8] = b"lv";
const COMMITTED: &[u8] = b"lc";
const PURGED: &[u8] = b"lp";
const ENTRY: &[u8] = b"le";

fn entry_key(index: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(10);
    k.extend_from_slice(ENTRY);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

fn read_err(e: impl std::fmt::Display) -> RaftStorageError {
    io_err(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn write_err(e: impl std::fmt::Display) -> RaftStorageError {
    io_err(ErrorSubject::Logs, ErrorVerb::Write, e)
}

/// Entries appended but not yet written to storage, by index (postcard-encoded).
type Pending = BTreeMap<u64, Vec<u8>>;

/// The Raft log store. Clones share the store, the pending entries and the flusher.
#[derive(Clone)]
pub struct LogStore {
    store: Arc<dyn Storage>,
    pending: Arc<Mutex<Pending>>,
    writes: Arc<Mutex<()>>,
    flusher: Arc<Flusher>,
    /// Scans and flushes run on the caller's thread, not tokio's blocking pool
    /// ([`ThreadSpawner::none`]).
    in_place: bool,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogStore")
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Moves every pending entry into `batch` (the caller holds the lock and writes the batch).
fn drain_into(pending: &mut Pending, batch: &mut Batch) {
    for (index, bytes) in std::mem::take(pending) {
        batch.put(entry_key(index), bytes);
    }
}

/// The flusher thread's queue and handle, shared by every clone of a log.
struct Flusher {
    /// `None` once closed (or if the thread could not start): appends then flush in place.
    queue: Mutex<Option<mpsc::Sender<LogFlushed<TypeConfig>>>>,
    thread: Mutex<Option<ThreadHandle>>,
}

impl Flusher {
    /// Queues `callback` for the flusher; gives it back when there is no flusher.
    fn submit(&self, callback: LogFlushed<TypeConfig>) -> Result<(), LogFlushed<TypeConfig>> {
        match &*lock(&self.queue) {
            Some(queue) => queue.send(callback).map_err(|mpsc::SendError(callback)| callback),
            None => Err(callback),
        }
    }

    /// Closes the queue and waits for the thread, which first completes what was queued.
    fn close(&self) {
        drop(lock(&self.queue).take());
        let thread = lock(&self.thread).take();
        if let Some(thread) = thread {
            if let Err(panic) = thread.join() {
                tracing::error!(%panic, "the Raft log's flusher thread panicked");
            }
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.close();
    }
}

/// The flusher thread: writes what was appended meanwhile in one batch, flushes once, then
/// acknowledges the appends in order; ends once the queue is closed and empty.
fn flush_appends(
    queue: mpsc::Receiver<LogFlushed<TypeConfig>>,
    store: Arc<dyn Storage>,
    pending: Arc<Mutex<Pending>>,
    writes: Arc<Mutex<()>>,
) {
    while let Ok(first) = queue.recv() {
        let mut waiting = vec![first];
        waiting.extend(queue.try_iter());
        let written = {
            let _writing = lock(&writes);
            // Copied under the lock, written without it: appends go on meanwhile.
            let copied: Pending = lock(&pending).clone();
            let mut batch = Batch::new();
            for (index, bytes) in &copied {
                batch.put(entry_key(*index), bytes.clone());
            }
            let written = if batch.is_empty() { Ok(()) } else { store.write(batch) };
            if written.is_ok() {
                // Only truncations replace entries, and they wait for `writes`.
                let mut pending = lock(&pending);
                for index in copied.keys() {
                    pending.remove(index);
                }
            }
            written
        };
        let result = written.and_then(|()| store.flush());
        for callback in waiting {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            callback.log_io_completed(r);
        }
    }
}

impl LogStore {
    /// A log over `store`, which it must not share keys with anything else, flushed by an
    /// operating-system thread.
    pub fn new(store: Arc<dyn Storage>) -> Self {
        Self::with_threads(store, &ThreadSpawner::default())
    }

    /// [`LogStore::new`], starting the flusher thread with `threads`. The thread is joined by
    /// [`LogStore::close`], or once the last clone is dropped.
    pub fn with_threads(store: Arc<dyn Storage>, threads: &ThreadSpawner) -> Self {
        let (tx, rx) = mpsc::channel::<LogFlushed<TypeConfig>>();
        let pending: Arc<Mutex<Pending>> = Arc::default();
        let writes: Arc<Mutex<()>> = Arc::default();
        let (flush_store, flush_pending, flush_writes) = (store.clone(), pending.clone(), writes.clone());
        let flusher = match threads
            .spawn("keyraft-log-flush", move || flush_appends(rx, flush_store, flush_pending, flush_writes))
        {
            Ok(thread) => Flusher { queue: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)) },
            Err(e) => {
                if !threads.in_place() {
                    tracing::warn!(error = %e, "no log flusher thread: every append flushes on its own");
                }
                Flusher { queue: Mutex::new(None), thread: Mutex::new(None) }
            }
        };
        Self { store, pending, writes, flusher: Arc::new(flusher), in_place: threads.in_place() }
    }

    /// Stops the flusher thread once it has made every queued append durable, and returns
    /// once it has ended. Appends after this flush in place. Idempotent.
    pub fn close(&self) {
        self.flusher.close();
    }

    /// Runs `f` on a blocking thread: storage scans and writes stay off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&LogStore) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        if self.in_place {
            return f(self);
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(|e| StorageError::Engine(format!("log storage task failed: {e}")))?
    }

    fn get_record<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        match self.store.get(key)? {
            None => Ok(None),
            Some(b) => postcard::from_bytes(&b).map(Some).map_err(postcard_err),
        }
    }

    fn last_purged(&self) -> Result<Option<LogId>, StorageError> {
        self.get_record(PURGED)
    }

    fn last_entry(&self) -> Result<Option<Entry>, StorageError> {
        let guard = lock(&self.pending);
        if let Some((_, bytes)) = guard.iter().next_back() {
            return postcard::from_bytes(bytes).map(Some).map_err(postcard_err);
        }
        let end = entry_key(u64::MAX);
        match self.store.range(ENTRY, Some(&end), Direction::Reverse).next().transpose()? {
            None => Ok(None),
            Some((_, v)) => postcard::from_bytes(&v).map(Some).map_err(postcard_err),
        }
    }

    async fn flush_blocking(&self) -> Result<(), StorageError> {
        if self.in_place {
            return self.store.flush();
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.flush())
            .await
            .map_err(|e| StorageError::Engine(format!("flush task failed: {e}")))?
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Some(entry_key(i.saturating_add(1))),
            Bound::Excluded(i) => Some(entry_key(*i)),
            Bound::Unbounded => Some(entry_key(u64::MAX)),
        };
        let guard = lock(&self.pending);
        let mut found: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        for item in self.store.range(&entry_key(start), end.as_deref(), Direction::Forward) {
            let (k, v) = item.map_err(read_err)?;
            let index = k
                .get(2..10)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| read_err("a log key of the wrong length"))?;
            found.insert(index, v);
        }
        let end_index = match range.end_bound() {
            Bound::Included(i) => Bound::Included(*i),
            Bound::Excluded(i) => Bound::Excluded(*i),
            Bound::Unbounded => Bound::Unbounded,
        };
        for (index, bytes) in guard.range((Bound::Included(start), end_index)) {
            found.insert(*index, bytes.clone());
        }
        drop(guard);
        let mut out = Vec::with_capacity(found.len());
        for bytes in found.values() {
            out.push(postcard::from_bytes(bytes).map_err(|e| read_err(postcard_err(e)))?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        let last_purged_log_id = self.last_purged().map_err(read_err)?;
        let last_log_id = match self.last_entry().map_err(read_err)? {
            Some(e) => Some(e.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), RaftStorageError> {
        let err = |e: StorageError| io_err(ErrorSubject::Vote, ErrorVerb::Write, e);
        let mut b = Batch::new();
        {
            // Entries appended before the vote reach storage with it, in order.
            let _writing = lock(&self.writes);
            let mut guard = lock(&self.pending);
            drain_into(&mut guard, &mut b);
            b.put(VOTE, postcard::to_allocvec(vote).map_err(|e| err(postcard_err(e)))?);
            self.store.write(b).map_err(err)?;
        }
        self.flush_blocking().await.map_err(err)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, RaftStorageError> {
        self.get_record(VOTE).map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Read, e))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), RaftStorageError> {
        let mut b = Batch::new();
        b.put(COMMITTED, postcard::to_allocvec(&committed).map_err(|e| write_err(postcard_err(e)))?);
        self.store.write(b).map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, RaftStorageError> {
        Ok(self.get_record::<Option<LogId>>(COMMITTED).map_err(read_err)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut encoded = Vec::new();
        for entry in entries {
            encoded.push((entry.log_id.index, postcard::to_allocvec(&entry).map_err(|e| write_err(postcard_err(e)))?));
        }
        lock(&self.pending).extend(encoded);
        if let Err(callback) = self.flusher.submit(callback) {
            // No flusher (closed, or it never started): write and flush here rather than
            // acknowledge without it.
            let written = self.blocking(|log| {
                let _writing = lock(&log.writes);
                // Held across the write, so that readers see each entry pending or stored.
                let mut guard = lock(&log.pending);
                let mut b = Batch::new();
                drain_into(&mut guard, &mut b);
                if b.is_empty() {
                    Ok(())
                } else {
                    log.store.write(b)
                }
            });
            let r = match written.await {
                Ok(()) => self.flush_blocking().await,
                Err(e) => Err(e),
            };
            callback.log_io_completed(r.map_err(|e| std::io::Error::other(e.to_string())));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        self.blocking(move |log| {
            let _writing = lock(&log.writes);
            // Held across the deletion, so that readers never see truncated entries.
            let mut guard = lock(&log.pending);
            guard.retain(|index, _| *index < log_id.index);
            let mut b = Batch::new();
            for item in log.store.range(&entry_key(log_id.index), Some(&entry_key(u64::MAX)), Direction::Forward) {
                let (k, _) = item?;
                b.delete(k);
            }
            log.store.write(b)
        })
        .await
        .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        let purged = postcard::to_allocvec(&log_id).map_err(|e| write_err(postcard_err(e)))?;
        self.blocking(move |log| {
            let _writing = lock(&log.writes);
            let mut guard = lock(&log.pending);
            guard.retain(|index, _| *index > log_id.index);
            let mut b = Batch::new();
            b.put(PURGED, purged);
            for item in
                log.store.range(&entry_key(0), Some(&entry_key(log_id.index.saturating_add(1))), Direction::Forward)
            {
                let (k, _) = item?;
                b.delete(k);
            }
            log.store.write(b)
        })
        .await
        .map_err(write_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyraft_storage::threads::CountedThreads;
    use keyraft_storage::MemoryStorage;

    #[test]
    fn close_returns_once_the_flusher_thread_has_ended() {
        let threads = CountedThreads::default();
        let log = LogStore::with_threads(Arc::new(MemoryStorage::new()), &threads.spawner());
        let clone = log.clone();
        assert_eq!((threads.started(), threads.running()), (1, 1));
        log.close();
        assert_eq!(threads.running(), 0, "close returned before the flusher thread ended");
        clone.close();
        drop((log, clone));
        assert_eq!(threads.started(), 1);
    }

    #[test]
    fn dropping_the_last_clone_joins_the_flusher_thread() {
        let threads = CountedThreads::default();
        let log = LogStore::with_threads(Arc::new(MemoryStorage::new()), &threads.spawner());
        let clone = log.clone();
        drop(log);
        assert_eq!(threads.running(), 1, "a clone still uses the flusher");
        drop(clone);
        assert_eq!(threads.running(), 0);
    }
}
