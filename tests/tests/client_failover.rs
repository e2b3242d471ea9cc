//! A verifying client among replicas of uneven use: an epoch not ratified by the verifiers it
//! requires yet is "try again", not misbehaviour (a lookup, a history page or a watch event
//! lacking them sends it to the next replica), while anything false in such a proof still is
//! misbehaviour; and a replica serving old epochs is left for a fresh one and asked last for a
//! while.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use keyraft_client::{Client, ClientError, ClientOptions, LookupOptions};
use keyraft_core::{Canonical, LookupProof, VerifyError};
use keyraft_proto::pb;
use keyraft_tests::fake::FakeReplica;
use keyraft_tests::{serial, wait_for, Realm};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const ALICE: &str = "alice@example.com";

fn client(realm: &Realm, endpoints: &[String], options: ClientOptions) -> Client {
    let _g = realm.runtime.enter();
    Client::with_options(&realm.realm_file(), endpoints, &options).unwrap()
}

/// A replica serving `proof` for every lookup, history and watch.
fn serving(realm: &Realm, proof: Vec<u8>, epoch: u64) -> String {
    let (history, watch) = (proof.clone(), proof.clone());
    FakeReplica::default()
        .lookup(move |_| Ok(pb::LookupResponse { proof: proof.clone(), newest_epoch_hint: 0 }))
        .history(move |_| {
            Ok(pb::HistoryResponse {
                versions: vec![pb::HistoryVersion { version: 0, epoch, proof: history.clone() }],
                next_page_token: Vec::new(),
                current: history.clone(),
            })
        })
        .watch(move |_| vec![pb::WatchEvent { event: Some(pb::watch_event::Event::Changed(watch.clone())) }])
        .serve(realm)
}

fn not_ratified_yet(e: &ClientError) -> bool {
    matches!(e, ClientError::Unavailable(m) if m.contains("not ratified yet")) && !e.is_misbehavior()
}

#[test]
fn an_epoch_lacking_the_verifiers_ratifications_is_not_misbehaviour_and_another_replica_is_asked() {
    let _s = serial();
    let mut realm = Realm::start(|_| {});
    realm.start_verifier();
    let honest = realm.client_requiring(0, 1);
    let alice = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let keys = BTreeMap::from([("pgp".to_owned(), b"alice".to_vec())]);
    let registered =
        realm.runtime.block_on(honest.registration(ALICE, &alice).keys(keys).wait_for_quorum().send()).unwrap();
    let ratified = registered.proof.unwrap();
    let epoch = ratified.lookup.epoch();
    // The same proof before the verifier ratified its epoch: true, but not enough for a
    // client requiring a verifier.
    let mut proof = LookupProof::from_bytes(&ratified.proof).unwrap();
    assert_eq!(proof.verifier_signatures.len(), 1);
    proof.verifier_signatures.clear();
    let unratified = serving(&realm, proof.encode(), epoch);
    let requiring_one = ClientOptions { verifier_threshold: Some(1), ..ClientOptions::default() };

    let alone = client(&realm, std::slice::from_ref(&unratified), requiring_one.clone());
    let e = realm.runtime.block_on(alone.lookup(ALICE, LookupOptions::default())).unwrap_err();
    assert!(not_ratified_yet(&e), "{e}");
    let at = LookupOptions { epoch, ..LookupOptions::default() };
    let e = realm.runtime.block_on(alone.lookup(ALICE, at)).unwrap_err();
    assert!(not_ratified_yet(&e), "{e}");
    let e = realm.runtime.block_on(alone.history(ALICE, 10, &[])).unwrap_err();
    assert!(not_ratified_yet(&e), "{e}");
    let e = realm.runtime.block_on(async {
        let mut watch = alone.watch(ALICE, 0).await.unwrap();
        watch.next().await.unwrap().unwrap_err()
    });
    assert!(not_ratified_yet(&e), "{e}");

    // With an honest replica after it, the client is served by that one.
    let both = client(&realm, &[unratified.clone(), realm.public_addr(1)], requiring_one.clone());
    let answer = realm.runtime.block_on(both.lookup(ALICE, LookupOptions::default())).unwrap();
    assert_eq!(answer.lookup.ratified_by.len(), 1);
    let page = realm.runtime.block_on(both.history(ALICE, 10, &[])).unwrap();
    assert_eq!(page.versions.len(), 1);
    assert_eq!(page.versions[0].answer.lookup.ratified_by.len(), 1);
    let first = realm.runtime.block_on(async {
        let mut watch = both.watch(ALICE, 0).await.unwrap();
        watch.next().await.unwrap()
    });
    assert_eq!(first.unwrap().answer().lookup.ratified_by.len(), 1);

    // Lacking ratifications does not excuse anything else: a profile that is not the one the
    // entry commits to is still misbehaviour.
    proof.entry.as_mut().unwrap().1.nonce[0] ^= 1;
    let lying = serving(&realm, proof.encode(), epoch);
    let liar = client(&realm, &[lying], requiring_one);
    let e = realm.runtime.block_on(liar.lookup(ALICE, LookupOptions::default())).unwrap_err();
    assert!(matches!(e, ClientError::Misbehaved(VerifyError::ProfileCommitmentMismatch)), "{e}");
}

