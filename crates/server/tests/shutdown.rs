//! A replica's `run` in process: cancelled, it returns within a bound, with every task it
//! started ended and its log's flusher thread joined, even while streams are open.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use keyraft_proto::pb::keyraft_client::KeyraftClient;
use keyraft_proto::pb::{GetEpochRequest, VerifierStreamRequest};
use keyraft_server::config::{EpochSettings, Limits, RaftSettings, StorageSettings, TlsSettings};
use keyraft_server::{Listeners, Loaded, NodeConfig};
use keyraft_state::harness::Harness;
use keyraft_storage::threads::CountedThreads;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A single-replica realm's node, in `dir`, and its verifier's key.
fn loaded(dir: &std::path::Path) -> (Loaded, ed25519_dalek::SigningKey) {
    let Harness { replicas, vrf, machine, verifiers, .. } = Harness::new("shutdown.example", 1, 1, 7);
    let realm = machine.config().clone();
    let config = NodeConfig {
        node_id: 1,
        data_dir: dir.to_owned(),
        public_listen: "127.0.0.1:0".into(),
        peer_listen: "127.0.0.1:0".into(),
        metrics_listen: None,
        // Read by `NodeConfig::load` only; `Loaded` carries what they hold.
        realm_file: PathBuf::new(),
        vrf_secret_key_file: PathBuf::new(),
        signing_key_file: PathBuf::new(),
        next_signing_key_files: vec![],
        cluster_token_file: PathBuf::new(),
        admin_token_file: None,
        tls: Some(TlsSettings::plaintext()),
        epochs: EpochSettings { min_epoch_interval_ms: 50, max_epoch_interval_ms: 200, ..EpochSettings::default() },
        raft: RaftSettings::default(),
        limits: Limits::default(),
        storage: StorageSettings { state_cache_bytes: 1 << 20, log_cache_bytes: 1 << 20, ..StorageSettings::default() },
        voters: Vec::new(),
        registration: Default::default(),
    };
    let signing_key = replicas.into_iter().next().unwrap();
    let verifier = verifiers.into_iter().next().unwrap();
    let loaded = Loaded {
        config,
        realm,
        vrf,
        signing_key,
        next_signing_keys: vec![],
        cluster_token: keyraft_server::config::Secret::new("shutdown-test-cluster-token".to_owned()),
        admin_token: None,
        tls: None,
        realm_clock_skew_ms: 5_000,
        seams: Default::default(),
    };
    (loaded, verifier)
}

/// Longest a cancelled replica may take to return here: its streams end at once and no
/// request waits for an epoch, so nothing should wait for the connections' grace period.
const RETURN_BOUND: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_replica_returns_promptly_with_every_task_ended_and_the_log_flusher_joined() {
    let dir = tempfile::tempdir().unwrap();
    let (loaded, verifier) = loaded(dir.path());
    let listeners = Listeners::bind(&loaded.config).await.unwrap();
    let public_addr = listeners.public.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let threads = CountedThreads::default();
    let replica = tokio::spawn({
        let (shutdown, tracker, spawner) = (shutdown.clone(), tracker.clone(), threads.spawner());
        async move { keyraft_server::run_with(loaded, listeners, true, shutdown, tracker, &spawner).await }
    });

    // Running for real: an epoch ratified, a verifier stream open and following.
    let mut client =
        KeyraftClient::new(keyraft_proto::transport::Channels::default().lazy(&public_addr.to_string()).unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if client.get_epoch(GetEpochRequest { epoch: 1 }).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the replica ratified no epoch in 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let now_ms = keyraft_core::clock::system().now_ms();
    let request = keyraft_proto::convert::sign_stream_request(
        VerifierStreamRequest::default(),
        &verifier,
        "shutdown.example",
        now_ms,
    )
    .unwrap();
    let mut frames = client.verifier_stream(request).await.unwrap().into_inner();
    assert!(frames.message().await.unwrap().is_some(), "the stream's first frame");
    assert!(!tracker.is_empty(), "the replica's tasks are not in the tracker");
    assert_eq!(threads.running(), 1, "the log flusher thread");

    let cancelled_at = Instant::now();
    shutdown.cancel();
    let stopped = tokio::time::timeout(RETURN_BOUND, replica).await;
    let took = cancelled_at.elapsed();
    stopped.expect("run did not return in time").unwrap().unwrap();
    assert!(tracker.is_empty(), "{} tasks outlived run", tracker.len());
    assert_eq!((threads.started(), threads.running()), (1, 0), "the log flusher thread outlived run");
    eprintln!("run returned {} ms after the cancellation", took.as_millis());

    // The open stream was ended by the replica, not left hanging.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match frames.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status.code()),
            }
        }
    })
    .await
    .expect("the verifier stream still open after the replica stopped");
    assert!(matches!(ended, None | Some(tonic::Code::Unavailable)), "{ended:?}");
}
