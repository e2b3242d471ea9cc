//! The one place connections come in: the public and the peer listener both run [`serve`].
//!
//! Each accepted connection goes through the same steps:
//!
//! 1. **limits**: at most `connections_max` open connections per listener and
//!    `connections_per_address_max` per remote IP address; past them the connection is closed
//!    at once, before anything is read (a refused client sees the connection closed);
//! 2. **handshake**, under one deadline (`handshake_ms`): the client's HTTP/2 connection
//!    preface (the 24-octet magic and its SETTINGS frame). TLS, when it comes, is the first
//!    part of this step, under the same deadline;
//! 3. **serving** with hyper's HTTP/2 server (hyper-util's auto builder, HTTP/2 only for now;
//!    an HTTP/1.1 gateway turns HTTP/1 on there), at most `streams_per_connection_max`
//!    concurrent streams, HTTP/2 keepalive pings to find dead peers, and an idle limit: a
//!    connection with no open request for `idle_ms` is closed with GOAWAY.
//!
//! Why not tonic's own server: it has no handshake deadline and no idle limit, and its accept
//! loop retries a failing `accept` (EMFILE) at once, spinning (docs/decisions.md).
//!
//! Accept errors never end the loop: errors about one connection are skipped, the others
//! (out of file descriptors, out of memory) are logged once per burst and retried with a
//! back-off of up to [`ACCEPT_BACKOFF_MAX`].
//!
//! On shutdown the listener is closed at once, every connection is asked to close gracefully
//! (GOAWAY; open requests finish), and [`serve`] returns when all are closed, or after
//! `close_grace` for those that do not.

use crate::config::Limits;
use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::{Service, ServiceExt as _};

/// The HTTP/2 client connection preface's fixed part (RFC 9113, section 3.4); a SETTINGS
/// frame follows it.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An HTTP/2 frame header's length.
const FRAME_HEADER_BYTES: usize = 9;
/// The largest frame a client may send before it learns the server's settings (the initial
/// SETTINGS_MAX_FRAME_SIZE).
const INITIAL_FRAME_BYTES_MAX: usize = 16_384;
/// Longest pause between `accept` attempts while they fail.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// First pause after a failed `accept`.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// How long a connection closed for being idle may take to finish closing: only the
/// client's acknowledgement of the GOAWAY's ping is awaited.
pub const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(10);
/// HTTP/2 keepalive: a ping after this long without a frame from the client ...
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// ... which, unanswered for this long, closes the connection (the peer is gone).
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Refused connections are logged at most this often per listener, with their count.
const REFUSALS_LOG_INTERVAL: Duration = Duration::from_secs(10);

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

/// Serves `service` on the connections `listener` accepts until `shutdown` completes, then
/// closes them gracefully (see the module's documentation). `name` names the listener in the
/// log.
pub async fn serve<S, B>(
    name: &'static str,
    listener: TcpListener,
    limits: ConnectionLimits,
    service: S,
    shutdown: impl Future<Output = ()>,
) where
    S: HttpService<B>,
    B: ResponseBody,
{
    let mut builder = auto::Builder::new(TokioExecutor::new()).http2_only();
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.streams_max)
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
    let shared = Arc::new(Shared { name, limits, builder, service });
    let slots = Arc::new(Slots::new(limits));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    let mut backoff = AcceptBackoff::default();
    let mut refusals = RefusalLog::default();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (tcp, remote) = match accepted {
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
        connections.spawn(connection(tcp, remote, slot, shared.clone(), stop_rx.clone()));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
}

/// What every connection of a listener shares.
struct Shared<S> {
    name: &'static str,
    limits: ConnectionLimits,
    builder: auto::Builder<TokioExecutor>,
    service: S,
}

