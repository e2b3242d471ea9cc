//! What a verifier spends per update when it catches up: decoding the streamed signed
//! entries, and re-checking an epoch (authorization of every update, the tree, the head) on
//! every core, for an epoch of 10k registrations.
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, Criterion};
use keyraft_core::{decode_canonical, Canonical, SignedEntry};
use keyraft_epoch::verifier::VerifierState;
use keyraft_state::harness::{derive_signing_key, Harness};
use keyraft_storage::MemoryStorage;
use std::time::Duration;

const EPOCH_UPDATES: usize = 10_000;

fn verifier(c: &mut Criterion) {
    let mut h = Harness::new("bench.example", 3, 1, 7);
    for i in 0..EPOCH_UPDATES {
        let key = derive_signing_key(7, &format!("u{i}"));
        h.register(&format!("u{i}@bench.example"), &key, &[("mail", b"0123456789abcdef")]).unwrap();
    }
    let head = h.publish_epoch().unwrap();
    let published = h.machine.published_epoch(head.epoch).unwrap().unwrap();
    let raw: Vec<Vec<u8>> = published.updates.iter().map(Canonical::encode).collect();
    let config = h.config().clone();

    let mut group = c.benchmark_group("verifier_10k_registrations");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    group.bench_function("decode_on_every_core", |b| {
        b.iter(|| keyraft_epoch::parallel::try_map(&raw, |_, r| decode_canonical::<SignedEntry>(r)).unwrap());
    });
    group.bench_function("check_epoch_on_every_core", |b| {
        b.iter_batched(
            || VerifierState::open(MemoryStorage::new(), config.clone()).unwrap(),
            |state| state.check_epoch(&published.updates, &published.head).unwrap(),
            criterion::BatchSize::LargeInput,
        );
    });
    group.finish();
}

criterion_group!(benches, verifier);
criterion_main!(benches);