#[test]
fn a_client_leaves_a_replica_serving_old_epochs_for_a_fresh_one_and_asks_it_last_afterwards() {
    let _s = serial();
    let realm = Realm::start(|_| {});
    let honest = realm.client(0);
    let alice = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    realm.runtime.block_on(honest.register(ALICE, &alice, BTreeMap::new())).unwrap();
    let old = realm
        .runtime
        .block_on(honest.lookup(ALICE, LookupOptions { min_epoch: 2, wait_ms: 30_000, epoch: 0 }))
        .unwrap();
    const TTL_MS: u64 = 5_000;
    let issued = old.lookup.head.issue_time_ms;
    wait_for("the old head to age past the TTL", || (keyraft_client::now_ms() > issued + TTL_MS).then_some(()));

    // A zombie replica, frozen at an epoch older than the client's TTL, listed first.
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    let proof = old.proof.clone();
    let zombie = FakeReplica::default()
        .lookup(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(pb::LookupResponse { proof: proof.clone(), newest_epoch_hint: 0 })
        })
        .serve(&realm);
    let options = ClientOptions { verifier_threshold: Some(0), epoch_ttl_ms: Some(TTL_MS), ..ClientOptions::default() };
    let c = client(&realm, &[zombie, realm.public_addr(2)], options);
    let fresh = realm.runtime.block_on(c.lookup(ALICE, LookupOptions::default())).unwrap();
    assert!(fresh.lookup.epoch() > old.lookup.epoch());
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    // The next lookups go to the fresh replica first.
    for _ in 0..3 {
        realm.runtime.block_on(c.lookup(ALICE, LookupOptions::default())).unwrap();
    }
    assert_eq!(asked.load(Ordering::SeqCst), 1, "the stale replica was asked again");
}

#[test]
fn a_replica_that_has_not_reached_the_clients_epoch_is_left_for_the_next() {
    let _s = serial();
    let realm = Realm::start(|_| {});
    let honest = realm.client(0);
    let alice = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    realm.runtime.block_on(honest.register(ALICE, &alice, BTreeMap::new())).unwrap();
    // A replica far behind the epochs this client has seen refuses them as out of its range
    // (as a replica frozen by a full disk or a partition does): not a final answer while
    // another replica may have them.
    let behind = FakeReplica::default()
        .lookup(|_| Err(tonic::Status::out_of_range("epoch 500 is beyond this replica's newest epoch 3")))
        .serve(&realm);
    let options = ClientOptions { verifier_threshold: Some(0), ..ClientOptions::default() };
    let c = client(&realm, &[behind.clone(), realm.public_addr(1)], options.clone());
    realm.runtime.block_on(c.lookup(ALICE, LookupOptions::default())).unwrap();
    // Alone, its refusal is what the client reports.
    let alone = client(&realm, &[behind], options);
    let e = realm.runtime.block_on(alone.lookup(ALICE, LookupOptions::default())).unwrap_err();
    assert!(matches!(e, ClientError::Refused { code: tonic::Code::OutOfRange, .. }), "{e}");
}
