//! The whole cycle against a model: applying epochs on one thread or several, warm or cold,
//! then reading roots and proofs back from storage.

use super::cache::PageCache;
use super::read::{prove, root_at};
use super::write::apply_epoch_with;
use keyraft_core::tree::{empty_hash, leaf_hash, node_hash, Terminal};
use keyraft_core::{Digest, Index};
use keyraft_storage::Batch;

/// Rewriting subtrees on several threads, or from storage after a restart (cold cache),
/// writes the same bytes as one warm thread, and the root is the model's.
#[test]
fn threads_and_cold_caches_write_identical_epochs() {
    use keyraft_storage::{MemoryStorage, Storage as _};
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeMap;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    // (threads, cold cache)
    let setups = [(1, false), (2, false), (4, true)];
    let stores: Vec<_> = setups.iter().map(|_| (MemoryStorage::new(), PageCache::default())).collect();
    let mut model: BTreeMap<Index, Digest> = BTreeMap::new();
    for epoch in 1..=6u64 {
        let mut updates: BTreeMap<Index, Digest> = BTreeMap::new();
        let fresh = if epoch == 1 { 3_000 } else { 700 };
        for _ in 0..fresh {
            updates.insert(Index(rng.gen()), rng.gen());
        }
        let existing: Vec<Index> = model.keys().copied().collect();
        for _ in 0..(existing.len().min(200)) {
            let old = existing[rng.gen_range(0..existing.len())];
            updates.insert(old, rng.gen());
            // A neighbour sharing a long prefix pushes the old leaf down across pages.
            let mut near = old;
            let bit = rng.gen_range(9..255usize);
            near.0[bit / 8] ^= 0x80 >> (bit % 8);
            updates.insert(near, rng.gen());
        }
        let updates: Vec<(Index, Digest)> = updates.into_iter().collect();
        model.extend(updates.iter().copied());
        let mut results = Vec::new();
        for ((threads, cold), (store, cache)) in setups.iter().zip(&stores) {
            if *cold {
                cache.clear();
            }
            let mut batch = Batch::new();
            let previous = (epoch > 1).then(|| epoch - 1);
            let (root, written) =
                apply_epoch_with(store, cache, previous, epoch, &updates, &mut batch, *threads).unwrap();
            results.push((root, batch.clone()));
            store.write(batch).unwrap();
            cache.commit(written);
        }
        assert!(results.windows(2).all(|w| w[0] == w[1]), "epoch {epoch}: setups disagree");
        let leaves: Vec<(Index, Digest)> = model.iter().map(|(i, v)| (*i, *v)).collect();
        assert_eq!(results[0].0, reference_root(0, &leaves), "epoch {epoch}: root differs from the model");
        for (store, cache) in &stores {
            assert_eq!(root_at(store, cache, epoch).unwrap(), results[0].0);
            assert_eq!(root_at(store, &PageCache::default(), epoch).unwrap(), results[0].0);
        }
        // Proofs of every epoch so far agree whether the cache serves the pages it holds of
        // that epoch's tree (written then or before) or storage serves them all.
        let (store, cache) = &stores[0];
        for past in 1..=epoch {
            for index in model.keys().step_by(211) {
                assert_eq!(
                    prove(store, cache, past, index).unwrap(),
                    prove(store, &PageCache::default(), past, index).unwrap(),
                    "epoch {past} proven after epoch {epoch}"
                );
            }
        }
    }
    // Every leaf is provable from storage alone, at the last epoch.
    let (store, _) = &stores[2];
    for (index, value) in model.iter().step_by(97) {
        let proof = prove(store, &PageCache::default(), 6, index).unwrap();
        assert_eq!(proof.terminal, Terminal::Leaf { value: *value });
    }
}

fn reference_root(depth: usize, leaves: &[(Index, Digest)]) -> Digest {
    match leaves {
        [] => empty_hash(),
        [(i, v)] => leaf_hash(depth as u16, i, v),
        _ => {
            let split = leaves.partition_point(|(i, _)| !i.bit(depth));
            node_hash(&reference_root(depth + 1, &leaves[..split]), &reference_root(depth + 1, &leaves[split..]))
        }
    }
}

