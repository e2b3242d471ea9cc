//! Channels to replicas: the one place an address becomes a gRPC channel, for replicas
//! talking to peers, clients, verifiers and the benchmark alike.
//!
//! [`Channels`] builds an [`Endpoint`] for an address with [`ChannelOptions`] and connects
//! it lazily, over TCP by default or through a [`Connector`]: a deterministic simulation
//! routes every channel of a realm through its own network that way, and TLS will be added
//! here too.

use hyper_util::rt::TokioIo;
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

/// Builds channels with one set of options over one connector. Clones share the connector.
#[derive(Clone, Default)]
pub struct Channels {
    options: ChannelOptions,
    /// `None`: TCP, with the options' socket settings.
    connector: Option<Arc<dyn Connector>>,
}

impl fmt::Debug for Channels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channels")
            .field("options", &self.options)
            .field("connector", &if self.connector.is_some() { "custom" } else { "tcp" })
            .finish()
    }
}

impl Channels {
    /// Channels over TCP with `options`.
    pub fn new(options: ChannelOptions) -> Self {
        Self { options, connector: None }
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
    /// failure.
    pub fn lazy(&self, addr: &str) -> Result<Channel, InvalidAddress> {
        let endpoint = self.endpoint(addr)?;
        let Some(connector) = self.connector.clone() else {
            return Ok(endpoint.connect_lazy());
        };
        let target = addr.to_owned();
        Ok(endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let opening = connector.connect(&target);
            async move { opening.await.map(TokioIo::new) }
        })))
    }
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
