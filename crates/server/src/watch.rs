//! `Watch`: one identity's value as it changes, with a lookup proof for every event.
//!
//! Only *satisfying* epochs are considered: keyserver-ratified, with at least the requested
//! number of verifier ratifications (what `Lookup` answers from). Every event carries the
//! canonical `LookupProof` bytes at one such epoch; epochs increase strictly along a stream.
//!
//! - `from_epoch = 0`: the first event is `changed` with the proof at the newest satisfying
//!   epoch (the current value, or its absence), once one exists.
//! - `from_epoch = F > 0`: the watcher already knows the value at `F`. If this replica has not
//!   ratified `F` yet (it lags, or the watcher came from a replica ahead of it), the stream
//!   waits for it up to `limits.wait_ms_max` and then ends with UNAVAILABLE (retry, or watch
//!   through another replica). Nothing is sent for `F` itself. An `F` more than
//!   [`EPOCHS_AHEAD_MAX`](crate::read::EPOCHS_AHEAD_MAX) epochs past this replica's newest epoch is refused at once with
//!   OUT_OF_RANGE: the realm cannot reach it within that wait.
//! - Then, whenever a newer satisfying epoch `N` exists (last sent epoch `L`): a `changed`
//!   event for each epoch in `(L, N]` in which the identity's entry changed, in increasing
//!   order, each proven at that epoch; then, if `N` itself had no change, a `heartbeat`
//!   proven at `N` ("unchanged as of `N`"). Heartbeats of intermediate epochs are skipped
//!   (a slow reader gets one for the newest epoch only), changes never are.
//!
//! A change in an epoch that does not satisfy the threshold (verifiers ratify in epoch order,
//! so this only happens if one skipped an epoch) is proven at the first satisfying epoch after
//! it; the event then shows the value as of that epoch, which includes every change up to it.
//!
//! Each stream has its own task with a channel of [`EVENTS_BUFFERED_MAX`] events; it reads the
//! state under the lock only to find changes and to build each proof, never across an await.
//! A reader that accepts no event for `limits.watch_stall_ms` is closed with
//! RESOURCE_EXHAUSTED naming the stall; a replica serves at most `limits.watch_streams_max`
//! streams (more are refused with RESOURCE_EXHAUSTED); a replica shutting down ends its
//! streams with UNAVAILABLE.

use crate::effects::SignaturesChanged;
use crate::node::Node;
use crate::read::ReadView;
use crate::stream::{bounded, replica_stopped, BoundedStream, ReaderGone, StallSender, StreamSlot};
use keyraft_core::vrf::VrfProof;
use keyraft_core::Index;
use keyraft_proto::pb::{watch_event::Event, WatchEvent};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;
// Tokio's clock, which is the host's except in a simulation in paused time.
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Status;

/// Events queued per stream, at most. A proof is at most 32 KiB, so a stream holds at most
/// about 100 KiB besides the transport's window.
pub const EVENTS_BUFFERED_MAX: usize = 2;
/// Epochs searched for changes per read of the state while catching up: bounds the epoch
/// numbers held in memory and the time one search holds the lock.
pub const CHANGE_SEARCH_EPOCHS_MAX: u64 = 64;

/// What a validated request watches.
pub(crate) struct Target {
    /// The identity.
    pub(crate) user_id: String,
    /// Its VRF index.
    pub(crate) index: Index,
    /// The VRF proof of the index, which every event's proof carries.
    pub(crate) vrf_proof: VrfProof,
    /// Verifier ratifications every proven epoch has.
    pub(crate) threshold: usize,
    /// 0, or the epoch whose value the watcher knows.
    pub(crate) from_epoch: u64,
}

/// Starts the stream's task for a request the service validated, counted in `open` against
/// `limits.watch_streams_max`.
pub(crate) fn start(
    node: Arc<Node>,
    target: Target,
    open: &Arc<AtomicUsize>,
) -> Result<BoundedStream<WatchEvent>, Status> {
    node.read.check_reachable(target.from_epoch, "from_epoch")?;
    let slot = StreamSlot::take(
        open,
        node.limits.watch_streams_max,
        "Watch streams (limits.watch_streams_max); retry later or watch through another replica",
    )?;
    let (out, stream) = bounded(
        "watch",
        EVENTS_BUFFERED_MAX,
        node.limits.watch_stall_ms,
        "reopen the Watch with from_epoch = the epoch of the last event you received",
    );
    let tasks = node.tasks.clone();
    let watcher = Watcher { read: node.read.clone(), node, target: Arc::new(target), out, _slot: slot };
    tasks.spawn("watch-stream", watcher.run());
    Ok(stream)
}

/// Why the task stops.
enum Stop {
    ReaderGone,
    Failed(Status),
}

impl From<ReaderGone> for Stop {
    fn from(_: ReaderGone) -> Self {
        Stop::ReaderGone
    }
}

impl From<Status> for Stop {
    fn from(status: Status) -> Self {
        Stop::Failed(status)
    }
}

struct Watcher {
    read: ReadView,
    node: Arc<Node>,
    target: Arc<Target>,
    out: StallSender<WatchEvent>,
    _slot: StreamSlot,
}

type Stopped<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

impl Watcher {
    async fn run(self) {
        if let Err(Stop::Failed(status)) = self.stream().await {
            self.out.fail(status).await;
        }
    }

