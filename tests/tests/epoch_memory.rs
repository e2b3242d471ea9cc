//! The client's epoch memory (rollback protection, protocol step 8) shared by clients that
//! require different verifier quorums: an answer seen under a lower quorum must not turn a
//! higher quorum's answer into a failure, and rollback protection stays as strong.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use keyraft_client::{Client, ClientError, ClientOptions, LookupOptions};
use keyraft_core::VerifyError;
use keyraft_tests::{serial, wait_for, Realm};
use std::collections::BTreeMap;

const ALICE: &str = "alice@example.com";

#[test]
fn a_lower_quorums_newer_epoch_does_not_fail_a_higher_quorums_lookup() {
    let _s = serial();
    let mut realm = Realm::start(|_| {});
    realm.start_verifier();
    let state = realm.path().join("client-state.json");
    let with = |realm: &Realm, verifiers: usize| {
        let options = ClientOptions {
            verifier_threshold: Some(verifiers),
            state_file: Some(state.clone()),
            ..Default::default()
        };
        let _g = realm.runtime.enter();
        Client::with_options(&realm.realm_file(), &[], &options).unwrap()
    };
    let (one, none) = (with(&realm, 1), with(&realm, 0));
    let alice = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let keys = BTreeMap::from([("pgp".to_owned(), b"alice".to_vec())]);
    realm.runtime.block_on(one.registration(ALICE, &alice).keys(keys).wait_for_quorum().send()).unwrap();
    let ratified = realm.runtime.block_on(one.lookup(ALICE, LookupOptions::default())).unwrap().lookup.epoch();

    // The verifier stops: epochs go on without its ratification.
    realm.kill_verifier();
    let newer = wait_for("an epoch the verifier has not ratified", || {
        let answer = realm.runtime.block_on(none.lookup(ALICE, LookupOptions::default())).unwrap();
        (answer.lookup.epoch() > ratified + 1).then_some(answer.lookup.epoch())
    });

    // A client requiring the verifier, reading the same memory, is still served the newest
    // epoch it ratified (fresh within the TTL), not refused for want of one after `newer`.
    let fresh = with(&realm, 1);
    for c in [&one, &fresh] {
        let answer = realm.runtime.block_on(c.lookup(ALICE, LookupOptions { wait_ms: 2_000, ..Default::default() }));
        let answer =
            answer.unwrap_or_else(|e| panic!("a lookup requiring the verifier failed after epoch {newer}: {e}"));
        assert!(answer.lookup.epoch() >= ratified && answer.lookup.epoch() < newer);
    }

    // Rollback protection is as strong: under the lower quorum, an epoch older than one seen
    // is still a rollback.
    let old = LookupOptions { epoch: ratified, ..Default::default() };
    let proof = realm.runtime.block_on(none.lookup(ALICE, old)).unwrap().proof;
    let options = ClientOptions { verifier_threshold: Some(0), state_file: Some(state), ..Default::default() };
    let checker = keyraft_client::ProofChecker::new(&realm.realm_file(), &options).unwrap();
    let e = checker.accept_current(ALICE, proof, keyraft_client::now_ms(), checker.newest_epoch_seen()).unwrap_err();
    assert!(matches!(e, ClientError::Misbehaved(VerifyError::Rollback { .. })), "{e}");
}
