//! Prometheus metrics (issue 16 part 1), scraped from a running replica's metrics listener:
//! the values move as the realm works.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use keyraft_client::LookupOptions;
use keyraft_tests::{scrape_metrics as scrape, scrape_metrics_at as scrape_at, serial, wait_for, Realm};
use std::collections::BTreeMap;

fn value(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(key).unwrap_or_else(|| panic!("{key} not in {:#?}", m.keys().collect::<Vec<_>>()))
}

#[test]
fn a_scrape_shows_raft_epochs_requests_and_verifiers_moving() {
    let _s = serial();
    let mut realm = Realm::start(|_| {});
    realm.start_verifier();
    let leader = realm.wait_leader();
    let before = scrape(&realm, leader);
    assert_eq!(value(&before, "keyraft_raft_is_leader"), 1.0);
    assert!(value(&before, "keyraft_raft_term") >= 1.0);
    assert_eq!(value(&before, "keyraft_ready"), 1.0);
    for node in 1..=3 {
        assert!(before.contains_key(&format!("keyraft_raft_replication_lag_entries{{node=\"{node}\"}}")), "{before:?}");
    }

    let client = realm.client(leader);
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let r = realm.runtime.block_on(client.register("metrics@example.com", &key, Default::default())).unwrap();
    realm.wait_ratified(leader, r.epoch);
    realm.runtime.block_on(client.lookup("metrics@example.com", LookupOptions::default())).unwrap();

    let lookups =
        r#"keyraft_request_duration_seconds_count{listener="public",rpc="/keyraft.v1.Keyraft/Lookup",code="0"}"#;
    let after = wait_for("the scrape to show the lookup, the new epochs and a ratification", || {
        let m = scrape(&realm, leader);
        let verifier_lag =
            m.iter().find(|(k, _)| k.starts_with("keyraft_verifier_ratification_lag_epochs{")).map(|(_, v)| *v);
        (m.get(lookups).is_some_and(|n| *n >= 1.0)
            && value(&m, "keyraft_epoch") > value(&before, "keyraft_epoch")
            && value(&m, "keyraft_raft_applied_index") > value(&before, "keyraft_raft_applied_index")
            && value(&m, "keyraft_epoch_apply_seconds_count") > value(&before, "keyraft_epoch_apply_seconds_count")
            && verifier_lag.is_some_and(|lag| lag <= 2.0))
        .then_some(m)
    });
    assert!(value(&after, "keyraft_epoch_updates_sum") >= 1.0, "the registration is in an epoch");
    assert!(value(&after, "keyraft_epoch_ratified") >= r.epoch as f64);
    // A follower says who leads.
    let follower = (leader + 1) % 3;
    let f = scrape(&realm, follower);
    assert_eq!(value(&f, "keyraft_raft_is_leader"), 0.0);
    assert_eq!(value(&f, "keyraft_raft_leader_id"), value(&after, "keyraft_raft_leader_id"));
    // The stores on disk, and the leader's connections to the follower's peer listener.
    for store in ["log", "state"] {
        assert!(value(&after, &format!("keyraft_storage_bytes{{store=\"{store}\"}}")) > 0.0, "{store}");
    }
    assert!(after.contains_key(r#"keyraft_storage_bytes{store="snapshots"}"#));
    assert!(value(&f, r#"keyraft_connections_open{listener="peer"}"#) >= 1.0, "{f:?}");
    // The verifier's own metrics, on the address it wrote.
    let listen = realm.path().join("data/verifier-1/listen.json");
    let listen: serde_json::Value = serde_json::from_slice(&std::fs::read(listen).unwrap()).unwrap();
    let verifier_addr = listen["metrics_addr"].as_str().unwrap().parse().unwrap();
    let v = wait_for("the verifier to report the registration's epoch", || {
        let v = scrape_at(&realm, verifier_addr);
        (v.get("keyraft_verifier_verified_epoch").is_some_and(|e| *e >= r.epoch as f64)).then_some(v)
    });
    assert!(value(&v, "keyraft_verifier_updates_checked_total") >= 1.0);
    assert!(value(&v, "keyraft_verifier_epoch_check_seconds_count") >= 1.0);
    assert!(value(&v, "keyraft_verifier_lag_epochs") <= 5.0);
    assert_eq!(value(&v, "keyraft_verifier_halted"), 0.0);
    // The verifier streams from one of the replicas.
    let verifier_streams: f64 =
        (0..3).map(|i| scrape(&realm, i).get(r#"keyraft_streams_open{kind="verifier"}"#).copied().unwrap_or(0.0)).sum();
    assert!(verifier_streams >= 1.0, "{verifier_streams}");
    assert_eq!(value(&f, r#"keyraft_streams_open{kind="watch"}"#), 0.0);
    // The leader's Raft traffic is counted on the follower's peer listener.
    let appends =
        r#"keyraft_request_duration_seconds_count{listener="peer",rpc="/keyraft.peer.v1.Peer/AppendEntries",code="0"}"#;
    assert!(value(&f, appends) >= 1.0);
}
