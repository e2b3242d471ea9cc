//! The verifier's loop: stream, check, commit, sign, push.

use ed25519_dalek::SigningKey;
use keyraft_core::backoff;
use keyraft_core::lookup::head_signing_message;
use keyraft_core::{decode_canonical, Canonical, EpochHead, PublicKey, RealmConfig, RealmFile, Signature, SignedEntry};
use keyraft_epoch::signing::ratification_signature;
use keyraft_epoch::verifier::{Mismatch, VerifierState, VerifyFailure};
use keyraft_epoch::StateError;
use keyraft_proto::convert::Refusal;
use keyraft_proto::pb::keyraft_client::KeyraftClient;
use keyraft_proto::pb::verifier_frame::{Frame, SignedHead};
use keyraft_proto::pb::{ListEpochsRequest, PushRatificationRequest, VerifierStreamRequest};
use keyraft_storage::SledStorage;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

/// First reconnection delay, in milliseconds (doubled per failure, jittered).
pub const RECONNECT_DELAY_MS: u64 = 200;
/// Longest reconnection delay, in milliseconds.
pub const RECONNECT_DELAY_MAX_MS: u64 = 10_000;
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

/// The verifier's configuration file (`verifier.toml`); relative paths are relative to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the verifier keeps its state, evidence and `HALTED` marker.
    pub data_dir: PathBuf,
    /// The realm file; this verifier's public key must be one of its `verifier_keys`.
    pub realm_file: PathBuf,
    /// The verifier's Ed25519 signing key (64 hex digits).
    pub signing_key_file: PathBuf,
    /// Replica public addresses to stream from (default: the realm file's endpoints).
    #[serde(default)]
    pub endpoints: Vec<String>,
}

