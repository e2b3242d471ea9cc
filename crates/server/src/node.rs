//! One replica: Raft, the state, the keys, and how to get a command into the log.

use crate::config::Limits;
use crate::peer_client::PeerClient;
use crate::raft::network::PeerNetwork;
use crate::raft::sm_store::SharedState;
use crate::raft::types::{ApplyResponse, LogCommand, NodeAddr, NodeId, Raft};
use ed25519_dalek::SigningKey;
use keyraft_core::vrf::VrfSecretKey;
use keyraft_core::{Command, PublicKey, RealmConfig};
use keyraft_proto::convert::encode_log_entry;
use keyraft_proto::peer::ForwardRequest;
use openraft::error::{ClientWriteError, RaftError};
use std::sync::Arc;
use std::time::Duration;

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

/// A running replica's parts, shared by its services and proposers.
pub struct Node {
    /// Raft node id.
    pub id: NodeId,
    /// The Raft handle.
    pub raft: Raft,
    /// The applied state.
    pub shared: Arc<SharedState>,
    /// The realm.
    pub realm: RealmConfig,
    /// The realm's VRF secret key.
    pub vrf: VrfSecretKey,
    /// This replica's head-signing key.
    pub signing_key: SigningKey,
    /// Its public half.
    pub signing_public: PublicKey,
    /// Peer clients (shared with Raft's network).
    pub network: PeerNetwork,
    /// Request limits.
    pub limits: Limits,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.id).field("realm", &self.realm.realm).finish()
    }
}

impl Node {
    /// The current leader and its addresses, as this node knows them.
    pub fn leader(&self) -> Option<(NodeId, NodeAddr)> {
        let metrics = self.raft.metrics().borrow().clone();
        let id = metrics.current_leader?;
        let node = metrics.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }

    /// Whether this node is the leader.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// Proposes `command` locally if this node leads, else forwards it to the leader; returns
    /// once the command is applied.
    pub async fn propose(&self, command: &Command) -> Result<ApplyResponse, ProposeError> {
        let bytes = encode_log_entry(command);
        match self.raft.client_write(LogCommand(bytes.clone())).await {
            Ok(r) => Ok(r.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => match f.leader_node {
                Some(leader) if f.leader_id != Some(self.id) => self.forward(&leader, bytes).await,
                _ => Err(ProposeError::NoLeader),
            },
            Err(RaftError::APIError(e)) => Err(ProposeError::Fatal(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(ProposeError::Fatal(e.to_string())),
        }
    }

    /// Proposes on this node only (the leader's half of forwarding).
    pub async fn propose_local(&self, bytes: Vec<u8>) -> Result<ApplyResponse, ProposeError> {
        match self.raft.client_write(LogCommand(bytes)).await {
            Ok(r) => Ok(r.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(ProposeError::NoLeader),
            Err(RaftError::APIError(e)) => Err(ProposeError::Fatal(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(ProposeError::Fatal(e.to_string())),
        }
    }

    async fn forward(&self, leader: &NodeAddr, bytes: Vec<u8>) -> Result<ApplyResponse, ProposeError> {
        let fail = |message: String| ProposeError::Forward { leader: leader.public_addr.clone(), message };
        let mut client: PeerClient = self.network.client_for(&leader.peer_addr).map_err(|e| fail(e.to_string()))?;
        let mut request = tonic::Request::new(ForwardRequest { payload: bytes });
        request.set_timeout(Duration::from_millis(self.limits.forward_timeout_ms));
        match client.forward(request).await {
            Ok(reply) => postcard::from_bytes(&reply.into_inner().payload)
                .map_err(|e| fail(format!("undecodable reply from the leader: {e}"))),
            Err(status) if status.code() == tonic::Code::Unavailable => {
                tracing::debug!(leader = %leader.peer_addr, message = status.message(), "forward failed");
                Err(ProposeError::NoLeader)
            }
            Err(status) => Err(fail(format!("{}: {}", status.code(), status.message()))),
        }
    }
}
