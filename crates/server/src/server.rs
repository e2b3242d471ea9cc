//! Running a replica: open storage, start Raft, serve the bound listeners, start the
//! proposers, and stop cleanly on shutdown.
//!
//! The caller binds the listeners ([`Listeners::bind`]) and owns the shutdown token, so that a
//! test or a simulation picks the ports and the moment a replica stops. On shutdown the
//! listeners stop accepting, every task is told to stop and awaited (up to a deadline), then
//! Raft stops, the stores are flushed and the log's flusher thread is joined.

use crate::acceptor::{self, ConnectionLimits, Listener};
use crate::config::{Loaded, NodeConfig, VoterSpec};
use crate::lifecycle::Tasks;
use crate::node::Node;
use crate::peer_client::{peer_channels, PEER_MESSAGE_BYTES_MAX};
use crate::peer_service::{init_cluster, CheckToken, PeerService};
use crate::raft::log_store::LogStore;
use crate::raft::network::PeerNetwork;
use crate::raft::runtime;
use crate::raft::sm_store::{StateLocation, StateMachineStore};
use crate::raft::types::Raft;
use crate::rate_limits::RateLimits;
use crate::registration::Registrations;
use crate::request_limits::{public_request_bytes_max, RequestLimits};
use crate::seams::StorageEngine;
use crate::service::PublicService;
use crate::tls::NodeTls;
use crate::{proposers, Error};
use keyraft_proto::pb::keyraft_server::KeyraftServer;
use keyraft_proto::peer::peer_server::PeerServer;
use keyraft_proto::peer::NodeSpec;
use keyraft_storage::{Storage, ThreadSpawner};
use openraft::SnapshotPolicy;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Largest public answer the transport sends, in bytes (a verifier frame of up to 4 MiB).
/// Requests have their own, much smaller bounds (`crate::request_limits`).
pub const PUBLIC_MESSAGE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Snapshot chunk size, in bytes (at most 1 MiB with the message around it).
pub const SNAPSHOT_CHUNK_BYTES: u64 = 1_000_000;

/// How long a stopping replica's tasks get beyond the requests' own deadline (the longest a
/// connection is given to close), in milliseconds.
pub const SHUTDOWN_MARGIN_MS: u64 = 5_000;
/// How long the tasks of a replica whose Raft core stopped get to end, in milliseconds: its
/// connections are dropped at once, and requests waiting for epochs would wait in vain.
pub const RAFT_STOPPED_TASKS_DEADLINE_MS: u64 = 2_000;

/// A replica's two listeners, bound by the caller of [`run`].
#[derive(Debug)]
pub struct Listeners {
    /// The public service's (clients, verifiers).
    pub public: Listener,
    /// The peer service's (Raft, forwarding, admin).
    pub peer: Listener,
    /// The metrics listener's, if configured (`/healthz`, `/readyz`).
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// Binds `config.public_listen` and `config.peer_listen`.
    pub async fn bind(config: &NodeConfig) -> Result<Self, Error> {
        let public = TcpListener::bind(&config.public_listen).await.map_err(|source| Error::Network {
            listener: "public",
            addr: config.public_listen.clone(),
            source,
        })?;
        let peer = TcpListener::bind(&config.peer_listen).await.map_err(|source| Error::Network {
            listener: "peer",
            addr: config.peer_listen.clone(),
            source,
        })?;
        let metrics = match &config.metrics_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| Error::Network {
                listener: "metrics",
                addr: addr.clone(),
                source,
            })?),
            None => None,
        };
        Ok(Self { public: Listener::Tcp(public), peer: Listener::Tcp(peer), metrics })
    }
}

/// Where a running replica listens, written to `<data_dir>/listen.json` once bound.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Listening {
    /// Raft node id.
    pub node_id: u64,
    /// The public listener's address.
    pub public_addr: SocketAddr,
    /// The peer listener's address.
    pub peer_addr: SocketAddr,
    /// The metrics listener's address, if there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<SocketAddr>,
}

/// Runs the replica described by `loaded` on `listeners` until `shutdown` is cancelled. With
/// `init`, bootstraps the cluster with the configured voters first (refused if it already is
/// initialised). Returns once every task it started has ended (or, past the shutdown deadline,
/// been named in the log) and the log's flusher thread is joined.
///
/// # Errors
/// The configuration or the data directory is unusable, or the Raft core stopped on its own
/// ([`Error::RaftStopped`]: a supervisor should restart the replica).
pub async fn run(loaded: Loaded, listeners: Listeners, init: bool, shutdown: CancellationToken) -> Result<(), Error> {
    run_with(loaded, listeners, init, shutdown, TaskTracker::new(), &ThreadSpawner::default()).await
}

