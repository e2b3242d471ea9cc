//! The persistent compressed prefix tree, stored as versioned pages.
//!
//! The tree is binary (see `keyraft_core::tree` for the hashing rules and the proof format),
//! but it is stored in *pages*: a page holds the nodes of one subtree of [`PAGE_BITS`] levels
//! (a stratum) under one prefix. Pages are persistent (path copying): an epoch writes a new
//! version of every page it changes, and every page records the epoch of the version of each
//! of its child pages, so the tree of any epoch is read from its root page by point reads.
//! A page that changes forces its parent to change (the child's hash is in it), so the
//! parent's pointers are always current. The root page is written every epoch.
//!
//! An epoch's page versions are packed into chunks of about 16 KiB keyed epoch first
//! (`t || epoch || 1 || chunk`), and its root page is kept apart (`t || epoch || 0`); parents
//! point at their children by (epoch, chunk, offset, length). An epoch is then about a
//! thousand keys appended at the end of the keyspace rather than tens of thousands scattered
//! across it: sled charges several microseconds per key written (and the sled engine keeps
//! values this large in its value log, see `keyraft_storage`).
//!
//! Pages make an epoch cheap: applying 10k updates to a million entries writes about 25k
//! pages (19 MB) instead of 130k nodes, and a proof reads about six pages instead of twenty
//! nodes. An epoch is applied as one sorted batch: a single descent from the root touches
//! each affected node once and hashes it once, and rewrites each touched page while it is
//! inside it, encoding the page when it leaves (children first, so a parent is encoded with
//! its children's new locations). The sixteen subtrees under the root page are independent:
//! each writes its own stream of chunks (chunk numbers `stream << 24 | n`), so they are
//! rewritten on all cores and the bytes are the same as on one.

use crate::error::{corrupt, StateError};
use crate::keys;
use keyraft_core::tree::{empty_hash, leaf_hash, node_hash, Terminal, TreeProof};
use keyraft_core::{Digest, Index};
use keyraft_storage::{Batch, Storage};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Levels of the binary tree per page.
pub(crate) const PAGE_BITS: usize = 4;
const _: () = assert!(256 % PAGE_BITS == 0 && PAGE_BITS <= 8);

/// One binary node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Node {
    /// A leaf holding one index and its value.
    Leaf { index: Index, value: Digest },
    /// An interior node with both children's hashes (the empty hash for an empty child).
    Interior { left: Digest, right: Digest },
}

const NODE_LEAF: u8 = 1;
const NODE_INTERIOR: u8 = 2;
const NODE_BYTES: usize = 3 + 64;
const CHILD_BYTES: usize = 1 + 8 + 4 + 4 + 4;

impl Node {
    fn hash(&self, depth: usize) -> Digest {
        match self {
            Node::Leaf { index, value } => leaf_hash(depth as u16, index, value),
            Node::Interior { left, right } => node_hash(left, right),
        }
    }
}

/// The position of a node inside its page: its depth below the page's root and the index
/// bits between the two, left-aligned.
type Slot = (u8, u8);

fn bits(index: &Index, from: usize, count: usize) -> u8 {
    let mut out = 0u8;
    for i in 0..count {
        out |= u8::from(index.bit(from + i)) << (7 - i);
    }
    out
}

fn slot(depth: usize, index: &Index) -> Slot {
    let rel = depth % PAGE_BITS;
    (rel as u8, bits(index, depth - rel, rel))
}

/// Where a page version is stored: inside chunk `chunk` of `epoch`, at `offset`, `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Location {
    epoch: u64,
    chunk: u32,
    offset: u32,
    len: u32,
}

/// Pages of one epoch are packed into chunks of about this many bytes, so that an epoch is a
/// few hundred storage keys instead of tens of thousands (sled charges several microseconds
/// per key), while a proof still reads only small values.
const CHUNK_BYTES_TARGET: usize = 16 * 1024;
/// The largest page: every node slot and every child filled.
const PAGE_BYTES_MAX: usize = 3 + ((1 << PAGE_BITS) - 1) * NODE_BYTES + (1 << PAGE_BITS) * CHILD_BYTES;
/// A chunk is closed once it reaches the target, so it never holds more than this.
const CHUNK_BUFFER_BYTES: usize = CHUNK_BYTES_TARGET + PAGE_BYTES_MAX;

/// Node slots of a page, in (depth, bits) order, without allocation: pages are decoded and
/// encoded tens of thousands of times per epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SlotMap([Option<Node>; (1 << PAGE_BITS) - 1]);

impl Default for SlotMap {
    fn default() -> Self {
        Self([None; (1 << PAGE_BITS) - 1])
    }
}

