//! The step's effects, published: how the apply path tells the rest of the replica what
//! changed, without ever waiting for it.
//!
//! Each step returns [`Effect`]s next to its outcome; the state-machine store collects them
//! for a whole apply call and, once that call's writes are in storage, publishes them here.
//! Every kind of effect has its own coalescing channel (a `tokio::sync::watch`): a consumer
//! sees the newest value and at least one wake-up after any change, however slowly it reads,
//! and publishing never blocks apply. Who listens to what:
//!
//! | channel        | published on                          | consumers                                   |
//! |----------------|---------------------------------------|---------------------------------------------|
//! | `applied`      | every apply call, snapshot installs   | admin and membership waits, status          |
//! | `closed`       | [`Effect::HeadStored`]                 | signature proposer, epoch-boundary waits    |
//! | `signatures`   | [`Effect::SignaturesChanged`], [`Effect::EpochRatified`] | lookups and updates waiting for ratifications, `Watch` |
//! | `ratified`     | [`Effect::EpochRatified`]              | epoch proposer, `VerifierStream`            |
//! | `pending`      | [`Effect::PendingUpdatesChanged`]      | epoch proposer                              |
//!
//! `applied` is published first, so whoever is woken by another channel reads an epoch state
//! at least as new as the change that woke it. Consumers follow the usual pattern: mark the
//! channel seen, read the state, then wait for `changed()`; a change in between is never
//! missed.

use keyraft_state::{Effect, EpochState};
use tokio::sync::watch;

/// The applied position and epoch state, as of the last apply call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// The last applied Raft log index.
    pub raft_index: u64,
    /// The persisted epoch state.
    pub epoch_state: EpochState,
}

/// A change to some epoch's signatures (replica or verifier).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SignaturesChanged {
    /// The newest epoch whose signatures changed.
    pub epoch: u64,
    /// Counts changes, so two changes to one epoch are two values.
    pub changes: u64,
}

/// The publishing side, owned by the state-machine store's shared state.
#[derive(Debug)]
pub struct Effects {
    applied: watch::Sender<Applied>,
    closed: watch::Sender<u64>,
    signatures: watch::Sender<SignaturesChanged>,
    ratified: watch::Sender<u64>,
    pending: watch::Sender<u64>,
}

impl Effects {
    /// Channels starting at `applied`.
    pub fn new(applied: Applied) -> Self {
        let st = applied.epoch_state;
        Self {
            applied: watch::channel(applied).0,
            closed: watch::channel(st.last_epoch).0,
            signatures: watch::channel(SignaturesChanged::default()).0,
            ratified: watch::channel(st.ratified_epoch).0,
            pending: watch::channel(0).0,
        }
    }

    /// Publishes one apply call: its new position and epoch state, then its effects.
    pub fn publish(&self, applied: Applied, effects: &[Effect]) {
        self.applied.send_replace(applied);
        let mut pending_changed = false;
        for effect in effects {
            match *effect {
                Effect::HeadStored { epoch } => raise(&self.closed, epoch),
                Effect::SignaturesChanged { epoch } | Effect::EpochRatified { epoch } => {
                    if let Effect::EpochRatified { .. } = effect {
                        raise(&self.ratified, epoch);
                    }
                    self.signatures.send_modify(|s| {
                        s.epoch = epoch;
                        s.changes += 1;
                    });
                }
                Effect::PendingUpdatesChanged => pending_changed = true,
            }
        }
        // One wake-up for a call that staged a thousand updates.
        if pending_changed {
            self.pending.send_modify(|n| *n += 1);
        }
    }

    /// Publishes a state replaced wholesale (a snapshot installed): everything may have
    /// changed, so every channel wakes its consumers.
    pub fn publish_replaced(&self, applied: Applied) {
        let st = applied.epoch_state;
        self.applied.send_replace(applied);
        self.closed.send_replace(st.last_epoch);
        self.ratified.send_replace(st.ratified_epoch);
        self.signatures.send_modify(|s| {
            s.epoch = st.last_epoch;
            s.changes += 1;
        });
        self.pending.send_modify(|n| *n += 1);
    }

    /// The position and epoch state of the last apply call.
    pub fn applied(&self) -> Applied {
        *self.applied.borrow()
    }

    /// Woken after every apply call.
    pub fn subscribe_applied(&self) -> watch::Receiver<Applied> {
        self.applied.subscribe()
    }

