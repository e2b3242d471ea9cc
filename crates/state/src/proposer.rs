//! The proposers' decisions, as pure functions of persisted state and explicit inputs.
//!
//! The server runs these whenever an input changes (leadership, a timer, an applied entry),
//! so a restarted replica or a new leader re-derives what to propose from the state alone.
//! coname kept the signature proposer's progress only in memory and forgot to sign after a
//! restart; here nothing about it lives outside the stored state.

use crate::machine::EpochState;
/// The signatures over heads live with the epoch rules, which verifiers share.
pub use keyraft_epoch::signing::{ratify_head, sign_head};

/// How often epochs are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochIntervals {
    /// An epoch with pending updates is cut once this much time passed since the last one.
    pub min_epoch_interval_ms: u64,
    /// An epoch is cut once this much time passed, even without updates, so that silence is
    /// detectable (clients reject heads older than their TTL).
    pub max_epoch_interval_ms: u64,
}

/// What the epoch proposer should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochDecision {
    /// Propose this delimiter.
    Propose {
        /// The epoch to close.
        epoch: u64,
        /// The leader's clock, written into the log.
        timestamp_ms: u64,
    },
    /// Nothing to do before this time (unless another input changes).
    WaitUntil {
        /// When to re-evaluate, in ms since the Unix epoch.
        at_ms: u64,
    },
    /// Nothing to do until another input changes.
    Idle(IdleReason),
}

/// Why the epoch proposer waits for an event rather than a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleReason {
    /// Only the leader proposes delimiters.
    NotLeader,
    /// The last epoch has no replica majority yet; the next one may not be cut before.
    AwaitingRatification {
        /// The epoch waiting for signatures.
        epoch: u64,
    },
}

/// The epoch proposer's sensitivity list: leadership, ratification of the previous epoch,
/// the time since the last delimiter's timestamp, and whether updates are pending.
pub fn decide_epoch(state: &EpochState, is_leader: bool, now_ms: u64, intervals: EpochIntervals) -> EpochDecision {
    if !is_leader {
        return EpochDecision::Idle(IdleReason::NotLeader);
    }
    if !state.last_epoch_ratified() {
        return EpochDecision::Idle(IdleReason::AwaitingRatification { epoch: state.last_epoch });
    }
    let propose = EpochDecision::Propose { epoch: state.open_epoch(), timestamp_ms: now_ms };
    if state.last_epoch == 0 {
        return propose;
    }
    let max_at = state.last_issue_time_ms.saturating_add(intervals.max_epoch_interval_ms);
    let min_at = state.last_issue_time_ms.saturating_add(intervals.min_epoch_interval_ms);
    if now_ms >= max_at || (state.pending_updates > 0 && now_ms >= min_at) {
        return propose;
    }
    let at_ms = if state.pending_updates > 0 { min_at.min(max_at) } else { max_at };
    EpochDecision::WaitUntil { at_ms }
}

/// Capped exponential backoff for re-proposing: the rule clients and verifiers retry by too.
pub use keyraft_core::backoff::delay_ms as retry_delay_ms;

/// The signature proposer: the epoch this replica should sign, if any. `signed_last` says
/// whether the state already holds this replica's signature over the last head; `answered`
/// is the epoch whose signature the log last answered this replica's proposal of (applied,
/// by whichever replica answered). Once answered, the signature is in the log and this
/// replica's state shows it when it applies that far: proposing it again before then would
/// only add entries, as fast as the log answers, for as long as this replica lags (a
/// partition that keeps the leader's entries from it but not its proposals from the leader).
pub fn epoch_to_sign(state: &EpochState, signed_last: bool, answered: Option<u64>) -> Option<u64> {
    let done = signed_last || answered == Some(state.last_epoch);
    (state.last_epoch > 0 && !done).then_some(state.last_epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    const IV: EpochIntervals = EpochIntervals { min_epoch_interval_ms: 100, max_epoch_interval_ms: 1000 };

    fn state(last_epoch: u64, ratified: u64, t: u64, pending: u64) -> EpochState {
        EpochState {
            last_epoch,
            last_issue_time_ms: t,
            last_head_hash: [0; 32],
            ratified_epoch: ratified,
            pending_updates: pending,
        }
    }

    #[test]
    fn followers_never_propose() {
        assert_eq!(decide_epoch(&state(0, 0, 0, 5), false, 10_000, IV), EpochDecision::Idle(IdleReason::NotLeader));
    }

    #[test]
    fn first_epoch_is_cut_at_once() {
        assert_eq!(decide_epoch(&state(0, 0, 0, 0), true, 7, IV), EpochDecision::Propose { epoch: 1, timestamp_ms: 7 });
    }

    #[test]
    fn waits_for_ratification() {
        assert_eq!(
            decide_epoch(&state(3, 2, 0, 5), true, 10_000, IV),
            EpochDecision::Idle(IdleReason::AwaitingRatification { epoch: 3 })
        );
    }

    #[test]
    fn min_interval_with_updates_max_without() {
        let s = state(3, 3, 1000, 1);
        assert_eq!(decide_epoch(&s, true, 1050, IV), EpochDecision::WaitUntil { at_ms: 1100 });
        assert_eq!(decide_epoch(&s, true, 1100, IV), EpochDecision::Propose { epoch: 4, timestamp_ms: 1100 });
        let idle = state(3, 3, 1000, 0);
        assert_eq!(decide_epoch(&idle, true, 1100, IV), EpochDecision::WaitUntil { at_ms: 2000 });
        assert_eq!(decide_epoch(&idle, true, 2000, IV), EpochDecision::Propose { epoch: 4, timestamp_ms: 2000 });
    }

    #[test]
    fn signs_only_missing_last_head() {
        assert_eq!(epoch_to_sign(&state(0, 0, 0, 0), false, None), None);
        assert_eq!(epoch_to_sign(&state(4, 3, 0, 0), false, None), Some(4));
        assert_eq!(epoch_to_sign(&state(4, 3, 0, 0), true, None), None);
        // Answered but not applied here yet: wait for the state, do not propose again.
        assert_eq!(epoch_to_sign(&state(4, 3, 0, 0), false, Some(4)), None);
        // An answer about an earlier head does not cover the new one.
        assert_eq!(epoch_to_sign(&state(5, 4, 0, 0), false, Some(4)), Some(5));
    }
}
