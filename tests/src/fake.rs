//! A test-only replica that lies: it serves the public API from closures the test gives it
//! (answer a lookup with a replayed or altered proof, relay a verifier stream with a change),
//! and answers every other call UNIMPLEMENTED. It stands for a compromised server, which is
//! what clients and verifiers must catch.

use keyraft_proto::pb::keyraft_server::{Keyraft, KeyraftServer};
use keyraft_proto::pb::{self, VerifierFrame};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// A stream of items or a status.
pub type BoxStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Status>> + Send>>;
type LookupFn = Arc<dyn Fn(pb::LookupRequest) -> Result<pb::LookupResponse, Status> + Send + Sync>;
type WatchFn = Arc<dyn Fn(pb::WatchRequest) -> Vec<pb::WatchEvent> + Send + Sync>;
type StreamFn = Arc<dyn Fn(pb::VerifierStreamRequest) -> BoxFuture<BoxStream<VerifierFrame>> + Send + Sync>;

/// The calls the fake answers; the others are UNIMPLEMENTED.
#[derive(Default, Clone)]
pub struct FakeReplica {
    lookup: Option<LookupFn>,
    watch: Option<WatchFn>,
    verifier_stream: Option<StreamFn>,
}

fn nope<T>() -> Result<T, Status> {
    Err(Status::unimplemented("test-only fake replica"))
}

impl FakeReplica {
    /// Answers `Lookup` with `f`.
    #[must_use]
    pub fn lookup(
        mut self,
        f: impl Fn(pb::LookupRequest) -> Result<pb::LookupResponse, Status> + Send + Sync + 'static,
    ) -> Self {
        self.lookup = Some(Arc::new(f));
        self
    }

    /// Answers `Watch` with the events `f` returns, then ends the stream.
    #[must_use]
    pub fn watch(mut self, f: impl Fn(pb::WatchRequest) -> Vec<pb::WatchEvent> + Send + Sync + 'static) -> Self {
        self.watch = Some(Arc::new(f));
        self
    }

    /// Answers `VerifierStream` with `f`.
    #[must_use]
    pub fn verifier_stream<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(pb::VerifierStreamRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<BoxStream<VerifierFrame>, Status>> + Send + 'static,
    {
        self.verifier_stream = Some(Arc::new(move |r| Box::pin(f(r))));
        self
    }

    /// Serves the fake on a loopback port the OS chooses, on `runtime`; returns its address.
    pub fn serve(self, runtime: &tokio::runtime::Runtime) -> String {
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
        let addr = listener.local_addr().expect("local addr").to_string();
        // Without TCP_NODELAY every small answer waits for a delayed ACK.
        let incoming = tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(listener), |s| {
            s.inspect(|s| {
                let _ = s.set_nodelay(true);
            })
        });
        runtime.spawn(
            tonic::transport::Server::builder().add_service(KeyraftServer::new(self)).serve_with_incoming(incoming),
        );
        addr
    }
}

#[tonic::async_trait]
impl Keyraft for FakeReplica {
    async fn lookup(&self, r: Request<pb::LookupRequest>) -> Result<Response<pb::LookupResponse>, Status> {
        match &self.lookup {
            Some(f) => f(r.into_inner()).map(Response::new),
            None => nope(),
        }
    }
    async fn update(&self, _: Request<pb::UpdateRequest>) -> Result<Response<pb::UpdateResponse>, Status> {
        nope()
    }
    async fn get_update_status(
        &self,
        _: Request<pb::GetUpdateStatusRequest>,
    ) -> Result<Response<pb::GetUpdateStatusResponse>, Status> {
        nope()
    }
    async fn get_epoch(&self, _: Request<pb::GetEpochRequest>) -> Result<Response<pb::EpochInfo>, Status> {
        nope()
    }
    async fn list_epochs(&self, _: Request<pb::ListEpochsRequest>) -> Result<Response<pb::ListEpochsResponse>, Status> {
        nope()
    }
    async fn history(&self, _: Request<pb::HistoryRequest>) -> Result<Response<pb::HistoryResponse>, Status> {
        nope()
    }
    type WatchStream = BoxStream<pb::WatchEvent>;
    async fn watch(&self, r: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        match &self.watch {
            Some(f) => {
                let events = f(r.into_inner());
                Ok(Response::new(Box::pin(tokio_stream::iter(events.into_iter().map(Ok)))))
            }
            None => nope(),
        }
    }
    type VerifierStreamStream = BoxStream<VerifierFrame>;
    async fn verifier_stream(
        &self,
        r: Request<pb::VerifierStreamRequest>,
    ) -> Result<Response<Self::VerifierStreamStream>, Status> {
        match &self.verifier_stream {
            Some(f) => f(r.into_inner()).await.map(Response::new),
            None => nope(),
        }
    }
    async fn push_ratification(
        &self,
        _: Request<pb::PushRatificationRequest>,
    ) -> Result<Response<pb::PushRatificationResponse>, Status> {
        nope()
    }
}
