//! Three replicas and two verifier processes: an update waiting for both returns a proof
//! carrying both ratifications; with one verifier stopped, clients requiring both get a clear
//! error while clients requiring one are served; restarted, the verifier ratifies every epoch
//! it missed, and operators see both verifiers in the status. A verifier stopped (SIGKILL,
//! SIGTERM) in the middle of a catch-up, with epochs verified but not ratified, ratifies them
//! all once restarted, and signs no head off the chain it verified.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use ed25519_dalek::SigningKey;
use keyraft_client::{ClientError, ClientOptions, LookupOptions};
use keyraft_core::{Canonical, EpochHead, LookupProof, VerifyError};
use keyraft_proto::pb::keyraft_client::KeyraftClient;
use keyraft_proto::pb::{GetEpochRequest, ListEpochsRequest};
use keyraft_tests::fake::FakeReplica;
use keyraft_tests::{serial, wait_for, Realm};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// How many verifiers ratified `epoch`, as replica 1 stores it.
fn ratifications(realm: &Realm, epoch: u64) -> usize {
    let _g = realm.runtime.enter();
    let mut c = KeyraftClient::new(realm.public_channel(0));
    realm
        .runtime
        .block_on(c.get_epoch(GetEpochRequest { epoch }))
        .map_or(0, |r| r.into_inner().verifier_signatures.len())
}