    /// Woken when an epoch closes; the value is the newest closed epoch.
    pub fn subscribe_closed(&self) -> watch::Receiver<u64> {
        self.closed.subscribe()
    }

    /// Woken when signatures of an epoch change (ratification included).
    pub fn subscribe_signatures(&self) -> watch::Receiver<SignaturesChanged> {
        self.signatures.subscribe()
    }

    /// Woken when an epoch becomes keyserver-ratified; the value is the newest such epoch.
    pub fn subscribe_ratified(&self) -> watch::Receiver<u64> {
        self.ratified.subscribe()
    }

    /// Woken when the open epoch gains updates.
    pub fn subscribe_pending(&self) -> watch::Receiver<u64> {
        self.pending.subscribe()
    }
}

/// Epochs only move forward; a replayed effect for an older epoch wakes nobody.
fn raise(channel: &watch::Sender<u64>, epoch: u64) {
    channel.send_if_modified(|newest| {
        let raised = epoch > *newest;
        if raised {
            *newest = epoch;
        }
        raised
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(last_epoch: u64, ratified_epoch: u64) -> Applied {
        Applied { raft_index: 1, epoch_state: EpochState { last_epoch, ratified_epoch, ..EpochState::default() } }
    }

    #[test]
    fn each_effect_wakes_its_own_channel_only() {
        let effects = Effects::new(Applied::default());
        let mut closed = effects.subscribe_closed();
        let mut signatures = effects.subscribe_signatures();
        let mut ratified = effects.subscribe_ratified();
        let mut pending = effects.subscribe_pending();
        let all = effects.subscribe_applied();

        effects.publish(applied(1, 0), &[Effect::HeadStored { epoch: 1 }]);
        assert!(closed.has_changed().unwrap() && all.has_changed().unwrap());
        assert!(!signatures.has_changed().unwrap() && !ratified.has_changed().unwrap());
        assert!(!pending.has_changed().unwrap());
        assert_eq!(*closed.borrow_and_update(), 1);

        effects.publish(applied(1, 0), &[Effect::SignaturesChanged { epoch: 1 }]);
        assert!(signatures.has_changed().unwrap() && !ratified.has_changed().unwrap());
        signatures.borrow_and_update();

        effects.publish(applied(1, 1), &[Effect::SignaturesChanged { epoch: 1 }, Effect::EpochRatified { epoch: 1 }]);
        assert!(ratified.has_changed().unwrap() && signatures.has_changed().unwrap());
        assert_eq!(*ratified.borrow_and_update(), 1);
        assert_eq!(signatures.borrow_and_update().changes, 3);
        assert!(!closed.has_changed().unwrap());

        effects.publish(applied(1, 1), &[Effect::PendingUpdatesChanged, Effect::PendingUpdatesChanged]);
        assert!(pending.has_changed().unwrap());
        assert_eq!(*pending.borrow_and_update(), 1, "one wake-up per apply call");
    }

    #[test]
    fn a_replayed_older_epoch_wakes_nobody() {
        let effects = Effects::new(applied(5, 5));
        let mut closed = effects.subscribe_closed();
        let ratified = effects.subscribe_ratified();
        effects.publish(applied(5, 5), &[Effect::HeadStored { epoch: 3 }, Effect::EpochRatified { epoch: 3 }]);
        assert!(!closed.has_changed().unwrap());
        assert!(!ratified.has_changed().unwrap());
        assert_eq!(*closed.borrow_and_update(), 5);
    }

    #[test]
    fn a_replaced_state_wakes_everyone() {
        let effects = Effects::new(applied(5, 5));
        let mut receivers = (
            effects.subscribe_closed(),
            effects.subscribe_signatures(),
            effects.subscribe_ratified(),
            effects.subscribe_pending(),
        );
        effects.publish_replaced(applied(9, 8));
        assert_eq!(*receivers.0.borrow_and_update(), 9);
        assert!(receivers.1.has_changed().unwrap());
        assert_eq!(*receivers.2.borrow_and_update(), 8);
        assert!(receivers.3.has_changed().unwrap());
    }

    #[test]
    fn a_slow_consumer_never_blocks_publishing() {
        let effects = Effects::new(Applied::default());
        let _never_read = effects.subscribe_signatures();
        for epoch in 1..=10_000 {
            effects.publish(applied(epoch, epoch), &[Effect::EpochRatified { epoch }]);
        }
        assert_eq!(effects.applied().epoch_state.ratified_epoch, 10_000);
    }
}
