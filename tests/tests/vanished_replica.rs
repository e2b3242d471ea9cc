//! A replica that vanishes from the network without closing its connections (a cut cable,
//! `docker network disconnect`): no data, no reset. Those who stream from it must notice by
//! themselves and move on. (Found by scripts/compose-test.sh: the verifier waited forever on
//! the stream of a disconnected replica and no epoch was ratified again.)
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use keyraft_tests::blackhole::BlackHole;
use keyraft_tests::{edit_config, serial, wait_for, Realm};

fn latest_ratification(realm: &Realm, i: usize) -> u64 {
    realm.status(i).and_then(|s| s.verifiers.first().map(|v| v.latest_ratified_epoch)).unwrap_or(0)
}

#[test]
fn a_verifier_whose_replica_vanishes_moves_to_another_and_keeps_ratifying() {
    let _s = serial();
    let mut realm = Realm::start(|_| {});
    let leader = realm.wait_leader();
    // The verifier streams from a follower, through a proxy that can go silent.
    let first = (leader + 1) % 3;
    let hole = BlackHole::start(&realm.runtime, realm.public_addr(first).parse().unwrap());
    let mut endpoints = vec![hole.addr.to_string()];
    endpoints.extend((0..3).filter(|i| *i != first).map(|i| realm.public_addr(i)));
    edit_config(&realm.path().join("verifier-1.toml"), &|t: &mut toml::Table| {
        t.insert("endpoints".into(), toml::Value::Array(endpoints.iter().map(|e| e.clone().into()).collect()));
    });
    realm.start_verifier();
    wait_for("the verifier's first ratification", || (latest_ratification(&realm, leader) >= 1).then_some(()));

    hole.freeze();
    let frozen_at = realm.status(leader).unwrap().last_epoch;
    let started = std::time::Instant::now();
    wait_for("ratifications of epochs after the verifier's replica vanished", || {
        (latest_ratification(&realm, leader) >= frozen_at + 3).then_some(())
    });
    eprintln!("ratifying again {} ms after the replica vanished", started.elapsed().as_millis());
}
