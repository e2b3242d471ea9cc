//! Retention (`storage.retention_epochs`, issue 16 part 5) on real replicas: the trees of old
//! epochs are pruned in the background; a lookup or history that needs one is refused with
//! FAILED_PRECONDITION and a message that says why (never as misbehaviour, never as an empty
//! tree); the newest epochs verify as before; a verifier resuming at a pruned epoch is still
//! answered, and prunes its own store; a replica killed with -9 comes back with its horizon.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use keyraft_client::{ClientError, LookupOptions};
use keyraft_tests::{serial, wait_for, Realm};
use std::collections::BTreeMap;

const ALICE: &str = "alice@retention.example";
const KEPT: i64 = 3;

fn keys(value: &str) -> BTreeMap<String, Vec<u8>> {
    BTreeMap::from([("pgp".to_owned(), value.as_bytes().to_vec())])
}

/// `keyraft_retention_trees_from_epoch` and `keyraft_retention_pruned_chunks_total` of
/// replica `i`.
fn retention_metrics(realm: &Realm, i: usize) -> (u64, u64) {
    let m = keyraft_tests::scrape_metrics(realm, i);
    let value = |name: &str| *m.get(name).unwrap_or_else(|| panic!("{name} missing from the scrape")) as u64;
    (value("keyraft_retention_trees_from_epoch"), value("keyraft_retention_pruned_chunks_total"))
}

fn refused_as_pruned(result: Result<impl std::fmt::Debug, ClientError>) -> Option<String> {
    match result {
        Err(ClientError::Refused { code: tonic::Code::FailedPrecondition, message }) => Some(message),
        Err(e) if e.is_misbehavior() => panic!("an honest replica with retention was taken for misbehaviour: {e}"),
        _ => None,
    }
}

#[test]
fn old_trees_are_pruned_refused_clearly_and_the_newest_epochs_still_verify() {
    let _s = serial();
    let mut realm = Realm::start(|t| {
        let storage = t.entry("storage").or_insert(toml::Value::Table(Default::default())).as_table_mut().unwrap();
        storage.insert("retention_epochs".into(), toml::Value::Integer(KEPT));
    });
    // The verifier keeps only its newest trees too (it reads no other).
    keyraft_tests::edit_config(&realm.dir.path().join("verifier-1.toml"), &|t: &mut toml::Table| {
        t.insert("retention_epochs".into(), toml::Value::Integer(KEPT));
    });
    realm.start_verifier();
    let leader = realm.wait_leader();
    let client = realm.client(leader);
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let first = realm.runtime.block_on(client.register(ALICE, &key, keys("a0"))).unwrap().epoch;
    realm.wait_ratified(leader, first);
    let second = realm.runtime.block_on(client.update(ALICE, &key, None, keys("a1"))).unwrap().epoch;
    realm.wait_ratified(leader, second);

    // Every replica prunes on its own; the tree of `first` goes once three newer epochs close.
    let at_first = LookupOptions { epoch: first, ..LookupOptions::default() };
    for i in 0..3 {
        let c = realm.client(i);
        let message = wait_for(&format!("replica {} to prune epoch {first}", i + 1), || {
            refused_as_pruned(realm.runtime.block_on(c.lookup(ALICE, at_first)))
        });
        assert!(message.contains(&format!("the tree of epoch {first} is not kept")), "{message}");
        assert!(message.contains("retention keeps the trees from epoch"), "{message}");
        // (A realm this small keeps its one leaf in the root page: no chunk to prune yet, only
        // root pages; the unit tests count chunks.)
        let (trees_from, _chunks) = retention_metrics(&realm, i);
        assert!(trees_from > first, "replica {}: trees from {trees_from}", i + 1);
        // The newest epoch verifies as before and says a1.
        let answer = realm.runtime.block_on(c.lookup(ALICE, LookupOptions::default())).unwrap();
        assert!(answer.lookup.epoch() >= trees_from);
        let (_, profile) = answer.lookup.entry.as_ref().expect("alice is registered");
        assert_eq!(profile.keys["pgp"], b"a1");
    }

    // A complete history needs the tree of `first`: refused, not a history with a gap.
    let message = refused_as_pruned(realm.runtime.block_on(client.full_history(ALICE, 10)))
        .expect("a history reaching a pruned epoch is refused");
    assert!(message.contains("retention"), "{message}");

    // A verifier that was down while its last epoch's tree was pruned resumes there.
    let stopped_at = realm.status(leader).unwrap().ratified_epoch;
    realm.kill_verifier();
    wait_for("every replica to prune past the verifier's last epoch", || {
        (0..3).all(|i| retention_metrics(&realm, i).0 > stopped_at + 1).then_some(())
    });
    realm.start_verifier();
    let verified = realm.client_requiring(leader, 1);
    let newer = LookupOptions { min_epoch: stopped_at + 2 + KEPT as u64, wait_ms: 20_000, ..LookupOptions::default() };
    wait_for("the verifier to ratify again", || realm.runtime.block_on(verified.lookup(ALICE, newer)).ok());
    // It pruned its own store, before and after the restart, and kept verifying.
    let log = std::fs::read_to_string(realm.dir.path().join("logs/verifier-1.log")).unwrap();
    assert!(log.matches("retention: pruned the trees of past epochs").count() >= 2, "{log}");
    assert!(!log.contains("retention failed"), "{log}");

    // A replica killed -9 keeps its horizon: it refuses at once, and serves the newest.
    let follower = (leader + 1) % 3;
    realm.kill(follower);
    realm.start_replica(follower);
    let c = realm.client(follower);
    let message = wait_for("the restarted replica to answer", || {
        refused_as_pruned(realm.runtime.block_on(c.lookup(ALICE, at_first)))
    });
    assert!(message.contains("retention"), "{message}");
    realm.runtime.block_on(c.lookup(ALICE, LookupOptions::default())).unwrap();
}
