//! Clients of the peer service: Raft traffic and forwarding carry the cluster token, admin
//! calls the admin token; all have explicit message size limits. Over TLS the client
//! presents its certificate (a node's, or an operator's), and a replica checks that the peer
//! it dials is the node it means (`node-<id>.<realm>`).

use keyraft_proto::peer::peer_client::PeerClient as Generated;
use keyraft_proto::tls::TlsClient;
use keyraft_proto::transport::{ChannelOptions, Channels, KeepAlive};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Largest peer message, in bytes, in both directions (a batch of appended entries or one
/// snapshot chunk fits well below it).
pub const PEER_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// How long connecting to a peer may take.
pub const PEER_CONNECT_TIMEOUT_MS: u64 = 2_000;

/// How peer channels connect: keep-alive pings notice a dead peer on an idle connection
/// before Raft's next call has to time out on it.
pub const PEER_CHANNEL_OPTIONS: ChannelOptions = ChannelOptions {
    connect_timeout_ms: Some(PEER_CONNECT_TIMEOUT_MS),
    tcp_nodelay: true,
    keep_alive: Some(KeepAlive { interval_ms: 10_000, timeout_ms: 5_000 }),
};

/// Peer channels over TCP, with TLS if `tls` is given.
pub fn peer_channels(tls: Option<TlsClient>) -> Channels {
    Channels::new(PEER_CHANNEL_OPTIONS).with_tls(tls)
}

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

/// A client for the peer at `addr` (host:port) over `channels`, connecting on first use; over
/// TLS the peer's certificate must be valid for the address's host.
pub fn connect_lazy(channels: &Channels, addr: &str, token: &str) -> Result<PeerClient, crate::Error> {
    connect_lazy_named(channels, addr, None, token)
}

/// [`connect_lazy`], the peer's certificate being valid for `server_name` if given.
pub fn connect_lazy_named(
    channels: &Channels,
    addr: &str,
    server_name: Option<&str>,
    token: &str,
) -> Result<PeerClient, crate::Error> {
    let channel =
        channels.lazy_named(addr, server_name).map_err(|e| crate::Error::config_because("peer address", e))?;
    let header = format!("Bearer {token}")
        .parse()
        .map_err(|_| crate::Error::config("a peer-service token must be printable ASCII"))?;
    Ok(Generated::with_interceptor(channel, Auth { header })
        .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX))
}
