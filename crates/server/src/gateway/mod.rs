//! The HTTP/JSON gateway: the public calls as JSON over HTTP/1.1 and HTTP/2, on the public
//! port beside gRPC, for browsers, `curl` and languages without a gRPC stack.
//!
//! | Method and path                 | gRPC call        | Parameters                                   |
//! |---------------------------------|------------------|----------------------------------------------|
//! | `GET /v1/lookup/{user_id}`      | Lookup           | `epoch`, `min_epoch`, `verifier_threshold`, `wait_ms` |
//! | `POST /v1/updates`              | Update           | JSON body: `user_id`, `update`, `verifier_threshold`, `wait_ms`, `registration`, `recovery` |
//! | `GET /v1/update-status`         | GetUpdateStatus  | `update_id`, `index`, `version`              |
//! | `GET /v1/epochs/{epoch}`        | GetEpoch         | `0` or `latest`: the newest                   |
//! | `GET /v1/epochs`                | ListEpochs       | `start_epoch`, `page_size`, `page_token`     |
//! | `GET /v1/history/{user_id}`     | History          | `page_size`, `page_token`, `verifier_threshold` |
//!
//! Each route calls the gRPC service's own method with the client's headers and connection
//! (address for the rate limits, request id), so an answer over HTTP is the answer over gRPC:
//! the same checks, limits and errors. Proofs, heads and updates are their canonical bytes in
//! base64 ([`json`]), verified by a client exactly as it verifies them from gRPC.
//!
//! An error is a JSON [`json::ErrorAnswer`] with the gRPC code's name and message and an HTTP
//! status from [`http_status`]. A request goes to the gateway unless its content type is
//! gRPC's (`application/grpc...`) ([`PublicRoutes`]), so a wrong path gets a JSON 404, not a
//! gRPC answer.

pub mod json;

use crate::service::PublicService;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use json::{BadField, ErrorAnswer};
use keyraft_proto::pb::keyraft_server::Keyraft;
use serde::Serialize;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::{Code, Status};
use tower::{Service, ServiceExt as _};

/// How much larger than its binary bytes a JSON update body may be: base64 (4/3) and the
/// other fields.
const UPDATE_BODY_OVERHEAD_BYTES: usize = 8 * 1024;

/// The gateway's call recorded in the metrics: its route (an `rpc` label) and gRPC code.
#[derive(Debug, Clone, Copy)]
pub struct GatewayCall {
    /// The route, as in the table above (`GET /v1/lookup/{user_id}`).
    pub route: &'static str,
    /// The gRPC code the call answered with.
    pub code: Code,
}

/// Every route, as [`GatewayCall::route`] names them (bounded metric labels).
pub const ROUTES: [&str; 6] = [
    "GET /v1/lookup/{user_id}",
    "POST /v1/updates",
    "GET /v1/update-status",
    "GET /v1/epochs/{epoch}",
    "GET /v1/epochs",
    "GET /v1/history/{user_id}",
];

#[derive(Clone)]
struct Gateway {
    service: PublicService,
    deadline: Duration,
    update_body_bytes_max: usize,
}

/// The gateway's routes over `service`; each answer is due within `deadline` (as for gRPC
/// requests), and an update body is at most `update_bytes_max` of binary update.
pub fn router(service: PublicService, update_bytes_max: usize, deadline: Duration) -> Router {
    let gateway = Gateway {
        service,
        deadline,
        update_body_bytes_max: update_bytes_max.saturating_mul(4) / 3 + UPDATE_BODY_OVERHEAD_BYTES,
    };
    Router::new()
        .route("/v1/lookup/{user_id}", get(lookup))
        .route("/v1/updates", post(update))
        .route("/v1/update-status", get(update_status))
        .route("/v1/epochs/{epoch}", get(epoch))
        .route("/v1/epochs", get(epochs))
        .route("/v1/history/{user_id}", get(history))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(gateway)
}

/// An answer: JSON with 200, or the error.
type Answer = Result<Response, ApiError>;

