//! # keyraft-server
//!
//! A keyraft replica: the deterministic state machine of `keyraft-state` replicated with
//! openraft 0.9, the public gRPC API and the peer API over tonic, and the two proposers.
//!
//! How an update travels through a replica:
//! 1. [`service::PublicService`] checks it at the edge (sizes, the user id's VRF index,
//!    signatures against the current and the new policy, the version);
//! 2. [`node::Node::propose`] puts it into the Raft log, forwarding to the leader over the
//!    peer service when this node does not lead;
//! 3. once committed, [`raft::sm_store`] applies it on every replica with the step function,
//!    atomically with openraft's applied log id;
//! 4. the leader's [`proposers::epoch_proposer`] closes the epoch with a delimiter, every
//!    replica's [`proposers::signature_proposer`] signs the head, and once a majority of
//!    signatures is applied the epoch is keyserver-ratified and lookups answer from it.
//!
//! Reads go one way: the public service, [`watch`] and [`verifier_stream`] ask
//! [`read::ReadView`] (satisfying epochs, proofs, epoch info, waiting for an epoch), which
//! runs large reads on blocking threads; the two streams share [`stream::BoundedStream`].
//! What applying the log changes reaches the rest of the replica as the step's published
//! effects ([`effects`]): the proposers, waiting lookups, `Watch` and `VerifierStream` each wake
//! on the channel they depend on instead of polling the state, and apply never waits for
//! them. A proposer learns what became of its own command from the log's response
//! ([`raft::types::ApplyResponse`], the step's typed `Outcome`), which `outcome` turns into
//! the caller's answer: the one place a log outcome becomes a gRPC status.
//! Everything openraft-specific stays under [`raft`].
//!
//! Every task a replica starts is spawned through [`lifecycle::Tasks`] and ends before [`run`]
//! returns; so does the log's flusher thread.
#![forbid(unsafe_code)]

pub mod acceptor;
pub mod backup;
mod blocking;
pub mod config;
pub mod effects;
mod error;
pub mod forwarder;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod health;
pub mod lifecycle;
pub mod metrics;
pub mod node;
mod outcome;
mod page_token;
pub mod peer_client;
pub mod peer_service;
pub mod proposers;
pub mod raft;
pub mod rate_limits;
pub mod read;
pub mod registration;
pub mod request_limits;
mod retention;
pub mod seams;
pub mod server;
pub mod service;
mod snapshot_file;
pub mod stream;
pub mod tls;
mod update_status;
pub mod verifier_stream;
mod vrf_cache;
pub mod watch;

pub use config::{Loaded, NodeConfig};
pub use error::Error;
pub use seams::{MemoryEngine, Seams, StorageEngine};
pub use server::{run, run_with, Listeners, Listening};
