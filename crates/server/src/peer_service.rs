//! The peer service: Raft messages, forwarded commands and admin calls.
//!
//! Who calls is checked twice. The bearer token says the role: the cluster token a replica,
//! the admin token an operator; neither gives the other's powers. Over TLS the client's
//! certificate (issued by the realm's CA, checked in the handshake) says who: a replica's
//! `node-<id>.<realm>` must come with the cluster token and an operator's `admin.<realm>`
//! with the admin token, and every Raft message must come from the node its certificate
//! names. The token stays as a second factor on purpose: a certificate is issued per node and
//! lives for months, while the tokens can be rotated at once for the whole cluster without a
//! CA, and a leaked node key alone does not make its holder a member (docs/decisions.md).

use crate::acceptor::ClientCertificate;
use crate::forwarder::FORWARD_BATCH_COMMANDS_MAX;
use crate::node::{Node, ProposeError, Proposed};
use crate::peer_client::PeerClient;
use crate::raft::types::{NodeAddr, NodeId, TypeConfig};
use crate::tls::client_identity;
use keyraft_core::Command;
use keyraft_proto::convert::decode_log_entry;
use keyraft_proto::peer::peer_server::Peer;
use keyraft_proto::peer::{
    AdminReply, BackupRequest, ChangeVotersRequest, ForwardBatchReply, ForwardBatchRequest, ForwardOutcome,
    ForwardReply, ForwardRequest, InitRequest, NodeSpec, NodeStatus, RaftMessage, RaftReply, StatusReply,
    StatusRequest, VerifierStatus,
};
use keyraft_proto::tls::{node_name, CertIdentity};
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::ServerState;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// Serves the peer API of one node.
#[derive(Debug, Clone)]
pub struct PeerService {
    node: Arc<Node>,
    /// Longest an admin membership change waits for the next epoch boundary.
    boundary_wait_ms: u64,
    /// Where the node's snapshots are, for backups.
    snapshot_dir: std::path::PathBuf,
    /// One backup at a time.
    backups: crate::backup::BackupSlot,
}

impl PeerService {
    /// The service for `node`, whose snapshots are in `snapshot_dir`.
    pub fn new(node: Arc<Node>, boundary_wait_ms: u64, snapshot_dir: std::path::PathBuf) -> Self {
        Self { node, boundary_wait_ms, snapshot_dir, backups: crate::backup::BackupSlot::default() }
    }
}

/// What a peer-service caller may do, as its bearer token says. Each method requires its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A node of the cluster (the cluster token): Raft messages and forwarded proposals.
    Replica,
    /// An operator (the admin token): status, init, membership, realm configuration changes.
    Admin,
}

/// Who a peer-service call comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// What its token lets it do.
    pub role: Role,
    /// Over TLS, the node a replica's certificate names; `None` for operators and in
    /// plaintext.
    pub node: Option<NodeId>,
    /// How the log names it: its certificate's name, or its token's in plaintext.
    pub name: String,
}

/// Checks `authorization: Bearer <token>` in constant time against the cluster token and the
/// admin token and, over TLS, that the client's certificate is of the same kind; records the
/// [`Caller`].
#[derive(Clone)]
pub struct CheckToken {
    replica: Arc<[u8]>,
    admin: Option<Arc<[u8]>>,
    /// Over TLS, the realm whose names certificates must carry.
    realm: Option<Arc<str>>,
}

impl CheckToken {
    /// Takes `cluster_token` from replicas and, if given, `admin_token` from operators; with
    /// `tls_realm`, each with a certificate of that realm of its kind.
    pub fn new(cluster_token: &str, admin_token: Option<&str>, tls_realm: Option<&str>) -> Self {
        let bearer = |t: &str| -> Arc<[u8]> { format!("Bearer {t}").into_bytes().into() };
        Self { replica: bearer(cluster_token), admin: admin_token.map(bearer), realm: tls_realm.map(Arc::from) }
    }