fn slot_position((rel, bits): Slot) -> Option<usize> {
    let rel = usize::from(rel);
    if rel >= PAGE_BITS || (rel < 8 && u16::from(bits) & (0xff >> rel) != 0) {
        return None;
    }
    Some((1 << rel) - 1 + if rel == 0 { 0 } else { usize::from(bits >> (8 - rel)) })
}

fn position_slot(position: usize) -> Slot {
    let rel = (usize::BITS - (position + 1).leading_zeros() - 1) as usize;
    let offset = position + 1 - (1 << rel);
    (rel as u8, if rel == 0 { 0 } else { (offset << (8 - rel)) as u8 })
}

impl SlotMap {
    fn len(&self) -> usize {
        self.0.iter().flatten().count()
    }

    fn iter(&self) -> impl Iterator<Item = (Slot, &Node)> {
        self.0.iter().enumerate().filter_map(|(p, n)| n.as_ref().map(|n| (position_slot(p), n)))
    }

    fn get(&self, slot: &Slot) -> Option<&Node> {
        self.0.get(slot_position(*slot)?)?.as_ref()
    }

    fn insert(&mut self, slot: Slot, node: Node) -> bool {
        match slot_position(slot) {
            Some(p) => {
                self.0[p] = Some(node);
                true
            }
            None => false,
        }
    }
}

/// Child page versions by the child's [`PAGE_BITS`] index bits (left-aligned).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ChildMap([Option<Location>; 1 << PAGE_BITS]);

impl ChildMap {
    fn len(&self) -> usize {
        self.0.iter().flatten().count()
    }

    fn iter(&self) -> impl Iterator<Item = (u8, &Location)> {
        self.0.iter().enumerate().filter_map(|(i, l)| l.as_ref().map(|l| (((i << (8 - PAGE_BITS)) as u8), l)))
    }

    fn get(&self, nibble: &u8) -> Option<&Location> {
        if nibble & (0xff >> PAGE_BITS) != 0 {
            return None;
        }
        self.0[usize::from(nibble >> (8 - PAGE_BITS))].as_ref()
    }

    fn insert(&mut self, nibble: u8, at: Location) -> bool {
        if nibble & (0xff >> PAGE_BITS) != 0 {
            return false;
        }
        self.0[usize::from(nibble >> (8 - PAGE_BITS))] = Some(at);
        true
    }
}

/// The nodes of one stratum under one prefix, and where its child pages' versions are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Page {
    nodes: SlotMap,
    /// Child page (by its [`PAGE_BITS`] index bits, left-aligned) to its current version.
    children: ChildMap,
}

impl Page {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(3 + self.nodes.len() * NODE_BYTES + self.children.len() * CHILD_BYTES);
        out.extend_from_slice(&(self.nodes.len() as u16).to_be_bytes());
        for ((rel, bits), node) in self.nodes.iter() {
            out.push(rel);
            out.push(bits);
            match node {
                Node::Leaf { index, value } => {
                    out.push(NODE_LEAF);
                    out.extend_from_slice(&index.0);
                    out.extend_from_slice(value);
                }
                Node::Interior { left, right } => {
                    out.push(NODE_INTERIOR);
                    out.extend_from_slice(left);
                    out.extend_from_slice(right);
                }
            }
        }
        out.push(self.children.len() as u8);
        for (nibble, at) in self.children.iter() {
            out.push(nibble);
            out.extend_from_slice(&at.epoch.to_be_bytes());
            out.extend_from_slice(&at.chunk.to_be_bytes());
            out.extend_from_slice(&at.offset.to_be_bytes());
            out.extend_from_slice(&at.len.to_be_bytes());
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, StateError> {
        let count = usize::from(u16::from_be_bytes(
            bytes.get(..2).and_then(|b| b.try_into().ok()).ok_or_else(|| corrupt("tree page header"))?,
        ));
        let nodes_end = 2 + count * NODE_BYTES;
        let children = usize::from(*bytes.get(nodes_end).ok_or_else(|| corrupt("tree page truncated"))?);
        if bytes.len() != nodes_end + 1 + children * CHILD_BYTES {
            return Err(corrupt(format!(
                "tree page of {} bytes for {count} nodes and {children} children",
                bytes.len()
            )));
        }
        let mut page = Page::default();
        for chunk in bytes[2..nodes_end].chunks_exact(NODE_BYTES) {
            let mut a = [0u8; 32];
            let mut b = [0u8; 32];
            a.copy_from_slice(&chunk[3..35]);
            b.copy_from_slice(&chunk[35..67]);
            let node = match chunk[2] {
                NODE_LEAF => Node::Leaf { index: Index(a), value: b },
                NODE_INTERIOR => Node::Interior { left: a, right: b },
                t => return Err(corrupt(format!("tree node tag {t}"))),
            };
            if !page.nodes.insert((chunk[0], chunk[1]), node) {
                return Err(corrupt("tree node slot outside its page"));
            }
        }
        for c in bytes[nodes_end + 1..].chunks_exact(CHILD_BYTES) {
            let u32_at = |i: usize| c.get(i..i + 4).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes);
            let at = Location {
                epoch: keys::be_u64(&c[1..9]).ok_or_else(|| corrupt("tree page child"))?,
                chunk: u32_at(9).ok_or_else(|| corrupt("tree page child"))?,
                offset: u32_at(13).ok_or_else(|| corrupt("tree page child"))?,
                len: u32_at(17).ok_or_else(|| corrupt("tree page child"))?,
            };
            if !page.children.insert(c[0], at) {
                return Err(corrupt("tree page child position"));
            }
        }
        Ok(page)
    }
}

