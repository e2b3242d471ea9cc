//! Retention's effect on disk at a million entries.
//!
//! Builds a tree of `KEYRAFT_BENCH_ENTRIES` (default 1M) entries on sled in epochs of 100k,
//! then applies `KEYRAFT_BENCH_EPOCHS` (default 300) epochs of 2,500 updates each (2,000 to
//! existing entries, 500 new: 1 s epochs of a busy realm). With `KEYRAFT_BENCH_KEEP=N` it
//! keeps the trees of the newest N epochs, pruning whenever the horizon has moved N/4 epochs
//! as a replica does (`keyraft_state::retention`); without it every tree stays. Prints the disk
//! the database occupies (allocated blocks, so holes punched in the value log count as freed)
//! every 50 epochs, and what each pruning cost.
//!
//! `cargo bench -p keyraft-state --bench retention` and
//! `KEYRAFT_BENCH_KEEP=60 cargo bench -p keyraft-state --bench retention`.
#![allow(missing_docs, clippy::unwrap_used)]

use keyraft_core::{Digest, Index};
use keyraft_epoch::testing::TreeFixture;
use keyraft_state::retention::{delete_pruned, plan_prune};
use rand::{Rng, SeedableRng};
use std::time::Instant;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn allocated_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let md = entry.metadata().unwrap();
        total += if md.is_dir() { allocated_bytes(&entry.path()) } else { md.blocks() * 512 };
    }
    total
}

fn sorted(mut v: Vec<(Index, Digest)>) -> Vec<(Index, Digest)> {
    v.sort_by_key(|(i, _)| *i);
    v.dedup_by_key(|(i, _)| *i);
    v
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let (entries, epochs, keep) =
        (env("KEYRAFT_BENCH_ENTRIES", 1_000_000), env("KEYRAFT_BENCH_EPOCHS", 300), env("KEYRAFT_BENCH_KEEP", 0));
    let dir = tempfile::tempdir().unwrap();
    let mut fixture = TreeFixture::on_sled(dir.path());
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut indexes: Vec<Index> = Vec::with_capacity(entries as usize + 500 * epochs as usize);
    let started = Instant::now();
    let mut epoch = 0;
    while (indexes.len() as u64) < entries {
        epoch += 1;
        let updates = sorted((0..100_000).map(|_| (Index(rng.gen()), rng.gen())).collect());
        indexes.extend(updates.iter().map(|(i, _)| *i));
        fixture.apply(epoch, &updates);
    }
    fixture.flush();
    let base = allocated_bytes(dir.path());
    eprintln!(
        "built {} entries in {epoch} epochs in {:.1?}: {:.0} MB on disk; then {epochs} epochs of 2,500 updates, keeping {}",
        indexes.len(),
        started.elapsed(),
        base as f64 / 1e6,
        if keep == 0 { "every tree".to_owned() } else { format!("the trees of the newest {keep} epochs") }
    );
    let (mut trees_from, first) = (1, epoch + 1);
    for _ in 0..epochs {
        epoch += 1;
        let mut updates: Vec<(Index, Digest)> =
            (0..2_000).map(|_| (indexes[rng.gen_range(0..indexes.len())], rng.gen())).collect();
        let fresh: Vec<(Index, Digest)> = (0..500).map(|_| (Index(rng.gen()), rng.gen())).collect();
        indexes.extend(fresh.iter().map(|(i, _)| *i));
        updates.extend(fresh);
        fixture.apply(epoch, &sorted(updates));
        fixture.flush();
        if keep > 0 && epoch + 1 >= trees_from + keep + (keep / 4).max(1) {
            let horizon = epoch + 1 - keep;
            let t = Instant::now();
            let garbage = plan_prune(fixture.store(), horizon).unwrap();
            let walked = t.elapsed();
            delete_pruned(fixture.store(), &garbage.keys).unwrap();
            fixture.flush();
            eprintln!(
                "epoch {epoch}: pruned below {horizon}: walked {} pages in {walked:.1?}, deleted {} chunks and {} roots, kept {} older chunks, in {:.1?}",
                garbage.pages_walked,
                garbage.chunks,
                garbage.keys.len() - garbage.chunks,
                garbage.chunks_kept,
                t.elapsed()
            );
            trees_from = horizon;
        }
        if (epoch + 1 - first) % 50 == 0 {
            let now = allocated_bytes(dir.path());
            eprintln!(
                "epoch {epoch}: {:.0} MB on disk, {:.0} bytes per update since the build",
                now as f64 / 1e6,
                (now.saturating_sub(base)) as f64 / (2_500.0 * (epoch + 1 - first) as f64)
            );
        }
    }
}
