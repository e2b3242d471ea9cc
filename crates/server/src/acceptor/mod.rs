//! The one place connections come in: the public and the peer listener both run [`serve`].
//!
//! Each accepted connection goes through the same steps:
//!
//! 1. **limits**: at most `connections_max` open connections per listener and
//!    `connections_per_address_max` per remote IP address; past them the connection is closed
//!    at once, before anything is read (a refused client sees the connection closed);
//! 2. **handshake**, under one deadline (`handshake_ms`): on a TLS listener the TLS handshake
//!    first (rustls; the configuration read per connection, so a reloaded certificate serves
//!    the next connection), whose ALPN picks the protocol; then, for HTTP/2, the client's
//!    connection preface (the 24-octet magic and its SETTINGS frame). The client's
//!    certificate, if it gave one, goes with each of its requests ([`ClientCertificate`]);
//! 3. **serving** with hyper: HTTP/2 (gRPC and the JSON gateway), or, on a listener that
//!    allows it, HTTP/1.1 where TLS negotiated `http/1.1` or the client's first bytes are not
//!    the HTTP/2 preface (the gateway's clients; the request head is due within
//!    `handshake_ms`), at
//!    most `streams_per_connection_max` concurrent streams, HTTP/2 keepalive pings to find dead
//!    peers, and an idle limit: a connection with no open request for `idle_ms` is closed
//!    (GOAWAY in HTTP/2).
//!
//! Why not tonic's own server: it has no handshake deadline and no idle limit, and its accept
//! loop retries a failing `accept` (EMFILE) at once, spinning (docs/decisions.md).
//!
//! Accept errors never end the loop: errors about one connection are skipped, the others
//! (out of file descriptors, out of memory) are logged once per burst and retried with a
//! back-off of up to [`ACCEPT_BACKOFF_MAX_MS`] (`keyraft_core::backoff`, the one retry rule).
//!
//! On shutdown the listener is closed at once, every connection is asked to close gracefully
//! (GOAWAY; open requests finish), and [`serve`] returns when all are closed, or after
//! `close_grace` for those that do not.
//!
//! This file runs the accept loop; `limits` counts connections against the caps, and
//! `connection` serves one connection (steps 2 and 3).

mod connection;
mod limits;
pub mod request_id;

use crate::config::Limits;
use crate::lifecycle::Tasks;
use crate::tls::ServerTls;
use bytes::Bytes;
use connection::{connection, Accepted};
pub use connection::{ClientCertificate, Stream, TrackedBody};
use hyper_util::rt::TokioTimer;
use hyper_util::server::conn::auto;
use keyraft_core::backoff;
use limits::{RefusalLog, Slots};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tower::Service;

/// Where a listener's connections come from.
#[derive(Debug)]
pub enum Listener {
    /// A bound TCP socket.
    Tcp(TcpListener),
    /// Connections handed over in memory: a simulated network's (see [`MemoryListener`]).
    Memory(MemoryListener),
}

impl Listener {
    /// The address it listens at.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr(),
            Listener::Memory(l) => Ok(l.local_addr),
        }
    }

    async fn accept(&mut self) -> io::Result<(Accepted, SocketAddr)> {
        match self {
            Listener::Tcp(l) => {
                let (tcp, remote) = l.accept().await?;
                // Small gRPC frames would otherwise wait for delayed ACKs (about 40 ms each).
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(%remote, error = %e, "setting TCP_NODELAY");
                }
                let local_addr = tcp.local_addr().ok();
                Ok((Accepted { io: Box::new(tcp), local_addr }, remote))
            }
            Listener::Memory(l) => match l.incoming.recv().await {
                Some((io, remote)) => Ok((Accepted { io, local_addr: Some(l.local_addr) }, remote)),
                // Nobody can connect any more: wait for the shutdown, as an idle socket would.
                None => std::future::pending().await,
            },
        }
    }
}

/// A listener whose connections are handed to it in memory, each with the address it comes
/// from, by the [`MemoryDialer`] made with it: a simulation runs a whole realm in one process
/// with no socket, so that nothing but its own seeded decisions orders what happens.
#[derive(Debug)]
pub struct MemoryListener {
    local_addr: SocketAddr,
    incoming: mpsc::UnboundedReceiver<(Box<dyn Stream>, SocketAddr)>,
}

impl MemoryListener {
    /// A listener that claims to listen at `local_addr`, and the dialer that connects to it.
    pub fn new(local_addr: SocketAddr) -> (Self, MemoryDialer) {
        let (tx, incoming) = mpsc::unbounded_channel();
        (Self { local_addr, incoming }, MemoryDialer { tx })
    }
}

