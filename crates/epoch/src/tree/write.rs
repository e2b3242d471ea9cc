//! Applying an epoch: one sorted descent from the root page rewrites every page the epoch's
//! leaves touch into new page versions of that epoch, with the subtrees under the root page on
//! several threads when there is enough work.

use super::cache::{PageCache, WrittenPages};
use super::chunk::{read_location, read_root, root_key, ChunkStream, STREAMS};
use super::page::{bits, page_id, slot, Location, Node, Page, PageId, PAGE_BITS, ROOT_PAGE};
use crate::error::{corrupt, StateError};
use keyraft_core::tree::empty_hash;
use keyraft_core::{Digest, Index};
use keyraft_storage::{Batch, Storage};
use std::collections::HashMap;
use std::sync::Arc;

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
    assert!(d.out.is_empty(), "only subtrees write chunks");
    batch.put(root_key(epoch), root.encode_stored(0, epoch));
    written.push((ROOT_PAGE, (epoch, Arc::new(root.encode()))));
    Ok((hash, written))
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
            Some(at) => {
                Page::decode_stored(read_location(self.store, &mut self.chunks, at)?, usize::from(id.0), at.epoch)
            }
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
