//! An in-memory store for tests, which can simulate a crash by dropping unflushed writes.

use crate::{Batch, BatchOp, Direction, Key, RangeIter, Storage, StorageError, Value};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, RwLock};

/// How many pairs a range iterator copies per lock acquisition, so that iterating never
/// holds the lock while the caller works.
const RANGE_PAGE_PAIRS: usize = 256;

#[derive(Debug, Default)]
struct Inner {
    current: BTreeMap<Key, Value>,
    durable: BTreeMap<Key, Value>,
    /// Batches written since the last flush, replayed onto `durable` by the next flush.
    unflushed: Vec<Batch>,
}

/// A `BTreeMap` behind a lock. Clones share the same data.
#[derive(Debug, Default, Clone)]
pub struct MemoryStorage {
    inner: Arc<RwLock<Inner>>,
}

fn poisoned() -> StorageError {
    StorageError::Engine("memory store lock poisoned by a panicking writer".into())
}

fn apply(map: &mut BTreeMap<Key, Value>, batch: &Batch) {
    for op in batch.ops() {
        match op {
            BatchOp::Put { key, value } => {
                map.insert(key.clone(), value.clone());
            }
            BatchOp::Delete { key } => {
                map.remove(key);
            }
        }
    }
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new, independent store holding only what was durable at the last flush, as a
    /// process would find after a crash.
    pub fn crash(&self) -> MemoryStorage {
        let durable = self.inner.read().map(|i| i.durable.clone()).unwrap_or_default();
        MemoryStorage {
            inner: Arc::new(RwLock::new(Inner { current: durable.clone(), durable, unflushed: Vec::new() })),
        }
    }

    /// Every pair, in key order.
    pub fn dump(&self) -> Vec<(Key, Value)> {
        self.inner.read().map(|i| i.current.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default()
    }

    fn page(
        &self,
        lower: Bound<Key>,
        upper: Bound<Key>,
        direction: Direction,
    ) -> Result<Vec<(Key, Value)>, StorageError> {
        let inner = self.inner.read().map_err(|_| poisoned())?;
        if let (Bound::Included(l) | Bound::Excluded(l), Bound::Excluded(u)) = (&lower, &upper) {
            if l >= u {
                return Ok(Vec::new());
            }
        }
        let range = inner.current.range((lower, upper));
        let clone = |(k, v): (&Key, &Value)| (k.clone(), v.clone());
        Ok(match direction {
            Direction::Forward => range.take(RANGE_PAGE_PAIRS).map(clone).collect(),
            Direction::Reverse => range.rev().take(RANGE_PAGE_PAIRS).map(clone).collect(),
        })
    }
}

struct MemoryRange<'a> {
    store: &'a MemoryStorage,
    lower: Bound<Key>,
    upper: Bound<Key>,
    direction: Direction,
    buffer: std::vec::IntoIter<(Key, Value)>,
    done: bool,
}

impl Iterator for MemoryRange<'_> {
    type Item = Result<(Key, Value), StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(pair) = self.buffer.next() {
            return Some(Ok(pair));
        }
        if self.done {
            return None;
        }
        let page = match self.store.page(self.lower.clone(), self.upper.clone(), self.direction) {
            Ok(p) => p,
            Err(e) => {
                self.done = true;
                return Some(Err(e));
            }
        };
        if page.len() < RANGE_PAGE_PAIRS {
            self.done = true;
        }
        if let Some((last, _)) = page.last() {
            // Re-seek after the last key seen, so writes in between cannot repeat or skip keys
            // that were already returned.
            match self.direction {
                Direction::Forward => self.lower = Bound::Excluded(last.clone()),
                Direction::Reverse => self.upper = Bound::Excluded(last.clone()),
            }
        }
        self.buffer = page.into_iter();
        self.buffer.next().map(Ok)
    }
}

impl Storage for MemoryStorage {
    fn get(&self, key: &[u8]) -> Result<Option<Value>, StorageError> {
        Ok(self.inner.read().map_err(|_| poisoned())?.current.get(key).cloned())
    }

    fn range(&self, start: &[u8], end: Option<&[u8]>, direction: Direction) -> RangeIter<'_> {
        Box::new(MemoryRange {
            store: self,
            lower: Bound::Included(start.to_vec()),
            upper: end.map_or(Bound::Unbounded, |e| Bound::Excluded(e.to_vec())),
            direction,
            buffer: Vec::new().into_iter(),
            done: false,
        })
    }

    fn write(&self, batch: Batch) -> Result<(), StorageError> {
        let mut inner = self.inner.write().map_err(|_| poisoned())?;
        apply(&mut inner.current, &batch);
        inner.unflushed.push(batch);
        Ok(())
    }

    fn flush(&self) -> Result<(), StorageError> {
        let mut inner = self.inner.write().map_err(|_| poisoned())?;
        let pending = std::mem::take(&mut inner.unflushed);
        for batch in &pending {
            apply(&mut inner.durable, batch);
        }
        Ok(())
    }
}