/// Hands connections to a [`MemoryListener`]. Clones reach the same listener.
#[derive(Debug, Clone)]
pub struct MemoryDialer {
    tx: mpsc::UnboundedSender<(Box<dyn Stream>, SocketAddr)>,
}

impl MemoryDialer {
    /// Hands `io`, coming from `remote`, to the listener; gives it back if the listener is gone.
    pub fn connect(&self, io: Box<dyn Stream>, remote: SocketAddr) -> Result<(), Box<dyn Stream>> {
        self.tx.send((io, remote)).map_err(|e| e.0 .0)
    }
}

impl std::fmt::Debug for dyn Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stream")
    }
}

/// Longest pause between `accept` attempts while they fail, in milliseconds.
pub const ACCEPT_BACKOFF_MAX_MS: u64 = 1_000;
/// First pause after a failed `accept`, in milliseconds.
const ACCEPT_BACKOFF_MIN_MS: u64 = 5;
/// How long a connection closed for being idle may take to finish closing: only the
/// client's acknowledgement of the GOAWAY's ping is awaited.
pub const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(10);
/// HTTP/2 keepalive: a ping after this long without a frame from the client ...
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// ... which, unanswered for this long, closes the connection (the peer is gone).
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// What a listener allows its connections (from `[limits]`, the same for both listeners).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Time from accept to the end of the handshake.
    pub handshake: Duration,
    /// A connection with no open request for this long is closed.
    pub idle: Duration,
    /// Open connections per remote IP address.
    pub per_address_max: usize,
    /// Open connections on the listener.
    pub total_max: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub streams_max: u32,
    /// Requests served at once per connection (further ones wait); `None`: no limit besides
    /// `streams_max`.
    pub requests_max: Option<usize>,
    /// On shutdown, connections still open this long after being asked to close are dropped.
    pub close_grace: Duration,
    /// Whether HTTP/1.1 clients are served (the public listener's JSON gateway): chosen by
    /// ALPN under TLS, or by a first request that is not the HTTP/2 preface. Else HTTP/2 only.
    pub http1: bool,
}

impl ConnectionLimits {
    /// The limits `[limits]` sets; `close_grace` as given.
    pub fn from_config(limits: &Limits, close_grace: Duration) -> Self {
        Self {
            handshake: Duration::from_millis(limits.handshake_ms),
            idle: Duration::from_millis(limits.idle_ms),
            per_address_max: limits.connections_per_address_max,
            total_max: limits.connections_max,
            streams_max: limits.streams_per_connection_max,
            requests_max: None,
            close_grace,
            http1: false,
        }
    }
}

/// A service the acceptor serves on a connection: tonic's routes today; an HTTP gateway
/// routed beside them later.
pub trait HttpService<B>:
    Service<
        http::Request<hyper::body::Incoming>,
        Response = http::Response<B>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S, B> HttpService<B> for S where
    S: Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// The body of a response the acceptor writes.
pub trait ResponseBody:
    http_body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>> + Send + Unpin + 'static
{
}

impl<B> ResponseBody for B where
    B: http_body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>> + Send + Unpin + 'static
{
}

/// Serves `service` on the connections `listener` accepts until `tasks` are told to stop, then
/// closes them gracefully (see the module's documentation). `name` names the listener in the
/// log and the metrics; `tls`, if given, is what its connections are secured with; `metrics`,
/// if given, records each request. Every connection and every request is a task of `tasks`;
/// the connections end before this returns.
pub async fn serve<S, B>(
    name: &'static str,
    mut listener: Listener,
    limits: ConnectionLimits,
    tls: Option<ServerTls>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    service: S,
    tasks: Tasks,
) where
    S: HttpService<B>,
    B: ResponseBody,
{
    let mut builder = auto::Builder::new(tasks.clone()).http2_only();
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.streams_max)
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
    let mut http1 = auto::Builder::new(tasks.clone()).http1_only();
    http1.http1().timer(TokioTimer::new()).header_read_timeout(limits.handshake);
    let shared = Arc::new(Shared { name, limits, builder, http1, tls, metrics, service });
    let slots = Arc::new(Slots::new(limits, shared.metrics.as_ref().map(|m| m.connections(name))));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    let mut backoff = AcceptBackoff::default();
    let mut refusals = RefusalLog::default();
    let shutdown = tasks.cancelled();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (accepted, remote) = match accepted {
            Ok(accepted) => {
                backoff.succeeded(name);
                accepted
            }
            // The client gave up before its connection was accepted: nothing to do.
            Err(e) if is_about_one_connection(&e) => continue,
            Err(e) => {
                let pause = backoff.failed(name, &e);
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(pause) => continue,
                }
            }
        };
        let slot = match slots.take(remote.ip()) {
            Ok(slot) => slot,
            Err(refused) => {
                refusals.refused(name, remote, &refused);
                continue;
            }
        };
        // In a set, so that aborting `serve` drops its connections at once.
        connections
            .spawn(tasks.track("connection", connection(accepted, remote, slot, shared.clone(), stop_rx.clone())));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
}

