//! A verifier recomputes every published epoch of a realm and catches every kind of lie.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use keyraft_core::{EpochHead, SignedEntry};
use keyraft_epoch::verifier::{Mismatch, VerifierState, VerifyFailure};
use keyraft_state::harness::{derive_signing_key, Harness};
use keyraft_storage::MemoryStorage;

fn realm() -> Harness {
    let mut h = Harness::new("verify.example", 3, 1, 9);
    for round in 0..4u64 {
        for i in 0..8u64 {
            let key = derive_signing_key(9, &format!("u{i}"));
            let user = format!("u{i}@verify.example");
            if round == 0 {
                h.register(&user, &key, &[("pgp", b"k0")]).unwrap();
            } else if (i + round) % 2 == 0 {
                let profile = keyraft_state::harness::test_profile(&format!("{user}{round}"), &[("pgp", b"k")]);
                let u = h.make_update(
                    &user,
                    round,
                    keyraft_core::Policy::single(keyraft_state::harness::public_key(&key)),
                    profile,
                    &[&key],
                );
                h.append(keyraft_core::Command::Update(Box::new(u))).unwrap();
            }
        }
        h.now_ms += 1000;
        h.publish_epoch().unwrap();
    }
    h
}

fn published(h: &Harness) -> Vec<(Vec<SignedEntry>, EpochHead)> {
    (1..=h.machine.epoch_state().ratified_epoch)
        .map(|e| {
            let p = h.machine.published_epoch(e).unwrap().unwrap();
            (p.updates, p.head)
        })
        .collect()
}

fn mismatch(r: Result<keyraft_epoch::verifier::CheckedEpoch, VerifyFailure>) -> Mismatch {
    match r {
        Err(VerifyFailure::Mismatch(m)) => m,
        other => panic!("expected a mismatch, got {other:?}"),
    }
}

#[test]
fn an_honest_realm_is_recomputed_epoch_by_epoch_and_survives_a_restart() {
    let h = realm();
    let epochs = published(&h);
    let store = MemoryStorage::new();
    let mut v = VerifierState::open(store.clone(), h.config().clone()).unwrap();
    for (updates, head) in &epochs[..2] {
        let checked = v.check_epoch(updates, head).unwrap();
        assert_eq!(checked.head(), head);
        v.commit(checked).unwrap();
    }
    // Once flushed and reopened, it resumes after the last committed epoch.
    v.flush().unwrap();
    drop(v);
    let mut v = VerifierState::open(store.clone(), h.config().clone()).unwrap();
    assert_eq!(v.last_epoch(), 2);
    // Epochs committed back to back, each checked against the previous one's entries before
    // their batches reach storage; dropping the state lets the writer finish them.
    for (updates, head) in &epochs[2..] {
        let checked = v.check_epoch(updates, head).unwrap();
        v.commit(checked).unwrap();
    }
    assert_eq!(v.last_head(), epochs.last().map(|(_, h)| h));
    drop(v);
    let v = VerifierState::open(store, h.config().clone()).unwrap();
    assert_eq!(v.last_head(), epochs.last().map(|(_, h)| h));
}

