//! The prefix tree's hashing rules and the verification of its proofs.
//!
//! The tree is a binary trie over the 256 bits of an [`Index`], most significant bit first
//! (bit 0 chooses the root's child: 0 left, 1 right). It is *compressed*: a leaf sits at the
//! shallowest depth at which no other index shares its prefix, so with `n` random indexes a
//! leaf is about `log2(n)` levels deep. A subtree with no leaf is *empty*.
//!
//! Hashes (see [`crate::hash`] for the framing):
//! - empty subtree: `H(tree-empty)`
//! - leaf at depth `d`: `H(tree-leaf, d (u16) || index || value)`, where `value` is the
//!   entry hash
//! - interior node: `H(tree-node, left || right)`
//!
//! A proof is the terminal the path from the root reaches (the queried leaf, another leaf
//! whose prefix covers the index, or an empty subtree) and the hashes of the siblings along
//! the path; empty siblings are elided with a bitmap.

use crate::encoding::{put_u16, Canonical, DecodeError, Reader};
use crate::hash::{hash, label, Digest};
use crate::limits::TREE_DEPTH_MAX;
use crate::types::Index;
use std::sync::OnceLock;
use thiserror::Error;

/// `H(tree-empty)`: the hash of a subtree without leaves, and the root of an empty tree.
pub fn empty_hash() -> Digest {
    static EMPTY: OnceLock<Digest> = OnceLock::new();
    *EMPTY.get_or_init(|| hash(label::TREE_EMPTY, &[]))
}

/// The hash of the leaf for `index` with `value`, at `depth`.
pub fn leaf_hash(depth: u16, index: &Index, value: &Digest) -> Digest {
    hash(label::TREE_LEAF, &[&depth.to_be_bytes(), &index.0, value])
}

/// The hash of an interior node.
pub fn node_hash(left: &Digest, right: &Digest) -> Digest {
    hash(label::TREE_NODE, &[left, right])
}

/// Where the path for an index ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Terminal {
    /// An empty subtree: the index is absent.
    Empty,
    /// The leaf of the queried index itself, with its value.
    Leaf {
        /// The leaf's value (the entry hash).
        value: Digest,
    },
    /// The leaf of another index that shares the path: the queried index is absent.
    OtherLeaf {
        /// The other index.
        index: Index,
        /// Its value.
        value: Digest,
    },
}

/// A proof of inclusion or absence for one index in a tree with a known root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeProof {
    /// Where the path ends.
    pub terminal: Terminal,
    /// `siblings[i]` is the hash of the sibling of the path's node at depth `i + 1`
    /// (`None` for an empty sibling); the terminal sits at depth `siblings.len()`.
    pub siblings: Vec<Option<Digest>>,
}

/// What a verified tree proof says about the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreeAnswer {
    /// The index is in the tree with this value.
    Present(Digest),
    /// The index is not in the tree.
    Absent,
}

/// Why a tree proof does not prove anything about an index under a root.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TreeProofError {
    /// The recomputed root is not the signed root.
    #[error("the proof does not lead to the signed root")]
    RootMismatch,
    /// The other leaf offered as an absence proof is not on the index's path (or is the index).
    #[error("the leaf offered as proof of absence is not on the queried index's path")]
    OtherLeafNotOnPath,
    /// A structure the tree cannot contain (a leaf or empty subtree next to an empty sibling).
    #[error("the proof describes a subtree that a compressed tree cannot contain")]
    NotCompressed,
}

const TERMINAL_EMPTY: u8 = 0;
const TERMINAL_LEAF: u8 = 1;
const TERMINAL_OTHER_LEAF: u8 = 2;

impl TreeProof {
    /// The depth of the terminal.
    pub fn depth(&self) -> usize {
        self.siblings.len()
    }

    /// Verifies the proof for `index` against `root` and says what it proves.
    pub fn verify(&self, root: &Digest, index: &Index) -> Result<TreeAnswer, TreeProofError> {
        let (computed, answer) = self.compute_root(index)?;
        if &computed == root {
            Ok(answer)
        } else {
            Err(TreeProofError::RootMismatch)
        }
    }

