//! # keyraft-client
//!
//! Talks to a realm's replicas and verifies every answer with `keyraft_core` before
//! returning it: a lookup returns a [`Verified`] answer or an error saying whose fault it was.
//!
//! - [`Client::lookup`]: a verified answer about a user id, today or at a given epoch;
//! - [`Client::registration`] / [`Client::change`]: builders that make an entry, sign it with
//!   the owner's keys and submit it, optionally waiting until the client's quorum ratified it;
//!   the index comes from a verified lookup, so a server cannot make a client sign an entry
//!   for someone else's index;
//! - [`Client::history`]: every version of an identity, each proven at its epoch;
//! - [`Client::watch`]: the current value, then every change, with proofs;
//! - [`ClientError`] separates "the server misbehaved" from "try again" from "your request is
//!   wrong". An answer that proves nothing false but is of no use (too old for the TTL, an
//!   epoch not ratified by the verifiers the client requires yet, "try again") sends the client
//!   to the next replica, and the replica is asked last for [`ENDPOINT_DEMOTION_MS`].
//!
//! What a client accepts is its [`ClientRealm`]: the realm file's keys plus a quorum (the
//! replica majority, always, and a verifier threshold), an epoch TTL and a clock skew, each
//! of which [`ClientOptions`] may tighten or relax. The client remembers the newest epoch it
//! has verified per realm ([`EpochMemory`], optionally in a file) and rejects answers from
//! older epochs: a rollback. [`ProofChecker`] holds these rules and the memory; it verifies
//! saved proofs offline the same way.
//!
//! One module per job: `client` (the endpoints and the failover of a call across them),
//! `lookup`, `history`, `update` (building, signing and submitting an entry),
//! `update_status`, `watch`; `checker` (the rules a proof is verified by) and `memory` (the
//! epochs seen, kept in the state file); `options` (what a client accepts on top of its realm
//! file) and `error` (whose fault a failure is).
//!
//! [`Verified`]: keyraft_core::Verified
//! [`ClientRealm`]: keyraft_core::lookup::ClientRealm
#![forbid(unsafe_code)]

mod checker;
mod client;
mod error;
mod history;
mod lookup;
mod memory;
mod options;
mod update;
mod update_status;
mod watch;

pub use checker::ProofChecker;
pub use client::{client_channel_options, now_ms, Client, CALL_TIMEOUT_MS, CONNECT_TIMEOUT_MS, ENDPOINT_DEMOTION_MS};
pub use error::{code_in_words, network_cause, status_in_words, ClientError};
pub use history::{HistoryPage, HistoryVersion};
pub use lookup::{LookupAnswer, LookupOptions, LAG_WAIT_MS};
pub use memory::{EpochMemory, OWN_UPDATES_MAX};
pub use options::ClientOptions;
pub use update::{
    new_profile, PreparedUpdate, ProfileKeys, RegistrationProof, UpdateBuilder, UpdateOutcome, PROFILE_NONCE_BYTES,
    QUORUM_WAIT_MS, UPDATE_RETRY_MS,
};
pub use update_status::UpdateStatus;
pub use watch::{Watch, WatchUpdate, WATCH_RECONNECT_ROUNDS_MAX};

pub use keyraft_core::keys::public_key_of as public_key;
pub use keyraft_core::update::sign_entry;
