//! User ids' VRF results proved recently, in memory only.
//!
//! Proving a user id's index costs about 130 us, most of the CPU a lookup of a present
//! identity needs; a lookup of an identity proved recently takes its index and proof from
//! here. The cache is keyed by a hash of the user id (it holds no user ids, and fixed-size
//! keys bound its memory), lives only in this process and is never written anywhere.
//!
//! Bounded: two generations of at most `per_generation` results. When the newer generation
//! fills, the older is dropped; a hit in the older one moves the result to the newer, so the
//! identities looked up in the last generation's worth of proofs stay. The index and proof of
//! a user id depend only on the realm and the process's VRF key, both fixed for the process,
//! so a cached result never goes stale.

use keyraft_core::vrf::VrfProof;
use keyraft_core::Index;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;

/// Label of the cache keys' hash (internal to a process; no peer ever sees one).
const KEY_LABEL: &[u8] = b"keyraft/v1/server-vrf-cache";

type Generation = HashMap<[u8; 32], (Index, VrfProof)>;

/// Recently proved VRF results, see the module documentation.
#[derive(Debug)]
pub(crate) struct VrfCache {
    per_generation: usize,
    generations: Mutex<[Generation; 2]>,
}

impl VrfCache {
    /// Results per generation by default: 131,072 identities always held, at most 262,144
    /// (about 150 bytes each with the map's overhead: under 50 MiB).
    pub(crate) const ENTRIES_PER_GENERATION_DEFAULT: usize = 1 << 17;

    /// A cache of at most `2 * per_generation` results.
    pub(crate) fn new(per_generation: usize) -> Self {
        assert!(per_generation > 0, "a cache generation must hold at least one result");
        Self { per_generation, generations: Mutex::new(Default::default()) }
    }

    /// The index and proof of `user_id`: from the cache, or from `prove` (whose errors are
    /// returned and not cached).
    pub(crate) fn get_or_prove<E>(
        &self,
        user_id: &str,
        prove: impl FnOnce() -> Result<(Index, VrfProof), E>,
    ) -> Result<(Index, VrfProof), E> {
        let key = Self::key(user_id);
        {
            let mut generations = self.lock();
            if let Some(hit) = generations[0].get(&key) {
                return Ok(*hit);
            }
            if let Some(hit) = generations[1].remove(&key) {
                self.insert(&mut generations, key, hit);
                return Ok(hit);
            }
        }
        // Proved outside the lock: lookups prove in parallel.
        let result = prove()?;
        self.insert(&mut self.lock(), key, result);
        Ok(result)
    }

    /// Results held now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().iter().map(HashMap::len).sum()
    }

    fn insert(&self, generations: &mut [Generation; 2], key: [u8; 32], result: (Index, VrfProof)) {
        if generations[0].len() >= self.per_generation {
            generations[1] = std::mem::take(&mut generations[0]);
        }
        generations[0].insert(key, result);
        debug_assert!(generations.iter().all(|g| g.len() <= self.per_generation));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [Generation; 2]> {
        // The maps are valid whatever a panicking holder left half done.
        self.generations.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn key(user_id: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(KEY_LABEL);
        h.update(user_id.as_bytes());
        h.finalize().into()
    }
}

impl Default for VrfCache {
    fn default() -> Self {
        Self::new(Self::ENTRIES_PER_GENERATION_DEFAULT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyraft_core::vrf::VrfSecretKey;
    use std::cell::Cell;

    fn prover(key: &VrfSecretKey, user_id: &str) -> (Index, VrfProof) {
        let (proof, output) = key.prove_with_output(&keyraft_core::types::vrf_input("cache.example", user_id)).unwrap();
        (Index::of_vrf_output(&output), proof)
    }

    /// A lookup through `cache` that proves with `key` on a miss and counts the proofs.
    fn counting<'a>(
        cache: &'a VrfCache,
        key: &'a VrfSecretKey,
        proofs: &'a Cell<usize>,
    ) -> impl Fn(&str) -> (Index, VrfProof) + 'a {
        move |user: &str| {
            cache
                .get_or_prove(user, || {
                    proofs.set(proofs.get() + 1);
                    Ok::<_, ()>(prover(key, user))
                })
                .unwrap()
        }
    }

    #[test]
    fn a_hit_is_what_proving_gives_and_proves_nothing() {
        let key = VrfSecretKey::from_seed(&[3; 32]);
        let cache = VrfCache::new(8);
        let proofs = Cell::new(0);
        let get = counting(&cache, &key, &proofs);
        for user in ["a@x", "b@x", "a@x", "a@x", "b@x"] {
            assert_eq!(get(user), prover(&key, user));
        }
        assert_eq!(proofs.get(), 2);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn errors_are_not_cached() {
        let key = VrfSecretKey::from_seed(&[3; 32]);
        let cache = VrfCache::new(8);
        assert_eq!(cache.get_or_prove("a@x", || Err("no")), Err("no"));
        assert_eq!(cache.len(), 0);
        assert_eq!(cache.get_or_prove("a@x", || Ok::<_, &str>(prover(&key, "a@x"))), Ok(prover(&key, "a@x")));
    }

    #[test]
    fn bounded_and_the_identities_in_use_stay() {
        let key = VrfSecretKey::from_seed(&[3; 32]);
        let cache = VrfCache::new(4);
        let proofs = Cell::new(0);
        let get = counting(&cache, &key, &proofs);
        // "hot" is looked up between every new identity: it is never proved again.
        for i in 0..50 {
            assert_eq!(get("hot@x"), prover(&key, "hot@x"));
            get(&format!("cold{i}@x"));
            assert!(cache.len() <= 8, "{} results held, above two generations of 4", cache.len());
        }
        assert_eq!(proofs.get(), 51);
        // An identity dropped with its generation is proved again, with the same result.
        assert_eq!(get("cold0@x"), prover(&key, "cold0@x"));
        assert_eq!(proofs.get(), 52);
    }
}
