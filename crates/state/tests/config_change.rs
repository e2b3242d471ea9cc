//! Realm configuration changes in the log: in force from the epoch after the one open when
//! they are applied (every update of an epoch is checked under one configuration), refused when
//! signed by a minority or while another is pending, replayed identically, followed by a
//! verifier, and proofs of every epoch verifying with the configuration of their epoch.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use keyraft_core::registration::RegistrationPolicy;
use keyraft_core::{follow_chain, verify_lookup_at, Command, ConfigChangeError, RealmConfig};
use keyraft_epoch::verifier::{Mismatch, VerifierState, VerifyFailure};
use keyraft_epoch::StateError;
use keyraft_state::harness::{derive_signing_key, public_key, Harness};
use keyraft_state::{Ignored, Outcome, Rejected, StateMachine};
use keyraft_storage::{dump_all, MemoryStorage, SledStorage};

const ALICE: &str = "alice@example.org";

/// A version-2 realm of three replicas (nodes 1, 2, 3 in key order) and one verifier, with
/// alice registered in epoch 1.
fn realm() -> Harness {
    let mut h = Harness::with_registration("example.org", 3, 1, 21, RegistrationPolicy::open());
    let alice = derive_signing_key(21, "alice");
    h.register(ALICE, &alice, &[("mail", b"k1")]).unwrap();
    h.publish_epoch().unwrap();
    h
}

fn new_key() -> ed25519_dalek::SigningKey {
    derive_signing_key(21, "replica-next")
}

/// Rotates node 1's key (replicas[0]) with a change signed by replicas 0 and 1; returns the
/// new configuration.
fn stage_rotation(h: &mut Harness) -> RealmConfig {
    let next = h.rotated_config(1, &new_key());
    let (a, b) = (h.replicas[0].clone(), h.replicas[1].clone());
    let change = h.config_change(next, &[&a, &b]);
    let config = change.change.new_config.clone();
    assert_eq!(
        h.append(Command::ConfigChange(Box::new(change))).unwrap(),
        Outcome::ConfigChangeStaged { generation: 1, epoch: 3 }
    );
    config
}

/// After [`stage_rotation`]: closes epoch 2 under the old configuration, then epoch 3 under
/// the new one, signed by the rotated key and the second replica (a majority).
fn close_epoch_3_under_the_new_configuration(h: &mut Harness) {
    close_epoch_2_under_the_old_configuration(h);
    h.cut_epoch().unwrap();
    let (next, second) = (new_key(), h.replicas[1].clone());
    h.sign_with(3, &[&next, &second]).unwrap();
}

/// Closes epoch 2 (still under the old configuration) with the old replicas' signatures and
/// the verifier's ratification; epoch 3 opens under the new configuration.
fn close_epoch_2_under_the_old_configuration(h: &mut Harness) {
    h.publish_epoch().unwrap();
    assert_eq!(h.machine.epoch_state().last_epoch, 2);
}

