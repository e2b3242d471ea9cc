//! Reading the tree of any applied epoch: its root hash and the proof for one index, by point
//! reads from that epoch's root page down.

use super::chunk::{read_location, read_root, root_key};
use super::page::{page_id, parent_of, slot, Node, Page, PageId, ROOT_PAGE};
use crate::error::{corrupt, StateError};
use keyraft_core::tree::{empty_hash, Terminal, TreeProof};
use keyraft_core::{Digest, Index};
use keyraft_storage::Storage;
use std::collections::HashMap;

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