/// [`run`], spawning the replica's tasks into `tracker` and its threads with `threads`: a test
/// or a simulation passes its own to see every one of them.
#[allow(clippy::too_many_lines)] // one linear start-up sequence reads best in one place
pub async fn run_with(
    loaded: Loaded,
    listeners: Listeners,
    init: bool,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    threads: &ThreadSpawner,
) -> Result<(), Error> {
    let Loaded {
        config,
        realm,
        vrf,
        signing_key,
        next_signing_keys,
        cluster_token,
        admin_token,
        tls,
        realm_clock_skew_ms,
        seams,
    } = loaded;
    // A child: a Raft core that stops on its own stops the tasks, not the caller's token.
    let tasks = Tasks::new(shutdown.child_token(), tracker);
    check_data_dir(&config.data_dir)?;
    let (log_storage, location) = open_storage(&seams.storage, &config)?;
    let sm = StateMachineStore::open(location, config.data_dir.join("snapshots"), realm.clone()).map_err(|e| {
        Error::DataDir { path: config.data_dir.clone(), message: format!("opening the state and snapshots: {e}") }
    })?;
    let metrics = Arc::new(crate::metrics::Metrics::new().with_data_dir(config.data_dir.clone()));
    let sm = sm.with_metrics(metrics.clone()).with_threads(threads);
    let shared = sm.shared();
    // The methods of the policy in force (the realm file's may be older) must be usable here.
    let in_force = shared.read().config().clone();
    let registrations =
        Arc::new(Registrations::open(&in_force, &config.registration, seams.clock.clone(), realm_clock_skew_ms).await?);
    let log = LogStore::with_threads(log_storage.clone(), threads);

    let r = config.raft;
    let raft_config = openraft::Config {
        cluster_name: realm.realm.clone(),
        heartbeat_interval: r.heartbeat_interval_ms,
        election_timeout_min: r.election_timeout_min_ms,
        election_timeout_max: r.election_timeout_max_ms,
        install_snapshot_timeout: r.install_snapshot_timeout_ms,
        max_payload_entries: r.max_payload_entries,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(r.snapshot_after_entries),
        snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
        max_in_snapshot_log_to_keep: r.entries_kept_after_snapshot,
        purge_batch_size: 256,
        ..Default::default()
    }
    .validate()
    .map_err(|e| Error::config_because("raft", e))?;
    let mut peer_channels = peer_channels(tls.as_ref().map(NodeTls::peer_client));
    if let Some(connector) = seams.network.clone() {
        peer_channels = peer_channels.with_connector(connector);
    }
    let network = PeerNetwork::new(&cluster_token, peer_channels, &realm.realm);
    let raft = runtime::with_seed(
        seams.raft_seed,
        Raft::new(config.node_id, Arc::new(raft_config), network.clone(), log.clone(), sm),
    )
    .await
    .map_err(|e| Error::Raft(Box::new(e)))?;

    let node = Arc::new(Node::new(
        config.node_id,
        raft.clone(),
        shared,
        realm,
        vrf,
        std::iter::once(signing_key).chain(next_signing_keys).collect(),
        network,
        config.limits.clone(),
        tasks.clone(),
        threads,
    )?);

    let Listeners { public: public_listener, peer: peer_listener, metrics: metrics_listener } = listeners;
    let listening = Listening {
        node_id: config.node_id,
        public_addr: public_listener.local_addr().map_err(|e| Error::io("public listener address", e))?,
        peer_addr: peer_listener.local_addr().map_err(|e| Error::io("peer listener address", e))?,
        metrics_addr: metrics_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()
            .map_err(|e| Error::io("metrics listener address", e))?,
    };

    let listen_json = serde_json::to_vec_pretty(&listening).map_err(|e| Error::io("encoding listen.json", e.into()))?;
    let listen_path = config.data_dir.join("listen.json");
    std::fs::write(listen_path.with_extension("json.tmp"), listen_json)
        .map_err(|e| Error::io("writing listen.json", e))?;
    std::fs::rename(listen_path.with_extension("json.tmp"), &listen_path)
        .map_err(|e| Error::io("writing listen.json", e))?;

    // The longest a public request may take: its wait, and time to answer.
    let request_deadline = Duration::from_millis(config.limits.wait_ms_max.saturating_add(5_000));
    let limits = config.limits.clone();
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(keyraft_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // The peer service is in the same descriptors but not on this listener.
        .with_service_name(crate::health::PUBLIC_SERVICE)
        .with_service_name("grpc.health.v1.Health")
        .with_service_name("grpc.reflection.v1.ServerReflection")
        .build_v1()
        .map_err(|e| Error::io("building the reflection service", std::io::Error::other(e)))?;
    let public_service = PublicService::new(
        node.clone(),
        registrations,
        RateLimits::new(&limits, seams.clock.clone()),
        seams.clock.clone(),
        realm_clock_skew_ms,
    );
    for (kind, open) in public_service.stream_counters() {
        metrics.count_streams(kind, open);
    }
    let gateway = crate::gateway::router(public_service.clone(), limits.request_bytes_max, request_deadline);
    let public = tonic::service::Routes::new(
        KeyraftServer::new(public_service)
            .max_decoding_message_size(public_request_bytes_max(&limits))
            .max_encoding_message_size(PUBLIC_MESSAGE_BYTES_MAX),
    )
    .add_service(health_service)
    .add_service(reflection)
    .prepare();
    {
        let stopping = tasks.token().clone();
        tasks.spawn(
            "health-reporter",
            stopping.run_until_cancelled_owned(crate::health::report(node.clone(), health_reporter)),
        );
    }
    if let Some(listener) = metrics_listener {
        let stopping = tasks.token().clone();
        let routes = crate::health::probe_routes(node.clone())
            .merge(crate::metrics::metrics_route(node.clone(), metrics.clone()));
        tasks.spawn("metrics-listener", async move {
            if let Err(e) = axum::serve(listener, routes).with_graceful_shutdown(stopping.cancelled_owned()).await {
                tracing::error!(error = %e, "the metrics listener stopped");
            }
        });
    }
    let public =
        crate::gateway::PublicRoutes::new(RequestLimits::new(public, limits.clone(), request_deadline), gateway);
    let public_limits = ConnectionLimits {
        requests_max: Some(limits.concurrency_per_connection),
        http1: true,
        ..ConnectionLimits::from_config(&limits, request_deadline)
    };
    let public_server = acceptor::serve(
        "public",
        public_listener,
        public_limits,
        tls.as_ref().map(NodeTls::public),
        Some(metrics.clone()),
        public,
        tasks.clone(),
    );
    let boundary_wait_ms = config.epochs.max_epoch_interval_ms.saturating_mul(3).max(10_000);
    let peer = tonic::service::Routes::new(tonic::service::interceptor::InterceptedService::new(
        PeerServer::new(PeerService::new(node.clone(), boundary_wait_ms, config.data_dir.join("snapshots")))
            .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX),
        CheckToken::new(&cluster_token, admin_token.as_deref().map(String::as_str), tls.as_ref().map(|t| t.realm())),
    ))
    .prepare();
    let peer_server = acceptor::serve(
        "peer",
        peer_listener,
        ConnectionLimits::from_config(&limits, request_deadline),
        tls.as_ref().map(NodeTls::peer),
        Some(metrics.clone()),
        peer,
        tasks.clone(),
    );
    if let Some(tls) = tls {
        let stopping = tasks.token().clone();
        tasks.spawn("tls-reload", stopping.run_until_cancelled_owned(reload_on_sighup(tls)));
    }
    let public_task = tasks.spawn("public-listener", public_server);
    let peer_task = tasks.spawn("peer-listener", peer_server);

    tracing::info!(
        node = config.node_id,
        public = %listening.public_addr,
        peer = %listening.peer_addr,
        metrics = ?listening.metrics_addr,
        realm = %node.realm.realm,
        "replica listening"
    );

    if init {
        let voters: Vec<NodeSpec> = if config.voters.is_empty() {
            vec![NodeSpec {
                id: config.node_id,
                peer_addr: listening.peer_addr.to_string(),
                public_addr: listening.public_addr.to_string(),
            }]
        } else {
            config
                .voters
                .iter()
                .map(|v: &VoterSpec| NodeSpec {
                    id: v.id,
                    peer_addr: v.peer_addr.clone(),
                    public_addr: v.public_addr.clone(),
                })
                .collect()
        };
        match init_cluster(&node, &voters).await {
            Ok(message) => tracing::info!("{message}"),
            Err(status) => {
                tasks.stop(Duration::from_millis(RAFT_STOPPED_TASKS_DEADLINE_MS)).await;
                let _ = raft.shutdown().await;
                log.close();
                return Err(Error::config(format!("--init: {}", status.message())));
            }
        }
    }

    // Dropped mid-proposal when cancelled: a proposer keeps no progress outside the state.
    let stopping = tasks.token();
    let epoch_proposer = proposers::epoch_proposer(node.clone(), config.epochs, seams.clock.clone(), stopping.clone());
    tasks.spawn("epoch-proposer", stopping.clone().run_until_cancelled_owned(epoch_proposer));
    let signature_proposer = proposers::signature_proposer(node.clone(), config.epochs, stopping.clone());
    tasks.spawn("signature-proposer", stopping.clone().run_until_cancelled_owned(signature_proposer));
    if config.storage.retention_epochs > 0 {
        let retention = crate::retention::run(
            node.shared.clone(),
            config.storage.retention_epochs,
            metrics.clone(),
            threads.in_place(),
        );
        tasks.spawn("retention", stopping.clone().run_until_cancelled_owned(retention));
    }

    // A Raft core that stops on its own (a full disk) leaves a replica that answers from a
    // frozen state and can never catch up: stop it, so that a supervisor restarts it.
    let raft_stopped = tokio::select! {
        () = shutdown.cancelled() => None,
        cause = crate::raft::core_stopped(&raft) => Some(cause),
    };
    if let Some(cause) = raft_stopped {
        // Requests in flight would wait for epochs that never come (up to `wait_ms_max`):
        // drop the connections at once rather than close them gracefully.
        public_task.abort();
        peer_task.abort();
        tasks.stop(Duration::from_millis(RAFT_STOPPED_TASKS_DEADLINE_MS)).await;
        // Best effort: the disk that stopped Raft may refuse these too, and the state is
        // re-derived from the log on restart anyway.
        let _ = node.shared.read().store().flush();
        log.close();
        let _ = log_storage.flush();
        return Err(Error::RaftStopped { cause, data_dir: config.data_dir.clone() });
    }
    tracing::info!(node = config.node_id, "shutting down");
    // Connections get `request_deadline` to close; the tasks a little more.
    tasks.stop(request_deadline + Duration::from_millis(SHUTDOWN_MARGIN_MS)).await;
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
    node.shared.read().store().flush()?;
    log.close();
    log_storage.flush()?;
    tracing::info!(node = config.node_id, "stopped");
    Ok(())
}

