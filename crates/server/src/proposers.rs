//! The epoch proposer and the signature proposer: tasks that re-evaluate the pure decisions
//! of [`keyraft_state::proposer`] whenever an input changes (an apply, a leadership change, a
//! timer) and put the result into the log. Neither keeps progress outside the persisted
//! state, so a restart or a new leader picks up exactly where the state says.

use crate::config::EpochSettings;
use crate::node::Node;
use crate::raft::types::{ApplyResponse, NodeAddr, NodeId};
use keyraft_core::clock::Clock;
use keyraft_core::Command;
use keyraft_proto::convert::encode_log_entry;
use keyraft_state::proposer::{decide_epoch, epoch_to_sign, retry_delay_ms, EpochDecision, EpochIntervals};
use keyraft_state::Outcome;
use openraft::metrics::RaftServerMetrics;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What wakes a proposer: the published effects it depends on, leadership changes, a
/// timer, shutdown. The receivers live as long as the proposer, and each round marks them seen
/// before reading the state, so a change between the read and the wait is never missed.
struct Wakeups {
    effect: watch::Receiver<u64>,
    other_effect: Option<watch::Receiver<u64>>,
    leadership: watch::Receiver<RaftServerMetrics<NodeId, NodeAddr>>,
}

impl Wakeups {
    fn new(node: &Node, effect: watch::Receiver<u64>, other_effect: Option<watch::Receiver<u64>>) -> Self {
        Self { effect, other_effect, leadership: node.raft.server_metrics() }
    }

    /// Marks everything seen; call before reading the state a decision is made from.
    fn mark_seen(&mut self) {
        self.effect.mark_unchanged();
        if let Some(rx) = &mut self.other_effect {
            rx.mark_unchanged();
        }
        self.leadership.mark_unchanged();
    }

