//! # keyraft-core
//!
//! Everything a keyraft client or third-party verifier needs, and nothing more: no async
//! runtime, no network, no storage. The server builds on the same code, so a client checks
//! answers with exactly the rules the replicas used to produce them.
//!
//! keyraft is a key transparency directory: a realm maps user ids to *entries* (a version,
//! an update policy and a commitment to the user's *profile* of public keys). Each user id
//! lives at an *index* derived with a VRF ([`vrf`]), so the tree reveals nothing about who is
//! registered. Updates are collected into *epochs*; each epoch ends with an [`EpochHead`]
//! committing to the root of a compressed prefix Merkle tree ([`tree`]) over all entries,
//! chained to the previous head, signed by a majority of the realm's replicas and ratified by
//! third-party verifiers that recompute it. A [`LookupProof`](lookup::LookupProof) lets a
//! client check an answer against those signatures ([`lookup::verify_lookup`]).
//!
//! The byte-exact protocol is in `docs/protocol.md`; the modules below implement it:
//! - [`encoding`]: the canonical binary encoding of everything hashed or signed;
//! - [`hash`]: domain separation labels for every hash and signature;
//! - [`ed25519`]: the one signature verification rule, single and batch;
//! - [`keys`], [`policy`], [`types`], [`update`]: the data and the update rules;
//! - [`identity`]: canonical user ids (protocol version 2: the id the VRF input carries);
//! - [`tree`], [`lookup`]: proofs and their verification, returning [`Verified`] values.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod clock;
pub mod command;
pub mod config_change;
pub mod ed25519;
pub mod encoding;
pub mod hash;
pub mod human;
pub mod identity;
pub mod key_file;
pub mod keys;
pub mod limits;
pub mod lookup;
pub mod policy;
pub mod realm_file;
pub mod recovery;
pub mod registration;
pub mod tree;
pub mod types;
pub mod update;
mod verified;
pub mod verifier_access;
pub mod vrf;

pub use command::{Command, LogPosition};
pub use config_change::{follow_chain, ConfigChain, ConfigChange, ConfigChangeError, SignedConfigChange};
pub use encoding::{decode_canonical, Canonical, DecodeError};
pub use hash::Digest;
pub use keys::{KeySignature, PublicKey, Signature};
pub use lookup::{verify_lookup, verify_lookup_at, ClientRealm, Lookup, LookupProof, VerifyError};
pub use policy::Policy;
pub use realm_file::RealmFile;
pub use types::{Entry, EpochHead, Index, Profile, RealmConfig};
pub use update::{SignedEntry, Update, UpdateBytes, UpdateRejection};
pub use verified::Verified;
