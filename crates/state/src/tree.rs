//! The persistent compressed prefix tree, stored as versioned nodes.
//!
//! Each node version is written under its position (depth and prefix) and the epoch that
//! wrote it, so the tree of any past epoch is read by taking, at each position, the newest
//! version at or before that epoch. Nodes never become empty (there are no deletions) and a
//! position that changes is rewritten in the epoch that changes it, so that rule is exact.
//!
//! An epoch is applied as one sorted batch: a single descent from the root touches each
//! affected node once, hashes it once and writes one new version of it. Interior nodes store
//! both children's hashes, so a proof reads one node per level.
//!
//! See `keyraft_core::tree` for the hashing rules and the proof format.

use crate::error::{corrupt, StateError};
use crate::keys;
use keyraft_core::tree::{empty_hash, leaf_hash, node_hash, Terminal, TreeProof};
use keyraft_core::{Digest, Index};
use keyraft_storage::{Batch, Direction, Storage};

/// One version of a tree node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Node {
    /// A leaf holding one index and its value.
    Leaf { index: Index, value: Digest },
    /// An interior node with both children's hashes (the empty hash for an empty child).
    Interior { left: Digest, right: Digest },
}

const NODE_LEAF: u8 = 1;
const NODE_INTERIOR: u8 = 2;

impl Node {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(65);
        match self {
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
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, StateError> {
        if bytes.len() != 65 {
            return Err(corrupt(format!("tree node of {} bytes", bytes.len())));
        }
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        a.copy_from_slice(&bytes[1..33]);
        b.copy_from_slice(&bytes[33..65]);
        match bytes[0] {
            NODE_LEAF => Ok(Node::Leaf { index: Index(a), value: b }),
            NODE_INTERIOR => Ok(Node::Interior { left: a, right: b }),
            t => Err(corrupt(format!("tree node tag {t}"))),
        }
    }

    fn hash(&self, depth: usize) -> Digest {
        match self {
            Node::Leaf { index, value } => leaf_hash(depth_u16(depth), index, value),
            Node::Interior { left, right } => node_hash(left, right),
        }
    }
}

fn depth_u16(depth: usize) -> u16 {
    debug_assert!(depth <= 256);
    depth as u16
}

/// Reads the newest version at or before `epoch` of the node at `depth` on `index`'s path.
fn read_node(store: &dyn Storage, depth: usize, index: &Index, epoch: u64) -> Result<Option<Node>, StateError> {
    let position = keys::tree_position(depth, index);
    let start = keys::tree_node(&position, epoch);
    let end = keys::tree_node(&position, 0);
    // `end` is exclusive, so the version written at epoch 0 would be missed; epochs start at 1.
    let mut iter = store.range(&start, Some(&end), Direction::Forward);
    match iter.next() {
        None => Ok(None),
        Some(Err(e)) => Err(e.into()),
        Some(Ok((_, v))) => Ok(Some(Node::decode(&v)?)),
    }
}

/// The root hash of the tree as of `epoch` (the empty hash before the first leaf).
pub(crate) fn root_at(store: &dyn Storage, epoch: u64) -> Result<Digest, StateError> {
    Ok(read_node(store, 0, &Index([0; 32]), epoch)?.map_or_else(empty_hash, |n| n.hash(0)))
}

/// Builds the inclusion or absence proof for `index` in the tree of `epoch`.
pub(crate) fn prove(store: &dyn Storage, epoch: u64, index: &Index) -> Result<TreeProof, StateError> {
    let empty = empty_hash();
    let mut siblings = Vec::new();
    let mut node = read_node(store, 0, index, epoch)?;
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
                if depth > 256 {
                    return Err(corrupt("tree deeper than 256 levels"));
                }
                node = if next == empty { None } else { Some(read_existing(store, depth, index, epoch)?) };
            }
        }
    }
}