#[test]
fn two_verifiers_ratify_and_each_client_chooses_how_many_it_requires() {
    let _s = serial();
    let mut realm = Realm::start_with(&["--verifier-count", "2"], |_| {});
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

/// Every epoch up to the newest, with its signatures, as replica 1 stores them.
fn epochs(realm: &Realm) -> Vec<keyraft_proto::pb::EpochInfo> {
    let _g = realm.runtime.enter();
    let mut c = KeyraftClient::new(realm.public_channel(0)).max_decoding_message_size(16 << 20);
    let mut out = Vec::new();
    let mut token = Vec::new();
    loop {
        let request = ListEpochsRequest { start_epoch: 1, page_size: 1000, page_token: token };
        let page = realm.runtime.block_on(c.list_epochs(request)).unwrap().into_inner();
        out.extend(page.epochs);
        token = page.next_page_token;
        if token.is_empty() {
            return out;
        }
    }
}

/// The keyserver-ratified epochs no verifier ratified, and the newest keyserver-ratified one.
fn unratified(realm: &Realm) -> (Vec<u64>, u64) {
    let ratified = realm.status(0).unwrap().ratified_epoch;
    let missing = epochs(realm)
        .iter()
        .map(|info| (EpochHead::from_bytes(&info.head).unwrap().epoch, info.verifier_signatures.is_empty()))
        .filter(|&(epoch, missing)| missing && epoch <= ratified)
        .map(|(epoch, _)| epoch)
        .collect();
    (missing, ratified)
}

/// The epoch a stopped verifier reopens at: the last one its state holds.
fn verifier_state_epoch(realm: &Realm) -> u64 {
    let store = keyraft_storage::SledStorage::open(&realm.path().join("data/verifier-1/state")).unwrap();
    let config = realm.realm_file().config().unwrap();
    keyraft_epoch::verifier::VerifierState::open(store, config).unwrap().last_epoch()
}

/// A realm cutting an epoch every 50 ms whose verifier was stopped while it cut a few hundred,
/// with registrations among them; the verifier is started again and stopped by `stop` as soon
/// as its first new ratification reaches the replicas, in the middle of its catch-up. Returns
/// the realm with the verifier stopped, the epoch its state reopens at, and the newest epoch
/// it ratified.
fn stopped_during_catch_up(stop: impl Fn(&mut Realm)) -> (Realm, u64, u64) {
    let mut realm = Realm::start(|t| {
        let epochs = t.entry("epochs").or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let epochs = epochs.as_table_mut().unwrap();
        epochs.insert("min_epoch_interval_ms".into(), toml::Value::Integer(50));
        epochs.insert("max_epoch_interval_ms".into(), toml::Value::Integer(50));
    });
    realm.start_verifier();
    wait_for("the verifier to ratify epoch 3", || (ratifications(&realm, 3) == 1).then_some(()));
    realm.kill_verifier();
    let client = realm.client(0);
    let stopped_at = realm.status(0).unwrap().ratified_epoch;
    for i in 0..40 {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        realm.runtime.block_on(client.register(&format!("user-{i}@example.com"), &key, BTreeMap::new())).unwrap();
    }
    wait_for("a backlog of 300 epochs", || (realm.status(0)?.ratified_epoch >= stopped_at + 300).then_some(()));
    let (missing, _) = unratified(&realm);
    let last_ratified = missing.first().expect("a backlog") - 1;
    realm.start_verifier();
    wait_for("the verifier's first ratification of its catch-up", || {
        (ratifications(&realm, last_ratified + 1) > 0).then_some(())
    });
    stop(&mut realm);
    let state = verifier_state_epoch(&realm);
    let (missing, _) = unratified(&realm);
    let ratified_to = missing.first().map_or(state, |m| m - 1);
    (realm, state, ratified_to)
}

/// Restarts the verifier and waits until every keyserver-ratified epoch has its ratification.
fn every_epoch_gets_ratified(realm: &mut Realm) {
    realm.start_verifier();
    let newest = realm.status(0).unwrap().ratified_epoch;
    wait_for("every epoch to be ratified after the restart", || {
        let (missing, _) = unratified(realm);
        missing.iter().all(|&e| e > newest).then_some(())
    });
}

#[test]
fn a_verifier_killed_during_catch_up_ratifies_every_epoch_it_verified_after_a_restart() {
    let _s = serial();
    let (mut realm, state, ratified_to) = stopped_during_catch_up(Realm::kill_verifier);
    assert!(
        state > ratified_to,
        "the kill left no epoch verified but unratified (state {state}, ratified to {ratified_to})"
    );
    every_epoch_gets_ratified(&mut realm);
}

#[test]
fn a_verifier_stopped_during_catch_up_pushes_or_keeps_what_it_verified() {
    let _s = serial();
    let (mut realm, state, ratified_to) = stopped_during_catch_up(|realm| {
        let status = realm.terminate_verifier_n(1);
        assert!(status.success(), "the verifier exited with {status} on SIGTERM");
    });
    let log = std::fs::read_to_string(realm.path().join("logs/verifier-1.log")).unwrap();
    let last_run = &log[log.rfind("verifier shutting down").expect("the verifier logged its shutdown")..];
    eprintln!("after SIGTERM: state {state}, ratified to {ratified_to}\n{last_run}");
    // It pushes what it holds before exiting, unless that takes longer than its deadline;
    // then its next start does.
    if last_run.contains("every ratification pushed") {
        assert_eq!(ratified_to, state, "the verifier said it pushed every ratification");
    } else {
        assert!(last_run.contains("stopping with ratifications not pushed"), "{last_run}");
    }
    every_epoch_gets_ratified(&mut realm);
}

#[test]
fn a_restarted_verifier_signs_no_head_off_the_chain_it_verified() {
    let _s = serial();
    let (mut realm, state, ratified_to) = stopped_during_catch_up(Realm::kill_verifier);
    assert!(state > ratified_to, "the kill left no epoch verified but unratified");
    // A replica listing another head for the oldest epoch lacking the ratification (another
    // issue time: a head the verifier never verified), and keeping the ratifications it gets.
    let upstream = {
        let _g = realm.runtime.enter();
        KeyraftClient::new(realm.public_channel(0))
    };
    let forged = ratified_to + 1;
    let pushed = Arc::new(Mutex::new(Vec::new()));
    let kept = pushed.clone();
    let liar = FakeReplica::default()
        .relay_to(&realm.public_addr(0))
        .list_epochs(move |request| {
            let mut upstream = upstream.clone();
            async move {
                let mut page = upstream.list_epochs(request).await?.into_inner();
                for info in &mut page.epochs {
                    let mut head = EpochHead::from_bytes(&info.head).unwrap();
                    if head.epoch == forged {
                        head.issue_time_ms += 1;
                        info.head = head.encode();
                    }
                }
                Ok(page)
            }
        })
        .push_ratification(move |request| {
            kept.lock().unwrap().push(request.epoch);
            Ok(keyraft_proto::pb::PushRatificationResponse { duplicate: false })
        })
        .serve(&realm);
    keyraft_tests::edit_config(&realm.path().join("verifier-1.toml"), &|t: &mut toml::Table| {
        t.insert("endpoints".into(), toml::Value::Array(vec![toml::Value::String(liar.clone())]));
    });
    realm.start_verifier();
    let log = realm.path().join("logs/verifier-1.log");
    wait_for("the verifier to refuse the listed chain", || {
        std::fs::read_to_string(&log).ok()?.contains("no replica serves the chain of heads").then_some(())
    });
    assert_eq!(*pushed.lock().unwrap(), Vec::<u64>::new(), "the verifier signed heads off its chain");
}
