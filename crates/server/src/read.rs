//! The read view: every question the public service, `Watch` and `VerifierStream` ask of the
//! applied state, answered in one place.
//!
//! - [`ReadView::satisfies`]: an epoch is keyserver-ratified and has the requested verifier
//!   ratifications (what a lookup may answer from);
//! - [`ReadView::newest_satisfying`]: the newest such epoch;
//! - [`ReadView::proof`]: a lookup proof at one;
//! - [`ReadView::epoch_info`], [`ReadView::published`], [`ReadView::history`]: epochs and an
//!   identity's versions;
//! - [`ReadView::wait_for`]: waiting until epochs or their signatures change;
//! - [`ReadView::blocking`]: large reads (listings, stream epochs) on blocking threads,
//!   bounded by `limits.storage_reads_max`.
//!
//! The state's lock is taken per read and never held across an await. Handlers do not reach
//! into the state themselves.

use crate::blocking::Readers;
use crate::effects::{Applied, SignaturesChanged};
use crate::raft::sm_store::SharedState;
use keyraft_core::vrf::VrfProof;
use keyraft_core::{Canonical, Digest, Index, PublicKey, Signature, Update};
use keyraft_proto::pb;
use keyraft_state::{PublishedEpochBytes, StateError};
use std::sync::Arc;
use std::time::Duration;
// Tokio's clock, which is the host's except in a simulation in paused time.
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Status;

/// How far back a lookup searches for an epoch satisfying its verifier threshold.
const QUORUM_SEARCH_EPOCHS_MAX: u64 = 256;
/// How far past its newest epoch a replica takes a requested epoch (Lookup's `epoch` and
/// `min_epoch`, Watch's `from_epoch`) as one worth waiting for. Further epochs are refused
/// at once with OUT_OF_RANGE: the realm cannot reach them within a wait, and a replica this far
/// behind another should not be asked.
pub const EPOCHS_AHEAD_MAX: u64 = 64;

/// A state read failed: this replica's storage is at fault, never the caller.
pub(crate) fn internal(e: StateError) -> Status {
    // Not a failure: the caller asked for a tree this replica's retention no longer keeps.
    if let StateError::Pruned { .. } = e {
        return Status::failed_precondition(e.to_string());
    }
    tracing::error!(error = %e, "state read failed");
    Status::internal(format!("this replica failed to read its state: {e}"))
}

fn key_signatures(sigs: Vec<(PublicKey, Signature)>) -> Vec<pb::KeySignature> {
    sigs.into_iter().map(|(k, s)| pb::KeySignature { signer: k.as_bytes().to_vec(), signature: s.0.to_vec() }).collect()
}

/// Read access to a replica's applied state. Clones share it.
#[derive(Clone, Debug)]
pub struct ReadView {
    shared: Arc<SharedState>,
    readers: Readers,
    wait_ms_max: u64,
}

impl ReadView {
    /// A view of `shared`, waiting at most `wait_ms_max` and running its blocking reads with
    /// `readers`.
    pub(crate) fn new(shared: Arc<SharedState>, wait_ms_max: u64, readers: Readers) -> Self {
        Self { shared, readers, wait_ms_max }
    }

    /// The latest applied view (epoch state, log index).
    pub(crate) fn applied(&self) -> Applied {
        self.shared.applied()
    }

    /// The newest keyserver-ratified epoch.
    pub(crate) fn ratified_epoch(&self) -> u64 {
        self.applied().epoch_state.ratified_epoch
    }

    /// The newest epoch (ratified or not).
    pub(crate) fn last_epoch(&self) -> u64 {
        self.applied().epoch_state.last_epoch
    }

    /// Woken when some epoch's signatures change, its ratification included.
    pub(crate) fn subscribe_signatures(&self) -> watch::Receiver<SignaturesChanged> {
        self.shared.effects().subscribe_signatures()
    }

    /// Woken when an epoch becomes keyserver-ratified; the value is the newest such epoch.
    pub(crate) fn subscribe_ratified(&self) -> watch::Receiver<u64> {
        self.shared.effects().subscribe_ratified()
    }

