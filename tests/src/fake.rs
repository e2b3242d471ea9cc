//! A test-only replica that lies: it serves the public API from closures the test gives it
//! (answer a lookup with a replayed or altered proof, relay a verifier stream with a change,
//! lose the answer to an update it relayed), and answers every other call by relaying it to
//! a real replica ([`FakeReplica::relay_to`]) or UNIMPLEMENTED. It stands for a compromised or
//! faulty server, which is what clients and verifiers must catch or get around.

use keyraft_proto::pb::keyraft_client::KeyraftClient;
use keyraft_proto::pb::keyraft_server::{Keyraft, KeyraftServer};
use keyraft_proto::pb::{self, VerifierFrame};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// A stream of items or a status.
pub type BoxStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Status>> + Send>>;
type LookupFn = Arc<dyn Fn(pb::LookupRequest) -> Result<pb::LookupResponse, Status> + Send + Sync>;
type HistoryFn = Arc<dyn Fn(pb::HistoryRequest) -> Result<pb::HistoryResponse, Status> + Send + Sync>;
type UpdateFn = Arc<dyn Fn(pb::UpdateRequest) -> BoxFuture<pb::UpdateResponse> + Send + Sync>;
type ListEpochsFn = Arc<dyn Fn(pb::ListEpochsRequest) -> BoxFuture<pb::ListEpochsResponse> + Send + Sync>;
type PushFn = Arc<dyn Fn(pb::PushRatificationRequest) -> Result<pb::PushRatificationResponse, Status> + Send + Sync>;
type WatchFn = Arc<dyn Fn(pb::WatchRequest) -> Vec<pb::WatchEvent> + Send + Sync>;
type StreamFn = Arc<dyn Fn(pb::VerifierStreamRequest) -> BoxFuture<BoxStream<VerifierFrame>> + Send + Sync>;

/// The calls the fake answers; the others are UNIMPLEMENTED.
#[derive(Default, Clone)]
pub struct FakeReplica {
    lookup: Option<LookupFn>,
    history: Option<HistoryFn>,
    update: Option<UpdateFn>,
    list_epochs: Option<ListEpochsFn>,
    push_ratification: Option<PushFn>,
    watch: Option<WatchFn>,
    verifier_stream: Option<StreamFn>,
    relay: Option<String>,
    upstream: Option<KeyraftClient<Channel>>,
}

fn nope<T>() -> Result<T, Status> {
    Err(Status::unimplemented("test-only fake replica"))
}

