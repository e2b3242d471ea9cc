//! The page: the unit the tree is stored, versioned and cached in.
//!
//! A page holds the nodes of [`PAGE_BITS`] levels (one stratum) under one prefix, and where
//! the current versions of its child pages are. This file names where a node lives (its page
//! and its slot in it) and encodes a page in two layouts.
//!
//! The *expanded* layout spells out every node, interior nodes with both children's hashes.
//! Pages are cached in memory in it, so that applying an epoch decodes a page without hashing:
//!
//! ```text
//! node count (u16)
//!   per node:  depth below the page's root (u8) || index bits (u8, left-aligned)
//!              || 1 || index || value             (a leaf)
//!              || 2 || left hash || right hash    (an interior node)
//! child count (u8)
//!   per child: index bits (u8, left-aligned) || epoch (u64) || chunk (u32) || offset (u32)
//!              || length (u32)
//! ```
//!
//! The *compact* layout is what is stored. It keeps only what cannot be recomputed: the leaves
//! and, for each child page, the hash of the child's top node and where the child is. Every
//! interior node of a page lies on the path to one of its leaves or child pages (the tree is
//! compressed: a subtree with one leaf is that leaf), so the page's shape follows from which
//! slots hold leaves and which children exist, and the interior hashes are rehashed bottom up
//! when the page is read from storage. Half of an expanded page's bytes are those interior
//! hashes; an epoch writes about half the bytes (`docs/benchmarks.md`, "Disk and retention").
//!
//! ```text
//! 1 (the layout tag)
//! leaf mask (u16)      bit 15 - p set: slot position p holds a leaf (positions 0..15 in
//!                      (depth, bits) order: p = 2^depth - 1 + bits; bit 0 is always clear)
//! child mask (u16)     bit 15 - n set: the child page under index bits n (0..16) exists
//! per leaf:            index || value                       (in position order)
//! per child:           top node's hash || epochs back (LEB128: the page's epoch minus the
//!                      child version's epoch) || chunk (u32) || offset (u16) || length (u16)
//!                                                            (in index bits order)
//! ```
//!
//! A stored page starts with its layout tag; the expanded layout starts with the high byte of
//! its node count, which is always 0 (a page has at most 15 nodes), so pages stored before the
//! compact layout existed still read. A page that the compact layout cannot express (a child
//! version too far away to fit, or a page whose shape breaks the rule above) is stored
//! expanded. Integers are big-endian, and nodes and children are written in slot order, so
//! equal pages encode to equal bytes in either layout.

use crate::error::{corrupt, StateError};
use crate::keys;
use keyraft_core::tree::{empty_hash, leaf_hash, node_hash};
use keyraft_core::{Digest, Index};

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

/// The first byte of a stored page: its layout.
const STORED_EXPANDED: u8 = 0;
const STORED_COMPACT: u8 = 1;
/// A compact child without its epochs back: hash, chunk, offset, length.
const COMPACT_CHILD_FIXED_BYTES: usize = 32 + 4 + 2 + 2;
const LEB128_U64_BYTES_MAX: usize = 10;
/// Node slots per page, and the first slot position of a page's deepest level (whose nodes
/// have child pages below them).
const SLOTS: usize = (1 << PAGE_BITS) - 1;
const DEEPEST_FIRST: usize = (1 << (PAGE_BITS - 1)) - 1;
const _: () = assert!(SLOTS < 16, "the leaf mask is a u16 with bit 0 unused");

impl Node {
    pub(super) fn hash(&self, depth: usize) -> Digest {
        match self {
            Node::Leaf { index, value } => leaf_hash(depth as u16, index, value),
            Node::Interior { left, right } => node_hash(left, right),
        }
    }
}

/// The position of a node inside its page: its depth below the page's root and the index
/// bits between the two, left-aligned.
pub(super) type Slot = (u8, u8);

