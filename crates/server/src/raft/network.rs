//! The Raft network over tonic: one lazily connected channel per peer, a deadline on every
//! call (openraft's soft TTL), explicit message size limits, the cluster token on every call
//! and the target node id in every message.

use super::types::{NodeAddr, NodeId, TypeConfig};
use crate::peer_client::{self, PeerClient};
use keyraft_proto::peer::RaftMessage;
use keyraft_proto::transport::Channels;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Creates clients for peers; clones share the channel cache.
#[derive(Clone)]
pub struct PeerNetwork {
    token: Arc<str>,
    channels: Channels,
    /// The realm name, in the name each peer's certificate must have.
    realm: Arc<str>,
    clients: Arc<Mutex<HashMap<(NodeId, String), PeerClient>>>,
}

impl PeerNetwork {
    /// A network of `realm`'s nodes over `channels` ([`peer_client::peer_channels`] in
    /// production) that authenticates with `token`.
    pub fn new(token: &str, channels: Channels, realm: &str) -> Self {
        Self { token: token.into(), channels, realm: realm.into(), clients: Arc::default() }
    }

    /// A (cached) client for the peer service of node `id` at `addr`; over TLS its
    /// certificate must be node `id`'s.
    pub fn client_for(&self, id: NodeId, addr: &str) -> Result<PeerClient, crate::Error> {
        let mut clients = self.clients.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (id, addr.to_owned());
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let name = keyraft_proto::tls::node_name(id, &self.realm);
        let c = peer_client::connect_lazy_named(&self.channels, addr, Some(&name), &self.token)?;
        clients.insert(key, c.clone());
        Ok(c)
    }
}

/// A client for one peer.
pub struct PeerConnection {
    target: NodeId,
    addr: String,
    client: Result<PeerClient, String>,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> PeerConnection {
        let client = self.client_for(target, &node.peer_addr).map_err(|e| e.to_string());
        PeerConnection { target, addr: node.peer_addr.clone(), client }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("peer {addr}: {message}")]
struct TransportError {
    addr: String,
    message: String,
}

type RpcErr<E> = RPCError<NodeId, NodeAddr, RaftError<NodeId, E>>;

impl PeerConnection {
    async fn call<Req, Resp, E>(&mut self, kind: RpcKind, req: &Req, option: &RPCOption) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let fail = |message: String| TransportError { addr: self.addr.clone(), message };
        let mut client = match &self.client {
            Ok(c) => c.clone(),
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(&fail(e.clone())))),
        };
        let payload =
            postcard::to_allocvec(req).map_err(|e| RPCError::Network(NetworkError::new(&fail(e.to_string()))))?;
        let mut request = tonic::Request::new(RaftMessage { target: self.target, payload });
        request.set_timeout(option.soft_ttl());
        let reply = match kind {
            RpcKind::Append => client.append_entries(request).await,
            RpcKind::Vote => client.vote(request).await,
            RpcKind::Snapshot => client.install_snapshot(request).await,
        };
        let reply = match reply {
            Ok(r) => r.into_inner(),
            Err(status) => {
                let err = fail(format!("{}: {}", status.code(), status.message()));
                return Err(match status.code() {
                    tonic::Code::Unavailable | tonic::Code::Unknown => RPCError::Unreachable(Unreachable::new(&err)),
                    _ => RPCError::Network(NetworkError::new(&err)),
                });
            }
        };
        let result: Result<Resp, RaftError<NodeId, E>> = postcard::from_bytes(&reply.payload)
            .map_err(|e| RPCError::Network(NetworkError::new(&fail(format!("undecodable reply: {e}")))))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

#[derive(Clone, Copy)]
enum RpcKind {
    Append,
    Vote,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr<openraft::error::Infallible>> {
        self.call(RpcKind::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        self.call(RpcKind::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr<openraft::error::Infallible>> {
        self.call(RpcKind::Vote, &rpc, &option).await
    }
}
