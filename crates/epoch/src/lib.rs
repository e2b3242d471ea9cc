//! # keyraft-epoch
//!
//! The epoch rules that replicas and verifiers share, and nothing else: a verifier depends on
//! this crate, the core and storage, never on the replica's step function or proposers, and a
//! replica closes its epochs with the very functions a verifier recomputes them with, so the
//! two cannot drift apart (a drift would make every verifier halt).
//!
//! ## The tree
//!
//! The realm's directory is a binary prefix tree over 256-bit VRF indexes (hashing rules and
//! proofs in `keyraft_core::tree`). It is stored persistently in [`tree`] pages of four levels
//! each: an epoch writes a new version of every page it changes (path copying), packed into
//! chunks keyed epoch first (`t || epoch || 1 || chunk`, the root page at `t || epoch || 0`,
//! see [`keys`]), so the tree of every closed epoch stays readable by point reads and a proof
//! reads about six pages. Applying an epoch is one sorted descent; the sixteen subtrees under
//! the root page are rewritten on all cores ([`parallel`]) with the same bytes as on one.
//!
//! ## The head chain
//!
//! Each closed epoch has an [`EpochHead`](keyraft_core::EpochHead): realm name, epoch number,
//! tree root, hash of the previous head, issue time, update count and the hash of the realm
//! configuration. [`head::close_epoch`] applies an epoch's leaves to the previous epoch's tree
//! and builds the [`head::next_head`] after the chain's [`head::ChainTip`]: epoch numbers
//! follow each other, each head commits to the one before, and issue times never go back.
//! Replicas sign a head with [`signing::sign_head`] (a majority makes it keyserver-ratified);
//! verifiers ratify it with [`signing::ratify_head`].
//!
//! ## What a verifier recomputes
//!
//! [`verifier::VerifierState`] receives each published epoch (its updates in index order and
//! the head a replica majority signed) and re-checks it from its own store: epochs arrive in
//! order, updates are sorted and at most one per index, every update obeys the update rules
//! against the entry it replaces (versions, both policies, signatures), and the head it
//! computes with [`head::close_epoch`] over its own tree equals the received one byte for
//! byte. Any difference is a [`verifier::Mismatch`] naming what was expected and received.
#![forbid(unsafe_code)]

mod error;
pub mod head;
pub mod keys;
pub mod parallel;
pub mod signing;
#[doc(hidden)]
pub mod testing;
pub mod tree;
pub mod verifier;

pub use error::StateError;
