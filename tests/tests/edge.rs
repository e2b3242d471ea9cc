//! Requests at the edges, against real replicas: forged, foreign and misused page tokens,
//! epochs the realm cannot reach, `History` while a verifier lags, and an update whose caller
//! gave up while it was being proposed.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use ed25519_dalek::SigningKey;
use keyraft_client::LookupOptions;
use keyraft_core::lookup::verify_lookup_at;
use keyraft_core::{Canonical, EpochHead, LookupProof, SignedEntry, Update};
use keyraft_proto::pb::get_update_status_response::State;
use keyraft_proto::pb::keyraft_client::KeyraftClient;
use keyraft_proto::pb::{self, HistoryRequest, ListEpochsRequest, LookupRequest};
use keyraft_tests::{serial, wait_for, Realm};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::Code;

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";
/// What "at once" means here: far below any wait a replica may take (the calls below ask for
/// 20 s or more), generous for two loaded cores.
const PROMPT: Duration = Duration::from_secs(3);

fn keys(v: &str) -> BTreeMap<String, Vec<u8>> {
    BTreeMap::from([("pgp".to_owned(), v.as_bytes().to_vec())])
}

fn owner() -> SigningKey {
    SigningKey::generate(&mut rand::rngs::OsRng)
}

fn grpc(realm: &Realm, i: usize) -> KeyraftClient<Channel> {
    let _g = realm.runtime.enter();
    KeyraftClient::new(realm.public_channel(i))
}

fn timed<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.set_timeout(timeout);
    r
}

/// Calls `call` again while the replica says it has not reached the epoch a token is pinned to
/// (another replica issued it a moment ago), as a client would.
fn unless_lagging<T>(mut call: impl FnMut() -> Result<T, tonic::Status>) -> Result<T, tonic::Status> {
    wait_for("a replica to reach the epoch a listing is pinned to", || match call() {
        Err(e) if e.code() == Code::Unavailable && e.message().contains("it lags") => None,
        other => Some(other),
    })
}

fn list_epochs(
    realm: &Realm,
    i: usize,
    page_size: u32,
    page_token: Vec<u8>,
) -> Result<pb::ListEpochsResponse, tonic::Status> {
    unless_lagging(|| {
        let request = ListEpochsRequest { start_epoch: 1, page_size, page_token: page_token.clone() };
        realm
            .runtime
            .block_on(grpc(realm, i).list_epochs(timed(request, Duration::from_secs(20))))
            .map(tonic::Response::into_inner)
    })
}

fn history(
    realm: &Realm,
    i: usize,
    user_id: &str,
    verifier_threshold: u32,
    page_size: u32,
    page_token: Vec<u8>,
) -> Result<pb::HistoryResponse, tonic::Status> {
    unless_lagging(|| {
        let request =
            HistoryRequest { user_id: user_id.into(), page_size, page_token: page_token.clone(), verifier_threshold };
        realm
            .runtime
            .block_on(grpc(realm, i).history(timed(request, Duration::from_secs(20))))
            .map(tonic::Response::into_inner)
    })
}

fn assert_foreign_token(result: Result<impl std::fmt::Debug, tonic::Status>) {
    let e = result.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(
        e.message().contains("page_token") && e.message().contains("not issued by this realm for this call"),
        "{e}"
    );
}

fn epoch_of(info: &pb::EpochInfo) -> u64 {
    EpochHead::from_bytes(&info.head).unwrap().epoch
}

