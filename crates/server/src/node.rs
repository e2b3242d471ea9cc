//! One replica: Raft, the state, the keys, and how to get a command into the log.
//!
//! Commands reach the log through a batcher: commands proposed while earlier batches are in
//! flight are gathered into one Raft entry (at most [`BATCH_COMMANDS_MAX`] commands and about
//! [`BATCH_BYTES_MAX`] bytes), with at most [`BATCHES_IN_FLIGHT_MAX`] entries in flight. Under
//! load an entry then carries many updates and costs one leader flush; an idle cluster still
//! proposes a lone command at once. A follower hands its commands to the
//! [`crate::forwarder`], which sends them to the leader in batches too.

use crate::blocking::Readers;
use crate::config::Limits;
use crate::forwarder::Forwarder;
use crate::lifecycle::Tasks;
use crate::page_token::PageTokens;
use crate::raft::network::PeerNetwork;
use crate::raft::sm_store::SharedState;
use crate::raft::types::{ApplyResponse, LogCommands, NodeAddr, NodeId, Raft, COMMANDS_PER_ENTRY_MAX};
use crate::read::ReadView;
use ed25519_dalek::SigningKey;
use keyraft_core::types::vrf_input;
use keyraft_core::vrf::{VrfProof, VrfSecretKey};
use keyraft_core::{Command, EpochHead, Index, PublicKey, RealmConfig};
use keyraft_proto::convert::encode_log_entry;
use openraft::error::{ClientWriteError, RaftError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

/// Commands in one batch, at most.
pub const BATCH_COMMANDS_MAX: usize = 512;
/// Bytes of commands in one batch, about (a batch is closed once it reaches this).
pub const BATCH_BYTES_MAX: usize = 1024 * 1024;
/// Batches proposed and not yet applied, at most.
pub const BATCHES_IN_FLIGHT_MAX: usize = 2;
/// Commands waiting for a batch, at most (proposers wait when it is full).
pub const BATCH_QUEUE_MAX: usize = 8192;

/// Why the batcher could not apply a command.
#[derive(Debug)]
pub(crate) enum BatchError {
    /// This node does not lead; the leader, if known.
    NotLeader(Option<(NodeId, NodeAddr)>),
    Fatal(String),
}

type Reply = oneshot::Sender<Result<Proposed, BatchError>>;

/// A command's answer, and the Raft log index of the entry that carried it (where a follower
/// that forwarded the command waits before answering its own client).
#[derive(Debug)]
pub struct Proposed {
    /// What applying the command answered.
    pub response: ApplyResponse,
    /// The Raft log index of its entry (Raft's index, not a directory index).
    pub raft_log_index: u64,
}

/// Gathers proposed commands into Raft entries.
#[derive(Debug, Clone)]
pub struct Batcher {
    tx: mpsc::Sender<(Vec<u8>, Reply)>,
}

impl Batcher {
    /// Starts the batcher task for `raft`, which stops with `tasks`.
    pub fn start(raft: Raft, tasks: &Tasks) -> Self {
        const _: () = assert!(BATCH_COMMANDS_MAX as u64 <= COMMANDS_PER_ENTRY_MAX);
        let (tx, rx) = mpsc::channel(BATCH_QUEUE_MAX);
        tasks.spawn("batcher", run_batcher(raft, rx, tasks.clone()));
        Self { tx }
    }

    pub(crate) async fn propose(&self, bytes: Vec<u8>) -> Result<Proposed, BatchError> {
        self.submit(bytes).await?.await.map_err(|_| BatchError::Fatal("the batcher dropped a command".into()))?
    }

    /// Queues `bytes` and returns where its answer will arrive, without waiting for it.
    async fn submit(&self, bytes: Vec<u8>) -> Result<oneshot::Receiver<Result<Proposed, BatchError>>, BatchError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((bytes, reply)).await.map_err(|_| BatchError::Fatal("the batcher stopped".into()))?;
        Ok(answer)
    }
}