    async fn stream(&self) -> Result<(), Stop> {
        let mut changes = self.read.subscribe_signatures();
        let mut stopped: Stopped<'_> = Box::pin(replica_stopped(&self.node));
        let threshold = self.target.threshold;
        let mut last = if self.target.from_epoch == 0 {
            let newest = loop {
                changes.borrow_and_update();
                if let Some(n) = self.read.newest_satisfying(0, threshold)? {
                    break n;
                }
                self.next_change(&mut changes, &mut stopped, None).await?;
            };
            self.send(Event::Changed(self.proof(newest).await?)).await?;
            newest
        } else {
            self.wait_ratified(self.target.from_epoch, &mut changes, &mut stopped).await?;
            self.target.from_epoch
        };
        loop {
            changes.borrow_and_update();
            let ratified = self.read.ratified_epoch();
            // Woken only when epochs or signatures change; the state is read only when a newer
            // epoch exists.
            if ratified > last {
                if let Some(newest) = self.read.newest_satisfying(last + 1, threshold)? {
                    self.report(last, newest).await?;
                    last = newest;
                    continue;
                }
            }
            self.next_change(&mut changes, &mut stopped, None).await?;
        }
    }

    /// Waits until this replica has keyserver-ratified `epoch`, at most `limits.wait_ms_max`.
    async fn wait_ratified(
        &self,
        epoch: u64,
        changes: &mut watch::Receiver<SignaturesChanged>,
        stopped: &mut Stopped<'_>,
    ) -> Result<(), Stop> {
        let wait_ms = self.node.limits.wait_ms_max;
        let deadline = Instant::now() + Duration::from_millis(wait_ms);
        loop {
            changes.borrow_and_update();
            let ratified = self.read.ratified_epoch();
            if ratified >= epoch {
                return Ok(());
            }
            if !self.next_change(changes, stopped, Some(deadline)).await? {
                return Err(Stop::Failed(Status::unavailable(format!(
                    "from_epoch {epoch} is ahead of this replica (newest keyserver-ratified epoch {ratified}, \
                     waited {wait_ms} ms): it lags, retry or watch through another replica"
                ))));
            }
        }
    }

    /// Waits for the next applied change; `false` if `deadline` passed first.
    async fn next_change(
        &self,
        changes: &mut watch::Receiver<SignaturesChanged>,
        stopped: &mut Stopped<'_>,
        deadline: Option<Instant>,
    ) -> Result<bool, Stop> {
        let timeout = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let shutting_down =
            || Stop::Failed(Status::unavailable("this replica is shutting down; watch through another replica"));
        tokio::select! {
            changed = changes.changed() => changed.map(|()| true).map_err(|_| shutting_down()),
            () = stopped.as_mut() => Err(shutting_down()),
            () = self.out.closed() => Err(Stop::ReaderGone),
            () = timeout => Ok(false),
        }
    }

    /// Sends what happened in `(last, newest]`, `newest` being a satisfying epoch.
    async fn report(&self, last: u64, newest: u64) -> Result<(), Stop> {
        // Everything up to `cursor` has been reported.
        let mut cursor = last;
        let mut newest_sent = false;
        while cursor < newest {
            let window_end = newest.min(cursor.saturating_add(CHANGE_SEARCH_EPOCHS_MAX));
            for change in self.changed_epochs(cursor, window_end).await? {
                if change <= cursor {
                    // Already covered by a change proven at a later satisfying epoch.
                    continue;
                }
                let at = self.read.first_satisfying(change, newest, self.target.threshold)?;
                self.send(Event::Changed(self.proof(at).await?)).await?;
                cursor = at;
                newest_sent = at == newest;
            }
            cursor = cursor.max(window_end);
        }
        if !newest_sent {
            self.send(Event::Heartbeat(self.proof(newest).await?)).await?;
        }
        Ok(())
    }

    /// The epochs in `(after, upto]` in which the identity's leaf changed (its entry, or its
    /// pending recovery), increasing, read
    /// on a blocking thread. The state lists an identity's updates newest first, one per epoch
    /// at most, so this walks down from `upto` one update at a time and holds at most
    /// `upto - after` epoch numbers.
    async fn changed_epochs(&self, after: u64, upto: u64) -> Result<Vec<u64>, Status> {
        let target = self.target.clone();
        self.read
            .blocking(move |read| {
                let mut found = Vec::new();
                let mut before = upto.saturating_add(1);
                loop {
                    // The lock is taken per read so that a long search never delays an apply.
                    let newest = read.history(&target.index, before, 1)?;
                    match newest.first() {
                        Some((epoch, _)) if *epoch > after => {
                            found.push(*epoch);
                            before = *epoch;
                        }
                        _ => break,
                    }
                }
                found.reverse();
                // A recovery requested, vetoed or replaced changes the identity's leaf (and
                // what its owner must see) without a new version.
                found.extend(read.pending_change_epochs(&target.index, after, upto)?);
                found.sort_unstable();
                found.dedup();
                Ok(found)
            })
            .await
    }

    /// The proof of the watched identity at `epoch`, built on a blocking thread.
    async fn proof(&self, epoch: u64) -> Result<Vec<u8>, Status> {
        let t = self.target.clone();
        self.read.blocking(move |read| read.proof(&t.user_id, t.index, t.vrf_proof, epoch, t.threshold)).await
    }

    async fn send(&self, event: Event) -> Result<(), ReaderGone> {
        self.out.send(WatchEvent { event: Some(event) }).await
    }
}