pub(super) fn bits(index: &Index, from: usize, count: usize) -> u8 {
    let mut out = 0u8;
    for i in 0..count {
        out |= u8::from(index.bit(from + i)) << (7 - i);
    }
    out
}

pub(super) fn slot(depth: usize, index: &Index) -> Slot {
    let rel = depth % PAGE_BITS;
    (rel as u8, bits(index, depth - rel, rel))
}

/// Where a page version is stored: inside chunk `chunk` of `epoch`, at `offset`, `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Location {
    pub(super) epoch: u64,
    pub(super) chunk: u32,
    pub(super) offset: u32,
    pub(super) len: u32,
}

/// The largest page: every node slot and every child filled.
pub(super) const PAGE_BYTES_MAX: usize = 3 + ((1 << PAGE_BITS) - 1) * NODE_BYTES + (1 << PAGE_BITS) * CHILD_BYTES;

/// Node slots of a page, in (depth, bits) order, without allocation: pages are decoded and
/// encoded tens of thousands of times per epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SlotMap(pub(super) [Option<Node>; (1 << PAGE_BITS) - 1]);

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

    pub(super) fn get(&self, slot: &Slot) -> Option<&Node> {
        self.0.get(slot_position(*slot)?)?.as_ref()
    }

    pub(super) fn insert(&mut self, slot: Slot, node: Node) -> bool {
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
pub(super) struct ChildMap([Option<Location>; 1 << PAGE_BITS]);

impl ChildMap {
    fn len(&self) -> usize {
        self.0.iter().flatten().count()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (u8, &Location)> {
        self.0.iter().enumerate().filter_map(|(i, l)| l.as_ref().map(|l| (((i << (8 - PAGE_BITS)) as u8), l)))
    }

    pub(super) fn get(&self, nibble: &u8) -> Option<&Location> {
        if nibble & (0xff >> PAGE_BITS) != 0 {
            return None;
        }
        self.0[usize::from(nibble >> (8 - PAGE_BITS))].as_ref()
    }

    pub(super) fn insert(&mut self, nibble: u8, at: Location) -> bool {
        if nibble & (0xff >> PAGE_BITS) != 0 {
            return false;
        }
        self.0[usize::from(nibble >> (8 - PAGE_BITS))] = Some(at);
        true
    }
}

/// The nodes of one stratum under one prefix, and where its child pages' versions are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Page {
    pub(super) nodes: SlotMap,
    /// Child page (by its [`PAGE_BITS`] index bits, left-aligned) to its current version.
    pub(super) children: ChildMap,
}

impl Page {
    pub(super) fn encode(&self) -> Vec<u8> {
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

    pub(super) fn decode(bytes: &[u8]) -> Result<Self, StateError> {
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

impl Page {
    /// The page as stored (in a chunk, or under its epoch's root key), as a page of `stratum`
    /// written in `epoch`: compact when it can be, expanded otherwise.
    pub(super) fn encode_stored(&self, stratum: usize, epoch: u64) -> Vec<u8> {
        #[cfg(test)]
        if STORE_EXPANDED.with(std::cell::Cell::get) {
            return self.encode();
        }
        match self.encode_compact(epoch) {
            Some(bytes) => {
                debug_assert!(
                    Page::decode_stored(&bytes, stratum, epoch).ok().as_ref() == Some(self),
                    "a compact page rehashes to the page it was encoded from"
                );
                bytes
            }
            None => {
                let bytes = self.encode();
                debug_assert_eq!(bytes.first(), Some(&STORED_EXPANDED));
                bytes
            }
        }
    }

    /// `None` if the page's interior nodes are not exactly the ancestors of its leaves and
    /// child pages, or a child's location does not fit.
    fn encode_compact(&self, epoch: u64) -> Option<Vec<u8>> {
        let mut leaf_mask = 0u16;
        let mut child_mask = 0u16;
        let mut leaves = 0;
        for (p, node) in self.nodes.0.iter().enumerate() {
            if let Some(Node::Leaf { .. }) = node {
                leaf_mask |= 0x8000 >> p;
                leaves += 1;
            }
        }
        for (n, at) in self.children.0.iter().enumerate() {
            if at.is_some() {
                child_mask |= 0x8000 >> n;
            }
        }
        let interior = interior_positions(leaf_mask, child_mask);
        for (p, node) in self.nodes.0.iter().enumerate() {
            let expected = interior & (0x8000 >> p) != 0;
            match node {
                Some(Node::Leaf { .. }) if expected => return None,
                Some(Node::Interior { .. }) if !expected => return None,
                None if expected => return None,
                _ => {}
            }
        }
        let mut out = Vec::with_capacity(
            5 + leaves * 64 + self.children.len() * (COMPACT_CHILD_FIXED_BYTES + LEB128_U64_BYTES_MAX),
        );
        out.push(STORED_COMPACT);
        out.extend_from_slice(&leaf_mask.to_be_bytes());
        out.extend_from_slice(&child_mask.to_be_bytes());
        for node in self.nodes.0.iter().flatten() {
            if let Node::Leaf { index, value } = node {
                out.extend_from_slice(&index.0);
                out.extend_from_slice(value);
            }
        }
        let empty = empty_hash();
        for n in 0..1 << PAGE_BITS {
            let Some(Node::Interior { left, right }) = self.nodes.0[DEEPEST_FIRST + n / 2] else {
                continue;
            };
            let hash = if n % 2 == 0 { left } else { right };
            let Some(at) = self.children.0[n] else {
                if hash != empty {
                    return None;
                }
                continue;
            };
            out.extend_from_slice(&hash);
            leb128(&mut out, epoch.checked_sub(at.epoch)?);
            out.extend_from_slice(&at.chunk.to_be_bytes());
            out.extend_from_slice(&u16::try_from(at.offset).ok()?.to_be_bytes());
            out.extend_from_slice(&u16::try_from(at.len).ok()?.to_be_bytes());
        }
        Some(out)
    }

    /// Decodes a stored page of `stratum` written in `epoch`, in either layout, rehashing a
    /// compact page's interior nodes.
    pub(super) fn decode_stored(bytes: &[u8], stratum: usize, epoch: u64) -> Result<Self, StateError> {
        match bytes.first() {
            Some(&STORED_EXPANDED) => Page::decode(bytes),
            Some(&STORED_COMPACT) => Compact::parse(bytes, stratum, epoch)?.expand(stratum),
            Some(tag) => Err(corrupt(format!("tree page layout {tag}"))),
            None => Err(corrupt("empty tree page")),
        }
    }

    /// Only the child locations of a stored page (a walk over the page versions needs nothing
    /// else, and a compact page's interior nodes would have to be rehashed).
    pub(super) fn decode_stored_children(bytes: &[u8], stratum: usize, epoch: u64) -> Result<ChildMap, StateError> {
        match bytes.first() {
            Some(&STORED_COMPACT) => {
                let parsed = Compact::parse(bytes, stratum, epoch)?;
                let mut children = ChildMap::default();
                for (n, child) in parsed.children.iter().enumerate() {
                    children.0[n] = child.map(|(_, at)| at);
                }
                Ok(children)
            }
            _ => Page::decode_stored(bytes, stratum, epoch).map(|p| p.children),
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Tests set it to write pages as builds before the compact layout did (on this thread).
    pub(super) static STORE_EXPANDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The slot positions (as a mask like the leaf mask) that must hold interior nodes: every
/// ancestor in the page of a leaf, and every deepest-level node with a child page below it
/// together with its ancestors.
fn interior_positions(leaf_mask: u16, child_mask: u16) -> u16 {
    let mut interior = 0u16;
    let mut mark_from = |mut p: usize| loop {
        interior |= 0x8000 >> p;
        if p == 0 {
            break;
        }
        p = (p - 1) / 2;
    };
    for p in 1..SLOTS {
        if leaf_mask & (0x8000 >> p) != 0 {
            mark_from((p - 1) / 2);
        }
    }
    for n in 0..1 << PAGE_BITS {
        if child_mask & (0x8000 >> n) != 0 {
            mark_from(DEEPEST_FIRST + n / 2);
        }
    }
    interior
}

fn leb128(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A compact stored page, parsed and checked but not yet rehashed.
struct Compact<'a> {
    leaf_mask: u16,
    child_mask: u16,
    /// `index || value` per leaf, in position order.
    leaves: &'a [u8],
    children: [Option<(Digest, Location)>; 1 << PAGE_BITS],
}

impl<'a> Compact<'a> {
    fn parse(bytes: &'a [u8], stratum: usize, epoch: u64) -> Result<Self, StateError> {
        let mut rest = bytes.get(1..).ok_or_else(|| corrupt("empty tree page"))?;
        let mut take = |n: usize| -> Result<&'a [u8], StateError> {
            if rest.len() < n {
                return Err(corrupt("compact tree page truncated"));
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        let u16_of = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
        let leaf_mask = u16_of(take(2)?);
        let child_mask = u16_of(take(2)?);
        if leaf_mask & 1 != 0 {
            return Err(corrupt("compact tree page with a leaf outside its slots"));
        }
        if child_mask != 0 && (stratum + 1) * PAGE_BITS >= 256 {
            return Err(corrupt("compact tree page of the deepest stratum with child pages"));
        }
        if leaf_mask & interior_positions(leaf_mask, child_mask) != 0 {
            return Err(corrupt("compact tree page with a leaf above another leaf or a child page"));
        }
        let leaves = take(leaf_mask.count_ones() as usize * 64)?;
        let mut children = [None; 1 << PAGE_BITS];
        for (n, child) in children.iter_mut().enumerate() {
            if child_mask & (0x8000 >> n) == 0 {
                continue;
            }
            let mut hash = [0u8; 32];
            hash.copy_from_slice(take(32)?);
            let mut back = 0u64;
            for i in 0.. {
                let byte = take(1)?[0];
                if i == LEB128_U64_BYTES_MAX - 1 && byte > 1 {
                    return Err(corrupt("compact tree page child epoch overflows"));
                }
                back |= u64::from(byte & 0x7f) << (7 * i);
                if byte & 0x80 == 0 {
                    break;
                }
            }
            let fixed = take(8)?;
            let at = Location {
                epoch: epoch.checked_sub(back).ok_or_else(|| corrupt("compact tree page child before epoch 0"))?,
                chunk: u32::from_be_bytes([fixed[0], fixed[1], fixed[2], fixed[3]]),
                offset: u32::from(u16_of(&fixed[4..6])),
                len: u32::from(u16_of(&fixed[6..8])),
            };
            *child = Some((hash, at));
        }
        if !rest.is_empty() {
            return Err(corrupt(format!("compact tree page with {} bytes past its end", rest.len())));
        }
        Ok(Self { leaf_mask, child_mask, leaves, children })
    }

    /// The expanded page, every interior hash recomputed from the leaves and child hashes.
    fn expand(&self, stratum: usize) -> Result<Page, StateError> {
        let empty = empty_hash();
        let interior = interior_positions(self.leaf_mask, self.child_mask);
        let mut hashes = [empty; SLOTS];
        let mut page = Page::default();
        let mut leaves = self.leaves.chunks_exact(64).rev();
        for p in (0..SLOTS).rev() {
            let depth = stratum * PAGE_BITS + usize::from(position_slot(p).0);
            let node = if self.leaf_mask & (0x8000 >> p) != 0 {
                let leaf = leaves.next().ok_or_else(|| corrupt("compact tree page leaves"))?;
                let mut index = [0u8; 32];
                let mut value = [0u8; 32];
                index.copy_from_slice(&leaf[..32]);
                value.copy_from_slice(&leaf[32..]);
                Node::Leaf { index: Index(index), value }
            } else if interior & (0x8000 >> p) != 0 {
                let (left, right) = if p >= DEEPEST_FIRST {
                    let n = 2 * (p - DEEPEST_FIRST);
                    let hash_of = |c: &Option<(Digest, Location)>| c.map_or(empty, |(h, _)| h);
                    (hash_of(&self.children[n]), hash_of(&self.children[n + 1]))
                } else {
                    (hashes[2 * p + 1], hashes[2 * p + 2])
                };
                Node::Interior { left, right }
            } else {
                continue;
            };
            // The top node's hash is its parent page's business.
            if p > 0 {
                hashes[p] = node.hash(depth);
            }
            page.nodes.0[p] = Some(node);
        }
        for (n, child) in self.children.iter().enumerate() {
            page.children.0[n] = child.map(|(_, at)| at);
        }
        Ok(page)
    }
}

/// A page's identity: its stratum and the index bits above it (the rest zeroed).
pub type PageId = (u8, [u8; 32]);

pub(super) const ROOT_PAGE: PageId = (0, [0; 32]);

pub(super) fn page_id(depth: usize, index: &Index) -> PageId {
    let stratum = depth / PAGE_BITS;
    let mut prefix = index.0;
    keys::mask_after(&mut prefix, stratum * PAGE_BITS);
    (stratum as u8, prefix)
}

/// The parent page of a non-root page and the child's position in it.
pub(super) fn parent_of(id: &PageId) -> (PageId, u8) {
    let stratum = usize::from(id.0);
    debug_assert!(stratum > 0);
    let parent_bits = (stratum - 1) * PAGE_BITS;
    let mut prefix = id.1;
    keys::mask_after(&mut prefix, parent_bits);
    ((id.0 - 1, prefix), bits(&Index(id.1), parent_bits, PAGE_BITS))
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
    /// Pages of a real tree (every page version an epoch writes, as the cache gets them).
    fn real_pages() -> Vec<(PageId, Page)> {
        use keyraft_storage::{Batch, MemoryStorage};
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut updates: Vec<(Index, Digest)> = (0..4_000).map(|_| (Index(rng.gen()), rng.gen())).collect();
        // Neighbours sharing long prefixes put leaves deep inside pages and next to child pages.
        let near: Vec<(Index, Digest)> = updates[..500]
            .iter()
            .map(|(i, _)| {
                let mut near = *i;
                let bit = rng.gen_range(9..255usize);
                near.0[bit / 8] ^= 0x80 >> (bit % 8);
                (near, rng.gen())
            })
            .collect();
        updates.extend(near);
        updates.sort_by_key(|(i, _)| *i);
        updates.dedup_by_key(|(i, _)| *i);
        let (store, cache) = (MemoryStorage::new(), super::super::PageCache::default());
        let (_, written) = super::super::apply_epoch(&store, &cache, None, 1, &updates, &mut Batch::new()).unwrap();
        written.into_iter().map(|(id, (_, bytes))| (id, Page::decode(&bytes).unwrap())).collect()
    }

    #[test]
    fn compact_pages_rehash_to_the_same_page_in_half_the_bytes() {
        let pages = real_pages();
        assert!(pages.len() > 1_000);
        let (mut expanded, mut compact) = (0, 0);
        for (id, page) in &pages {
            let stored = page.encode_stored(usize::from(id.0), 9);
            assert_eq!(stored[0], STORED_COMPACT, "page {id:?} falls back to the expanded layout");
            assert_eq!(&Page::decode_stored(&stored, usize::from(id.0), 9).unwrap(), page);
            assert_eq!(Page::decode_stored_children(&stored, usize::from(id.0), 9).unwrap(), page.children);
            expanded += page.encode().len();
            compact += stored.len();
        }
        assert!(compact * 10 < expanded * 7, "compact {compact} B, expanded {expanded} B");
    }

    #[test]
    fn pages_stored_expanded_before_the_compact_layout_still_read() {
        for (id, page) in real_pages().iter().take(300) {
            let old = page.encode();
            assert_eq!(old[0], STORED_EXPANDED);
            assert_eq!(&Page::decode_stored(&old, usize::from(id.0), 9).unwrap(), page);
            assert_eq!(Page::decode_stored_children(&old, usize::from(id.0), 9).unwrap(), page.children);
        }
    }

    /// Every byte of a compact page matters: changing one fails to decode or decodes to a
    /// different page, never to the same one and never with a panic; any truncation fails.
    #[test]
    fn every_byte_of_a_compact_page_matters() {
        let pages = real_pages();
        for (id, page) in pages.iter().filter(|(id, _)| id.0 > 0).step_by(97).take(40) {
            let stratum = usize::from(id.0);
            let stored = page.encode_stored(stratum, 1_000);
            for i in 0..stored.len() {
                for flip in [0x01u8, 0x80, 0xff] {
                    let mut bad = stored.clone();
                    bad[i] ^= flip;
                    if let Ok(decoded) = Page::decode_stored(&bad, stratum, 1_000) {
                        assert_ne!(&decoded, page, "byte {i} ^ {flip:#x} of a stratum-{stratum} page is ignored");
                    }
                }
            }
            for len in 0..stored.len() {
                assert!(Page::decode_stored(&stored[..len], stratum, 1_000).is_err());
            }
            let mut longer = stored.clone();
            longer.push(0);
            assert!(Page::decode_stored(&longer, stratum, 1_000).is_err());
        }
    }

    #[test]
    fn child_versions_any_distance_back_round_trip() {
        let mut p = Page::default();
        for (n, epoch) in [0u64, 1, 127, 300].into_iter().enumerate() {
            let nibble = ((n * 4) << (8 - PAGE_BITS)) as u8;
            p.children.insert(nibble, Location { epoch, chunk: u32::MAX, offset: 65_535, len: 1 });
        }
        // The deepest nodes above those children, and their ancestors.
        let child_hash = |n: usize| [n as u8 + 1; 32];
        for n in [0usize, 4, 8, 12] {
            p.nodes.0[DEEPEST_FIRST + n / 2] = Some(Node::Interior { left: child_hash(n), right: empty_hash() });
        }
        for q in (0..DEEPEST_FIRST).rev() {
            let h = |c: usize| p.nodes.0[c].map_or(empty_hash(), |n| n.hash(1));
            let (l, r) = (h(2 * q + 1), h(2 * q + 2));
            if l != empty_hash() || r != empty_hash() {
                p.nodes.0[q] = Some(Node::Interior { left: l, right: r });
            }
        }
        for page_epoch in [300, u64::MAX] {
            let stored = p.encode_stored(3, page_epoch);
            assert_eq!(stored[0], STORED_COMPACT);
            assert_eq!(Page::decode_stored(&stored, 3, page_epoch).unwrap(), p);
        }
        // A child newer than its parent, or an offset past 16 bits: stored expanded.
        assert_eq!(p.encode_stored(3, 299)[0], STORED_EXPANDED);
        let mut far = p.clone();
        far.children.insert(0, Location { epoch: 0, chunk: 0, offset: 65_536, len: 1 });
        assert_eq!(far.encode_stored(3, 300)[0], STORED_EXPANDED);
        assert_eq!(Page::decode_stored(&far.encode_stored(3, 300), 3, 300).unwrap(), far);
    }

    #[test]
    fn pages_off_the_tree_shape_are_stored_expanded() {
        // An interior node with nothing below it.
        let mut p = Page::default();
        p.nodes.insert((0, 0), Node::Interior { left: [1; 32], right: [2; 32] });
        assert_eq!(p.encode_stored(2, 5)[0], STORED_EXPANDED);
        // A leaf above another leaf.
        let mut p = Page::default();
        p.nodes.insert((0, 0), Node::Leaf { index: Index([3; 32]), value: [4; 32] });
        p.nodes.insert((1, 0x80), Node::Leaf { index: Index([0x83; 32]), value: [4; 32] });
        assert_eq!(p.encode_stored(2, 5)[0], STORED_EXPANDED);
        assert_eq!(Page::decode_stored(&p.encode_stored(2, 5), 2, 5).unwrap(), p);
    }

    #[test]
    fn compact_pages_with_impossible_shapes_are_corrupt() {
        let empty_compact = [STORED_COMPACT, 0, 0, 0, 0];
        assert_eq!(Page::decode_stored(&empty_compact, 4, 1).unwrap(), Page::default());
        // Leaf mask bit 0 is no slot.
        assert!(Page::decode_stored(&[STORED_COMPACT, 0, 1, 0, 0], 4, 1).is_err());
        // A leaf at the top with a leaf below it.
        let mut bad = vec![STORED_COMPACT, 0xC0, 0, 0, 0];
        bad.extend_from_slice(&[7; 128]);
        assert!(Page::decode_stored(&bad, 4, 1).is_err());
        // Child pages below the deepest stratum.
        let mut deep = vec![STORED_COMPACT, 0, 0, 0x80, 0];
        deep.extend_from_slice(&[7; 32]);
        deep.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert!(Page::decode_stored(&deep, 62, 1).is_ok());
        assert!(Page::decode_stored(&deep, 63, 1).is_err());
        assert!(Page::decode_stored(&[9, 0, 0], 4, 1).is_err());
        assert!(Page::decode_stored(&[], 4, 1).is_err());
    }

    proptest::proptest! {
        /// Whatever storage hands back, decoding a page is an answer or an error, never a
        /// panic; and a page that decodes stores again as something that decodes to it.
        #[test]
        fn any_stored_bytes_decode_or_fail_cleanly(
            layout in 0u8..3,
            masks in proptest::prelude::any::<u32>(),
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..700),
            stratum in 0usize..64,
            epoch in proptest::prelude::any::<u64>(),
        ) {
            let mut bytes = vec![layout];
            bytes.extend_from_slice(&masks.to_be_bytes());
            bytes.extend_from_slice(&body);
            if let Ok(page) = Page::decode_stored(&bytes, stratum, epoch) {
                let again = page.encode_stored(stratum, epoch);
                proptest::prop_assert_eq!(Page::decode_stored(&again, stratum, epoch).ok(), Some(page));
            }
            let _ = Page::decode_stored_children(&bytes, stratum, epoch);
        }

        /// Well-formed compact pages of random shape (a leaf never above another node) decode,
        /// rehash, and store again to the same bytes.
        #[test]
        fn random_compact_pages_round_trip(
            leaf_mask in proptest::prelude::any::<u16>(),
            child_mask in proptest::prelude::any::<u16>(),
            seed in proptest::prelude::any::<u64>(),
            stratum in 0usize..63,
        ) {
            use rand::{Rng, SeedableRng};
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let leaf_mask = leaf_mask & !1 & !interior_positions(leaf_mask & !1, child_mask);
            let mut bytes = vec![STORED_COMPACT];
            bytes.extend_from_slice(&leaf_mask.to_be_bytes());
            bytes.extend_from_slice(&child_mask.to_be_bytes());
            for _ in 0..leaf_mask.count_ones() * 64 {
                bytes.push(rng.gen());
            }
            for _ in 0..child_mask.count_ones() {
                bytes.extend((0..32).map(|_| rng.gen::<u8>()));
                bytes.push(rng.gen_range(0..0x80));
                bytes.extend((0..8).map(|_| rng.gen::<u8>()));
            }
            let page = Page::decode_stored(&bytes, stratum, 1_000);
            proptest::prop_assert!(page.is_ok(), "{:?}", page.err());
            let page = page.unwrap_or_default();
            proptest::prop_assert_eq!(page.encode_stored(stratum, 1_000), bytes);
        }
    }
}
