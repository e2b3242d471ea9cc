//! Lookup latency while large `History` listings run on the same replica: a measurement, not
//! a check (ignored; run by hand, before and after a change to how replicas read storage):
//!
//! ```text
//! cargo build -p keyraft --bin keyraft
//! cargo test -p keyraft-tests --test read_latency -- --ignored --nocapture
//! KEYRAFT_BIN=/path/to/an/older/keyraft cargo test -p keyraft-tests --test read_latency -- --ignored --nocapture
//! ```
//!
//! `READ_LATENCY_VERSIONS` (default 150) sets how many versions the listed identity has, one
//! per epoch; `READ_LATENCY_LISTERS` (default 8) how many `History` callers run at once;
//! `READ_LATENCY_STORAGE_READS`, if set, the replicas' `limits.storage_reads_max` (binaries
//! that predate the limit refuse it).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use ed25519_dalek::SigningKey;
use keyraft_proto::pb::keyraft_client::KeyraftClient;
use keyraft_proto::pb::{HistoryRequest, LookupRequest};
use keyraft_tests::{serial, Realm};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const ALICE: &str = "alice@example.com";
const LOOKUPS: usize = 400;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn grpc(realm: &Realm, i: usize) -> KeyraftClient<Channel> {
    let _g = realm.runtime.enter();
    KeyraftClient::new(realm.public_channel(i)).max_decoding_message_size(64 * 1024 * 1024)
}

/// p50 and p99 of `LOOKUPS` sequential lookups of `ALICE` on replica 0, in microseconds.
fn lookup_latencies(realm: &Realm) -> (u64, u64) {
    let mut client = grpc(realm, 0);
    let mut micros = Vec::with_capacity(LOOKUPS);
    for _ in 0..LOOKUPS {
        let started = Instant::now();
        let request = LookupRequest { user_id: ALICE.into(), ..Default::default() };
        realm.runtime.block_on(client.lookup(request)).unwrap();
        micros.push(started.elapsed().as_micros() as u64);
    }
    micros.sort_unstable();
    (micros[micros.len() / 2], micros[micros.len() * 99 / 100])
}

#[test]
#[ignore = "a measurement: run by hand with --ignored --nocapture"]
fn lookup_latency_under_concurrent_large_histories() {
    let _s = serial();
    let versions = env_or("READ_LATENCY_VERSIONS", 150);
    let listers = env_or("READ_LATENCY_LISTERS", 8);
    let storage_reads = std::env::var("READ_LATENCY_STORAGE_READS").ok().and_then(|v| v.parse::<i64>().ok());
    let realm = Realm::start(|t| {
        if let Some(n) = storage_reads {
            let limits = t.entry("limits").or_insert_with(|| toml::Table::new().into());
            limits.as_table_mut().unwrap().insert("storage_reads_max".into(), n.into());
        }
    });
    let client = realm.client(0);
    let alice = SigningKey::generate(&mut rand::rngs::OsRng);
    let keys = |v: usize| BTreeMap::from([("pgp".to_owned(), format!("key {v}").into_bytes())]);
    let mut epoch = realm.runtime.block_on(client.register(ALICE, &alice, keys(0))).unwrap().epoch;
    for v in 1..versions {
        realm.wait_ratified(0, epoch);
        epoch = realm.runtime.block_on(client.update(ALICE, &alice, None, keys(v))).unwrap().epoch;
    }
    realm.wait_ratified(0, epoch);

    let idle = lookup_latencies(&realm);

    let stop = Arc::new(AtomicBool::new(false));
    let listed = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..listers)
        .map(|_| {
            let (mut client, stop, listed) = (grpc(&realm, 0), stop.clone(), listed.clone());
            realm.runtime.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let request = HistoryRequest { user_id: ALICE.into(), page_size: 1000, ..Default::default() };
                    let page = client.history(request).await.unwrap().into_inner();
                    listed.fetch_add(page.versions.len(), Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Let every lister have a call in flight.
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let loaded = lookup_latencies(&realm);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        realm.runtime.block_on(t).unwrap();
    }
    println!(
        "read_latency: binary {}, {versions} versions, {listers} History callers (page_size 1000), storage_reads_max {:?}",
        keyraft_tests::keyraft_bin().display(),
        storage_reads
    );
    println!("read_latency: lookups idle:             p50 {} us, p99 {} us", idle.0, idle.1);
    println!(
        "read_latency: lookups under History:    p50 {} us, p99 {} us ({} proofs listed in {:?})",
        loaded.0,
        loaded.1,
        listed.load(Ordering::Relaxed),
        elapsed
    );
}