/// Reads the certificate and key files again at each SIGHUP (`crate::tls`).
async fn reload_on_sighup(tls: NodeTls) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch for SIGHUP: certificates reload on restart only");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        match tls.reload() {
            Ok(()) => tracing::info!("SIGHUP: TLS certificate, key and CA reloaded; new connections use them"),
            Err(e) => {
                let mut message = e.to_string();
                let mut cause = std::error::Error::source(&e);
                while let Some(c) = cause {
                    message = format!("{message}: {c}");
                    cause = c.source();
                }
                tracing::error!(error = %message, "SIGHUP: reloading TLS failed; the certificate in use stays in use");
            }
        }
    }
}

/// Opens the Raft log and locates the state on `engine`.
fn open_storage(engine: &StorageEngine, config: &NodeConfig) -> Result<(Arc<dyn Storage>, StateLocation), Error> {
    match engine {
        StorageEngine::Disk => {
            let log_path = config.data_dir.join("log");
            let log = config.storage.log_engine().open(&log_path).map_err(|e| Error::DataDir {
                path: log_path.clone(),
                message: format!("opening the Raft log: {e}"),
            })?;
            let location =
                StateLocation::Dir { path: config.data_dir.join("state"), engine: config.storage.state_engine() };
            Ok((log, location))
        }
        StorageEngine::Memory(memory) => {
            Ok((Arc::new(memory.log.clone()), StateLocation::Memory(memory.state.clone())))
        }
    }
}

/// Creates the data directory if needed and checks that this process can write there: a
/// read-only directory would otherwise surface as an error deep inside a store.
fn check_data_dir(dir: &std::path::Path) -> Result<(), Error> {
    let fail = |what: &str, e: std::io::Error| Error::DataDir { path: dir.to_owned(), message: format!("{what}: {e}") };
    std::fs::create_dir_all(dir).map_err(|e| fail("cannot create it", e))?;
    let probe = dir.join(".write-check");
    std::fs::write(&probe, b"").map_err(|e| fail("not writable", e))?;
    std::fs::remove_file(&probe).map_err(|e| fail("not writable", e))
}
