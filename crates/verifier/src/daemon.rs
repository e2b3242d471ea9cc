//! The verifier's loop: stream, check, commit, sign, push.
//!
//! This file runs the loop (connect, follow a replica's stream, check and commit each epoch,
//! release its ratification once durable). Its other jobs live beside it: `config` (the
//! configuration file and the errors), `framing` (reading a stream's frames ahead),
//! `evidence` (what a verifier writes when the realm misbehaves) and `push` (delivering
//! ratifications and backfilling missing ones).

use ed25519_dalek::SigningKey;
use keyraft_core::backoff;
use keyraft_core::lookup::head_signing_message;
use keyraft_core::{
    decode_canonical, Canonical, EpochHead, PublicKey, RealmConfig, RealmFile, Signature, SignedConfigChange,
    SignedEntry,
};
use keyraft_epoch::signing::ratification_signature;
use keyraft_epoch::verifier::{Mismatch, VerifierState, VerifyFailure};
use keyraft_epoch::StateError;
use keyraft_proto::convert::Refusal;
use keyraft_proto::pb::keyraft_client::KeyraftClient;
use keyraft_proto::pb::verifier_frame::{Frame, SignedHead};
use keyraft_proto::pb::{PushRatificationRequest, VerifierStreamRequest};
use keyraft_proto::transport::{ChannelOptions, Channels, KeepAlive};
use keyraft_storage::{MemoryStorage, SledStorage, Storage, ThreadSpawner};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Channel;

use crate::config::read_key;
pub use crate::config::{Config, Error};
use crate::framing::read_ahead;
use crate::push::Pusher;
pub use crate::push::{
    BACKFILL_EPOCHS_MAX, PUSH_QUEUE_MAX, PUSH_TIMEOUT_MS, RATIFIED_THROUGH_FILE, SHUTDOWN_PUSH_DEADLINE_MS,
};

/// First reconnection delay, in milliseconds (doubled per failure, jittered).
pub const RECONNECT_DELAY_MS: u64 = 200;
/// Longest reconnection delay, in milliseconds.
pub const RECONNECT_DELAY_MAX_MS: u64 = 10_000;
/// HTTP/2 pings on the verifier's connections to replicas: a replica that vanished from the
/// network without closing the connection (a cut cable, `docker network disconnect`) sends no
/// frame and no reset, and the stream would wait for it forever while the realm's epochs go
/// unratified; an unanswered ping ends the stream within interval + timeout (10 s), and the
/// verifier moves to another replica. (Found by scripts/compose-test.sh.)
pub const REPLICA_KEEP_ALIVE: KeepAlive = KeepAlive { interval_ms: 5_000, timeout_ms: 5_000 };
/// How long a stopping verifier waits for its tasks once the pushes are done or given up, in
/// milliseconds (they are a stream's read-ahead, already told to stop).
pub const TASKS_STOP_DEADLINE_MS: u64 = 2_000;

/// Keys deleted per storage batch by retention.
const PRUNE_BATCH_KEYS_MAX: usize = 2_000;

pub(crate) struct Verifier {
    /// What the metrics listener reports.
    metrics: Arc<crate::metrics::VerifierMetrics>,
    pub(crate) realm: RealmConfig,
    key: SigningKey,
    pub(crate) public: PublicKey,
    endpoints: Vec<String>,
    /// How the replicas are dialled (TLS as the realm file says).
    channels: Channels,
    pub(crate) data_dir: PathBuf,
    pub(crate) state: VerifierState<Arc<dyn Storage>>,
    jitter: Jitter,
    /// The realm file's clock skew: heads issued further ahead of `clock` are not ratified.
    clock_skew_ms: u64,
    clock: std::sync::Arc<dyn keyraft_core::clock::Clock>,
    /// Ratifications of epochs committed but not yet flushed: released only once durable, so
    /// that a crash can never make this verifier sign a second, different head for an epoch.
    unflushed: Vec<PushRatificationRequest>,
    /// When the oldest of `unflushed` was signed.
    unflushed_since: Option<tokio::time::Instant>,
    /// Catch-up progress: the newest epoch the serving replica had when the stream began,
    /// when progress was last logged, and the updates checked since.
    progress: (u64, tokio::time::Instant, usize),
    /// Every task of this verifier (the pusher, each stream's read-ahead), awaited on the way
    /// out.
    tasks: TaskTracker,
    /// `retention_epochs` and the oldest epoch whose tree is kept (as far as this process
    /// knows: after a restart the first round finds what an earlier one left).
    retention: Option<(u64, u64)>,
    /// The configuration generation that removed this verifier's key, once logged.
    removed_at_generation: Option<u64>,
}

