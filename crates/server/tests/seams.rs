//! The seams a deterministic simulation replaces, each driving a whole single-node replica
//! run in process: the clock stamps and paces epochs, the memory engine survives a restart
//! on the same handle, and custom connectors carry public and peer calls.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use keyraft_core::clock::{Clock, ManualClock};
use keyraft_core::vrf::VrfSecretKey;
use keyraft_proto::pb::keyraft_client::KeyraftClient;
use keyraft_proto::pb::GetEpochRequest;
use keyraft_proto::peer::StatusRequest;
use keyraft_proto::transport::{Channels, Connecting, Connection, Connector};
use keyraft_server::config::{EpochSettings, Limits, RaftSettings, StorageSettings, TlsSettings};
use keyraft_server::peer_client::peer_channels;
use keyraft_server::raft::network::PeerNetwork;
use keyraft_server::{Listeners, Listening, Loaded, MemoryEngine, NodeConfig, Seams, StorageEngine};
use keyraft_state::harness::derive_signing_key;
use keyraft_state::{EpochState, StateMachine};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const SEED: u64 = 12;
const TOKEN: &str = "seams-cluster-token-0123456789";
const T0_MS: u64 = 1_700_000_000_000;

fn realm() -> keyraft_core::RealmConfig {
    let replica = derive_signing_key(SEED, "replica-0");
    keyraft_core::RealmConfig::new(
        "seams.example",
        vrf().public_key(),
        vec![keyraft_core::keys::public_key_of(&replica)],
        vec![],
    )
    .unwrap()
}

fn vrf() -> VrfSecretKey {
    VrfSecretKey::from_seed(&derive_signing_key(SEED, "vrf").to_bytes())
}

fn loaded(dir: &Path, epochs: EpochSettings, seams: Seams) -> Loaded {
    let config = NodeConfig {
        node_id: 1,
        data_dir: dir.to_owned(),
        public_listen: "127.0.0.1:0".into(),
        peer_listen: "127.0.0.1:0".into(),
        metrics_listen: None,
        // Read by `NodeConfig::load` only; `run` takes the loaded keys.
        realm_file: "unused".into(),
        vrf_secret_key_file: "unused".into(),
        signing_key_file: "unused".into(),
        next_signing_key_files: vec![],
        cluster_token_file: "unused".into(),
        admin_token_file: None,
        tls: Some(TlsSettings::plaintext()),
        epochs,
        raft: RaftSettings::default(),
        limits: Limits::default(),
        storage: StorageSettings::default(),
        voters: vec![],
        registration: Default::default(),
    };
    Loaded {
        config,
        realm: realm(),
        vrf: vrf(),
        signing_key: derive_signing_key(SEED, "replica-0"),
        next_signing_keys: vec![],
        cluster_token: keyraft_server::config::Secret::new(TOKEN.to_owned()),
        admin_token: None,
        tls: None,
        realm_clock_skew_ms: 5_000,
        seams,
    }
}

struct Running {
    stop: CancellationToken,
    task: JoinHandle<Result<(), keyraft_server::Error>>,
}