    /// Waits for a change, `timeout` or shutdown; false on shutdown and once Raft has stopped
    /// (its metrics channel closes with the core: waiting on it again would return at once,
    /// and the proposer would spin).
    async fn wait(&mut self, timeout: Option<Duration>, shutdown: &CancellationToken) -> bool {
        let sleep = tokio::time::sleep(timeout.unwrap_or(Duration::from_secs(3600)));
        let other = async {
            match &mut self.other_effect {
                Some(rx) => rx.changed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = self.effect.changed() => r.is_ok(),
            r = other => r.is_ok(),
            r = self.leadership.changed() => r.is_ok(),
            () = sleep => true,
            () = shutdown.cancelled() => false,
        }
    }
}

/// Cuts epochs on the leader, by the sensitivity list of docs/architecture.md section 2,
/// stamping them with `clock`.
pub async fn epoch_proposer(
    node: Arc<Node>,
    settings: EpochSettings,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) {
    let intervals = EpochIntervals {
        min_epoch_interval_ms: settings.min_epoch_interval_ms,
        max_epoch_interval_ms: settings.max_epoch_interval_ms,
    };
    // Ratification lets the next epoch be cut; pending updates start the clock towards it.
    let effects = node.shared.effects();
    let mut wakeups = Wakeups::new(&node, effects.subscribe_ratified(), Some(effects.subscribe_pending()));
    let mut attempt = 0u32;
    while !shutdown.is_cancelled() {
        wakeups.mark_seen();
        let state = node.shared.applied().epoch_state;
        let now = clock.now_ms();
        match decide_epoch(&state, node.is_leader(), now, intervals) {
            EpochDecision::Propose { epoch, timestamp_ms } => {
                let bytes = encode_log_entry(&Command::EpochDelimiter { epoch, timestamp_ms });
                match node.propose_local(bytes).await.map(|p| p.response) {
                    Ok(ApplyResponse::Applied(Outcome::EpochClosed(head))) => {
                        tracing::debug!(epoch = head.epoch, "epoch closed");
                        attempt = 0;
                    }
                    Ok(other) => {
                        tracing::debug!(epoch, ?other, "delimiter did not close the epoch");
                        attempt = attempt.saturating_add(1);
                    }
                    Err(e) => {
                        tracing::debug!(epoch, error = %e, "proposing a delimiter failed");
                        attempt = attempt.saturating_add(1);
                    }
                }
                if attempt > 0 {
                    let delay = retry_delay_ms(attempt - 1, settings.proposal_retry_ms, settings.proposal_retry_max_ms);
                    if !wakeups.wait(Some(Duration::from_millis(delay)), &shutdown).await {
                        return;
                    }
                }
            }
            EpochDecision::WaitUntil { at_ms } => {
                let timeout = Duration::from_millis(at_ms.saturating_sub(now).max(1));
                if !wakeups.wait(Some(timeout), &shutdown).await {
                    return;
                }
            }
            EpochDecision::Idle(_) => {
                // Leadership and ratification arrive as metrics and apply changes; the timeout
                // only bounds how long a missed notification could delay us.
                if !wakeups.wait(Some(Duration::from_millis(settings.max_epoch_interval_ms)), &shutdown).await {
                    return;
                }
            }
        }
    }
}

/// Signs every new head with this replica's key and proposes the signature until it is
/// applied.
pub async fn signature_proposer(node: Arc<Node>, settings: EpochSettings, shutdown: CancellationToken) {
    // A new head is the only thing to sign; leadership does not matter here.
    let mut wakeups = Wakeups::new(&node, node.shared.effects().subscribe_closed(), None);
    let mut attempt = 0u32;
    let mut last_refusal: Option<String> = None;
    // The epoch whose signature the log last answered (see `epoch_to_sign`).
    let mut answered: Option<u64> = None;
    while !shutdown.is_cancelled() {
        wakeups.mark_seen();
        let state = node.shared.applied().epoch_state;
        let to_sign = {
            let m = node.shared.read();
            // Heads are signed with the key bound to this node in the configuration they
            // commit to; after a key rotation that is another key than before.
            let config = m.config_of_epoch(state.last_epoch).clone();
            let ours = node.signing_key_for(&config).map(|(p, _)| *p);
            let signed = match (&ours, m.replica_signatures(state.last_epoch)) {
                (Ok(ours), Ok(sigs)) => {
                    if last_refusal.take().is_some() {
                        tracing::info!(epoch = state.last_epoch, "this replica signs heads again");
                    }
                    sigs.iter().any(|(k, _)| k == ours)
                }
                // No key of ours signs under this configuration: nothing to do but say so.
                (Err(why), _) => {
                    // Once per reason, not once per head: a learner or a replaced node would
                    // otherwise fill the log every epoch.
                    if last_refusal.as_deref() != Some(why.as_str()) {
                        tracing::warn!(epoch = state.last_epoch, reason = %why, "this replica does not sign heads");
                        last_refusal = Some(why.clone());
                    }
                    true
                }
                (_, Err(e)) => {
                    tracing::error!(error = %e, "reading signatures failed");
                    false
                }
            };
            match epoch_to_sign(&state, signed, answered) {
                Some(epoch) => m.head(epoch).ok().flatten().map(|h| (h, config)),
                None => None,
            }
        };
        let Some((head, config)) = to_sign else {
            attempt = 0;
            if !wakeups.wait(None, &shutdown).await {
                return;
            }
            continue;
        };
        let command = match node.sign_head(&head, &config) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot sign with this replica's key");
                return;
            }
        };
        match node.propose(&command).await {
            Ok(r) => {
                tracing::debug!(epoch = head.epoch, ?r, "head signature applied");
                answered = Some(head.epoch);
                attempt = 0;
                continue;
            }
            Err(e) => {
                tracing::debug!(epoch = head.epoch, error = %e, "proposing a head signature failed");
                attempt = attempt.saturating_add(1);
            }
        }
        let delay =
            retry_delay_ms(attempt.saturating_sub(1), settings.proposal_retry_ms, settings.proposal_retry_max_ms);
        if !wakeups.wait(Some(Duration::from_millis(delay)), &shutdown).await {
            return;
        }
    }
}
