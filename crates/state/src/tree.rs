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
//! point at their children by (epoch, chunk, offset, length). An epoch is then a few hundred
//! keys appended at the end of the keyspace rather than tens of thousands scattered across
//! it: sled charges several microseconds per key written.
//!
//! Pages make an epoch cheap: applying 10k updates to a million entries writes about 20k
//! pages instead of 130k nodes, and a proof reads about six pages instead of twenty nodes.
//! An epoch is applied as one sorted batch: a single descent from the root touches each
//! affected node once and hashes it once; each touched page is written once.

use crate::error::{corrupt, StateError};
use crate::keys;
use keyraft_core::tree::{empty_hash, leaf_hash, node_hash, Terminal, TreeProof};
use keyraft_core::{Digest, Index};
use keyraft_storage::{Batch, Storage};
use std::collections::{BTreeSet, HashMap};
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
pub(crate) type PageId = (u8, [u8; 32]);

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
pub(crate) struct PageCache {
    pages: Mutex<HashMap<PageId, Arc<Vec<u8>>>>,
}

impl PageCache {
    fn get(&self, id: &PageId) -> Option<Arc<Vec<u8>>> {
        self.pages.lock().ok()?.get(id).cloned()
    }

    fn insert(&self, id: PageId, bytes: Arc<Vec<u8>>) {
        if let Ok(mut pages) = self.pages.lock() {
            pages.insert(id, bytes);
        }
    }

    /// Records pages whose batch is now written.
    pub(crate) fn commit(&self, written: WrittenPages) {
        if let Ok(mut pages) = self.pages.lock() {
            pages.extend(written);
        }
    }

    /// Forgets everything (after a failed write, when storage and memory may disagree).
    pub(crate) fn clear(&self) {
        if let Ok(mut pages) = self.pages.lock() {
            pages.clear();
        }
    }
}

/// Pages written by an epoch, to put into the [`PageCache`] once the batch is written.
pub(crate) type WrittenPages = Vec<(PageId, Arc<Vec<u8>>)>;

/// Reads the pages of one tree version, caching them, and collects rewritten pages.
struct Pages<'a> {
    store: &'a dyn Storage,
    /// Set when reading the newest tree (to apply an epoch); `None` for historical reads.
    shared: Option<&'a PageCache>,
    /// The epoch of the root page version to read (`None`: the tree is empty).
    root_epoch: Option<u64>,
    loaded: HashMap<PageId, Page>,
    dirty: BTreeSet<PageId>,
    /// Chunks read so far (a proof often finds several pages in one chunk).
    chunks: HashMap<(u64, u32), Vec<u8>>,
}

impl<'a> Pages<'a> {
    fn new(store: &'a dyn Storage, root_epoch: Option<u64>) -> Self {
        Self { store, shared: None, root_epoch, loaded: HashMap::new(), dirty: BTreeSet::new(), chunks: HashMap::new() }
    }

    fn load(&mut self, id: PageId) -> Result<(), StateError> {
        if self.loaded.contains_key(&id) {
            return Ok(());
        }
        if let Some(bytes) = self.shared.and_then(|c| c.get(&id)) {
            self.loaded.insert(id, Page::decode(&bytes)?);
            return Ok(());
        }
        let bytes = if id == ROOT_PAGE {
            match self.root_epoch {
                None => None,
                Some(epoch) => Some(
                    self.store
                        .get(&root_key(epoch))?
                        .ok_or_else(|| corrupt(format!("root page of epoch {epoch} is missing")))?,
                ),
            }
        } else {
            let (parent, nibble) = parent_of(&id);
            self.load(parent)?;
            match self.loaded.get(&parent).and_then(|p| p.children.get(&nibble).copied()) {
                None => None,
                Some(at) => Some(self.read_location(at)?),
            }
        };
        let page = match bytes {
            None => Page::default(),
            Some(bytes) => {
                let page = Page::decode(&bytes)?;
                if let Some(shared) = self.shared {
                    shared.insert(id, Arc::new(bytes));
                }
                page
            }
        };
        self.loaded.insert(id, page);
        Ok(())
    }

