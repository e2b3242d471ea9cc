//! Recovery with a veto window (docs/protocol.md section 6.3) in the step function and in a
//! verifier's replay: pending for the window, then the entry; vetoed by an update under the
//! current policy; replaced by a second request; the same bytes on every engine and after a
//! crash; every proof carries the pending recovery; a verifier catches one applied early.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use keyraft_core::lookup::{verify_lookup, verify_lookup_at, VerifyError};
use keyraft_core::recovery::RecoveryRejection;
use keyraft_core::registration::RegistrationPolicy;
use keyraft_core::{Canonical, Command, EpochHead, Index, LogPosition, LookupProof, Policy, UpdateRejection};
use keyraft_epoch::verifier::{Mismatch, VerifierState, VerifyFailure};
use keyraft_state::harness::{derive_signing_key, public_key, test_profile, Harness};
use keyraft_state::{Outcome, PublishedEpoch, StateMachine};
use keyraft_storage::{dump_all, MemoryStorage, SledStorage, Storage};

const WINDOW_MS: u64 = 10_000;
const ALICE: &str = "alice@example.org";
const SEED: u64 = 31;

fn policy(window_ms: u64) -> RegistrationPolicy {
    RegistrationPolicy { recovery_window_ms: window_ms, ..RegistrationPolicy::open() }
}

fn accepted_epoch(outcome: Outcome) -> u64 {
    match outcome {
        Outcome::UpdateAccepted { epoch, .. } => epoch,
        other => panic!("expected acceptance, got {other:?}"),
    }
}