/// Why the verifier stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration or a key file is wrong.
    #[error("configuration error: {0}")]
    Config(String),
    /// A previous mismatch halted ratification; an operator must look at the evidence.
    #[error("ratification is halted: {0}")]
    Halted(String),
    /// The realm published something that does not verify; evidence was written.
    #[error("the realm misbehaved at epoch {epoch}: {reason}; evidence in {evidence}")]
    Misbehaved {
        /// The epoch.
        epoch: u64,
        /// What was wrong.
        reason: String,
        /// The evidence file.
        evidence: String,
    },
    /// This verifier's own storage failed or holds what it cannot accept: its disk or data
    /// directory is at fault, not the realm. Once repaired, a restart resumes from what the
    /// storage holds.
    #[error("this verifier's local state failed (its own storage is at fault, not the realm): {0}")]
    State(#[from] StateError),
    /// The data directory could not be created: the operator's configuration or disk.
    #[error("cannot create the verifier's data directory {}: {source}", path.display())]
    DataDir {
        /// The directory (`data_dir`).
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The task pushing ratifications stopped while epochs still needed pushing: a fault of
    /// this verifier (it panicked), not of the realm.
    #[error("this verifier's ratification push task stopped")]
    PushTaskStopped,
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

fn read_key(path: &Path) -> Result<SigningKey, Error> {
    let needed_by = "signing_key_file";
    let read = keyraft_core::key_file::read_secret(path, needed_by).map_err(|e| Error::Config(e.to_string()))?;
    if read.legacy {
        tracing::warn!("{}", keyraft_core::key_file::legacy_warning(path, needed_by));
    }
    Ok(SigningKey::from_bytes(&read.key))
}

impl Config {
    /// Reads `path`.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::Config(format!("reading {}: {e}", path.display())))?;
        let mut c: Config = toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        c.data_dir = resolve(base, &c.data_dir);
        c.realm_file = resolve(base, &c.realm_file);
        c.signing_key_file = resolve(base, &c.signing_key_file);
        Ok(c)
    }
}

struct Verifier {
    realm: RealmConfig,
    key: SigningKey,
    public: PublicKey,
    endpoints: Vec<String>,
    data_dir: PathBuf,
    state: VerifierState<SledStorage>,
    /// Ratifications of epochs committed but not yet flushed: released only once durable, so
    /// that a crash can never make this verifier sign a second, different head for an epoch.
    unflushed: Vec<PushRatificationRequest>,
    /// When the oldest of `unflushed` was signed.
    unflushed_since: Option<std::time::Instant>,
    /// Catch-up progress: the newest epoch the serving replica had when the stream began,
    /// when progress was last logged, and the updates checked since.
    progress: (u64, std::time::Instant, usize),
}

/// Runs the verifier until `shutdown` completes or the realm misbehaves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let file_text = std::fs::read_to_string(&config.realm_file)
        .map_err(|e| Error::Config(format!("reading {}: {e}", config.realm_file.display())))?;
    let file = RealmFile::from_json(&file_text).map_err(|e| Error::Config(e.to_string()))?;
    let realm = file.config().map_err(|e| Error::Config(e.to_string()))?;
    let key = read_key(&config.signing_key_file)?;
    let public = PublicKey::from_verifying_key(&key.verifying_key()).map_err(|e| Error::Config(e.to_string()))?;
    if !realm.verifier_keys.contains(&public) {
        return Err(Error::Config(format!(
            "this verifier's key {} is not registered in the realm's verifier_keys",
            hex::encode(public.as_bytes())
        )));
    }
    let endpoints = if config.endpoints.is_empty() { file.endpoints.clone() } else { config.endpoints.clone() };
    if endpoints.is_empty() {
        return Err(Error::Config("no endpoints: none configured and none in the realm file".into()));
    }
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| Error::DataDir { path: config.data_dir.clone(), source })?;
    let halted = config.data_dir.join("HALTED");
    if let Ok(why) = std::fs::read_to_string(&halted) {
        return Err(Error::Halted(format!("{} (remove {} once resolved)", why.trim(), halted.display())));
    }
    let store = SledStorage::open(&config.data_dir.join("state")).map_err(StateError::from)?;
    let state = VerifierState::open(store, realm.clone())?;
    tracing::info!(epoch = state.last_epoch(), "verifier state opened");
    // Ratifications are pushed after the epochs they sign are durable, so a stop can leave
    // verified epochs unratified: the pusher first ratifies those the realm lacks, reading
    // the replicas from the last epoch verified down to the ratified-through mark.
    let pusher = Pusher::new(endpoints.clone(), key.clone(), public, &config.data_dir);
    let anchor = state.last_head().cloned();
    let (push_tx, push_rx) = mpsc::channel(PUSH_QUEUE_MAX);
    let push_task = tokio::spawn(pusher.run(anchor, push_rx));
    let mut verifier = Verifier {
        realm,
        key,
        public,
        endpoints,
        data_dir: config.data_dir,
        state,
        unflushed: Vec::new(),
        unflushed_since: None,
        progress: (0, std::time::Instant::now(), 0),
    };
    let result = tokio::select! {
        r = verifier.follow(&push_tx) => r,
        () = shutdown => {
            tracing::info!("verifier shutting down");
            Ok(())
        }
    };
    // Whatever stopped it, the epochs committed so far were verified: make them durable, then
    // give their ratifications a while to reach the realm.
    let flushed = verifier.state.flush().map_err(Error::State);
    let drain = async {
        let released = verifier.release(&push_tx).await;
        drop(push_tx);
        let _ = push_task.await;
        released
    };
    match tokio::time::timeout(Duration::from_millis(SHUTDOWN_PUSH_DEADLINE_MS), drain).await {
        Ok(Ok(())) => tracing::info!("every ratification pushed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "ratifications not pushed; the next start pushes them"),
        Err(_) => tracing::warn!(
            deadline_ms = SHUTDOWN_PUSH_DEADLINE_MS,
            "stopping with ratifications not pushed; the next start pushes them"
        ),
    }
    result.and(flushed)
}

fn client(addr: &str) -> Result<KeyraftClient<Channel>, Error> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| Error::Config(format!("endpoint {addr:?}: {e}")))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true);
    Ok(KeyraftClient::new(endpoint.connect_lazy()).max_decoding_message_size(4 << 20))
}

/// Epochs committed without a flush, at most, while catching up. Their ratifications wait
/// for the flush: a verifier must never have released a signature over a head it could forget
/// in a crash, or a realm could feed it a different history after the restart and collect
/// two signed heads for one epoch. Live epochs are flushed one by one.
const UNFLUSHED_EPOCHS_MAX: usize = 64;