    fn caller(&self, request: &Request<()>) -> Result<Caller, Status> {
        let got = request.metadata().get("authorization").map(|v| v.as_bytes()).unwrap_or_default();
        // Unequal lengths are refused at once (the length of a token is no secret).
        let is = |expected: &[u8]| bool::from(subtle::ConstantTimeEq::ct_eq(got, expected));
        let role = if is(&self.replica) {
            Role::Replica
        } else if self.admin.as_deref().is_some_and(is) {
            Role::Admin
        } else {
            return Err(Status::unauthenticated(
                "the peer service requires the cluster token (replicas) or the admin token (operators): \
                 authorization: Bearer <token>",
            ));
        };
        let Some(realm) = &self.realm else {
            let name = match role {
                Role::Replica => "cluster token",
                Role::Admin => "admin token",
            };
            return Ok(Caller { role, node: None, name: name.to_owned() });
        };
        // The listener requires a certificate: without one there is no request at all.
        let certificate = request
            .extensions()
            .get::<ClientCertificate>()
            .ok_or_else(|| Status::unauthenticated("the peer service takes calls with a client certificate only"))?;
        let identity = client_identity(&certificate.0, realm).map_err(Status::permission_denied)?;
        match (role, identity) {
            (Role::Replica, CertIdentity::Node(id)) => Ok(Caller { role, node: Some(id), name: node_name(id, realm) }),
            (Role::Admin, CertIdentity::Admin(name)) => Ok(Caller { role, node: None, name }),
            (Role::Replica, CertIdentity::Admin(name)) => Err(Status::permission_denied(format!(
                "the cluster token came with the operator certificate {name}: replicas call with their node certificate"
            ))),
            (Role::Admin, CertIdentity::Node(id)) => Err(Status::permission_denied(format!(
                "the admin token came with the certificate of node {id}: operators call with an operator certificate \
                 ({})",
                keyraft_proto::tls::admin_name(None, realm)
            ))),
        }
    }
}

impl tonic::service::Interceptor for CheckToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        match self.caller(&request) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Ok(request)
            }
            Err(status) => {
                let from = request.remote_addr().map_or_else(|| "unknown".to_owned(), |a| a.to_string());
                tracing::warn!(%from, reason = status.message(), "a peer call refused");
                Err(status)
            }
        }
    }
}

/// Requires a caller of one of the `wanted` roles of `request` for `what`; an operator's call
/// is logged with who made it and from where, whatever it asks.
fn require<T>(request: &Request<T>, wanted: &[Role], what: &str) -> Result<Caller, Status> {
    let caller =
        request.extensions().get::<Caller>().cloned().ok_or_else(|| Status::unauthenticated("no credential"))?;
    let from = || request.remote_addr().map_or_else(|| "unknown".to_owned(), |a| a.to_string());
    let allowed = wanted.contains(&caller.role);
    if caller.role == Role::Admin {
        tracing::info!(action = what, caller = %caller.name, from = %from(), allowed, "admin call");
    } else if !allowed {
        tracing::warn!(action = what, caller = %caller.name, from = %from(), "an admin call by a replica refused");
    }
    if allowed {
        return Ok(caller);
    }
    Err(Status::permission_denied(match caller.role {
        Role::Admin => format!("{what} is for replicas (the cluster token), not for the admin token"),
        Role::Replica => format!("{what} is an admin call: it needs the admin token, not the cluster token"),
    }))
}

/// Over TLS, a Raft message must come from the node the caller's certificate names: a node's
/// certificate does not let it vote or lead as another.
fn check_sender(caller: &Caller, sender: Option<NodeId>, what: &str) -> Result<(), Status> {
    match caller.node {
        Some(node) if sender != Some(node) => {
            tracing::warn!(caller = %caller.name, ?sender, action = what, "a raft message in another node's name refused");
            Err(Status::permission_denied(format!(
                "{what} from node {} sent with the certificate of node {node}",
                sender.map_or_else(|| "(none)".to_owned(), |s| s.to_string())
            )))
        }
        _ => Ok(()),
    }
}

fn decode<T: DeserializeOwned>(node: NodeId, msg: &RaftMessage) -> Result<T, Status> {
    if msg.target != node {
        return Err(Status::failed_precondition(format!(
            "this message is for node {} but reached node {node}: the sender's address book is stale",
            msg.target
        )));
    }
    postcard::from_bytes(&msg.payload).map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
}

fn reply<T: Serialize>(value: &T) -> Result<Response<RaftReply>, Status> {
    let payload = postcard::to_allocvec(value).map_err(|e| Status::internal(format!("encoding a raft reply: {e}")))?;
    Ok(Response::new(RaftReply { payload }))
}

fn leader_hint(node: &Node, message: &str) -> Status {
    let mut status = Status::unavailable(message.to_owned());
    if let Some((_, addr)) = node.leader() {
        if let Ok(v) = addr.peer_addr.parse() {
            status.metadata_mut().insert("leader-peer-addr", v);
        }
        if let Ok(v) = addr.public_addr.parse() {
            status.metadata_mut().insert("leader-hint", v);
        }
    }
    status
}

