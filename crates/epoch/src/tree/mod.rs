//! The persistent compressed prefix tree, stored as versioned pages.
//!
//! The tree is binary (see `keyraft_core::tree` for the hashing rules and the proof format): a
//! leaf sits at the shallowest depth where no other leaf shares its path, and an interior
//! node holds both children's hashes. Replicas and verifiers store it
//! with this module, so the roots they compute agree byte for byte.
//!
//! ## Pages
//!
//! The tree is stored in *pages*: a page holds the nodes of one subtree of `PAGE_BITS` (4)
//! levels (a stratum) under one prefix, so 256 levels make 64 strata:
//!
//! ```text
//! page (stratum s, prefix: the first 4s index bits)
//!   depth 4s      1 node     slot (0, ----)
//!   depth 4s + 1  2 nodes    slot (1, b---)
//!   depth 4s + 2  4 nodes    slot (2, bb--)
//!   depth 4s + 3  8 nodes    slot (3, bbb-)
//!   children     16 child pages by the next 4 index bits, each at (epoch, chunk, offset, length)
//! ```
//!
//! The node at depth `d` on the path of an index is in the page of stratum `d / 4` under the
//! index's first `4 * (d / 4)` bits, at the slot named by the next `d % 4` bits.
//!
//! Pages are persistent (path copying): an epoch writes a new version of every page it
//! changes, and every page records the epoch of the version of each of its child pages, so the
//! tree of any epoch is read from its root page by point reads. A page that changes forces its
//! parent to change (the child's hash is in it), so the parent's pointers are always current.
//! The root page is written every epoch.
//!
//! ## Chunks
//!
//! An epoch's page versions are packed into chunks of about 16 KiB keyed epoch first
//! (`t || epoch || 1 || chunk`), and its root page is kept apart (`t || epoch || 0`, see
//! [`keys`](crate::keys)); parents point at their children by (epoch, chunk, offset, length).
//! An epoch is then about a thousand keys appended at the end of the keyspace rather than tens
//! of thousands scattered across it: sled charges several microseconds per key written (and
//! the sled engine keeps values this large in its value log, see `keyraft_storage`).
//!
//! ## Why pages
//!
//! Pages make an epoch cheap: applying 10k updates to a million entries writes about 25k
//! pages instead of 130k nodes, and a proof reads about six pages instead of twenty nodes.
//! Pages are stored compact (`page` has both layouts): only the leaves and the hashes at a
//! page's lower boundary, about half the bytes of spelling out every interior node; reading a
//! page from storage rehashes its interior nodes (at most 15 hashes), while the
//! [`PageCache`] keeps pages expanded so that applying an epoch hashes only what changed. An epoch is applied as one sorted batch: a single descent from the root touches
//! each affected node once and hashes it once, and rewrites each touched page while it is
//! inside it, encoding the page when it leaves (children first, so a parent is encoded with
//! its children's new locations). The sixteen subtrees under the root page are independent:
//! each writes its own stream of chunks (chunk numbers `stream << 24 | n`), so they are
//! rewritten on all cores and the bytes are the same as on one.
//!
//! ## Reading and writing
//!
//! Reads ([`root_at`], [`prove`]) serve any applied epoch: they start at that epoch's root page
//! and follow child locations, reading each chunk at most once per call. Writes
//! ([`apply_epoch`]) only ever extend the newest tree, whose pages a [`PageCache`] keeps in
//! memory; the caller puts an epoch's [`WrittenPages`] into it once the epoch's batch is
//! written (the exact rule is on [`PageCache`]).
//!
//! ## Retention
//!
//! Without it every page version stays, so any past epoch can be proven. A replica that keeps
//! only the trees from some epoch on deletes what [`garbage_before`] finds: the root pages of
//! earlier epochs and their chunks that the tree of that epoch no longer reaches (`prune`
//! explains why one walk of one tree decides it).
//!
//! ## Files
//!
//! - `page`: the page layouts (expanded in memory, compact in storage), node slots, the page
//!   codecs and page identities;
//! - `chunk`: the storage keys, packing an epoch's pages into chunk streams, reading a page
//!   version back from its location;
//! - `cache`: the newest page versions kept in memory for the next epoch;
//! - `read`: roots and proofs of any epoch;
//! - `write`: applying an epoch's leaves in one descent, subtrees on several threads;
//! - `prune`: what the trees from an epoch on no longer need;
//! - `tests`: the whole cycle against a model, across thread counts and cold caches.

mod cache;
mod chunk;
mod page;
mod prune;
mod read;
#[cfg(test)]
mod tests;
mod write;

pub use cache::{PageCache, PageVersion, WrittenPages};
pub use page::PageId;
pub use prune::{garbage_before, reachable_chunks, Garbage};
pub use read::{prove, root_at};
pub use write::apply_epoch;