#[test]
fn a_rotation_takes_effect_with_the_next_epoch_which_the_new_majority_signs() {
    let mut h = realm();
    let old = h.config().clone();
    let new = stage_rotation(&mut h);
    // Pending while epoch 2 is open: the configuration in force is still the old one.
    assert_eq!(h.config(), &old);
    assert!(h.machine.pending_config_change().is_some());
    // Epoch 2 closes under the old configuration: its head commits to it.
    let closed = h.cut_epoch().unwrap();
    let Outcome::EpochClosed(head) = closed else { panic!("expected a head, got {closed:?}") };
    assert_eq!(head.config_hash, old.hash());
    assert_eq!(h.machine.config_of_epoch(2), &old);
    // Epoch 3 is open under the new one.
    assert_eq!(h.config(), &new);
    assert_eq!(h.machine.config_of_epoch(3), &new);
    assert!(h.machine.pending_config_change().is_none());
    h.sign(2, 3).unwrap();
    h.ratify(2, 0).unwrap();
    let closed = h.cut_epoch().unwrap();
    let Outcome::EpochClosed(head) = closed else { panic!("expected a head, got {closed:?}") };
    assert_eq!(head.config_hash, new.hash());
    assert_eq!(h.machine.config_of_epoch(1), &old);
    // The replaced key no longer signs; the new one does, with the remaining replicas.
    let retired = h.replicas[0].clone();
    let outcomes = h.sign_with(3, &[&retired]).unwrap();
    assert_eq!(outcomes, vec![Outcome::Rejected(Rejected::UnknownReplica(public_key(&retired)))]);
    let (next, second) = (new_key(), h.replicas[1].clone());
    let outcomes = h.sign_with(3, &[&next, &second]).unwrap();
    assert_eq!(outcomes[1], Outcome::ReplicaSignatureStored { epoch: 3, ratified: true });
    // Proofs: epoch 2 with the old configuration's keys, epoch 3 with the new one's.
    let before = h.lookup_proof(ALICE, Some(2), 0).unwrap();
    let after = h.lookup_proof(ALICE, Some(3), 0).unwrap();
    let mut trusted = h.client_realm(0);
    trusted.config = old.clone();
    assert!(verify_lookup_at(&trusted, ALICE, &before, 2).is_ok());
    assert!(verify_lookup_at(&trusted, ALICE, &after, 3).is_err(), "the old realm file alone does not know epoch 3");
    let changes = h.machine.config_changes_after(&old.hash()).unwrap();
    let chain = follow_chain(&old, &changes).unwrap();
    assert_eq!(chain.newest(), &new);
    for (proof, epoch) in [(&before, 2), (&after, 3)] {
        let realm = chain.client_realm(&trusted, &proof.head.config_hash).unwrap();
        assert_eq!(verify_lookup_at(&realm, ALICE, proof, epoch).unwrap().epoch(), epoch);
    }
    assert_eq!(h.machine.config_changes_after(&new.hash()).unwrap(), vec![]);
    assert_eq!(h.machine.config_changes_after(&[7; 32]), None);
}

#[test]
fn a_change_signed_by_a_minority_is_refused_and_changes_nothing() {
    let mut h = realm();
    let next = h.rotated_config(1, &new_key());
    let a = h.replicas[0].clone();
    let change = h.config_change(next, &[&a]);
    let before = dump_all(h.machine.store()).unwrap();
    assert_eq!(
        h.append(Command::ConfigChange(Box::new(change))).unwrap(),
        Outcome::Rejected(Rejected::ConfigChange(ConfigChangeError::NotEnoughSignatures { got: 1, need: 2 }))
    );
    let after = dump_all(h.machine.store()).unwrap();
    // Only the applied position moved.
    assert_eq!(before.len(), after.len());
    assert!(h.machine.pending_config_change().is_none());
}

#[test]
fn one_change_at_a_time_and_a_repeated_one_is_ignored() {
    let mut h = realm();
    stage_rotation(&mut h);
    let pending = h.machine.pending_config_change().unwrap().clone();
    assert_eq!(
        h.append(Command::ConfigChange(Box::new(pending.clone()))).unwrap(),
        Outcome::Ignored(Ignored::DuplicateConfigChange { generation: 1 })
    );
    let mut other = h.config().clone();
    other.verifier_keys.clear();
    let (a, b) = (h.replicas[0].clone(), h.replicas[1].clone());
    let second = h.config_change(other, &[&a, &b]);
    assert_eq!(
        h.append(Command::ConfigChange(Box::new(second))).unwrap(),
        Outcome::Rejected(Rejected::ConfigChangePending { pending_generation: 1 })
    );
    h.cut_epoch().unwrap();
    // Once in force, the old change is still recognised, never replayed.
    assert_eq!(
        h.append(Command::ConfigChange(Box::new(pending))).unwrap(),
        Outcome::Ignored(Ignored::DuplicateConfigChange { generation: 1 })
    );
}

