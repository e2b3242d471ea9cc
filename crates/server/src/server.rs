//! Running a replica: open storage, start Raft, the listeners and the proposers, and stop
//! cleanly on shutdown.

use crate::acceptor::{self, ConnectionLimits};
use crate::config::{Loaded, NodeConfig, VoterSpec};
use crate::node::Node;
use crate::peer_client::{peer_channels, PEER_MESSAGE_BYTES_MAX};
use crate::peer_service::{init_cluster, CheckToken, PeerService};
use crate::raft::log_store::LogStore;
use crate::raft::network::PeerNetwork;
use crate::raft::runtime;
use crate::raft::sm_store::{StateLocation, StateMachineStore};
use crate::raft::types::Raft;
use crate::request_limits::{public_request_bytes_max, RequestLimits};
use crate::seams::StorageEngine;
use crate::service::PublicService;
use crate::{proposers, Error};
use keyraft_proto::pb::keyraft_server::KeyraftServer;
use keyraft_proto::peer::peer_server::PeerServer;
use keyraft_proto::peer::NodeSpec;
use keyraft_storage::{SledOptions, SledStorage, Storage};
use openraft::SnapshotPolicy;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Largest public answer the transport sends, in bytes (a verifier frame of up to 4 MiB).
/// Requests have their own, much smaller bounds (`crate::request_limits`).
pub const PUBLIC_MESSAGE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Snapshot chunk size, in bytes (at most 1 MiB with the message around it).
pub const SNAPSHOT_CHUNK_BYTES: u64 = 1_000_000;

/// Where a running replica listens, written to `<data_dir>/listen.json` once bound.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Listening {
    /// Raft node id.
    pub node_id: u64,
    /// The public listener's address.
    pub public_addr: SocketAddr,
    /// The peer listener's address.
    pub peer_addr: SocketAddr,
}

