//! The tree at a million entries, on sled: applying an epoch of 10k updates, building a proof
//! (from the page cache and from storage alone), and verifying a full lookup proof; prints
//! proof sizes and the process's RSS.
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use ed25519_dalek::Signer as _;
use keyraft_core::lookup::{head_signing_message, ratification_message};
use keyraft_core::tree::Terminal;
use keyraft_core::{verify_lookup, Canonical, Digest, Index, Signature};
use keyraft_epoch::testing::rss_mib;
use keyraft_epoch::testing::TreeFixture;
use keyraft_state::harness::{derive_signing_key, Harness};
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

fn entries() -> usize {
    std::env::var("KEYRAFT_BENCH_ENTRIES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000)
}
const EPOCH_UPDATES: usize = 10_000;

fn random_updates(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<(Index, Digest)> {
    let mut v: Vec<(Index, Digest)> = (0..n).map(|_| (Index(rng.gen()), rng.gen())).collect();
    v.sort_by_key(|(i, _)| *i);
    v.dedup_by_key(|(i, _)| *i);
    v
}

fn tree_at_a_million(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut fixture = if std::env::var_os("KEYRAFT_BENCH_MEMORY").is_some() {
        TreeFixture::new()
    } else {
        TreeFixture::on_sled(dir.path())
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let started = Instant::now();
    let mut epoch = 0;
    for _ in 0..entries() / 100_000 {
        epoch += 1;
        fixture.apply(epoch, &random_updates(&mut rng, 100_000));
    }
    eprintln!("built a {}-entry tree on sled in {:.1?}; RSS {} MiB", entries(), started.elapsed(), rss_mib());
    let first_measured_epoch = epoch;
    let mut group = c.benchmark_group("tree_1m");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    group.bench_function("epoch_10k_updates_apply_write_flush", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let (mut applying, mut flushing) = (Duration::ZERO, Duration::ZERO);
            for _ in 0..iters {
                let updates = random_updates(&mut rng, EPOCH_UPDATES);
                epoch += 1;
                let t = Instant::now();
                fixture.apply(epoch, &updates);
                let applied = t.elapsed();
                fixture.flush();
                applying += applied;
                flushing += t.elapsed() - applied;
                total += t.elapsed();
            }
            eprintln!(
                "  {iters} epochs: apply+write {:.1?}/epoch, flush {:.1?}/epoch",
                applying / iters as u32,
                flushing / iters as u32
            );
            total
        })
    });
    // Criterion runs as many epochs as fit its measurement time: the tree is well past a
    // million entries by now (random indexes, so collisions are negligible).
    let grown = entries() as u64 + (epoch - first_measured_epoch) * EPOCH_UPDATES as u64;
    eprintln!("after the epoch benchmark: RSS {} MiB at about {grown} entries", rss_mib());

    let probe = random_updates(&mut rng, 1)[0].0;
    // The newest tree, as a replica serves it (its page cache holds the pages of that tree),
    // and from storage alone (the pages are stored compact and rehashed when read).
    group.bench_function("tree_proof_build", |b| b.iter(|| fixture.prove(epoch, &probe)));
    group.bench_function("tree_proof_build_from_storage", |b| b.iter(|| fixture.prove_from_storage(epoch, &probe)));
    group.finish();

    // A full lookup proof at a million entries: a real realm's head, VRF and entry, with the
    // tree proof of the million-entry tree (alice inserted into it) and a re-signed head.
    let mut h = Harness::new("example.org", 3, 2, 1);
    let alice = derive_signing_key(1, "alice");
    h.register("alice@example.org", &alice, &[("mail", b"0123456789abcdef0123456789abcdef")]).unwrap();
    h.publish_epoch().unwrap();
    let mut proof = h.lookup_proof("alice@example.org", None, 1).unwrap();
    let (index, _) = h.index_of("alice@example.org");
    let entry_hash = proof.entry.as_ref().unwrap().0.hash();
    epoch += 1;
    let root = fixture.apply(epoch, &[(index, entry_hash)]);
    proof.tree_proof = fixture.prove(epoch, &index);
    assert!(matches!(proof.tree_proof.terminal, Terminal::Leaf { .. }));
    proof.head.root = root;
    let m = head_signing_message(&proof.head);
    for s in &mut proof.replica_signatures {
        s.signature = Signature(h.replicas[usize::from(s.position)].sign(&m).to_bytes());
    }
    let r = ratification_message(&proof.head);
    for s in &mut proof.verifier_signatures {
        s.signature = Signature(h.verifiers[usize::from(s.position)].sign(&r).to_bytes());
    }
    let realm = h.client_realm(1);
    verify_lookup(&realm, "alice@example.org", &proof, h.now_ms, None).unwrap();
    let one = proof.encode().len();
    let mut two = proof.clone();
    two.verifier_signatures.push(keyraft_core::lookup::PositionalSignature {
        position: 1,
        signature: Signature(h.verifiers[1].sign(&r).to_bytes()),
    });
    let mut realm2 = realm.clone();
    realm2.verifier_threshold = 2;
    verify_lookup(&realm2, "alice@example.org", &two, h.now_ms, None).unwrap();
    eprintln!(
        "lookup proof at {} entries: depth {}, {one} bytes with 1 verifier, {} bytes with 2",
        entries(),
        proof.tree_proof.depth(),
        two.encode().len()
    );
    let mut group = c.benchmark_group("lookup_1m");
    group.bench_function("verify_lookup_1_verifier", |b| {
        b.iter_batched(
            || proof.clone(),
            |p| verify_lookup(&realm, "alice@example.org", &p, h.now_ms, None).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("verify_lookup_2_verifiers", |b| {
        b.iter_batched(
            || two.clone(),
            |p| verify_lookup(&realm2, "alice@example.org", &p, h.now_ms, None).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, tree_at_a_million);
criterion_main!(benches);