/// Serves one accepted connection to its end.
async fn connection<S, B>(
    tcp: TcpStream,
    remote: SocketAddr,
    _slot: Slot,
    shared: Arc<Shared<S>>,
    mut stop: watch::Receiver<bool>,
) where
    S: HttpService<B>,
    B: ResponseBody,
{
    let name = shared.name;
    let limits = shared.limits;
    // Small gRPC frames would otherwise wait for delayed ACKs (about 40 ms each).
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(listener = name, %remote, error = %e, "setting TCP_NODELAY");
    }
    let io = tokio::select! {
        done = tokio::time::timeout(limits.handshake, handshake(tcp)) => match done {
            Ok(Ok(io)) => io,
            Ok(Err(e)) => {
                tracing::debug!(listener = name, %remote, error = %e, "closing a connection that failed its handshake");
                return;
            }
            Err(_) => {
                tracing::debug!(
                    listener = name,
                    %remote,
                    handshake_ms = limits.handshake.as_millis(),
                    "closing a connection that did not finish its handshake in time"
                );
                return;
            }
        },
        _ = stop.wait_for(|stopping| *stopping) => return,
    };

    let (activity, open_requests) = watch::channel(0usize);
    let activity = Arc::new(activity);
    let service = Tracked { inner: shared.service.clone(), activity: activity.clone() };
    let service = match limits.requests_max {
        Some(n) => tower::util::Either::Left(tower::limit::ConcurrencyLimit::new(service, n)),
        None => tower::util::Either::Right(service),
    };
    let conn = shared.builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(conn);
    let idle = idle_for(open_requests, limits.idle);
    tokio::pin!(idle);
    // Once closing: by when the connection must be gone.
    let mut closing: Option<tokio::time::Instant> = None;
    loop {
        let give_up = async {
            match closing {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(listener = name, %remote, error = %e, "connection ended with an error");
                }
                return;
            }
            () = &mut idle, if closing.is_none() => {
                tracing::debug!(listener = name, %remote, idle_ms = limits.idle.as_millis(), "closing an idle connection");
                conn.as_mut().graceful_shutdown();
                closing = Some(tokio::time::Instant::now() + IDLE_CLOSE_GRACE);
            }
            _ = stop.wait_for(|stopping| *stopping), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing = Some(tokio::time::Instant::now() + limits.close_grace);
            }
            () = give_up => {
                tracing::debug!(listener = name, %remote, "dropping a connection that did not close in time");
                return;
            }
        }
    }
}

/// Reads the client's connection preface (HTTP/2 magic and SETTINGS frame) and returns the
/// connection with those bytes put back for the HTTP/2 server to read. TLS, when added,
/// comes first here.
async fn handshake<T: AsyncRead + Unpin>(mut io: T) -> io::Result<Rewind<T>> {
    let mut head = vec![0u8; PREFACE.len() + FRAME_HEADER_BYTES];
    io.read_exact(&mut head).await?;
    if head[..PREFACE.len()] != PREFACE[..] {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not an HTTP/2 connection preface"));
    }
    let frame = &head[PREFACE.len()..];
    let length = usize::from(frame[0]) << 16 | usize::from(frame[1]) << 8 | usize::from(frame[2]);
    let (kind, flags, stream) = (frame[3], frame[4], &frame[5..9]);
    if kind != 4 || flags & 1 != 0 || stream != [0; 4] || length > INITIAL_FRAME_BYTES_MAX {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "the connection preface lacks its SETTINGS frame"));
    }
    let start = head.len();
    head.resize(start + length, 0);
    io.read_exact(&mut head[start..]).await?;
    Ok(Rewind { prefix: head, read: 0, inner: io })
}

/// A connection whose first bytes, already read, are read again.
struct Rewind<T> {
    prefix: Vec<u8>,
    read: usize,
    inner: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.read < this.prefix.len() {
            let n = (this.prefix.len() - this.read).min(buf.remaining());
            buf.put_slice(&this.prefix[this.read..this.read + n]);
            this.read += n;
            if this.read == this.prefix.len() {
                this.prefix = Vec::new();
                this.read = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Completes once no request has been open for `idle`.
async fn idle_for(mut open_requests: watch::Receiver<usize>, idle: Duration) {
    loop {
        if *open_requests.borrow_and_update() > 0 {
            // The connection holds the sender: this ends only with the connection.
            let _ = open_requests.changed().await;
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep(idle) => return,
            _ = open_requests.changed() => {}
        }
    }
}

/// Counts a connection's open requests, from the call until its response body is dropped
/// (the end of a stream).
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<watch::Sender<usize>>,
}

/// One open request.
struct OpenRequest(Arc<watch::Sender<usize>>);

impl OpenRequest {
    fn new(activity: &Arc<watch::Sender<usize>>) -> Self {
        activity.send_modify(|n| *n += 1);
        Self(activity.clone())
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

impl<S, Req, B> Service<Req> for Tracked<S>
where
    S: Service<Req, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    Req: Send + 'static,
{
    type Response = http::Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let open = OpenRequest::new(&self.activity);
        // The clone that was made ready serves this request (tower's rule).
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = ready.oneshot(request).await?;
            Ok(response.map(|inner| TrackedBody { inner, _open: open }))
        })
    }
}

/// A response body that keeps its request counted as open.
pub struct TrackedBody<B> {
    inner: B,
    _open: OpenRequest,
}

impl<B: http_body::Body + Unpin> http_body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// Its address already has this many connections open.
    Address(usize),
    /// The listener already has this many connections open.
    Total(usize),
}