/// Relays a unary call to the real replica, if there is one.
macro_rules! relay {
    ($self:ident, $method:ident, $request:expr) => {
        match &$self.upstream {
            Some(c) => c.clone().$method($request.into_inner()).await,
            None => nope(),
        }
    };
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

    /// Answers `History` with `f`.
    #[must_use]
    pub fn history(
        mut self,
        f: impl Fn(pb::HistoryRequest) -> Result<pb::HistoryResponse, Status> + Send + Sync + 'static,
    ) -> Self {
        self.history = Some(Arc::new(f));
        self
    }

    /// Answers `Update` with `f`.
    #[must_use]
    pub fn update<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(pb::UpdateRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<pb::UpdateResponse, Status>> + Send + 'static,
    {
        self.update = Some(Arc::new(move |r| Box::pin(f(r))));
        self
    }

    /// Answers `ListEpochs` with `f`.
    #[must_use]
    pub fn list_epochs<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(pb::ListEpochsRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<pb::ListEpochsResponse, Status>> + Send + 'static,
    {
        self.list_epochs = Some(Arc::new(move |r| Box::pin(f(r))));
        self
    }

    /// Answers `PushRatification` with `f`.
    #[must_use]
    pub fn push_ratification(
        mut self,
        f: impl Fn(pb::PushRatificationRequest) -> Result<pb::PushRatificationResponse, Status> + Send + Sync + 'static,
    ) -> Self {
        self.push_ratification = Some(Arc::new(f));
        self
    }

    /// Relays the unary calls it has no closure for to the replica at `addr`.
    #[must_use]
    pub fn relay_to(mut self, addr: &str) -> Self {
        self.relay = Some(addr.to_owned());
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

    /// Serves the fake on a loopback port the OS chooses, on `realm`'s runtime, as the
    /// realm's replicas do (with TLS and node 1's certificate, unless the realm is plaintext:
    /// a compromised replica has its certificate); returns its address.
    pub fn serve(mut self, realm: &crate::Realm) -> String {
        let runtime = &realm.runtime;
        if let Some(addr) = &self.relay {
            let _g = runtime.enter();
            let tls = keyraft_proto::tls::TlsClient::for_realm(&realm.realm_file()).expect("the realm file's TLS");
            let channels = keyraft_proto::transport::Channels::default().with_tls(tls);
            self.upstream = Some(KeyraftClient::new(channels.lazy(addr).expect("relay address")));
        }
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
        let addr = listener.local_addr().expect("local addr").to_string();
        let tls = realm.tls_dir().map(|dir| {
            use keyraft_proto::tls::{provider, read_certificates, read_private_key, ALPN_H2};
            let chain = read_certificates(&dir.join("node-1.crt"), "cert").expect("node 1's certificate");
            let key = read_private_key(&dir.join("node-1.key"), "key").expect("node 1's key");
            let mut config = rustls::ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .expect("TLS 1.3")
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .expect("certificate and key");
            config.alpn_protocols = vec![ALPN_H2.to_vec()];
            keyraft_server::tls::ServerTls::new(config)
        });
        let limits = keyraft_server::acceptor::ConnectionLimits::from_config(
            &keyraft_server::config::Limits::default(),
            std::time::Duration::from_secs(1),
        );
        let routes = tonic::service::Routes::new(KeyraftServer::new(self)).prepare();
        // Never told to stop: the fake lives as long as the test's runtime.
        let tasks = keyraft_server::lifecycle::Tasks::new(
            tokio_util::sync::CancellationToken::new(),
            tokio_util::task::TaskTracker::new(),
        );
        runtime.spawn(keyraft_server::acceptor::serve(
            "fake",
            keyraft_server::acceptor::Listener::Tcp(listener),
            limits,
            tls,
            None,
            routes,
            tasks,
        ));
        addr
    }
}

#[tonic::async_trait]
impl Keyraft for FakeReplica {
    async fn lookup(&self, r: Request<pb::LookupRequest>) -> Result<Response<pb::LookupResponse>, Status> {
        match &self.lookup {
            Some(f) => f(r.into_inner()).map(Response::new),
            None => relay!(self, lookup, r),
        }
    }
    async fn update(&self, r: Request<pb::UpdateRequest>) -> Result<Response<pb::UpdateResponse>, Status> {
        match &self.update {
            Some(f) => f(r.into_inner()).await.map(Response::new),
            None => relay!(self, update, r),
        }
    }
    async fn send_email_code(
        &self,
        r: Request<pb::SendEmailCodeRequest>,
    ) -> Result<Response<pb::SendEmailCodeResponse>, Status> {
        relay!(self, send_email_code, r)
    }
    async fn get_update_status(
        &self,
        r: Request<pb::GetUpdateStatusRequest>,
    ) -> Result<Response<pb::GetUpdateStatusResponse>, Status> {
        relay!(self, get_update_status, r)
    }
    async fn get_epoch(&self, r: Request<pb::GetEpochRequest>) -> Result<Response<pb::EpochInfo>, Status> {
        relay!(self, get_epoch, r)
    }
    async fn list_epochs(&self, r: Request<pb::ListEpochsRequest>) -> Result<Response<pb::ListEpochsResponse>, Status> {
        match &self.list_epochs {
            Some(f) => f(r.into_inner()).await.map(Response::new),
            None => relay!(self, list_epochs, r),
        }
    }
    async fn history(&self, r: Request<pb::HistoryRequest>) -> Result<Response<pb::HistoryResponse>, Status> {
        match &self.history {
            Some(f) => f(r.into_inner()).map(Response::new),
            None => relay!(self, history, r),
        }
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
        r: Request<pb::PushRatificationRequest>,
    ) -> Result<Response<pb::PushRatificationResponse>, Status> {
        match &self.push_ratification {
            Some(f) => f(r.into_inner()).map(Response::new),
            None => relay!(self, push_ratification, r),
        }
    }
    async fn get_config_chain(
        &self,
        r: Request<pb::GetConfigChainRequest>,
    ) -> Result<Response<pb::GetConfigChainResponse>, Status> {
        relay!(self, get_config_chain, r)
    }
}
