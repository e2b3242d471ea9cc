//! Model-based tests of the persistent tree: random epochs of updates against a `BTreeMap`
//! model; at every epoch, every honest proof verifies, every flipped byte fails, and absence
//! proofs fail for present keys and vice versa.
#![allow(clippy::unwrap_used, missing_docs)]

use keyraft_core::tree::{TreeAnswer, TreeProof};
use keyraft_core::{decode_canonical, Canonical, Digest, Index};
use keyraft_epoch::testing::TreeFixture;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn index_strategy() -> impl Strategy<Value = Index> {
    // Small alphabet of first bytes so that prefixes collide and leaves move down.
    (0u8..4, any::<[u8; 31]>()).prop_map(|(first, rest)| {
        let mut i = [0u8; 32];
        i[0] = first << 6;
        i[1..].copy_from_slice(&rest);
        Index(i)
    })
}

fn epochs_strategy() -> impl Strategy<Value = Vec<Vec<(Index, Digest)>>> {
    prop::collection::vec(prop::collection::vec((index_strategy(), any::<[u8; 32]>()), 0..12), 1..6)
}

fn check_proof(proof: &TreeProof, root: &Digest, index: &Index, expected: Option<&Digest>) {
    let answer = proof.verify(root, index).unwrap();
    match expected {
        Some(v) => assert_eq!(answer, TreeAnswer::Present(*v)),
        None => assert_eq!(answer, TreeAnswer::Absent),
    }
    // Every byte matters: flipping any bit of any byte makes decoding or verification fail,
    // or (never) changes the answer.
    let bytes = proof.encode();
    for i in 0..bytes.len() {
        let mut tampered = bytes.clone();
        tampered[i] ^= 0x01;
        if let Ok(p) = decode_canonical::<TreeProof>(&tampered) {
            assert!(p.verify(root, index).is_err(), "flipping byte {i} of {} still verifies", bytes.len());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn tree_matches_model(epochs in epochs_strategy(), probes in prop::collection::vec(index_strategy(), 4)) {
        let mut fixture = TreeFixture::new();
        let mut model: BTreeMap<Index, Digest> = BTreeMap::new();
        let mut history: Vec<(u64, Digest, BTreeMap<Index, Digest>)> = Vec::new();
        for (e, updates) in epochs.iter().enumerate() {
            let epoch = e as u64 + 1;
            let mut batch: BTreeMap<Index, Digest> = BTreeMap::new();
            for (i, v) in updates {
                batch.insert(*i, *v);
            }
            let root = fixture.apply(epoch, &batch.iter().map(|(i, v)| (*i, *v)).collect::<Vec<_>>());
            model.extend(batch);
            prop_assert_eq!(root, fixture.model_root(&model));
            history.push((epoch, root, model.clone()));
        }
        // Every epoch stays readable and provable.
        for (epoch, root, snapshot) in &history {
            prop_assert_eq!(fixture.root_at(*epoch), *root);
            for (i, v) in snapshot {
                let proof = fixture.prove(*epoch, i);
                check_proof(&proof, root, i, Some(v));
            }
            for probe in &probes {
                let proof = fixture.prove(*epoch, probe);
                check_proof(&proof, root, probe, snapshot.get(probe));
            }
        }
    }
}

#[test]
fn inclusion_proof_does_not_prove_absence_and_vice_versa() {
    let mut fixture = TreeFixture::new();
    let a = Index([0x00; 32]);
    let b = Index([0x80; 32]);
    let c = Index([0x40; 32]);
    let root = fixture.apply(1, &[(a, [1; 32]), (b, [2; 32])]);
    // An inclusion proof for `a` relabelled as a proof about `c` fails.
    let proof_a = fixture.prove(1, &a);
    assert!(proof_a.verify(&root, &c).is_err());
    // The absence proof for `c` does not verify for the present `a`.
    let proof_c = fixture.prove(1, &c);
    assert_eq!(proof_c.verify(&root, &c).unwrap(), TreeAnswer::Absent);
    assert!(proof_c.verify(&root, &a).is_err() || proof_c.verify(&root, &a).unwrap() != TreeAnswer::Absent);
}

#[test]
fn empty_and_single_leaf_trees() {
    let mut fixture = TreeFixture::new();
    let a = Index([7; 32]);
    let empty_root = fixture.root_at(1);
    assert_eq!(empty_root, keyraft_core::tree::empty_hash());
    let proof = fixture.prove(1, &a);
    assert_eq!(proof.verify(&empty_root, &a).unwrap(), TreeAnswer::Absent);
    let root = fixture.apply(1, &[(a, [9; 32])]);
    assert_eq!(root, keyraft_core::tree::leaf_hash(0, &a, &[9; 32]));
    assert_eq!(fixture.prove(1, &a).verify(&root, &a).unwrap(), TreeAnswer::Present([9; 32]));
}

#[test]
fn large_epochs_span_many_chunks_and_stay_provable() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let mut fixture = TreeFixture::new();
    let mut model: BTreeMap<Index, Digest> = BTreeMap::new();
    let mut roots = Vec::new();
    for epoch in 1..=3u64 {
        let mut batch: BTreeMap<Index, Digest> = BTreeMap::new();
        for _ in 0..4000 {
            batch.insert(Index(rng.gen()), rng.gen());
        }
        // Overwrite some existing entries too.
        for (i, _) in model.iter().take(100) {
            batch.insert(*i, rng.gen());
        }
        let root = fixture.apply(epoch, &batch.iter().map(|(i, v)| (*i, *v)).collect::<Vec<_>>());
        model.extend(batch);
        assert_eq!(root, fixture.model_root(&model));
        roots.push((epoch, root, model.clone()));
    }
    for (epoch, root, snapshot) in &roots {
        for (i, v) in snapshot.iter().step_by(97) {
            assert_eq!(fixture.prove(*epoch, i).verify(root, i).unwrap(), TreeAnswer::Present(*v));
        }
        let absent = Index(rng.gen());
        assert_eq!(fixture.prove(*epoch, &absent).verify(root, &absent).unwrap(), TreeAnswer::Absent);
    }
}