fn write_error(node: &Node, e: RaftError<NodeId, ClientWriteError<NodeId, NodeAddr>>) -> Status {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
            leader_hint(node, "this node is not the leader; send admin calls to the leader")
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => Status::failed_precondition(e.to_string()),
        RaftError::Fatal(e) => Status::unavailable(format!("raft stopped: {e}")),
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(&self, request: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
        let caller = require(&request, &[Role::Replica], "append-entries")?;
        let req: openraft::raft::AppendEntriesRequest<TypeConfig> = decode(self.node.id, request.get_ref())?;
        check_sender(&caller, req.vote.leader_id().voted_for(), "append-entries")?;
        reply(&self.node.raft.append_entries(req).await)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
        let caller = require(&request, &[Role::Replica], "vote")?;
        let req: openraft::raft::VoteRequest<NodeId> = decode(self.node.id, request.get_ref())?;
        check_sender(&caller, req.vote.leader_id().voted_for(), "vote")?;
        reply(&self.node.raft.vote(req).await)
    }

    async fn install_snapshot(&self, request: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
        let caller = require(&request, &[Role::Replica], "install-snapshot")?;
        let req: openraft::raft::InstallSnapshotRequest<TypeConfig> = decode(self.node.id, request.get_ref())?;
        check_sender(&caller, req.vote.leader_id().voted_for(), "install-snapshot")?;
        reply(&self.node.raft.install_snapshot(req).await)
    }

    async fn forward(&self, request: Request<ForwardRequest>) -> Result<Response<ForwardReply>, Status> {
        // Replicas forward their clients' proposals; operators submit configuration changes
        // (whose replica signatures the step checks, so the admin token forges nothing).
        let caller = require(&request, &[Role::Replica, Role::Admin], "forward")?;
        let payload = request.into_inner().payload;
        if caller.role == Role::Admin && !matches!(decode_log_entry(&payload), Ok(Command::ConfigChange(_))) {
            return Err(Status::permission_denied(
                "the admin token forwards realm configuration changes only (admin realm submit)",
            ));
        }
        check_forwardable(&payload)?;
        let reply = forward_reply(self.node.propose_local(payload).await)?;
        Ok(Response::new(reply))
    }

    async fn forward_batch(
        &self,
        request: Request<ForwardBatchRequest>,
    ) -> Result<Response<ForwardBatchReply>, Status> {
        require(&request, &[Role::Replica], "forward-batch")?;
        let payloads = request.into_inner().payloads;
        if payloads.len() > FORWARD_BATCH_COMMANDS_MAX {
            return Err(Status::invalid_argument(format!(
                "payloads: {} commands, at most {FORWARD_BATCH_COMMANDS_MAX} in one batch",
                payloads.len()
            )));
        }
        // Each command is answered as Forward would answer it alone: one refused command
        // leaves the others of its batch to be proposed.
        let mut outcomes = vec![ForwardOutcome::default(); payloads.len()];
        let mut positions = Vec::with_capacity(payloads.len());
        let mut forwardable = Vec::with_capacity(payloads.len());
        for (k, payload) in payloads.into_iter().enumerate() {
            match check_forwardable(&payload) {
                Ok(()) => {
                    positions.push(k);
                    forwardable.push(payload);
                }
                Err(status) => outcomes[k] = refused_outcome(&status),
            }
        }
        let answers = self.node.propose_local_all(forwardable).await;
        for (k, answer) in positions.into_iter().zip(answers) {
            outcomes[k] = match forward_reply(answer) {
                Ok(r) => ForwardOutcome {
                    payload: r.payload,
                    raft_log_index: r.raft_log_index,
                    code: 0,
                    message: String::new(),
                },
                Err(status) => refused_outcome(&status),
            };
        }
        Ok(Response::new(ForwardBatchReply { outcomes }))
    }

    async fn init(&self, request: Request<InitRequest>) -> Result<Response<AdminReply>, Status> {
        require(&request, &[Role::Admin], "init")?;
        let voters = request.into_inner().voters;
        let message = init_cluster(&self.node, &voters).await?;
        Ok(Response::new(AdminReply { message }))
    }

    async fn add_learner(&self, request: Request<NodeSpec>) -> Result<Response<AdminReply>, Status> {
        require(&request, &[Role::Admin], "add-learner")?;
        let spec = request.into_inner();
        let addr = node_addr(&spec)?;
        if !self.node.is_leader() {
            return Err(leader_hint(&self.node, "this node is not the leader; send admin calls to the leader"));
        }
        // What the learner must have applied before this call returns. openraft's own blocking
        // add waits at most 500 ms, for the leader's view of the learner's log, and then reports
        // success anyway: a learner with nothing applied looked caught up.
        let target = self.node.raft.metrics().borrow().last_applied.map(|l| l.index).unwrap_or(0);
        let learner = Learner::new(&self.node, &spec)?;
        if let Ok(s) = learner.status().await {
            // A typo in the address must not add some other node under this id.
            learner.check_identity(&s)?;
        }
        self.node.raft.add_learner(spec.id, addr, false).await.map_err(|e| write_error(&self.node, e))?;
        let applied = learner.wait_applied(target).await?;
        Ok(Response::new(AdminReply {
            message: format!(
                "node {} added as a learner and caught up (applied index {applied}, the leader's was {target})",
                spec.id
            ),
        }))
    }

    async fn change_voters(&self, request: Request<ChangeVotersRequest>) -> Result<Response<AdminReply>, Status> {
        require(&request, &[Role::Admin], "change-voters")?;
        let voters: BTreeSet<NodeId> = request.into_inner().voters.into_iter().collect();
        if voters.is_empty() {
            return Err(Status::invalid_argument("voters: at least one voter is required"));
        }
        if !self.node.is_leader() {
            return Err(leader_hint(&self.node, "this node is not the leader; send admin calls to the leader"));
        }
        // Promoting a node that cannot keep up leaves a joint configuration that commits
        // nothing: checked before waiting (a quick answer) and again at the boundary.
        check_caught_up(&self.node, &voters)?;
        // Membership changes take effect at an epoch boundary: wait for the next delimiter.
        let mut closed = self.node.shared.effects().subscribe_closed();
        let start = *closed.borrow_and_update();
        let wait = tokio::time::timeout(Duration::from_millis(self.boundary_wait_ms), async {
            while *closed.borrow_and_update() == start {
                if closed.changed().await.is_err() {
                    break;
                }
            }
        });
        if wait.await.is_err() {
            return Err(Status::deadline_exceeded(format!(
                "no epoch boundary within {} ms; is the cluster cutting epochs?",
                self.boundary_wait_ms
            )));
        }
        check_caught_up(&self.node, &voters)?;
        self.node.raft.change_membership(voters.clone(), false).await.map_err(|e| write_error(&self.node, e))?;
        Ok(Response::new(AdminReply { message: format!("voters are now {voters:?}") }))
    }

    async fn status(&self, request: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        // Replicas read a learner's status while adding it.
        require(&request, &[Role::Replica, Role::Admin], "status")?;
        Ok(Response::new(status(&self.node)))
    }

    type BackupStream = crate::backup::BackupStream;

    async fn backup(&self, request: Request<BackupRequest>) -> Result<Response<Self::BackupStream>, Status> {
        require(&request, &[Role::Admin], "backup")?;
        Ok(Response::new(crate::backup::serve(&self.node, &self.snapshot_dir, &self.backups).await?))
    }
}

