//! A follower's half of forwarding: the commands its clients propose reach the leader in
//! batches, one `ForwardBatch` call for all the commands proposed while its earlier calls were
//! in flight (at most [`FORWARD_BATCH_COMMANDS_MAX`] commands and about
//! [`FORWARD_BATCH_BYTES_MAX`] bytes, [`FORWARD_BATCHES_IN_FLIGHT_MAX`] calls at a time).
//!
//! Two of every three updates of a three-replica realm arrive at a follower. One call per
//! command cost the leader an HTTP/2 stream, a task and a reply for each, on the cores that
//! also sign and apply; the leader's own batcher put them into one Raft entry anyway. An idle
//! follower still forwards a lone command at once.
//!
//! The leader is looked up when a batch is sent, not when a command is queued, so a batch
//! follows a leadership change. A leader that does not know `ForwardBatch` (an older binary,
//! during a rolling upgrade) answers UNIMPLEMENTED; the batch is then forwarded one command per
//! `Forward` call, as before.

use crate::lifecycle::Tasks;
use crate::node::{current_leader, BatchError, Batcher, ProposeError};
use crate::raft::network::PeerNetwork;
use crate::raft::types::{ApplyResponse, NodeAddr, NodeId, Raft};
use keyraft_proto::peer::{ForwardBatchRequest, ForwardOutcome, ForwardRequest};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Commands in one forwarded batch, at most (the leader's batcher takes as many in one entry).
pub const FORWARD_BATCH_COMMANDS_MAX: usize = crate::node::BATCH_COMMANDS_MAX;
/// Bytes of commands in one forwarded batch, about (a batch is closed once it reaches this).
pub const FORWARD_BATCH_BYTES_MAX: usize = crate::node::BATCH_BYTES_MAX;
/// Forwarded batches sent and not yet answered, at most.
pub const FORWARD_BATCHES_IN_FLIGHT_MAX: usize = 2;
/// Commands waiting for a forwarded batch, at most (proposers wait when it is full).
pub const FORWARD_QUEUE_MAX: usize = 8192;

/// A forwarded command's answer from the leader.
#[derive(Debug)]
pub struct Forwarded {
    /// What applying the command answered.
    pub response: ApplyResponse,
    /// The Raft log index of its entry (0 from a leader that does not say).
    pub raft_log_index: u64,
}

type Reply = oneshot::Sender<Result<Forwarded, ProposeError>>;

/// Sends proposed commands to the leader in batches.
#[derive(Debug, Clone)]
pub struct Forwarder {
    tx: mpsc::Sender<(Vec<u8>, Reply)>,
}

/// What a forwarding task needs.
#[derive(Clone)]
struct Link {
    raft: Raft,
    batcher: Batcher,
    network: PeerNetwork,
    id: NodeId,
    timeout: Duration,
}

impl Forwarder {
    /// Starts the forwarder of node `id` (whose Raft tells the leader), which stops with
    /// `tasks`; each call to the leader may take `timeout`.
    /// `batcher`, this node's own, takes the batches of a node elected meanwhile.
    pub fn start(
        id: NodeId,
        raft: Raft,
        network: PeerNetwork,
        batcher: Batcher,
        timeout: Duration,
        tasks: &Tasks,
    ) -> Self {
        let (tx, rx) = mpsc::channel(FORWARD_QUEUE_MAX);
        let link = Link { raft, batcher, network, id, timeout };
        tasks.spawn("forwarder", run_forwarder(link, rx, tasks.clone()));
        Self { tx }
    }

    /// Forwards the canonical log command `bytes` to the leader; returns once the leader
    /// applied it. [`ProposeError::NoLeader`] if no other node is known to lead when its batch
    /// is sent.
    pub async fn forward(&self, bytes: Vec<u8>) -> Result<Forwarded, ProposeError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((bytes, reply)).await.map_err(|_| ProposeError::Fatal("the forwarder stopped".into()))?;
        answer.await.map_err(|_| {
            ProposeError::Fatal("this replica is shutting down; the command may or may not have been applied".into())
        })?
    }
}

/// Commands still queued when the forwarder stops are answered as shutting down.
async fn run_forwarder(link: Link, mut rx: mpsc::Receiver<(Vec<u8>, Reply)>, tasks: Tasks) {
    let slots = Arc::new(Semaphore::new(FORWARD_BATCHES_IN_FLIGHT_MAX));
    loop {
        let first = tokio::select! {
            () = tasks.cancelled() => return,
            first = rx.recv() => match first {
                Some(first) => first,
                None => return,
            },
        };
        // Waiting for a slot first lets commands pile up behind the calls in flight.
        let slot = tokio::select! {
            () = tasks.cancelled() => return,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        let mut bytes = first.0.len();
        let mut batch = vec![first];
        while batch.len() < FORWARD_BATCH_COMMANDS_MAX && bytes < FORWARD_BATCH_BYTES_MAX {
            match rx.try_recv() {
                Ok(item) => {
                    bytes += item.0.len();
                    batch.push(item);
                }
                Err(_) => break,
            }
        }
        let link = link.clone();
        let stopping = tasks.clone();
        tasks.spawn("forward batch", async move {
            let (commands, replies): (Vec<Vec<u8>>, Vec<Reply>) = batch.into_iter().unzip();
            let answers = tokio::select! {
                () = stopping.cancelled() => None,
                answers = send_batch(&link, commands) => Some(answers),
            };
            match answers {
                Some(answers) => {
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        let _ = reply.send(answer);
                    }
                }
                // Dropping the replies answers "shutting down" (see Forwarder::forward).
                None => drop(replies),
            }
            drop(slot);
        });
    }
}

