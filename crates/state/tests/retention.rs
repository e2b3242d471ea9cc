//! Retention (`keyraft_state::retention`): pruning the trees of old epochs keeps every tree
//! from the horizon on byte for byte, refuses the older ones with `StateError::Pruned`,
//! survives a crash in the middle, and never changes what the step function writes.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use keyraft_core::lookup::verify_lookup_at;
use keyraft_core::{Command, LogPosition, Policy};
use keyraft_state::harness::{derive_signing_key, public_key, test_profile, Harness};
use keyraft_state::retention::{delete_pruned, plan_prune};
use keyraft_state::{StateError, StateMachine};
use keyraft_storage::{dump_all, MemoryStorage, Storage};

const EPOCHS: u64 = 30;
const KEPT: u64 = 10;

fn user(i: usize) -> String {
    format!("user{i}@example.org")
}

/// A realm of `EPOCHS` epochs, each registering 12 users and updating 8 earlier ones.
fn realm() -> (Harness, usize) {
    let mut h = Harness::new("retention.example", 3, 1, 5);
    let owner = derive_signing_key(5, "owner");
    let mut users = 0;
    for epoch in 1..=EPOCHS {
        for _ in 0..12 {
            h.register(&user(users), &owner, &[("k", b"0")]).unwrap();
            users += 1;
        }
        for j in (0..8).filter(|_| epoch > 1) {
            let i = (epoch as usize * 7 + j * 13) % (users - 12);
            append_update(&mut h, i, epoch, &owner);
        }
        h.publish_epoch().unwrap();
    }
    (h, users)
}

fn append_update(h: &mut Harness, i: usize, salt: u64, owner: &ed25519_dalek::SigningKey) {
    let (index, _) = h.index_of(&user(i));
    let version = h.machine.latest_update(&index).unwrap().map_or(0, |(_, u)| u.signed.entry.version + 1);
    let profile = test_profile(&format!("{}/{salt}", user(i)), &[("k", &salt.to_be_bytes())]);
    let update = h.make_update(&user(i), version, Policy::single(public_key(owner)), profile, &[owner]);
    h.append(Command::Update(Box::new(update))).unwrap();
}

fn proof_bytes<S: Storage>(m: &StateMachine<S>, h: &Harness, i: usize, epoch: u64) -> Result<Vec<u8>, StateError> {
    let (index, vrf_proof) = h.index_of(&user(i));
    Ok(m.lookup_parts(&index, epoch, 1)?.expect("head").encode_proof(&user(i), &vrf_proof))
}

#[test]
fn pruned_trees_are_refused_kept_ones_unchanged_and_a_crash_is_harmless() {
    let (h, users) = realm();
    let store = MemoryStorage::new();
    let mut pruned = h.replay_into(store.clone()).unwrap();
    assert_eq!(pruned.retention_horizon(KEPT, 1), Some(EPOCHS - KEPT + 1));
    assert_eq!(pruned.retention_horizon(EPOCHS, 1), None, "nothing to prune yet");
    let horizon = pruned.retention_horizon(KEPT, 1).unwrap();

    let garbage = plan_prune(pruned.store(), horizon).unwrap();
    assert!(garbage.chunks > 0, "{garbage:?}");
    pruned.begin_prune(horizon).unwrap();
    // A crash halfway through the deletions: the first half flushed, the rest lost.
    let half = garbage.keys.len() / 2;
    delete_pruned(pruned.store(), &garbage.keys[..half]).unwrap();
    pruned.store().flush().unwrap();
    delete_pruned(pruned.store(), &garbage.keys[half..]).unwrap();
    let store = store.crash();
    drop(pruned);
    let mut pruned = StateMachine::open(store.clone(), h.genesis.clone()).unwrap();
    assert_eq!(pruned.trees_from(), horizon, "the horizon is durable with the first deletions");
    let rest = plan_prune(pruned.store(), horizon).unwrap();
    assert_eq!(rest.keys, garbage.keys[half..].to_vec(), "the next pruning finds what is left");
    delete_pruned(pruned.store(), &rest.keys).unwrap();
    assert!(plan_prune(pruned.store(), horizon).unwrap().keys.is_empty());

    let realm = h.client_realm(1);
    for epoch in 1..=EPOCHS {
        let head = h.machine.head(epoch).unwrap().unwrap();
        // A verifier resuming at any epoch is still answered: the root comes from the head.
        assert_eq!(pruned.root_at(epoch).unwrap(), head.root, "epoch {epoch}");
        for i in (0..users).step_by(17) {
            let got = proof_bytes(&pruned, &h, i, epoch);
            if epoch < horizon {
                let err = got.unwrap_err();
                assert!(
                    matches!(err, StateError::Pruned { epoch: e, oldest } if e == epoch && oldest == horizon),
                    "{err}"
                );
                assert!(err.to_string().contains("retention keeps the trees from epoch"), "{err}");
            } else {
                let bytes = got.unwrap();
                assert_eq!(bytes, proof_bytes(&h.machine, &h, i, epoch).unwrap(), "user {i} epoch {epoch}");
                let proof = keyraft_core::decode_canonical::<keyraft_core::LookupProof>(&bytes).unwrap();
                verify_lookup_at(&realm, &user(i), &proof, epoch).unwrap();
            }
        }
    }

    // The step writes the same after pruning: apply more epochs to the pruned state and to the
    // full one; they differ only in what retention deleted and its record.
    let mut h = h;
    let owner = derive_signing_key(5, "owner");
    let from = h.log.len();
    for epoch in EPOCHS + 1..=EPOCHS + 3 {
        for j in 0..5 {
            append_update(&mut h, j * 11, epoch, &owner);
        }
        h.publish_epoch().unwrap();
    }
    for (i, command) in h.log.iter().enumerate().skip(from) {
        pruned.apply(LogPosition { term: 1, index: i as u64 + 1 }, command).unwrap();
    }
    let below_horizon = |k: &[u8]| {
        k == b"mtrees-from" || (k.first() == Some(&b't') && u64::from_be_bytes(k[1..9].try_into().unwrap()) < horizon)
    };
    let strip =
        |s: &dyn Storage| dump_all(s).unwrap().into_iter().filter(|(k, _)| !below_horizon(k)).collect::<Vec<_>>();
    assert_eq!(strip(pruned.store()), strip(h.machine.store()));
    assert_eq!(pruned.epoch_state(), h.machine.epoch_state());
}