fn read_existing(store: &dyn Storage, depth: usize, index: &Index, epoch: u64) -> Result<Node, StateError> {
    read_node(store, depth, index, epoch)?
        .ok_or_else(|| corrupt(format!("interior node at depth {} points to a missing child", depth - 1)))
}

/// Applies `updates` (sorted strictly by index) as epoch `epoch`, writing the new node
/// versions into `batch`, and returns the new root.
pub(crate) fn apply_epoch(
    store: &dyn Storage,
    epoch: u64,
    updates: &[(Index, Digest)],
    batch: &mut Batch,
) -> Result<Digest, StateError> {
    assert!(updates.windows(2).all(|w| w[0].0 < w[1].0), "epoch updates must be sorted and distinct");
    let root = read_node(store, 0, &Index([0; 32]), epoch)?;
    let mut writer = EpochWriter { store, epoch, batch };
    writer.update(0, root, updates)
}

struct EpochWriter<'a> {
    store: &'a dyn Storage,
    epoch: u64,
    batch: &'a mut Batch,
}

impl EpochWriter<'_> {
    /// Rewrites the subtree at `depth` on the path of `updates[0]` (all updates share that
    /// path down to `depth`), whose current content is `current`, and returns its new hash.
    fn update(
        &mut self,
        depth: usize,
        current: Option<Node>,
        updates: &[(Index, Digest)],
    ) -> Result<Digest, StateError> {
        let Some(first) = updates.first() else {
            return Ok(current.map_or_else(empty_hash, |n| n.hash(depth)));
        };
        match current {
            None => self.build(depth, updates),
            Some(Node::Leaf { index, value }) => {
                if updates.len() == 1 && first.0 == index {
                    return Ok(self.write(depth, &index, Node::Leaf { index, value: updates[0].1 }));
                }
                // The existing leaf must move down next to the new ones, unless it is replaced.
                let mut merged = updates.to_vec();
                if let Err(pos) = merged.binary_search_by(|(i, _)| i.cmp(&index)) {
                    merged.insert(pos, (index, value));
                }
                self.build(depth, &merged)
            }
            Some(Node::Interior { left, right }) => {
                let split = updates.partition_point(|(i, _)| !i.bit(depth));
                let (lu, ru) = updates.split_at(split);
                let empty = empty_hash();
                let new_left = if lu.is_empty() { left } else { self.update_child(depth + 1, left, &empty, lu)? };
                let new_right = if ru.is_empty() { right } else { self.update_child(depth + 1, right, &empty, ru)? };
                Ok(self.write(depth, &first.0, Node::Interior { left: new_left, right: new_right }))
            }
        }
    }

    fn update_child(
        &mut self,
        depth: usize,
        hash: Digest,
        empty: &Digest,
        updates: &[(Index, Digest)],
    ) -> Result<Digest, StateError> {
        let child =
            if &hash == empty { None } else { Some(read_existing(self.store, depth, &updates[0].0, self.epoch)?) };
        self.update(depth, child, updates)
    }

    /// Builds a fresh subtree holding exactly `leaves` at `depth`.
    fn build(&mut self, depth: usize, leaves: &[(Index, Digest)]) -> Result<Digest, StateError> {
        match leaves {
            [] => Ok(empty_hash()),
            [(index, value)] => Ok(self.write(depth, index, Node::Leaf { index: *index, value: *value })),
            _ => {
                if depth >= 256 {
                    return Err(corrupt("two distinct indexes share all 256 bits"));
                }
                let split = leaves.partition_point(|(i, _)| !i.bit(depth));
                let (l, r) = leaves.split_at(split);
                let left = self.build(depth + 1, l)?;
                let right = self.build(depth + 1, r)?;
                Ok(self.write(depth, &leaves[0].0, Node::Interior { left, right }))
            }
        }
    }

    fn write(&mut self, depth: usize, on_path: &Index, node: Node) -> Digest {
        let position = keys::tree_position(depth, on_path);
        self.batch.put(keys::tree_node(&position, self.epoch), node.encode());
        node.hash(depth)
    }
}