/// A page's identity: its stratum and the index bits above it (the rest zeroed).
pub type PageId = (u8, [u8; 32]);

const ROOT_PAGE: PageId = (0, [0; 32]);

fn page_id(depth: usize, index: &Index) -> PageId {
    let stratum = depth / PAGE_BITS;
    let mut prefix = index.0;
    keys::mask_after(&mut prefix, stratum * PAGE_BITS);
    (stratum as u8, prefix)
}

/// The parent page of a non-root page and the child's position in it.
fn parent_of(id: &PageId) -> (PageId, u8) {
    let stratum = usize::from(id.0);
    debug_assert!(stratum > 0);
    let parent_bits = (stratum - 1) * PAGE_BITS;
    let mut prefix = id.1;
    keys::mask_after(&mut prefix, parent_bits);
    ((id.0 - 1, prefix), bits(&Index(id.1), parent_bits, PAGE_BITS))
}

/// The key of an epoch's root page: `t || epoch || 0x00`.
fn root_key(epoch: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(10);
    k.push(keys::TREE);
    k.extend_from_slice(&epoch.to_be_bytes());
    k.push(0);
    k
}

/// The key of one of an epoch's page chunks: `t || epoch || 0x01 || chunk (u32)`.
fn chunk_key(epoch: u64, chunk: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(14);
    k.push(keys::TREE);
    k.extend_from_slice(&epoch.to_be_bytes());
    k.push(1);
    k.extend_from_slice(&chunk.to_be_bytes());
    k
}

/// The newest version of every page read or written so far, encoded.
///
/// Applying an epoch reads the newest version of each page it touches. The state machine
/// keeps them in memory (about 90k pages, some 40 MB, per million entries) so that an epoch
/// reads nothing from storage once warm. The cache holds bytes that are in storage, or on
/// their way there: it is filled from reads, and from an epoch's pages once that epoch's batch
/// was written (replicas) or queued to a writer that stops everything if it fails (verifiers,
/// see `verifier::VerifierState::commit`). It never evicts, so a page not in it has not been
/// written since the process started and storage holds its newest version.
#[derive(Debug, Default)]
pub struct PageCache {
    pages: Mutex<HashMap<PageId, Arc<Vec<u8>>>>,
}

impl PageCache {
    fn get(&self, id: &PageId) -> Option<Arc<Vec<u8>>> {
        self.pages.lock().ok()?.get(id).cloned()
    }

    /// Records pages whose batch is now written.
    pub fn commit(&self, written: WrittenPages) {
        if let Ok(mut pages) = self.pages.lock() {
            pages.extend(written);
        }
    }

    /// Forgets everything (after a failed write, when storage and memory may disagree).
    pub fn clear(&self) {
        if let Ok(mut pages) = self.pages.lock() {
            pages.clear();
        }
    }
}

/// Pages written by an epoch, to put into the [`PageCache`] once the batch is written.
pub type WrittenPages = Vec<(PageId, Arc<Vec<u8>>)>;

/// Reads the pages of one tree version (proofs and roots of past epochs).
struct Pages<'a> {
    store: &'a dyn Storage,
    /// The epoch of the root page version to read (`None`: the tree is empty).
    root_epoch: Option<u64>,
    loaded: HashMap<PageId, Page>,
    /// Chunks read so far (a proof often finds several pages in one chunk).
    chunks: HashMap<(u64, u32), Vec<u8>>,
}

impl<'a> Pages<'a> {
    fn new(store: &'a dyn Storage, root_epoch: Option<u64>) -> Self {
        Self { store, root_epoch, loaded: HashMap::new(), chunks: HashMap::new() }
    }

