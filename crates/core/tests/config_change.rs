//! Realm configuration changes (docs/protocol.md section 2.8): every refusal, chain following,
//! the v1 -> v2 upgrade, and the encoding's canonicity.
#![allow(clippy::unwrap_used, missing_docs)]

use keyraft_core::config_change::{check_config_change, extend_chain, ChainError};
use keyraft_core::keys::KeySignature;
use keyraft_core::registration::RegistrationPolicy;
use keyraft_core::vrf::VrfSecretKey;
use keyraft_core::{
    decode_canonical, follow_chain, Canonical, ConfigChange, ConfigChangeError, PublicKey, RealmConfig, RealmFile,
    Signature, SignedConfigChange,
};

fn signing(n: u8) -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[n; 32])
}

fn key(n: u8) -> PublicKey {
    PublicKey::from_verifying_key(&signing(n).verifying_key()).unwrap()
}

/// Replicas 1, 2, 3 on nodes 1, 2, 3; verifier 5.
fn v1() -> RealmConfig {
    let vrf = VrfSecretKey::from_seed(&[4; 32]).public_key();
    RealmConfig::new("example.org", vrf, vec![key(1), key(2), key(3)], vec![key(5)]).unwrap()
}

fn v2() -> RealmConfig {
    v1().with_replica_node_ids(&[(1, key(1)), (2, key(2)), (3, key(3))])
        .unwrap()
        .with_registration(RegistrationPolicy::open())
        .unwrap()
}

/// `from` with node 2's key replaced by key 12, one generation later.
fn rotated(from: &RealmConfig) -> RealmConfig {
    let mut bindings: Vec<(u64, PublicKey)> =
        from.replica_node_ids.iter().copied().zip(from.replica_keys.iter().copied()).collect();
    for b in &mut bindings {
        if b.0 == 2 {
            b.1 = key(12);
        }
    }
    let mut next = RealmConfig::new(
        from.realm.clone(),
        from.vrf_public_key,
        bindings.iter().map(|b| b.1).collect(),
        from.verifier_keys.clone(),
    )
    .unwrap()
    .with_replica_node_ids(&bindings)
    .unwrap()
    .with_registration(from.registration.clone().unwrap_or_else(RegistrationPolicy::open))
    .unwrap();
    next.generation = from.generation + 1;
    next
}

fn signed(from: &RealmConfig, to: RealmConfig, signers: &[u8]) -> SignedConfigChange {
    let mut change = SignedConfigChange::unsigned(ConfigChange::new(from, to));
    let message = change.change.signing_message();
    for n in signers {
        let sk = signing(*n);
        change.add_signature(KeySignature {
            signer: key(*n),
            signature: Signature(ed25519_dalek::Signer::sign(&sk, &message).to_bytes()),
        });
    }
    change
}

#[test]
fn a_majority_signed_change_leads_to_the_new_config() {
    let from = v2();
    let to = rotated(&from);
    let change = signed(&from, to.clone(), &[1, 3]);
    assert_eq!(check_config_change(&from, &change).unwrap(), to);
    assert_eq!(to.replica_key_of_node(2), Some(key(12)));
    assert_eq!(to.replica_node_id(&key(12)), Some(2));
    assert_eq!(to.generation, 1);
}

#[test]
fn a_change_signed_by_a_minority_is_refused() {
    let from = v2();
    let change = signed(&from, rotated(&from), &[2]);
    assert_eq!(check_config_change(&from, &change), Err(ConfigChangeError::NotEnoughSignatures { got: 1, need: 2 }));
    let unsigned = signed(&from, rotated(&from), &[]);
    assert_eq!(check_config_change(&from, &unsigned), Err(ConfigChangeError::NotEnoughSignatures { got: 0, need: 2 }));
}

