//! Pushing ratifications: in epoch order, with failover, until a replica accepts each, and
//! the ratified-through mark with the backfill of epochs the realm lacks our ratification for.

use ed25519_dalek::SigningKey;
use keyraft_core::{Canonical, EpochHead, PublicKey};
use keyraft_epoch::signing::ratification_signature;
use keyraft_proto::pb::{ListEpochsRequest, PushRatificationRequest};
use keyraft_proto::transport::Channels;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

use crate::daemon::{client, Jitter};

/// Ratifications waiting to be pushed, at most.
pub const PUSH_QUEUE_MAX: usize = 1024;
/// Deadline of one push, in milliseconds.
pub const PUSH_TIMEOUT_MS: u64 = 10_000;
/// Longest a stopping verifier spends pushing the ratifications it holds, in milliseconds;
/// whatever is left is pushed by its next start.
pub const SHUTDOWN_PUSH_DEADLINE_MS: u64 = 10_000;
/// Epochs a starting verifier checks for its ratification, at most, below the last epoch it
/// verified (the first start after an upgrade checks every epoch up to this many).
pub const BACKFILL_EPOCHS_MAX: u64 = 100_000;
/// Epochs per `ListEpochs` page while looking for missing ratifications.
const BACKFILL_PAGE_EPOCHS: u64 = 256;
/// How often the ratified-through mark is saved while pushing, at most, in milliseconds.
const RATIFIED_THROUGH_SAVE_MS: u64 = 1_000;
/// The file in the data directory holding the ratified-through mark: every epoch up to this
/// number carries this verifier's ratification in the realm (or had it refused for good).
pub const RATIFIED_THROUGH_FILE: &str = "ratified-through";

/// Pushes ratifications in epoch order, retrying each (with failover) until a replica accepts
/// it, and keeps the ratified-through mark.
pub(crate) struct Pusher {
    endpoints: Vec<String>,
    channels: Channels,
    which: usize,
    key: SigningKey,
    public: PublicKey,
    mark_path: PathBuf,
    /// Every epoch up to this one carries our ratification (or had it refused for good).
    ratified_through: u64,
    /// Whether pushes may advance the mark: false while (or if) epochs below the queue's
    /// may lack our ratification.
    contiguous: bool,
    saved: tokio::time::Instant,
    jitter: Jitter,
}

/// Why a search for missing ratifications stopped on one replica.
enum ScanFailure {
    /// Try again, elsewhere.
    Retry(String),
    /// The replica's chain of heads is not the one this verifier verified.
    Diverged(String),
}

impl Pusher {
    pub(crate) fn new(
        endpoints: Vec<String>,
        channels: Channels,
        key: SigningKey,
        public: PublicKey,
        data_dir: &Path,
        jitter: Jitter,
    ) -> Self {
        let mark_path = data_dir.join(RATIFIED_THROUGH_FILE);
        let ratified_through = match std::fs::read_to_string(&mark_path) {
            Ok(text) => text.trim().parse().unwrap_or_else(|e| {
                tracing::warn!(path = %mark_path.display(), error = %e, "unreadable ratified-through mark; checking from the oldest epoch");
                0
            }),
            Err(_) => 0,
        };
        Self {
            endpoints,
            channels,
            which: 0,
            key,
            public,
            mark_path,
            ratified_through,
            contiguous: false,
            saved: tokio::time::Instant::now(),
            jitter,
        }
    }

    /// First ratifies the epochs up to `anchor` (the last one verified, durable) that the
    /// realm lacks, then pushes the queue's ratifications as they come.
    pub(crate) async fn run(mut self, anchor: Option<EpochHead>, mut rx: mpsc::Receiver<PushRatificationRequest>) {
        match anchor {
            Some(anchor) if anchor.epoch > self.ratified_through => self.backfill(&anchor).await,
            // A mark above the state (a state deleted, the mark kept) would skip epochs.
            anchor => {
                self.ratified_through = anchor.map_or(0, |a| a.epoch);
                self.contiguous = true;
            }
        }
        while let Some(req) = rx.recv().await {
            let epoch = req.epoch;
            self.push(req).await;
            if self.contiguous && epoch == self.ratified_through + 1 {
                self.ratified_through = epoch;
                if self.saved.elapsed() >= Duration::from_millis(RATIFIED_THROUGH_SAVE_MS) {
                    self.save_mark();
                }
            }
        }
        self.save_mark();
    }

    fn save_mark(&mut self) {
        self.saved = tokio::time::Instant::now();
        if !self.contiguous {
            return;
        }
        let mut tmp = self.mark_path.clone().into_os_string();
        tmp.push(".tmp");
        let written = std::fs::write(&tmp, format!("{}\n", self.ratified_through))
            .and_then(|()| std::fs::rename(&tmp, &self.mark_path));
        if let Err(e) = written {
            // Only costs a longer search at the next start.
            tracing::warn!(path = %self.mark_path.display(), error = %e, "could not save the ratified-through mark");
        }
    }