/// Followers forward what their clients and their own signature proposer propose: updates,
/// replica head signatures and verifier ratifications. Epoch delimiters come only from the
/// leader's own epoch proposer, stamped with its own clock: a forwarded one would let a holder
/// of the cluster token set the realm's clock (a delimiter ten years ahead makes every client
/// refuse every later head, and heads never go back in time).
/// The reply to a forwarded command: what applying it answered, or the status its forwarder
/// maps (UNAVAILABLE: ask whoever leads now).
fn forward_reply(proposed: Result<Proposed, ProposeError>) -> Result<ForwardReply, Status> {
    match proposed {
        Ok(r) => {
            let payload =
                postcard::to_allocvec(&r.response).map_err(|e| Status::internal(format!("encoding a reply: {e}")))?;
            Ok(ForwardReply { payload, raft_log_index: r.raft_log_index })
        }
        Err(ProposeError::NoLeader) => Err(Status::unavailable("this node is no longer the leader")),
        Err(e) => Err(Status::unavailable(e.to_string())),
    }
}

/// A command of a forwarded batch answered with `status` alone.
fn refused_outcome(status: &Status) -> ForwardOutcome {
    ForwardOutcome {
        payload: Vec::new(),
        raft_log_index: 0,
        code: status.code() as i32,
        message: status.message().to_owned(),
    }
}