/// An error answer; see [`http_status`].
#[derive(Debug)]
pub struct ApiError {
    status: Status,
    route: Option<&'static str>,
}

impl ApiError {
    fn invalid(route: &'static str, message: impl Into<String>) -> Self {
        Self { status: Status::invalid_argument(message), route: Some(route) }
    }
}

impl From<(&'static str, BadField)> for ApiError {
    fn from((route, bad): (&'static str, BadField)) -> Self {
        Self::invalid(route, bad.0)
    }
}

/// The HTTP status of a gRPC code, as grpc-gateway maps them.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The name of a gRPC code, as in the proto comments (`FAILED_PRECONDITION`).
fn code_name(code: Code) -> String {
    let words = format!("{code:?}");
    let mut name = String::with_capacity(words.len() + 4);
    for (i, c) in words.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let metadata = self.status.metadata();
        let text = |key: &str| metadata.get(key).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = ErrorAnswer {
            code: code_name(self.status.code()),
            message: self.status.message().to_owned(),
            leader_hint: text("leader-hint"),
            retry_after_ms: text(crate::rate_limits::RETRY_AFTER_MS_METADATA).and_then(|v| v.parse().ok()),
        };
        let mut response = (http_status(self.status.code()), axum::Json(body)).into_response();
        if let Some(route) = self.route {
            response.extensions_mut().insert(GatewayCall { route, code: self.status.code() });
        }
        response
    }
}

/// 200 with `body` as JSON, recorded as `route`.
fn ok(route: &'static str, body: impl Serialize) -> Response {
    let mut response = axum::Json(body).into_response();
    response.extensions_mut().insert(GatewayCall { route, code: Code::Ok });
    response
}

/// Calls the gRPC method `call` with `message`, the client's headers and its connection's
/// extensions, within the deadline.
async fn call<T, R, F, Fut>(
    gateway: &Gateway,
    route: &'static str,
    headers: HeaderMap,
    extensions: http::Extensions,
    message: T,
    call: F,
) -> Result<R, ApiError>
where
    F: FnOnce(PublicService, tonic::Request<T>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<R>, Status>>,
{
    let mut request = http::Request::new(message);
    *request.headers_mut() = headers;
    *request.extensions_mut() = extensions;
    let request = tonic::Request::from_http(request);
    let answered = tokio::time::timeout(gateway.deadline, call(gateway.service.clone(), request)).await;
    let status = match answered {
        Ok(Ok(response)) => return Ok(response.into_inner()),
        Ok(Err(status)) => status,
        Err(_) => Status::deadline_exceeded(format!(
            "no answer within this replica's deadline of {} ms",
            gateway.deadline.as_millis()
        )),
    };
    Err(ApiError { status, route: Some(route) })
}

fn path_value(route: &'static str, path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(v)| v).map_err(|e| ApiError::invalid(route, format!("the path: {}", e.body_text())))
}

fn query_value<T>(route: &'static str, query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query.map(|Query(v)| v).map_err(|e| ApiError::invalid(route, format!("the query: {}", e.body_text())))
}

async fn lookup(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    extensions: http::Extensions,
    user_id: Result<Path<String>, PathRejection>,
    query: Result<Query<json::LookupQuery>, QueryRejection>,
) -> Answer {
    const ROUTE: &str = ROUTES[0];
    let message = query_value(ROUTE, query)?.into_request(path_value(ROUTE, user_id)?);
    let answer = call(&gateway, ROUTE, headers, extensions, message, |s, r| async move { s.lookup(r).await }).await?;
    Ok(ok(ROUTE, json::LookupAnswer::from(answer)))
}

async fn update(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    extensions: http::Extensions,
    body: axum::body::Body,
) -> Answer {
    const ROUTE: &str = ROUTES[1];
    let limit = gateway.update_body_bytes_max;
    let bytes = match read_limited(body, limit).await {
        Ok(bytes) => bytes,
        Err(read_to_end) => {
            let mut response = ApiError {
                status: Status::resource_exhausted(format!(
                    "the body is over {limit} bytes, the limit for an update's JSON (limits.request_bytes_max in base64, and the other fields)"
                )),
                route: Some(ROUTE),
            }
            .into_response();
            if !read_to_end {
                // The rest of the body is not read, so an HTTP/1.1 connection cannot carry
                // another request: say so, or the client's next request on it fails (HTTP/2
                // drops this header).
                response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
            }
            return Ok(response);
        }
    };
    let parsed: json::UpdateBody = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid(ROUTE, format!("the body is not an update's JSON: {e}")))?;
    let message = parsed.into_request().map_err(|bad| ApiError::from((ROUTE, bad)))?;
    let answer = call(&gateway, ROUTE, headers, extensions, message, |s, r| async move { s.update(r).await }).await?;
    Ok(ok(ROUTE, json::UpdateAnswer::from(answer)))
}