/// How large a batch of commands may grow.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchLimits {
    /// Commands, at most.
    pub(crate) commands_max: usize,
    /// Bytes of commands, about: a batch is closed once it reaches this.
    pub(crate) bytes_max: usize,
}

/// The next batch of commands from `rx`, and the slot of `slots` it holds while in flight:
/// waits for a first command, then for a slot (commands queued meanwhile pile up behind the
/// batches in flight and join this one), then takes what is queued, up to `limits`. `None`
/// once the queue is closed or `tasks` stop. The batcher and the forwarder gather alike.
pub(crate) async fn next_batch<R>(
    rx: &mut mpsc::Receiver<(Vec<u8>, R)>,
    slots: &Arc<Semaphore>,
    tasks: &Tasks,
    limits: BatchLimits,
) -> Option<(Vec<(Vec<u8>, R)>, OwnedSemaphorePermit)> {
    let first = tokio::select! {
        () = tasks.cancelled() => return None,
        first = rx.recv() => first?,
    };
    let slot = tokio::select! {
        () = tasks.cancelled() => return None,
        slot = slots.clone().acquire_owned() => slot.ok()?,
    };
    let mut bytes = first.0.len();
    let mut batch = vec![first];
    while batch.len() < limits.commands_max && bytes < limits.bytes_max {
        match rx.try_recv() {
            Ok(item) => {
                bytes += item.0.len();
                batch.push(item);
            }
            Err(_) => break,
        }
    }
    Some((batch, slot))
}

/// Commands still queued when the batcher stops get "the batcher dropped a command".
async fn run_batcher(raft: Raft, mut rx: mpsc::Receiver<(Vec<u8>, Reply)>, tasks: Tasks) {
    let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT_MAX));
    let limits = BatchLimits { commands_max: BATCH_COMMANDS_MAX, bytes_max: BATCH_BYTES_MAX };
    while let Some((batch, slot)) = next_batch(&mut rx, &slots, &tasks, limits).await {
        let raft = raft.clone();
        let stopping = tasks.clone();
        tasks.spawn("batch", async move {
            let (commands, replies): (Vec<Vec<u8>>, Vec<Reply>) = batch.into_iter().unzip();
            let n = commands.len();
            let deposed = leadership_lost(&raft);
            // A write waits for a quorum, which a stopping replica may never see again.
            let written = tokio::select! {
                () = stopping.cancelled() => {
                    for reply in replies {
                        let _ = reply.send(Err(BatchError::Fatal(
                            "this replica is shutting down; the command may or may not have been applied".into(),
                        )));
                    }
                    return;
                }
                // openraft 0.9 may never answer a write its leader proposed before losing the
                // leadership (seed 1015 of the simulation: the epoch proposer of a deposed
                // leader waited forever, and once it led again no epoch was ever cut). The
                // command may still be committed by the next leader; proposing it again is
                // safe, as the step answers a repeated command as a duplicate.
                () = deposed => {
                    tracing::warn!(
                        commands = n,
                        "leadership lost with commands in flight: answered \"no leader\" (the next leader may still commit them)"
                    );
                    for reply in replies {
                        let _ = reply.send(Err(BatchError::NotLeader(None)));
                    }
                    return;
                }
                written = raft.client_write(LogCommands(commands)) => written,
            };
            match written {
                Ok(r) if r.data.0.len() == n => {
                    let raft_log_index = r.log_id.index;
                    for (reply, response) in replies.into_iter().zip(r.data.0) {
                        let _ = reply.send(Ok(Proposed { response, raft_log_index }));
                    }
                }
                Ok(r) => {
                    let message = format!("{} responses for {n} commands", r.data.0.len());
                    for reply in replies {
                        let _ = reply.send(Err(BatchError::Fatal(message.clone())));
                    }
                }
                Err(e) => {
                    let leader = match &e {
                        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                            Some(f.leader_id.zip(f.leader_node.clone()))
                        }
                        _ => None,
                    };
                    for reply in replies {
                        let _ = reply.send(Err(match &leader {
                            Some(l) => BatchError::NotLeader(l.clone()),
                            None => BatchError::Fatal(e.to_string()),
                        }));
                    }
                }
            }
            drop(slot);
        });
    }
}

