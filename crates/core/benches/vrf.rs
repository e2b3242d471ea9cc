//! VRF prove and verify.
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use keyraft_core::vrf::VrfSecretKey;

fn vrf(c: &mut Criterion) {
    let key = VrfSecretKey::from_seed(&[7; 32]);
    let public = key.public_key();
    let alpha = keyraft_core::types::vrf_input("example.org", "alice@example.org");
    let proof = key.prove(&alpha).unwrap();
    c.bench_function("vrf_prove", |b| b.iter(|| key.prove(black_box(&alpha)).unwrap()));
    c.bench_function("vrf_verify", |b| b.iter(|| public.verify(black_box(&alpha), black_box(&proof)).unwrap()));
}

criterion_group!(benches, vrf);
criterion_main!(benches);
