//! Three replicas and two verifier processes: an update waiting for both returns a proof
//! carrying both ratifications; with one verifier stopped, clients requiring both get a clear
//! error while clients requiring one are served; restarted, the verifier ratifies every epoch
//! it missed, and operators see both verifiers in the status.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use ed25519_dalek::SigningKey;
use keyraft_client::{ClientError, ClientOptions, LookupOptions};
use keyraft_core::{LookupProof, VerifyError};
use keyraft_proto::pb::keyraft_client::KeyraftClient;
use keyraft_proto::pb::GetEpochRequest;
use keyraft_tests::{serial, wait_for, Realm};
use std::collections::BTreeMap;

/// How many verifiers ratified `epoch`, as replica 1 stores it.
fn ratifications(realm: &Realm, epoch: u64) -> usize {
    let _g = realm.runtime.enter();
    let mut c = KeyraftClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", realm.public_addr(0))).unwrap().connect_lazy(),
    );
    realm
        .runtime
        .block_on(c.get_epoch(GetEpochRequest { epoch }))
        .map_or(0, |r| r.into_inner().verifier_signatures.len())
}

#[test]
fn two_verifiers_ratify_and_each_client_chooses_how_many_it_requires() {
    let _s = serial();
    let mut realm = Realm::start_with(&["--verifiers", "2"], |_| {});
    assert_eq!(realm.realm_file().verifier_keys.len(), 2);
    assert_eq!(realm.realm_file().verifier_threshold, 1, "the dev realm file requires a verifier");
    realm.start_verifier_n(1);
    realm.start_verifier_n(2);
    wait_for("both verifiers to ratify epoch 1", || (ratifications(&realm, 1) == 2).then_some(()));
    let both = realm.client_requiring(1, 2);
    let one = realm.client_requiring(2, 1);

    // An update that waits for both verifiers returns a proof carrying both ratifications.
    let alice = SigningKey::generate(&mut rand::rngs::OsRng);
    let keys = BTreeMap::from([("pgp".to_owned(), b"alice".to_vec())]);
    let outcome = realm
        .runtime
        .block_on(both.registration("alice@example.com", &alice).keys(keys).wait_for_quorum().send())
        .unwrap();
    let proof = outcome.proof.expect("a proof, since the update waited for the quorum");
    assert_eq!(proof.lookup.ratified_by.len(), 2);
    assert_eq!(LookupProof::from_bytes(&proof.proof).unwrap().verifier_signatures.len(), 2);
    assert_eq!(proof.lookup.entry.as_ref().unwrap().0.version, 0);

    // Verifier 2 stops; verifier 1 keeps ratifying.
    realm.kill_verifier_n(2);
    let stopped_at = realm.status(0).unwrap().ratified_epoch;
    let newest = wait_for("verifier 1 to ratify epochs verifier 2 misses", || {
        let e = realm.status(0)?.ratified_epoch;
        (e >= stopped_at + 3 && ratifications(&realm, e) == 1).then_some(e)
    });
    let recent = LookupOptions { epoch: 0, min_epoch: newest, wait_ms: 1_000 };
    let e = realm.runtime.block_on(both.lookup("alice@example.com", recent)).unwrap_err();
    assert!(matches!(e, ClientError::Unavailable(_)) && e.to_string().contains("2 verifier ratifications"), "{e}");
    let served = realm.runtime.block_on(one.lookup("alice@example.com", recent)).unwrap();
    assert!(served.lookup.epoch() >= newest);
    assert_eq!(served.lookup.ratified_by.len(), 1);
    // A client requiring both with a short TTL is never served stale data: once the last
    // epoch both ratified is older than its TTL, it says so.
    let strict = {
        let _g = realm.runtime.enter();
        let options =
            ClientOptions { verifier_threshold: Some(2), epoch_ttl_ms: Some(1_500), ..ClientOptions::default() };
        keyraft_client::Client::with_options(&realm.realm_file(), &[realm.public_addr(0)], &options).unwrap()
    };
    let stale = wait_for("the epochs both verifiers ratified to age past the TTL", || {
        realm.runtime.block_on(strict.lookup("alice@example.com", LookupOptions::default())).err()
    });
    assert!(matches!(stale, ClientError::Stale(VerifyError::HeadExpired { .. })), "{stale}");
    assert!(stale.to_string().contains("older than the TTL"), "{stale}");

    // Restarted, verifier 2 ratifies every epoch it missed.
    realm.start_verifier_n(2);
    let newest = realm.status(0).unwrap().ratified_epoch;
    wait_for("verifier 2 to ratify the newest epoch", || (ratifications(&realm, newest) == 2).then_some(()));
    for epoch in 1..=newest {
        assert_eq!(ratifications(&realm, epoch), 2, "epoch {epoch}");
    }
    let fresh = realm
        .runtime
        .block_on(both.lookup("alice@example.com", LookupOptions { epoch: 0, min_epoch: newest, wait_ms: 30_000 }))
        .unwrap();
    assert_eq!(fresh.lookup.ratified_by.len(), 2);

    // Operators see both verifiers and how far each has ratified.
    let status = realm.status(0).unwrap();
    assert_eq!(status.verifiers.len(), 2);
    assert!(status.verifiers.iter().all(|v| v.latest_ratified_epoch >= newest), "{status:?}");
}