#[test]
fn page_tokens_are_authenticated_and_unreachable_epochs_are_refused_at_once() {
    let _s = serial();
    let realm = Realm::start(|_| {});
    let client = realm.client(0);
    let (alice, bob) = (owner(), owner());
    let registered = realm.runtime.block_on(client.register(ALICE, &alice, keys("a1"))).unwrap().epoch;
    realm.runtime.block_on(client.register(BOB, &bob, keys("b1"))).unwrap();
    realm.wait_ratified(0, registered);
    let updated = realm.runtime.block_on(client.update(ALICE, &alice, None, keys("a2"))).unwrap().epoch;
    for i in 0..3 {
        realm.wait_ratified(i, updated.max(4));
    }
    let newest = realm.status(0).unwrap().last_epoch;

    // A hand-made token in the old unauthenticated format (version 1, next epoch, pinned
    // epoch), pinned at 2^64-1 and starting past the newest epoch: the replica used to loop
    // over epochs that do not exist, without end and without yielding.
    let mut forged = vec![1u8];
    forged.extend_from_slice(&(newest + 1).to_be_bytes());
    forged.extend_from_slice(&u64::MAX.to_be_bytes());
    let started = Instant::now();
    assert_foreign_token(list_epochs(&realm, 0, 10, forged));
    assert!(started.elapsed() < PROMPT, "refusing a forged token took {:?}", started.elapsed());
    // The replica is healthy and serves on.
    assert!(list_epochs(&realm, 0, 2, vec![]).unwrap().epochs.len() == 2);

    // One listing across every replica: any replica accepts another's token, and the pages
    // join up, pinned to the epoch of the first page.
    let first = list_epochs(&realm, 0, 2, vec![]).unwrap();
    let mut listed: Vec<u64> = first.epochs.iter().map(epoch_of).collect();
    let mut token = first.next_page_token;
    let issued = token.clone();
    let mut replica = 0;
    while !token.is_empty() {
        replica = (replica + 1) % 3;
        let page = list_epochs(&realm, replica, 2, token).unwrap();
        listed.extend(page.epochs.iter().map(epoch_of));
        token = page.next_page_token;
    }
    assert_eq!(listed, (1..=listed.len() as u64).collect::<Vec<_>>());
    assert!(listed.len() as u64 >= newest);

    // Every byte of a token matters: each one changed is refused.
    for i in 0..issued.len() {
        let mut flipped = issued.clone();
        flipped[i] ^= 0x40;
        assert_foreign_token(list_epochs(&realm, i % 3, 2, flipped));
    }
    let mut longer = issued.clone();
    longer.push(0);
    assert_foreign_token(list_epochs(&realm, 0, 2, longer));
    assert_foreign_token(list_epochs(&realm, 0, 2, issued[..issued.len() - 1].to_vec()));

    // History tokens: bound to the call and to the identity, accepted by every replica.
    let alice_page = history(&realm, 0, ALICE, 0, 1, vec![]).unwrap();
    assert_eq!(alice_page.versions.iter().map(|v| v.version).collect::<Vec<_>>(), [1]);
    let alice_token = alice_page.next_page_token;
    assert!(!alice_token.is_empty());
    assert_foreign_token(history(&realm, 0, BOB, 0, 1, alice_token.clone()));
    assert_foreign_token(history(&realm, 1, ALICE, 0, 1, issued.clone()));
    assert_foreign_token(list_epochs(&realm, 2, 1, alice_token.clone()));
    let rest = history(&realm, 2, ALICE, 0, 1, alice_token).unwrap();
    assert_eq!(rest.versions.iter().map(|v| v.version).collect::<Vec<_>>(), [0]);

    // Epochs the realm cannot reach soon are refused at once, naming the newest epoch,
    // however long the caller offers to wait.
    let mut c = grpc(&realm, 1);
    for request in [
        LookupRequest { user_id: ALICE.into(), epoch: u64::MAX, wait_ms: 20_000, ..Default::default() },
        LookupRequest { user_id: ALICE.into(), min_epoch: u64::MAX, wait_ms: 20_000, ..Default::default() },
        LookupRequest { user_id: ALICE.into(), epoch: newest + 100_000, wait_ms: 20_000, ..Default::default() },
    ] {
        let started = Instant::now();
        let e = realm.runtime.block_on(c.lookup(timed(request.clone(), Duration::from_secs(30)))).unwrap_err();
        assert!(started.elapsed() < PROMPT, "{request:?} took {:?}", started.elapsed());
        assert_eq!(e.code(), Code::OutOfRange, "{request:?}: {e}");
        assert!(e.message().contains("newest epoch"), "{e}");
    }
}