    fn load(&mut self, id: PageId) -> Result<(), StateError> {
        if self.loaded.contains_key(&id) {
            return Ok(());
        }
        let page = if id == ROOT_PAGE {
            match self.root_epoch {
                None => Page::default(),
                Some(epoch) => read_root(self.store, epoch)?,
            }
        } else {
            let (parent, nibble) = parent_of(&id);
            self.load(parent)?;
            match self.loaded.get(&parent).and_then(|p| p.children.get(&nibble).copied()) {
                None => Page::default(),
                Some(at) => Page::decode(read_location(self.store, &mut self.chunks, at)?)?,
            }
        };
        self.loaded.insert(id, page);
        Ok(())
    }

    fn read(&mut self, depth: usize, index: &Index) -> Result<Option<Node>, StateError> {
        if depth >= 256 {
            return Ok(None);
        }
        let id = page_id(depth, index);
        self.load(id)?;
        Ok(self.loaded.get(&id).ok_or_else(|| corrupt("page cache"))?.nodes.get(&slot(depth, index)).copied())
    }

    fn read_existing(&mut self, depth: usize, index: &Index) -> Result<Node, StateError> {
        self.read(depth, index)?.ok_or_else(|| {
            corrupt(format!("interior node at depth {} points to a missing child", depth.saturating_sub(1)))
        })
    }
}

fn read_root(store: &dyn Storage, epoch: u64) -> Result<Page, StateError> {
    let bytes =
        store.get(&root_key(epoch))?.ok_or_else(|| corrupt(format!("root page of epoch {epoch} is missing")))?;
    Page::decode(&bytes)
}

/// The bytes of the page version at `at`, reading its chunk unless `chunks` has it.
fn read_location<'c>(
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
const STREAMS: usize = 1 << PAGE_BITS;
const _: () = assert!(STREAMS <= 1 << (32 - STREAM_SHIFT));

/// The pages of one subtree under the root page, packed into chunks in the order they were
/// finished: children before their parent, so a parent is encoded with its children's new
/// locations.
#[derive(Debug)]
struct ChunkStream {
    epoch: u64,
    stream: u32,
    count: u32,
    chunk: Vec<u8>,
    full: Vec<(u32, Vec<u8>)>,
    written: WrittenPages,
}

