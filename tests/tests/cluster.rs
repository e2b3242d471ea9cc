//! Three `keyraft server` processes on loopback: replication, forwarding, leader failure,
//! restart, re-adding a wiped node by snapshot, bootstrap rules and error statuses.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use ed25519_dalek::SigningKey;
use keyraft_client::{public_key, ClientError, LookupOptions};
use keyraft_core::{Canonical, EpochHead, PublicKey};
use keyraft_proto::pb::keyraft_client::KeyraftClient;
use keyraft_proto::pb::{self, GetEpochRequest};
use keyraft_proto::peer::{ChangeVotersRequest, InitRequest, NodeSpec, StatusRequest};
use keyraft_tests::{data_dir, keyraft_bin, serial, wait_for, Realm};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: LookupOptions = LookupOptions { epoch: 0, min_epoch: 0, wait_ms: 20_000 };

fn keys(v: &str) -> BTreeMap<String, Vec<u8>> {
    BTreeMap::from([("pgp".to_owned(), v.as_bytes().to_vec())])
}

fn owner() -> SigningKey {
    SigningKey::generate(&mut rand::rngs::OsRng)
}

fn replica_public_key(realm: &Realm, id: u64) -> PublicKey {
    let seed =
        keyraft_server::config::read_secret32(&realm.path().join(format!("keys/replica-{id}.key")), "key").unwrap();
    public_key(&SigningKey::from_bytes(&seed))
}

fn epoch_signers(realm: &Realm, i: usize, epoch: u64) -> Vec<PublicKey> {
    let _g = realm.runtime.enter();
    let mut c = KeyraftClient::new(realm.public_channel(i));
    let info = realm.runtime.block_on(c.get_epoch(GetEpochRequest { epoch })).unwrap().into_inner();
    info.replica_signatures.iter().map(|s| PublicKey::from_slice(&s.signer).unwrap()).collect()
}