fn check_forwardable(payload: &[u8]) -> Result<(), Status> {
    match decode_log_entry(payload) {
        // A configuration change carries a replica majority's signatures, which the step
        // checks: the cluster token alone cannot forge one.
        Ok(
            Command::Update(_)
            | Command::RecoveryRequest(_)
            | Command::ReplicaSignature { .. }
            | Command::VerifierSignature { .. }
            | Command::ConfigChange(_),
        ) => Ok(()),
        Ok(Command::EpochDelimiter { .. }) => Err(Status::permission_denied(
            "Forward accepts updates and signatures only; epoch delimiters are proposed by the leader itself",
        )),
        Err(e) => Err(Status::invalid_argument(format!("undecodable forwarded command: {e}"))),
    }
}

/// How long `add_learner` waits for the learner to apply what the leader had applied (the
/// admin CLI's deadline is 120 s).
pub const LEARNER_CATCH_UP_WAIT_MS: u64 = 100_000;
/// How far (in log entries) a learner's replicated log may trail the leader's for
/// `change_voters` to promote it.
pub const PROMOTION_LAG_ENTRIES_MAX: u64 = 100;
/// Deadline of one status call to a learner.
const LEARNER_STATUS_TIMEOUT_MS: u64 = 2_000;
/// Pause between status calls while a learner catches up.
const LEARNER_POLL_MS: u64 = 100;

/// A learner being added, reached through its own peer service.
struct Learner<'a> {
    spec: &'a NodeSpec,
    client: PeerClient,
}

impl<'a> Learner<'a> {
    fn new(node: &Node, spec: &'a NodeSpec) -> Result<Self, Status> {
        let client =
            node.network.client_for(spec.id, &spec.peer_addr).map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Self { spec, client })
    }

    async fn status(&self) -> Result<StatusReply, Status> {
        let mut request = Request::new(StatusRequest {});
        request.set_timeout(Duration::from_millis(LEARNER_STATUS_TIMEOUT_MS));
        self.client.clone().status(request).await.map(Response::into_inner)
    }

    fn check_identity(&self, s: &StatusReply) -> Result<(), Status> {
        if s.node_id == self.spec.id {
            return Ok(());
        }
        Err(Status::failed_precondition(format!(
            "the node at {} is node {}, not node {}: check the address and the id",
            self.spec.peer_addr, s.node_id, self.spec.id
        )))
    }

    /// Waits until the learner's own applied index reaches `target`; its applied index.
    async fn wait_applied(&self, target: u64) -> Result<u64, Status> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(LEARNER_CATCH_UP_WAIT_MS);
        loop {
            let progress = match self.status().await {
                Ok(s) => {
                    self.check_identity(&s)?;
                    if s.applied_index >= target {
                        return Ok(s.applied_index);
                    }
                    format!("it has applied index {} of {target}", s.applied_index)
                }
                Err(e) => format!("it does not answer ({}: {})", e.code(), e.message()),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(Status::deadline_exceeded(format!(
                    "node {} (peer {}) has not caught up within {} s: {progress}; it stays a learner and keeps \
                     catching up (see `admin status`); change the voters only once it has",
                    self.spec.id,
                    self.spec.peer_addr,
                    LEARNER_CATCH_UP_WAIT_MS / 1000
                )));
            }
            tokio::time::sleep(Duration::from_millis(LEARNER_POLL_MS)).await;
        }
    }
}

/// Refuses voters that are not members, and learners whose log trails the leader's by more
/// than [`PROMOTION_LAG_ENTRIES_MAX`] entries (by the leader's replication progress).
fn check_caught_up(node: &Node, voters: &BTreeSet<NodeId>) -> Result<(), Status> {
    let m = node.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let current: BTreeSet<NodeId> = membership.voter_ids().collect();
    let last_log = m.last_log_index.unwrap_or(0);
    for id in voters.difference(&current) {
        if membership.get_node(id).is_none() {
            return Err(Status::failed_precondition(format!(
                "node {id} is not a member: add it as a learner first (admin add-learner)"
            )));
        }
        let matched = m.replication.as_ref().and_then(|r| r.get(id).cloned().flatten()).map(|l| l.index);
        let lag = last_log.saturating_sub(matched.unwrap_or(0));
        if matched.is_none() || lag > PROMOTION_LAG_ENTRIES_MAX {
            let progress = match matched {
                Some(i) => format!("its log reaches index {i}"),
                None => "nothing is known to be replicated to it".to_owned(),
            };
            return Err(Status::failed_precondition(format!(
                "node {id} has not caught up: {progress}, {lag} entries behind the leader's {last_log} (at most \
                 {PROMOTION_LAG_ENTRIES_MAX} allowed); is it running and reachable at {}?",
                membership.get_node(id).map(|n| n.peer_addr.as_str()).unwrap_or("?")
            )));
        }
    }
    Ok(())
}