#[test]
fn every_refusal_has_its_own_error() {
    let from = v2();
    // Follows another configuration.
    let other = rotated(&from);
    let change = signed(&other, rotated(&other), &[1, 3]);
    assert!(matches!(
        check_config_change(&from, &change),
        Err(ConfigChangeError::NotAfterConfigInForce { in_force, previous })
            if in_force == from.hash() && previous == other.hash()
    ));
    // Renames the realm.
    let mut renamed = rotated(&from);
    renamed.realm = "example.net".into();
    assert!(matches!(
        check_config_change(&from, &signed(&from, renamed, &[1, 2])),
        Err(ConfigChangeError::RealmRenamed { .. })
    ));
    // Replaces the VRF key.
    let mut vrf = rotated(&from);
    vrf.vrf_public_key = VrfSecretKey::from_seed(&[7; 32]).public_key();
    assert_eq!(check_config_change(&from, &signed(&from, vrf, &[1, 2])), Err(ConfigChangeError::VrfKeyChanged));
    // Back to version 1.
    assert_eq!(check_config_change(&from, &signed(&from, v1(), &[1, 2])), Err(ConfigChangeError::NotVersion2));
    // Skips or repeats a generation.
    for generation in [0, 2] {
        let mut g = rotated(&from);
        g.generation = generation;
        assert_eq!(
            check_config_change(&from, &signed(&from, g, &[1, 2])),
            Err(ConfigChangeError::GenerationNotNext { expected: 1, got: generation })
        );
    }
    // Signed by someone who is not a replica of the configuration in force (the new key).
    assert_eq!(
        check_config_change(&from, &signed(&from, rotated(&from), &[1, 12])),
        Err(ConfigChangeError::UnknownSigner(*key(12).as_bytes()))
    );
    // A signature over something else.
    let mut bad = signed(&from, rotated(&from), &[1, 2]);
    bad.signatures[0].signature.0[0] ^= 1;
    let first = bad.signatures[0].signer;
    assert_eq!(check_config_change(&from, &bad), Err(ConfigChangeError::BadSignature(*first.as_bytes())));
    // The same replica twice (only a change built in memory can hold it).
    let mut twice = signed(&from, rotated(&from), &[1]);
    twice.signatures.push(twice.signatures[0]);
    assert_eq!(check_config_change(&from, &twice), Err(ConfigChangeError::DuplicateSigner(*key(1).as_bytes())));
}

#[test]
fn a_version_1_realm_upgrades_to_version_2_with_generation_1() {
    let from = v1();
    assert_eq!(from.generation, 0);
    let mut to = v2();
    to.generation = 1;
    let change = signed(&from, to.clone(), &[2, 3]);
    assert_eq!(check_config_change(&from, &change).unwrap(), to);
    let mut stale = v2();
    stale.generation = 0;
    assert_eq!(
        check_config_change(&from, &signed(&from, stale, &[2, 3])),
        Err(ConfigChangeError::GenerationNotNext { expected: 1, got: 0 })
    );
}

#[test]
fn a_chain_is_followed_from_the_trusted_config_and_old_changes_cannot_be_replayed() {
    let g0 = v2();
    let g1 = rotated(&g0);
    let c1 = signed(&g0, g1.clone(), &[1, 2]);
    // Generation 2 moves node 2 back to key 2: a configuration equal to g0 but one generation
    // later, so the hashes differ and c1 cannot be replayed after it.
    let mut g2 = g0.clone();
    g2.generation = 2;
    let c2 = signed(&g1, g2.clone(), &[1, 12]);
    let chain = follow_chain(&g0, &[c1.clone(), c2.clone()]).unwrap();
    assert_eq!(chain.newest(), &g2);
    assert_eq!(chain.trusted(), &g0);
    assert_eq!(chain.configs().len(), 3);
    assert_eq!(chain.config_by_hash(&g1.hash()), Some(&g1));
    assert_eq!(chain.changes(), &[c1.clone(), c2.clone()]);
    assert_ne!(g0.hash(), g2.hash());

    let err = follow_chain(&g0, &[c1.clone(), c2.clone(), c1.clone()]).unwrap_err();
    assert!(matches!(err, ChainError { position: 2, error: ConfigChangeError::NotAfterConfigInForce { .. } }));
    // Out of order.
    assert_eq!(follow_chain(&g0, std::slice::from_ref(&c2)).unwrap_err().position, 0);
    // Continued in two steps, the same chain.
    let first = follow_chain(&g0, &[c1]).unwrap();
    assert_eq!(extend_chain(&first, &[c2]).unwrap(), chain);
    // The empty chain is the trusted config alone.
    assert_eq!(follow_chain(&g0, &[]).unwrap().newest(), &g0);
}

