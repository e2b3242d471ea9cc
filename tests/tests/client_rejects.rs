//! A verifying client against a lying replica (a test-only fake that answers lookups with
//! replayed or altered proofs taken from a real realm): it rejects a rolled-back epoch (also
//! across runs, through its state file, and in the CLI), a head older than its TTL, a proof
//! without the replica majority, a proof with any byte changed, and a watch that hides a
//! change in a heartbeat or goes back in time.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use keyraft_client::{Client, ClientError, ClientOptions, LookupOptions};
use keyraft_core::{LookupProof, VerifyError};
use keyraft_proto::pb;
use keyraft_tests::fake::FakeReplica;
use keyraft_tests::{keyraft_bin, serial, Realm};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

const ALICE: &str = "alice@example.com";

/// A fake replica answering every lookup with the bytes in `answer`.
fn replaying(realm: &Realm, answer: Arc<Mutex<Vec<u8>>>) -> String {
    FakeReplica::default()
        .lookup(move |_| Ok(pb::LookupResponse { proof: answer.lock().unwrap().clone(), newest_epoch_hint: 0 }))
        .serve(realm)
}

fn client(realm: &Realm, endpoint: &str, options: ClientOptions) -> Client {
    let _g = realm.runtime.enter();
    let options = ClientOptions { verifier_threshold: Some(0), ..options };
    Client::with_options(&realm.realm_file(), &[endpoint.to_owned()], &options).unwrap()
}

#[test]
fn a_client_rejects_rolled_back_stale_under_signed_and_tampered_answers() {
    let _s = serial();
    let realm = Realm::start(|_| {});
    let state = realm.path().join("client-state.json");
    let with_state = || ClientOptions { state_file: Some(state.clone()), ..ClientOptions::default() };
    let honest = client(&realm, &realm.public_addr(0), with_state());
    let alice = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let keys = BTreeMap::from([("pgp".to_owned(), b"alice".to_vec())]);
    let registered = realm.runtime.block_on(honest.register(ALICE, &alice, keys)).unwrap();
    let at = |min_epoch| LookupOptions { min_epoch, wait_ms: 30_000, epoch: 0 };
    let old = realm.runtime.block_on(honest.lookup(ALICE, at(registered.epoch))).unwrap();
    let new = realm.runtime.block_on(honest.lookup(ALICE, at(old.lookup.epoch() + 2))).unwrap();
    assert!(new.lookup.epoch() > old.lookup.epoch());

    // Rollback: the old proof is valid on its own, but this client (and any later client
    // reading the same state file) has seen a newer epoch.
    let answer = Arc::new(Mutex::new(old.proof.clone()));
    let liar = replaying(&realm, answer.clone());
    let e = realm.runtime.block_on(client(&realm, &liar, with_state()).lookup(ALICE, at(0))).unwrap_err();
    assert!(
        matches!(e, ClientError::Misbehaved(VerifyError::Rollback { got, last_seen }) if got == old.lookup.epoch() && last_seen >= new.lookup.epoch()),
        "{e}"
    );
    assert!(e.is_misbehavior());
    let forgetful = client(&realm, &liar, ClientOptions::default());
    assert_eq!(realm.runtime.block_on(forgetful.lookup(ALICE, at(0))).unwrap().lookup.epoch(), old.lookup.epoch());
    let out = std::process::Command::new(keyraft_bin())
        .args(["lookup", "--realm", "realm.json", "--verifiers", "0", "--endpoint", &liar, ALICE])
        .env("KEYRAFT_STATE_FILE", &state)
        .current_dir(realm.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("rollback"), "{stderr}");

    // A head older than the client's TTL: no fresh answer, not accepted.
    *answer.lock().unwrap() = new.proof.clone();
    let impatient = client(&realm, &liar, ClientOptions { epoch_ttl_ms: Some(1), ..ClientOptions::default() });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let e = loop {
        // The head may be younger than 1 ms on a fast machine: poll until it is not.
        match realm.runtime.block_on(impatient.lookup(ALICE, at(0))) {
            Err(e) => break e,
            Ok(_) => assert!(std::time::Instant::now() < deadline, "a 1 ms TTL never expired"),
        }
    };
    assert!(matches!(e, ClientError::Stale(VerifyError::HeadExpired { .. })), "{e}");

    // A proof signed by fewer than a majority of the replicas.
    let mut proof = LookupProof::from_bytes(&new.proof).unwrap();
    proof.replica_signatures.truncate(1);
    *answer.lock().unwrap() = keyraft_core::Canonical::encode(&proof);
    let e = realm.runtime.block_on(forgetful.lookup(ALICE, at(0))).unwrap_err();
    assert!(matches!(e, ClientError::Misbehaved(VerifyError::ReplicaMajorityMissing { have: 1, need: 2 })), "{e}");

    // Any byte changed, anywhere in the proof.
    for i in 0..new.proof.len() {
        let mut bad = new.proof.clone();
        bad[i] ^= 0x01;
        *answer.lock().unwrap() = bad;
        match realm.runtime.block_on(forgetful.lookup(ALICE, at(0))) {
            Ok(_) => panic!("a proof with byte {i} changed was accepted"),
            Err(e) => assert!(matches!(e, ClientError::Misbehaved(_) | ClientError::Stale(_)), "byte {i}: {e}"),
        }
    }
}

#[test]
fn a_watcher_rejects_a_hidden_change_and_a_step_back() {
    let _s = serial();
    let realm = Realm::start(|_| {});
    let honest = client(&realm, &realm.public_addr(0), ClientOptions::default());
    let alice = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let at = |min_epoch| LookupOptions { min_epoch, wait_ms: 30_000, epoch: 0 };
    let v0 = realm.runtime.block_on(honest.register(ALICE, &alice, BTreeMap::new())).unwrap();
    let before = realm.runtime.block_on(honest.lookup(ALICE, at(v0.epoch))).unwrap();
    let v1 = realm.runtime.block_on(honest.update(ALICE, &alice, None, BTreeMap::new())).unwrap();
    let after = realm.runtime.block_on(honest.lookup(ALICE, at(v1.epoch))).unwrap();
    assert!(after.lookup.epoch() > before.lookup.epoch());
    let event = |changed: bool, proof: &[u8]| pb::WatchEvent {
        event: Some(if changed {
            pb::watch_event::Event::Changed(proof.to_vec())
        } else {
            pb::watch_event::Event::Heartbeat(proof.to_vec())
        }),
    };
    let story = |events: Vec<pb::WatchEvent>| {
        let liar = FakeReplica::default().watch(move |_| events.clone()).serve(&realm);
        let watcher = client(&realm, &liar, ClientOptions::default());
        realm.runtime.block_on(async {
            let mut watch = watcher.watch(ALICE, 0).await.unwrap();
            let first = watch.next().await.unwrap();
            assert!(first.is_ok(), "the first event is honest: {first:?}");
            watch.next().await.unwrap().unwrap_err()
        })
    };
    // Version 1 presented as "unchanged" since version 0: a hidden change.
    let e = story(vec![event(true, &before.proof), event(false, &after.proof)]);
    assert!(matches!(&e, ClientError::Contradicted(m) if m.contains("hidden")), "{e}");
    // Back to an older epoch.
    let e = story(vec![event(true, &after.proof), event(true, &before.proof)]);
    assert!(matches!(&e, ClientError::Contradicted(m) if m.contains("back")), "{e}");
    // A "change" that shows the same entry.
    let e = story(vec![event(true, &before.proof), event(true, &before.proof)]);
    assert!(e.is_misbehavior(), "{e}");
}