    /// Runs `read`, a large read (a listing, a stream's epoch), on a blocking thread with a
    /// clone of this view, at most `limits.storage_reads_max` at once.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        read: impl FnOnce(&ReadView) -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let view = self.clone();
        self.readers.run(move || read(&view)).await
    }

    /// Whether `epoch` is keyserver-ratified and has `threshold` verifier ratifications.
    pub(crate) fn satisfies(&self, epoch: u64, threshold: usize) -> Result<bool, Status> {
        let m = self.shared.read();
        if epoch == 0 || epoch > m.epoch_state().ratified_epoch {
            return Ok(false);
        }
        Ok(threshold == 0 || m.verifier_signatures(epoch).map_err(internal)?.len() >= threshold)
    }

    /// The newest epoch at or after `min_epoch` satisfying `threshold`, if any.
    pub(crate) fn newest_satisfying(&self, min_epoch: u64, threshold: usize) -> Result<Option<u64>, Status> {
        let ratified = self.ratified_epoch();
        let lowest = min_epoch.max(1).max(ratified.saturating_sub(QUORUM_SEARCH_EPOCHS_MAX));
        let mut e = ratified;
        while e >= lowest && e > 0 {
            if self.satisfies(e, threshold)? {
                return Ok(Some(e));
            }
            e -= 1;
        }
        Ok(None)
    }

    /// The first epoch in `[from, upto]` that satisfies `threshold` (`upto` does).
    pub(crate) fn first_satisfying(&self, from: u64, upto: u64, threshold: usize) -> Result<u64, Status> {
        for epoch in from..upto {
            if self.satisfies(epoch, threshold)? {
                return Ok(epoch);
            }
        }
        Ok(upto)
    }

    /// Refuses, at once, a requested `epoch` (named `field` in the request) too far past this
    /// replica's newest epoch to wait for: see [`EPOCHS_AHEAD_MAX`].
    pub(crate) fn check_reachable(&self, epoch: u64, field: &str) -> Result<(), Status> {
        let newest = self.last_epoch();
        if epoch > newest.saturating_add(EPOCHS_AHEAD_MAX) {
            return Err(Status::out_of_range(format!(
                "{field} {epoch} is more than {EPOCHS_AHEAD_MAX} epochs past this replica's newest epoch {newest}: \
                 the realm has not reached it (if another replica served it, this one lags: ask another)"
            )));
        }
        Ok(())
    }

    /// The canonical lookup proof of `user_id` (at `index`, proven by `vrf_proof`) at `epoch`,
    /// with `threshold` verifier ratifications.
    pub(crate) fn proof(
        &self,
        user_id: &str,
        index: Index,
        vrf_proof: VrfProof,
        epoch: u64,
        threshold: usize,
    ) -> Result<Vec<u8>, Status> {
        let parts = self
            .shared
            .read()
            .lookup_parts(&index, epoch, threshold)
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("epoch {epoch} has no head")))?;
        Ok(parts.encode_proof(user_id, &vrf_proof))
    }

    /// An epoch's head and signatures, if it exists.
    pub(crate) fn epoch_info(&self, epoch: u64) -> Result<Option<pb::EpochInfo>, Status> {
        let m = self.shared.read();
        let Some(head) = m.head(epoch).map_err(internal)? else { return Ok(None) };
        Ok(Some(pb::EpochInfo {
            head: head.encode(),
            replica_signatures: key_signatures(m.replica_signatures(epoch).map_err(internal)?),
            verifier_signatures: key_signatures(m.verifier_signatures(epoch).map_err(internal)?),
        }))
    }

    /// An epoch as the verifier log publishes it (its updates, head and replica signatures),
    /// each update as its signed entry's bytes.
    pub(crate) fn published(&self, epoch: u64) -> Result<PublishedEpochBytes, Status> {
        self.shared
            .read()
            .published_epoch_bytes(epoch)
            .map_err(internal)?
            .ok_or_else(|| Status::internal(format!("epoch {epoch} is not published")))
    }

    /// The tree root after `epoch`.
    pub(crate) fn root_at(&self, epoch: u64) -> Result<Digest, Status> {
        self.shared.read().root_at(epoch).map_err(internal)
    }

    /// At most `limit` versions of the identity at `index` in epochs before `before`, newest
    /// first.
    pub(crate) fn history(&self, index: &Index, before: u64, limit: usize) -> Result<Vec<(u64, Update)>, Status> {
        self.shared.read().update_history(index, before, limit).map_err(internal)
    }

    /// The epochs in `(after, upto]` in which the identity's pending recovery changed.
    pub(crate) fn pending_change_epochs(&self, index: &Index, after: u64, upto: u64) -> Result<Vec<u64>, Status> {
        self.shared.read().pending_change_epochs(index, after, upto).map_err(internal)
    }

    /// The identity's newest version and its epoch.
    pub(crate) fn latest_update(&self, index: &Index) -> Result<Option<(u64, Update)>, Status> {
        self.shared.read().latest_update(index).map_err(internal)
    }

    /// The verifier signatures of `epoch`.
    pub(crate) fn verifier_signatures(&self, epoch: u64) -> Result<Vec<(PublicKey, Signature)>, Status> {
        self.shared.read().verifier_signatures(epoch).map_err(internal)
    }

    /// The changes leading from the configuration whose hash is `from` to the one in force;
    /// `None` if the realm never had that configuration.
    pub(crate) fn config_changes_after(&self, from: &Digest) -> Option<Vec<keyraft_core::SignedConfigChange>> {
        self.shared.read().config_changes_after(from)
    }

    /// The configuration the head of `epoch` commits to (the one in force for an epoch
    /// without a head).
    pub(crate) fn config_of_epoch(&self, epoch: u64) -> keyraft_core::RealmConfig {
        self.shared.read().config_of_epoch(epoch).clone()
    }

    /// An epoch's head, if it exists.
    pub(crate) fn head(&self, epoch: u64) -> Result<Option<keyraft_core::EpochHead>, Status> {
        self.shared.read().head(epoch).map_err(internal)
    }

    /// Waits until this replica's reads see Raft log index `raft_log_index` applied, at most
    /// `timeout`; whether they do.
    pub(crate) async fn wait_applied(&self, raft_log_index: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut applied = self.shared.effects().subscribe_applied();
        loop {
            if applied.borrow_and_update().raft_index >= raft_log_index {
                return true;
            }
            match tokio::time::timeout_at(deadline, applied.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return false,
            }
        }
    }

    /// Waits (up to `wait_ms`, capped by `limits.wait_ms_max`) until `probe`, which looks at
    /// epochs and their signatures only, returns something; woken when those change, not on
    /// every update.
    pub(crate) async fn wait_for<T>(
        &self,
        wait_ms: u64,
        mut probe: impl FnMut(&Self) -> Result<Option<T>, Status>,
    ) -> Result<Option<T>, Status> {
        let deadline = Instant::now() + Duration::from_millis(wait_ms.min(self.wait_ms_max));
        let mut changes = self.subscribe_signatures();
        loop {
            changes.borrow_and_update();
            if let Some(v) = probe(self)? {
                return Ok(Some(v));
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Status::unavailable("this replica is shutting down")),
                Err(_) => return Ok(None),
            }
        }
    }
}