/// Runs the verifier until `shutdown` is cancelled or the realm misbehaves. Returns once its
/// tasks have ended and its writer thread is joined.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    run_with(config, shutdown, TaskTracker::new(), &ThreadSpawner::default()).await
}

/// [`run`], spawning the verifier's tasks into `tasks` and its writer thread with `threads`: a
/// test or a simulation passes its own to see every one of them.
pub async fn run_with(
    config: Config,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    threads: &ThreadSpawner,
) -> Result<(), Error> {
    run_seamed(config, shutdown, tasks, threads, Seams::default()).await
}

/// What a deterministic simulation replaces in a verifier: the clock it judges heads' issue
/// times by and signs its stream requests with, how it dials the replicas, and where it
/// keeps its state.
#[derive(Clone)]
pub struct Seams {
    /// The clock (default: the host's).
    pub clock: Arc<dyn keyraft_core::clock::Clock>,
    /// Opens the connections to replicas (default, `None`: TCP).
    pub network: Option<Arc<dyn keyraft_proto::transport::Connector>>,
    /// The verifier's state in memory (default, `None`: sled under the data directory). A
    /// verifier started again with (a clone of) the same store finds what it had written;
    /// [`MemoryStorage::crash`] keeps only what was flushed.
    pub storage: Option<MemoryStorage>,
    /// Seeds the jitter of retry delays (default, `None`: the thread's generator).
    pub rng_seed: Option<u64>,
}

impl Default for Seams {
    fn default() -> Self {
        Self { clock: keyraft_core::clock::system(), network: None, storage: None, rng_seed: None }
    }
}

impl std::fmt::Debug for Seams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seams")
            .field("clock", &self.clock)
            .field("network", &if self.network.is_some() { "custom" } else { "tcp" })
            .field("storage", &if self.storage.is_some() { "memory" } else { "sled" })
            .field("rng_seed", &self.rng_seed)
            .finish()
    }
}