fn rejected(outcome: Outcome) -> UpdateRejection {
    match outcome {
        Outcome::UpdateRejected { reason, .. } => reason,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn owner() -> ed25519_dalek::SigningKey {
    derive_signing_key(SEED, "alice-old")
}

fn thief() -> ed25519_dalek::SigningKey {
    derive_signing_key(SEED, "alice-new")
}

/// A version-2 realm with the given window where alice registered in epoch 1 (published).
fn realm_with_alice(window_ms: u64) -> Harness {
    let mut h = Harness::with_registration("example.org", 3, 1, SEED, policy(window_ms));
    assert_eq!(accepted_epoch(h.register(ALICE, &owner(), &[("mail", b"old-key")]).unwrap()), 1);
    h.publish_epoch().unwrap();
    h
}

/// Publishes an epoch `advance_ms` after the last one.
fn publish_after(h: &mut Harness, advance_ms: u64) -> EpochHead {
    h.now_ms += advance_ms;
    h.publish_epoch().unwrap()
}

/// Verifies alice's proof at the last epoch, as a client at the head's time.
fn lookup(h: &Harness) -> keyraft_core::Lookup {
    let proof = h.lookup_proof(ALICE, None, 1).unwrap();
    verify_lookup(&h.client_realm(1), ALICE, &proof, proof.head.issue_time_ms, None).unwrap().into_inner()
}

fn version_and_key(l: &keyraft_core::Lookup) -> (u64, keyraft_core::PublicKey) {
    let (entry, _) = l.entry.as_ref().unwrap();
    (entry.version, entry.update_policy.keys()[0])
}

#[test]
fn a_recovery_is_pending_for_the_window_then_becomes_the_entry() {
    let mut h = realm_with_alice(WINDOW_MS);
    assert_eq!(accepted_epoch(h.recover(ALICE, &thief(), &[("mail", b"new-key")]).unwrap()), 2);
    let requested = publish_after(&mut h, 1_000);
    let l = lookup(&h);
    assert_eq!(version_and_key(&l), (0, public_key(&owner())), "the entry does not change at once");
    let pending = l.pending_recovery.expect("the proof shows the pending recovery");
    assert_eq!(pending.requested_epoch, 2);
    assert_eq!(pending.effective_ms, requested.issue_time_ms + WINDOW_MS);
    assert_eq!(pending.signed.entry.version, 1);
    assert_eq!(pending.signed.entry.update_policy.keys(), &[public_key(&thief())]);

    // Still pending one millisecond before its time.
    publish_after(&mut h, WINDOW_MS - 1);
    let l = lookup(&h);
    assert_eq!(version_and_key(&l), (0, public_key(&owner())));
    assert!(l.pending_recovery.is_some());

    // Its time: the recovery is the entry, with its profile, and nothing is pending.
    let matured = publish_after(&mut h, 1);
    assert_eq!(matured.update_count, 0, "a recovery taking effect is not an update of the epoch");
    let l = lookup(&h);
    assert_eq!(version_and_key(&l), (1, public_key(&thief())));
    assert_eq!(l.entry.as_ref().unwrap().1.keys["mail"], b"new-key");
    assert!(l.pending_recovery.is_none());
    // History lists it in the epoch it took effect.
    let (index, _) = h.index_of(ALICE);
    let history = h.machine.update_history(&index, u64::MAX, 10).unwrap();
    assert_eq!(history.iter().map(|(e, u)| (*e, u.signed.entry.version)).collect::<Vec<_>>(), [(4, 1), (1, 0)]);
    // Past epochs still prove what they were, pending record included.
    let past = h.lookup_proof(ALICE, Some(2), 1).unwrap();
    let l = verify_lookup_at(&h.client_realm(1), ALICE, &past, 2).unwrap();
    assert!(l.pending_recovery.is_some());
}

#[test]
fn an_update_under_the_current_policy_vetoes_a_pending_recovery() {
    let mut h = realm_with_alice(WINDOW_MS);
    h.recover(ALICE, &thief(), &[("mail", b"new-key")]).unwrap();
    publish_after(&mut h, 1_000);
    assert!(lookup(&h).pending_recovery.is_some());
    // The owner's veto: the next version, same policy, signed by the current key.
    let veto = h.make_update(ALICE, 1, Policy::single(public_key(&owner())), test_profile("veto", &[]), &[&owner()]);
    assert_eq!(accepted_epoch(h.append(Command::Update(Box::new(veto))).unwrap()), 3);
    publish_after(&mut h, 1_000);
    let l = lookup(&h);
    assert_eq!(version_and_key(&l), (1, public_key(&owner())));
    assert!(l.pending_recovery.is_none(), "a veto cancels the recovery");
    // Long after the window, it never takes effect.
    publish_after(&mut h, 2 * WINDOW_MS);
    publish_after(&mut h, 1);
    assert_eq!(version_and_key(&lookup(&h)), (1, public_key(&owner())));
}

#[test]
fn a_second_recovery_replaces_the_first_and_restarts_the_window() {
    let mut h = realm_with_alice(WINDOW_MS);
    h.recover(ALICE, &thief(), &[("mail", b"new-key")]).unwrap();
    let first = publish_after(&mut h, 1_000);
    let other = derive_signing_key(SEED, "alice-other");
    h.now_ms += WINDOW_MS / 2;
    assert_eq!(accepted_epoch(h.recover(ALICE, &other, &[("mail", b"other-key")]).unwrap()), 3);
    let second = h.publish_epoch().unwrap();
    let pending = lookup(&h).pending_recovery.unwrap();
    assert_eq!(pending.signed.entry.update_policy.keys(), &[public_key(&other)]);
    assert_eq!(pending.effective_ms, second.issue_time_ms + WINDOW_MS);
    // The first one's time passes without effect; the second's makes it the entry.
    h.now_ms = first.issue_time_ms + WINDOW_MS;
    h.publish_epoch().unwrap();
    assert_eq!(version_and_key(&lookup(&h)), (0, public_key(&owner())));
    h.now_ms = second.issue_time_ms + WINDOW_MS;
    h.publish_epoch().unwrap();
    assert_eq!(version_and_key(&lookup(&h)), (1, public_key(&other)));
}

#[test]
fn recovery_requests_obey_their_rules() {
    // Version 1 realms and a window of 0 allow none.
    let mut v1 = Harness::new("example.org", 3, 1, SEED);
    v1.register(ALICE, &owner(), &[]).unwrap();
    v1.publish_epoch().unwrap();
    assert_eq!(
        rejected(v1.recover(ALICE, &thief(), &[]).unwrap()),
        UpdateRejection::Recovery(RecoveryRejection::RecoveryDisabled)
    );
    let mut off = realm_with_alice(0);
    assert_eq!(
        rejected(off.recover(ALICE, &thief(), &[]).unwrap()),
        UpdateRejection::Recovery(RecoveryRejection::RecoveryDisabled)
    );

    let mut h = realm_with_alice(WINDOW_MS);
    // Nothing to recover.
    let bob = h.make_update("bob", 0, Policy::single(public_key(&thief())), test_profile("b", &[]), &[&thief()]);
    assert_eq!(
        rejected(h.append(Command::RecoveryRequest(Box::new(bob))).unwrap()),
        UpdateRejection::Recovery(RecoveryRejection::RecoveryOfUnregistered)
    );
    // The next version only.
    let skip = h.make_update(ALICE, 2, Policy::single(public_key(&thief())), test_profile("s", &[]), &[&thief()]);
    assert_eq!(
        rejected(h.append(Command::RecoveryRequest(Box::new(skip))).unwrap()),
        UpdateRejection::Recovery(RecoveryRejection::VersionNotNext { current: 0, got: 2 })
    );
    // The new policy must sign; the current key alone is not in it.
    let unsigned = h.make_update(ALICE, 1, Policy::single(public_key(&thief())), test_profile("u", &[]), &[]);
    assert_eq!(
        rejected(h.append(Command::RecoveryRequest(Box::new(unsigned))).unwrap()),
        UpdateRejection::NewPolicyNotSatisfied
    );
    let by_owner = h.make_update(ALICE, 1, Policy::single(public_key(&thief())), test_profile("o", &[]), &[&owner()]);
    assert!(matches!(
        rejected(h.append(Command::RecoveryRequest(Box::new(by_owner))).unwrap()),
        UpdateRejection::UnknownSigner { .. }
    ));
    // One command per identity per epoch, and a resubmission is a duplicate.
    let request = h.make_recovery(ALICE, &thief(), &[]).unwrap();
    assert_eq!(accepted_epoch(h.append(Command::RecoveryRequest(Box::new(request.clone()))).unwrap()), 2);
    assert!(matches!(
        h.append(Command::RecoveryRequest(Box::new(request.clone()))).unwrap(),
        Outcome::UpdateDuplicate { epoch: 2, .. }
    ));
    let veto = h.make_update(ALICE, 1, Policy::single(public_key(&owner())), test_profile("v", &[]), &[&owner()]);
    assert_eq!(
        rejected(h.append(Command::Update(Box::new(veto))).unwrap()),
        UpdateRejection::AlreadyUpdatedInEpoch { epoch: 2 }
    );
    h.publish_epoch().unwrap();
    assert!(matches!(
        h.append(Command::RecoveryRequest(Box::new(request))).unwrap(),
        Outcome::UpdateDuplicate { epoch: 2, .. }
    ));
}

/// Registrations, recoveries (one matured, one vetoed, one replaced) and ordinary updates.
fn busy_realm() -> Harness {
    let mut h = Harness::with_registration("example.org", 3, 1, SEED, policy(WINDOW_MS));
    let users: Vec<String> = (0..6).map(|i| format!("u{i}@example.org")).collect();
    let key = |i: usize, generation: &str| derive_signing_key(SEED, &format!("{i}-{generation}"));
    for (i, u) in users.iter().enumerate() {
        h.register(u, &key(i, "old"), &[("mail", b"k")]).unwrap();
    }
    publish_after(&mut h, 1_000);
    for i in [0, 1, 2] {
        h.recover(&users[i], &key(i, "new"), &[("mail", b"n")]).unwrap();
    }
    let u3 = h.make_update(
        &users[3],
        1,
        Policy::single(public_key(&key(3, "old"))),
        test_profile("u3", &[]),
        &[&key(3, "old")],
    );
    h.append(Command::Update(Box::new(u3))).unwrap();
    publish_after(&mut h, 1_000);
    // u1's owner vetoes; u2's recovery is replaced.
    let veto = h.make_update(
        &users[1],
        1,
        Policy::single(public_key(&key(1, "old"))),
        test_profile("v1", &[]),
        &[&key(1, "old")],
    );
    h.append(Command::Update(Box::new(veto))).unwrap();
    h.recover(&users[2], &key(2, "newer"), &[("mail", b"m")]).unwrap();
    publish_after(&mut h, WINDOW_MS / 2);
    publish_after(&mut h, WINDOW_MS / 2);
    publish_after(&mut h, WINDOW_MS);
    h.recover(&users[4], &key(4, "new"), &[]).unwrap();
    publish_after(&mut h, 1_000);
    h
}

#[test]
fn recoveries_reach_byte_identical_state_on_every_engine_and_after_crashes() {
    let h = busy_realm();
    let (u0, _) = h.index_of("u0@example.org");
    assert_eq!(h.machine.latest_update(&u0).unwrap().unwrap().1.signed.entry.version, 1, "u0's recovery matured");
    let reference = dump_all(h.machine.store()).unwrap();
    assert_eq!(dump_all(h.replay_into(MemoryStorage::new()).unwrap().store()).unwrap(), reference);
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(dump_all(h.replay_into(SledStorage::open(dir.path()).unwrap()).unwrap().store()).unwrap(), reference);
    let config = h.config().clone();
    for crash_at in (0..=h.log.len()).step_by(3) {
        let store = MemoryStorage::new();
        let mut machine = StateMachine::open(store.clone(), config.clone()).unwrap();
        for (i, command) in h.log.iter().take(crash_at).enumerate() {
            machine.apply(LogPosition { term: 1, index: i as u64 + 1 }, command).unwrap();
            if (i * 7 + crash_at).is_multiple_of(5) {
                store.flush().unwrap();
            }
        }
        let survivor = store.crash();
        let mut machine = StateMachine::open(survivor.clone(), config.clone()).unwrap();
        for (i, command) in h.log.iter().enumerate() {
            machine.apply(LogPosition { term: 1, index: i as u64 + 1 }, command).unwrap();
        }
        assert_eq!(dump_all(&survivor).unwrap(), reference, "divergence after a crash at entry {crash_at}");
    }
}

#[test]
fn deferred_commits_see_staged_recoveries() {
    // Updates are committed deferred, in one batch, as a busy server does; the recovery
    // rules still see what was staged before them.
    let h = busy_realm();
    let store = MemoryStorage::new();
    let mut machine = StateMachine::open(store.clone(), h.config().clone()).unwrap();
    for (i, command) in h.log.iter().enumerate() {
        let step = machine.step(LogPosition { term: 1, index: i as u64 + 1 }, command).unwrap();
        machine.commit_deferred(step).unwrap();
    }
    machine.write_deferred().unwrap();
    assert_eq!(dump_all(&store).unwrap(), dump_all(h.machine.store()).unwrap());
}

/// Every published epoch; the stream's form of each (signed entries as bytes, recovery
/// requests by position) says the same.
fn published(h: &Harness) -> Vec<PublishedEpoch> {
    (1..=h.machine.epoch_state().ratified_epoch)
        .map(|e| {
            let p = h.machine.published_epoch(e).unwrap().unwrap();
            let bytes = h.machine.published_epoch_bytes(e).unwrap().unwrap();
            assert_eq!(bytes.updates, p.updates.iter().map(Canonical::encode).collect::<Vec<_>>());
            let positions: Vec<_> = p
                .updates
                .iter()
                .enumerate()
                .filter(|(_, u)| p.recovery_requests.contains(&u.entry.index))
                .map(|(i, _)| i)
                .collect();
            assert_eq!(bytes.recovery_positions, positions);
            p
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
fn a_verifier_replays_recoveries_and_survives_a_restart() {
    let h = busy_realm();
    let store = MemoryStorage::new();
    let mut v = VerifierState::open(store.clone(), h.config().clone()).unwrap();
    let epochs = published(&h);
    assert!(epochs.iter().any(|p| !p.recovery_requests.is_empty()));
    for (i, p) in epochs.iter().enumerate() {
        let checked = v.check_epoch_with(&p.updates, &p.recovery_requests, &p.head).unwrap();
        v.commit(checked).unwrap();
        if i == 2 {
            // A restart in the middle of a window keeps the pending set.
            v.flush().unwrap();
            let pending = v.pending_recoveries().clone();
            assert!(!pending.is_empty());
            drop(v);
            v = VerifierState::open(store.clone(), h.config().clone()).unwrap();
            assert_eq!(v.pending_recoveries(), &pending);
        }
    }
    assert_eq!(v.last_epoch(), epochs.len() as u64);
}

#[test]
fn a_verifier_catches_a_recovery_applied_early_or_passed_off_as_an_update() {
    let mut h = realm_with_alice(WINDOW_MS);
    h.recover(ALICE, &thief(), &[]).unwrap();
    publish_after(&mut h, 1_000);
    let epochs = published(&h);
    let mut v = VerifierState::open(MemoryStorage::new(), h.config().clone()).unwrap();
    for p in &epochs {
        let checked = v.check_epoch_with(&p.updates, &p.recovery_requests, &p.head).unwrap();
        v.commit(checked).unwrap();
    }

    // Replicas that apply the recovery before its window ended: the same log, but epoch 3
    // closed at the recovery's time, then stamped with an earlier issue time.
    let mut early = h.replay_into(MemoryStorage::new()).unwrap();
    let effective = lookup(&h).pending_recovery.unwrap().effective_ms;
    let position = |n: usize| LogPosition { term: 1, index: n as u64 };
    early.apply(position(h.log.len() + 1), &Command::EpochDelimiter { epoch: 3, timestamp_ms: effective }).unwrap();
    let mut forged = early.head(3).unwrap().unwrap();
    let (index, _) = h.index_of(ALICE);
    assert_eq!(early.latest_update(&index).unwrap().unwrap().1.signed.entry.version, 1, "matured in the fork");
    forged.issue_time_ms = effective - 1;
    assert!(matches!(mismatch(v.check_epoch_with(&[], &[], &forged)), Mismatch::HeadDiffers { .. }));
    // Its own issue time is honest about the window, and the verifier agrees.
    let honest = early.head(3).unwrap().unwrap();
    v.check_epoch_with(&[], &[], &honest).unwrap();
    // Issue times never go back.
    let mut backwards = honest.clone();
    backwards.issue_time_ms = epochs[1].head.issue_time_ms - 1;
    assert!(matches!(mismatch(v.check_epoch_with(&[], &[], &backwards)), Mismatch::IssueTimeBackwards { .. }));

    // A recovery request streamed without its mark is checked as an update: the owner did
    // not sign it.
    let mut v = VerifierState::open(MemoryStorage::new(), h.config().clone()).unwrap();
    v.commit(v.check_epoch_with(&epochs[0].updates, &[], &epochs[0].head).unwrap()).unwrap();
    let p = &epochs[1];
    assert!(matches!(
        mismatch(v.check_epoch_with(&p.updates, &[], &p.head)),
        Mismatch::UnauthorizedUpdate { reason: UpdateRejection::CurrentPolicyNotSatisfied, .. }
    ));
    // A mark on an index the epoch does not have.
    assert!(matches!(
        mismatch(v.check_epoch_with(&p.updates, &[Index([0xff; 32])], &p.head)),
        Mismatch::StrayRecoveryMark { .. }
    ));
}

#[test]
fn a_verifier_refuses_heads_from_beyond_its_clock_skew() {
    let h = realm_with_alice(WINDOW_MS);
    let head = h.machine.head(1).unwrap().unwrap();
    let check = keyraft_epoch::verifier::check_issue_time;
    assert!(check(&head, head.issue_time_ms - 5_000, 5_000).is_ok());
    assert!(matches!(check(&head, head.issue_time_ms - 5_001, 5_000), Err(Mismatch::IssueTimeAhead { .. })));
}

#[test]
fn every_byte_of_a_proof_with_a_pending_recovery_counts() {
    let mut h = realm_with_alice(WINDOW_MS);
    h.recover(ALICE, &thief(), &[]).unwrap();
    publish_after(&mut h, 1_000);
    let proof = h.lookup_proof(ALICE, None, 1).unwrap();
    assert!(proof.pending_recovery.is_some());
    let realm = h.client_realm(1);
    let now = proof.head.issue_time_ms;
    let bytes = proof.encode();
    assert_eq!(LookupProof::from_bytes(&bytes).unwrap(), proof);
    keyraft_core::lookup::verify_lookup_bytes(&realm, ALICE, &bytes, now, None).unwrap();
    for i in 0..bytes.len() {
        let mut flipped = bytes.clone();
        flipped[i] ^= 0x01;
        assert!(
            keyraft_core::lookup::verify_lookup_bytes(&realm, ALICE, &flipped, now, None).is_err(),
            "flipping byte {i} of {} went unnoticed",
            bytes.len()
        );
    }
    // Leaving the pending recovery out does not prove the entry alone.
    let mut hidden = proof.clone();
    hidden.pending_recovery = None;
    assert!(matches!(verify_lookup(&realm, ALICE, &hidden, now, None), Err(VerifyError::EntryHashMismatch)));
    // Nor does a trailing "absent" byte decode.
    let mut trailing = LookupProof { pending_recovery: None, ..proof.clone() }.encode();
    trailing.push(0);
    assert!(LookupProof::from_bytes(&trailing).is_err());
}

#[test]
fn a_client_refuses_a_pending_recovery_the_replicas_kept_past_its_time() {
    let mut h = realm_with_alice(WINDOW_MS);
    h.recover(ALICE, &thief(), &[]).unwrap();
    publish_after(&mut h, 1_000);
    // Replicas that leave the recovery pending past its time: a later head whose tree still
    // holds the pending leaf, re-signed.
    let mut proof = h.lookup_proof(ALICE, None, 1).unwrap();
    let pending = proof.pending_recovery.clone().unwrap();
    proof.head.epoch = 3;
    proof.head.issue_time_ms = pending.effective_ms;
    proof.head.previous_head_hash = [7; 32];
    h.resign(&mut proof);
    let err = verify_lookup(&h.client_realm(1), ALICE, &proof, pending.effective_ms, None).unwrap_err();
    assert_eq!(err.check(), "recovery", "{err}");
}
