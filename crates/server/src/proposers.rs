//! The epoch proposer and the signature proposer: tasks that re-evaluate the pure decisions
//! of [`keyraft_state::proposer`] whenever an input changes (an apply, a leadership change, a
//! timer) and put the result into the log. Neither keeps progress outside the persisted
//! state, so a restart or a new leader picks up exactly where the state says.

use crate::config::EpochSettings;
use crate::node::Node;
use crate::raft::types::ApplyResponse;
use keyraft_core::Command;
use keyraft_proto::convert::encode_log_entry;
use keyraft_state::proposer::{decide_epoch, epoch_to_sign, retry_delay_ms, EpochDecision, EpochIntervals};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Waits for an apply, a metrics change (leadership), `timeout` or shutdown; false on shutdown
/// and once Raft has stopped (its metrics channel closes with the core: waiting on it again
/// would return at once, and the proposer would spin).
async fn wait_for_input(node: &Node, timeout: Option<Duration>, shutdown: &CancellationToken) -> bool {
    let mut changes = node.shared.subscribe();
    let mut metrics = node.raft.metrics();
    changes.borrow_and_update();
    if metrics.borrow_and_update().running_state.is_err() {
        return false;
    }
    let sleep = tokio::time::sleep(timeout.unwrap_or(Duration::from_secs(3600)));
    tokio::select! {
        r = changes.changed() => r.is_ok(),
        r = metrics.changed() => r.is_ok() && metrics.borrow().running_state.is_ok(),
        () = sleep => true,
        () = shutdown.cancelled() => false,
    }
}

/// Cuts epochs on the leader, by the sensitivity list of docs/architecture.md section 2.
pub async fn epoch_proposer(node: Arc<Node>, settings: EpochSettings, shutdown: CancellationToken) {
    let intervals = EpochIntervals {
        min_epoch_interval_ms: settings.min_epoch_interval_ms,
        max_epoch_interval_ms: settings.max_epoch_interval_ms,
    };
    let mut attempt = 0u32;
    while !shutdown.is_cancelled() {
        let state = node.shared.applied().epoch_state;
        let now = now_ms();
        match decide_epoch(&state, node.is_leader(), now, intervals) {
            EpochDecision::Propose { epoch, timestamp_ms } => {
                let bytes = encode_log_entry(&Command::EpochDelimiter { epoch, timestamp_ms });
                match node.propose_local(bytes).await {
                    Ok(ApplyResponse::EpochClosed { epoch }) => {
                        tracing::debug!(epoch, "epoch closed");
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
                    if !wait_for_input(&node, Some(Duration::from_millis(delay)), &shutdown).await {
                        return;
                    }
                }
            }
            EpochDecision::WaitUntil { at_ms } => {
                let timeout = Duration::from_millis(at_ms.saturating_sub(now).max(1));
                if !wait_for_input(&node, Some(timeout), &shutdown).await {
                    return;
                }
            }
            EpochDecision::Idle(_) => {
                // Leadership and ratification arrive as metrics and apply changes; the timeout
                // only bounds how long a missed notification could delay us.
                if !wait_for_input(&node, Some(Duration::from_millis(settings.max_epoch_interval_ms)), &shutdown).await
                {
                    return;
                }
            }
        }
    }
}

/// Signs every new head with this replica's key and proposes the signature until it is
/// applied.
pub async fn signature_proposer(node: Arc<Node>, settings: EpochSettings, shutdown: CancellationToken) {
    let mut attempt = 0u32;
    while !shutdown.is_cancelled() {
        let state = node.shared.applied().epoch_state;
        let to_sign = {
            let m = node.shared.read();
            let signed = match m.replica_signatures(state.last_epoch) {
                Ok(sigs) => sigs.iter().any(|(k, _)| *k == node.signing_public),
                Err(e) => {
                    tracing::error!(error = %e, "reading signatures failed");
                    false
                }
            };
            match epoch_to_sign(&state, signed) {
                Some(epoch) => m.head(epoch).ok().flatten(),
                None => None,
            }
        };
        let Some(head) = to_sign else {
            attempt = 0;
            if !wait_for_input(&node, None, &shutdown).await {
                return;
            }
            continue;
        };
        let command = match node.sign_head(&head) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot sign with this replica's key");
                return;
            }
        };
        match node.propose(&command).await {
            Ok(r) => {
                tracing::debug!(epoch = head.epoch, ?r, "head signature applied");
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
        if !wait_for_input(&node, Some(Duration::from_millis(delay)), &shutdown).await {
            return;
        }
    }
}