/// [`run_with`] with the clock and network of `seams`.
pub async fn run_seamed(
    config: Config,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    threads: &ThreadSpawner,
    seams: Seams,
) -> Result<(), Error> {
    let file_text = std::fs::read_to_string(&config.realm_file)
        .map_err(|e| Error::Config(format!("reading {}: {e}", config.realm_file.display())))?;
    let file = RealmFile::from_json(&file_text).map_err(|e| Error::Config(e.to_string()))?;
    let realm = file.config().map_err(|e| Error::Config(e.to_string()))?;
    let key = read_key(&config.signing_key_file)?;
    let public = PublicKey::from_verifying_key(&key.verifying_key()).map_err(|e| Error::Config(e.to_string()))?;
    let endpoints = if config.endpoints.is_empty() { file.endpoints.clone() } else { config.endpoints.clone() };
    if endpoints.is_empty() {
        return Err(Error::Config("no endpoints: none configured and none in the realm file".into()));
    }
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| Error::DataDir { path: config.data_dir.clone(), source })?;
    let metrics = Arc::new(crate::metrics::VerifierMetrics::new());
    let metrics_stop = CancellationToken::new();
    serve_metrics(&config, &metrics, &metrics_stop, &tasks).await?;
    let halted = config.data_dir.join("HALTED");
    if let Ok(why) = std::fs::read_to_string(&halted) {
        return Err(Error::Halted(format!("{} (remove {} once resolved)", why.trim(), halted.display())));
    }
    let state = open_state(&config, seams.storage.as_ref(), &realm, &public, threads)?;
    // Ratifications are pushed after the epochs they sign are durable, so a stop can leave
    // verified epochs unratified: the pusher first ratifies those the realm lacks, reading
    // the replicas from the last epoch verified down to the ratified-through mark.
    let options = ChannelOptions { keep_alive: Some(REPLICA_KEEP_ALIVE), ..ChannelOptions::default() };
    let mut channels = Channels::new(options).with_tls(
        keyraft_proto::tls::TlsClient::for_realm(&file).map_err(|e| Error::Config(format!("realm file: {e}")))?,
    );
    if let Some(connector) = seams.network {
        channels = channels.with_connector(connector);
    }
    let jitter = Jitter::new(seams.rng_seed);
    let pusher =
        Pusher::new(endpoints.clone(), channels.clone(), key.clone(), public, &config.data_dir, jitter.clone());
    let anchor = state.last_head().cloned();
    let (push_tx, push_rx) = mpsc::channel(PUSH_QUEUE_MAX);
    let push_task = tasks.spawn(pusher.run(anchor, push_rx));
    let mut verifier = Verifier {
        metrics: metrics.clone(),
        realm,
        key,
        public,
        endpoints,
        channels,
        data_dir: config.data_dir,
        state,
        clock_skew_ms: file.clock_skew_ms,
        clock: seams.clock,
        unflushed: Vec::new(),
        unflushed_since: None,
        progress: (0, tokio::time::Instant::now(), 0),
        tasks: tasks.clone(),
        retention: (config.retention_epochs > 0).then_some((config.retention_epochs, 0)),
        removed_at_generation: None,
        jitter,
    };
    let result = tokio::select! {
        r = verifier.follow(&push_tx) => r,
        () = shutdown.cancelled() => {
            tracing::info!("verifier shutting down");
            Ok(())
        }
    };
    if matches!(result, Err(Error::Misbehaved { .. })) {
        metrics.halt();
    }
    // Whatever stopped it, the epochs committed so far were verified: make them durable, then
    // give their ratifications a while to reach the realm.
    let flushed = verifier.state.flush().map_err(Error::State);
    let abort_push = push_task.abort_handle();
    let drain = async {
        let released = verifier.release(&push_tx).await;
        drop(push_tx);
        let _ = push_task.await;
        released
    };
    match tokio::time::timeout(Duration::from_millis(SHUTDOWN_PUSH_DEADLINE_MS), drain).await {
        Ok(Ok(())) => tracing::info!("every ratification pushed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "ratifications not pushed; the next start pushes them"),
        Err(_) => {
            abort_push.abort();
            tracing::warn!(
                deadline_ms = SHUTDOWN_PUSH_DEADLINE_MS,
                "stopping with ratifications not pushed; the next start pushes them"
            );
        }
    }
    metrics_stop.cancel();
    tasks.close();
    if tokio::time::timeout(Duration::from_millis(TASKS_STOP_DEADLINE_MS), tasks.wait()).await.is_err() {
        tracing::warn!(
            tasks = tasks.len(),
            "verifier tasks still running after the deadline; leaving them to the runtime"
        );
    }
    // Dropping the state joins its writer thread.
    drop(verifier);
    result.and(flushed)
}

/// Starts the metrics listener if `metrics_listen` names one, writing the bound address to
/// `<data_dir>/listen.json`; it serves until `stop`.
async fn serve_metrics(
    config: &Config,
    metrics: &Arc<crate::metrics::VerifierMetrics>,
    stop: &CancellationToken,
    tasks: &TaskTracker,
) -> Result<(), Error> {
    let Some(addr) = &config.metrics_listen else { return Ok(()) };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Config(format!("metrics_listen {addr}: cannot listen: {e}")))?;
    let bound = listener.local_addr().map_err(|e| Error::Config(format!("metrics_listen {addr}: {e}")))?;
    let listen = serde_json::json!({ "metrics_addr": bound.to_string() }).to_string();
    std::fs::write(config.data_dir.join(crate::metrics::LISTEN_FILE), listen)
        .map_err(|source| Error::DataDir { path: config.data_dir.clone(), source })?;
    tracing::info!(metrics = %bound, "metrics listener");
    tasks.spawn(crate::metrics::serve(listener, metrics.clone(), stop.clone()));
    Ok(())
}