impl ChunkStream {
    fn new(epoch: u64, stream: usize) -> Self {
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
    fn emit(&mut self, id: PageId, page: &Page) -> Location {
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

    fn finish(mut self, batch: &mut Batch, written: &mut WrittenPages) {
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

/// Rewrites the newest tree into the page versions of one epoch.
struct Descent<'a> {
    store: &'a dyn Storage,
    cache: &'a PageCache,
    epoch: u64,
    /// Chunks read so far (pages missing from the cache after a restart).
    chunks: HashMap<(u64, u32), Vec<u8>>,
    out: ChunkStream,
    /// Streams of the subtrees under the root page rewritten so far, in index order.
    finished: Vec<ChunkStream>,
    /// Subtrees under the root page already rewritten (on other threads): their new hash and
    /// location, by their index bits.
    done: [Option<(Digest, Location)>; STREAMS],
}

impl<'a> Descent<'a> {
    fn new(store: &'a dyn Storage, cache: &'a PageCache, epoch: u64, stream: usize) -> Self {
        Self {
            store,
            cache,
            epoch,
            chunks: HashMap::new(),
            out: ChunkStream::new(epoch, stream),
            finished: Vec::new(),
            done: [None; STREAMS],
        }
    }

    /// The newest version of page `id`, stored at `at` if not cached (`None`: a new page).
    fn load(&mut self, id: &PageId, at: Option<Location>) -> Result<Page, StateError> {
        if let Some(bytes) = self.cache.get(id) {
            return Page::decode(&bytes);
        }
        match at {
            None => Ok(Page::default()),
            Some(at) => Page::decode(read_location(self.store, &mut self.chunks, at)?),
        }
    }

    /// Runs `f` on the child page of `parent` holding the node at `depth` (a page boundary)
    /// on the path of `index`, then emits that page and points `parent` at its new version.
    fn in_child_page(
        &mut self,
        parent: &mut Page,
        depth: usize,
        index: &Index,
        f: impl FnOnce(&mut Self, &mut Page) -> Result<Digest, StateError>,
    ) -> Result<Digest, StateError> {
        debug_assert!(depth.is_multiple_of(PAGE_BITS) && depth > 0);
        let nibble = bits(index, depth - PAGE_BITS, PAGE_BITS);
        if depth > PAGE_BITS {
            return self.rewrite_child(parent, depth, index, nibble, f);
        }
        let stream = usize::from(nibble >> (8 - PAGE_BITS));
        if let Some((hash, at)) = self.done[stream].take() {
            parent.children.insert(nibble, at);
            return Ok(hash);
        }
        let outer = std::mem::replace(&mut self.out, ChunkStream::new(self.epoch, stream));
        let hash = self.rewrite_child(parent, depth, index, nibble, f);
        let finished = std::mem::replace(&mut self.out, outer);
        self.finished.push(finished);
        hash
    }

    fn rewrite_child(
        &mut self,
        parent: &mut Page,
        depth: usize,
        index: &Index,
        nibble: u8,
        f: impl FnOnce(&mut Self, &mut Page) -> Result<Digest, StateError>,
    ) -> Result<Digest, StateError> {
        let id = page_id(depth, index);
        let mut child = self.load(&id, parent.children.get(&nibble).copied())?;
        let hash = f(self, &mut child)?;
        let at = self.out.emit(id, &child);
        if !parent.children.insert(nibble, at) {
            return Err(corrupt("tree page child position"));
        }
        Ok(hash)
    }
}

/// The root hash of the tree as of `epoch` (the empty hash before the first leaf).
pub fn root_at(store: &dyn Storage, epoch: u64) -> Result<Digest, StateError> {
    let root_epoch = root_version(store, epoch)?;
    Ok(Pages::new(store, root_epoch).read(0, &Index([0; 32]))?.map_or_else(empty_hash, |n| n.hash(0)))
}

/// Every applied epoch writes a root page; `None` if `epoch` was never applied.
fn root_version(store: &dyn Storage, epoch: u64) -> Result<Option<u64>, StateError> {
    Ok(store.get(&root_key(epoch))?.map(|_| epoch))
}

/// Builds the inclusion or absence proof for `index` in the tree of `epoch`.
pub fn prove(store: &dyn Storage, epoch: u64, index: &Index) -> Result<TreeProof, StateError> {
    let empty = empty_hash();
    let mut pages = Pages::new(store, root_version(store, epoch)?);
    let mut siblings = Vec::new();
    let mut node = pages.read(0, index)?;
    let mut depth = 0;
    loop {
        match node {
            None => return Ok(TreeProof { terminal: Terminal::Empty, siblings }),
            Some(Node::Leaf { index: leaf, value }) => {
                let terminal =
                    if &leaf == index { Terminal::Leaf { value } } else { Terminal::OtherLeaf { index: leaf, value } };
                return Ok(TreeProof { terminal, siblings });
            }
            Some(Node::Interior { left, right }) => {
                let (next, sibling) = if index.bit(depth) { (right, left) } else { (left, right) };
                siblings.push((sibling != empty).then_some(sibling));
                depth += 1;
                if depth >= 256 {
                    return Err(corrupt("interior node at the deepest level"));
                }
                node = if next == empty { None } else { Some(pages.read_existing(depth, index)?) };
            }
        }
    }
}

/// Applies `updates` (sorted strictly by index) as epoch `epoch` on top of the tree of
/// `previous` (the last applied epoch, `None` for the first), writing the new page versions
/// into `batch`. Returns the new root and the pages to [`PageCache::commit`] once the batch
/// is written.
///
/// One descent from the root touches each affected node once and hashes it once. Each page is
/// rewritten as a whole while the descent is inside it and emitted when the descent leaves it,
/// so every page is encoded once, after its children (whose new locations it records). With
/// several cores and a full root page, the subtrees under the root page are rewritten on
/// separate threads; the bytes written are the same either way.
pub fn apply_epoch(
    store: &dyn Storage,
    cache: &PageCache,
    previous: Option<u64>,
    epoch: u64,
    updates: &[(Index, Digest)],
    batch: &mut Batch,
) -> Result<(Digest, WrittenPages), StateError> {
    apply_epoch_with(store, cache, previous, epoch, updates, batch, threads())
}

/// Threads that rewrite subtrees: one per core, and no more than there are subtrees.
fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get).min(STREAMS)
}

/// Below this many updates an epoch is rewritten on one thread: spawning costs more.
const PARALLEL_UPDATES_MIN: usize = 512;

pub(crate) fn apply_epoch_with(
    store: &dyn Storage,
    cache: &PageCache,
    previous: Option<u64>,
    epoch: u64,
    updates: &[(Index, Digest)],
    batch: &mut Batch,
    threads: usize,
) -> Result<(Digest, WrittenPages), StateError> {
    assert!(updates.windows(2).all(|w| w[0].0 < w[1].0), "epoch updates must be sorted and distinct");
    assert!(previous.is_none_or(|p| p < epoch), "epochs are applied in increasing order");
    let mut root = match cache.get(&ROOT_PAGE) {
        Some(bytes) => Page::decode(&bytes)?,
        None => match previous {
            None => Page::default(),
            Some(previous) => read_root(store, previous)?,
        },
    };
    let mut d = Descent::new(store, cache, epoch, 0);
    if threads > 1 && updates.len() >= PARALLEL_UPDATES_MIN {
        if let Some(subtrees) = rewrite_subtrees(store, cache, epoch, &root, updates, threads)? {
            for (stream, (hash, at, out)) in subtrees {
                d.done[stream] = Some((hash, at));
                d.finished.push(out);
            }
        }
    }
    let current = root.nodes.get(&(0, 0)).copied();
    let hash = update(&mut d, &mut root, 0, 0, current, updates)?;
    debug_assert!(d.done.iter().all(Option::is_none), "every subtree rewritten ahead was used");
    let mut written = Vec::new();
    d.finished.sort_by_key(|s| s.stream);
    for stream in d.finished {
        stream.finish(batch, &mut written);
    }
    assert!(d.out.full.is_empty() && d.out.chunk.is_empty(), "only subtrees write chunks");
    let bytes = root.encode();
    batch.put(root_key(epoch), bytes.clone());
    written.push((ROOT_PAGE, Arc::new(bytes)));
    Ok((hash, written))
}

/// A subtree under the root page rewritten ahead: its new root hash, the location of its new
/// top page and the chunks holding its pages.
type Subtree = (Digest, Location, ChunkStream);

/// Rewrites the subtrees under the root page on `threads` threads, if the root page is full
/// (every node in it interior, so that every update descends into the subtree named by its
/// first index bits and nothing in the root page moves down). `None` when it is not.
fn rewrite_subtrees(
    store: &dyn Storage,
    cache: &PageCache,
    epoch: u64,
    root: &Page,
    updates: &[(Index, Digest)],
    threads: usize,
) -> Result<Option<Vec<(usize, Subtree)>>, StateError> {
    if root.nodes.0.iter().any(|n| !matches!(n, Some(Node::Interior { .. }))) {
        return Ok(None);
    }
    let mut tasks = Vec::new();
    let mut rest = updates;
    for stream in 0..STREAMS {
        let nibble = (stream << (8 - PAGE_BITS)) as u8;
        let split = rest.partition_point(|(i, _)| bits(i, 0, PAGE_BITS) == nibble);
        let (group, tail) = rest.split_at(split);
        rest = tail;
        if group.is_empty() {
            continue;
        }
        // The hash of the subtree as the root page's deepest node records it.
        let parent = (PAGE_BITS as u8 - 1, nibble & !(0x80 >> (PAGE_BITS - 1)));
        let Some(Node::Interior { left, right }) = root.nodes.get(&parent).copied() else {
            return Err(corrupt("full root page without its deepest node"));
        };
        let hash = if group[0].0.bit(PAGE_BITS - 1) { right } else { left };
        tasks.push((stream, nibble, hash, group));
    }
    assert!(rest.is_empty(), "updates are sorted");
    let next = std::sync::atomic::AtomicUsize::new(0);
    let run = || -> Result<Vec<(usize, Subtree)>, StateError> {
        let mut out = Vec::new();
        loop {
            let t = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(&(stream, nibble, hash, group)) = tasks.get(t) else { return Ok(out) };
            let mut d = Descent::new(store, cache, epoch, stream);
            let id = page_id(PAGE_BITS, &group[0].0);
            let mut page = d.load(&id, root.children.get(&nibble).copied())?;
            let hash = child(&mut d, &mut page, PAGE_BITS, PAGE_BITS, hash, group)?;
            let at = d.out.emit(id, &page);
            assert!(d.finished.is_empty(), "a subtree does not reach the root page");
            out.push((stream, (hash, at, d.out)));
        }
    };
    let results: Vec<Result<Vec<(usize, Subtree)>, StateError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads.min(tasks.len())).map(|_| scope.spawn(run)).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    });
    let mut subtrees = Vec::with_capacity(tasks.len());
    for r in results {
        subtrees.extend(r?);
    }
    subtrees.sort_by_key(|(stream, _)| *stream);
    Ok(Some(subtrees))
}

