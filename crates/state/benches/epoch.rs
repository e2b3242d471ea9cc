//! Applying an epoch delimiter through the step function (the tree batch, moving staged
//! updates, storing the head) with 10k staged updates on a million-entry state, on sled or,
//! with `KEYRAFT_BENCH_ENGINE=redb`, on redb.
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, Criterion};
use keyraft_core::{Command, Entry, Index, LogPosition, Policy, SignedEntry, Update};
use keyraft_epoch::testing::rss_mib;
use keyraft_state::harness::{derive_signing_key, public_key, test_profile, Harness};
use keyraft_state::proposer::sign_head;
use keyraft_state::StateMachine;
use keyraft_storage::{DiskEngine, RedbOptions, SledOptions, Storage};
use rand::{Rng, SeedableRng};
use std::os::unix::fs::MetadataExt as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn entries() -> usize {
    std::env::var("KEYRAFT_BENCH_ENTRIES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000)
}
const EPOCH_UPDATES: usize = 10_000;
const STAGE_BATCH_UPDATES: usize = 100;

fn cache_bytes() -> u64 {
    std::env::var("KEYRAFT_BENCH_CACHE_MIB")
        .or_else(|_| std::env::var("KEYRAFT_BENCH_SLED_CACHE_MIB"))
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128)
        << 20
}

/// The engine `KEYRAFT_BENCH_ENGINE` names (sled by default), as a replica configures it for
/// its state.
fn engine() -> DiskEngine {
    let cache_capacity_bytes = cache_bytes();
    match std::env::var("KEYRAFT_BENCH_ENGINE").as_deref() {
        Ok("redb") => DiskEngine::Redb(RedbOptions { cache_capacity_bytes, ..RedbOptions::default() }),
        Ok("sled") | Err(_) => DiskEngine::Sled(SledOptions { cache_capacity_bytes, ..SledOptions::default() }),
        Ok(other) => panic!("KEYRAFT_BENCH_ENGINE={other}: sled or redb"),
    }
}

/// Bytes allocated on disk under `dir` (holes punched in sled's value log not counted).
fn allocated_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                allocated_bytes(&e.path())
            } else {
                m.blocks() * 512
            }
        })
        .sum()
}

struct Realm {
    h: Harness,
    machine: StateMachine<Arc<dyn Storage>>,
    position: u64,
}

impl Realm {
    fn apply(&mut self, command: &Command) {
        self.position += 1;
        self.machine.apply(LogPosition { term: 1, index: self.position }, command).unwrap();
    }

    fn stage(&mut self, rng: &mut rand::rngs::StdRng, n: usize) {
        let key = derive_signing_key(1, "bulk");
        let policy = Policy::single(public_key(&key));
        let profile = test_profile("bulk", &[("mail", b"0123456789abcdef")]);
        let commitment = profile.commitment();
        let updates: Vec<Update> = (0..n)
            .map(|_| Update {
                signed: SignedEntry {
                    entry: Entry {
                        index: Index(rng.gen()),
                        version: 0,
                        update_policy: policy.clone(),
                        profile_commitment: commitment,
                    },
                    signatures: Vec::new(),
                },
                profile: profile.clone(),
            })
            .collect();
        // A replica writes accepted updates in batches of about this size (one per apply call),
        // and sled's memory grows with the size of its batches.
        for batch in updates.chunks(STAGE_BATCH_UPDATES) {
            self.machine.bench_stage_unchecked(batch).unwrap();
        }
        // Staged updates were made durable as they arrived, in a real cluster; only the
        // delimiter is measured.
        self.machine.store().flush().unwrap();
    }

    /// Cuts the open epoch, timing only the delimiter's step and the flush.
    fn cut(&mut self) -> Duration {
        let epoch = self.machine.epoch_state().open_epoch();
        let t = Instant::now();
        self.apply(&Command::EpochDelimiter { epoch, timestamp_ms: 1_700_000_000_000 + epoch });
        let applied = t.elapsed();
        self.machine.store().flush().unwrap();
        let elapsed = t.elapsed();
        if std::env::var_os("KEYRAFT_TRACE_EPOCHS").is_some() {
            eprintln!("epoch {epoch}: step+write {applied:?}, flush {:?}", elapsed - applied);
        }
        let head = self.machine.head(epoch).unwrap().unwrap();
        for k in self.h.replicas.clone().iter().take(2) {
            self.apply(&sign_head(k, &head).unwrap());
        }
        elapsed
    }
}

fn epoch_apply(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::new("example.org", 3, 1, 1);
    let engine = engine();
    let machine = StateMachine::open(engine.open(dir.path()).unwrap(), h.config().clone()).unwrap();
    let mut realm = Realm { h, machine, position: 0 };
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let t = Instant::now();
    for _ in 0..entries() / 100_000 {
        realm.stage(&mut rng, 100_000);
        realm.cut();
    }
    eprintln!(
        "built a {}-entry state on {} in {:.1?} ({} MiB on disk); RSS {} MiB",
        entries(),
        engine.name(),
        t.elapsed(),
        allocated_bytes(dir.path()) / (1024 * 1024),
        rss_mib()
    );
    let built_epoch = realm.machine.epoch_state().open_epoch();
    let mut group = c.benchmark_group("epoch_1m");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    group.bench_function(format!("delimiter_10k_staged_updates/{}", engine.name()), |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    realm.stage(&mut rng, EPOCH_UPDATES);
                    realm.cut()
                })
                .sum()
        })
    });
    group.finish();
    // Criterion runs as many epochs as fit its measurement time: the state is past a million
    // entries by now.
    let grown = entries() as u64 + (realm.machine.epoch_state().open_epoch() - built_epoch) * EPOCH_UPDATES as u64;
    eprintln!(
        "after the benchmark: RSS {} MiB, {} MiB on disk at about {grown} entries",
        rss_mib(),
        allocated_bytes(dir.path()) / (1024 * 1024)
    );
}

criterion_group!(benches, epoch_apply);
criterion_main!(benches);