    /// Ratifies, oldest first, every epoch from the mark to `anchor` that lacks our
    /// ratification. Only heads this verifier verified are signed: the replicas' heads are
    /// accepted only as links of the hash chain ending at `anchor`, which is the chain it
    /// checked epoch by epoch.
    async fn backfill(&mut self, anchor: &EpochHead) {
        let lowest = (self.ratified_through + 1).max(anchor.epoch.saturating_sub(BACKFILL_EPOCHS_MAX) + 1);
        if lowest > self.ratified_through + 1 {
            tracing::warn!(
                below = lowest,
                max = BACKFILL_EPOCHS_MAX,
                "not checking older epochs for missing ratifications"
            );
        }
        tracing::info!(from = lowest, to = anchor.epoch, "looking for epochs verified but not ratified");
        let mut missing = Vec::new();
        let mut top = anchor.epoch;
        let mut expected = anchor.hash();
        let (mut attempt, mut diverged) = (0u32, 0usize);
        while top >= lowest {
            let bottom = lowest.max(top.saturating_sub(BACKFILL_PAGE_EPOCHS - 1));
            let addr = self.endpoints[self.which % self.endpoints.len()].clone();
            match self.scan_page(&addr, bottom, top, &mut expected, &mut missing).await {
                Ok(()) => {
                    top = bottom - 1;
                    attempt = 0;
                    diverged = 0;
                }
                Err(failure) => {
                    let why = match failure {
                        ScanFailure::Retry(why) => why,
                        ScanFailure::Diverged(why) => {
                            diverged += 1;
                            if diverged >= self.endpoints.len() {
                                tracing::error!(reason = %why, "no replica serves the chain of heads this verifier verified; not ratifying older epochs");
                                return;
                            }
                            why
                        }
                    };
                    tracing::debug!(endpoint = %addr, reason = %why, "listing epochs failed; retrying");
                    self.which += 1;
                    tokio::time::sleep(self.jitter.delay(attempt)).await;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
        if !missing.is_empty() {
            tracing::info!(epochs = missing.len(), "ratifying epochs verified but not ratified");
        }
        for head in missing.iter().rev() {
            let signature = ratification_signature(&self.key, head);
            self.push(PushRatificationRequest {
                epoch: head.epoch,
                verifier: self.public.as_bytes().to_vec(),
                signature: signature.0.to_vec(),
                head: head.encode(),
            })
            .await;
        }
        self.ratified_through = anchor.epoch;
        self.contiguous = true;
        self.save_mark();
    }

    /// Checks epochs `bottom..=top` on one replica, newest first: each head must hash to
    /// `expected` (then the previous head's hash is expected); those lacking our
    /// ratification are added to `missing`.
    async fn scan_page(
        &self,
        addr: &str,
        bottom: u64,
        top: u64,
        expected: &mut keyraft_core::Digest,
        missing: &mut Vec<EpochHead>,
    ) -> Result<(), ScanFailure> {
        let mut c = client(&self.channels, addr).map_err(|e| ScanFailure::Retry(e.to_string()))?;
        let mut request = tonic::Request::new(ListEpochsRequest {
            start_epoch: bottom,
            page_size: u32::try_from(top - bottom + 1).unwrap_or(u32::MAX),
            page_token: Vec::new(),
        });
        request.set_timeout(Duration::from_millis(PUSH_TIMEOUT_MS));
        let page = c
            .list_epochs(request)
            .await
            .map_err(|s| ScanFailure::Retry(format!("{}: {}", s.code(), s.message())))?
            .into_inner();
        let mut heads = std::collections::BTreeMap::new();
        for info in page.epochs {
            let head =
                EpochHead::from_bytes(&info.head).map_err(|e| ScanFailure::Retry(format!("undecodable head: {e}")))?;
            let ours = info.verifier_signatures.iter().any(|s| s.signer == self.public.as_bytes());
            heads.insert(head.epoch, (head, ours));
        }
        let mut next = *expected;
        for epoch in (bottom..=top).rev() {
            let Some((head, ours)) = heads.remove(&epoch) else {
                return Err(ScanFailure::Retry(format!("the replica lacks epoch {epoch}")));
            };
            if head.hash() != next {
                return Err(ScanFailure::Diverged(format!(
                    "{addr}: the head of epoch {epoch} is not the one verified"
                )));
            }
            next = head.previous_head_hash;
            if !ours {
                missing.push(head);
            }
        }
        *expected = next;
        Ok(())
    }

    /// Pushes one ratification until a replica accepts or refuses it for good.
    async fn push(&mut self, req: PushRatificationRequest) {
        let mut attempt = 0u32;
        loop {
            let addr = &self.endpoints[self.which % self.endpoints.len()];
            let result = match client(&self.channels, addr) {
                Ok(mut c) => {
                    let mut r = tonic::Request::new(req.clone());
                    r.set_timeout(Duration::from_millis(PUSH_TIMEOUT_MS));
                    c.push_ratification(r).await.map(|_| ())
                }
                Err(e) => Err(tonic::Status::unavailable(e.to_string())),
            };
            match result {
                Ok(()) => return,
                Err(s)
                    if matches!(
                        s.code(),
                        tonic::Code::PermissionDenied | tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition
                    ) =>
                {
                    tracing::error!(epoch = req.epoch, status = %s, "ratification refused; not retrying");
                    return;
                }
                Err(s) => {
                    tracing::debug!(epoch = req.epoch, status = %s, "push failed; retrying");
                    self.which += 1;
                    tokio::time::sleep(self.jitter.delay(attempt)).await;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }
}