/// One answer per command, in order.
async fn send_batch(link: &Link, commands: Vec<Vec<u8>>) -> Vec<Result<Forwarded, ProposeError>> {
    let n = commands.len();
    let all = |e: ProposeError| (0..n).map(|_| Err(e.clone())).collect();
    let Some((id, leader)) = current_leader(&link.raft) else {
        return all(ProposeError::NoLeader);
    };
    if id == link.id {
        // Elected since the commands were queued: they go into this node's own log.
        return propose_here(link, commands).await;
    }
    let fail = |message: String| ProposeError::Forward { leader: leader.public_addr.clone(), message };
    let mut client = match link.network.client_for(id, &leader.peer_addr) {
        Ok(c) => c,
        Err(e) => return all(fail(e.to_string())),
    };
    // Kept for the fallback: a few hundred bytes each, copied once per batch.
    let mut request = tonic::Request::new(ForwardBatchRequest { payloads: commands.clone() });
    request.set_timeout(link.timeout);
    let outcomes = match client.forward_batch(request).await {
        Ok(reply) => reply.into_inner().outcomes,
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            // The leader's binary predates ForwardBatch: nothing of the batch was proposed.
            tracing::debug!(leader = %leader.peer_addr, "the leader has no ForwardBatch; forwarding one by one");
            return forward_one_by_one(link, id, &leader, commands).await;
        }
        Err(status) => return all(call_failed(&leader, &status)),
    };
    if outcomes.len() != n {
        return all(fail(format!("the leader answered {} outcomes for {n} commands", outcomes.len())));
    }
    outcomes.into_iter().map(|o| outcome(&leader, o)).collect()
}

/// The fallback for a leader without `ForwardBatch`: each command in its own `Forward` call,
/// all at once (the leader's batcher gathers them into one entry as it would the batch).
async fn forward_one_by_one(
    link: &Link,
    id: NodeId,
    leader: &NodeAddr,
    commands: Vec<Vec<u8>>,
) -> Vec<Result<Forwarded, ProposeError>> {
    let calls: Vec<_> = commands
        .into_iter()
        .map(|bytes| {
            let (network, leader, timeout) = (link.network.clone(), leader.clone(), link.timeout);
            tokio::spawn(async move { forward_single(&network, id, &leader, bytes, timeout).await })
        })
        .collect();
    let mut answers = Vec::with_capacity(calls.len());
    for call in calls {
        answers.push(call.await.unwrap_or_else(|e| Err(ProposeError::Fatal(format!("a forward task failed: {e}")))));
    }
    answers
}

/// Proposes a batch through this node's own batcher, all at once.
async fn propose_here(link: &Link, commands: Vec<Vec<u8>>) -> Vec<Result<Forwarded, ProposeError>> {
    let calls: Vec<_> = commands
        .into_iter()
        .map(|bytes| {
            let batcher = link.batcher.clone();
            tokio::spawn(async move { batcher.propose(bytes).await })
        })
        .collect();
    let mut answers = Vec::with_capacity(calls.len());
    for call in calls {
        answers.push(match call.await {
            Ok(Ok(p)) => Ok(Forwarded { response: p.response, raft_log_index: p.raft_log_index }),
            // Deposed again: the client retries, and the next try forwards to whoever leads.
            Ok(Err(BatchError::NotLeader(_))) => Err(ProposeError::NoLeader),
            Ok(Err(BatchError::Fatal(e))) => Err(ProposeError::Fatal(e)),
            Err(e) => Err(ProposeError::Fatal(format!("a proposing task failed: {e}"))),
        });
    }
    answers
}

/// The error a failed call means for each of its commands.
fn call_failed(leader: &NodeAddr, status: &tonic::Status) -> ProposeError {
    if status.code() == tonic::Code::Unavailable {
        tracing::debug!(leader = %leader.peer_addr, message = status.message(), "forward failed");
        return ProposeError::NoLeader;
    }
    ProposeError::Forward {
        leader: leader.public_addr.clone(),
        message: format!("{}: {}", status.code(), status.message()),
    }
}

/// One command's outcome, as a single `Forward` call would have answered it.
fn outcome(leader: &NodeAddr, o: ForwardOutcome) -> Result<Forwarded, ProposeError> {
    if o.code != 0 {
        return Err(call_failed(leader, &tonic::Status::new(tonic::Code::from_i32(o.code), o.message)));
    }
    decode_reply(leader, &o.payload, o.raft_log_index)
}

/// The leader's postcard-encoded apply response.
fn decode_reply(leader: &NodeAddr, payload: &[u8], raft_log_index: u64) -> Result<Forwarded, ProposeError> {
    let response: ApplyResponse = postcard::from_bytes(payload).map_err(|e| ProposeError::Forward {
        leader: leader.public_addr.clone(),
        message: format!("undecodable reply from the leader: {e}"),
    })?;
    Ok(Forwarded { response, raft_log_index })
}

/// Forwards one command in a `Forward` call (the admin's path, and the fallback).
pub(crate) async fn forward_single(
    network: &PeerNetwork,
    id: NodeId,
    leader: &NodeAddr,
    bytes: Vec<u8>,
    timeout: Duration,
) -> Result<Forwarded, ProposeError> {
    let fail = |message: String| ProposeError::Forward { leader: leader.public_addr.clone(), message };
    let mut client = network.client_for(id, &leader.peer_addr).map_err(|e| fail(e.to_string()))?;
    let mut request = tonic::Request::new(ForwardRequest { payload: bytes });
    request.set_timeout(timeout);
    let reply = client.forward(request).await.map_err(|status| call_failed(leader, &status))?.into_inner();
    decode_reply(leader, &reply.payload, reply.raft_log_index)
}
