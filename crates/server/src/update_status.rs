//! What became of the updates this replica's handlers were given, for `GetUpdateStatus`:
//! updates being proposed right now, and a bounded memory of recent rejections. Both are
//! local to this replica (an update applied is found in the state instead, on any replica).

use keyraft_core::UpdateRejection;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

/// How many recent rejections `GetUpdateStatus` remembers.
pub(crate) const REJECTIONS_REMEMBERED_MAX: usize = 10_000;

/// An update identifier.
type UpdateId = [u8; 32];

/// A remembered rejection: why, and whether resubmitting later may succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub(crate) reason: String,
    pub(crate) retryable: bool,
}

#[derive(Debug, Default)]
struct Rejections {
    by_id: HashMap<UpdateId, Rejection>,
    /// Oldest first.
    order: VecDeque<UpdateId>,
}

/// Updates being proposed and recently rejected. Clones share it.
#[derive(Debug, Clone, Default)]
pub(crate) struct UpdateTracker {
    /// Update ids being proposed by this replica's handlers, with how many handlers propose each.
    proposing: Arc<Mutex<HashMap<UpdateId, usize>>>,
    rejections: Arc<Mutex<Rejections>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl UpdateTracker {
    /// Counts `id` as being proposed until the guard is dropped.
    pub(crate) fn proposing(&self, id: UpdateId) -> Proposing {
        *lock(&self.proposing).entry(id).or_default() += 1;
        Proposing { proposing: self.proposing.clone(), id }
    }

    /// Whether a handler of this replica is proposing `id` now.
    pub(crate) fn is_proposing(&self, id: &UpdateId) -> bool {
        lock(&self.proposing).contains_key(id)
    }

    /// Remembers that `id` was rejected, forgetting the oldest beyond
    /// [`REJECTIONS_REMEMBERED_MAX`].
    pub(crate) fn rejected(&self, id: UpdateId, reason: &UpdateRejection) {
        let mut guard = lock(&self.rejections);
        let rejections = &mut *guard;
        let rejection = Rejection { reason: reason.to_string(), retryable: reason.is_retryable() };
        if rejections.by_id.insert(id, rejection).is_none() {
            rejections.order.push_back(id);
        }
        while rejections.order.len() > REJECTIONS_REMEMBERED_MAX {
            if let Some(old) = rejections.order.pop_front() {
                rejections.by_id.remove(&old);
            }
        }
    }

    /// The remembered rejection of `id`, if any.
    pub(crate) fn rejection(&self, id: &UpdateId) -> Option<Rejection> {
        lock(&self.rejections).by_id.get(id).cloned()
    }
}

/// An update id counted as being proposed while its handler proposes it. Dropping the guard,
/// also when the handler's future is dropped (the caller or the server's timeout gave up),
/// uncounts it, so GetUpdateStatus never answers PENDING for an update no handler proposes any
/// more.
pub(crate) struct Proposing {
    proposing: Arc<Mutex<HashMap<UpdateId, usize>>>,
    id: UpdateId,
}

impl Drop for Proposing {
    fn drop(&mut self) {
        let mut proposing = lock(&self.proposing);
        if let Some(n) = proposing.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                proposing.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposing_counts_every_handler_until_the_last_guard_drops() {
        let tracker = UpdateTracker::default();
        let first = tracker.proposing([1; 32]);
        let second = tracker.proposing([1; 32]);
        drop(first);
        assert!(tracker.is_proposing(&[1; 32]));
        drop(second);
        assert!(!tracker.is_proposing(&[1; 32]));
    }

    #[test]
    fn rejections_are_remembered_up_to_the_bound_oldest_forgotten_first() {
        let tracker = UpdateTracker::default();
        let reason = UpdateRejection::AlreadyUpdatedInEpoch { epoch: 3 };
        for i in 0..=REJECTIONS_REMEMBERED_MAX as u32 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_be_bytes());
            tracker.rejected(id, &reason);
        }
        assert_eq!(tracker.rejection(&[0; 32]), None, "the oldest is forgotten");
        let mut newest = [0u8; 32];
        newest[..4].copy_from_slice(&(REJECTIONS_REMEMBERED_MAX as u32).to_be_bytes());
        let remembered = tracker.rejection(&newest).unwrap();
        assert!(remembered.retryable);
        assert_eq!(remembered.reason, reason.to_string());
    }
}
