//! Channels to replicas: the one place an address becomes a gRPC channel, for replicas
//! talking to peers, clients, verifiers and the benchmark alike.
//!
//! [`Channels`] builds an [`Endpoint`] for an address with [`ChannelOptions`] and connects
//! it lazily, over TCP by default or through a [`Connector`] (a deterministic simulation
//! routes every channel of a realm through its own network that way), in plaintext or with
//! TLS ([`Channels::with_tls`]): the TLS handshake runs over whatever stream the connector
//! opened, under the connect timeout.
//!
//! With TLS the server's certificate must be valid for the address's host, or for the name
//! given to [`Channels::lazy_named`] (replicas name each other `node-<id>.<realm>` whatever
//! their addresses).

use crate::tls::TlsClient;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::transport::{Channel, Endpoint, Uri};

/// How a channel connects and keeps its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelOptions {
    /// Longest a connection attempt may take, in milliseconds (`None`: the OS's limit).
    pub connect_timeout_ms: Option<u64>,
    /// Sends small messages at once rather than batching them (TCP only).
    pub tcp_nodelay: bool,
    /// HTTP/2 keep-alive pings, to notice a dead peer on an idle connection.
    pub keep_alive: Option<KeepAlive>,
}

/// HTTP/2 keep-alive pings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAlive {
    /// Ping period, in milliseconds.
    pub interval_ms: u64,
    /// A ping unanswered for this long closes the connection, in milliseconds.
    pub timeout_ms: u64,
}

/// How long connecting takes at most unless a caller says otherwise, in milliseconds.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;

impl Default for ChannelOptions {
    fn default() -> Self {
        Self { connect_timeout_ms: Some(CONNECT_TIMEOUT_MS), tcp_nodelay: true, keep_alive: None }
    }
}

/// A byte stream to a replica, as a [`Connector`] opens it.
pub trait Connection: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Connection for T {}

/// A connection being opened.
pub type Connecting = Pin<Box<dyn Future<Output = std::io::Result<Box<dyn Connection>>> + Send>>;

/// Opens the connections under channels in place of TCP: the network seam of a simulation.
pub trait Connector: Send + Sync + 'static {
    /// Opens a connection to `addr` (`host:port`, as the channel was built for).
    fn connect(&self, addr: &str) -> Connecting;
}

/// The address a channel was asked to connect to is not one.
#[derive(Debug, thiserror::Error)]
#[error("address {addr:?} is not host:port: {source}")]
pub struct InvalidAddress {
    /// The address as given.
    pub addr: String,
    /// What the URI parser said.
    #[source]
    pub source: tonic::transport::Error,
}

/// The name a server's certificate must be valid for is not a DNS name or an IP address.
#[derive(Debug, thiserror::Error)]
#[error("{name:?} cannot name a TLS server (not a DNS name or an IP address)")]
pub struct InvalidServerName {
    /// The name as given.
    pub name: String,
}

/// A channel that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// A bad address.
    #[error(transparent)]
    Address(#[from] InvalidAddress),
    /// A bad server name.
    #[error(transparent)]
    ServerName(#[from] InvalidServerName),
}

/// Builds channels with one set of options over one connector, in plaintext or with one TLS
/// configuration. Clones share the connector and the TLS configuration.
#[derive(Clone, Default)]
pub struct Channels {
    options: ChannelOptions,
    /// `None`: TCP, with the options' socket settings.
    connector: Option<Arc<dyn Connector>>,
    /// `None`: plaintext.
    tls: Option<TlsClient>,
}

impl fmt::Debug for Channels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channels")
            .field("options", &self.options)
            .field("connector", &if self.connector.is_some() { "custom" } else { "tcp" })
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Channels {
    /// Channels over TCP with `options`, in plaintext.
    pub fn new(options: ChannelOptions) -> Self {
        Self { options, connector: None, tls: None }
    }

    /// The same channels, with TLS as `tls` configures it (`None`: plaintext).
    #[must_use]
    pub fn with_tls(self, tls: Option<TlsClient>) -> Self {
        Self { tls, ..self }
    }

    /// Whether channels speak TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The same options, over `connector` instead of TCP.
    #[must_use]
    pub fn with_connector(self, connector: Arc<dyn Connector>) -> Self {
        Self { connector: Some(connector), ..self }
    }

    /// The same connector, with other options.
    #[must_use]
    pub fn with_options(self, options: ChannelOptions) -> Self {
        Self { options, ..self }
    }

    /// The options channels are built with.
    pub fn options(&self) -> ChannelOptions {
        self.options
    }

    /// The endpoint for `addr` (`host:port`) with these options, not connected.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, InvalidAddress> {
        let o = self.options;
        let mut endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|source| InvalidAddress { addr: addr.to_owned(), source })?
            .tcp_nodelay(o.tcp_nodelay);
        if let Some(ms) = o.connect_timeout_ms {
            endpoint = endpoint.connect_timeout(Duration::from_millis(ms));
        }
        if let Some(k) = o.keep_alive {
            endpoint = endpoint
                .http2_keep_alive_interval(Duration::from_millis(k.interval_ms))
                .keep_alive_timeout(Duration::from_millis(k.timeout_ms));
        }
        Ok(endpoint)
    }

    /// A channel to `addr` (`host:port`) that connects on first use and reconnects after a
    /// failure. With TLS, the server's certificate must be valid for the address's host.
    pub fn lazy(&self, addr: &str) -> Result<Channel, ChannelError> {
        self.lazy_named(addr, None)
    }

    /// [`Channels::lazy`], the server's certificate being valid for `server_name` if given
    /// (with TLS; plaintext channels ignore it).
    pub fn lazy_named(&self, addr: &str, server_name: Option<&str>) -> Result<Channel, ChannelError> {
        self.lazy_over(self.endpoint(addr)?, addr, server_name)
    }

    /// [`Channels::lazy_named`] over `endpoint`: [`Channels::endpoint`] of `addr` with
    /// settings of the caller's (HTTP/2 windows, say).
    pub fn lazy_over(
        &self,
        endpoint: Endpoint,
        addr: &str,
        server_name: Option<&str>,
    ) -> Result<Channel, ChannelError> {
        let Some(tls) = self.tls.clone() else {
            let Some(connector) = self.connector.clone() else {
                return Ok(endpoint.connect_lazy());
            };
            let target = addr.to_owned();
            return Ok(endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                let opening = connector.connect(&target);
                async move { opening.await.map(TokioIo::new) }
            })));
        };
        let name = match server_name {
            Some(name) => name.to_owned(),
            // An IPv6 host comes in brackets.
            None => endpoint.uri().host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned(),
        };
        let server_name = ServerName::try_from(name.clone()).map_err(|_| InvalidServerName { name })?;
        let connector = self.connector.clone();
        let nodelay = self.options.tcp_nodelay;
        let target = addr.to_owned();
        Ok(endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let opening: Connecting = match &connector {
                Some(c) => c.connect(&target),
                None => tcp(target.clone(), nodelay),
            };
            let tls = tokio_rustls::TlsConnector::from(tls.config());
            let server_name = server_name.clone();
            async move {
                let stream = opening.await?;
                let stream = tls.connect(server_name, stream).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        })))
    }
}

