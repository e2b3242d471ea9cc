//! Client-side verification: an honest proof verifies; changing any field of it produces the
//! error of the check that field belongs to; any flipped byte fails; random bytes never panic.
#![allow(clippy::unwrap_used, missing_docs)]

use ed25519_dalek::Signer as _;
use keyraft_core::lookup::{head_signing_message, ratification_message, verify_lookup_bytes, PositionalSignature};
use keyraft_core::tree::{Terminal, TreeProofError};
use keyraft_core::{verify_lookup, Canonical, Index, LookupProof, Signature, VerifyError};
use keyraft_state::harness::{derive_signing_key, Harness};
use proptest::prelude::*;

const ALICE: &str = "alice@example.org";

fn setup() -> Harness {
    let mut h = Harness::new("example.org", 3, 2, 5);
    let alice = derive_signing_key(5, "alice");
    h.register(ALICE, &alice, &[("mail", b"alice-pgp"), ("chat", b"alice-signal")]).unwrap();
    for i in 0..20 {
        let k = derive_signing_key(5, &format!("user{i}"));
        h.register(&format!("user{i}@example.org"), &k, &[("mail", b"k")]).unwrap();
    }
    h.publish_epoch().unwrap();
    h
}

/// Re-signs a tampered head with every replica and verifier key: a fully compromised server.
fn resign(h: &Harness, proof: &mut LookupProof) {
    let head_message = head_signing_message(&proof.head);
    let ratification = ratification_message(&proof.head);
    for s in &mut proof.replica_signatures {
        s.signature = Signature(h.replicas[usize::from(s.position)].sign(&head_message).to_bytes());
    }
    for s in &mut proof.verifier_signatures {
        s.signature = Signature(h.verifiers[usize::from(s.position)].sign(&ratification).to_bytes());
    }
}

fn shared() -> &'static Harness {
    static SHARED: std::sync::OnceLock<Harness> = std::sync::OnceLock::new();
    SHARED.get_or_init(setup)
}

#[test]
fn honest_proofs_verify() {
    let h = setup();
    let proof = h.lookup_proof(ALICE, None, 2).unwrap();
    let lookup = verify_lookup(&h.client_realm(2), ALICE, &proof, h.now_ms, Some(1)).unwrap();
    let (entry, profile) = lookup.entry.as_ref().unwrap();
    assert_eq!(entry.version, 0);
    assert_eq!(profile.keys["mail"], b"alice-pgp");
    assert_eq!(lookup.epoch(), 1);
    assert_eq!(lookup.ratified_by.len(), 2);
    // Absence is proven too.
    let absent = h.lookup_proof("nobody@example.org", None, 2).unwrap();
    let lookup = verify_lookup(&h.client_realm(2), "nobody@example.org", &absent, h.now_ms, None).unwrap();
    assert!(lookup.entry.is_none());
    let size = proof.encode().len();
    assert!(size < 1500, "proof of {size} bytes");
}