pub(crate) fn client(channels: &Channels, addr: &str) -> Result<KeyraftClient<Channel>, Error> {
    let channel = channels.lazy(addr).map_err(|e| Error::Config(format!("endpoint: {e}")))?;
    Ok(KeyraftClient::new(channel).max_decoding_message_size(4 << 20))
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

/// Runs CPU- or disk-bound work without stalling the runtime's other tasks (the read-ahead,
/// the pushes), when the runtime has threads to hand them to.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// The verifier's state: in `memory` if given (a simulation), else in sled under the data
/// directory; refused if the configuration it follows does not register `public`.
fn open_state(
    config: &Config,
    memory: Option<&MemoryStorage>,
    realm: &RealmConfig,
    public: &PublicKey,
    threads: &ThreadSpawner,
) -> Result<VerifierState<Arc<dyn Storage>>, Error> {
    let store: Arc<dyn Storage> = match memory {
        Some(memory) => Arc::new(memory.clone()),
        None => Arc::new(SledStorage::open(&config.data_dir.join("state")).map_err(StateError::from)?),
    };
    let state = VerifierState::open_with(store, realm.clone(), threads)?;
    tracing::info!(epoch = state.last_epoch(), generation = state.config().generation, "verifier state opened");
    // The configuration followed so far decides (the realm file may be older than it).
    if !state.next_config().verifier_keys.contains(public) {
        return Err(Error::Config(format!(
            "this verifier's key {} is not registered in the realm's verifier_keys (configuration generation {})",
            hex::encode(public.as_bytes()),
            state.next_config().generation
        )));
    }
    Ok(state)
}

/// Where retry delays draw their jitter: the thread's generator, or one seeded by a
/// simulation ([`Seams::rng_seed`]) so that its runs replay. Clones share the generator.
#[derive(Clone, Debug, Default)]
pub(crate) struct Jitter(Option<Arc<std::sync::Mutex<rand::rngs::StdRng>>>);

impl Jitter {
    pub(crate) fn new(seed: Option<u64>) -> Self {
        Self(seed.map(|s| Arc::new(std::sync::Mutex::new(rand::SeedableRng::seed_from_u64(s)))))
    }

    /// The delay before retry number `attempt` (from 0).
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let delay = backoff::delay_ms(attempt, RECONNECT_DELAY_MS, RECONNECT_DELAY_MAX_MS);
        let draw = match &self.0 {
            Some(rng) => rand::Rng::gen(&mut *rng.lock().unwrap_or_else(std::sync::PoisonError::into_inner)),
            None => rand::random(),
        };
        Duration::from_millis(backoff::jittered_ms(delay, draw))
    }
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
                    let delay = self.jitter.delay(attempt);
                    tracing::warn!(endpoint = %addr, reason = %why, retry_in_ms = delay.as_millis() as u64, "verifier stream ended");
                    attempt = attempt.saturating_add(1);
                    which += 1;
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// The request resuming after the newest epoch checked, signed afresh for this
    /// connection: replicas serve the stream to registered verifiers only, within the realm's
    /// clock skew (docs/protocol.md section 7.1).
    fn stream_request(&self) -> Result<VerifierStreamRequest, keyraft_core::DecodeError> {
        let request = VerifierStreamRequest {
            resume_epoch: self.state.last_epoch(),
            resume_root: self.state.last_head().map(|h| h.root.to_vec()).unwrap_or_default(),
            ..Default::default()
        };
        keyraft_proto::convert::sign_stream_request(request, &self.key, &self.realm.realm, self.clock.now_ms())
    }

    async fn stream_from(&mut self, addr: &str, push: &mpsc::Sender<PushRatificationRequest>) -> Ended {
        let mut c = match client(&self.channels, addr) {
            Ok(c) => c,
            Err(e) => return Ended::Retry(e.to_string()),
        };
        let request = match self.stream_request() {
            Ok(r) => r,
            Err(e) => return Ended::Retry(format!("signing the stream request: {e}")),
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
        let mut frames = read_ahead(stream, &self.tasks);
        // Raw until the head arrives: decoding (two key decompressions per update) is then
        // spread over every core with the signature checks.
        let mut raw: Vec<Vec<u8>> = Vec::new();
        // Positions in `raw` of the recovery requests (protocol version 2).
        let mut recoveries: Vec<usize> = Vec::new();
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
                    self.progress = (init.head_epoch, tokio::time::Instant::now(), 0);
                    self.metrics.realm_at(init.head_epoch);
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
                    self.metrics.realm_at(c.epoch);
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
                    let base = raw.len();
                    recoveries.extend(u.recovery_requests.iter().map(|p| base + *p as usize));
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
                    if let Err(ended) = self.ratify(&h, head, &raw, &recoveries, flush, addr, push).await {
                        return ended;
                    }
                    raw.clear();
                    recoveries.clear();
                    epoch_of_updates = None;
                    next_chunk = 0;
                }
                Frame::Heartbeat(h) => {
                    if let Err(ended) = self.on_heartbeat(&h, addr, push).await {
                        return ended;
                    }
                }
                Frame::ConfigChange(bytes) => {
                    if epoch_of_updates.is_some() {
                        return Ended::Retry("a configuration change in the middle of an epoch's updates".into());
                    }
                    if let Err(ended) = self.on_config_change(&bytes, addr) {
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

    /// A configuration change: checked with the core rule against the configuration in
    /// force; the next head must commit to it. A change that does not follow is evidence.
    fn on_config_change(&mut self, bytes: &Vec<u8>, addr: &str) -> Result<(), Ended> {
        let epoch = self.state.last_epoch() + 1;
        let change = match SignedConfigChange::from_bytes(bytes) {
            Ok(c) => c,
            Err(e) => {
                let why = format!("the configuration change before epoch {epoch} does not decode: {e}");
                return Err(Ended::Misbehaved(self.evidence(epoch, &why, addr, None, &[], Some(bytes))));
            }
        };
        let state = &mut self.state;
        match blocking(|| state.receive_config_change(&change).map(|c| c.generation)) {
            Ok(generation) => {
                tracing::info!(epoch, generation, "the realm's configuration changes with this epoch");
                Ok(())
            }
            Err(VerifyFailure::Mismatch(m)) => {
                Err(Ended::Misbehaved(self.evidence(epoch, &m.to_string(), addr, None, &[], Some(bytes))))
            }
            Err(VerifyFailure::State(e)) => Err(Ended::Misbehaved(Error::State(e))),
        }
    }

    /// Whether this verifier's key is in the configuration `head` commits to; logs (once per
    /// configuration) when it was removed, since it then verifies without ratifying.
    fn registered_for(&mut self, head: &EpochHead) -> bool {
        let config = self.state.config();
        if config.hash() == head.config_hash && config.verifier_keys.contains(&self.public) {
            return true;
        }
        if self.removed_at_generation != Some(config.generation) {
            self.removed_at_generation = Some(config.generation);
            tracing::error!(
                epoch = head.epoch,
                generation = config.generation,
                verifier = %hex::encode(self.public.as_bytes()),
                "this verifier's key is not in the realm's configuration from this epoch on (it was removed): it \
                 keeps verifying but stops ratifying"
            );
        }
        false
    }

    /// Logs catch-up progress every few seconds while far behind.
    fn log_progress(&mut self, epoch: u64, updates: usize) {
        let (target, since, checked) = &mut self.progress;
        *checked += updates;
        let elapsed = since.elapsed();
        if epoch < *target && elapsed >= Duration::from_millis(PROGRESS_LOG_INTERVAL_MS) {
            let per_s = *checked as f64 / elapsed.as_secs_f64();
            tracing::info!(epoch, of = *target, updates_per_s = per_s as u64, "catching up");
            *since = tokio::time::Instant::now();
            *checked = 0;
        }
    }

    /// With `retention_epochs`, deletes the trees that fell out of it, once the horizon moved
    /// an eighth of the setting (`keyraft_epoch::tree::garbage_before`; the next flush gives
    /// their space back). Called with every committed epoch durable. A failure is logged, not
    /// fatal: the trees stay, and verifying does not need the space.
    fn prune(&mut self) {
        let Some((kept, trees_from)) = self.retention else { return };
        let last = self.state.last_epoch();
        let Some(horizon) = last.checked_sub(kept).map(|h| h + 1) else { return };
        if horizon < trees_from.max(1) + (kept / 8).max(1) {
            return;
        }
        let started = tokio::time::Instant::now();
        let store = self.state.store();
        let pruned = blocking(|| -> Result<usize, StateError> {
            let garbage = keyraft_epoch::tree::garbage_before(store, horizon)?;
            for keys in garbage.keys.chunks(PRUNE_BATCH_KEYS_MAX) {
                let mut batch = keyraft_storage::Batch::new();
                for key in keys {
                    batch.delete(key.clone());
                }
                store.write(batch)?;
            }
            Ok(garbage.chunks)
        });
        match pruned {
            Ok(chunks) => {
                self.retention = Some((kept, horizon));
                tracing::info!(
                    trees_from = horizon,
                    chunks,
                    took_ms = started.elapsed().as_millis() as u64,
                    "retention: pruned the trees of past epochs"
                );
            }
            Err(e) => tracing::error!(error = %e, "retention failed; the trees stay"),
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
        self.prune();
        // One by one, removed once queued: a stop while the queue is full loses none.
        while let Some(req) = self.unflushed.first().cloned() {
            push.send(req).await.map_err(|_| Error::PushTaskStopped)?;
            self.unflushed.remove(0);
        }
        Ok(())
    }

    /// Checks an epoch, commits it, and queues its ratification; evidence on a mismatch.
    #[allow(clippy::too_many_arguments)]
    async fn ratify(
        &mut self,
        h: &SignedHead,
        head: EpochHead,
        raw: &[Vec<u8>],
        recoveries: &[usize],
        flush: bool,
        addr: &str,
        push: &mpsc::Sender<PushRatificationRequest>,
    ) -> Result<(), Ended> {
        let started = tokio::time::Instant::now();
        let decoded = blocking(|| keyraft_epoch::parallel::try_map(raw, |_, b| decode_canonical::<SignedEntry>(b)));
        let updates = match decoded {
            Ok(u) => u,
            Err((position, e)) => {
                let why = format!("update {position} of epoch {} does not decode: {e}", head.epoch);
                return Err(Ended::Misbehaved(self.evidence(head.epoch, &why, addr, None, &[], Some(&raw[position]))));
            }
        };
        let updates = updates.as_slice();
        // Issue times count recovery windows: a head from further in the future than the
        // realm's skew would end windows early. Not evidence (this clock may be the one
        // behind): refuse it for now, and retry once the clock has caught up.
        if let Err(m) = keyraft_epoch::verifier::check_issue_time(&head, self.clock.now_ms(), self.clock_skew_ms) {
            tracing::warn!(reason = %m, "not ratifying a head from the future");
            return Err(Ended::Retry(m.to_string()));
        }
        let mut recovery_requests = Vec::with_capacity(recoveries.len());
        for &position in recoveries {
            let Some(update) = updates.get(position) else {
                let why = format!("epoch {}: recovery request position {position} is past its updates", head.epoch);
                return Err(Ended::Misbehaved(self.evidence(head.epoch, &why, addr, None, updates, None)));
            };
            recovery_requests.push(update.entry.index);
        }
        recovery_requests.sort();
        let state = &mut self.state;
        match blocking(|| state.check_epoch_with(updates, &recovery_requests, &head)) {
            Ok(checked) => {
                if let Err(e) = blocking(|| state.commit(checked)) {
                    return Err(Ended::Misbehaved(Error::State(e)));
                }
                if !self.registered_for(&head) {
                    self.log_progress(head.epoch, updates.len());
                    self.metrics.verified(head.epoch, updates.len(), started.elapsed());
                    return Ok(());
                }
                let signature = ratification_signature(&self.key, &head);
                self.unflushed_since.get_or_insert_with(tokio::time::Instant::now);
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
                self.metrics.verified(head.epoch, updates.len(), started.elapsed());
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
        // Signers are the replicas of the configuration the head commits to: the one in force,
        // or the one a received change leads to.
        let config = [self.state.config(), self.state.next_config()]
            .into_iter()
            .find(|c| c.hash() == head.config_hash)
            .ok_or_else(|| {
                format!(
                    "head of epoch {} commits to configuration {}, which this verifier has not followed to",
                    head.epoch,
                    hex::encode(&head.config_hash[..8])
                )
            })?;
        let message = head_signing_message(&head);
        let mut good = std::collections::BTreeSet::new();
        for s in &h.replica_signatures {
            let (Ok(key), Ok(sig)) = (PublicKey::from_slice(&s.signer), Signature::from_slice(&s.signature)) else {
                continue;
            };
            if config.replica_keys.contains(&key) && key.verify(&message, &sig) {
                good.insert(key);
            }
        }
        if !config.is_replica_majority(good.len()) {
            return Err(format!("head of epoch {} lacks a replica majority's signatures", head.epoch));
        }
        Ok(head)
    }
}