/// What every connection of a listener shares.
struct Shared<S> {
    name: &'static str,
    limits: ConnectionLimits,
    /// HTTP/2.
    builder: auto::Builder<Tasks>,
    /// HTTP/1.1, where TLS negotiated it.
    http1: auto::Builder<Tasks>,
    tls: Option<ServerTls>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    service: S,
}

/// Errors of `accept` about one connection (the client left before it was accepted), not
/// about the listener.
fn is_about_one_connection(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted)
}

/// Pauses between failing `accept`s, and one log line per burst of failures.
#[derive(Debug, Default)]
struct AcceptBackoff {
    /// Failures since the last success.
    failures: u32,
}

impl AcceptBackoff {
    /// Records a failure; returns how long to wait before the next attempt.
    fn failed(&mut self, name: &str, e: &io::Error) -> Duration {
        if self.failures == 0 {
            tracing::warn!(
                listener = name,
                error = %e,
                "accepting connections failed (out of file descriptors?); retrying with a back-off until it works again"
            );
        }
        self.failures = self.failures.saturating_add(1);
        self.pause()
    }

    fn pause(&self) -> Duration {
        let delay_ms = backoff::delay_ms(self.failures.saturating_sub(1), ACCEPT_BACKOFF_MIN_MS, ACCEPT_BACKOFF_MAX_MS);
        Duration::from_millis(delay_ms)
    }

    /// Records a success, ending a burst of failures.
    fn succeeded(&mut self, name: &str) {
        if self.failures > 0 {
            tracing::info!(listener = name, failures = self.failures, "accepting connections again");
            self.failures = 0;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    /// tonic's `Request::remote_addr` reads what the acceptor puts in each request: the rate
    /// limits key on it.
    #[tokio::test]
    async fn requests_carry_the_client_address_for_tonic() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server_addr = listener.local_addr().unwrap();
        let tasks = Tasks::new(CancellationToken::new(), TaskTracker::new());
        let echo = tower::service_fn(|request: http::Request<hyper::body::Incoming>| async move {
            let remote = tonic::Request::from_http(request).remote_addr();
            let body = tonic::body::Body::empty();
            Ok::<_, Infallible>(http::Response::builder().header("x-remote", format!("{remote:?}")).body(body).unwrap())
        });
        let limits = ConnectionLimits::from_config(&Limits::default(), Duration::from_secs(1));
        let serving = tokio::spawn(serve("test", Listener::Tcp(listener), limits, None, None, echo, tasks.clone()));

        let tcp = tokio::net::TcpStream::connect(server_addr).await.unwrap();
        let client_addr = tcp.local_addr().unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();
        let request = http::Request::get(format!("http://{server_addr}/")).body(()).unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.headers()["x-remote"], format!("{:?}", Some(client_addr)));

        tasks.token().cancel();
        serving.await.unwrap();
    }

    #[test]
    fn accept_failures_back_off_up_to_the_cap_and_reset_on_success() {
        let mut backoff = AcceptBackoff::default();
        let e = io::Error::from_raw_os_error(24); // EMFILE
        let pauses: Vec<Duration> = (0..12).map(|_| backoff.failed("test", &e)).collect();
        assert_eq!(pauses[0], Duration::from_millis(ACCEPT_BACKOFF_MIN_MS));
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]), "{pauses:?}");
        assert_eq!(pauses[11], Duration::from_millis(ACCEPT_BACKOFF_MAX_MS));
        backoff.succeeded("test");
        assert_eq!(backoff.failed("test", &e), Duration::from_millis(ACCEPT_BACKOFF_MIN_MS));
        assert!(!is_about_one_connection(&e));
        assert!(is_about_one_connection(&io::Error::from(io::ErrorKind::ConnectionAborted)));
    }
}
