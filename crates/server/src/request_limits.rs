//! What every public request passes before its handler: its message's size, read from the
//! gRPC length prefix before any of the message is buffered, against its method's bound; and
//! a deadline for the handler's answer.
//!
//! tonic bounds decoded messages per service, not per method, and only once it decodes; this
//! layer refuses a request whose first message declares more than its method's bound with
//! RESOURCE_EXHAUSTED as soon as the first five bytes of its body arrive, so a client cannot
//! make the replica hold more than that per stream. The service's own decoding limit
//! (`max_decoding_message_size`) stays set to the largest bound, for any later message.

use crate::config::Limits;
use bytes::Bytes;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::Status;
use tower::{Service, ServiceExt as _};

/// Largest message of every public request but `Update`, in bytes: a user id (at most 256
/// bytes), a page token, a few numbers, or a verifier's signature with an epoch head.
pub const SMALL_REQUEST_BYTES_MAX: usize = 4096;
/// The one public method whose requests are large (an update, at most 24 KiB, with its user
/// id), bounded by `limits.request_bytes_max`.
const UPDATE_PATH: &str = "/keyraft.v1.Keyraft/Update";
/// A gRPC message's prefix: a compression flag and a four-byte big-endian length.
const GRPC_PREFIX_BYTES: usize = 5;

/// The largest request message the public method at `path` accepts, and what sets it.
pub fn public_request_bound(path: &str, limits: &Limits) -> (usize, &'static str) {
    if path == UPDATE_PATH {
        (limits.request_bytes_max, "limits.request_bytes_max")
    } else {
        (SMALL_REQUEST_BYTES_MAX, "the bound of every request but Update")
    }
}

/// The largest bound [`public_request_bound`] gives: the public service's decoding limit.
pub fn public_request_bytes_max(limits: &Limits) -> usize {
    limits.request_bytes_max.max(SMALL_REQUEST_BYTES_MAX)
}

/// The per-request limits around the public service (see the module's documentation).
#[derive(Clone)]
pub struct RequestLimits<S> {
    inner: S,
    limits: Limits,
    deadline: Duration,
}

impl<S> RequestLimits<S> {
    /// `inner` with request messages bounded by [`public_request_bound`] under `limits`,
    /// answered within `deadline`.
    pub fn new(inner: S, limits: Limits, deadline: Duration) -> Self {
        Self { inner, limits, deadline }
    }
}

impl<S, B> Service<http::Request<B>> for RequestLimits<S>
where
    S: Service<http::Request<Replay<B>>, Response = http::Response<tonic::body::Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Send,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (bound, source) = public_request_bound(request.uri().path(), &self.limits);
        let deadline = self.deadline;
        // The clone that was made ready serves this request (tower's rule).
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let answer = async {
                let (parts, body) = request.into_parts();
                let Ok((declared, body)) = read_prefix(body).await else {
                    return Ok(Status::cancelled("the request's body ended with an error").into_http());
                };
                if let Some(len) = declared.filter(|len| *len > bound) {
                    let method = parts.uri.path().rsplit('/').next().unwrap_or_default();
                    return Ok(Status::resource_exhausted(format!(
                        "the {method} request message is {len} bytes; the limit is {bound} bytes ({source})"
                    ))
                    .into_http());
                }
                ready.oneshot(http::Request::from_parts(parts, body)).await
            };
            match tokio::time::timeout(deadline, answer).await {
                Ok(answer) => answer,
                Err(_) => Ok(Status::deadline_exceeded(format!(
                    "no answer within this replica's deadline of {} ms",
                    deadline.as_millis()
                ))
                .into_http()),
            }
        })
    }
}

/// Reads `body` until its first message's length is known (or the body ends), keeping what
/// it read to give it back.
async fn read_prefix<B>(mut body: B) -> Result<(Option<usize>, Replay<B>), B::Error>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let mut frames = VecDeque::new();
    let mut prefix = Vec::with_capacity(GRPC_PREFIX_BYTES);
    while prefix.len() < GRPC_PREFIX_BYTES {
        let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await.transpose()? else {
            break;
        };
        let trailers = match frame.data_ref() {
            Some(data) => {
                let missing = GRPC_PREFIX_BYTES - prefix.len();
                prefix.extend_from_slice(&data[..missing.min(data.len())]);
                false
            }
            None => true,
        };
        frames.push_back(frame);
        if trailers {
            break;
        }
    }
    let declared = <[u8; GRPC_PREFIX_BYTES]>::try_from(prefix.as_slice())
        .ok()
        .map(|p| u32::from_be_bytes([p[1], p[2], p[3], p[4]]) as usize);
    Ok((declared, Replay { read: frames, rest: body }))
}

/// A request body whose first frames, already read, are read again.
pub struct Replay<B> {
    read: VecDeque<http_body::Frame<Bytes>>,
    rest: B,
}

impl<B: http_body::Body<Data = Bytes> + Unpin> http_body::Body for Replay<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        if let Some(frame) = self.read.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.rest.is_end_stream()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn update_is_bounded_by_the_configured_limit_and_the_rest_by_the_small_bound() {
        let limits = Limits::default();
        assert_eq!(public_request_bound(UPDATE_PATH, &limits).0, limits.request_bytes_max);
        for method in ["Lookup", "History", "Watch", "GetEpoch", "ListEpochs", "GetUpdateStatus", "VerifierStream"] {
            let path = format!("/keyraft.v1.Keyraft/{method}");
            assert_eq!(public_request_bound(&path, &limits).0, SMALL_REQUEST_BYTES_MAX);
        }
        assert_eq!(public_request_bytes_max(&limits), limits.request_bytes_max);
        // The largest update fits under the default limit, with its user id and framing.
        assert!(
            keyraft_core::limits::UPDATE_BYTES_MAX + keyraft_core::limits::USER_ID_BYTES_MAX + 64
                <= limits.request_bytes_max
        );
    }
}