#[test]
fn the_encoding_is_canonical_and_every_byte_flip_is_refused_or_changes_the_verdict() {
    let from = v2();
    let change = signed(&from, rotated(&from), &[1, 3]);
    let bytes = change.encode();
    assert_eq!(SignedConfigChange::from_bytes(&bytes).unwrap(), change);
    // Layout: count, two (key, signature), then the previous hash and the new config.
    assert_eq!(&bytes[..2], &[0, 2]);
    assert_eq!(&bytes[2 + 2 * 96..2 + 2 * 96 + 32], &from.hash());
    assert_eq!(&bytes[2 + 2 * 96 + 32..], &rotated(&from).encode()[..]);
    for i in 0..bytes.len() {
        let mut flipped = bytes.clone();
        flipped[i] ^= 0x01;
        if let Ok(decoded) = SignedConfigChange::from_bytes(&flipped) {
            assert!(check_config_change(&from, &decoded).is_err(), "a flip of byte {i} was accepted");
        }
    }
    // Truncated and extended.
    assert!(SignedConfigChange::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(SignedConfigChange::from_bytes(&longer).is_err());
}

#[test]
fn version_2_configs_bind_replicas_to_distinct_node_ids() {
    let config = v2();
    for n in 1..=3u8 {
        assert_eq!(config.replica_node_id(&key(n)), Some(u64::from(n)));
        assert_eq!(config.replica_key_of_node(u64::from(n)), Some(key(n)));
    }
    let decoded = decode_canonical::<RealmConfig>(&config.encode()).unwrap();
    assert_eq!(decoded, config);
    // Two replicas on one node, or node 0, are refused.
    assert!(v1()
        .with_replica_node_ids(&[(1, key(1)), (1, key(2)), (3, key(3))])
        .unwrap()
        .with_registration(RegistrationPolicy::open())
        .is_err());
    assert!(v1()
        .with_replica_node_ids(&[(0, key(1)), (2, key(2)), (3, key(3))])
        .unwrap()
        .with_registration(RegistrationPolicy::open())
        .is_err());
    // A key not in the configuration.
    assert!(v1().with_replica_node_ids(&[(1, key(1)), (2, key(2)), (3, key(4))]).is_err());
    // A version-1 config has neither generation nor node ids.
    let mut bad = v1();
    bad.generation = 1;
    assert!(decode_canonical::<RealmConfig>(&bad.encode()).is_ok(), "v1 bytes carry no generation");
    assert_eq!(decode_canonical::<RealmConfig>(&bad.encode()).unwrap().generation, 0);
}

#[test]
fn the_realm_file_of_version_2_lists_replicas_with_node_ids_and_the_generation() {
    let config = rotated(&v2());
    let file = RealmFile::new(&config, 60_000, 5_000, vec![]);
    let json = file.to_json();
    assert!(json.contains("\"node_id\": 2"), "{json}");
    assert!(json.contains("\"generation\": 1"), "{json}");
    assert!(!json.contains("replica_keys"), "{json}");
    let read = RealmFile::from_json(&json).unwrap();
    assert_eq!(read.config().unwrap(), config);
    // Version 1 files keep their shape.
    let one = RealmFile::new(&v1(), 60_000, 5_000, vec![]).to_json();
    assert!(one.contains("replica_keys") && !one.contains("replicas\"") && !one.contains("generation"), "{one}");
    // `replica_keys` in a version-2 file, `replicas` in a version-1 one, are refused.
    let mut mixed: serde_json::Value = serde_json::from_str(&json).unwrap();
    mixed["replica_keys"] = serde_json::json!([hex::encode(key(1).as_bytes())]);
    assert!(RealmFile::from_json(&mixed.to_string()).is_err());
    let mut v1_with_replicas: serde_json::Value = serde_json::from_str(&one).unwrap();
    v1_with_replicas["replicas"] = serde_json::json!([{ "node_id": 1, "key": hex::encode(key(1).as_bytes()) }]);
    assert!(RealmFile::from_json(&v1_with_replicas.to_string()).is_err());
    let mut array: serde_json::Value = serde_json::from_str(&json).unwrap();
    array["replicas"][0] = serde_json::json!([1, hex::encode(key(1).as_bytes())]);
    assert!(RealmFile::from_json(&array.to_string()).is_err());
}