/// The CLI against the realm: keygen, register, lookup (human, JSON, saved proof) and offline
/// verification of the saved proof, which fails once any sampled byte changes.
fn cli_drives_the_realm(realm: &Realm) {
    // The CLI drives the same realm and prints verified answers. No verifier runs in this
    // test, so the CLI is told to require none (the dev realm file requires one).
    let state = realm.path().join("client-state.json");
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(keyraft_bin())
            .args(args)
            .env("KEYRAFT_STATE_FILE", &state)
            .current_dir(realm.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "keyraft {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(cli(&["keygen", "--out", "carol.key"]).contains("public key: "));
    let registered = cli(&[
        "register",
        "--realm",
        "realm.json",
        "--verifiers",
        "0",
        "--user",
        "carol",
        "--key",
        "carol.key",
        "--set",
        "pgp=c",
    ]);
    assert!(registered.contains("accepted"), "{registered}");
    let found = wait_for("carol in a ratified epoch", || {
        let out = std::process::Command::new(keyraft_bin())
            .args(["lookup", "--realm", "realm.json", "--verifiers", "0", "carol"])
            .env("KEYRAFT_STATE_FILE", &state)
            .current_dir(realm.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("version 0").then_some(text)
    });
    assert!(found.contains("VERIFIED") && found.contains("pgp = c"), "{found}");
    let json =
        cli(&["lookup", "--realm", "realm.json", "--verifiers", "0", "carol", "--json", "--save-proof", "carol.proof"]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    // The saved proof verifies offline; any changed byte makes it fail.
    let verified = cli(&["verify-proof", "--realm", "realm.json", "--verifiers", "0", "carol.proof"]);
    assert!(verified.contains("VERIFIED") && verified.contains("version 0"), "{verified}");
    let good = std::fs::read(realm.path().join("carol.proof")).unwrap();
    for i in (0..good.len()).step_by(good.len() / 7) {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        std::fs::write(realm.path().join("bad.proof"), &bad).unwrap();
        let out = std::process::Command::new(keyraft_bin())
            .args(["verify-proof", "--realm", "realm.json", "--verifiers", "0", "bad.proof"])
            .current_dir(realm.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "a proof with byte {i} changed verified");
    }
    assert_eq!(json["entry"]["version"], 0);
    assert!(json["proof_hex"].as_str().unwrap().len() > 200);
    let token = realm.path().join("keys/admin.token");
    let tls = realm.tls_dir().unwrap();
    let peer = realm.peer_addr(0);
    let status = cli(&[
        "admin",
        "--peer",
        &peer,
        "--tls-dir",
        tls.to_str().unwrap(),
        "--token-file",
        token.to_str().unwrap(),
        "status",
        "--json",
    ]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["nodes"].as_array().unwrap().len(), 3);
    assert!(status["leader_id"].as_u64().is_some());
}

#[test]
fn register_through_a_follower_and_look_up_through_every_replica() {
    let _s = serial();
    let realm = Realm::start(|_| {});
    let leader = realm.wait_leader();
    let follower = (leader + 1) % 3;
    let alice = owner();
    let resp =
        realm.runtime.block_on(realm.client(follower).register("alice@example.com", &alice, keys("alice-1"))).unwrap();
    assert!(!resp.duplicate);

    let mut answers = Vec::new();
    for i in 0..3 {
        let opts = LookupOptions { epoch: resp.epoch, min_epoch: 0, wait_ms: 20_000 };
        let a = realm.runtime.block_on(realm.client(i).lookup("alice@example.com", opts)).unwrap();
        let (entry, profile) = a.lookup.entry.clone().expect("registered");
        assert_eq!(entry.version, 0);
        assert_eq!(profile.keys, keys("alice-1"));
        answers.push((a.lookup.head.clone(), entry, profile));
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "replicas answered differently: {answers:?}");

    // An update that asks for the quorum gets the lookup proof of its epoch, which verifies.
    let other = realm.client((follower + 1) % 3);
    let current = answers[0].1.clone();
    let profile = keyraft_client::new_profile(keys("alice-2"));
    let entry = keyraft_core::Entry { version: 1, profile_commitment: profile.commitment(), ..current };
    let signatures = keyraft_client::sign_entry(&realm.name(), &entry, &[&alice]);
    let update = keyraft_core::Update { signed: keyraft_core::SignedEntry { entry, signatures }, profile };
    let r = realm.runtime.block_on(other.submit("alice@example.com", &update, None, Some(0), 20_000)).unwrap();
    let proof: keyraft_core::LookupProof = keyraft_core::decode_canonical(&r.proof).unwrap();
    let verified =
        keyraft_core::verify_lookup(other.realm(), "alice@example.com", &proof, keyraft_client::now_ms(), None)
            .unwrap();
    assert_eq!(verified.epoch(), r.epoch);
    assert_eq!(verified.entry.as_ref().unwrap().0.version, 1);

    // Every replica holds byte-identical heads for every epoch.
    realm.wait_ratified(0, r.epoch + 1);
    let heads: Vec<Vec<Vec<u8>>> = (0..3)
        .map(|i| {
            let _g = realm.runtime.enter();
            let mut c = KeyraftClient::new(realm.public_channel(i));
            let req = pb::ListEpochsRequest { start_epoch: 1, page_size: (r.epoch + 1) as u32, page_token: vec![] };
            realm
                .runtime
                .block_on(c.list_epochs(req))
                .unwrap()
                .into_inner()
                .epochs
                .into_iter()
                .map(|e| e.head)
                .collect()
        })
        .collect();
    assert!(heads.iter().all(|h| h.len() as u64 == r.epoch + 1), "{heads:?}");
    assert!(heads.windows(2).all(|w| w[0] == w[1]), "replicas disagree on heads");

    cli_drives_the_realm(&realm);
}

#[test]
fn leader_killed_under_updates_loses_no_acknowledged_update_and_rejoins() {
    let _s = serial();
    leader_killed_under_updates(Realm::start(|_| {}));
}

/// The same on the second engine (`storage.engine = "redb"`), snapshotting every 20 entries so
/// that its replicas also build snapshots, purge their logs and reopen state generations.
#[test]
fn on_redb_a_leader_killed_under_updates_loses_no_acknowledged_update_and_rejoins() {
    let _s = serial();
    let realm = Realm::start_with(&["--engine", "redb"], |t| {
        let raft = t.entry("raft").or_insert(toml::Value::Table(Default::default())).as_table_mut().unwrap();
        raft.insert("snapshot_after_entries".into(), 20.into());
        raft.insert("entries_kept_after_snapshot".into(), 2.into());
    });
    for r in &realm.replicas {
        let log = keyraft_tests::data_dir(&r.config).join("log");
        assert_eq!(keyraft_storage::engine_in(&log), Some("redb"), "{}", log.display());
    }
    leader_killed_under_updates(realm);
}

fn leader_killed_under_updates(mut realm: Realm) {
    let leader = realm.wait_leader();
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let client = {
        let _g = realm.runtime.enter();
        let options = keyraft_client::ClientOptions { verifier_threshold: Some(0), ..Default::default() };
        keyraft_client::Client::with_options(&realm.realm_file(), &[], &options).unwrap()
    };
    let writer = {
        let (stop, acked) = (stop.clone(), acked.clone());
        realm.runtime.spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let user = format!("user-{n}@example.com");
                match client.register(&user, &owner(), keys(&user)).await {
                    Ok(r) => acked.lock().unwrap().push((user, r.epoch)),
                    Err(ClientError::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
                    Err(e) => panic!("unexpected error while registering {user}: {e}"),
                }
            }
        })
    };
    wait_for("updates before the kill", || (acked.lock().unwrap().len() >= 15).then_some(()));
    let before = acked.lock().unwrap().len();
    realm.kill(leader);
    let new_leader = realm.wait_leader();
    assert_ne!(new_leader, leader);
    wait_for("updates after the kill", || (acked.lock().unwrap().len() >= before + 15).then_some(()));
    stop.store(true, Ordering::Relaxed);
    realm.runtime.block_on(writer).unwrap();

    let acked = acked.lock().unwrap().clone();
    let survivor = realm.client(new_leader);
    for (user, epoch) in &acked {
        let opts = LookupOptions { epoch: 0, min_epoch: *epoch, wait_ms: 20_000 };
        let a = realm.runtime.block_on(survivor.lookup(user, opts)).unwrap();
        assert!(a.lookup.entry.is_some(), "acknowledged update of {user} (epoch {epoch}) is missing");
    }

    // The killed node restarts, catches up and signs new heads again.
    realm.start_replica(leader);
    let killed_key = replica_public_key(&realm, realm.replicas[leader].id);
    let target = realm.status(new_leader).unwrap().last_epoch + 2;
    realm.wait_ratified(leader, target);
    let signed = wait_for("the restarted replica to sign a head", || {
        let last = realm.status(new_leader)?.ratified_epoch;
        (target..=last).find(|e| epoch_signers(&realm, new_leader, *e).contains(&killed_key))
    });
    assert!(signed >= target);
}

#[test]
fn a_wiped_node_re_added_as_a_new_member_catches_up_by_snapshot() {
    let _s = serial();
    let mut realm = Realm::start(|t| {
        let raft = t.entry("raft").or_insert(toml::Value::Table(Default::default())).as_table_mut().unwrap();
        raft.insert("snapshot_after_entries".into(), 20.into());
        raft.insert("entries_kept_after_snapshot".into(), 2.into());
    });
    // Make node 3 (index 2) a follower we can lose: kill it and wipe its data.
    let mut leader = realm.wait_leader();
    if leader == 2 {
        realm.kill(2);
        leader = realm.wait_leader();
        realm.start_replica(2);
    }
    realm.kill(2);
    std::fs::remove_dir_all(data_dir(&realm.replicas[2].config)).unwrap();
    let mut peer = realm.peer(leader);
    realm.runtime.block_on(peer.change_voters(ChangeVotersRequest { voters: vec![1, 2] })).unwrap();

    let alice = owner();
    let resp = realm.runtime.block_on(realm.client(leader).register("alice@example.com", &alice, keys("a"))).unwrap();
    wait_for("a snapshot and a purged log on the leader", || {
        let s = realm.status(leader)?;
        (s.snapshot_index > resp.epoch && s.purged_index > 0 && s.ratified_epoch > resp.epoch).then_some(())
    });

    // The replacement is a new node with a key of its own: the replicas that remain sign it
    // into the realm's configuration (node 3 out, node 4 in), as operators would.
    realm.start_node_4();
    let g1 = realm.change_config("realm.json", &["remove-replica", "--node-id", "3"], &[1, 2], leader);
    let key4 = realm.replica_key_hex(4);
    realm.change_config(&g1, &["add-replica", "--node-id", "4", "--key", &key4], &[1, 2], leader);
    let spec = NodeSpec { id: 4, peer_addr: realm.peer_addr(3), public_addr: realm.public_addr(3) };
    realm.runtime.block_on(peer.add_learner(spec)).unwrap();
    realm.runtime.block_on(peer.change_voters(ChangeVotersRequest { voters: vec![1, 2, 4] })).unwrap();

    let s4 = wait_for("node 4 to install a snapshot and catch up", || {
        let leader_applied = realm.status(leader)?.applied_index;
        realm.status(3).filter(|s| s.snapshot_index > 0 && s.applied_index >= leader_applied)
    });
    assert!(s4.snapshot_index > 0);
    let a = realm.runtime.block_on(realm.client(3).lookup("alice@example.com", WAIT)).unwrap();
    assert_eq!(a.lookup.entry.as_ref().unwrap().1.keys, keys("a"));
    // Node 4 signs with the key the configuration binds to it.
    let key4 = replica_public_key(&realm, 4);
    let from = realm.status(leader).unwrap().ratified_epoch + 1;
    wait_for("node 4 to sign a head", || {
        let last = realm.status(leader)?.ratified_epoch;
        (from..=last).find(|e| epoch_signers(&realm, leader, *e).contains(&key4))
    });
}

#[test]
fn bootstrap_is_refused_twice_and_sigterm_stops_a_replica_cleanly() {
    let _s = serial();
    let mut realm = Realm::start(|_| {});
    let mut peer = realm.peer(0);
    let voters = vec![NodeSpec { id: 1, peer_addr: realm.peer_addr(0), public_addr: realm.public_addr(0) }];
    let err = realm.runtime.block_on(peer.init(InitRequest { voters })).unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("already initialised"), "{err}");

    let status = realm.terminate(0);
    assert!(status.success(), "SIGTERM should stop a replica cleanly: {status}");
    let out = std::process::Command::new(keyraft_bin())
        .args(["server", "--init", "--config"])
        .arg(&realm.replicas[0].config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already initialised"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    realm.start_replica(0);
    realm.wait_leader();
    let e = realm.status(1).unwrap().ratified_epoch + 1;
    realm.wait_ratified(0, e);
}

#[test]
fn malformed_oversized_conflicting_and_unauthenticated_requests_get_their_statuses() {
    let _s = serial();
    let realm = Realm::start(|_| {});
    let _g = realm.runtime.enter();
    let mut c = KeyraftClient::new(realm.public_channel(1));
    let rt = &realm.runtime;
    let update = |user: &str, bytes: Vec<u8>| pb::UpdateRequest {
        user_id: user.into(),
        update: bytes,
        verifier_threshold: None,
        wait_ms: 0,
        registration: None,
        recovery: false,
    };

    let e = rt.block_on(c.update(update("bob", vec![1, 2, 3]))).unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains("update"), "{e}");
    let e = rt.block_on(c.update(update("bob", vec![0; 100_000]))).unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
    let e = rt.block_on(c.lookup(pb::LookupRequest { user_id: String::new(), ..Default::default() })).unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    let e = rt.block_on(c.lookup(pb::LookupRequest { user_id: "x".repeat(300), ..Default::default() })).unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
    let e = rt
        .block_on(c.lookup(pb::LookupRequest { user_id: "bob".into(), verifier_threshold: 3, ..Default::default() }))
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    let e = rt.block_on(c.list_epochs(pb::ListEpochsRequest { page_size: 5000, ..Default::default() })).unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");

    // A registration, its idempotent resubmission, its status, and a version conflict.
    let client = realm.client(1);
    let bob = owner();
    let first = rt.block_on(client.register("bob", &bob, keys("b"))).unwrap();
    let found =
        rt.block_on(client.lookup("bob", LookupOptions { min_epoch: first.epoch, wait_ms: 20_000, epoch: 0 })).unwrap();
    let (entry, profile) = found.lookup.entry.clone().unwrap();
    let signatures = keyraft_client::sign_entry(&realm.name(), &entry, &[&bob]);
    let same = keyraft_core::Update { signed: keyraft_core::SignedEntry { entry: entry.clone(), signatures }, profile };
    let again = rt.block_on(c.update(update("bob", same.encode()))).unwrap().into_inner();
    assert!(again.duplicate);
    assert_eq!(again.epoch, first.epoch);
    let status = rt
        .block_on(c.get_update_status(pb::GetUpdateStatusRequest {
            update_id: first.update_id.clone(),
            index: entry.index.0.to_vec(),
            version: 0,
        }))
        .unwrap()
        .into_inner();
    assert_eq!(status.state, pb::get_update_status_response::State::InEpoch as i32);
    assert_eq!(status.epoch, first.epoch);
    let mut other = same.clone();
    other.profile.keys = keys("b2");
    other.signed.entry.profile_commitment = other.profile.commitment();
    other.signed.signatures = keyraft_client::sign_entry(&realm.name(), &other.signed.entry, &[&bob]);
    let e = rt.block_on(c.update(update("bob", other.encode()))).unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    assert!(e.message().contains("version"), "{e}");
    let status = rt
        .block_on(c.get_update_status(pb::GetUpdateStatusRequest {
            update_id: other.id().to_vec(),
            index: vec![],
            version: 0,
        }))
        .unwrap()
        .into_inner();
    assert_eq!(status.state, pb::get_update_status_response::State::Rejected as i32);
    assert!(status.reason.contains("version") && !status.retryable, "{status:?}");
    let unknown = rt
        .block_on(c.get_update_status(pb::GetUpdateStatusRequest { update_id: vec![7; 32], index: vec![], version: 0 }))
        .unwrap()
        .into_inner();
    assert_eq!(unknown.state, pb::get_update_status_response::State::Unknown as i32);
    let e = rt
        .block_on(c.get_update_status(pb::GetUpdateStatusRequest { update_id: vec![7; 5], index: vec![], version: 0 }))
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    // Someone else's index.
    let e = rt.block_on(c.update(update("carol", same.encode()))).unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");

    pagination_and_peer_authentication(&realm, &mut c);
}

