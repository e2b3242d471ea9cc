//! Failover time: from a SIGKILL of the leader to the first update a client gets acknowledged.
//!
//! The default suite kills the leader three times with a bound well above the expected time;
//! the measurement over many kills is ignored by default:
//!
//! ```sh
//! KEYRAFT_FAILOVER_KILLS=20 cargo test -p keyraft-tests --test failover -- --ignored --nocapture
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use ed25519_dalek::SigningKey;
use keyraft_client::{Client, ClientOptions};
use keyraft_tests::{serial, wait_for, Realm};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Kills the leader, then registers a new user through a client that knows every replica
/// until one registration is acknowledged; the time from the kill to that acknowledgement.
/// Restarts the killed replica and waits until it has caught up before returning.
fn one_failover(realm: &mut Realm, client: &Client, n: usize) -> Duration {
    let leader = realm.wait_leader();
    let caught_up = realm.status(leader).unwrap().applied_index;
    for i in 0..3 {
        wait_for("every replica to catch up before the kill", || {
            (realm.status(i)?.applied_index >= caught_up).then_some(())
        });
    }
    let killed = Instant::now();
    realm.kill(leader);
    let owner = SigningKey::generate(&mut rand::rngs::OsRng);
    let keys = BTreeMap::from([("pgp".to_owned(), b"k".to_vec())]);
    let user = format!("failover-{n}@example.com");
    let acked = wait_for("an update acknowledged after the kill", || {
        match realm.runtime.block_on(client.register(&user, &owner, keys.clone())) {
            Ok(_) => Some(killed.elapsed()),
            Err(keyraft_client::ClientError::Unavailable(_)) => None,
            Err(e) => panic!("registering {user} after the kill: {e}"),
        }
    });
    realm.start_replica(leader);
    realm.wait_leader();
    acked
}

fn client(realm: &Realm) -> Client {
    let _g = realm.runtime.enter();
    let options = ClientOptions { verifier_threshold: Some(0), ..ClientOptions::default() };
    Client::with_options(&realm.realm_file(), &[], &options).unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn measure(kills: usize) -> Vec<Duration> {
    let mut realm = Realm::start(|_| {});
    let client = client(&realm);
    realm.wait_ratified(0, 1);
    let mut times: Vec<Duration> = (0..kills).map(|n| one_failover(&mut realm, &client, n)).collect();
    eprintln!("failover times (ms): {:?}", times.iter().map(Duration::as_millis).collect::<Vec<_>>());
    times.sort();
    times
}

#[test]
fn three_leader_kills_each_fail_over_within_a_generous_bound() {
    let _s = serial();
    let times = measure(3);
    // Expected well under 2 s; with openraft's leader lease on top of a 1-2 s election timeout
    // it took 3.1-4.1 s.
    let bound = Duration::from_millis(2_800);
    assert!(times.iter().all(|t| *t <= bound), "failovers took {times:?}; the bound is {bound:?}");
}

#[test]
#[ignore = "a measurement: KEYRAFT_FAILOVER_KILLS leader kills (default 20), p50 and p99"]
fn failover_time_over_many_leader_kills() {
    let _s = serial();
    let kills = std::env::var("KEYRAFT_FAILOVER_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let times = measure(kills);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "{kills} leader kills: p50 {} ms, p99 {} ms, max {} ms (load average {})",
        percentile(&times, 0.50).as_millis(),
        percentile(&times, 0.99).as_millis(),
        times.last().unwrap().as_millis(),
        load.trim()
    );
}