/// A listener's open connections, in total and per remote address.
struct Slots {
    limits: ConnectionLimits,
    open: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

impl Slots {
    fn new(limits: ConnectionLimits) -> Self {
        Self { limits, open: Mutex::default() }
    }

    fn take(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if open.total >= self.limits.total_max {
            return Err(Refused::Total(open.total));
        }
        let from_ip = open.per_address.entry(ip).or_default();
        if *from_ip >= self.limits.per_address_max {
            return Err(Refused::Address(*from_ip));
        }
        *from_ip += 1;
        open.total += 1;
        Ok(Slot { slots: self.clone(), ip })
    }
}

/// One counted connection; uncounted when dropped.
struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        open.total -= 1;
        if let Some(n) = open.per_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.per_address.remove(&self.ip);
            }
        }
    }
}

/// Logs refused connections at most every [`REFUSALS_LOG_INTERVAL`] per limit, with their
/// count.
#[derive(Default)]
struct RefusalLog {
    per_address: Throttle,
    total: Throttle,
}

/// When a limit's refusals were last logged, and how many came since.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    unlogged: u64,
}

impl RefusalLog {
    fn refused(&mut self, name: &str, remote: SocketAddr, why: &Refused) {
        let (throttle, open, limit) = match why {
            Refused::Address(n) => (&mut self.per_address, n, "limits.connections_per_address_max"),
            Refused::Total(n) => (&mut self.total, n, "limits.connections_max"),
        };
        throttle.unlogged += 1;
        if throttle.last.is_some_and(|at| at.elapsed() < REFUSALS_LOG_INTERVAL) {
            return;
        }
        tracing::warn!(
            listener = name,
            %remote,
            open,
            refused = throttle.unlogged,
            "refusing connections: {limit} reached; `refused` counts them since the last such line"
        );
        throttle.last = Some(Instant::now());
        throttle.unlogged = 0;
    }
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
        let doublings = self.failures.saturating_sub(1).min(16);
        (ACCEPT_BACKOFF_MIN * 2u32.pow(doublings)).min(ACCEPT_BACKOFF_MAX)
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

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            handshake: Duration::from_secs(1),
            idle: Duration::from_secs(1),
            per_address_max: 2,
            total_max: 3,
            streams_max: 10,
            requests_max: None,
            close_grace: Duration::from_secs(1),
        }
    }

    #[test]
    fn slots_count_per_address_and_in_total_and_free_on_drop() {
        let slots = Arc::new(Slots::new(limits()));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let a1 = slots.take(a).unwrap();
        let _a2 = slots.take(mapped).unwrap();
        assert_eq!(slots.take(a).err(), Some(Refused::Address(2)), "an IPv4-mapped address is the same address");
        let _b1 = slots.take(b).unwrap();
        assert_eq!(slots.take(b).err(), Some(Refused::Total(3)));
        drop(a1);
        let _b2 = slots.take(b).unwrap();
        assert_eq!(slots.take(a).err(), Some(Refused::Total(3)));
    }

    #[test]
    fn accept_failures_back_off_up_to_the_cap_and_reset_on_success() {
        let mut backoff = AcceptBackoff::default();
        let e = io::Error::from_raw_os_error(24); // EMFILE
        let pauses: Vec<Duration> = (0..12).map(|_| backoff.failed("test", &e)).collect();
        assert_eq!(pauses[0], ACCEPT_BACKOFF_MIN);
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]), "{pauses:?}");
        assert_eq!(pauses[11], ACCEPT_BACKOFF_MAX);
        backoff.succeeded("test");
        assert_eq!(backoff.failed("test", &e), ACCEPT_BACKOFF_MIN);
        assert!(!is_about_one_connection(&e));
        assert!(is_about_one_connection(&io::Error::from(io::ErrorKind::ConnectionAborted)));
    }

    #[tokio::test]
    async fn the_handshake_reads_the_preface_and_gives_it_back() {
        let mut hello = PREFACE.to_vec();
        hello.extend_from_slice(&[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]);
        hello.extend_from_slice(b"rest");
        let mut io = handshake(&hello[..]).await.unwrap();
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, hello);

        let mut not_settings = PREFACE.to_vec();
        not_settings.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 1]);
        assert!(handshake(&not_settings[..]).await.is_err());
        assert!(handshake(&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n1234567"[..]).await.is_err());
        assert!(handshake(&PREFACE[..]).await.is_err(), "a preface cut short");
    }
}
