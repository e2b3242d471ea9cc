//! A verifier process against a three-replica realm: it ratifies every epoch, an update can
//! wait for its ratification, and a verifier killed and restarted ratifies every missed epoch.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use ed25519_dalek::SigningKey;
use keyraft_client::{Client, LookupOptions};
use keyraft_core::{decode_canonical, verify_lookup, LookupProof};
use keyraft_proto::pb::keyraft_client::KeyraftClient;
use keyraft_proto::pb::GetEpochRequest;
use keyraft_tests::{serial, wait_for, Realm};
use std::collections::BTreeMap;

fn verifier_signed(realm: &Realm, epoch: u64) -> bool {
    let _g = realm.runtime.enter();
    let mut c = KeyraftClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", realm.public_addr(0))).unwrap().connect_lazy(),
    );
    realm
        .runtime
        .block_on(c.get_epoch(GetEpochRequest { epoch }))
        .map(|r| !r.into_inner().verifier_signatures.is_empty())
        .unwrap_or(false)
}

#[test]
fn a_verifier_ratifies_every_epoch_including_the_ones_it_missed() {
    let _s = serial();
    let mut realm = Realm::start(|_| {});
    realm.start_verifier();
    let mut file = realm.realm_file();
    file.verifier_threshold = 1;
    let client = {
        let _g = realm.runtime.enter();
        Client::new(&file, &[realm.public_addr(1)]).unwrap()
    };

    wait_for("the verifier to ratify epoch 1", || verifier_signed(&realm, 1).then_some(()));
    // An update that waits for the verifier returns a proof carrying its ratification.
    let alice = SigningKey::generate(&mut rand::rngs::OsRng);
    let first = realm.runtime.block_on(client.register("alice@example.com", &alice, BTreeMap::new())).unwrap();
    let found = realm
        .runtime
        .block_on(
            client.lookup("alice@example.com", LookupOptions { epoch: 0, min_epoch: first.epoch, wait_ms: 30_000 }),
        )
        .unwrap();
    assert_eq!(found.lookup.ratified_by.len(), 1);
    let proof: LookupProof = decode_canonical(&found.proof).unwrap();
    verify_lookup(client.realm(), "alice@example.com", &proof, keyraft_client::now_ms(), None).unwrap();

    // Killed, the verifier misses epochs; restarted, it ratifies each of them.
    realm.kill_verifier();
    let missed_from = realm.status(0).unwrap().ratified_epoch + 1;
    realm.wait_ratified(0, missed_from + 3);
    assert!(!verifier_signed(&realm, missed_from + 2));
    realm.start_verifier();
    let newest = realm.status(0).unwrap().ratified_epoch;
    wait_for("the restarted verifier to ratify the newest epoch", || verifier_signed(&realm, newest).then_some(()));
    for epoch in 1..=newest {
        assert!(verifier_signed(&realm, epoch), "epoch {epoch} was not ratified");
    }
    // Operators see it in the status.
    let status = realm.status(0).unwrap();
    assert_eq!(status.verifiers.len(), 1);
    assert!(status.verifiers[0].latest_ratified_epoch >= newest, "{status:?}");
}
