//! Where page versions live in storage: the keys of an epoch's root page and chunks, packing
//! an epoch's pages into chunks, and reading a page version back from its location.

use super::cache::WrittenPages;
use super::page::{Location, Page, PageId, PAGE_BITS, PAGE_BYTES_MAX};
use crate::error::{corrupt, StateError};
use crate::keys;
use keyraft_storage::{Batch, Storage};
use std::collections::HashMap;
use std::sync::Arc;

/// Pages of one epoch are packed into chunks of about this many bytes, so that an epoch is a
/// few hundred storage keys instead of tens of thousands (sled charges several microseconds
/// per key), while a proof still reads only small values.
const CHUNK_BYTES_TARGET: usize = 16 * 1024;
/// A chunk is closed once it reaches the target, so it never holds more than this.
const CHUNK_BUFFER_BYTES: usize = CHUNK_BYTES_TARGET + PAGE_BYTES_MAX;

/// The key of an epoch's root page: `t || epoch || 0x00`.
pub(super) fn root_key(epoch: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(10);
    k.push(keys::TREE);
    k.extend_from_slice(&epoch.to_be_bytes());
    k.push(0);
    k
}

/// The byte after the epoch in a chunk's key (a root page's is 0).
pub(super) const CHUNK_TAG: u8 = 1;

/// The key of one of an epoch's page chunks: `t || epoch || 0x01 || chunk (u32)`.
fn chunk_key(epoch: u64, chunk: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(14);
    k.push(keys::TREE);
    k.extend_from_slice(&epoch.to_be_bytes());
    k.push(CHUNK_TAG);
    k.extend_from_slice(&chunk.to_be_bytes());
    k
}

pub(super) fn read_root(store: &dyn Storage, epoch: u64) -> Result<Page, StateError> {
    read_root_if_applied(store, epoch)?.ok_or_else(|| corrupt(format!("root page of epoch {epoch} is missing")))
}

/// The root page of `epoch`; `None` if `epoch` was never applied (every applied epoch writes
/// one).
pub(super) fn read_root_if_applied(store: &dyn Storage, epoch: u64) -> Result<Option<Page>, StateError> {
    store.get(&root_key(epoch))?.map(|bytes| Page::decode_stored(&bytes, 0, epoch)).transpose()
}

/// The bytes of the page version at `at`, reading its chunk unless `chunks` has it.
pub(super) fn read_location<'c>(
    store: &dyn Storage,
    chunks: &'c mut HashMap<(u64, u32), Vec<u8>>,
    at: Location,
) -> Result<&'c [u8], StateError> {
    let chunk = match chunks.entry((at.epoch, at.chunk)) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => e.insert(
            store
                .get(&chunk_key(at.epoch, at.chunk))?
                .ok_or_else(|| corrupt(format!("tree chunk {} of epoch {} is missing", at.chunk, at.epoch)))?,
        ),
    };
    let (start, len) = (at.offset as usize, at.len as usize);
    chunk.get(start..start.saturating_add(len)).ok_or_else(|| corrupt("tree page location outside its chunk"))
}

/// Chunk numbers of an epoch are `class << CLASS_SHIFT | stream << STREAM_SHIFT | n`: each
/// subtree under the root page writes its own streams of chunks, so subtrees can be rewritten
/// independently (on several threads) and still produce the same bytes as one thread would.
const STREAM_SHIFT: u32 = 24;
pub(super) const STREAMS: usize = 1 << PAGE_BITS;
const _: () = assert!(STREAMS <= 1 << (CLASS_SHIFT - STREAM_SHIFT));

/// Within a subtree's streams, pages are packed by stratum, so that the pages of one chunk
/// tend to be replaced together: how often a page is replaced depends mostly on how many
/// leaves are under it, which its stratum sets. A chunk can only be deleted by retention once
/// every page in it is replaced; with the strata mixed, the pages near the root (replaced
/// nearly every epoch) stayed as long as the deep pages packed beside them (replaced every few
/// hundred epochs at a million entries), and retention freed 1 % of the disk at 1M entries
/// (docs/operations.md has the numbers).
const CLASS_SHIFT: u32 = 28;
/// Strata from this one down share a class (a tree that deep has billions of entries).
const CLASSES: usize = 8;
const _: () = assert!(CLASSES <= 1 << (32 - CLASS_SHIFT));

/// The pages of one subtree under the root page, packed into chunks (one open chunk per
/// stratum class) in the order they were finished: children before their parent, so a parent
/// is encoded with its children's new locations.
#[derive(Debug)]
pub(super) struct ChunkStream {
    epoch: u64,
    pub(super) stream: u32,
    count: [u32; CLASSES],
    open: [Vec<u8>; CLASSES],
    full: Vec<(u32, Vec<u8>)>,
    written: WrittenPages,
}

impl ChunkStream {
    pub(super) fn new(epoch: u64, stream: usize) -> Self {
        Self {
            epoch,
            stream: stream as u32,
            count: [0; CLASSES],
            open: std::array::from_fn(|_| Vec::new()),
            full: Vec::new(),
            written: Vec::new(),
        }
    }

    fn number(&self, class: usize) -> u32 {
        assert!(self.count[class] < 1 << STREAM_SHIFT, "an epoch's chunk stream overflowed");
        (class as u32) << CLASS_SHIFT | self.stream << STREAM_SHIFT | self.count[class]
    }

    /// Whether nothing was emitted.
    pub(super) fn is_empty(&self) -> bool {
        self.full.is_empty() && self.open.iter().all(Vec::is_empty)
    }

    /// Appends a finished page version and returns where it is.
    pub(super) fn emit(&mut self, id: PageId, page: &Page) -> Location {
        let class = usize::from(id.0).min(CLASSES - 1);
        let bytes = page.encode_stored(usize::from(id.0), self.epoch);
        let chunk = self.number(class);
        let open = &mut self.open[class];
        if open.capacity() == 0 {
            open.reserve_exact(CHUNK_BUFFER_BYTES);
        }
        let at = Location { epoch: self.epoch, chunk, offset: open.len() as u32, len: bytes.len() as u32 };
        open.extend_from_slice(&bytes);
        self.written.push((id, (self.epoch, Arc::new(page.encode()))));
        if self.open[class].len() >= CHUNK_BYTES_TARGET {
            let chunk = std::mem::take(&mut self.open[class]);
            self.full.push((self.number(class), chunk));
            self.count[class] += 1;
        }
        at
    }

    pub(super) fn finish(mut self, batch: &mut Batch, written: &mut WrittenPages) {
        for class in 0..CLASSES {
            if !self.open[class].is_empty() {
                let chunk = std::mem::take(&mut self.open[class]);
                self.full.push((self.number(class), chunk));
            }
        }
        for (number, chunk) in self.full {
            batch.put(chunk_key(self.epoch, number), chunk);
        }
        written.append(&mut self.written);
    }
}