#[test]
fn every_kind_of_lie_is_caught() {
    let h = realm();
    let epochs = published(&h);
    let mut v = VerifierState::open(MemoryStorage::new(), h.config().clone()).unwrap();
    let checked = v.check_epoch(&epochs[0].0, &epochs[0].1).unwrap();
    v.commit(checked).unwrap();
    let (updates, head) = &epochs[1];
    assert!(updates.len() >= 2);

    // Skipping or repeating an epoch.
    assert!(matches!(
        mismatch(v.check_epoch(&epochs[2].0, &epochs[2].1)),
        Mismatch::OutOfOrder { expected: 2, got: 3 }
    ));
    assert!(matches!(mismatch(v.check_epoch(&epochs[0].0, &epochs[0].1)), Mismatch::OutOfOrder { .. }));
    // A forged signature.
    let mut forged = updates.clone();
    forged[0].signatures[0].signature.0[5] ^= 1;
    assert!(matches!(mismatch(v.check_epoch(&forged, head)), Mismatch::UnauthorizedUpdate { .. }));
    // A version that does not increase (a replayed registration).
    let replayed = epochs[0].0.clone();
    let mut with_replay = updates.clone();
    if let Some(old) = replayed.iter().find(|r| !updates.iter().any(|u| u.entry.index == r.entry.index)) {
        with_replay.push(old.clone());
        with_replay.sort_by_key(|u| u.entry.index);
        assert!(matches!(
            mismatch(v.check_epoch(&with_replay, head)),
            Mismatch::UnauthorizedUpdate { .. } | Mismatch::HeadDiffers { .. }
        ));
    }
    // A hidden update: the head no longer matches.
    assert!(matches!(mismatch(v.check_epoch(&updates[1..], head)), Mismatch::HeadDiffers { .. }));
    // Reordered or duplicated updates.
    let mut reordered = updates.clone();
    reordered.swap(0, 1);
    assert!(matches!(mismatch(v.check_epoch(&reordered, head)), Mismatch::UnorderedUpdates { .. }));
    let mut doubled = updates.clone();
    doubled.insert(1, updates[0].clone());
    assert!(matches!(mismatch(v.check_epoch(&doubled, head)), Mismatch::UnorderedUpdates { .. }));
    // Every field of the head.
    let mut bad = head.clone();
    bad.root[0] ^= 1;
    assert!(matches!(mismatch(v.check_epoch(updates, &bad)), Mismatch::HeadDiffers { .. }));
    let mut bad = head.clone();
    bad.previous_head_hash[3] ^= 1;
    assert!(matches!(mismatch(v.check_epoch(updates, &bad)), Mismatch::HeadDiffers { .. }));
    let mut bad = head.clone();
    bad.update_count += 1;
    assert!(matches!(mismatch(v.check_epoch(updates, &bad)), Mismatch::HeadDiffers { .. }));
    let mut bad = head.clone();
    bad.config_hash[0] ^= 1;
    assert!(matches!(mismatch(v.check_epoch(updates, &bad)), Mismatch::HeadDiffers { .. }));
    let mut bad = head.clone();
    bad.realm = "other.example".into();
    assert!(matches!(mismatch(v.check_epoch(updates, &bad)), Mismatch::HeadDiffers { .. }));
    let mut bad = head.clone();
    bad.issue_time_ms = epochs[0].1.issue_time_ms - 1;
    // Issue times count recovery windows: going back is named as such.
    assert!(matches!(mismatch(v.check_epoch(updates, &bad)), Mismatch::IssueTimeBackwards { .. }));
    // Nothing was committed by the failures: the honest epoch still passes.
    let checked = v.check_epoch(updates, head).unwrap();
    v.commit(checked).unwrap();
    assert_eq!(v.last_epoch(), 2);
}

#[test]
fn an_epoch_interrupted_between_its_batches_is_rolled_back_on_open() {
    let h = realm();
    let epochs = published(&h);
    let store = MemoryStorage::new();
    let mut v = VerifierState::open(store.clone(), h.config().clone()).unwrap();
    let (updates, head) = &epochs[0];
    v.commit(v.check_epoch(updates, head).unwrap()).unwrap();
    v.flush().unwrap();
    let after_first = keyraft_storage::dump_all(&store).unwrap();
    // Epoch 2 is written in several batches (the pending record, the entries, the tree and
    // head); the process dies before the last one.
    let checked = v.check_epoch(&epochs[1].0, &epochs[1].1).unwrap();
    drop(v);
    let batches = checked.batches();
    assert!(batches.len() >= 3, "{} batches", batches.len());
    for b in &batches[..batches.len() - 1] {
        keyraft_storage::Storage::write(&store, b.clone()).unwrap();
    }
    assert_ne!(keyraft_storage::dump_all(&store).unwrap(), after_first);
    // Opening puts back what epoch 1 left, so epoch 2 is checked against the right entries
    // (without the roll-back its updates would not raise the versions they find).
    let mut v = VerifierState::open(store.clone(), h.config().clone()).unwrap();
    assert_eq!(v.last_epoch(), 1);
    assert_eq!(keyraft_storage::dump_all(&store).unwrap(), after_first);
    for (updates, head) in &epochs[1..] {
        let checked = v.check_epoch(updates, head).unwrap();
        v.commit(checked).unwrap();
    }
    v.flush().unwrap();
    assert_eq!(v.last_head(), epochs.last().map(|(_, h)| h));
}