#[test]
fn history_proves_only_epochs_with_the_requested_verifier_ratifications() {
    let _s = serial();
    let mut realm = Realm::start(|_| {});
    let client = realm.client(0);
    let alice = owner();
    let registered = realm.runtime.block_on(client.register(ALICE, &alice, keys("a1"))).unwrap().epoch;
    realm.wait_ratified(0, registered);

    // No verifier has ratified anything: a History requiring one says "not ratified yet",
    // as Lookup does, instead of proving an epoch without the ratification.
    let e = history(&realm, 0, ALICE, 1, 10, vec![]).unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e}");
    assert!(e.message().contains("verifier ratification"), "{e}");

    // The verifier ratifies the registration's epoch, then stops: later epochs lack it.
    realm.start_verifier();
    let mut c = grpc(&realm, 0);
    wait_for("the verifier to ratify the registration's epoch", || {
        let request = LookupRequest {
            user_id: ALICE.into(),
            min_epoch: registered,
            verifier_threshold: 1,
            wait_ms: 1_000,
            ..Default::default()
        };
        realm.runtime.block_on(c.lookup(timed(request, Duration::from_secs(10)))).ok()
    });
    realm.kill_verifier();
    realm.wait_ratified(0, registered);
    let updated = realm.runtime.block_on(client.update(ALICE, &alice, None, keys("a2"))).unwrap().epoch;
    for i in 0..3 {
        realm.wait_ratified(i, updated);
    }

    let mut file = realm.realm_file();
    file.verifier_threshold = 1;
    let requiring_one = file.client_realm().unwrap();
    for i in 0..3 {
        let page = history(&realm, i, ALICE, 1, 10, vec![]).unwrap();
        for v in &page.versions {
            let proof = LookupProof::from_bytes(&v.proof).unwrap();
            assert!(
                !proof.verifier_signatures.is_empty(),
                "version {} is proven at epoch {}, which no verifier ratified",
                v.version,
                v.epoch
            );
            let verified = verify_lookup_at(&requiring_one, ALICE, &proof, v.epoch).expect("the proof verifies");
            assert_eq!(verified.entry.as_ref().map(|(e, _)| e.version), Some(v.version));
        }
        assert_eq!(page.versions.iter().map(|v| v.version).collect::<Vec<_>>(), [0], "replica {}", i + 1);
        assert!(page.next_page_token.is_empty());
    }
    // Requiring no verifier, the update is listed.
    let page = history(&realm, 0, ALICE, 0, 10, vec![]).unwrap();
    assert_eq!(page.versions.iter().map(|v| (v.version, v.epoch)).collect::<Vec<_>>(), [(1, updated), (0, registered)]);
}

#[test]
fn an_update_whose_caller_gave_up_is_not_pending_forever() {
    let _s = serial();
    let mut realm = Realm::start(|_| {});
    let leader = realm.wait_leader();
    let client = realm.client(leader);
    // The registration is built (and its VRF index learnt) while the realm is whole.
    let absent = realm.runtime.block_on(client.lookup(ALICE, LookupOptions::default())).unwrap();
    assert!(absent.lookup.entry.is_none());
    let alice = owner();
    let profile = keyraft_client::new_profile(keys("a1"));
    let entry = keyraft_core::Entry {
        index: absent.lookup.index,
        version: 0,
        update_policy: keyraft_core::Policy::single(keyraft_client::public_key(&alice)),
        profile_commitment: profile.commitment(),
    };
    let signatures = keyraft_client::sign_entry(&realm.name(), &entry, &[&alice]);
    let update = Update { signed: SignedEntry { entry: entry.clone(), signatures }, profile };
    let id = update.id().to_vec();

    // Without a quorum the leader cannot commit: the caller gives up after 200 ms, which drops
    // the replica's handler while it waits for the proposal.
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    for &i in &followers {
        realm.kill(i);
    }
    let mut c = grpc(&realm, leader);
    let request = pb::UpdateRequest {
        user_id: ALICE.into(),
        update: update.encode(),
        verifier_threshold: None,
        wait_ms: 0,
        registration: None,
        recovery: false,
    };
    let e = realm.runtime.block_on(c.update(timed(request, Duration::from_millis(200)))).unwrap_err();
    assert!(matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled), "{e}");

    // The quorum returns; the proposal (still in the leader's log) commits, or a new leader
    // drops it. Either way the realm moves on, and nobody waits for the update any more.
    for &i in &followers {
        realm.start_replica(i);
    }
    let now = realm.status(leader).unwrap().last_epoch;
    for i in 0..3 {
        realm.wait_ratified(i, now + 2);
    }
    let status = |index: Vec<u8>| {
        let request = pb::GetUpdateStatusRequest { update_id: id.clone(), index, version: 0 };
        realm.runtime.block_on(grpc(&realm, leader).get_update_status(request)).unwrap().into_inner()
    };
    let found = realm
        .runtime
        .block_on(grpc(&realm, leader).lookup(LookupRequest { user_id: ALICE.into(), ..Default::default() }))
        .unwrap()
        .into_inner();
    let applied = LookupProof::from_bytes(&found.proof).unwrap().entry.is_some_and(|(e, _)| e == entry);
    let with_index = status(entry.index.0.to_vec());
    let without_index = status(vec![]);
    eprintln!("applied: {applied}; status with index {with_index:?}, without {without_index:?}");
    assert_ne!(without_index.state, State::Pending as i32, "the update id leaked in the pending set");
    if applied {
        assert_eq!(with_index.state, State::InEpoch as i32, "{with_index:?}");
    } else {
        assert_eq!(with_index.state, State::Unknown as i32, "{with_index:?}");
    }
}
