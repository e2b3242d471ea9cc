//! Ed25519 under keyraft's rule: one signature alone, in batches, and through the memo.
//! Criterion reports time per iteration; a batch's time divided by its size is the cost per
//! signature to compare with a single check.
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ed25519_dalek::{Signer as _, SigningKey};
use keyraft_core::ed25519::{verify, verify_batch, VerifiedSignatures};
use keyraft_core::{PublicKey, Signature};

fn signed(n: usize) -> Vec<(PublicKey, Vec<u8>, Signature)> {
    (0..n)
        .map(|i| {
            let key = SigningKey::from_bytes(&[u8::try_from(i % 251).unwrap() + 1; 32]);
            let public = PublicKey::from_bytes(key.verifying_key().as_bytes()).unwrap();
            let message = format!("entry {i}").into_bytes();
            let signature = Signature(key.sign(&message).to_bytes());
            (public, message, signature)
        })
        .collect()
}

fn ed25519(c: &mut Criterion) {
    let one = signed(1).pop().unwrap();
    c.bench_function("ed25519_verify", |b| b.iter(|| verify(black_box(&one.0), &one.1, &one.2).unwrap()));
    let mut group = c.benchmark_group("ed25519_verify_batch");
    for n in [64usize, 96, 128, 256, 512] {
        let items = signed(n);
        let batch: Vec<(&PublicKey, &[u8], Signature)> = items.iter().map(|(k, m, s)| (k, m.as_slice(), *s)).collect();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &batch, |b, batch| {
            b.iter(|| assert!(verify_batch(black_box(batch))));
        });
    }
    group.finish();
    let memo = VerifiedSignatures::default();
    assert!(memo.verify(&one.0, &one.1, &one.2));
    c.bench_function("ed25519_memo_hit", |b| b.iter(|| assert!(memo.verify(black_box(&one.0), &one.1, &one.2))));
}

criterion_group!(benches, ed25519);
criterion_main!(benches);
