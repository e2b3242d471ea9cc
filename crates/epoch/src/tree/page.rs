//! The page: the unit the tree is stored, versioned and cached in.
//!
//! A page holds the nodes of [`PAGE_BITS`] levels (one stratum) under one prefix, and where
//! the current versions of its child pages are. This file names where a node lives (its page
//! and its slot in it) and encodes a page to the bytes stored in chunks:
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
//! Integers are big-endian, and nodes and children are written in slot order, so equal pages
//! encode to equal bytes.

use crate::error::{corrupt, StateError};
use crate::keys;
use keyraft_core::tree::{leaf_hash, node_hash};
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
}