/// Completes once this replica, leading now, no longer leads in the current term; never if it
/// does not lead now (its Raft refuses writes at once then).
async fn leadership_lost(raft: &Raft) {
    let mut metrics = raft.metrics();
    let (id, term, leads) = {
        let m = metrics.borrow_and_update();
        (m.id, m.current_term, m.current_leader == Some(m.id))
    };
    if !leads {
        return std::future::pending().await;
    }
    loop {
        if metrics.changed().await.is_err() {
            // Raft stopped: the write is answered (with an error) by its own shutdown.
            return std::future::pending().await;
        }
        let m = metrics.borrow_and_update();
        if m.current_term != term || m.current_leader != Some(id) {
            return;
        }
    }
}

/// The current leader of `raft` and its addresses, as that node knows them.
pub(crate) fn current_leader(raft: &Raft) -> Option<(NodeId, NodeAddr)> {
    // Read in place: every forwarded update asks, and the metrics are large to copy.
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    let id = metrics.current_leader?;
    let node = metrics.membership_config.membership().get_node(&id)?.clone();
    Some((id, node))
}

/// What a refusal of this node's batcher means for a command proposed here only.
fn local_error(e: BatchError) -> ProposeError {
    match e {
        BatchError::NotLeader(_) => ProposeError::NoLeader,
        BatchError::Fatal(e) => ProposeError::Fatal(e),
    }
}

/// Why a command could not be put into the log.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    /// No leader is known (an election is running, or no quorum is reachable). Retry.
    #[error("no leader is known; retry shortly")]
    NoLeader,
    /// The leader could not be reached or did not answer in time; the command may or may not
    /// have been applied (query its status).
    #[error("forwarding to the leader at {leader} failed: {message}")]
    Forward {
        /// The leader's public address, a hint for the client.
        leader: String,
        /// What failed.
        message: String,
    },
    /// This node is shutting down or its storage failed.
    #[error("this replica cannot propose: {0}")]
    Fatal(String),
}

/// A running replica's parts, shared by its services and proposers. The realm's VRF secret
/// key and this replica's signing key stay inside: other modules ask the node to prove an
/// index, key page tokens or sign a head.
pub struct Node {
    /// Raft node id.
    pub(crate) id: NodeId,
    /// The Raft handle.
    pub(crate) raft: Raft,
    /// The applied state, for the apply-side users (proposers, membership changes, shutdown);
    /// request handlers read through [`Node::read`].
    pub(crate) shared: Arc<SharedState>,
    /// What request handlers read.
    pub(crate) read: ReadView,
    /// The realm file's configuration: its name and VRF key never change; for the keys and
    /// policies in force, [`Node::config`].
    pub(crate) realm: RealmConfig,
    /// The realm's VRF secret key.
    vrf: VrfSecretKey,
    /// This replica's head-signing keys with their public halves, its main key first.
    signing_keys: Vec<(PublicKey, SigningKey)>,
    /// The public half of its main key.
    pub(crate) signing_public: PublicKey,
    /// Peer clients (shared with Raft's network).
    pub(crate) network: PeerNetwork,
    /// Request limits.
    pub(crate) limits: Limits,
    /// Gathers commands into Raft entries.
    batcher: Batcher,
    /// Sends commands to the leader in batches while this node follows.
    forwarder: Forwarder,
    /// Spawns the replica's tasks (the batcher's, the streams'), and tells them to stop.
    pub(crate) tasks: Tasks,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.id).field("realm", &self.realm.realm).finish()
    }
}

