//! # keyraft-state
//!
//! The deterministic heart of a keyraft replica: the persistent prefix tree and the step
//! function that applies the replicated log to it, over any `keyraft_storage::Storage`.
//! Nothing here touches the network, a clock or randomness; the server crate feeds the
//! committed log in and runs the returned effects.
//!
//! - [`StateMachine::step`] / [`StateMachine::apply`]: one log command in, one atomic batch
//!   and a list of deferred effects out;
//! - [`proposer`]: the epoch and signature proposers' decisions as pure functions of the
//!   persisted state, so a restarted replica or a new leader re-derives them;
//! - [`harness`]: a whole realm in one process, driven by an in-memory log, for tests and demos.
#![forbid(unsafe_code)]

mod error;
pub mod harness;
mod keys;
mod machine;
pub mod parallel;
mod proof;
pub mod proposer;
#[doc(hidden)]
pub mod testing;
mod tree;
pub mod verifier;

pub use error::StateError;
pub use keyraft_core::{Command, LogPosition};
pub use machine::{
    Effect, EpochState, Ignored, Outcome, PublishedEpoch, Rejected, StateMachine, Step, STATE_FORMAT_VERSION,
};
pub use proof::LookupParts;
