//! Realm configuration changes in the log: applied at the next epoch boundary, refused when
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
        Outcome::ConfigChangeStaged { generation: 1, epoch: 2 }
    );
    config
}

#[test]
fn a_rotation_takes_effect_in_the_next_head_which_the_new_majority_signs() {
    let mut h = realm();
    let old = h.config().clone();
    let new = stage_rotation(&mut h);
    // Pending until the next head: the configuration in force is still the old one.
    assert_eq!(h.config(), &old);
    assert!(h.machine.pending_config_change().is_some());
    let closed = h.cut_epoch().unwrap();
    let Outcome::EpochClosed(head) = closed else { panic!("expected a head, got {closed:?}") };
    assert_eq!(head.config_hash, new.hash());
    assert_eq!(h.config(), &new);
    assert_eq!(h.machine.config_of_epoch(1), &old);
    assert_eq!(h.machine.config_of_epoch(2), &new);
    assert!(h.machine.pending_config_change().is_none());
    // The replaced key no longer signs; the new one does, with the remaining replicas.
    let retired = h.replicas[0].clone();
    let outcomes = h.sign_with(2, &[&retired]).unwrap();
    assert_eq!(outcomes, vec![Outcome::Rejected(Rejected::UnknownReplica(public_key(&retired)))]);
    let (next, second) = (new_key(), h.replicas[1].clone());
    let outcomes = h.sign_with(2, &[&next, &second]).unwrap();
    assert_eq!(outcomes[1], Outcome::ReplicaSignatureStored { epoch: 2, ratified: true });
    // Proofs: epoch 1 with the old configuration's keys, epoch 2 with the new one's.
    let before = h.lookup_proof(ALICE, Some(1), 0).unwrap();
    let after = h.lookup_proof(ALICE, Some(2), 0).unwrap();
    let mut trusted = h.client_realm(0);
    trusted.config = old.clone();
    assert!(verify_lookup_at(&trusted, ALICE, &before, 1).is_ok());
    assert!(verify_lookup_at(&trusted, ALICE, &after, 2).is_err(), "the old realm file alone does not know epoch 2");
    let changes = h.machine.config_changes_after(&old.hash()).unwrap();
    let chain = follow_chain(&old, &changes).unwrap();
    assert_eq!(chain.newest(), &new);
    for (proof, epoch) in [(&before, 1), (&after, 2)] {
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
    // Once in a head, the old change is still recognised, never replayed.
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
    h.cut_epoch().unwrap();
    let (next, second) = (new_key(), h.replicas[1].clone());
    h.sign_with(2, &[&next, &second]).unwrap();
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
    h.publish_epoch().unwrap();
    let v1 = h.config().clone();
    assert_eq!(v1.protocol_version(), 1);
    let v2 = v1.clone().with_registration(RegistrationPolicy::open()).unwrap();
    let (a, b) = (h.replicas[0].clone(), h.replicas[2].clone());
    let change = h.config_change(v2, &[&a, &b]);
    assert_eq!(
        h.append(Command::ConfigChange(Box::new(change))).unwrap(),
        Outcome::ConfigChangeStaged { generation: 1, epoch: 2 }
    );
    h.publish_epoch().unwrap();
    assert_eq!(h.config().protocol_version(), 2);
    assert_eq!(h.config().generation, 1);
    let proof = h.lookup_proof(ALICE, Some(2), 1).unwrap();
    let mut trusted = h.client_realm(1);
    trusted.config = v1.clone();
    let chain = follow_chain(&v1, &h.machine.config_changes_after(&v1.hash()).unwrap()).unwrap();
    let realm = chain.client_realm(&trusted, &proof.head.config_hash).unwrap();
    verify_lookup_at(&realm, ALICE, &proof, 2).unwrap();
}

#[test]
fn a_verifier_follows_a_change_and_refuses_a_forged_one() {
    let mut h = realm();
    let old = h.config().clone();
    let new = stage_rotation(&mut h);
    h.cut_epoch().unwrap();
    let (next, second) = (new_key(), h.replicas[1].clone());
    h.sign_with(2, &[&next, &second]).unwrap();
    h.ratify(2, 0).unwrap();
    h.publish_epoch().unwrap();
    let store = MemoryStorage::new();
    let mut v = VerifierState::open(store.clone(), old.clone()).unwrap();
    for epoch in 1..=3 {
        let published = h.machine.published_epoch(epoch).unwrap().unwrap();
        assert_eq!(published.config_change.is_some(), epoch == 2);
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

    // Without the change, the head of epoch 2 does not match what the verifier computes.
    let mut blind = VerifierState::open(MemoryStorage::new(), old.clone()).unwrap();
    let first = h.machine.published_epoch(1).unwrap().unwrap();
    let checked = blind.check_epoch(&first.updates, &first.head).unwrap();
    blind.commit(checked).unwrap();
    let second = h.machine.published_epoch(2).unwrap().unwrap();
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
    h.cut_epoch().unwrap();
    let (next, second) = (new_key(), h.replicas[1].clone());
    h.sign_with(2, &[&next, &second]).unwrap();
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
    for epoch in [1, 2] {
        let (code, out) = run(epoch, Some(&chain));
        assert_eq!(code, Some(0), "epoch {epoch}: {out}");
    }
    let (code, out) = run(2, None);
    assert!(code == Some(1) && out.contains("(realm)"), "without the chain, epoch 2 is another realm: {out}");
    let (code, out) = run(2, Some(&forged));
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
    h.cut_epoch().unwrap();
    h.sign(2, 3).unwrap();
    let removed = public_key(&h.verifiers[0]);
    assert_eq!(h.ratify(2, 0).unwrap(), Outcome::Rejected(Rejected::UnknownVerifier(removed)));
    assert_eq!(h.machine.config_of_epoch(1).verifier_keys, vec![removed]);
    assert_eq!(h.ratify(1, 0).unwrap(), Outcome::Ignored(Ignored::DuplicateSignature { epoch: 1 }));
}