/// Longest a ratification waits for the flush that releases it, in milliseconds.
const RELEASE_DELAY_MAX_MS: u64 = 1_000;

/// How often catch-up progress is logged, in milliseconds.
const PROGRESS_LOG_INTERVAL_MS: u64 = 2_000;

/// Frames received ahead of the one being checked, at most (each at most a few MiB).
const FRAMES_AHEAD_MAX: usize = 16;

/// The frames of a stream, received by their own task: the next epoch arrives while this one
/// is checked, instead of waiting in the replica's buffers.
struct ReadAhead {
    rx: mpsc::Receiver<Result<Option<keyraft_proto::pb::VerifierFrame>, tonic::Status>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn read_ahead(mut stream: tonic::Streaming<keyraft_proto::pb::VerifierFrame>) -> ReadAhead {
    let (tx, rx) = mpsc::channel(FRAMES_AHEAD_MAX);
    let task = tokio::spawn(async move {
        loop {
            let item = stream.message().await;
            let last = !matches!(item, Ok(Some(_)));
            if tx.send(item).await.is_err() || last {
                return;
            }
        }
    });
    ReadAhead { rx, task }
}

/// Runs CPU- or disk-bound work without stalling the runtime's other tasks (the read-ahead,
/// the pushes), when the runtime has threads to hand them to.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn jittered(attempt: u32) -> Duration {
    let delay = backoff::delay_ms(attempt, RECONNECT_DELAY_MS, RECONNECT_DELAY_MAX_MS);
    Duration::from_millis(backoff::jittered_ms(delay, rand::random()))
}

/// A stream ended: retry elsewhere, or stop for good.
enum Ended {
    Retry(String),
    Misbehaved(Error),
}

