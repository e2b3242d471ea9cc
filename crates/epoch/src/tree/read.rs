//! Reading the tree of any applied epoch: its root hash and the proof for one index, by point
//! reads from that epoch's root page down.

use super::cache::PageCache;
use super::chunk::{read_location, read_root_if_applied};
use super::page::{page_id, parent_of, slot, Node, Page, PageId, ROOT_PAGE};
use crate::error::{corrupt, StateError};
use keyraft_core::tree::{empty_hash, Terminal, TreeProof};
use keyraft_core::{Digest, Index};
use keyraft_storage::Storage;
use std::collections::HashMap;

/// Reads the pages of one tree version (proofs and roots of past epochs).
struct Pages<'a> {
    store: &'a dyn Storage,
    cache: &'a PageCache,
    /// The epoch whose tree is read.
    epoch: u64,
    loaded: HashMap<PageId, Page>,
    /// Chunks read so far (a proof often finds several pages in one chunk).
    chunks: HashMap<(u64, u32), Vec<u8>>,
}

impl<'a> Pages<'a> {
    fn new(store: &'a dyn Storage, cache: &'a PageCache, epoch: u64) -> Self {
        Self { store, cache, epoch, loaded: HashMap::new(), chunks: HashMap::new() }
    }

    /// Loads page `id` of the tree of `epoch`: expanded from the cache when it holds that
    /// version (no rehashing, no chunk read), else from storage through its parent.
    ///
    /// The cache holds each page's newest version, which is the one in the tree of `epoch`
    /// when it was written in `epoch` or before: a later version would have replaced it, and
    /// a page is rewritten whenever one of its children is, so the child versions it points at
    /// are those of `epoch` too. A root page is written every epoch, so only the root of
    /// `epoch` itself will do.
    fn load(&mut self, id: PageId) -> Result<(), StateError> {
        if self.loaded.contains_key(&id) {
            return Ok(());
        }
        let page = if id == ROOT_PAGE {
            // Every applied epoch writes a root page; none stored means the epoch was never
            // applied, read as the empty tree.
            match self.cache.version(&id) {
                Some((written, bytes)) if written == self.epoch => Page::decode(&bytes)?,
                _ => read_root_if_applied(self.store, self.epoch)?.unwrap_or_default(),
            }
        } else if let Some((_, bytes)) = self.cache.version(&id).filter(|(written, _)| *written <= self.epoch) {
            Page::decode(&bytes)?
        } else {
            let (parent, nibble) = parent_of(&id);
            self.load(parent)?;
            match self.loaded.get(&parent).and_then(|p| p.children.get(&nibble).copied()) {
                None => Page::default(),
                Some(at) => {
                    Page::decode_stored(read_location(self.store, &mut self.chunks, at)?, usize::from(id.0), at.epoch)?
                }
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

/// The root hash of the tree as of `epoch` (the empty hash before the first leaf, or if
/// `epoch` was never applied), reading from `cache` what it holds of that tree.
pub fn root_at(store: &dyn Storage, cache: &PageCache, epoch: u64) -> Result<Digest, StateError> {
    Ok(Pages::new(store, cache, epoch).read(0, &Index([0; 32]))?.map_or_else(empty_hash, |n| n.hash(0)))
}

/// Builds the inclusion or absence proof for `index` in the tree of `epoch`, reading from
/// `cache` what it holds of that tree (pass an empty cache to read storage alone).
pub fn prove(store: &dyn Storage, cache: &PageCache, epoch: u64, index: &Index) -> Result<TreeProof, StateError> {
    let empty = empty_hash();
    let mut pages = Pages::new(store, cache, epoch);
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
