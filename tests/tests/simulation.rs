//! Simulation of a whole realm in one process under seeded faults (issue 17 part 1,
//! `keyraft_tests::sim`): crashes that lose unflushed writes, partitions (refused, black
//! holes, one way, minority and majority), lossy and slow links, clock jumps, the verifier
//! stopped and cut off; invariants checked between steps and at the end.
//!
//! The default suite runs a few fixed seeds; `scripts/simulate.sh` runs many (this file's
//! ignored test, driven by `KEYRAFT_SIM_*`), and `.ci/run` gives it a time budget.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use keyraft_tests::serial;
use keyraft_tests::sim::{run, Options, Report};
use std::time::{Duration, Instant};

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn run_seed(seed: u64) -> Report {
    let report = run(&Options::for_seed(seed));
    println!("{report}");
    report
}

/// In real time on two workers, where threads race as in production (the long runs use
/// paused time).
#[test]
fn fixed_seeds_of_the_simulation_lose_nothing_and_accuse_no_one() {
    let _s = serial();
    for seed in [1, 2, 3] {
        let report = run(&Options { paused: false, ..Options::for_seed(seed) });
        println!("{report}");
        assert!(report.ok(), "{report}");
    }
}

/// A seed run twice in paused time is the same run: every head down to its issue time, every
/// acknowledged update, the simulated time (the fingerprint), so a failing seed replays
/// exactly. Two seeds, one with 5 replicas.
#[test]
fn a_seed_in_paused_time_replays_exactly() {
    let _s = serial();
    for seed in [2, 3] {
        let options = Options { paused: true, ..Options::for_seed(seed) };
        let first = run(&options);
        let second = run(&options);
        println!("{first}{second}");
        assert!(first.ok() && second.ok(), "{first}{second}");
        assert_eq!(first.fingerprint, second.fingerprint, "seed {seed} did not replay:\n{first}{second}");
        assert_eq!(
            (first.epochs, first.verdict.acked, first.elapsed),
            (second.epochs, second.verdict.acked, second.elapsed)
        );
    }
}

/// Seed 1015 (5 replicas, the leader isolated twice) deposes a leader while writes of its own
/// are in flight. openraft 0.9 never answered them: the deposed leader's epoch proposer waited
/// on its delimiter forever, and once that replica led again no epoch was ever cut (found by
/// CI: every update refused for two simulated minutes). The batcher now answers such writes
/// "no leader" when the leadership is lost. The seed must pass, and must still take that path
/// (if a change of schedule makes it stop, pick a seed that does).
#[test]
fn a_leader_deposed_with_writes_in_flight_answers_them_and_cuts_epochs_again() {
    use keyraft_tests::sim::logs;
    let _s = serial();
    logs::capture();
    let mark = logs::mark();
    let report = run(&Options { paused: true, ..Options::for_seed(1015) });
    println!("{report}");
    assert!(report.ok(), "{report}");
    let answered = logs::alarms_since(mark, &["leadership lost with commands in flight"]);
    assert!(!answered.is_empty(), "seed 1015 no longer deposes a leader with writes in flight");
}

/// Seeds from `KEYRAFT_SIM_SEED` (default 1) on, every `KEYRAFT_SIM_STEP`th (default 1: each;
/// parallel runs take one residue each): `KEYRAFT_SIM_SEEDS` of them (default 10), or as
/// many as start within `KEYRAFT_SIM_BUDGET_S` seconds if that is set. Every failing seed is
/// reported with its replay command; the run fails if any did.
#[test]
#[ignore = "the long run: scripts/simulate.sh (KEYRAFT_SIM_SEED, _SEEDS, _BUDGET_S)"]
fn simulation_seeds() {
    let _s = serial();
    let first: u64 = env("KEYRAFT_SIM_SEED").unwrap_or(1);
    let count: u64 = env("KEYRAFT_SIM_SEEDS").unwrap_or(10);
    let step: u64 = env("KEYRAFT_SIM_STEP").unwrap_or(1).max(1);
    let budget = env::<u64>("KEYRAFT_SIM_BUDGET_S").map(Duration::from_secs);
    let started = Instant::now();
    let (mut ran, mut failed, mut acked, mut lost) = (0u64, Vec::new(), 0usize, 0usize);
    let mut recovery = Vec::new();
    let mut seed = first;
    loop {
        let over = match budget {
            Some(b) => started.elapsed() >= b,
            None => ran >= count,
        };
        if over {
            break;
        }
        let report = run_seed(seed);
        ran += 1;
        acked += report.verdict.acked;
        lost += report.verdict.lost;
        recovery.extend(report.recovery.iter().copied());
        if !report.ok() {
            failed.push(seed);
        }
        seed += step;
    }
    recovery.sort();
    let p = |q: f64| recovery.get(((recovery.len() as f64 - 1.0) * q) as usize).copied().unwrap_or_default();
    println!(
        "simulation: {ran} seeds from {first} in {:.0} s; {acked} acknowledged updates, {lost} lost; recovery median {} ms, p99 {} ms, max {} ms; failed seeds: {failed:?}",
        started.elapsed().as_secs_f64(),
        p(0.5).as_millis(),
        p(0.99).as_millis(),
        p(1.0).as_millis()
    );
    assert!(failed.is_empty(), "failed seeds (replay each with scripts/simulate.sh --seed S): {failed:?}");
}

/// A follower forwards its client's update to the leader, which answers once it applied it;
/// the follower answers its client only once its own reads show the update, so the status it
/// reports next is the update's epoch, not UNKNOWN (found by CI through the HTTP gateway: a
/// registration sent to a follower, then its status asked of the same follower). Here the
/// leader's appends are held back from the follower for 300 simulated ms (less than an
/// election timeout) while the follower still reaches the leader.
#[test]
fn a_follower_answers_a_forwarded_update_once_its_own_reads_show_it() {
    use keyraft_client::UpdateStatus;
    use keyraft_tests::sim::net::{public_addr, Blocked, Host};
    use keyraft_tests::sim::realm::SimRealm;
    let _s = serial();
    let runtime = tokio::runtime::Builder::new_current_thread().start_paused(true).enable_all().build().unwrap();
    runtime.block_on(async {
        let mut realm = SimRealm::new(11, 3, true);
        for i in 0..3 {
            realm.start(i, i == 0).await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let leader = loop {
            if let Some(l) = realm.leader().await {
                break l;
            }
            assert!(tokio::time::Instant::now() < deadline, "no leader");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (leader_id, follower_id) = (realm.replicas[leader].id, realm.replicas[(leader + 1) % 3].id);
        let client = realm.client(Host::Client(0), &[public_addr(follower_id)], 0);
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        // Preparing looks the identity up: it waits for a first ratified epoch.
        let prepared = loop {
            match client.registration("forwarded@example.com", &key).prepare().await {
                Ok(p) => break p,
                Err(e) => assert!(tokio::time::Instant::now() < deadline, "no first epoch: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };

        realm.net.block(Host::Replica(leader_id), Host::Replica(follower_id), Blocked::BlackHole);
        let net = realm.net.clone();
        let heal = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            net.heal();
        });
        let sent = tokio::time::Instant::now();
        let outcome = client.send_prepared(&prepared, None, None).await.unwrap();
        let waited = sent.elapsed();
        let status = client.update_status(&prepared.update).await.unwrap();
        assert_eq!(status, UpdateStatus::InEpoch(outcome.epoch), "answered after {waited:?}");
        assert!(waited >= Duration::from_millis(300), "answered before the follower could apply: {waited:?}");
        heal.await.unwrap();
        realm.stop_all().await;
    });
}