impl Verifier {
    async fn follow(&mut self, push_tx: &mpsc::Sender<PushRatificationRequest>) -> Result<(), Error> {
        let mut attempt = 0u32;
        let mut which = 0usize;
        loop {
            let addr = self.endpoints[which % self.endpoints.len()].clone();
            let before = self.state.last_epoch();
            match self.stream_from(&addr, push_tx).await {
                Ended::Misbehaved(e) => return Err(e),
                Ended::Retry(why) => {
                    self.release(push_tx).await?;
                    if self.state.last_epoch() > before {
                        attempt = 0;
                    }
                    let delay = jittered(attempt);
                    tracing::warn!(endpoint = %addr, reason = %why, retry_in_ms = delay.as_millis() as u64, "verifier stream ended");
                    attempt = attempt.saturating_add(1);
                    which += 1;
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn stream_from(&mut self, addr: &str, push: &mpsc::Sender<PushRatificationRequest>) -> Ended {
        let mut c = match client(addr) {
            Ok(c) => c,
            Err(e) => return Ended::Retry(e.to_string()),
        };
        let request = VerifierStreamRequest {
            resume_epoch: self.state.last_epoch(),
            resume_root: self.state.last_head().map(|h| h.root.to_vec()).unwrap_or_default(),
            max_frame_bytes: 0,
        };
        let stream = match c.verifier_stream(request).await {
            Ok(s) => s.into_inner(),
            Err(s) if matches!(Refusal::of(&s), Some(Refusal::HistoryDiverged { .. })) => {
                // A replica's word is not evidence (anyone between us and it can say this):
                // try the others; a realm that really forked has to show a signed head.
                tracing::warn!(endpoint = %addr, reason = %s.message(), "a replica says our history diverged from its own");
                return Ended::Retry(format!("{}: {}", s.code(), s.message()));
            }
            Err(s) => return Ended::Retry(format!("{}: {}", s.code(), s.message())),
        };
        let mut frames = read_ahead(stream);
        // Raw until the head arrives: decoding (two key decompressions per update) is then
        // spread over every core with the signature checks.
        let mut raw: Vec<Vec<u8>> = Vec::new();
        let mut epoch_of_updates = None;
        let mut next_chunk = 0u32;
        loop {
            let frame = match frames.rx.recv().await {
                Some(Ok(Some(f))) => f.frame,
                Some(Ok(None)) | None => return Ended::Retry("the replica ended the stream".into()),
                Some(Err(s)) => return Ended::Retry(format!("{}: {}", s.code(), s.message())),
            };
            let Some(frame) = frame else { return Ended::Retry("an empty frame".into()) };
            match frame {
                Frame::Init(init) => {
                    self.progress = (init.head_epoch, std::time::Instant::now(), 0);
                    tracing::info!(
                        endpoint = %addr,
                        replica = %hex::encode(&init.serving_replica),
                        head = init.head_epoch,
                        from = self.state.last_epoch(),
                        "streaming epochs"
                    );
                }
                Frame::CaughtUp(c) => {
                    tracing::info!(epoch = c.epoch, "caught up");
                    if let Err(e) = self.release(push).await {
                        return Ended::Misbehaved(e);
                    }
                }
                Frame::Updates(u) => {
                    if u.epoch != self.state.last_epoch() + 1
                        || epoch_of_updates.is_some_and(|e| e != u.epoch)
                        || u.chunk != next_chunk
                    {
                        return Ended::Retry(format!("out-of-order frame: epoch {} chunk {}", u.epoch, u.chunk));
                    }
                    epoch_of_updates = Some(u.epoch);
                    next_chunk += 1;
                    raw.extend(u.signed_entries);
                }
                Frame::Head(h) => {
                    let head = match self.signed_by_majority(&h) {
                        Ok(head) => head,
                        Err(why) => return Ended::Retry(why),
                    };
                    if epoch_of_updates.is_none() && head.update_count > 0 {
                        return Ended::Retry(format!("head of epoch {} without its updates", head.epoch));
                    }
                    // Flushing every epoch of a catch-up would cost more than checking it, but
                    // ratifications must not wait long: clients want them.
                    let flush = frames.rx.is_empty()
                        || self
                            .unflushed_since
                            .is_some_and(|t| t.elapsed() >= Duration::from_millis(RELEASE_DELAY_MAX_MS));
                    if let Err(ended) = self.ratify(&h, head, &raw, flush, addr, push).await {
                        return ended;
                    }
                    raw.clear();
                    epoch_of_updates = None;
                    next_chunk = 0;
                }
                Frame::Heartbeat(h) => {
                    if let Err(ended) = self.on_heartbeat(&h, addr, push).await {
                        return ended;
                    }
                }
            }
        }
    }

    /// A heartbeat: releases waiting ratifications, and if a replica majority signed a head
    /// for an epoch we verified, it must be the head we computed; an unsigned one proves
    /// nothing.
    async fn on_heartbeat(
        &mut self,
        h: &SignedHead,
        addr: &str,
        push: &mpsc::Sender<PushRatificationRequest>,
    ) -> Result<(), Ended> {
        self.release(push).await.map_err(Ended::Misbehaved)?;
        let Ok(head) = self.signed_by_majority(h) else { return Ok(()) };
        let Some(ours) = self.state.last_head() else { return Ok(()) };
        if head.epoch == ours.epoch && head != *ours {
            let why = format!("the heartbeat's head of epoch {} differs from the verified one", head.epoch);
            let ours = ours.clone();
            return Err(Ended::Misbehaved(self.evidence(head.epoch, &why, addr, Some((h, Some(ours))), &[], None)));
        }
        Ok(())
    }

    /// Logs catch-up progress every few seconds while far behind.
    fn log_progress(&mut self, epoch: u64, updates: usize) {
        let (target, since, checked) = &mut self.progress;
        *checked += updates;
        let elapsed = since.elapsed();
        if epoch < *target && elapsed >= Duration::from_millis(PROGRESS_LOG_INTERVAL_MS) {
            let per_s = *checked as f64 / elapsed.as_secs_f64();
            tracing::info!(epoch, of = *target, updates_per_s = per_s as u64, "catching up");
            *since = std::time::Instant::now();
            *checked = 0;
        }
    }

    /// Makes the committed epochs durable, then hands their ratifications to the pusher.
    async fn release(&mut self, push: &mpsc::Sender<PushRatificationRequest>) -> Result<(), Error> {
        if self.unflushed.is_empty() {
            return Ok(());
        }
        let state = &mut self.state;
        blocking(|| state.flush())?;
        self.unflushed_since = None;
        // One by one, removed once queued: a stop while the queue is full loses none.
        while let Some(req) = self.unflushed.first().cloned() {
            push.send(req).await.map_err(|_| Error::PushTaskStopped)?;
            self.unflushed.remove(0);
        }
        Ok(())
    }

    /// Checks an epoch, commits it, and queues its ratification; evidence on a mismatch.
    async fn ratify(
        &mut self,
        h: &SignedHead,
        head: EpochHead,
        raw: &[Vec<u8>],
        flush: bool,
        addr: &str,
        push: &mpsc::Sender<PushRatificationRequest>,
    ) -> Result<(), Ended> {
        let started = std::time::Instant::now();
        let decoded = blocking(|| keyraft_epoch::parallel::try_map(raw, |_, b| decode_canonical::<SignedEntry>(b)));
        let updates = match decoded {
            Ok(u) => u,
            Err((position, e)) => {
                let why = format!("update {position} of epoch {} does not decode: {e}", head.epoch);
                return Err(Ended::Misbehaved(self.evidence(head.epoch, &why, addr, None, &[], Some(&raw[position]))));
            }
        };
        let updates = updates.as_slice();
        let state = &mut self.state;
        match blocking(|| state.check_epoch(updates, &head)) {
            Ok(checked) => {
                if let Err(e) = blocking(|| state.commit(checked)) {
                    return Err(Ended::Misbehaved(Error::State(e)));
                }
                let signature = ratification_signature(&self.key, &head);
                self.unflushed_since.get_or_insert_with(std::time::Instant::now);
                self.unflushed.push(PushRatificationRequest {
                    epoch: head.epoch,
                    verifier: self.public.as_bytes().to_vec(),
                    signature: signature.0.to_vec(),
                    head: head.encode(),
                });
                if flush || self.unflushed.len() >= UNFLUSHED_EPOCHS_MAX {
                    self.release(push).await.map_err(Ended::Misbehaved)?;
                }
                self.log_progress(head.epoch, updates.len());
                tracing::debug!(
                    epoch = head.epoch,
                    updates = updates.len(),
                    check_ms = started.elapsed().as_millis() as u64,
                    "epoch verified"
                );
                if head.epoch.is_multiple_of(100) {
                    tracing::info!(epoch = head.epoch, "verified");
                }
            }
            Err(VerifyFailure::Mismatch(m @ Mismatch::OutOfOrder { .. })) => {
                // A genuine old head replayed out of place is a stream problem, not a lie.
                return Err(Ended::Retry(m.to_string()));
            }
            Err(VerifyFailure::Mismatch(m)) => {
                let expected = match &m {
                    Mismatch::HeadDiffers { expected, .. } => Some((**expected).clone()),
                    _ => None,
                };
                return Err(Ended::Misbehaved(self.evidence(
                    head.epoch,
                    &m.to_string(),
                    addr,
                    Some((h, expected)),
                    updates,
                    None,
                )));
            }
            Err(VerifyFailure::State(e)) => return Err(Ended::Misbehaved(Error::State(e))),
        }
        Ok(())
    }

    /// The head, if a majority of the realm's replicas signed it.
    fn signed_by_majority(&self, h: &SignedHead) -> Result<EpochHead, String> {
        let head = EpochHead::from_bytes(&h.head).map_err(|e| format!("undecodable head: {e}"))?;
        let message = head_signing_message(&head);
        let mut good = std::collections::BTreeSet::new();
        for s in &h.replica_signatures {
            let (Ok(key), Ok(sig)) = (PublicKey::from_slice(&s.signer), Signature::from_slice(&s.signature)) else {
                continue;
            };
            if self.realm.replica_keys.contains(&key) && key.verify(&message, &sig) {
                good.insert(key);
            }
        }
        if !self.realm.is_replica_majority(good.len()) {
            return Err(format!("head of epoch {} lacks a replica majority's signatures", head.epoch));
        }
        Ok(head)
    }

    /// Writes the evidence file and `HALTED`, logs the alarm, returns the error to stop with.
    fn evidence(
        &self,
        epoch: u64,
        reason: &str,
        endpoint: &str,
        head: Option<(&SignedHead, Option<EpochHead>)>,
        updates: &[SignedEntry],
        raw: Option<&Vec<u8>>,
    ) -> Error {
        let record = serde_json::json!({
            "realm": self.realm.realm,
            "epoch": epoch,
            "reason": reason,
            "endpoint": endpoint,
            "verifier": hex::encode(self.public.as_bytes()),
            "received_head": head.as_ref().map(|(h, _)| hex::encode(&h.head)),
            "received_replica_signatures": head.as_ref().map(|(h, _)| h.replica_signatures.iter().map(|s| serde_json::json!({
                "signer": hex::encode(&s.signer), "signature": hex::encode(&s.signature)
            })).collect::<Vec<_>>()),
            "expected_head": head.as_ref().and_then(|(_, e)| e.as_ref().map(|e| hex::encode(e.encode()))),
            "previous_verified_head": self.state.last_head().map(|h| hex::encode(h.encode())),
            "updates": updates.iter().map(|u| hex::encode(u.encode())).collect::<Vec<_>>(),
            "undecodable_update": raw.map(hex::encode),
            "how_to_check": "heads and updates are canonical bytes (docs/protocol.md); verify the replica signatures over the received head, recompute the tree from the previous verified head's epoch",
        });
        let dir = self.data_dir.join("evidence");
        let path = dir.join(format!("epoch-{epoch}.json"));
        let written = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&path, serde_json::to_vec_pretty(&record).unwrap_or_default()))
            .and_then(|()| {
                std::fs::write(
                    self.data_dir.join("HALTED"),
                    format!("epoch {epoch}: {reason}; evidence {}\n", path.display()),
                )
            });
        if let Err(e) = written {
            tracing::error!(error = %e, "could not write the evidence file");
        }
        tracing::error!(epoch, reason, evidence = %path.display(), "ALARM: the realm published an epoch that does not verify; ratification halted");
        Error::Misbehaved { epoch, reason: reason.to_owned(), evidence: path.display().to_string() }
    }
}

/// Pushes ratifications in epoch order, retrying each (with failover) until a replica accepts
/// it, and keeps the ratified-through mark.
struct Pusher {
    endpoints: Vec<String>,
    which: usize,
    key: SigningKey,
    public: PublicKey,
    mark_path: PathBuf,
    /// Every epoch up to this one carries our ratification (or had it refused for good).
    ratified_through: u64,
    /// Whether pushes may advance the mark: false while (or if) epochs below the queue's
    /// may lack our ratification.
    contiguous: bool,
    saved: std::time::Instant,
}

/// Why a search for missing ratifications stopped on one replica.
enum ScanFailure {
    /// Try again, elsewhere.
    Retry(String),
    /// The replica's chain of heads is not the one this verifier verified.
    Diverged(String),
}

impl Pusher {
    fn new(endpoints: Vec<String>, key: SigningKey, public: PublicKey, data_dir: &Path) -> Self {
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
            which: 0,
            key,
            public,
            mark_path,
            ratified_through,
            contiguous: false,
            saved: std::time::Instant::now(),
        }
    }

    /// First ratifies the epochs up to `anchor` (the last one verified, durable) that the
    /// realm lacks, then pushes the queue's ratifications as they come.
    async fn run(mut self, anchor: Option<EpochHead>, mut rx: mpsc::Receiver<PushRatificationRequest>) {
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
        self.saved = std::time::Instant::now();
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
                    tokio::time::sleep(jittered(attempt)).await;
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
        let mut c = client(addr).map_err(|e| ScanFailure::Retry(e.to_string()))?;
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
            let result = match client(addr) {
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
                    tokio::time::sleep(jittered(attempt)).await;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A local storage failure keeps its cause, for the operator to act on (item 8 of issue
    /// 12: it used to be flattened into a string).
    #[test]
    fn local_state_errors_keep_their_source() {
        let store = keyraft_storage::MemoryStorage::new();
        let first = keyraft_epoch::testing::realm_config("one.example");
        VerifierState::open(store.clone(), first).expect("a fresh store opens");
        let refused = VerifierState::open(store, keyraft_epoch::testing::realm_config("two.example"))
            .err()
            .map(Error::from)
            .expect("a store of another realm is refused");
        assert!(refused.to_string().contains("not the realm"), "{refused}");
        let source = std::error::Error::source(&refused).expect("the cause is kept");
        assert!(matches!(source.downcast_ref::<StateError>(), Some(StateError::ConfigMismatch(_))), "{source:?}");
    }
}
