//! `VerifierStream`: the verifier log, framed.
//!
//! A stream is `Init`, then for each keyserver-ratified epoch after the resume point its
//! updates (canonical `SignedEntry` bytes: entries, policies, commitments and signatures, never
//! user ids or profiles) in chunks of at most `max_frame_bytes`, then its head with a replica
//! majority's signatures; `CaughtUp` once replay reaches the newest epoch; then live epochs as
//! they are ratified, and a `Heartbeat` with the newest signed head when nothing happened for
//! [`HEARTBEAT_INTERVAL_MS`]. An epoch whose head is the first to commit to a new realm
//! configuration is preceded by a `ConfigChange` frame carrying the signed change.
//!
//! Every stream has its own task reading from storage: a lagging reader never holds the apply
//! path, and memory per stream is bounded by [`FRAMES_BUFFERED_MAX`] frames plus one epoch. A
//! reader that accepts no frame for `limits.verifier_stream_stall_ms` (node configuration) is
//! dropped, and the frames it already has are followed by RESOURCE_EXHAUSTED saying so.
//! Positions (epochs and the order of updates inside them) are the same on every replica.
//!
//! The channel between a stream's task and its reader ([`BoundedStream`]) is shared with
//! `Watch` (`crate::watch`), in `crate::stream`.

use crate::node::Node;
pub use crate::stream::BoundedStream;
use crate::stream::{bounded, replica_stopped, ReaderGone, StallSender, StreamSlot};
use keyraft_core::{Canonical, Digest, PublicKey, Signature};
use keyraft_proto::pb::verifier_frame::{CaughtUp, EpochUpdates, Frame, Init, SignedHead};
use keyraft_proto::pb::{KeySignature, VerifierFrame, VerifierStreamRequest};
use keyraft_state::PublishedEpochBytes;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;
use tonic::Status;

/// Default largest frame, in bytes.
pub const FRAME_BYTES_DEFAULT: usize = 1024 * 1024;
/// Smallest `max_frame_bytes` a verifier may ask for (one update always fits).
pub const FRAME_BYTES_MIN: usize = 64 * 1024;
/// Largest frame, in bytes, whatever the verifier asks (below the transport's message cap).
pub const FRAME_BYTES_MAX: usize = 4 * 1024 * 1024 - 64 * 1024;
/// Frames queued per stream, at most.
pub const FRAMES_BUFFERED_MAX: usize = 8;
/// A heartbeat is sent after this long without another frame.
pub const HEARTBEAT_INTERVAL_MS: u64 = 5_000;

/// The `VerifierStream` response stream.
pub type FrameStream = BoundedStream<VerifierFrame>;

fn frame(f: Frame) -> VerifierFrame {
    VerifierFrame { frame: Some(f) }
}

fn sigs(list: Vec<(PublicKey, Signature)>) -> Vec<KeySignature> {
    list.into_iter().map(|(k, s)| KeySignature { signer: k.as_bytes().to_vec(), signature: s.0.to_vec() }).collect()
}

/// Checks the request and starts the stream, counted in `open` against
/// `limits.verifier_streams_max`.
pub fn start(node: Arc<Node>, req: &VerifierStreamRequest, open: &Arc<AtomicUsize>) -> Result<FrameStream, Status> {
    let max_frame = match req.max_frame_bytes as usize {
        0 => FRAME_BYTES_DEFAULT,
        n if n < FRAME_BYTES_MIN => {
            return Err(Status::invalid_argument(format!(
                "max_frame_bytes {n} is below the minimum of {FRAME_BYTES_MIN}"
            )))
        }
        n => n.min(FRAME_BYTES_MAX),
    };
    let ratified = node.read.ratified_epoch();
    if req.resume_epoch == 0 {
        if !req.resume_root.is_empty() {
            return Err(Status::invalid_argument("resume_root must be empty when resume_epoch is 0"));
        }
    } else {
        let root: Digest = req.resume_root.as_slice().try_into().map_err(|_| {
            Status::invalid_argument(format!("resume_root must be 32 bytes, got {}", req.resume_root.len()))
        })?;
        if req.resume_epoch > ratified {
            return Err(Status::failed_precondition(format!(
                "cannot resume after epoch {}: this replica's newest keyserver-ratified epoch is {ratified}",
                req.resume_epoch
            )));
        }
        let ours = node.read.root_at(req.resume_epoch)?;
        if ours != root {
            return Err(keyraft_proto::convert::Refusal::HistoryDiverged { epoch: req.resume_epoch }.to_status(format!(
                "history diverged: your root for epoch {} is {}, this realm's is {}; keep your evidence and do not ratify",
                req.resume_epoch,
                hex::encode(root),
                hex::encode(ours)
            )));
        }
    }
    let slot = StreamSlot::take(
        open,
        node.limits.verifier_streams_max,
        "VerifierStreams (limits.verifier_streams_max); retry later or stream from another replica",
    )?;
    let (out, stream) = bounded(
        "verifier",
        FRAMES_BUFFERED_MAX,
        node.limits.verifier_stream_stall_ms,
        "resume from the last epoch you verified",
    );
    let tasks = node.tasks.clone();
    let producer = Producer { node, out, max_frame, _slot: slot };
    tasks.spawn("verifier-stream", producer.run(req.resume_epoch, ratified));
    Ok(stream)
}

