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
use crate::node::{current_leader, next_batch, BatchError, BatchLimits, Batcher, ProposeError};
use crate::raft::network::PeerNetwork;
use crate::raft::types::{ApplyResponse, NodeAddr, NodeId, Raft};
use keyraft_proto::peer::{ForwardBatchRequest, ForwardOutcome, ForwardRequest};
use std::sync::{Arc, Mutex};
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
    to_leader: ToLeader,
    id: NodeId,
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
        let link = Link { raft, batcher, to_leader: ToLeader::new(network, timeout), id };
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
    let limits = BatchLimits { commands_max: FORWARD_BATCH_COMMANDS_MAX, bytes_max: FORWARD_BATCH_BYTES_MAX };
    while let Some((batch, slot)) = next_batch(&mut rx, &slots, &tasks, limits).await {
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
    let Some((id, leader)) = current_leader(&link.raft) else {
        return commands.iter().map(|_| Err(ProposeError::NoLeader)).collect();
    };
    if id == link.id {
        // Elected since the commands were queued: they go into this node's own log.
        return propose_here(link, commands).await;
    }
    link.to_leader.forward(id, &leader, commands).await
}

/// Sends batches to a leader, remembering whether it took one.
#[derive(Clone)]
pub(crate) struct ToLeader {
    network: PeerNetwork,
    timeout: Duration,
    /// The leader that last answered a `ForwardBatch` call: its batches are not kept for the
    /// fallback.
    batching: Arc<Mutex<Option<NodeId>>>,
}

impl ToLeader {
    pub(crate) fn new(network: PeerNetwork, timeout: Duration) -> Self {
        Self { network, timeout, batching: Arc::default() }
    }

    fn batching(&self) -> std::sync::MutexGuard<'_, Option<NodeId>> {
        self.batching.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forwards `commands` to node `id`, which leads, in one `ForwardBatch` call, or one
    /// `Forward` call each if it does not know `ForwardBatch`; one answer per command, in
    /// order.
    pub(crate) async fn forward(
        &self,
        id: NodeId,
        leader: &NodeAddr,
        commands: Vec<Vec<u8>>,
    ) -> Vec<Result<Forwarded, ProposeError>> {
        let n = commands.len();
        let all = |e: ProposeError| (0..n).map(|_| Err(e.clone())).collect();
        let fail = |message: String| ProposeError::Forward { leader: leader.public_addr.clone(), message };
        let mut client = match self.network.client_for(id, &leader.peer_addr) {
            Ok(c) => c,
            Err(e) => return all(fail(e.to_string())),
        };
        // Until a leader is seen to take batches, a copy is kept to send one by one: a few
        // hundred bytes a command, for the first batch after each change of leader.
        let kept = (*self.batching() != Some(id)).then(|| commands.clone());
        let mut request = tonic::Request::new(ForwardBatchRequest { payloads: commands });
        request.set_timeout(self.timeout);
        let outcomes = match client.forward_batch(request).await {
            Ok(reply) => {
                *self.batching() = Some(id);
                reply.into_inner().outcomes
            }
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                // The leader's binary predates ForwardBatch: nothing of the batch was proposed.
                *self.batching() = None;
                let Some(commands) = kept else {
                    // It took batches before (a downgrade in place): the next batch is kept.
                    return all(ProposeError::NoLeader);
                };
                tracing::debug!(leader = %leader.peer_addr, "the leader has no ForwardBatch; forwarding one by one");
                return each_at_once(commands, |bytes| {
                    let (network, leader, timeout) = (self.network.clone(), leader.clone(), self.timeout);
                    async move { forward_single(&network, id, &leader, bytes, timeout).await }
                })
                .await;
            }
            Err(status) => return all(call_failed(leader, &status)),
        };
        if outcomes.len() != n {
            return all(fail(format!("the leader answered {} outcomes for {n} commands", outcomes.len())));
        }
        outcomes.into_iter().map(|o| outcome(leader, o)).collect()
    }
}

/// Proposes a batch through this node's own batcher, all at once.
async fn propose_here(link: &Link, commands: Vec<Vec<u8>>) -> Vec<Result<Forwarded, ProposeError>> {
    each_at_once(commands, |bytes| {
        let batcher = link.batcher.clone();
        async move {
            match batcher.propose(bytes).await {
                Ok(p) => Ok(Forwarded { response: p.response, raft_log_index: p.raft_log_index }),
                // Deposed again: the client retries, and the next try forwards to whoever leads.
                Err(BatchError::NotLeader(_)) => Err(ProposeError::NoLeader),
                Err(BatchError::Fatal(e)) => Err(ProposeError::Fatal(e)),
            }
        }
    })
    .await
}