#[test]
fn every_field_maps_to_its_check() {
    let h = setup();
    let honest = h.lookup_proof(ALICE, None, 2).unwrap();
    let realm = h.client_realm(2);
    let expect = |proof: &LookupProof, now: u64, last_seen: Option<u64>, threshold: usize| {
        let mut r = realm.clone();
        r.verifier_threshold = threshold;
        verify_lookup(&r, ALICE, proof, now, last_seen).unwrap_err()
    };

    // 0. The proof is about someone else.
    let err = verify_lookup(&realm, "bob@example.org", &honest, h.now_ms, None).unwrap_err();
    assert!(matches!(err, VerifyError::UserIdMismatch { .. }), "{err}");

    // 1. Realm and configuration, before the VRF: a proof from another realm (whose VRF key
    // differs too) is reported as such, naming both realms and configuration hashes.
    let mut p = honest.clone();
    p.head.realm = "evil.org".into();
    let err = expect(&p, h.now_ms, None, 2);
    assert!(matches!(err, VerifyError::RealmMismatch { .. }), "{err}");
    assert!(err.to_string().contains("\"evil.org\"") && err.to_string().contains("\"example.org\""), "{err}");
    let mut p = honest.clone();
    p.head.config_hash[0] ^= 1;
    let err = expect(&p, h.now_ms, None, 2);
    assert!(err.to_string().starts_with("this proof is for a different realm"), "{err}");
    assert!(err.to_string().contains(&hex::encode(&p.head.config_hash[..8])), "{err}");
    assert!(err.to_string().contains(&hex::encode(&realm.config.hash()[..8])), "{err}");
    let mut other = Harness::new("other.org", 3, 2, 6);
    other.publish_epoch().unwrap();
    let mut p = other.lookup_proof("nobody@example.org", None, 2).unwrap();
    p.user_id = ALICE.into();
    let err = expect(&p, h.now_ms, None, 2);
    assert!(matches!(err, VerifyError::RealmMismatch { .. }), "{err}");

    // 2. VRF.
    let mut p = honest.clone();
    let mut bytes = p.vrf_proof.to_bytes();
    bytes[40] ^= 1;
    p.vrf_proof = keyraft_core::vrf::VrfProof::from_bytes(&bytes).unwrap();
    assert!(matches!(expect(&p, h.now_ms, None, 2), VerifyError::Vrf(_)));
    let mut p = honest.clone();
    p.user_id = "mallory@example.org".into();
    assert!(matches!(verify_lookup(&realm, "mallory@example.org", &p, h.now_ms, None), Err(VerifyError::Vrf(_))));

    // 3. Freshness, both ways.
    let issue = honest.head.issue_time_ms;
    assert!(matches!(expect(&honest, issue + realm.epoch_ttl_ms + 1, None, 2), VerifyError::HeadExpired { .. }));
    assert!(matches!(expect(&honest, issue - realm.clock_skew_ms - 1, None, 2), VerifyError::HeadFromFuture { .. }));

    // 4. Quorum: replicas.
    let mut p = honest.clone();
    p.replica_signatures[1].position = 7;
    assert_eq!(expect(&p, h.now_ms, None, 2), VerifyError::UnknownReplica { position: 7 });
    let mut p = honest.clone();
    p.replica_signatures[0].signature.0[10] ^= 1;
    assert!(matches!(expect(&p, h.now_ms, None, 2), VerifyError::BadReplicaSignature { .. }));
    let mut p = honest.clone();
    p.replica_signatures.pop();
    assert_eq!(expect(&p, h.now_ms, None, 0), VerifyError::ReplicaMajorityMissing { have: 1, need: 2 });
    // A verifier's ratification does not count as a replica signature.
    let mut p = honest.clone();
    p.replica_signatures[1] = PositionalSignature { position: 2, signature: p.verifier_signatures[0].signature };
    assert!(matches!(expect(&p, h.now_ms, None, 0), VerifyError::BadReplicaSignature { .. }));
    // ... and verifiers.
    let mut p = honest.clone();
    p.verifier_signatures[1].position = 9;
    assert_eq!(expect(&p, h.now_ms, None, 2), VerifyError::UnknownVerifier { position: 9 });
    let mut p = honest.clone();
    p.verifier_signatures[1].signature.0[0] ^= 1;
    assert!(matches!(expect(&p, h.now_ms, None, 2), VerifyError::BadVerifierSignature { .. }));
    let mut p = honest.clone();
    p.verifier_signatures.pop();
    assert_eq!(expect(&p, h.now_ms, None, 2), VerifyError::VerifierQuorumMissing { have: 1, need: 2 });

    // 5. Tree proof.
    let mut p = honest.clone();
    let sibling = p.tree_proof.siblings.iter_mut().flatten().next().unwrap();
    sibling[3] ^= 1;
    assert_eq!(expect(&p, h.now_ms, None, 2), VerifyError::TreeProof(TreeProofError::RootMismatch));
    let mut p = honest.clone();
    if let Terminal::Leaf { value } = &mut p.tree_proof.terminal {
        value[0] ^= 1;
    }
    assert_eq!(expect(&p, h.now_ms, None, 2), VerifyError::TreeProof(TreeProofError::RootMismatch));

    // 6. Entry.
    let mut p = honest.clone();
    p.entry.as_mut().unwrap().0.version = 9;
    assert_eq!(expect(&p, h.now_ms, None, 2), VerifyError::EntryHashMismatch);
    let mut p = honest.clone();
    p.entry = None;
    assert_eq!(expect(&p, h.now_ms, None, 2), VerifyError::EntryPresenceMismatch { tree_says_present: true });
    // A compromised server that signs a tree whose leaf holds another index's entry.
    let mut p = honest.clone();
    let (entry, _) = p.entry.as_mut().unwrap();
    entry.index = Index([0x42; 32]);
    let value = entry.hash();
    p.tree_proof.terminal = Terminal::Leaf { value };
    let (index, _) = h.index_of(ALICE);
    p.head.root = p.tree_proof.compute_root(&index).unwrap().0;
    resign(&h, &mut p);
    assert_eq!(expect(&p, h.now_ms, None, 2), VerifyError::EntryIndexMismatch);

    // 7. Profile.
    let mut p = honest.clone();
    p.entry.as_mut().unwrap().1.keys.insert("mail".into(), b"mallory-pgp".to_vec());
    assert_eq!(expect(&p, h.now_ms, None, 2), VerifyError::ProfileCommitmentMismatch);

    // 8. Rollback.
    assert_eq!(expect(&honest, h.now_ms, Some(2), 2), VerifyError::Rollback { last_seen: 2, got: 1 });
}

