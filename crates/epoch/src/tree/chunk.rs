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
    let bytes =
        store.get(&root_key(epoch))?.ok_or_else(|| corrupt(format!("root page of epoch {epoch} is missing")))?;
    Page::decode(&bytes)
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

/// Chunk numbers of an epoch are `stream << STREAM_SHIFT | n`: each subtree under the root
/// page writes its own stream of chunks, so subtrees can be rewritten independently (on
/// several threads) and still produce the same bytes as one thread would.
const STREAM_SHIFT: u32 = 24;
pub(super) const STREAMS: usize = 1 << PAGE_BITS;
const _: () = assert!(STREAMS <= 1 << (32 - STREAM_SHIFT));

/// The pages of one subtree under the root page, packed into chunks in the order they were
/// finished: children before their parent, so a parent is encoded with its children's new
/// locations.
#[derive(Debug)]
pub(super) struct ChunkStream {
    epoch: u64,
    pub(super) stream: u32,
    count: u32,
    pub(super) chunk: Vec<u8>,
    pub(super) full: Vec<(u32, Vec<u8>)>,
    written: WrittenPages,
}

impl ChunkStream {
    pub(super) fn new(epoch: u64, stream: usize) -> Self {
        Self {
            epoch,
            stream: stream as u32,
            count: 0,
            chunk: Vec::with_capacity(CHUNK_BUFFER_BYTES),
            full: Vec::new(),
            written: Vec::new(),
        }
    }

    fn number(&self) -> u32 {
        assert!(self.count < 1 << STREAM_SHIFT, "an epoch's chunk stream overflowed");
        self.stream << STREAM_SHIFT | self.count
    }

    /// Appends a finished page version and returns where it is.
    pub(super) fn emit(&mut self, id: PageId, page: &Page) -> Location {
        let bytes = page.encode();
        let at = Location {
            epoch: self.epoch,
            chunk: self.number(),
            offset: self.chunk.len() as u32,
            len: bytes.len() as u32,
        };
        self.chunk.extend_from_slice(&bytes);
        self.written.push((id, Arc::new(bytes)));
        if self.chunk.len() >= CHUNK_BYTES_TARGET {
            let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK_BUFFER_BYTES));
            self.full.push((self.number(), chunk));
            self.count += 1;
        }
        at
    }

    pub(super) fn finish(mut self, batch: &mut Batch, written: &mut WrittenPages) {
        if !self.chunk.is_empty() {
            let chunk = std::mem::take(&mut self.chunk);
            self.full.push((self.number(), chunk));
        }
        for (number, chunk) in self.full {
            batch.put(chunk_key(self.epoch, number), chunk);
        }
        written.append(&mut self.written);
    }
}