impl Node {
    /// The parts of a running replica; starts its batcher with `tasks`.
    #[allow(clippy::too_many_arguments)] // the parts a replica is made of, each named once
    pub(crate) fn new(
        id: NodeId,
        raft: Raft,
        shared: Arc<SharedState>,
        realm: RealmConfig,
        vrf: VrfSecretKey,
        signing_keys: Vec<SigningKey>,
        network: PeerNetwork,
        limits: Limits,
        tasks: Tasks,
        threads: &keyraft_storage::ThreadSpawner,
    ) -> Result<Self, crate::Error> {
        let signing_keys = signing_keys
            .into_iter()
            .map(|k| PublicKey::from_verifying_key(&k.verifying_key()).map(|p| (p, k)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| crate::Error::config_because("signing key", e))?;
        let signing_public =
            signing_keys.first().map(|(p, _)| *p).ok_or_else(|| crate::Error::config("no signing key".to_owned()))?;
        let read = ReadView::new(shared.clone(), limits.wait_ms_max, Readers::new(limits.storage_reads_max, threads));
        let batcher = Batcher::start(raft.clone(), &tasks);
        let forward_timeout = Duration::from_millis(limits.forward_timeout_ms);
        let forwarder = Forwarder::start(id, raft.clone(), network.clone(), batcher.clone(), forward_timeout, &tasks);
        Ok(Self {
            id,
            raft,
            shared,
            read,
            realm,
            vrf,
            signing_keys,
            signing_public,
            network,
            limits,
            batcher,
            forwarder,
            tasks,
        })
    }

    /// The realm configuration in force: the open epoch's (the realm file this node started
    /// with may be older, see docs/protocol.md section 2.8).
    pub(crate) fn config(&self) -> RealmConfig {
        self.shared.read().config().clone()
    }

    /// `f` of the realm configuration in force, without copying it (every request checks its
    /// user id and threshold against it).
    pub(crate) fn with_config<R>(&self, f: impl FnOnce(&RealmConfig) -> R) -> R {
        f(self.shared.read().config())
    }

    /// The VRF index of `user_id` in this realm and its proof.
    pub(crate) fn vrf_index(&self, user_id: &str) -> Result<(Index, VrfProof), tonic::Status> {
        let (proof, output) = self
            .vrf
            .prove_with_output(&vrf_input(&self.realm.realm, user_id))
            .map_err(|e| tonic::Status::internal(format!("VRF: {e}")))?;
        Ok((Index::of_vrf_output(&output), proof))
    }

    /// The realm's page tokens, keyed from the VRF secret key (so every replica issues and
    /// accepts the same tokens).
    pub(crate) fn page_tokens(&self) -> PageTokens {
        PageTokens::new(&self.vrf, &self.realm.realm)
    }

    /// The key this node signs heads with under `config`: under protocol version 2 the key
    /// bound to its node id (which it must hold), under version 1 the first of its keys that
    /// is a replica key. An error says why this node cannot sign.
    pub(crate) fn signing_key_for(&self, config: &RealmConfig) -> Result<&(PublicKey, SigningKey), String> {
        if config.protocol_version() >= 2 {
            for (public, _) in &self.signing_keys {
                if let Some(bound) = config.replica_node_id(public).filter(|id| *id != self.id) {
                    return Err(format!(
                        "this node's key {public} is bound to node {bound} in the realm configuration of generation {}",
                        config.generation
                    ));
                }
            }
            let Some(bound) = config.replica_key_of_node(self.id) else {
                return Err(format!(
                    "node {} is not a replica of the realm configuration of generation {}",
                    self.id, config.generation
                ));
            };
            return self.signing_keys.iter().find(|(p, _)| *p == bound).ok_or_else(|| {
                format!(
                    "the realm configuration of generation {} binds node {} to key {bound}, which this node does not \
                     hold (add it to next_signing_key_files)",
                    config.generation, self.id
                )
            });
        }
        self.signing_keys
            .iter()
            .find(|(p, _)| config.replica_keys.contains(p))
            .ok_or_else(|| "none of this node's keys is a replica key of the realm".to_owned())
    }

    /// The command storing this replica's signature over `head`, with the key bound to it in
    /// the configuration `head` commits to (`config`).
    pub(crate) fn sign_head(&self, head: &EpochHead, config: &RealmConfig) -> Result<Command, String> {
        let (_, key) = self.signing_key_for(config)?;
        keyraft_state::proposer::sign_head(key, head).map_err(|e| e.to_string())
    }

    /// The current leader and its addresses, as this node knows them.
    pub fn leader(&self) -> Option<(NodeId, NodeAddr)> {
        current_leader(&self.raft)
    }

    /// Whether this node is the leader.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// Proposes `command` through this node's batcher if this node leads, else forwards it to
    /// the leader; returns once the command is applied here, so that this replica's own
    /// answers (a status, a history) reflect it as soon as its client has the answer.
    pub async fn propose(&self, command: &Command) -> Result<ApplyResponse, ProposeError> {
        let bytes = encode_log_entry(command);
        // A follower that knows the leader forwards at once: through its own batcher the
        // command would take a batch slot and a Raft write only to be refused. A stale view
        // costs what it did before: the old leader answers "no longer the leader".
        if self.leader().is_some_and(|(id, _)| id != self.id) {
            return self.forward(bytes).await;
        }
        match self.batcher.propose(bytes.clone()).await {
            Ok(r) => Ok(r.response),
            Err(BatchError::NotLeader(Some((id, _)))) if id != self.id => self.forward(bytes).await,
            Err(BatchError::NotLeader(_)) => Err(ProposeError::NoLeader),
            Err(BatchError::Fatal(e)) => Err(ProposeError::Fatal(e)),
        }
    }

    /// Proposes on this node only (the leader's half of forwarding).
    pub async fn propose_local(&self, bytes: Vec<u8>) -> Result<Proposed, ProposeError> {
        self.batcher.propose(bytes).await.map_err(local_error)
    }

    /// Proposes `commands` on this node only, all queued before any is waited for, so that
    /// they share Raft entries (the leader's half of a forwarded batch). One answer each, in
    /// order.
    pub(crate) async fn propose_local_all(&self, commands: Vec<Vec<u8>>) -> Vec<Result<Proposed, ProposeError>> {
        let mut queued = Vec::with_capacity(commands.len());
        for bytes in commands {
            queued.push(self.batcher.submit(bytes).await);
        }
        let mut answers = Vec::with_capacity(queued.len());
        for answer in queued {
            let answer = match answer {
                Ok(answer) => {
                    answer.await.unwrap_or_else(|_| Err(BatchError::Fatal("the batcher dropped a command".into())))
                }
                Err(e) => Err(e),
            };
            answers.push(answer.map_err(local_error));
        }
        answers
    }

    /// Forwards through the forwarder (in a batch with the commands proposed meanwhile).
    async fn forward(&self, bytes: Vec<u8>) -> Result<ApplyResponse, ProposeError> {
        let timeout = Duration::from_millis(self.limits.forward_timeout_ms);
        let reply = self.forwarder.forward(bytes).await?;
        // The leader answers once it applied the command; this replica may not have yet, and
        // its client, told "taken", may ask it next (a status said UNKNOWN: found by CI).
        if !self.read.wait_applied(reply.raft_log_index, timeout).await {
            // Still true, only not visible here yet: the command is committed.
            tracing::warn!(
                raft_log_index = reply.raft_log_index,
                waited_ms = self.limits.forward_timeout_ms,
                "a forwarded command is committed but not applied here in time; answering anyway"
            );
        }
        Ok(reply.response)
    }
}