/// Runs `call` on every command at once, each in its own task (a leader's batcher gathers
/// them into one entry as it would a batch); the answers in order.
async fn each_at_once<F, Fut>(commands: Vec<Vec<u8>>, call: F) -> Vec<Result<Forwarded, ProposeError>>
where
    F: Fn(Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = Result<Forwarded, ProposeError>> + Send + 'static,
{
    let calls: Vec<_> = commands.into_iter().map(|bytes| tokio::spawn(call(bytes))).collect();
    let mut answers = Vec::with_capacity(calls.len());
    for call in calls {
        answers.push(call.await.unwrap_or_else(|e| Err(ProposeError::Fatal(format!("a forwarding task failed: {e}")))));
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use keyraft_proto::peer::peer_server::{Peer, PeerServer};
    use keyraft_proto::peer::{
        AdminReply, BackupRequest, ChangeVotersRequest, ForwardBatchReply, ForwardReply, InitRequest, NodeSpec,
        RaftMessage, RaftReply, StatusReply, StatusRequest,
    };
    use std::sync::atomic::{AtomicBool, Ordering};
    use tonic::{Request, Response, Status};

    /// A leader that answers `Forward` (each command's Raft log index is its first byte) and,
    /// while `batches` is off, UNIMPLEMENTED to `ForwardBatch`, as a binary older than the call.
    #[derive(Default)]
    struct Leader {
        batches: Arc<AtomicBool>,
        forwarded: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    fn applied(payload: &[u8]) -> (Vec<u8>, u64) {
        (postcard::to_allocvec(&ApplyResponse::Internal).unwrap(), u64::from(payload[0]))
    }

    #[tonic::async_trait]
    impl Peer for Leader {
        async fn forward(&self, request: Request<ForwardRequest>) -> Result<Response<ForwardReply>, Status> {
            let payload = request.into_inner().payload;
            let (reply, raft_log_index) = applied(&payload);
            self.forwarded.lock().unwrap().push(payload);
            Ok(Response::new(ForwardReply { payload: reply, raft_log_index }))
        }
        async fn forward_batch(
            &self,
            request: Request<ForwardBatchRequest>,
        ) -> Result<Response<ForwardBatchReply>, Status> {
            if !self.batches.load(Ordering::SeqCst) {
                return Err(Status::unimplemented("unknown method ForwardBatch"));
            }
            let outcomes = request
                .into_inner()
                .payloads
                .iter()
                .map(|p| {
                    let (payload, raft_log_index) = applied(p);
                    ForwardOutcome { payload, raft_log_index, code: 0, message: String::new() }
                })
                .collect();
            Ok(Response::new(ForwardBatchReply { outcomes }))
        }
        async fn append_entries(&self, _: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn vote(&self, _: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn install_snapshot(&self, _: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn init(&self, _: Request<InitRequest>) -> Result<Response<AdminReply>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn add_learner(&self, _: Request<NodeSpec>) -> Result<Response<AdminReply>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn change_voters(&self, _: Request<ChangeVotersRequest>) -> Result<Response<AdminReply>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        type BackupStream = crate::backup::BackupStream;
        async fn backup(&self, _: Request<BackupRequest>) -> Result<Response<Self::BackupStream>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
    }

    fn indexes(answers: &[Result<Forwarded, ProposeError>]) -> Vec<Result<u64, String>> {
        answers.iter().map(|a| a.as_ref().map(|f| f.raft_log_index).map_err(ToString::to_string)).collect()
    }

    /// A leader without `ForwardBatch` gets the batch one `Forward` per command, answered in
    /// order; one that takes batches gets them whole; one that stops taking them (a downgrade
    /// in place) gets its batch answered "no leader" (retryable: nothing was proposed), and the
    /// next batch one by one again.
    #[tokio::test]
    async fn a_leader_without_forward_batch_gets_the_commands_one_by_one() {
        let leader = Leader::default();
        let (batches, forwarded) = (leader.batches.clone(), leader.forwarded.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(PeerServer::new(leader))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let network = PeerNetwork::new("token", crate::peer_client::peer_channels(None), "example.org");
        let to_leader = ToLeader::new(network, Duration::from_secs(30));
        let node = NodeAddr { peer_addr: addr.clone(), public_addr: addr };
        let commands = || vec![vec![7, 1], vec![8, 2], vec![9, 3]];

        let answers = to_leader.forward(2, &node, commands()).await;
        assert_eq!(indexes(&answers), vec![Ok(7), Ok(8), Ok(9)]);
        assert!(answers.iter().all(|a| matches!(a, Ok(f) if f.response == ApplyResponse::Internal)));
        let mut sent = forwarded.lock().unwrap().clone();
        sent.sort();
        assert_eq!(sent, commands(), "each command in its own Forward call");

        batches.store(true, Ordering::SeqCst);
        forwarded.lock().unwrap().clear();
        let answers = to_leader.forward(2, &node, commands()).await;
        assert_eq!(indexes(&answers), vec![Ok(7), Ok(8), Ok(9)]);
        assert!(forwarded.lock().unwrap().is_empty(), "one ForwardBatch call");
        assert_eq!(*to_leader.batching(), Some(2));

        batches.store(false, Ordering::SeqCst);
        let answers = to_leader.forward(2, &node, commands()).await;
        let no_leader = Err(ProposeError::NoLeader.to_string());
        assert_eq!(indexes(&answers), vec![no_leader.clone(), no_leader.clone(), no_leader]);
        assert!(forwarded.lock().unwrap().is_empty(), "nothing proposed");
        let answers = to_leader.forward(2, &node, commands()).await;
        assert_eq!(indexes(&answers), vec![Ok(7), Ok(8), Ok(9)]);
        assert_eq!(forwarded.lock().unwrap().len(), 3);
    }
}