/// Epochs page through, pinned; bad tokens are refused; the peer port requires the token.
fn pagination_and_peer_authentication(realm: &Realm, c: &mut KeyraftClient<tonic::transport::Channel>) {
    let rt = &realm.runtime;
    realm.wait_ratified(1, 3);
    let page = rt
        .block_on(c.list_epochs(pb::ListEpochsRequest { start_epoch: 1, page_size: 2, page_token: vec![] }))
        .unwrap()
        .into_inner();
    assert_eq!(page.epochs.len(), 2);
    assert_eq!(EpochHead::from_bytes(&page.epochs[1].head).unwrap().epoch, 2);
    let next = rt
        .block_on(c.list_epochs(pb::ListEpochsRequest {
            start_epoch: 0,
            page_size: 2,
            page_token: page.next_page_token,
        }))
        .unwrap()
        .into_inner();
    assert_eq!(EpochHead::from_bytes(&next.epochs[0].head).unwrap().epoch, 3);
    let mut token = next.next_page_token;
    while !token.is_empty() {
        token = rt
            .block_on(c.list_epochs(pb::ListEpochsRequest { start_epoch: 0, page_size: 2, page_token: token }))
            .unwrap()
            .into_inner()
            .next_page_token;
    }
    let e = rt
        .block_on(c.list_epochs(pb::ListEpochsRequest { start_epoch: 0, page_size: 2, page_token: vec![9; 17] }))
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");

    // The peer port refuses calls without the cluster token (with node 1's certificate).
    let mut anonymous =
        keyraft_proto::peer::peer_client::PeerClient::new(realm.node_channels(1).lazy(&realm.peer_addr(0)).unwrap());
    let e = rt.block_on(anonymous.status(StatusRequest {})).unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
}