/// Writes `node` at `depth` on the path of `index` into `page` (which starts at `start`).
fn write(page: &mut Page, start: usize, depth: usize, index: &Index, node: Node) -> Result<Digest, StateError> {
    debug_assert!(depth >= start && depth < start + PAGE_BITS);
    if !page.nodes.insert(slot(depth, index), node) {
        return Err(corrupt("tree node slot outside its page"));
    }
    Ok(node.hash(depth))
}

/// Rewrites the subtree at `depth` on the path of `updates[0]` (all updates share that path
/// down to `depth`), whose current content is `current`, and returns its new hash. The node
/// at `depth` is in `page`, which starts at `start`.
fn update(
    d: &mut Descent<'_>,
    page: &mut Page,
    start: usize,
    depth: usize,
    current: Option<Node>,
    updates: &[(Index, Digest)],
) -> Result<Digest, StateError> {
    let Some(first) = updates.first() else {
        return Ok(current.map_or_else(empty_hash, |n| n.hash(depth)));
    };
    match current {
        None => build(d, page, start, depth, updates),
        Some(Node::Leaf { index, value }) => {
            if updates.len() == 1 && first.0 == index {
                return write(page, start, depth, &index, Node::Leaf { index, value: updates[0].1 });
            }
            // The existing leaf moves down next to the new ones, unless it is replaced.
            let mut merged = updates.to_vec();
            if let Err(pos) = merged.binary_search_by(|(i, _)| i.cmp(&index)) {
                merged.insert(pos, (index, value));
            }
            build(d, page, start, depth, &merged)
        }
        Some(Node::Interior { left, right }) => {
            let split = updates.partition_point(|(i, _)| !i.bit(depth));
            let (lu, ru) = updates.split_at(split);
            let new_left = if lu.is_empty() { left } else { child(d, page, start, depth + 1, left, lu)? };
            let new_right = if ru.is_empty() { right } else { child(d, page, start, depth + 1, right, ru)? };
            write(page, start, depth, &first.0, Node::Interior { left: new_left, right: new_right })
        }
    }
}