    fn read_location(&mut self, at: Location) -> Result<Vec<u8>, StateError> {
        let key = (at.epoch, at.chunk);
        if !self.chunks.contains_key(&key) {
            let chunk = self
                .store
                .get(&chunk_key(at.epoch, at.chunk))?
                .ok_or_else(|| corrupt(format!("tree chunk {} of epoch {} is missing", at.chunk, at.epoch)))?;
            self.chunks.insert(key, chunk);
        }
        let chunk = self.chunks.get(&key).ok_or_else(|| corrupt("chunk cache"))?;
        let (start, len) = (at.offset as usize, at.len as usize);
        chunk.get(start..start + len).map(<[u8]>::to_vec).ok_or_else(|| corrupt("tree page location outside its chunk"))
    }

    fn page(&mut self, id: PageId) -> Result<&mut Page, StateError> {
        self.load(id)?;
        self.loaded.get_mut(&id).ok_or_else(|| corrupt("page cache"))
    }

    fn read(&mut self, depth: usize, index: &Index) -> Result<Option<Node>, StateError> {
        if depth >= 256 {
            return Ok(None);
        }
        let s = slot(depth, index);
        Ok(self.page(page_id(depth, index))?.nodes.get(&s).copied())
    }

    fn read_existing(&mut self, depth: usize, index: &Index) -> Result<Node, StateError> {
        self.read(depth, index)?.ok_or_else(|| {
            corrupt(format!("interior node at depth {} points to a missing child", depth.saturating_sub(1)))
        })
    }

    fn write(&mut self, depth: usize, index: &Index, node: Node) -> Result<Digest, StateError> {
        let id = page_id(depth, index);
        let s = slot(depth, index);
        if !self.page(id)?.nodes.insert(s, node) {
            return Err(corrupt("tree node slot outside its page"));
        }
        self.dirty.insert(id);
        Ok(node.hash(depth))
    }

    /// Writes every dirty page as a version of `epoch`: deepest strata first, packed into
    /// chunks, each parent pointed at its children's new locations before it is encoded; the
    /// root page last, under its own key.
    fn flush_into(mut self, epoch: u64, batch: &mut Batch) -> Result<WrittenPages, StateError> {
        self.load(ROOT_PAGE)?;
        self.dirty.insert(ROOT_PAGE);
        let mut order: Vec<PageId> = self.dirty.iter().copied().collect();
        order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut written = Vec::with_capacity(order.len());
        let mut chunk: Vec<u8> = Vec::with_capacity(CHUNK_BYTES_TARGET * 2);
        let mut chunk_number = 0u32;
        for id in order {
            let bytes = self.loaded.get(&id).ok_or_else(|| corrupt("dirty page not loaded"))?.encode();
            if id == ROOT_PAGE {
                batch.put(root_key(epoch), bytes.clone());
            } else {
                let (parent, nibble) = parent_of(&id);
                if !self.dirty.contains(&parent) {
                    return Err(corrupt("a tree page changed without its parent"));
                }
                let at = Location { epoch, chunk: chunk_number, offset: chunk.len() as u32, len: bytes.len() as u32 };
                chunk.extend_from_slice(&bytes);
                self.loaded
                    .get_mut(&parent)
                    .ok_or_else(|| corrupt("dirty page not loaded"))?
                    .children
                    .insert(nibble, at);
                if chunk.len() >= CHUNK_BYTES_TARGET {
                    batch.put(chunk_key(epoch, chunk_number), std::mem::take(&mut chunk));
                    chunk_number += 1;
                }
            }
            written.push((id, Arc::new(bytes)));
        }
        if !chunk.is_empty() {
            batch.put(chunk_key(epoch, chunk_number), chunk);
        }
        Ok(written)
    }
}

/// The root hash of the tree as of `epoch` (the empty hash before the first leaf).
pub(crate) fn root_at(store: &dyn Storage, epoch: u64) -> Result<Digest, StateError> {
    let root_epoch = root_version(store, epoch)?;
    Ok(Pages::new(store, root_epoch).read(0, &Index([0; 32]))?.map_or_else(empty_hash, |n| n.hash(0)))
}

