//! Canonical user ids (protocol version 2): what every lookup and update pays before the VRF.
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use keyraft_core::identity::{canonical_user_id, LocalPartRule};

fn identity(c: &mut Criterion) {
    let rule = LocalPartRule::CaseInsensitive;
    for (name, id) in [
        ("canonical_ascii_email", "alice@example.org"),
        ("canonical_mixed_case_email", "Alice.Smith@Example.ORG"),
        ("canonical_idn_email", "zoe\u{308}@b\u{fc}cher.example"),
        ("canonical_plain_id", "alice"),
    ] {
        c.bench_function(name, |b| b.iter(|| canonical_user_id(black_box(id), rule).unwrap()));
    }
}

criterion_group!(benches, identity);
criterion_main!(benches);
