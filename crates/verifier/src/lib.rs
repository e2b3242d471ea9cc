//! # keyraft-verifier
//!
//! A third-party verifier of a keyraft realm. It streams the realm's keyserver-ratified epochs
//! from any replica (`VerifierStream`), re-checks every update exactly as the replicas do
//! (versions, both policies, signatures, one update per identity per epoch), rebuilds the tree,
//! recomputes each head and checks the head chain, then signs the head with its own key and
//! pushes the ratification (`PushRatification`) until a replica accepts it.
//!
//! On any mismatch it neither crashes nor signs: it writes an evidence file (the received head
//! and its replica signatures, the updates, and what it expected: enough to check offline),
//! logs an alarm, writes `HALTED` into its data directory and stops ratifying the realm until
//! an operator removes that file. A restarted verifier resumes after its last committed epoch
//! (the stream is resumed by epoch and root, so a server whose history differs is refused), and
//! ratifies every missed epoch in order. Before any new ratification it ratifies the epochs it
//! verified that the realm lacks (a stop between making an epoch durable and pushing its
//! ratification), and on SIGTERM it pushes what it holds, for a while, before exiting. It
//! reconnects with jittered backoff and fails over between replicas.
#![forbid(unsafe_code)]

mod config;
pub mod daemon;
mod evidence;
mod framing;
pub mod metrics;
mod push;

pub use daemon::{run, run_seamed, run_with, Config, Error, Seams};