fn node_addr(spec: &NodeSpec) -> Result<NodeAddr, Status> {
    if spec.id == 0 || spec.peer_addr.is_empty() || spec.public_addr.is_empty() {
        return Err(Status::invalid_argument("a node needs an id >= 1, a peer_addr and a public_addr"));
    }
    Ok(NodeAddr { peer_addr: spec.peer_addr.clone(), public_addr: spec.public_addr.clone() })
}

/// Bootstraps the cluster with `voters`; refused once initialised.
pub async fn init_cluster(node: &Node, voters: &[NodeSpec]) -> Result<String, Status> {
    if voters.is_empty() {
        return Err(Status::invalid_argument("voters: at least one voter is required"));
    }
    let mut members = BTreeMap::new();
    for v in voters {
        members.insert(v.id, node_addr(v)?);
    }
    if !members.contains_key(&node.id) {
        return Err(Status::invalid_argument(format!("the voters must include this node ({})", node.id)));
    }
    match node.raft.initialize(members.clone()).await {
        Ok(()) => Ok(format!("cluster initialised with voters {:?}", members.keys().collect::<Vec<_>>())),
        Err(RaftError::APIError(InitializeError::NotAllowed(e))) => Err(Status::failed_precondition(format!(
            "the cluster is already initialised; a second init is refused ({e})"
        ))),
        Err(RaftError::APIError(e)) => Err(Status::invalid_argument(e.to_string())),
        Err(RaftError::Fatal(e)) => Err(Status::unavailable(format!("raft stopped: {e}"))),
    }
}

/// This node's view of the cluster.
pub fn status(node: &Node) -> StatusReply {
    let m = node.raft.metrics().borrow().clone();
    let applied = node.shared.applied();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let last_log = m.last_log_index.unwrap_or(0);
    let nodes = membership
        .nodes()
        .map(|(id, addr)| {
            let replication = m.replication.as_ref();
            let matched = replication.and_then(|r| r.get(id).cloned().flatten()).map(|l| l.index);
            NodeStatus {
                id: *id,
                peer_addr: addr.peer_addr.clone(),
                public_addr: addr.public_addr.clone(),
                voter: voters.contains(id),
                matched_index: matched.unwrap_or(0),
                // The leader knows every member's progress; a member it has replicated nothing
                // to trails by the whole log.
                lag: if replication.is_some() { last_log.saturating_sub(matched.unwrap_or(0)) } else { 0 },
            }
        })
        .collect();
    let role = match m.state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    };
    StatusReply {
        verifiers: verifier_status(node, applied.epoch_state.ratified_epoch),
        node_id: node.id,
        role: role.into(),
        leader_id: m.current_leader.unwrap_or(0),
        has_leader: m.current_leader.is_some(),
        term: m.current_term,
        last_log_index: last_log,
        applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
        last_epoch: applied.epoch_state.last_epoch,
        ratified_epoch: applied.epoch_state.ratified_epoch,
        pending_updates: applied.epoch_state.pending_updates,
        nodes,
        snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
        purged_index: m.purged.map(|l| l.index).unwrap_or(0),
    }
}

/// How far back `status` looks for each verifier's newest ratification.
const VERIFIER_STATUS_EPOCHS_MAX: u64 = 1000;

/// Each registered verifier with the newest epoch it ratified.
fn verifier_status(node: &Node, ratified: u64) -> Vec<VerifierStatus> {
    let config = node.config();
    let keys = &config.verifier_keys;
    let mut latest = vec![0u64; keys.len()];
    let machine = node.shared.read();
    let mut epoch = ratified;
    while epoch > 0 && ratified - epoch < VERIFIER_STATUS_EPOCHS_MAX && latest.contains(&0) {
        if let Ok(sigs) = machine.verifier_signatures(epoch) {
            for (signer, _) in sigs {
                if let Some(i) = keys.iter().position(|k| *k == signer) {
                    if latest[i] == 0 {
                        latest[i] = epoch;
                    }
                }
            }
        }
        epoch -= 1;
    }
    keys.iter()
        .zip(latest)
        .map(|(k, e)| VerifierStatus { key: k.as_bytes().to_vec(), latest_ratified_epoch: e })
        .collect()
}