#[test]
fn absence_proofs_cannot_hide_or_invent_entries() {
    let h = setup();
    let realm = h.client_realm(2);
    // An absence proof for a registered user cannot be made: the honest proof for another
    // index does not verify for alice's.
    let other = h.lookup_proof("nobody@example.org", None, 2).unwrap();
    let mut p = h.lookup_proof(ALICE, None, 2).unwrap();
    p.tree_proof = other.tree_proof.clone();
    p.entry = None;
    assert!(matches!(verify_lookup(&realm, ALICE, &p, h.now_ms, None), Err(VerifyError::TreeProof(_))));
    // An absence proof carrying an entry is refused.
    let mut p = other.clone();
    p.entry = h.lookup_proof(ALICE, None, 2).unwrap().entry;
    assert_eq!(
        verify_lookup(&realm, "nobody@example.org", &p, h.now_ms, None).unwrap_err(),
        VerifyError::EntryPresenceMismatch { tree_says_present: false }
    );
}

#[test]
fn flipping_any_byte_of_a_proof_fails() {
    let h = setup();
    let realm = h.client_realm(2);
    for user in [ALICE, "nobody@example.org"] {
        let bytes = h.lookup_proof(user, None, 2).unwrap().encode();
        assert!(verify_lookup_bytes(&realm, user, &bytes, h.now_ms, None).is_ok());
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut tampered = bytes.clone();
                tampered[i] ^= bit;
                assert!(
                    verify_lookup_bytes(&realm, user, &tampered, h.now_ms, None).is_err(),
                    "flipping bit {bit:#x} of byte {i} of {user}'s proof still verifies"
                );
            }
        }
        // Truncation and trailing garbage are refused too.
        assert!(verify_lookup_bytes(&realm, user, &bytes[..bytes.len() - 1], h.now_ms, None).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(verify_lookup_bytes(&realm, user, &longer, h.now_ms, None).is_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let h = Harness::new("example.org", 3, 1, 9);
        prop_assert!(verify_lookup_bytes(&h.client_realm(0), ALICE, &bytes, h.now_ms, None).is_err());
    }

    #[test]
    fn mutated_proofs_never_verify_or_panic(pos in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
        let h = shared();
        let mut bytes = h.lookup_proof(ALICE, None, 1).unwrap().encode();
        let i = pos.index(bytes.len());
        prop_assume!(bytes[i] != byte);
        bytes[i] = byte;
        prop_assert!(verify_lookup_bytes(&h.client_realm(1), ALICE, &bytes, h.now_ms, None).is_err());
        let n = cut.index(bytes.len());
        let _ = verify_lookup_bytes(&h.client_realm(1), ALICE, &bytes[..n], h.now_ms, None);
    }
}

#[test]
fn historical_proofs_skip_freshness_but_nothing_else() {
    let h = setup();
    let realm = h.client_realm(2);
    let proof = h.lookup_proof(ALICE, None, 2).unwrap();
    let years_later = h.now_ms + 10 * 365 * 24 * 3_600_000;
    // Too old for a present-day answer, still a valid statement about epoch 1.
    assert!(matches!(verify_lookup(&realm, ALICE, &proof, years_later, None), Err(VerifyError::HeadExpired { .. })));
    let past = keyraft_core::verify_lookup_at(&realm, ALICE, &proof, 1).unwrap();
    assert_eq!(past.epoch(), 1);
    assert!(matches!(
        keyraft_core::verify_lookup_at(&realm, ALICE, &proof, 2),
        Err(VerifyError::EpochMismatch { asked: 2, got: 1 })
    ));
    // Quorum, tree and entry checks still apply.
    let mut p = proof.clone();
    p.replica_signatures.truncate(1);
    assert!(matches!(
        keyraft_core::verify_lookup_at(&realm, ALICE, &p, 1),
        Err(VerifyError::ReplicaMajorityMissing { .. })
    ));
    let bytes = proof.encode();
    for i in 0..bytes.len() {
        let mut tampered = bytes.clone();
        tampered[i] ^= 0x01;
        let ok = LookupProof::from_bytes(&tampered)
            .map(|p| keyraft_core::verify_lookup_at(&realm, ALICE, &p, 1).is_ok())
            .unwrap_or(false);
        assert!(!ok, "flipping byte {i} still verifies historically");
    }
}
