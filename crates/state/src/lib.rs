//! # keyraft-state
//!
//! The deterministic heart of a keyraft replica: the step function that applies the
//! replicated log to the stored state, over any `keyraft_storage::Storage`. The tree, the
//! head chain and the verifier's recomputation live in `keyraft_epoch`, which replicas and
//! verifiers share: this crate closes epochs with the same functions a verifier checks them
//! with.
//! Nothing here touches the network, a clock or randomness; the server crate feeds the
//! committed log in and runs the returned effects.
//!
//! - [`StateMachine::step`] / [`StateMachine::apply`]: one log command in, one atomic batch
//!   and a list of deferred effects out;
//! - [`proposer`]: the epoch and signature proposers' decisions as pure functions of the
//!   persisted state, so a restarted replica or a new leader re-derives them;
//! - [`harness`]: a whole realm in one process, driven by an in-memory log, for tests and demos.
#![forbid(unsafe_code)]

pub mod harness;
mod keys;
mod machine;
mod proof;
pub mod proposer;

pub use keyraft_epoch::StateError;

fn corrupt(what: impl std::fmt::Display) -> StateError {
    StateError::corrupt(what)
}
pub use keyraft_core::{Command, LogPosition};
pub use machine::retention;
pub use machine::{
    AppliedChange, Effect, EpochState, Ignored, Outcome, PublishedEpoch, PublishedEpochBytes, Rejected, StateMachine,
    Step, STATE_FORMAT_VERSION,
};
pub use proof::LookupParts;