/// Runs the replica described by `loaded` until `shutdown` completes. With `init`, bootstraps
/// the cluster with the configured voters first (refused if it already is initialised).
#[allow(clippy::too_many_lines)] // one linear start-up sequence reads best in one place
pub async fn run(loaded: Loaded, init: bool, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let Loaded { config, realm, vrf, signing_key, cluster_token, seams } = loaded;
    check_data_dir(&config.data_dir)?;
    let (log_storage, location) = open_storage(&seams.storage, &config)?;
    let sm = StateMachineStore::open(location, config.data_dir.join("snapshots"), realm.clone()).map_err(|e| {
        Error::DataDir { path: config.data_dir.clone(), message: format!("opening the state and snapshots: {e}") }
    })?;
    let shared = sm.shared();
    let log = LogStore::new(log_storage.clone());

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
    let mut peer_channels = peer_channels();
    if let Some(connector) = seams.network.clone() {
        peer_channels = peer_channels.with_connector(connector);
    }
    let network = PeerNetwork::new(&cluster_token, peer_channels);
    let raft =
        runtime::with_seed(seams.raft_seed, Raft::new(config.node_id, Arc::new(raft_config), network.clone(), log, sm))
            .await
            .map_err(|e| Error::Raft(Box::new(e)))?;

    let node =
        Arc::new(Node::new(config.node_id, raft.clone(), shared, realm, vrf, signing_key, network, config.limits)?);

    let public_listener = tokio::net::TcpListener::bind(&config.public_listen)
        .await
        .map_err(|source| Error::Network { listener: "public", addr: config.public_listen.clone(), source })?;
    let peer_listener = tokio::net::TcpListener::bind(&config.peer_listen).await.map_err(|source| Error::Network {
        listener: "peer",
        addr: config.peer_listen.clone(),
        source,
    })?;
    let listening = Listening {
        node_id: config.node_id,
        public_addr: public_listener.local_addr().map_err(|e| Error::io("public listener address", e))?,
        peer_addr: peer_listener.local_addr().map_err(|e| Error::io("peer listener address", e))?,
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    // The longest a public request may take: its wait, and time to answer.
    let request_deadline = Duration::from_millis(config.limits.wait_ms_max.saturating_add(5_000));
    let limits = config.limits;
    let public = tonic::service::Routes::new(
        KeyraftServer::new(PublicService::new(node.clone()))
            .max_decoding_message_size(public_request_bytes_max(&limits))
            .max_encoding_message_size(PUBLIC_MESSAGE_BYTES_MAX),
    )
    .prepare();
    let public = RequestLimits::new(public, limits, request_deadline);
    let public_limits = ConnectionLimits {
        requests_max: Some(limits.concurrency_per_connection),
        ..ConnectionLimits::from_config(&limits, request_deadline)
    };
    let public_server = acceptor::serve("public", public_listener, public_limits, public, stopped(stop_rx.clone()));
    let boundary_wait_ms = config.epochs.max_epoch_interval_ms.saturating_mul(3).max(10_000);
    let peer = tonic::service::Routes::new(tonic::service::interceptor::InterceptedService::new(
        PeerServer::new(PeerService::new(node.clone(), boundary_wait_ms))
            .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX),
        CheckToken::new(&cluster_token),
    ))
    .prepare();
    let peer_server = acceptor::serve(
        "peer",
        peer_listener,
        ConnectionLimits::from_config(&limits, request_deadline),
        peer,
        stopped(stop_rx.clone()),
    );
    let public_task = tokio::spawn(public_server);
    let peer_task = tokio::spawn(peer_server);

    let listen_json = serde_json::to_vec_pretty(&listening).map_err(|e| Error::io("encoding listen.json", e.into()))?;
    let listen_path = config.data_dir.join("listen.json");
    std::fs::write(listen_path.with_extension("json.tmp"), listen_json)
        .map_err(|e| Error::io("writing listen.json", e))?;
    std::fs::rename(listen_path.with_extension("json.tmp"), &listen_path)
        .map_err(|e| Error::io("writing listen.json", e))?;
    tracing::info!(
        node = config.node_id,
        public = %listening.public_addr,
        peer = %listening.peer_addr,
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
                let _ = stop_tx.send(true);
                let _ = raft.shutdown().await;
                return Err(Error::config(format!("--init: {}", status.message())));
            }
        }
    }

    let epoch_task =
        tokio::spawn(proposers::epoch_proposer(node.clone(), config.epochs, seams.clock.clone(), stop_rx.clone()));
    let sign_task = tokio::spawn(proposers::signature_proposer(node.clone(), config.epochs, stop_rx.clone()));

    // A Raft core that stops on its own (a full disk) leaves a replica that answers from a
    // frozen state and can never catch up: stop it, so that a supervisor restarts it.
    let raft_stopped = tokio::select! {
        () = shutdown => None,
        cause = crate::raft::core_stopped(&raft) => Some(cause),
    };
    let _ = stop_tx.send(true);
    if let Some(cause) = raft_stopped {
        // Requests in flight would wait for epochs that never come (up to `wait_ms_max`), and
        // a proposer may be waiting for a forward to the leader (up to `forward_timeout_ms`).
        for task in [epoch_task, sign_task] {
            task.abort();
            let _ = task.await;
        }
        for task in [public_task, peer_task] {
            task.abort();
            let _ = task.await;
        }
        // Best effort: the disk that stopped Raft may refuse these too, and the state is
        // re-derived from the log on restart anyway.
        let _ = node.shared.read().store().flush();
        let _ = log_storage.flush();
        return Err(Error::RaftStopped { cause, data_dir: config.data_dir.clone() });
    }
    tracing::info!(node = config.node_id, "shutting down");
    let _ = epoch_task.await;
    let _ = sign_task.await;
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
    let _ = public_task.await;
    let _ = peer_task.await;
    node.shared.read().store().flush()?;
    log_storage.flush()?;
    tracing::info!(node = config.node_id, "stopped");
    Ok(())
}

/// Opens the Raft log and locates the state on `engine`.
fn open_storage(engine: &StorageEngine, config: &NodeConfig) -> Result<(Arc<dyn Storage>, StateLocation), Error> {
    match engine {
        StorageEngine::Sled => {
            let log_path = config.data_dir.join("log");
            let log = SledStorage::open_with(
                &log_path,
                // Purged entries would stay in a value log forever.
                SledOptions { cache_capacity_bytes: config.storage.log_cache_bytes, value_log_min_bytes: None },
            )
            .map_err(|e| Error::DataDir { path: log_path.clone(), message: format!("opening the Raft log: {e}") })?;
            let location = StateLocation::Dir {
                path: config.data_dir.join("state"),
                options: SledOptions {
                    cache_capacity_bytes: config.storage.state_cache_bytes,
                    ..SledOptions::default()
                },
            };
            Ok((Arc::new(log), location))
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