/// A body over its limit but under this size is read to its end (and dropped) before it is
/// refused: an HTTP/1.1 client is still sending it, and a server that answered and closed at
/// once would reset the connection under the client, which then reports a broken pipe instead
/// of the refusal (seen in CI). Larger bodies are refused at the limit.
const OVERSIZED_BODY_DRAIN_BYTES_MAX: usize = 4 * 1024 * 1024;

/// The body's bytes if it has at most `limit`; otherwise `Err(read_to_end)`, whether the
/// whole body was read (and dropped), so that the connection can carry another request.
async fn read_limited(body: axum::body::Body, limit: usize) -> Result<Vec<u8>, bool> {
    use tokio_stream::StreamExt as _;
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else { return Err(false) };
        seen = seen.saturating_add(chunk.len());
        if seen > limit && seen > OVERSIZED_BODY_DRAIN_BYTES_MAX {
            return Err(false);
        }
        if seen <= limit {
            bytes.extend_from_slice(&chunk);
        }
    }
    if seen > limit {
        return Err(true);
    }
    Ok(bytes)
}

async fn update_status(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    extensions: http::Extensions,
    query: Result<Query<json::UpdateStatusQuery>, QueryRejection>,
) -> Answer {
    const ROUTE: &str = ROUTES[2];
    let message = query_value(ROUTE, query)?.into_request().map_err(|bad| ApiError::from((ROUTE, bad)))?;
    let answer =
        call(&gateway, ROUTE, headers, extensions, message, |s, r| async move { s.get_update_status(r).await }).await?;
    Ok(ok(ROUTE, json::UpdateStatusAnswer::from(answer)))
}

async fn epoch(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    extensions: http::Extensions,
    epoch: Result<Path<String>, PathRejection>,
) -> Answer {
    const ROUTE: &str = ROUTES[3];
    let text = path_value(ROUTE, epoch)?;
    let epoch = match text.as_str() {
        "latest" => 0,
        n => n.parse::<u64>().map_err(|_| {
            ApiError::invalid(ROUTE, format!("the epoch {n:?} is not a number (0 or `latest` for the newest)"))
        })?,
    };
    let message = keyraft_proto::pb::GetEpochRequest { epoch };
    let answer =
        call(&gateway, ROUTE, headers, extensions, message, |s, r| async move { s.get_epoch(r).await }).await?;
    Ok(ok(ROUTE, json::EpochAnswer::from(answer)))
}

async fn epochs(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    extensions: http::Extensions,
    query: Result<Query<json::EpochsQuery>, QueryRejection>,
) -> Answer {
    const ROUTE: &str = ROUTES[4];
    let message = query_value(ROUTE, query)?.into_request().map_err(|bad| ApiError::from((ROUTE, bad)))?;
    let answer =
        call(&gateway, ROUTE, headers, extensions, message, |s, r| async move { s.list_epochs(r).await }).await?;
    Ok(ok(ROUTE, json::EpochsAnswer::from(answer)))
}

