//! The verifier daemon's `run` in process: cancelled, it returns within a bound, with every
//! task it started ended and its writer thread joined.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use ed25519_dalek::SigningKey;
use keyraft_core::keys::public_key_of;
use keyraft_core::vrf::VrfSecretKey;
use keyraft_core::{RealmConfig, RealmFile};
use keyraft_storage::threads::CountedThreads;
use keyraft_verifier::Config;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A verifier of a one-replica realm whose replica is down: it keeps reconnecting.
fn config(dir: &std::path::Path) -> Config {
    let verifier_seed = [5u8; 32];
    let realm = RealmConfig::new(
        "shutdown.example",
        VrfSecretKey::from_seed(&[9; 32]).public_key(),
        vec![public_key_of(&SigningKey::from_bytes(&[1; 32]))],
        vec![public_key_of(&SigningKey::from_bytes(&verifier_seed))],
    )
    .unwrap();
    // A port nobody listens on.
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let realm_file = dir.join("realm.json");
    std::fs::write(&realm_file, RealmFile::new(&realm, 60_000, 5_000, vec![down.to_string()]).to_json()).unwrap();
    let signing_key_file = dir.join("verifier.key");
    keyraft_core::key_file::write_secret(&signing_key_file, &verifier_seed).unwrap();
    Config {
        data_dir: dir.join("data"),
        realm_file,
        signing_key_file,
        endpoints: Vec::new(),
        metrics_listen: None,
        retention_epochs: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_verifier_returns_promptly_with_every_task_ended_and_its_writer_joined() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let threads = CountedThreads::default();
    let verifier = tokio::spawn({
        let (shutdown, tracker, spawner) = (shutdown.clone(), tracker.clone(), threads.spawner());
        async move { keyraft_verifier::run_with(config, shutdown, tracker, &spawner).await }
    });
    // Started: its pusher task runs and its writer thread waits for batches.
    let deadline = Instant::now() + Duration::from_secs(10);
    while tracker.is_empty() || threads.running() == 0 {
        assert!(Instant::now() < deadline, "the verifier did not start");
        assert!(!verifier.is_finished(), "the verifier stopped on its own: {:?}", verifier.await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(5), verifier).await;
    stopped.expect("run did not return in time").unwrap().unwrap();
    assert!(tracker.is_empty(), "{} tasks outlived run", tracker.len());
    assert_eq!((threads.started(), threads.running()), (1, 0), "the writer thread outlived run");
}