/// Every applied epoch writes a root page; `None` if `epoch` was never applied.
fn root_version(store: &dyn Storage, epoch: u64) -> Result<Option<u64>, StateError> {
    Ok(store.get(&root_key(epoch))?.map(|_| epoch))
}

/// Builds the inclusion or absence proof for `index` in the tree of `epoch`.
pub(crate) fn prove(store: &dyn Storage, epoch: u64, index: &Index) -> Result<TreeProof, StateError> {
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
pub(crate) fn apply_epoch(
    store: &dyn Storage,
    cache: &PageCache,
    previous: Option<u64>,
    epoch: u64,
    updates: &[(Index, Digest)],
    batch: &mut Batch,
) -> Result<(Digest, WrittenPages), StateError> {
    assert!(updates.windows(2).all(|w| w[0].0 < w[1].0), "epoch updates must be sorted and distinct");
    assert!(previous.is_none_or(|p| p < epoch), "epochs are applied in increasing order");
    let mut pages = Pages::new(store, previous);
    pages.shared = Some(cache);
    // About two pages per update below the shared top of the tree; growing the map while it
    // holds kilobyte-sized pages would copy them over and over.
    pages.loaded.reserve(2 * updates.len() + 300);
    let root = pages.read(0, &Index([0; 32]))?;
    let hash = update(&mut pages, 0, root, updates)?;
    Ok((hash, pages.flush_into(epoch, batch)?))
}

/// Rewrites the subtree at `depth` on the path of `updates[0]` (all updates share that path
/// down to `depth`), whose current content is `current`, and returns its new hash.
fn update(
    pages: &mut Pages<'_>,
    depth: usize,
    current: Option<Node>,
    updates: &[(Index, Digest)],
) -> Result<Digest, StateError> {
    let Some(first) = updates.first() else {
        return Ok(current.map_or_else(empty_hash, |n| n.hash(depth)));
    };
    match current {
        None => build(pages, depth, updates),
        Some(Node::Leaf { index, value }) => {
            if updates.len() == 1 && first.0 == index {
                return pages.write(depth, &index, Node::Leaf { index, value: updates[0].1 });
            }
            // The existing leaf moves down next to the new ones, unless it is replaced.
            let mut merged = updates.to_vec();
            if let Err(pos) = merged.binary_search_by(|(i, _)| i.cmp(&index)) {
                merged.insert(pos, (index, value));
            }
            build(pages, depth, &merged)
        }
        Some(Node::Interior { left, right }) => {
            let split = updates.partition_point(|(i, _)| !i.bit(depth));
            let (lu, ru) = updates.split_at(split);
            let new_left = if lu.is_empty() { left } else { update_child(pages, depth + 1, left, lu)? };
            let new_right = if ru.is_empty() { right } else { update_child(pages, depth + 1, right, ru)? };
            pages.write(depth, &first.0, Node::Interior { left: new_left, right: new_right })
        }
    }
}

fn update_child(
    pages: &mut Pages<'_>,
    depth: usize,
    hash: Digest,
    updates: &[(Index, Digest)],
) -> Result<Digest, StateError> {
    let child = if hash == empty_hash() { None } else { Some(pages.read_existing(depth, &updates[0].0)?) };
    update(pages, depth, child, updates)
}

/// Builds a fresh subtree holding exactly `leaves` at `depth`.
fn build(pages: &mut Pages<'_>, depth: usize, leaves: &[(Index, Digest)]) -> Result<Digest, StateError> {
    match leaves {
        [] => Ok(empty_hash()),
        [(index, value)] => pages.write(depth, index, Node::Leaf { index: *index, value: *value }),
        _ => {
            if depth >= 255 {
                return Err(corrupt("two distinct indexes share 255 bits"));
            }
            let split = leaves.partition_point(|(i, _)| !i.bit(depth));
            let (l, r) = leaves.split_at(split);
            let left = build(pages, depth + 1, l)?;
            let right = build(pages, depth + 1, r)?;
            pages.write(depth, &leaves[0].0, Node::Interior { left, right })
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