async fn history(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    extensions: http::Extensions,
    user_id: Result<Path<String>, PathRejection>,
    query: Result<Query<json::HistoryQuery>, QueryRejection>,
) -> Answer {
    const ROUTE: &str = ROUTES[5];
    let user_id = path_value(ROUTE, user_id)?;
    let message = query_value(ROUTE, query)?.into_request(user_id).map_err(|bad| ApiError::from((ROUTE, bad)))?;
    let answer = call(&gateway, ROUTE, headers, extensions, message, |s, r| async move { s.history(r).await }).await?;
    Ok(ok(ROUTE, json::HistoryAnswer::from(answer)))
}

async fn no_route(method: http::Method, uri: http::Uri) -> ApiError {
    ApiError {
        status: Status::not_found(format!(
            "no route {method} {}: the JSON gateway serves /v1/lookup, /v1/updates, /v1/update-status, /v1/epochs and /v1/history (docs/operations.md); gRPC clients send content-type application/grpc",
            uri.path()
        )),
        route: None,
    }
}

async fn wrong_method(method: http::Method, uri: http::Uri) -> ApiError {
    ApiError {
        status: Status::unimplemented(format!("{method} is not served on {} (see docs/operations.md)", uri.path())),
        route: None,
    }
}

/// The public listener's service: gRPC requests (content type `application/grpc...`) to
/// `grpc`, every other request to the gateway.
#[derive(Clone)]
pub struct PublicRoutes<G> {
    grpc: G,
    gateway: Router,
}

impl<G> PublicRoutes<G> {
    /// `grpc`, with the gateway `router` beside it.
    pub fn new(grpc: G, gateway: Router) -> Self {
        Self { grpc, gateway }
    }
}

/// Browsers may call the gateway from any page: it is a public API without cookies or other
/// ambient credentials, and a page verifies what it gets (the proofs) instead of trusting its
/// origin. Answers say so, and expose the request id.
fn cors(headers: &mut http::HeaderMap) {
    use http::header::{ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS};
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, http::HeaderValue::from_static("*"));
    headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, http::HeaderValue::from_static("x-request-id"));
}

/// The answer to a browser's CORS preflight (`OPTIONS`): the methods and headers the routes
/// take, cached for a day.
fn preflight() -> http::Response<tonic::body::Body> {
    use http::header::{ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_MAX_AGE};
    let mut response = http::Response::new(tonic::body::Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    cors(headers);
    headers.insert(ACCESS_CONTROL_ALLOW_METHODS, http::HeaderValue::from_static("GET, POST, OPTIONS"));
    headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, http::HeaderValue::from_static("content-type, x-request-id"));
    headers.insert(ACCESS_CONTROL_MAX_AGE, http::HeaderValue::from_static("86400"));
    response
}

fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

impl<G> Service<http::Request<hyper::body::Incoming>> for PublicRoutes<G>
where
    G: Service<http::Request<hyper::body::Incoming>, Response = http::Response<tonic::body::Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    G::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Each request is served by a clone made ready in `call`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<hyper::body::Incoming>) -> Self::Future {
        if is_grpc(request.headers()) {
            let grpc = self.grpc.clone();
            Box::pin(grpc.oneshot(request))
        } else {
            if request.method() == http::Method::OPTIONS {
                return Box::pin(std::future::ready(Ok(preflight())));
            }
            let gateway = self.gateway.clone();
            Box::pin(async move {
                let mut response = gateway.oneshot(request).await?;
                cors(response.headers_mut());
                Ok(response.map(tonic::body::Body::new))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_named_as_in_the_proto() {
        assert_eq!(code_name(Code::FailedPrecondition), "FAILED_PRECONDITION");
        assert_eq!(code_name(Code::Unavailable), "UNAVAILABLE");
        assert_eq!(code_name(Code::Ok), "OK");
        assert_eq!(code_name(Code::DataLoss), "DATA_LOSS");
    }

    #[test]
    fn every_error_code_has_an_error_status() {
        for n in 1..=16 {
            let code = Code::from_i32(n);
            assert!(http_status(code).as_u16() >= 400, "{code:?}");
        }
        assert_eq!(http_status(Code::ResourceExhausted), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(http_status(Code::Unavailable), StatusCode::SERVICE_UNAVAILABLE);
    }
}
