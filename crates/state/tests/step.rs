//! The step function: every rule and rejection path, determinism across engines, and
//! crash-replay from any point.
#![allow(clippy::unwrap_used, missing_docs)]

use keyraft_core::registration::RegistrationPolicy;
use keyraft_core::{Command, LogPosition, Policy, Signature, UpdateRejection};
use keyraft_state::harness::{derive_signing_key, public_key, test_profile, Harness};
use keyraft_state::proposer::{ratify_head, sign_head};
use keyraft_state::{Effect, Ignored, Outcome, Rejected, StateMachine};
use keyraft_storage::{dump_all, MemoryStorage, SledStorage, Storage};

fn rejected(outcome: Outcome) -> UpdateRejection {
    match outcome {
        Outcome::UpdateRejected { reason, .. } => reason,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn accepted_epoch(outcome: Outcome) -> u64 {
    match outcome {
        Outcome::UpdateAccepted { epoch, .. } => epoch,
        other => panic!("expected acceptance, got {other:?}"),
    }
}

/// A realm where `alice` is registered and epoch 1 is published.
fn realm_with_alice() -> (Harness, ed25519_dalek::SigningKey) {
    let mut h = Harness::new("example.org", 3, 2, 7);
    let alice = derive_signing_key(7, "alice");
    assert_eq!(accepted_epoch(h.register("alice@example.org", &alice, &[("mail", b"pgp-key-1")]).unwrap()), 1);
    h.publish_epoch().unwrap();
    (h, alice)
}

#[test]
fn registration_requires_version_zero() {
    let mut h = Harness::new("example.org", 3, 1, 1);
    let k = derive_signing_key(1, "bob");
    let u = h.make_update("bob", 3, Policy::single(public_key(&k)), test_profile("b", &[]), &[&k]);
    assert_eq!(
        rejected(h.append(Command::Update(Box::new(u))).unwrap()),
        UpdateRejection::RegistrationVersionNotZero { got: 3 }
    );
}

#[test]
fn versions_strictly_increase() {
    let (mut h, alice) = realm_with_alice();
    let u =
        h.make_update("alice@example.org", 0, Policy::single(public_key(&alice)), test_profile("x", &[]), &[&alice]);
    assert_eq!(
        rejected(h.append(Command::Update(Box::new(u))).unwrap()),
        UpdateRejection::VersionNotIncreasing { current: 0, got: 0 }
    );
    // Gaps are allowed under protocol version 1 (not under 2: see the next test).
    let u =
        h.make_update("alice@example.org", 5, Policy::single(public_key(&alice)), test_profile("y", &[]), &[&alice]);
    assert_eq!(accepted_epoch(h.append(Command::Update(Box::new(u))).unwrap()), 2);
}

#[test]
fn under_protocol_version_2_each_version_is_the_next() {
    let mut h = Harness::with_registration("example.org", 3, 2, 7, RegistrationPolicy::open());
    let alice = derive_signing_key(7, "alice");
    assert_eq!(accepted_epoch(h.register("alice@example.org", &alice, &[("mail", b"pgp-key-1")]).unwrap()), 1);
    h.publish_epoch().unwrap();
    let policy = Policy::single(public_key(&alice));
    // A gap would let a history leave versions out, and 2^64-1 would lock the identity.
    for (version, current) in [(5, 0), (0, 0), (u64::MAX, 0)] {
        let u = h.make_update("alice@example.org", version, policy.clone(), test_profile("y", &[]), &[&alice]);
        assert_eq!(
            rejected(h.append(Command::Update(Box::new(u))).unwrap()),
            UpdateRejection::VersionNotNext { current, got: version }
        );
    }
    let u = h.make_update("alice@example.org", 1, policy, test_profile("y", &[]), &[&alice]);
    assert_eq!(accepted_epoch(h.append(Command::Update(Box::new(u))).unwrap()), 2);
}

#[test]
fn commitment_must_match_profile() {
    let (mut h, alice) = realm_with_alice();
    let mut u =
        h.make_update("alice@example.org", 1, Policy::single(public_key(&alice)), test_profile("x", &[]), &[&alice]);
    u.profile = test_profile("other", &[]);
    assert_eq!(rejected(h.append(Command::Update(Box::new(u))).unwrap()), UpdateRejection::ProfileCommitmentMismatch);
}

#[test]
fn signatures_must_come_from_a_policy_and_verify() {
    let (mut h, alice) = realm_with_alice();
    let mallory = derive_signing_key(7, "mallory");
    let u = h.make_update(
        "alice@example.org",
        1,
        Policy::single(public_key(&alice)),
        test_profile("x", &[]),
        &[&alice, &mallory],
    );
    assert!(matches!(rejected(h.append(Command::Update(Box::new(u))).unwrap()), UpdateRejection::UnknownSigner { .. }));

    let mut u =
        h.make_update("alice@example.org", 1, Policy::single(public_key(&alice)), test_profile("x", &[]), &[&alice]);
    u.signed.signatures[0].signature = Signature([3; 64]);
    assert!(matches!(rejected(h.append(Command::Update(Box::new(u))).unwrap()), UpdateRejection::BadSignature { .. }));
}

#[test]
fn both_policies_must_consent() {
    let (mut h, alice) = realm_with_alice();
    let new_key = derive_signing_key(7, "alice-new-phone");
    // Only the new key signs: the current owner did not consent.
    let u = h.make_update(
        "alice@example.org",
        1,
        Policy::single(public_key(&new_key)),
        test_profile("x", &[]),
        &[&new_key],
    );
    assert_eq!(rejected(h.append(Command::Update(Box::new(u))).unwrap()), UpdateRejection::CurrentPolicyNotSatisfied);
    // Only the old key signs a policy naming the new key: the new holder did not consent.
    let u =
        h.make_update("alice@example.org", 1, Policy::single(public_key(&new_key)), test_profile("x", &[]), &[&alice]);
    assert_eq!(rejected(h.append(Command::Update(Box::new(u))).unwrap()), UpdateRejection::NewPolicyNotSatisfied);
    // Both: accepted.
    let u = h.make_update(
        "alice@example.org",
        1,
        Policy::single(public_key(&new_key)),
        test_profile("x", &[]),
        &[&alice, &new_key],
    );
    assert_eq!(accepted_epoch(h.append(Command::Update(Box::new(u))).unwrap()), 2);
}

#[test]
fn one_update_per_identity_per_epoch_and_duplicates_are_idempotent() {
    let (mut h, alice) = realm_with_alice();
    let p = Policy::single(public_key(&alice));
    let first = h.make_update("alice@example.org", 1, p.clone(), test_profile("1", &[]), &[&alice]);
    let second = h.make_update("alice@example.org", 2, p, test_profile("2", &[]), &[&alice]);
    assert_eq!(accepted_epoch(h.append(Command::Update(Box::new(first.clone()))).unwrap()), 2);
    let reason = rejected(h.append(Command::Update(Box::new(second.clone()))).unwrap());
    assert_eq!(reason, UpdateRejection::AlreadyUpdatedInEpoch { epoch: 2 });
    assert!(reason.is_retryable());
    // The same update again, while staged and after its epoch: a duplicate, not an error.
    assert!(matches!(
        h.append(Command::Update(Box::new(first.clone()))).unwrap(),
        Outcome::UpdateDuplicate { epoch: 2, .. }
    ));
    h.publish_epoch().unwrap();
    assert!(matches!(h.append(Command::Update(Box::new(first))).unwrap(), Outcome::UpdateDuplicate { epoch: 2, .. }));
    // The retry succeeds in the next epoch.
    assert_eq!(accepted_epoch(h.append(Command::Update(Box::new(second))).unwrap()), 3);
}

#[test]
fn delimiters_close_epochs_in_order_and_only_after_ratification() {
    let mut h = Harness::new("example.org", 3, 1, 2);
    assert_eq!(
        h.append(Command::EpochDelimiter { epoch: 2, timestamp_ms: 5 }).unwrap(),
        Outcome::Ignored(Ignored::DelimiterForOtherEpoch { open: 1, got: 2 })
    );
    assert!(matches!(h.cut_epoch().unwrap(), Outcome::EpochClosed(ref head) if head.epoch == 1));
    assert_eq!(
        h.append(Command::EpochDelimiter { epoch: 1, timestamp_ms: 5 }).unwrap(),
        Outcome::Ignored(Ignored::DelimiterForOtherEpoch { open: 2, got: 1 })
    );
    assert_eq!(h.cut_epoch().unwrap(), Outcome::Ignored(Ignored::PreviousEpochNotRatified { epoch: 1 }));
    // One signature is not a majority of three; two are.
    let outcomes = h.sign(1, 2).unwrap();
    assert_eq!(outcomes[0], Outcome::ReplicaSignatureStored { epoch: 1, ratified: false });
    assert_eq!(outcomes[1], Outcome::ReplicaSignatureStored { epoch: 1, ratified: true });
    // A lagging leader's clock does not move heads back in time.
    h.now_ms -= 10_000;
    let Outcome::EpochClosed(head2) = h.cut_epoch().unwrap() else { panic!("epoch 2 not cut") };
    let head1 = h.machine.head(1).unwrap().unwrap();
    assert_eq!(head2.issue_time_ms, head1.issue_time_ms);
    assert_eq!(head2.previous_head_hash, head1.hash());
}

#[test]
fn replica_signatures_are_checked_before_they_count() {
    let (mut h, _) = realm_with_alice();
    h.cut_epoch().unwrap();
    let head = h.machine.head(2).unwrap().unwrap();
    let stranger = derive_signing_key(7, "not-a-replica");
    assert!(matches!(
        h.append(sign_head(&stranger, &head).unwrap()).unwrap(),
        Outcome::Rejected(Rejected::UnknownReplica(_))
    ));
    let Command::ReplicaSignature { epoch, signer, .. } = sign_head(&h.replicas[0], &head).unwrap() else {
        unreachable!()
    };
    let forged = Command::ReplicaSignature { epoch, signer, signature: Signature([9; 64]) };
    assert!(matches!(h.append(forged).unwrap(), Outcome::Rejected(Rejected::BadSignature { epoch: 2, .. })));
    let mut future = sign_head(&h.replicas[0], &head).unwrap();
    if let Command::ReplicaSignature { epoch, .. } = &mut future {
        *epoch = 99;
    }
    assert_eq!(h.append(future).unwrap(), Outcome::Rejected(Rejected::UnknownEpoch(99)));
    let good = sign_head(&h.replicas[0], &head).unwrap();
    assert_eq!(h.append(good.clone()).unwrap(), Outcome::ReplicaSignatureStored { epoch: 2, ratified: false });
    assert_eq!(h.append(good).unwrap(), Outcome::Ignored(Ignored::DuplicateSignature { epoch: 2 }));
    assert_eq!(h.machine.epoch_state().ratified_epoch, 1);
}

#[test]
fn verifier_signatures_are_checked_before_they_count() {
    let (mut h, _) = realm_with_alice();
    h.cut_epoch().unwrap();
    let head = h.machine.head(2).unwrap().unwrap();
    // Not yet keyserver-ratified.
    assert_eq!(
        h.append(ratify_head(&h.verifiers[0], &head).unwrap()).unwrap(),
        Outcome::Rejected(Rejected::EpochNotKeyserverRatified(2))
    );
    h.sign(2, 2).unwrap();
    let stranger = derive_signing_key(7, "not-a-verifier");
    assert!(matches!(
        h.append(ratify_head(&stranger, &head).unwrap()).unwrap(),
        Outcome::Rejected(Rejected::UnknownVerifier(_))
    ));
    // A replica's head signature is not a ratification.
    let Command::ReplicaSignature { signature, .. } = sign_head(&h.replicas[0], &head).unwrap() else { unreachable!() };
    let verifier = public_key(&h.verifiers[0]);
    let wrong_context = Command::VerifierSignature { epoch: 2, verifier, signature };
    assert!(matches!(h.append(wrong_context).unwrap(), Outcome::Rejected(Rejected::BadSignature { .. })));
    let good = ratify_head(&h.verifiers[0], &head).unwrap();
    assert_eq!(h.append(good.clone()).unwrap(), Outcome::VerifierSignatureStored { epoch: 2 });
    assert_eq!(h.append(good).unwrap(), Outcome::Ignored(Ignored::DuplicateSignature { epoch: 2 }));
    let mut unknown = ratify_head(&h.verifiers[0], &head).unwrap();
    if let Command::VerifierSignature { epoch, .. } = &mut unknown {
        *epoch = 1_000_000;
    }
    assert_eq!(h.append(unknown).unwrap(), Outcome::Rejected(Rejected::UnknownEpoch(1_000_000)));
}

#[test]
fn stale_log_positions_are_ignored() {
    let (mut h, _) = realm_with_alice();
    let before = dump_all(h.machine.store()).unwrap();
    let applied = h.machine.applied();
    let (outcome, effects) = h
        .machine
        .apply(LogPosition { term: 1, index: applied.index }, &Command::EpochDelimiter { epoch: 2, timestamp_ms: 1 })
        .unwrap();
    assert_eq!(outcome, Outcome::AlreadyApplied);
    assert!(effects.is_empty());
    assert_eq!(before, dump_all(h.machine.store()).unwrap());
}

/// A log exercising every command kind and outcome.
fn busy_harness() -> Harness {
    let mut h = Harness::new("example.org", 3, 2, 11);
    let users: Vec<_> =
        (0..12).map(|i| (format!("user{i}@example.org"), derive_signing_key(11, &format!("u{i}")))).collect();
    for round in 0..4u64 {
        for (i, (user, key)) in users.iter().enumerate() {
            if (i as u64 + round).is_multiple_of(3) {
                continue;
            }
            let version = if round == 0 { 0 } else { round * 10 + i as u64 };
            let profile = test_profile(&format!("{user}{round}"), &[("mail", format!("key-{round}").as_bytes())]);
            let update = h.make_update(user, version, Policy::single(public_key(key)), profile, &[key]);
            h.append(Command::Update(Box::new(update))).unwrap();
        }
        // A rejected update and a stale delimiter are in the log too.
        let bad = h.make_update(
            &users[0].0,
            0,
            Policy::single(public_key(&users[1].1)),
            test_profile("bad", &[]),
            &[&users[1].1],
        );
        h.append(Command::Update(Box::new(bad))).unwrap();
        h.append(Command::EpochDelimiter { epoch: 99, timestamp_ms: 1 }).unwrap();
        h.now_ms += 1000;
        h.publish_epoch().unwrap();
    }
    h
}

#[test]
fn replicas_reach_byte_identical_state_on_every_engine() {
    let h = busy_harness();
    let reference = dump_all(h.machine.store()).unwrap();
    let replayed = h.replay_into(MemoryStorage::new()).unwrap();
    assert_eq!(dump_all(replayed.store()).unwrap(), reference);
    let dir = tempfile::tempdir().unwrap();
    let sled = h.replay_into(SledStorage::open(dir.path()).unwrap()).unwrap();
    assert_eq!(dump_all(sled.store()).unwrap(), reference);
    assert_eq!(sled.epoch_state(), h.machine.epoch_state());
}

#[test]
fn crash_at_any_point_then_replay_reaches_the_same_state() {
    let h = busy_harness();
    let reference = dump_all(h.machine.store()).unwrap();
    let config = h.config().clone();
    for crash_at in 0..=h.log.len() {
        let store = MemoryStorage::new();
        let mut machine = StateMachine::open(store.clone(), config.clone()).unwrap();
        for (i, command) in h.log.iter().take(crash_at).enumerate() {
            machine.apply(LogPosition { term: 1, index: i as u64 + 1 }, command).unwrap();
            // Flush at irregular points so that crashes lose different suffixes.
            if (i * 7 + crash_at).is_multiple_of(5) {
                store.flush().unwrap();
            }
        }
        let survivor = store.crash();
        let mut machine = StateMachine::open(survivor.clone(), config.clone()).unwrap();
        assert!(machine.applied().index as usize <= crash_at);
        for (i, command) in h.log.iter().enumerate() {
            machine.apply(LogPosition { term: 1, index: i as u64 + 1 }, command).unwrap();
        }
        assert_eq!(dump_all(&survivor).unwrap(), reference, "divergence after a crash at entry {crash_at}");
    }
}

#[test]
fn opening_with_another_realm_configuration_is_refused() {
    let h = Harness::new("example.org", 3, 1, 3);
    let other = Harness::new("example.org", 3, 1, 4);
    let store = h.machine.store().clone();
    let err = StateMachine::open(store, other.config().clone()).unwrap_err();
    assert!(err.to_string().contains("another realm configuration"), "{err}");
}

#[test]
fn a_store_from_a_newer_build_is_refused() {
    let h = Harness::new("example.org", 3, 1, 3);
    let store = h.machine.store().clone();
    let mut b = keyraft_storage::Batch::new();
    b.put(b"\x00format-version".to_vec(), (keyraft_state::STATE_FORMAT_VERSION + 1).to_be_bytes().to_vec());
    store.write(b).unwrap();
    let err = StateMachine::open(store, h.config().clone()).unwrap_err();
    assert!(err.to_string().contains("newer"), "{err}");
}

#[test]
fn verifiers_see_only_ratified_epochs_and_can_recompute_them() {
    use keyraft_core::tree::{empty_hash, leaf_hash, node_hash};
    use keyraft_core::update::check_signed_entry;
    use std::collections::BTreeMap;

    let mut h = busy_harness();
    h.cut_epoch().unwrap();
    let last = h.machine.epoch_state().last_epoch;
    assert_eq!(h.machine.published_epoch(last).unwrap(), None, "an epoch without a majority is not published");
    h.sign(last, 2).unwrap();

    // Replay the verifier log as a verifier would: check each update against the previous
    // entry at its index, rebuild the tree from scratch, and compare the heads.
    fn root(depth: usize, leaves: &[(keyraft_core::Index, keyraft_core::Digest)]) -> keyraft_core::Digest {
        match leaves {
            [] => empty_hash(),
            [(i, v)] => leaf_hash(depth as u16, i, v),
            _ => {
                let split = leaves.partition_point(|(i, _)| !i.bit(depth));
                node_hash(&root(depth + 1, &leaves[..split]), &root(depth + 1, &leaves[split..]))
            }
        }
    }
    let mut entries: BTreeMap<keyraft_core::Index, keyraft_core::Entry> = BTreeMap::new();
    let mut previous = [0u8; 32];
    for epoch in 1..=last {
        let published = h.machine.published_epoch(epoch).unwrap().unwrap();
        assert!(published.replica_signatures.len() >= 2);
        for signed in &published.updates {
            check_signed_entry(h.config(), entries.get(&signed.entry.index), signed).unwrap();
            entries.insert(signed.entry.index, signed.entry.clone());
        }
        let leaves: Vec<_> = entries.iter().map(|(i, e)| (*i, e.hash())).collect();
        assert_eq!(published.head.root, root(0, &leaves), "root of epoch {epoch}");
        assert_eq!(published.head.previous_head_hash, previous);
        assert_eq!(published.head.update_count, published.updates.len() as u64);
        previous = published.head.hash();
    }
}

/// The busy log plus, in one open epoch, an update, its identical resubmission and a second
/// update of the same identity: what deferred commits must see without storage.
fn busy_harness_with_repeats() -> Harness {
    let mut h = busy_harness();
    let key = derive_signing_key(11, "repeat");
    let first =
        h.make_update("repeat@example.org", 0, Policy::single(public_key(&key)), test_profile("r1", &[]), &[&key]);
    let second =
        h.make_update("repeat@example.org", 0, Policy::single(public_key(&key)), test_profile("r2", &[]), &[&key]);
    assert!(matches!(h.append(Command::Update(Box::new(first.clone()))).unwrap(), Outcome::UpdateAccepted { .. }));
    assert!(matches!(h.append(Command::Update(Box::new(first))).unwrap(), Outcome::UpdateDuplicate { .. }));
    assert!(matches!(h.append(Command::Update(Box::new(second))).unwrap(), Outcome::UpdateRejected { .. }));
    h.now_ms += 1000;
    h.publish_epoch().unwrap();
    h
}

#[test]
fn deferred_commits_reach_the_same_state_and_survive_crashes() {
    let h = busy_harness_with_repeats();
    let reference = dump_all(h.machine.store()).unwrap();
    let config = h.config().clone();
    for group in [1usize, 2, 3, 7, 1000] {
        for crash_at in 0..=h.log.len() {
            let store = MemoryStorage::new();
            let mut machine = StateMachine::open(store.clone(), config.clone()).unwrap();
            let mut outcomes = Vec::new();
            for (i, command) in h.log.iter().take(crash_at).enumerate() {
                let position = LogPosition { term: 1, index: i as u64 + 1 };
                let step = machine.step(position, command).unwrap();
                outcomes.push(machine.commit_deferred(step).unwrap().0);
                if (i + 1) % group == 0 {
                    machine.write_deferred().unwrap();
                    if (i / group) % 2 == 0 {
                        store.flush().unwrap();
                    }
                }
            }
            // The outcomes are those of plain commits.
            let mut plain = StateMachine::open(MemoryStorage::new(), config.clone()).unwrap();
            for (i, command) in h.log.iter().take(crash_at).enumerate() {
                let (outcome, _) = plain.apply(LogPosition { term: 1, index: i as u64 + 1 }, command).unwrap();
                assert_eq!(outcome, outcomes[i], "entry {i} with groups of {group}");
            }
            // Whatever was deferred or unflushed is lost; replaying the log repairs it.
            let survivor = store.crash();
            let mut machine = StateMachine::open(survivor.clone(), config.clone()).unwrap();
            assert!(machine.applied().index as usize <= crash_at);
            for (i, command) in h.log.iter().enumerate() {
                let step = machine.step(LogPosition { term: 1, index: i as u64 + 1 }, command).unwrap();
                machine.commit_deferred(step).unwrap();
            }
            machine.write_deferred().unwrap();
            assert_eq!(dump_all(&survivor).unwrap(), reference, "crash at {crash_at}, groups of {group}");
        }
    }
}

/// A replica whose stored signatures contradict its epoch state (an older epoch lacking the
/// majority it needed before the next one closed) stops with an error naming the epoch when
/// a committed signature completes that majority: a panic there would take down every
/// replica at once, on the same entry.
#[test]
fn an_older_epoch_completing_its_majority_is_an_inconsistency_error_not_a_panic() {
    let mut h = Harness::new("inconsistent.example", 3, 1, 31);
    h.cut_epoch().unwrap();
    h.sign(1, 2).unwrap();
    assert_eq!(h.machine.epoch_state().ratified_epoch, 1);
    h.cut_epoch().unwrap();
    assert_eq!(h.machine.epoch_state().last_epoch, 2);
    // Damage: one of epoch 1's two signatures disappears from storage (key `r || epoch || signer`).
    let (signer, _) = h.machine.replica_signatures(1).unwrap()[0];
    let mut key = vec![b'r'];
    key.extend_from_slice(&1u64.to_be_bytes());
    key.extend_from_slice(signer.as_bytes());
    let mut damage = keyraft_storage::Batch::new();
    damage.delete(key);
    h.machine.store().write(damage).unwrap();
    let head = h.machine.head(1).unwrap().unwrap();
    let third = sign_head(&h.replicas[2], &head).unwrap();
    let applied = h.machine.applied();
    match h.append(third) {
        Err(keyraft_state::StateError::Inconsistent { epoch: 1, what }) => {
            assert!(what.contains("epoch 2"), "{what}");
        }
        other => panic!("expected an inconsistency error for epoch 1, got {other:?}"),
    }
    // Nothing of the entry was applied.
    assert_eq!(h.machine.applied(), applied);
}

/// Every change others must learn of is an effect of the step that made it, and nothing else
/// is: the server publishes exactly these to its proposers, waiting lookups and streams.
#[test]
fn each_step_announces_what_it_changed() {
    let (mut h, _) = realm_with_alice();
    let bob = derive_signing_key(7, "bob");
    h.register("bob@example.org", &bob, &[("mail", b"k")]).unwrap();
    assert_eq!(h.last_effects, vec![Effect::PendingUpdatesChanged]);
    // The same update again changes nothing, so announces nothing.
    let again = h.log.last().unwrap().clone();
    assert!(matches!(h.append(again).unwrap(), Outcome::UpdateDuplicate { .. }));
    assert_eq!(h.last_effects, vec![]);

    let epoch = h.machine.epoch_state().open_epoch();
    h.cut_epoch().unwrap();
    assert_eq!(h.last_effects, vec![Effect::HeadStored { epoch }]);
    h.sign(epoch, 1).unwrap();
    assert_eq!(h.last_effects, vec![Effect::SignaturesChanged { epoch }]);
    h.sign(epoch, 2).unwrap(); // the first signature again (ignored), then the second
    assert_eq!(h.last_effects, vec![Effect::SignaturesChanged { epoch }, Effect::EpochRatified { epoch }]);
    h.ratify(epoch, 0).unwrap();
    assert_eq!(h.last_effects, vec![Effect::SignaturesChanged { epoch }]);
    h.ratify(epoch, 0).unwrap();
    assert_eq!(h.last_effects, vec![], "a duplicate ratification changes nothing");
}

/// The signature memo changes no outcome and no byte of state: a replica whose handlers
/// verified the log's signatures already (a warm memo), one with a cold memo and one without
/// any apply the same log, a forged signature among it, to the same state.
#[test]
fn the_signature_memo_changes_nothing() {
    use keyraft_core::ed25519::VerifiedSignatures;
    use std::sync::Arc;
    let mut h = busy_harness_with_repeats();
    // By a key whose valid signatures the memo will hold.
    let key = derive_signing_key(11, "repeat");
    let mut forged =
        h.make_update("forged@example.org", 0, Policy::single(public_key(&key)), test_profile("f", &[]), &[&key]);
    forged.signed.signatures[0].signature.0[40] ^= 1;
    let outcome = h.append(Command::Update(Box::new(forged))).unwrap();
    assert!(
        matches!(outcome, Outcome::UpdateRejected { reason: UpdateRejection::BadSignature { .. }, .. }),
        "{outcome:?}"
    );
    let config = h.config().clone();
    // `ahead`: the log in entries of this many commands, each entry's signatures verified in
    // batches before its steps, as a replica's apply does.
    let replay = |memo: Option<Arc<VerifiedSignatures>>, ahead: Option<usize>| {
        let store = MemoryStorage::new();
        let mut machine = StateMachine::open(store.clone(), config.clone()).unwrap();
        if let Some(memo) = memo {
            machine = machine.with_signature_memo(memo);
        }
        let mut outcomes = Vec::new();
        for (e, entry) in h.log.chunks(ahead.unwrap_or(1)).enumerate() {
            let position = |k: usize| LogPosition { term: 1, index: (e * ahead.unwrap_or(1) + k) as u64 + 1 };
            if ahead.is_some() {
                machine.verify_signatures_ahead(entry.iter().enumerate().map(|(k, c)| (position(k), c)));
            }
            for (k, command) in entry.iter().enumerate() {
                outcomes.push(machine.apply(position(k), command).unwrap().0);
            }
        }
        (outcomes, dump_all(&store).unwrap())
    };
    let plain = replay(None, None);
    let memo = Arc::new(VerifiedSignatures::default());
    let cold = replay(Some(memo.clone()), None);
    assert!(!memo.is_empty(), "the memo was not used");
    let warm = replay(Some(memo), None);
    assert!(plain == cold, "a cold memo changed an outcome or the state");
    assert!(plain == warm, "a warm memo changed an outcome or the state");
    // Batches that pass and, where the forgery is, one that fails.
    for commands_per_entry in [1, 5, 64, h.log.len()] {
        let memo = Arc::new(VerifiedSignatures::default());
        let batched = replay(Some(memo.clone()), Some(commands_per_entry));
        assert!(
            plain == batched,
            "batched verification ({commands_per_entry} per entry) changed an outcome or the state"
        );
        assert!(!memo.is_empty());
    }
    let positioned = |from: usize| {
        h.log[from..].iter().enumerate().map(move |(k, c)| (LogPosition { term: 1, index: (from + k) as u64 + 1 }, c))
    };
    let empty = Arc::new(VerifiedSignatures::default());
    let machine = StateMachine::open(MemoryStorage::new(), config.clone()).unwrap().with_signature_memo(empty.clone());
    machine.verify_signatures_ahead(positioned(h.log.len() - 1));
    assert!(empty.is_empty(), "the forged signature's batch was remembered");
    machine.verify_signatures_ahead(positioned(0).take(h.log.len() - 1));
    assert!(!empty.is_empty(), "batches of valid signatures were not remembered");

    // A machine that applied the whole log (a restarted replica replaying it) verifies none
    // of it again.
    let store = MemoryStorage::new();
    let mut machine = StateMachine::open(store.clone(), config.clone()).unwrap();
    for (position, command) in positioned(0) {
        machine.apply(position, command).unwrap();
    }
    let memo = Arc::new(VerifiedSignatures::default());
    let machine = machine.with_signature_memo(memo.clone());
    machine.verify_signatures_ahead(positioned(0));
    assert!(memo.is_empty(), "signatures of applied commands were verified again");
}
