//! One accepted connection: its handshake (TLS, then the HTTP/2 preface), then HTTP/2 or
//! HTTP/1.1 with a count of open requests, an idle close and a graceful close on shutdown.

use super::limits::Slot;
use super::request_id::{RequestId, REQUEST_ID_HEADER};
use super::{HttpService, ResponseBody, Shared, IDLE_CLOSE_GRACE};
use crate::metrics::Metrics;
use crate::tls::{ServerTls, ALPN_HTTP1};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::CertificateDer;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tonic::transport::server::TcpConnectInfo;
use tower::{Service, ServiceExt as _};
use tracing::Instrument as _;

/// The HTTP/2 client connection preface's fixed part (RFC 9113, section 3.4); a SETTINGS
/// frame follows it.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An HTTP/2 frame header's length.
const FRAME_HEADER_BYTES: usize = 9;
/// The largest frame a client may send before it learns the server's settings (the initial
/// SETTINGS_MAX_FRAME_SIZE).
const INITIAL_FRAME_BYTES_MAX: usize = 16_384;

/// Serves one accepted connection to its end.
pub(super) async fn connection<S, B>(
    accepted: Accepted,
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
    // What tonic's own server would tell each request (`Request::remote_addr`): the rate
    // limits key on the client's address.
    let connect_info = TcpConnectInfo { local_addr: accepted.local_addr, remote_addr: Some(remote) };
    let tcp = accepted.io;
    let Handshaken { io, client_certificate, http1 } = tokio::select! {
        done = tokio::time::timeout(limits.handshake, handshake(tcp, shared.tls.as_ref(), limits.http1)) => match done {
            Ok(Ok(done)) => done,
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
    let service = Tracked {
        inner: shared.service.clone(),
        activity: activity.clone(),
        connect_info,
        client_certificate,
        metrics: shared.metrics.clone().map(|m| (m, name)),
    };
    let service = match limits.requests_max {
        Some(n) => tower::util::Either::Left(tower::limit::ConcurrencyLimit::new(service, n)),
        None => tower::util::Either::Right(service),
    };
    let builder = if http1 { &shared.http1 } else { &shared.builder };
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
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

/// The certificate a client presented in its TLS handshake (end entity), in the extensions of
/// each of its requests. The handshake checked it against the listener's CA.
#[derive(Clone, Debug)]
pub struct ClientCertificate(pub Arc<CertificateDer<'static>>);

/// A byte stream: an accepted connection, before or after its handshake.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// A connection a listener accepted.
pub(super) struct Accepted {
    pub(super) io: Box<dyn Stream>,
    /// The listener's own address, as the connection sees it.
    pub(super) local_addr: Option<SocketAddr>,
}

/// A connection that passed its handshake.
struct Handshaken {
    io: Box<dyn Stream>,
    client_certificate: Option<ClientCertificate>,
    /// TLS negotiated HTTP/1.1.
    http1: bool,
}

/// Step 2: TLS if the listener has it, then the HTTP/2 preface unless TLS chose HTTP/1.1.
/// Where `http1` allows it, a connection that did not choose by ALPN (plaintext, or TLS
/// without ALPN) and does not start with the preface is served as HTTP/1.1.
async fn handshake(tcp: Box<dyn Stream>, tls: Option<&ServerTls>, http1: bool) -> io::Result<Handshaken> {
    let Some(tls) = tls else {
        return Ok(sniffed(sniff(tcp, http1).await?, None));
    };
    let stream = tokio_rustls::TlsAcceptor::from(tls.config()).accept(tcp).await?;
    let (_, session) = stream.get_ref();
    let client_certificate = session
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| ClientCertificate(Arc::new(c.clone().into_owned())));
    match session.alpn_protocol() {
        Some(ALPN_HTTP1) if http1 => Ok(Handshaken { io: Box::new(stream), client_certificate, http1: true }),
        Some(ALPN_HTTP1) => Err(io::Error::new(io::ErrorKind::InvalidData, "HTTP/1.1 is not served here")),
        Some(_) => Ok(sniffed(sniff(stream, false).await?, client_certificate)),
        None => Ok(sniffed(sniff(stream, http1).await?, client_certificate)),
    }
}

fn sniffed<T: Stream>((io, http1): (Rewind<T>, bool), client_certificate: Option<ClientCertificate>) -> Handshaken {
    Handshaken { io: Box::new(io), client_certificate, http1 }
}

/// Reads the client's first bytes: the HTTP/2 connection preface (magic and SETTINGS frame),
/// or, where `http1` allows it, anything else as the start of an HTTP/1.1 request. Returns the
/// connection with those bytes put back for the HTTP server to read, and whether it is
/// HTTP/1.1.
async fn sniff<T: AsyncRead + Unpin>(mut io: T, http1: bool) -> io::Result<(Rewind<T>, bool)> {
    let mut head = Vec::with_capacity(PREFACE.len() + FRAME_HEADER_BYTES);
    let mut chunk = [0u8; PREFACE.len()];
    while head.len() < PREFACE.len() {
        let n = io.read(&mut chunk[..PREFACE.len() - head.len()]).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the connection ended before its first request"));
        }
        head.extend_from_slice(&chunk[..n]);
        if !PREFACE.starts_with(&head) {
            if http1 {
                return Ok((Rewind { prefix: head, read: 0, inner: io }, true));
            }
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not an HTTP/2 connection preface"));
        }
    }
    let start = head.len();
    head.resize(start + FRAME_HEADER_BYTES, 0);
    io.read_exact(&mut head[start..]).await?;
    let frame = &head[start..];
    let length = usize::from(frame[0]) << 16 | usize::from(frame[1]) << 8 | usize::from(frame[2]);
    let (kind, flags, stream) = (frame[3], frame[4], &frame[5..9]);
    if kind != 4 || flags & 1 != 0 || stream != [0; 4] || length > INITIAL_FRAME_BYTES_MAX {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "the connection preface lacks its SETTINGS frame"));
    }
    let start = head.len();
    head.resize(start + length, 0);
    io.read_exact(&mut head[start..]).await?;
    Ok((Rewind { prefix: head, read: 0, inner: io }, false))
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
/// (the end of a stream), and gives each request the connection's addresses.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<watch::Sender<usize>>,
    connect_info: TcpConnectInfo,
    client_certificate: Option<ClientCertificate>,
    /// Where requests are recorded, and the listener's name.
    metrics: Option<(Arc<Metrics>, &'static str)>,
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

impl<S, ReqB, B> Service<http::Request<ReqB>> for Tracked<S>
where
    S: Service<http::Request<ReqB>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqB: Send + 'static,
{
    type Response = http::Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqB>) -> Self::Future {
        request.extensions_mut().insert(self.connect_info.clone());
        if let Some(certificate) = &self.client_certificate {
            request.extensions_mut().insert(certificate.clone());
        }
        let record = self.metrics.as_ref().map(|(metrics, listener)| Record {
            metrics: metrics.clone(),
            listener,
            path: request.uri().path().to_owned(),
            started: std::time::Instant::now(),
            code: None,
        });
        let id = RequestId::for_request(request.headers());
        let header = http::HeaderValue::from_str(id.as_str()).ok();
        let span = tracing::info_span!("request", request_id = %id, path = %request.uri().path());
        request.extensions_mut().insert(id);
        let open = OpenRequest::new(&self.activity);
        // The clone that was made ready serves this request (tower's rule).
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        Box::pin(
            async move {
                let mut response = ready.oneshot(request).await?;
                if let Some(header) = header {
                    response.headers_mut().insert(REQUEST_ID_HEADER, header);
                }
                let mut record = record;
                if let Some(r) = &mut record {
                    if let Some(call) = response.extensions().get::<crate::gateway::GatewayCall>() {
                        // An HTTP/JSON call: its route and the gRPC code it answered with.
                        r.path = call.route.to_owned();
                        r.code = Some((call.code as i32).to_string());
                    } else {
                        // A trailers-only answer (an error) has its status in the headers.
                        r.code = grpc_status(response.headers());
                    }
                }
                Ok(response.map(|inner| TrackedBody { inner, _open: open, record }))
            }
            .instrument(span),
        )
    }
}

/// A response body that keeps its request counted as open, and records the request in the
/// metrics when it ends (dropped: the answer ended or the client left).
pub struct TrackedBody<B> {
    inner: B,
    _open: OpenRequest,
    record: Option<Record>,
}

/// A request to record once its answer ends.
struct Record {
    metrics: Arc<Metrics>,
    listener: &'static str,
    path: String,
    started: std::time::Instant,
    /// The gRPC status, once seen (headers or trailers).
    code: Option<String>,
}

impl Drop for Record {
    fn drop(&mut self) {
        self.metrics.request(self.listener, &self.path, self.code.as_deref(), self.started.elapsed());
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<String> {
    headers.get("grpc-status").and_then(|v| v.to_str().ok()).map(str::to_owned)
}

impl<B: http_body::Body + Unpin> http_body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let (Some(trailers), Some(record)) = (frame.trailers_ref(), self.record.as_mut()) {
                record.code = grpc_status(trailers).or(record.code.take());
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_handshake_reads_the_preface_and_gives_it_back() {
        let mut hello = PREFACE.to_vec();
        hello.extend_from_slice(&[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]);
        hello.extend_from_slice(b"rest");
        for http1 in [false, true] {
            let (mut io, is_http1) = sniff(&hello[..], http1).await.unwrap();
            assert!(!is_http1);
            let mut all = Vec::new();
            io.read_to_end(&mut all).await.unwrap();
            assert_eq!(all, hello);
        }

        let mut not_settings = PREFACE.to_vec();
        not_settings.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 1]);
        assert!(sniff(&not_settings[..], true).await.is_err());
        assert!(sniff(&PREFACE[..], true).await.is_err(), "a preface cut short");
        assert!(sniff(&PREFACE[..10], true).await.is_err(), "a preface cut short");
    }

    #[tokio::test]
    async fn anything_but_the_preface_is_http1_where_allowed() {
        let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(sniff(&request[..], false).await.is_err());
        let (mut io, is_http1) = sniff(&request[..], true).await.unwrap();
        assert!(is_http1);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, request);
        // A short request is not held waiting for 24 bytes: the first differing byte decides.
        let (_, is_http1) = sniff(&b"GET"[..], true).await.unwrap();
        assert!(is_http1);
    }
}