/// Pruning below a horizon keeps every tree from the horizon on byte for byte (roots and
/// proofs as in a store never pruned), deletes the rest, and later epochs still apply on top
/// of a pruned store with a cold cache.
#[test]
fn pruning_keeps_every_tree_from_the_horizon_on() {
    use super::prune::garbage_before;
    use keyraft_storage::{Direction, MemoryStorage, Storage as _};
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let (full, pruned) = (MemoryStorage::new(), MemoryStorage::new());
    let (full_cache, pruned_cache) = (PageCache::default(), PageCache::default());
    let mut indexes: Vec<Index> = Vec::new();
    let mut horizon = 0;
    let mut chunks_deleted = 0;
    for epoch in 1..=36u64 {
        let mut updates = std::collections::BTreeMap::new();
        // A small directory whose entries change often: most page versions are soon replaced.
        for _ in 0..(if epoch == 1 { 400 } else { 10 }) {
            updates.insert(Index(rng.gen()), rng.gen());
        }
        if !indexes.is_empty() {
            for _ in 0..150 {
                updates.insert(indexes[rng.gen_range(0..indexes.len())], rng.gen());
            }
        }
        let updates: Vec<(Index, Digest)> = updates.into_iter().collect();
        indexes.extend(updates.iter().map(|(i, _)| *i));
        for (store, cache) in [(&full, &full_cache), (&pruned, &pruned_cache)] {
            let mut batch = Batch::new();
            let previous = (epoch > 1).then(|| epoch - 1);
            let (_, written) = apply_epoch_with(store, cache, previous, epoch, &updates, &mut batch, 2).unwrap();
            store.write(batch).unwrap();
            cache.commit(written);
        }
        if epoch % 6 == 0 {
            horizon = epoch - 2;
            let garbage = garbage_before(&pruned, horizon).unwrap();
            assert!(garbage.keys.len() > garbage.chunks && garbage.chunks_kept > 0, "epoch {epoch}: {garbage:?}");
            chunks_deleted += garbage.chunks;
            let mut batch = Batch::new();
            for key in &garbage.keys {
                batch.delete(key.clone());
            }
            pruned.write(batch).unwrap();
            assert_eq!(garbage_before(&pruned, horizon).unwrap().keys, Vec::<Vec<u8>>::new(), "pruning twice");
            // The next epoch reads the newest pages from storage.
            pruned_cache.clear();
        }
        for e in horizon.max(1)..=epoch {
            let cold = PageCache::default();
            assert_eq!(root_at(&pruned, &cold, e).unwrap(), root_at(&full, &cold, e).unwrap(), "root of epoch {e}");
            for index in indexes.iter().step_by(53).chain([&Index([0x5a; 32])]) {
                assert_eq!(
                    prove(&pruned, &cold, e, index).unwrap(),
                    prove(&full, &cold, e, index).unwrap(),
                    "epoch {e}"
                );
            }
        }
    }
    // What is left below the last horizon is only what its tree reaches.
    let left: Vec<_> =
        pruned.range(b"t", Some(&super::chunk::root_key(horizon)), Direction::Forward).map(|r| r.unwrap().0).collect();
    let reached = super::prune::reachable_chunks(&pruned, horizon).unwrap();
    assert_eq!(left.len(), reached.iter().filter(|(e, _)| *e < horizon).count());
    assert!(chunks_deleted > 0);
    let size =
        |s: &MemoryStorage| s.range(b"t", Some(b"u"), Direction::Forward).map(|r| r.unwrap().1.len()).sum::<usize>();
    assert!(size(&pruned) * 2 < size(&full), "pruned {} of {} bytes", size(&pruned), size(&full));
}

/// A store written before pages were stored compact (every page expanded) upgrades in place:
/// later epochs write compact pages that point at expanded ones, after a restart (cold cache),
/// and every epoch's root and proofs stay the model's, with and without the cache, also after
/// retention pruned the oldest trees.
#[test]
fn a_store_of_expanded_pages_upgrades_in_place() {
    use super::page::STORE_EXPANDED;
    use super::prune::garbage_before;
    use keyraft_storage::{MemoryStorage, Storage as _};
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeMap;
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    let (store, cache) = (MemoryStorage::new(), PageCache::default());
    let mut model: BTreeMap<Index, Digest> = BTreeMap::new();
    let mut roots = Vec::new();
    for epoch in 1..=6u64 {
        // Epochs 1-3 as the old build wrote them; a restart; epochs 4-6 compact.
        STORE_EXPANDED.with(|s| s.set(epoch <= 3));
        if epoch == 4 {
            cache.clear();
        }
        let mut updates: BTreeMap<Index, Digest> = (0..600).map(|_| (Index(rng.gen()), rng.gen())).collect();
        let existing: Vec<Index> = model.keys().copied().collect();
        for _ in 0..existing.len().min(150) {
            updates.insert(existing[rng.gen_range(0..existing.len())], rng.gen());
        }
        let updates: Vec<(Index, Digest)> = updates.into_iter().collect();
        model.extend(updates.iter().copied());
        let mut batch = Batch::new();
        let (root, written) =
            apply_epoch_with(&store, &cache, (epoch > 1).then(|| epoch - 1), epoch, &updates, &mut batch, 1).unwrap();
        store.write(batch).unwrap();
        cache.commit(written);
        let leaves: Vec<(Index, Digest)> = model.iter().map(|(i, v)| (*i, *v)).collect();
        assert_eq!(root, reference_root(0, &leaves), "epoch {epoch}");
        roots.push((root, model.clone()));
    }
    STORE_EXPANDED.with(|s| s.set(false));
    let layout = |e: u64| store.get(&super::chunk::root_key(e)).unwrap().unwrap()[0];
    assert_eq!((layout(3), layout(4)), (0, 1), "epochs 1-3 expanded, 4-6 compact");
    let check = |from: u64| {
        for (e, (root, leaves)) in (1..=6u64).zip(&roots).skip(from as usize - 1) {
            assert_eq!(root_at(&store, &PageCache::default(), e).unwrap(), *root, "root of epoch {e}");
            for (index, value) in leaves.iter().step_by(41) {
                let cold = prove(&store, &PageCache::default(), e, index).unwrap();
                assert_eq!(cold.terminal, Terminal::Leaf { value: *value }, "epoch {e}");
                assert_eq!(prove(&store, &cache, e, index).unwrap(), cold, "epoch {e}");
            }
        }
    };
    check(1);
    let garbage = garbage_before(&store, 5).unwrap();
    assert!(garbage.chunks > 0);
    let mut batch = Batch::new();
    for key in &garbage.keys {
        batch.delete(key.clone());
    }
    store.write(batch).unwrap();
    check(5);
}