/// Opens a TCP connection to `addr`.
fn tcp(addr: String, nodelay: bool) -> Connecting {
    Box::pin(async move {
        let stream = tokio::net::TcpStream::connect(&addr).await?;
        stream.set_nodelay(nodelay)?;
        Ok(Box::new(stream) as Box<dyn Connection>)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::keyraft_client::KeyraftClient;
    use crate::pb::GetEpochRequest;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// Refuses every connection, counting them and remembering where they went: what a
    /// simulated partition does.
    #[derive(Default)]
    struct Partitioned {
        attempts: AtomicUsize,
        addrs: Mutex<Vec<String>>,
    }

    impl Connector for Partitioned {
        fn connect(&self, addr: &str) -> Connecting {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            self.addrs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(addr.to_owned());
            Box::pin(async { Err(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "simulated partition")) })
        }
    }

    #[tokio::test]
    async fn a_custom_connector_opens_the_connection() {
        let partition = Arc::new(Partitioned::default());
        let channels = Channels::default().with_connector(partition.clone());
        // Nothing listens there: only the connector can be what answers.
        let channel = channels.lazy("replica-1.invalid:7001").unwrap();
        assert_eq!(partition.attempts.load(Ordering::SeqCst), 0, "lazy channels connect on first use");
        let status = KeyraftClient::new(channel).get_epoch(GetEpochRequest::default()).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(partition.attempts.load(Ordering::SeqCst) >= 1);
        assert_eq!(partition.addrs.lock().unwrap()[0], "replica-1.invalid:7001");
    }

    #[tokio::test]
    async fn a_duplex_connector_carries_the_call() {
        // An in-process pipe: the channel's HTTP/2 connection preface arrives at its far end.
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let ours = Mutex::new(Some(ours));
        struct Pipe(Mutex<Option<tokio::io::DuplexStream>>);
        impl Connector for Pipe {
            fn connect(&self, _addr: &str) -> Connecting {
                let end = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
                Box::pin(async move {
                    end.map(|e| Box::new(e) as Box<dyn Connection>)
                        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotConnected, "pipe used"))
                })
            }
        }
        let channels = Channels::default().with_connector(Arc::new(Pipe(ours)));
        let reader = tokio::spawn(async move {
            use tokio::io::AsyncReadExt as _;
            let mut preface = [0u8; 24];
            theirs.read_exact(&mut preface).await.map(|_| preface)
        });
        let channel = channels.lazy("127.0.0.1:1").unwrap();
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            KeyraftClient::new(channel).get_epoch(GetEpochRequest::default()),
        )
        .await;
        let preface = reader.await.unwrap().unwrap();
        assert_eq!(&preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    }

    #[test]
    fn options_reach_the_endpoint_and_bad_addresses_are_named() {
        let channels = Channels::new(ChannelOptions {
            connect_timeout_ms: Some(750),
            tcp_nodelay: false,
            keep_alive: Some(KeepAlive { interval_ms: 10_000, timeout_ms: 5_000 }),
        });
        let endpoint = channels.endpoint("127.0.0.1:7001").unwrap();
        assert_eq!(endpoint.uri().to_string(), "http://127.0.0.1:7001/");
        let e = channels.endpoint("not an address").unwrap_err();
        assert!(e.to_string().contains("\"not an address\""), "{e}");
    }
}