/// [`update`] for the child at `depth` whose hash is `hash`, in `page` (which starts at
/// `start`) or, at the page's lower boundary, as the top node of a child page.
fn child(
    d: &mut Descent<'_>,
    page: &mut Page,
    start: usize,
    depth: usize,
    hash: Digest,
    updates: &[(Index, Digest)],
) -> Result<Digest, StateError> {
    let exists = hash != empty_hash();
    if depth == start + PAGE_BITS {
        if depth >= 256 {
            return Err(corrupt("interior node at the deepest level"));
        }
        return d.in_child_page(page, depth, &updates[0].0, |d, below| child(d, below, depth, depth, hash, updates));
    }
    let node = if exists {
        Some(
            page.nodes
                .get(&slot(depth, &updates[0].0))
                .copied()
                .ok_or_else(|| corrupt(format!("interior node at depth {} points to a missing child", depth - 1)))?,
        )
    } else {
        None
    };
    update(d, page, start, depth, node, updates)
}

/// Builds a fresh subtree holding exactly `leaves` at `depth`.
fn build(
    d: &mut Descent<'_>,
    page: &mut Page,
    start: usize,
    depth: usize,
    leaves: &[(Index, Digest)],
) -> Result<Digest, StateError> {
    if leaves.is_empty() {
        return Ok(empty_hash());
    }
    if depth == start + PAGE_BITS {
        return d.in_child_page(page, depth, &leaves[0].0, |d, child| build(d, child, depth, depth, leaves));
    }
    match leaves {
        [(index, value)] => write(page, start, depth, index, Node::Leaf { index: *index, value: *value }),
        _ => {
            if depth >= 255 {
                return Err(corrupt("two distinct indexes share 255 bits"));
            }
            let split = leaves.partition_point(|(i, _)| !i.bit(depth));
            let (l, r) = leaves.split_at(split);
            let left = build(d, page, start, depth + 1, l)?;
            let right = build(d, page, start, depth + 1, r)?;
            write(page, start, depth, &leaves[0].0, Node::Interior { left, right })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_and_children_agree() {
        let index = Index([0b1011_0110; 32]);
        let child = page_id(9, &index);
        assert_eq!(child.0, 2);
        let (parent, nibble) = parent_of(&child);
        assert_eq!(parent, page_id(5, &index));
        assert_eq!(nibble, 0b0110_0000);
        assert_eq!(parent_of(&page_id(4, &index)), (ROOT_PAGE, 0b1011_0000));
    }

    #[test]
    fn slots_and_pages_partition_the_path() {
        let index = Index([0b1011_0110; 32]);
        assert_eq!(slot(0, &index), (0, 0));
        assert_eq!(slot(3, &index), (3, 0b1010_0000));
        assert_eq!(slot(4, &index), (0, 0));
        assert_eq!(slot(6, &index), (2, 0b0100_0000));
        assert_eq!(page_id(5, &index).0, 1);
        assert_eq!(page_id(5, &index).1[0], 0b1011_0000);
        assert_eq!(256 / PAGE_BITS, 64);
    }

    #[test]
    fn slot_positions_round_trip_in_order() {
        let mut last = None;
        for p in 0..(1 << PAGE_BITS) - 1 {
            let slot = position_slot(p);
            assert_eq!(slot_position(slot), Some(p));
            assert!(last < Some(slot), "slot order must match (depth, bits) order");
            last = Some(slot);
        }
        assert_eq!(slot_position((0, 0x80)), None);
        assert_eq!(slot_position((1, 0x40)), None);
        assert_eq!(slot_position((4, 0)), None);
    }

    /// Rewriting subtrees on several threads, or from storage after a restart (cold cache),
    /// writes the same bytes as one warm thread, and the root is the model's.
    #[test]
    fn threads_and_cold_caches_write_identical_epochs() {
        use keyraft_storage::{MemoryStorage, Storage as _};
        use rand::{Rng, SeedableRng};
        use std::collections::BTreeMap;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        // (threads, cold cache)
        let setups = [(1, false), (2, false), (4, true)];
        let stores: Vec<_> = setups.iter().map(|_| (MemoryStorage::new(), PageCache::default())).collect();
        let mut model: BTreeMap<Index, Digest> = BTreeMap::new();
        for epoch in 1..=6u64 {
            let mut updates: BTreeMap<Index, Digest> = BTreeMap::new();
            let fresh = if epoch == 1 { 3_000 } else { 700 };
            for _ in 0..fresh {
                updates.insert(Index(rng.gen()), rng.gen());
            }
            let existing: Vec<Index> = model.keys().copied().collect();
            for _ in 0..(existing.len().min(200)) {
                let old = existing[rng.gen_range(0..existing.len())];
                updates.insert(old, rng.gen());
                // A neighbour sharing a long prefix pushes the old leaf down across pages.
                let mut near = old;
                let bit = rng.gen_range(9..255usize);
                near.0[bit / 8] ^= 0x80 >> (bit % 8);
                updates.insert(near, rng.gen());
            }
            let updates: Vec<(Index, Digest)> = updates.into_iter().collect();
            model.extend(updates.iter().copied());
            let mut results = Vec::new();
            for ((threads, cold), (store, cache)) in setups.iter().zip(&stores) {
                if *cold {
                    cache.clear();
                }
                let mut batch = Batch::new();
                let previous = (epoch > 1).then(|| epoch - 1);
                let (root, written) =
                    apply_epoch_with(store, cache, previous, epoch, &updates, &mut batch, *threads).unwrap();
                results.push((root, batch.clone()));
                store.write(batch).unwrap();
                cache.commit(written);
            }
            assert!(results.windows(2).all(|w| w[0] == w[1]), "epoch {epoch}: setups disagree");
            let leaves: Vec<(Index, Digest)> = model.iter().map(|(i, v)| (*i, *v)).collect();
            assert_eq!(results[0].0, reference_root(0, &leaves), "epoch {epoch}: root differs from the model");
            for (store, _) in &stores {
                assert_eq!(root_at(store, epoch).unwrap(), results[0].0);
            }
        }
        // Every leaf is provable from storage alone, at the last epoch.
        let (store, _) = &stores[2];
        for (index, value) in model.iter().step_by(97) {
            let proof = prove(store, 6, index).unwrap();
            assert_eq!(proof.terminal, Terminal::Leaf { value: *value });
        }
    }

    fn reference_root(depth: usize, leaves: &[(Index, Digest)]) -> Digest {
        match leaves {
            [] => empty_hash(),
            [(i, v)] => leaf_hash(depth as u16, i, v),
            _ => {
                let split = leaves.partition_point(|(i, _)| !i.bit(depth));
                node_hash(&reference_root(depth + 1, &leaves[..split]), &reference_root(depth + 1, &leaves[split..]))
            }
        }
    }

    #[test]
    fn pages_round_trip() {
        let mut p = Page::default();
        p.nodes.insert((0, 0), Node::Interior { left: [1; 32], right: [2; 32] });
        p.nodes.insert((1, 0x80), Node::Leaf { index: Index([3; 32]), value: [4; 32] });
        p.children.insert(0x30, Location { epoch: 7, chunk: 1, offset: 2, len: 3 });
        assert_eq!(Page::decode(&p.encode()).unwrap(), p);
        assert!(Page::decode(&p.encode()[1..]).is_err());
    }
}