struct Producer {
    node: Arc<Node>,
    out: StallSender<VerifierFrame>,
    max_frame: usize,
    _slot: StreamSlot,
}

/// Why the producer stops.
enum Stop {
    ReaderGone,
    Failed(Status),
}

impl Producer {
    async fn send(&self, f: Frame) -> Result<(), Stop> {
        self.out.send(frame(f)).await.map_err(|ReaderGone| Stop::ReaderGone)
    }

    async fn run(self, resume_epoch: u64, ratified: u64) {
        if let Err(Stop::Failed(status)) = self.stream(resume_epoch, ratified).await {
            self.out.fail(status).await;
        }
    }

    async fn stream(&self, resume_epoch: u64, ratified: u64) -> Result<(), Stop> {
        self.send(Frame::Init(Init {
            serving_replica: self.node.signing_public.as_bytes().to_vec(),
            head_epoch: ratified,
            oldest_replayable_epoch: 1,
        }))
        .await?;
        let mut next = resume_epoch + 1;
        let mut ratified = self.node.read.subscribe_ratified();
        let stopped = replica_stopped(&self.node);
        tokio::pin!(stopped);
        let mut caught_up = false;
        loop {
            let newest = *ratified.borrow_and_update();
            while next <= newest {
                self.send_epoch(next).await?;
                next += 1;
            }
            if !caught_up {
                caught_up = true;
                self.send(Frame::CaughtUp(CaughtUp { epoch: next - 1 })).await?;
            }
            let heartbeat = tokio::time::sleep(Duration::from_millis(HEARTBEAT_INTERVAL_MS));
            tokio::select! {
                changed = ratified.changed() => {
                    if changed.is_err() {
                        return Err(Stop::Failed(Status::unavailable("this replica is shutting down")));
                    }
                }
                () = heartbeat => {
                    if next > 1 {
                        let head = self.signed_head(next - 1).await?;
                        self.send(Frame::Heartbeat(head)).await?;
                    }
                }
                () = &mut stopped => {
                    return Err(Stop::Failed(Status::unavailable("this replica is shutting down; resume elsewhere")));
                }
                () = self.out.closed() => return Err(Stop::ReaderGone),
            }
        }
    }

    /// Reads an epoch on a blocking thread, to send without the lock: a slow reader never
    /// holds the state, and a large epoch never holds an async worker.
    async fn published(&self, epoch: u64) -> Result<PublishedEpochBytes, Stop> {
        self.node.read.blocking(move |read| read.published(epoch)).await.map_err(Stop::Failed)
    }

    async fn signed_head(&self, epoch: u64) -> Result<SignedHead, Stop> {
        let published = self.published(epoch).await?;
        Ok(SignedHead { head: published.head.encode(), replica_signatures: sigs(published.replica_signatures) })
    }

    async fn send_epoch(&self, epoch: u64) -> Result<(), Stop> {
        let mut published = self.published(epoch).await?;
        // A configuration change goes before the epoch whose head first commits to it: the
        // verifier checks it, then recomputes the head with the new configuration.
        if let Some(change) = &published.config_change {
            self.send(Frame::ConfigChange(change.encode())).await?;
        }
        let mut chunk = 0u32;
        let mut entries: Vec<Vec<u8>> = Vec::new();
        let mut bytes = 0usize;
        let total = published.updates.len();
        // Positions in the chunk of the entries that are recovery requests (version 2).
        let mut recoveries: Vec<u32> = Vec::new();
        let mut recovery_positions = published.recovery_positions.iter().peekable();
        for (i, encoded) in std::mem::take(&mut published.updates).into_iter().enumerate() {
            // Protobuf framing adds a few bytes per entry; keep a margin.
            if !entries.is_empty() && bytes + encoded.len() + 16 > self.max_frame {
                let full = std::mem::take(&mut entries);
                self.send(Frame::Updates(EpochUpdates {
                    epoch,
                    chunk,
                    signed_entries: full,
                    last_chunk: false,
                    recovery_requests: std::mem::take(&mut recoveries),
                }))
                .await?;
                chunk += 1;
                bytes = 0;
            }
            bytes += encoded.len() + 16;
            if recovery_positions.next_if_eq(&&i).is_some() {
                recoveries.push(entries.len() as u32);
            }
            entries.push(encoded);
            if i + 1 == total {
                self.send(Frame::Updates(EpochUpdates {
                    epoch,
                    chunk,
                    signed_entries: std::mem::take(&mut entries),
                    last_chunk: true,
                    recovery_requests: std::mem::take(&mut recoveries),
                }))
                .await?;
            }
        }
        if total == 0 {
            self.send(Frame::Updates(EpochUpdates {
                epoch,
                chunk: 0,
                signed_entries: vec![],
                last_chunk: true,
                recovery_requests: vec![],
            }))
            .await?;
        }
        let head = SignedHead { head: published.head.encode(), replica_signatures: sigs(published.replica_signatures) };
        self.send(Frame::Head(head)).await
    }
}
