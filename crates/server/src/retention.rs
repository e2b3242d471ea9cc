//! The retention task (`storage.retention_epochs`): after each closed epoch, prune the trees
//! of the epochs that fell out of the setting, once the horizon has moved by an eighth of it
//! (`keyraft_state::retention` has the rules; [`SharedState::prune`] runs a round).
//!
//! A round walks the whole tree of the new horizon (at a million entries some 700k pages, 1 s), so
//! rounds are spaced out instead of run every epoch. It runs on a blocking thread; apply and
//! reads go on beside it, except for the moment it records the new horizon.

use crate::metrics::Metrics;
use crate::raft::sm_store::SharedState;
use std::sync::Arc;

/// Runs until the replica stops: one round now (a restarted replica catches up), then one
/// after every closed epoch. `in_place`: rounds run on this task's thread
/// (`ThreadSpawner::none`), not on a blocking one.
pub(crate) async fn run(shared: Arc<SharedState>, epochs_kept: u64, metrics: Arc<Metrics>, in_place: bool) {
    let mut closed = shared.effects().subscribe_closed();
    metrics.retention_trees_from(shared.read().trees_from());
    let mut failing = false;
    loop {
        let round = Arc::clone(&shared);
        let pruned = if in_place {
            Ok(round.prune(epochs_kept))
        } else {
            tokio::task::spawn_blocking(move || round.prune(epochs_kept)).await
        };
        match pruned {
            Ok(Ok(Some(pruned))) => {
                failing = false;
                tracing::info!(
                    trees_from = pruned.trees_from,
                    chunks = pruned.chunks,
                    took_ms = pruned.took.as_millis() as u64,
                    "retention: pruned the trees of past epochs"
                );
                metrics.pruned(pruned.trees_from, pruned.chunks, pruned.took);
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                // The trees stay (nothing is deleted before the horizon is durable); say so
                // once, not at every epoch.
                if !failing {
                    tracing::error!(error = %e, "retention failed; the trees stay and the next epoch retries");
                }
                failing = true;
            }
            Err(e) => tracing::error!(error = %e, "the retention round panicked"),
        }
        if closed.changed().await.is_err() {
            return;
        }
    }
}