#[test]
fn replay_is_deterministic_across_engines_and_a_restart_reads_the_chain() {
    let mut h = realm();
    let old = h.config().clone();
    let new = stage_rotation(&mut h);
    close_epoch_3_under_the_new_configuration(&mut h);
    let memory = h.replay_into(MemoryStorage::new()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sled = h.replay_into(SledStorage::open(dir.path()).unwrap()).unwrap();
    assert_eq!(dump_all(memory.store()).unwrap(), dump_all(h.machine.store()).unwrap());
    assert_eq!(dump_all(sled.store()).unwrap(), dump_all(h.machine.store()).unwrap());
    // Reopened with the old realm file or the new one: the newest stored configuration rules.
    for configured in [old.clone(), new.clone()] {
        let reopened = StateMachine::open(h.machine.store().clone(), configured).unwrap();
        assert_eq!(reopened.config(), &new);
        assert_eq!(reopened.config_of_epoch(1), &old);
        assert_eq!(reopened.config_changes().len(), 1);
    }
    // A configuration of no stored chain is refused.
    let stranger = Harness::with_registration("example.org", 3, 1, 22, RegistrationPolicy::open());
    assert!(matches!(
        StateMachine::open(h.machine.store().clone(), stranger.config().clone()),
        Err(StateError::ConfigMismatch(_))
    ));
    // An empty state opened with the later realm file is refused: replaying the log from
    // its start under the new configuration would make heads no other replica made.
    let Err(err) = StateMachine::open(MemoryStorage::new(), new.clone()) else {
        panic!("an empty state took a later realm file")
    };
    assert!(matches!(&err, StateError::ConfigMismatch(m) if m.contains("first realm file (generation 0)")), "{err}");
    // A pending change survives a restart too.
    let mut p = realm();
    stage_rotation(&mut p);
    let reopened = StateMachine::open(p.machine.store().clone(), p.genesis.clone()).unwrap();
    assert!(reopened.pending_config_change().is_some());
}

#[test]
fn a_version_1_realm_upgrades_to_version_2_through_a_change() {
    let mut h = Harness::new("example.org", 3, 1, 23);
    let alice = derive_signing_key(23, "alice");
    h.register(ALICE, &alice, &[("mail", b"k1")]).unwrap();
    h.register("carol@example.org", &alice, &[("mail", b"c0")]).unwrap();
    h.publish_epoch().unwrap();
    let v1 = h.config().clone();
    assert_eq!(v1.protocol_version(), 1);
    // Version 1 lets versions jump; version 2 does not. Alice jumps in the epoch the upgrade
    // is applied in, before it: that epoch stays a version-1 epoch for replicas and verifiers.
    let jump = h.make_update(
        ALICE,
        5,
        keyraft_core::Policy::single(public_key(&alice)),
        keyraft_state::harness::test_profile("jump", &[("mail", b"k5")]),
        &[&alice],
    );
    assert!(matches!(h.append(Command::Update(Box::new(jump))).unwrap(), Outcome::UpdateAccepted { .. }));
    let v2 = v1.clone().with_registration(RegistrationPolicy::open()).unwrap();
    let (a, b) = (h.replicas[0].clone(), h.replicas[2].clone());
    let change = h.config_change(v2, &[&a, &b]);
    assert_eq!(
        h.append(Command::ConfigChange(Box::new(change))).unwrap(),
        Outcome::ConfigChangeStaged { generation: 1, epoch: 3 }
    );
    // Still version 1 until epoch 2 closes: a second jump is accepted too.
    let jump = h.make_update(
        "carol@example.org",
        3,
        keyraft_core::Policy::single(public_key(&alice)),
        keyraft_state::harness::test_profile("carol", &[("mail", b"c3")]),
        &[&alice],
    );
    assert!(matches!(h.append(Command::Update(Box::new(jump))).unwrap(), Outcome::UpdateAccepted { .. }));
    let head2 = h.publish_epoch().unwrap();
    assert_eq!(head2.config_hash, v1.hash());
    assert_eq!(h.config().protocol_version(), 2);
    assert_eq!(h.config().generation, 1);
    // From epoch 3 on, the version-2 rule holds.
    let gap = h.make_update(
        ALICE,
        7,
        keyraft_core::Policy::single(public_key(&alice)),
        keyraft_state::harness::test_profile("gap", &[("mail", b"k7")]),
        &[&alice],
    );
    assert!(matches!(h.append(Command::Update(Box::new(gap))).unwrap(), Outcome::UpdateRejected { .. }));
    let head3 = h.publish_epoch().unwrap();
    assert_eq!(head3.config_hash, h.config().hash());
    let proof = h.lookup_proof(ALICE, Some(3), 1).unwrap();
    let mut trusted = h.client_realm(1);
    trusted.config = v1.clone();
    let chain = follow_chain(&v1, &h.machine.config_changes_after(&v1.hash()).unwrap()).unwrap();
    let realm = chain.client_realm(&trusted, &proof.head.config_hash).unwrap();
    verify_lookup_at(&realm, ALICE, &proof, 3).unwrap();
    // A verifier starting from the version-1 realm file checks every epoch as the replicas
    // applied it, the jumps of epoch 2 included.
    let mut v = VerifierState::open(MemoryStorage::new(), v1.clone()).unwrap();
    for epoch in 1..=3 {
        let published = h.machine.published_epoch(epoch).unwrap().unwrap();
        if let Some(change) = &published.config_change {
            v.receive_config_change(change).unwrap();
        }
        let checked = v.check_epoch(&published.updates, &published.head).unwrap();
        v.commit(checked).unwrap();
    }
    assert_eq!(v.config().protocol_version(), 2);
}

#[test]
fn a_verifier_follows_a_change_and_refuses_a_forged_one() {
    let mut h = realm();
    let old = h.config().clone();
    let new = stage_rotation(&mut h);
    close_epoch_3_under_the_new_configuration(&mut h);
    h.ratify(3, 0).unwrap();
    h.publish_epoch().unwrap();
    let store = MemoryStorage::new();
    let mut v = VerifierState::open(store.clone(), old.clone()).unwrap();
    for epoch in 1..=4 {
        let published = h.machine.published_epoch(epoch).unwrap().unwrap();
        assert_eq!(published.config_change.is_some(), epoch == 3);
        if let Some(change) = &published.config_change {
            assert_eq!(v.receive_config_change(change).unwrap(), &new);
            // Resent after a reconnect: not an error.
            assert_eq!(v.receive_config_change(change).unwrap(), &new);
        }
        let checked = v.check_epoch(&published.updates, &published.head).unwrap();
        v.commit(checked).unwrap();
    }
    assert_eq!(v.config(), &new);
    v.flush().unwrap();
    drop(v);
    // Reopened with the old realm file, it resumes with the chain it followed.
    let v = VerifierState::open(store, old.clone()).unwrap();
    assert_eq!(v.config(), &new);
    assert_eq!(v.config_chain().len(), 1);

    // Without the change, the head of epoch 3 does not match what the verifier computes.
    let mut blind = VerifierState::open(MemoryStorage::new(), old.clone()).unwrap();
    for epoch in 1..=2 {
        let published = h.machine.published_epoch(epoch).unwrap().unwrap();
        let checked = blind.check_epoch(&published.updates, &published.head).unwrap();
        blind.commit(checked).unwrap();
    }
    let second = h.machine.published_epoch(3).unwrap().unwrap();
    assert!(matches!(
        blind.check_epoch(&second.updates, &second.head),
        Err(VerifyFailure::Mismatch(Mismatch::HeadDiffers { .. }))
    ));
    // A change signed by a minority is evidence, not a configuration.
    let mut forged = second.config_change.clone().unwrap();
    forged.signatures.truncate(1);
    assert!(matches!(
        blind.receive_config_change(&forged),
        Err(VerifyFailure::Mismatch(Mismatch::ConfigChange {
            reason: ConfigChangeError::NotEnoughSignatures { got: 1, need: 2 },
            ..
        }))
    ));
}

/// `scripts/verify_proof.py --config-chain`: the independent verifier follows the same chain
/// from the old configuration and checks proofs of both epochs; a minority-signed chain is
/// refused.
#[test]
fn the_independent_verifier_follows_the_chain() {
    use keyraft_core::Canonical;
    let mut h = realm();
    let old = h.config().clone();
    stage_rotation(&mut h);
    close_epoch_3_under_the_new_configuration(&mut h);
    let dir = tempfile::tempdir().unwrap();
    let realm_file = dir.path().join("realm.hex");
    std::fs::write(&realm_file, hex::encode(old.encode())).unwrap();
    let changes = h.machine.config_changes_after(&old.hash()).unwrap();
    let chain = dir.path().join("chain.hex");
    std::fs::write(&chain, changes.iter().map(|c| hex::encode(c.encode()) + "\n").collect::<String>()).unwrap();
    let mut minority = changes[0].clone();
    minority.signatures.truncate(1);
    let forged = dir.path().join("forged.hex");
    std::fs::write(&forged, hex::encode(minority.encode())).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/verify_proof.py");
    let run = |epoch: u64, chain: Option<&std::path::Path>| {
        let proof = dir.path().join(format!("proof-{epoch}.bin"));
        std::fs::write(&proof, h.lookup_proof(ALICE, Some(epoch), 0).unwrap().encode()).unwrap();
        let mut cmd = std::process::Command::new("python3");
        cmd.arg(&script).arg(&realm_file).arg(&proof).arg(ALICE).arg(h.now_ms.to_string());
        cmd.args(["--past", &epoch.to_string()]);
        if let Some(c) = chain {
            cmd.arg("--config-chain").arg(c);
        }
        let out = cmd.output().expect("python3 runs the independent verifier");
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    for epoch in [2, 3] {
        let (code, out) = run(epoch, Some(&chain));
        assert_eq!(code, Some(0), "epoch {epoch}: {out}");
    }
    let (code, out) = run(3, None);
    assert!(code == Some(1) && out.contains("(realm)"), "without the chain, epoch 3 is another realm: {out}");
    let (code, out) = run(3, Some(&forged));
    assert!(code == Some(2) && out.contains("NotEnoughSignatures"), "{out}");
}

/// A removed verifier's ratification counts for the epochs of the configuration that listed
/// it, and is refused for the epochs after the change.
#[test]
fn a_removed_verifier_ratifies_old_epochs_only() {
    let mut h = realm();
    let mut next = h.config().clone();
    next.verifier_keys.clear();
    let (a, b) = (h.replicas[0].clone(), h.replicas[1].clone());
    let change = h.config_change(next, &[&a, &b]);
    assert!(matches!(h.append(Command::ConfigChange(Box::new(change))).unwrap(), Outcome::ConfigChangeStaged { .. }));
    // Epoch 2, open when the change was applied, is still ratified by the removed verifier.
    h.cut_epoch().unwrap();
    h.sign(2, 3).unwrap();
    assert!(matches!(h.ratify(2, 0).unwrap(), Outcome::VerifierSignatureStored { epoch: 2 }));
    h.cut_epoch().unwrap();
    h.sign(3, 3).unwrap();
    let removed = public_key(&h.verifiers[0]);
    assert_eq!(h.ratify(3, 0).unwrap(), Outcome::Rejected(Rejected::UnknownVerifier(removed)));
    assert_eq!(h.machine.config_of_epoch(2).verifier_keys, vec![removed]);
    assert_eq!(h.ratify(2, 0).unwrap(), Outcome::Ignored(Ignored::DuplicateSignature { epoch: 2 }));
}