impl Running {
    async fn start(loaded: Loaded, init: bool) -> Self {
        let listeners = Listeners::bind(&loaded.config).await.unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(keyraft_server::run(loaded, listeners, init, stop.clone()));
        Self { stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// The epoch state and heads in the memory engine's current state generation.
fn state_of(engine: &MemoryEngine) -> StateMachine<keyraft_storage::MemoryStorage> {
    StateMachine::open(engine.state.generation(engine.state.current()), realm()).unwrap()
}

async fn wait_for(what: &str, engine: &MemoryEngine, done: impl Fn(&EpochState) -> bool) -> EpochState {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = state_of(engine).epoch_state();
        if done(&state) {
            return state;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {state:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn listening(dir: &Path) -> Listening {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(bytes) = std::fs::read(dir.join("listen.json")) {
            return serde_json::from_slice(&bytes).unwrap();
        }
        assert!(Instant::now() < deadline, "the replica never wrote listen.json");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn memory_seams(engine: &MemoryEngine, clock: Arc<dyn Clock>) -> Seams {
    Seams { clock, storage: StorageEngine::Memory(engine.clone()), ..Seams::default() }
}

const FAST_EPOCHS: EpochSettings = EpochSettings {
    min_epoch_interval_ms: 10,
    max_epoch_interval_ms: 100,
    proposal_retry_ms: 10,
    proposal_retry_max_ms: 200,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_replica_restarted_on_the_same_handle_keeps_its_log_and_state() {
    let dir = tempfile::tempdir().unwrap();
    let engine = MemoryEngine::default();
    let seams = memory_seams(&engine, keyraft_core::clock::system());

    let first = Running::start(loaded(dir.path(), FAST_EPOCHS, seams.clone()), true).await;
    let before = wait_for("a ratified epoch", &engine, |s| s.last_epoch >= 2 && s.last_epoch_ratified()).await;
    first.stop().await;
    assert!(!dir.path().join("log").exists() && !dir.path().join("state").exists(), "sled was not opened");

    // Not initialised again: only the log and membership kept in the handle let it lead and go
    // on cutting epochs after the ones it had.
    let second = Running::start(loaded(dir.path(), FAST_EPOCHS, seams), false).await;
    let after = wait_for("an epoch after the restart", &engine, |s| s.last_epoch > before.last_epoch + 1).await;
    second.stop().await;
    let state = state_of(&engine);
    for epoch in 1..=after.last_epoch {
        assert!(state.head(epoch).unwrap().is_some(), "head {epoch} lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epochs_are_stamped_and_paced_by_the_injected_clock() {
    let dir = tempfile::tempdir().unwrap();
    let engine = MemoryEngine::default();
    let clock = ManualClock::new(T0_MS);
    let epochs = EpochSettings { min_epoch_interval_ms: 500, max_epoch_interval_ms: 500, ..FAST_EPOCHS };
    let replica =
        Running::start(loaded(dir.path(), epochs, memory_seams(&engine, Arc::new(clock.clone()))), true).await;

    wait_for("epoch 1", &engine, |s| s.last_epoch == 1 && s.last_epoch_ratified()).await;
    assert_eq!(state_of(&engine).head(1).unwrap().unwrap().issue_time_ms, T0_MS);
    // Four maximum intervals of real time pass, but none on the replica's clock.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(state_of(&engine).epoch_state().last_epoch, 1, "an epoch was cut before the clock allowed it");

    clock.advance(499);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(state_of(&engine).epoch_state().last_epoch, 1, "an epoch was cut before the maximum interval");
    clock.advance(1);
    wait_for("epoch 2", &engine, |s| s.last_epoch == 2).await;
    assert_eq!(state_of(&engine).head(2).unwrap().unwrap().issue_time_ms, T0_MS + 500);
    replica.stop().await;
}

/// Opens TCP connections, counting them: a stand-in for a simulation's network.
#[derive(Default)]
struct CountingTcp {
    opened: AtomicUsize,
}

impl Connector for CountingTcp {
    fn connect(&self, addr: &str) -> Connecting {
        self.opened.fetch_add(1, Ordering::SeqCst);
        let addr = addr.to_owned();
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            Ok(Box::new(stream) as Box<dyn Connection>)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_connectors_carry_public_and_peer_calls() {
    let dir = tempfile::tempdir().unwrap();
    let engine = MemoryEngine::default();
    let replica =
        Running::start(loaded(dir.path(), FAST_EPOCHS, memory_seams(&engine, keyraft_core::clock::system())), true)
            .await;
    wait_for("a ratified epoch", &engine, |s| s.last_epoch >= 1 && s.last_epoch_ratified()).await;
    let at = listening(dir.path()).await;

    let public = Arc::new(CountingTcp::default());
    let channel = Channels::default().with_connector(public.clone()).lazy(&at.public_addr.to_string()).unwrap();
    let info = KeyraftClient::new(channel).get_epoch(GetEpochRequest { epoch: 0 }).await.unwrap().into_inner();
    assert!(!info.head.is_empty());
    assert_eq!(public.opened.load(Ordering::SeqCst), 1);

    // The replica's own peer channels: what `Seams::network` replaces.
    let peers = Arc::new(CountingTcp::default());
    let network = PeerNetwork::new(TOKEN, peer_channels(None).with_connector(peers.clone()), "seams");
    let mut client = network.client_for(1, &at.peer_addr.to_string()).unwrap();
    client.status(StatusRequest {}).await.unwrap();
    assert_eq!(peers.opened.load(Ordering::SeqCst), 1);
    replica.stop().await;
}
