//! Test support: direct access to the tree over an in-memory store, and a reference root
//! computation written independently of the stored tree.

use crate::tree;
use keyraft_core::tree::{empty_hash, leaf_hash, node_hash, TreeProof};
use keyraft_core::{Digest, Index};
use keyraft_storage::{Batch, MemoryStorage, Storage};
use std::collections::BTreeMap;

/// A tree applied epoch by epoch, in memory or on sled.
pub struct TreeFixture {
    store: Box<dyn Storage>,
    cache: tree::PageCache,
    last_epoch: Option<u64>,
}

impl std::fmt::Debug for TreeFixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TreeFixture")
    }
}

impl Default for TreeFixture {
    fn default() -> Self {
        Self::new()
    }
}

impl TreeFixture {
    /// An empty tree in memory.
    pub fn new() -> Self {
        Self { store: Box::new(MemoryStorage::new()), cache: tree::PageCache::default(), last_epoch: None }
    }

    /// An empty tree in a sled database at `path`.
    ///
    /// # Panics
    /// If the database cannot be opened.
    pub fn on_sled(path: &std::path::Path) -> Self {
        Self {
            store: Box::new(keyraft_storage::SledStorage::open(path).expect("open sled")),
            cache: tree::PageCache::default(),
            last_epoch: None,
        }
    }

    /// The store underneath.
    pub fn store(&self) -> &dyn Storage {
        self.store.as_ref()
    }

    /// Makes every applied epoch durable.
    ///
    /// # Panics
    /// If the store fails.
    pub fn flush(&self) {
        self.store.flush().expect("flush");
    }

    /// Applies `updates` (sorted, distinct) as `epoch` and returns the root.
    ///
    /// # Panics
    /// If the store fails (it is in memory) or the updates are not sorted.
    pub fn apply(&mut self, epoch: u64, updates: &[(Index, Digest)]) -> Digest {
        let mut batch = Batch::new();
        let t = std::time::Instant::now();
        let (root, written) =
            tree::apply_epoch(self.store.as_ref(), &self.cache, self.last_epoch, epoch, updates, &mut batch)
                .expect("store");
        let built = t.elapsed();
        let (n, bytes) = (batch.len(), batch.approximate_bytes());
        self.store.write(batch).expect("store");
        self.cache.commit(written);
        self.last_epoch = Some(epoch);
        if std::env::var_os("KEYRAFT_TRACE_EPOCHS").is_some() {
            eprintln!("epoch {epoch}: build {built:?}, write {:?} ({n} keys, {bytes} bytes)", t.elapsed() - built);
        }
        root
    }

    /// The root at `epoch`.
    ///
    /// # Panics
    /// If the store fails.
    pub fn root_at(&self, epoch: u64) -> Digest {
        tree::root_at(self.store.as_ref(), &self.cache, epoch).expect("memory store")
    }

    /// A proof for `index` at `epoch`.
    ///
    /// # Panics
    /// If the store fails.
    pub fn prove(&self, epoch: u64, index: &Index) -> TreeProof {
        tree::prove(self.store.as_ref(), &self.cache, epoch, index).expect("memory store")
    }

    /// A proof for `index` at `epoch` from storage alone (as after a restart, or for an
    /// epoch whose pages were all rewritten since).
    ///
    /// # Panics
    /// If the store fails.
    pub fn prove_from_storage(&self, epoch: u64, index: &Index) -> TreeProof {
        tree::prove(self.store.as_ref(), &tree::PageCache::default(), epoch, index).expect("memory store")
    }

    /// The root of a compressed tree holding exactly `model`, computed from scratch.
    pub fn model_root(&self, model: &BTreeMap<Index, Digest>) -> Digest {
        let leaves: Vec<(Index, Digest)> = model.iter().map(|(i, v)| (*i, *v)).collect();
        reference_root(0, &leaves)
    }
}

fn reference_root(depth: usize, leaves: &[(Index, Digest)]) -> Digest {
    match leaves {
        [] => empty_hash(),
        [(i, v)] => leaf_hash(depth as u16, i, v),
        _ => {
            let (l, r): (Vec<_>, Vec<_>) = leaves.iter().partition(|(i, _)| !i.bit(depth));
            node_hash(&reference_root(depth + 1, &l), &reference_root(depth + 1, &r))
        }
    }
}

/// The resident set size of this process, in MiB (0 where `/proc` is missing): benchmarks
/// print it.
pub fn rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

/// A valid realm configuration with one replica and one verifier, keys derived from `realm`
/// (tests of this crate need a configuration, not a realm that runs).
///
/// # Panics
/// Never for the fixed keys it derives.
pub fn realm_config(realm: &str) -> keyraft_core::RealmConfig {
    let key = |name: &str| {
        let seed = keyraft_core::hash::hash("keyraft-epoch test key", &[realm.as_bytes(), name.as_bytes()]);
        ed25519_dalek::SigningKey::from_bytes(&seed)
    };
    let vrf = keyraft_core::vrf::VrfSecretKey::from_seed(&key("vrf").to_bytes());
    keyraft_core::RealmConfig::new(
        realm,
        vrf.public_key(),
        vec![keyraft_core::keys::public_key_of(&key("replica"))],
        vec![keyraft_core::keys::public_key_of(&key("verifier"))],
    )
    .expect("derived keys make a valid configuration")
}
