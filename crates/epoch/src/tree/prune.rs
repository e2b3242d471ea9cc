//! Retention: which stored page versions no tree from a given epoch on needs.
//!
//! A page version written in epoch `e` is part of every tree from `e` until the epoch that
//! writes the page's next version, `s`: an interval `[e, s)`. The trees of the epochs from
//! `horizon` on need it exactly when `s > horizon`, and since `e < horizon` for every version
//! a pruning considers, that interval then contains `horizon` itself: **a version older than
//! the horizon is needed by a later tree if and only if the tree of `horizon` reaches it.**
//! So the garbage below a horizon is every root page of an earlier epoch and every chunk of an
//! earlier epoch that the tree of `horizon` does not point into; one walk of that tree finds
//! the chunks to keep, and a scan of the keys below the horizon finds the rest.
//!
//! The walk reads every page of one tree (at a million entries about 700k pages, 1 s): pruning is
//! meant to run every so many epochs, not every epoch.

use super::chunk::{read_location, read_root, root_key, CHUNK_TAG};
use super::page::{Location, Page};
use crate::error::{corrupt, StateError};
use crate::keys;
use keyraft_storage::{Key, Storage};
use std::collections::{HashMap, HashSet};

/// Chunks read during a walk are kept up to this many, then dropped: a subtree's pages sit
/// together in its stream's chunks, so a small window catches nearly every repeat read.
const WALK_CHUNKS_CACHED_MAX: usize = 1024;

/// What the trees from some epoch on no longer need.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Garbage {
    /// The keys to delete (root pages and chunks of earlier epochs), ascending.
    pub keys: Vec<Key>,
    /// How many of `keys` are chunks (the rest are root pages).
    pub chunks: usize,
    /// Chunks of earlier epochs that the tree of the horizon still reaches.
    pub chunks_kept: usize,
    /// Pages of the horizon's tree the walk read.
    pub pages_walked: usize,
}

/// The chunks `(epoch, chunk)` holding a page version of the tree of `epoch`.
pub fn reachable_chunks(store: &dyn Storage, epoch: u64) -> Result<HashSet<(u64, u32)>, StateError> {
    reachable(store, epoch).map(|(chunks, _)| chunks)
}

fn reachable(store: &dyn Storage, epoch: u64) -> Result<(HashSet<(u64, u32)>, usize), StateError> {
    let root = read_root(store, epoch)?;
    let mut reached = HashSet::new();
    let mut chunks = HashMap::new();
    let mut pages = 1;
    let mut pending: Vec<(usize, Location)> = root.children.iter().map(|(_, at)| (1, *at)).collect();
    while let Some((stratum, at)) = pending.pop() {
        if at.epoch > epoch {
            return Err(corrupt(format!("a page of epoch {epoch}'s tree points to a version of epoch {}", at.epoch)));
        }
        reached.insert((at.epoch, at.chunk));
        if chunks.len() >= WALK_CHUNKS_CACHED_MAX {
            chunks.clear();
        }
        let children = Page::decode_stored_children(read_location(store, &mut chunks, at)?, stratum, at.epoch)?;
        pages += 1;
        pending.extend(children.iter().map(|(_, child)| (stratum + 1, *child)));
    }
    Ok((reached, pages))
}

/// Everything stored for the trees of epochs before `horizon` that the trees from `horizon`
/// on do not need. `horizon` must be an applied epoch. Deleting these keys leaves every tree
/// from `horizon` on readable, byte for byte as before; reading the tree of an earlier epoch
/// then fails, so the caller must refuse such reads first.
pub fn garbage_before(store: &dyn Storage, horizon: u64) -> Result<Garbage, StateError> {
    let (keep, pages_walked) = reachable(store, horizon)?;
    let mut garbage = Garbage { pages_walked, ..Garbage::default() };
    let start = [keys::TREE];
    let end = root_key(horizon);
    for key in store.range_keys(&start, Some(&end)) {
        let key = key?;
        match parse_tree_key(&key) {
            Some((_, None)) => garbage.keys.push(key),
            Some((epoch, Some(chunk))) => {
                if keep.contains(&(epoch, chunk)) {
                    garbage.chunks_kept += 1;
                } else {
                    garbage.chunks += 1;
                    garbage.keys.push(key);
                }
            }
            None => return Err(corrupt(format!("unexpected key in the tree keyspace: {}", hex::encode(&key)))),
        }
    }
    Ok(garbage)
}

/// `(epoch, None)` for a root page's key, `(epoch, Some(chunk))` for a chunk's.
fn parse_tree_key(key: &[u8]) -> Option<(u64, Option<u32>)> {
    let rest = key.strip_prefix(&[keys::TREE])?;
    let epoch = keys::be_u64(rest.get(..8)?)?;
    match rest.get(8..)? {
        [0] => Some((epoch, None)),
        [tag, chunk @ ..] if *tag == CHUNK_TAG => Some((epoch, Some(u32::from_be_bytes(chunk.try_into().ok()?)))),
        _ => None,
    }
}