    /// The root this proof leads to for `index`, and what it would prove there. Verification
    /// compares it with the signed root; tests use it to build proofs of a forged tree.
    pub fn compute_root(&self, index: &Index) -> Result<(Digest, TreeAnswer), TreeProofError> {
        let depth = self.depth();
        debug_assert!(depth <= TREE_DEPTH_MAX, "decoder bounds the depth");
        // In a compressed tree every interior node has two leaves below it, so a terminal's
        // sibling is never empty (except for the root, which has none).
        if depth > 0 && self.siblings[depth - 1].is_none() {
            return Err(TreeProofError::NotCompressed);
        }
        let depth_u16 = u16::try_from(depth).map_err(|_| TreeProofError::NotCompressed)?;
        let (mut h, answer) = match &self.terminal {
            Terminal::Empty => (empty_hash(), TreeAnswer::Absent),
            Terminal::Leaf { value } => (leaf_hash(depth_u16, index, value), TreeAnswer::Present(*value)),
            Terminal::OtherLeaf { index: other, value } => {
                if other == index || other.common_prefix_bits(index) < depth {
                    return Err(TreeProofError::OtherLeafNotOnPath);
                }
                (leaf_hash(depth_u16, other, value), TreeAnswer::Absent)
            }
        };
        let empty = empty_hash();
        for i in (0..depth).rev() {
            let sibling = self.siblings[i].as_ref().unwrap_or(&empty);
            h = if index.bit(i) { node_hash(sibling, &h) } else { node_hash(&h, sibling) };
        }
        Ok((h, answer))
    }
}

impl Canonical for TreeProof {
    const NAME: &'static str = "tree proof";

    fn encode_into(&self, out: &mut Vec<u8>) {
        match &self.terminal {
            Terminal::Empty => out.push(TERMINAL_EMPTY),
            Terminal::Leaf { value } => {
                out.push(TERMINAL_LEAF);
                out.extend_from_slice(value);
            }
            Terminal::OtherLeaf { index, value } => {
                out.push(TERMINAL_OTHER_LEAF);
                out.extend_from_slice(&index.0);
                out.extend_from_slice(value);
            }
        }
        let depth = self.siblings.len();
        put_u16(out, u16::try_from(depth).expect("invariant: tree depth is at most 256"));
        let mut bitmap = vec![0u8; depth.div_ceil(8)];
        for (i, s) in self.siblings.iter().enumerate() {
            if s.is_some() {
                bitmap[i / 8] |= 0x80 >> (i % 8);
            }
        }
        out.extend_from_slice(&bitmap);
        for s in self.siblings.iter().flatten() {
            out.extend_from_slice(s);
        }
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let terminal = match r.u8("tree proof terminal")? {
            TERMINAL_EMPTY => Terminal::Empty,
            TERMINAL_LEAF => Terminal::Leaf { value: r.array("tree proof leaf value")? },
            TERMINAL_OTHER_LEAF => Terminal::OtherLeaf {
                index: Index(r.array("tree proof other index")?),
                value: r.array("tree proof other value")?,
            },
            _ => return Err(DecodeError::Invalid { what: "tree proof terminal", why: "unknown tag" }),
        };
        let depth = usize::from(r.u16("tree proof depth")?);
        if depth > TREE_DEPTH_MAX {
            return Err(DecodeError::TooLong { what: "tree proof depth", max: TREE_DEPTH_MAX, got: depth });
        }
        let bitmap = r.bytes(depth.div_ceil(8), "tree proof bitmap")?;
        if depth % 8 != 0 {
            let pad_mask = 0xffu8 >> (depth % 8);
            if bitmap[depth / 8] & pad_mask != 0 {
                return Err(DecodeError::NonCanonical { what: "tree proof bitmap", why: "padding bits set" });
            }
        }
        let mut siblings = Vec::with_capacity(depth);
        for i in 0..depth {
            if bitmap[i / 8] & (0x80 >> (i % 8)) != 0 {
                siblings.push(Some(r.array("tree proof sibling")?));
            } else {
                siblings.push(None);
            }
        }
        Ok(Self { terminal, siblings })
    }
}