#[test]
fn under_protocol_version_2_a_version_gap_is_an_unauthorized_update() {
    use keyraft_core::registration::RegistrationPolicy;
    use keyraft_core::update::{sign_entry, UpdateRejection};
    use keyraft_state::harness::{public_key, test_profile};

    let mut h = Harness::with_registration("verify.example", 3, 1, 9, RegistrationPolicy::open());
    let key = derive_signing_key(9, "gap");
    h.register("gap@verify.example", &key, &[("pgp", b"k0")]).unwrap();
    h.publish_epoch().unwrap();
    let u = h.make_update(
        "gap@verify.example",
        1,
        keyraft_core::Policy::single(public_key(&key)),
        test_profile("gap1", &[("pgp", b"k1")]),
        &[&key],
    );
    h.append(keyraft_core::Command::Update(Box::new(u))).unwrap();
    h.publish_epoch().unwrap();
    let epochs = published(&h);
    let mut v = VerifierState::open(MemoryStorage::new(), h.config().clone()).unwrap();
    let checked = v.check_epoch(&epochs[0].0, &epochs[0].1).unwrap();
    v.commit(checked).unwrap();
    // The honest epoch passes; the same epoch with the version jumping to 2, properly signed
    // by the owner, is what replicas that hide version 1 from histories would publish.
    let (updates, head) = &epochs[1];
    let mut gap = updates.clone();
    gap[0].entry.version = 2;
    gap[0].signatures = sign_entry(&h.config().realm, &gap[0].entry, &[&key]);
    match mismatch(v.check_epoch(&gap, head)) {
        Mismatch::UnauthorizedUpdate { reason, .. } => {
            assert_eq!(reason, UpdateRejection::VersionNotNext { current: 0, got: 2 })
        }
        other => panic!("expected an unauthorized update, got {other:?}"),
    }
    v.check_epoch(updates, head).unwrap();
}

/// In an epoch large enough to be checked on several threads in signature batches, a forged
/// signature anywhere is caught, and the evidence names the first forged update whatever the
/// batches and threads (the verdict of checking one update after another).
#[test]
fn a_forgery_in_a_large_epoch_is_named_as_a_sequential_check_names_it() {
    let mut h = Harness::new("verify.example", 3, 1, 9);
    let key = derive_signing_key(9, "many");
    for i in 0..600 {
        h.register(&format!("m{i}@verify.example"), &key, &[("pgp", b"k")]).unwrap();
    }
    h.now_ms += 1000;
    h.publish_epoch().unwrap();
    let epochs = published(&h);
    let (updates, head) = &epochs[0];
    assert_eq!(updates.len(), 600);
    let v = VerifierState::open(MemoryStorage::new(), h.config().clone()).unwrap();
    assert_eq!(v.check_epoch(updates, head).unwrap().head(), head);
    for forged_at in [vec![0], vec![63, 64], vec![299, 599], vec![450, 300], vec![599]] {
        let mut forged = updates.clone();
        for &at in &forged_at {
            forged[at].signatures[0].signature.0[7] ^= 1;
        }
        let first = forged_at.iter().min().copied().unwrap();
        match mismatch(v.check_epoch(&forged, head)) {
            Mismatch::UnauthorizedUpdate { index, reason, .. } => {
                assert_eq!(index, hex::encode(updates[first].entry.index.0), "forged at {forged_at:?}");
                assert!(matches!(reason, keyraft_core::UpdateRejection::BadSignature { .. }), "{reason:?}");
            }
            other => panic!("forged at {forged_at:?}: {other:?}"),
        }
    }
    // The honest epoch still passes after the failed checks.
    assert_eq!(v.check_epoch(updates, head).unwrap().head(), head);
}
