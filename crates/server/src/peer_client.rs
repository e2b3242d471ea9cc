//! Clients of the peer service: Raft traffic, forwarding and admin calls all carry the
//! cluster token and have explicit message size limits.

use keyraft_proto::peer::peer_client::PeerClient as Generated;
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// Largest peer message, in bytes, in both directions (a batch of appended entries or one
/// snapshot chunk fits well below it).
pub const PEER_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// How long connecting to a peer may take.
pub const PEER_CONNECT_TIMEOUT_MS: u64 = 2_000;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Auth {
    header: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.header.clone());
        Ok(request)
    }
}

/// A peer-service client.
pub type PeerClient = Generated<InterceptedService<Channel, Auth>>;

/// A client for the peer at `addr` (host:port), connecting on first use.
pub fn connect_lazy(addr: &str, token: &str) -> Result<PeerClient, crate::Error> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| crate::Error::config_because(format!("peer address {addr:?}"), e))?
        .connect_timeout(Duration::from_millis(PEER_CONNECT_TIMEOUT_MS))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    let channel = endpoint.connect_lazy();
    let header = format!("Bearer {token}")
        .parse()
        .map_err(|_| crate::Error::config("the cluster token must be printable ASCII"))?;
    Ok(Generated::with_interceptor(channel, Auth { header })
        .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX))
}
