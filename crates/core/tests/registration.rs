//! Protocol version 2's realm configuration (registration policy, canonical ids) and registrar
//! attestations (docs/protocol.md sections 2.6, 3.1 and 6.1).
#![allow(clippy::unwrap_used, missing_docs)]

use keyraft_core::identity::LocalPartRule;
use keyraft_core::registration::{
    verify_attestation, Attestation, AttestationError, Method, NamespaceRule, RegistrationPolicy,
};
use keyraft_core::vrf::VrfSecretKey;
use keyraft_core::{decode_canonical, Canonical, PublicKey, RealmConfig, RealmFile};

fn signing(n: u8) -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[n; 32])
}

fn key(n: u8) -> PublicKey {
    PublicKey::from_verifying_key(&signing(n).verifying_key()).unwrap()
}

fn v1() -> RealmConfig {
    let vrf = VrfSecretKey::from_seed(&[4; 32]).public_key();
    RealmConfig::new("example.org", vrf, vec![key(1), key(2), key(3)], vec![key(5)]).unwrap()
}

fn policy() -> RegistrationPolicy {
    RegistrationPolicy {
        local_part_rule: LocalPartRule::CaseInsensitive,
        registrar_keys: vec![key(9), key(8)],
        rules: vec![
            NamespaceRule {
                namespace: "*@example.com".into(),
                methods: vec![
                    Method::Oidc {
                        issuer: "https://id.example.com".into(),
                        audience: "kr".into(),
                        claim: "email".into(),
                    },
                    Method::Email,
                    Method::Registrar,
                ],
            },
            NamespaceRule { namespace: "*".into(), methods: vec![Method::Open] },
        ],
        recovery_window_ms: 86_400_000,
    }
}

fn v2() -> RealmConfig {
    v1().with_registration(policy()).unwrap()
}

#[test]
fn version_1_encoding_is_unchanged_and_version_2_is_told_apart_by_its_first_byte() {
    let one = v1().encode();
    assert_eq!(one[0], 0, "a version-1 encoding starts with the realm name's length");
    assert_eq!(decode_canonical::<RealmConfig>(&one).unwrap(), v1());
    let two = v2().encode();
    assert_eq!(two[0], 2);
    assert_eq!(&two[1..one.len() + 1], &one[..], "version 2 is version 1's fields, prefixed and extended");
    let decoded = decode_canonical::<RealmConfig>(&two).unwrap();
    assert_eq!(decoded, v2());
    assert_eq!(decoded.protocol_version(), 2);
    assert_ne!(v1().hash(), v2().hash());
    for first in [1u8, 3, 0xff] {
        let mut bad = two.clone();
        bad[0] = first;
        assert!(decode_canonical::<RealmConfig>(&bad).is_err(), "version byte {first} decoded");
    }
}

#[test]
fn every_truncation_and_most_byte_flips_of_a_version_2_config_are_refused_or_change_it() {
    let two = v2().encode();
    for n in 0..two.len() {
        assert!(decode_canonical::<RealmConfig>(&two[..n]).is_err(), "truncated to {n} bytes decoded");
    }
    for i in 0..two.len() {
        for bit in 0..8 {
            let mut flipped = two.clone();
            flipped[i] ^= 1 << bit;
            if let Ok(c) = decode_canonical::<RealmConfig>(&flipped) {
                assert_ne!(c.hash(), v2().hash(), "byte {i} bit {bit}: another encoding of the same config");
            }
        }
    }
}

#[test]
fn method_lists_must_be_canonical() {
    let mut p = policy();
    p.rules[0].methods.reverse();
    assert!(p.validate().is_err(), "unsorted methods accepted");
    p.sort_methods();
    p.registrar_keys.sort();
    p.validate().unwrap();
    let mut dup = p.clone();
    dup.rules[1].methods = vec![Method::Open, Method::Open];
    assert!(dup.validate().is_err());
    let mut no_keys = p.clone();
    no_keys.registrar_keys.clear();
    assert!(no_keys.validate().unwrap_err().to_string().contains("registrar"));
    let mut none = p;
    none.rules.clear();
    assert!(none.validate().is_err(), "a policy with no rule admits nothing and is refused");
}

#[test]
fn a_registrar_key_cannot_also_be_a_replica_key() {
    let mut p = policy();
    p.registrar_keys = vec![key(1)];
    assert!(v1().with_registration(p).is_err());
}

#[test]
fn canonical_user_ids_follow_the_protocol_version() {
    assert_eq!(v1().canonical_user_id("Alice@Example.com").unwrap(), "Alice@Example.com");
    assert_eq!(v2().canonical_user_id("Alice@Example.com").unwrap(), "alice@example.com");
    // NFD zoë is NFC zoë under version 2, two identities under version 1.
    assert_eq!(v2().canonical_user_id("zoe\u{308}").unwrap(), "zo\u{eb}");
    assert_eq!(v1().canonical_user_id("zoe\u{308}").unwrap(), "zoe\u{308}");
    assert!(v2().canonical_user_id("alice\u{202e}@example.com").is_err());
    assert!(v1().canonical_user_id("").is_err());
}

#[test]
fn realm_files_of_both_versions_read_back() {
    let one = RealmFile::new(&v1(), 60_000, 5_000, vec![]);
    assert_eq!(one.protocol_version, 1);
    assert!(!one.to_json().contains("registration") && !one.to_json().contains("protocol_version"));
    assert_eq!(RealmFile::from_json(&one.to_json()).unwrap().config().unwrap(), v1());
    let two = RealmFile::new(&v2(), 60_000, 5_000, vec![]);
    let json = two.to_json();
    assert!(json.contains("\"protocol_version\": 2") && json.contains("\"oidc\""), "{json}");
    assert_eq!(RealmFile::from_json(&json).unwrap().config().unwrap(), v2());
}

#[test]
fn a_realm_file_written_before_version_2_is_version_1() {
    let mut value: serde_json::Value =
        serde_json::from_str(&RealmFile::new(&v1(), 60_000, 5_000, vec![]).to_json()).unwrap();
    value.as_object_mut().unwrap().remove("protocol_version");
    let file = RealmFile::from_json(&value.to_string()).unwrap();
    assert_eq!(file.config().unwrap().protocol_version(), 1);
}

#[test]
fn inconsistent_realm_files_are_refused_saying_why() {
    let json = RealmFile::new(&v2(), 60_000, 5_000, vec![]).to_json();
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        f(&mut v);
        RealmFile::from_json(&v.to_string()).unwrap_err().to_string()
    };
    let e = edit(&|v| v["protocol_version"] = 1.into());
    assert!(e.contains("needs protocol_version 2"), "{e}");
    let e = edit(&|v| {
        v.as_object_mut().unwrap().remove("registration");
    });
    assert!(e.contains("needs a `registration`"), "{e}");
    let e = edit(&|v| v["protocol_version"] = 3.into());
    assert!(e.contains("protocol_version 3"), "{e}");
    let e = edit(&|v| v["registration"]["namespaces"][0]["namespace"] = "*@Example.com".into());
    assert!(e.contains("lower case"), "{e}");
    let e = edit(&|v| v["registration"]["namespaces"][1]["methods"] = serde_json::json!(["open", "open"]));
    assert!(e.contains("twice"), "{e}");
    let e = edit(&|v| v["registration"]["local_part_rule"] = "loose".into());
    assert!(e.contains("local_part_rule"), "{e}");
    let e = edit(&|v| v["registration"]["namespaces"][1]["methods"] = serde_json::json!(["sms"]));
    assert!(e.contains("sms"), "{e}");
}

const UPDATE_ID: [u8; 32] = [7; 32];
const NOW_MS: u64 = 1_000_000;

fn attestation() -> Attestation {
    Attestation::sign(&signing(9), "example.org", "alice@example.com", UPDATE_ID, NOW_MS + 60_000)
}

fn check(a: &Attestation, user: &str, update_id: &[u8; 32], now_ms: u64) -> Result<(), AttestationError> {
    let policy = v2().registration.unwrap();
    verify_attestation("example.org", &policy, a, user, update_id, now_ms, 5_000).map(|_| ())
}

#[test]
fn an_attestation_registers_exactly_its_user_and_update_until_it_expires() {
    let a = attestation();
    check(&a, "alice@example.com", &UPDATE_ID, NOW_MS).unwrap();
    assert!(matches!(check(&a, "bob@example.com", &UPDATE_ID, NOW_MS), Err(AttestationError::WrongUser { .. })));
    assert!(matches!(check(&a, "alice@example.com", &[8; 32], NOW_MS), Err(AttestationError::WrongUpdate { .. })));
    // Good until its expiry plus the skew, not after.
    check(&a, "alice@example.com", &UPDATE_ID, NOW_MS + 65_000).unwrap();
    assert!(matches!(
        check(&a, "alice@example.com", &UPDATE_ID, NOW_MS + 65_001),
        Err(AttestationError::Expired { .. })
    ));
    let stranger = Attestation::sign(&signing(10), "example.org", "alice@example.com", UPDATE_ID, NOW_MS + 60_000);
    assert!(matches!(
        check(&stranger, "alice@example.com", &UPDATE_ID, NOW_MS),
        Err(AttestationError::UnknownRegistrar { .. })
    ));
    let other_realm = Attestation::sign(&signing(9), "example.net", "alice@example.com", UPDATE_ID, NOW_MS + 60_000);
    assert_eq!(check(&other_realm, "alice@example.com", &UPDATE_ID, NOW_MS), Err(AttestationError::BadSignature));
    let mut later = a.clone();
    later.expires_ms += 1;
    assert_eq!(check(&later, "alice@example.com", &UPDATE_ID, NOW_MS), Err(AttestationError::BadSignature));
}

#[test]
fn flipping_any_bit_of_an_attestation_makes_it_fail() {
    let a = attestation();
    let bytes = a.encode();
    assert_eq!(decode_canonical::<Attestation>(&bytes).unwrap(), a);
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut flipped = bytes.clone();
            flipped[i] ^= 1 << bit;
            if let Ok(b) = decode_canonical::<Attestation>(&flipped) {
                assert!(
                    check(&b, "alice@example.com", &UPDATE_ID, NOW_MS).is_err(),
                    "byte {i} bit {bit}: a changed attestation still registers"
                );
            }
        }
    }
}

#[test]
fn realm_files_in_shapes_serde_would_bend_are_refused() {
    let json = RealmFile::new(&v2(), 60_000, 5_000, vec![]).to_json();
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        f(&mut v);
        RealmFile::from_json(&v.to_string()).map(|_| ()).map_err(|e| e.to_string())
    };
    edit(&|_| {}).unwrap();
    let e = edit(&|v| v["verifier_keys"] = serde_json::Value::Null).unwrap_err();
    assert!(e.contains("verifier_keys") && e.contains("null"), "{e}");
    let e = edit(&|v| v["registration"]["namespaces"][1]["methods"] = serde_json::json!([{"open": null}])).unwrap_err();
    assert!(e.contains("null") || e.contains("methods[0]"), "{e}");
    let e = edit(&|v| v["registration"]["namespaces"][1] = serde_json::json!(["*", ["open"]])).unwrap_err();
    assert!(e.contains("namespaces[1]"), "{e}");
    let e = edit(&|v| {
        v["registration"]["namespaces"][0]["methods"][0] = serde_json::json!({"oidc": ["https://id", "aud"]});
    })
    .unwrap_err();
    assert!(e.contains("oidc"), "{e}");
    let mut one: serde_json::Value =
        serde_json::from_str(&RealmFile::new(&v1(), 60_000, 5_000, vec![]).to_json()).unwrap();
    one["registration"] = serde_json::Value::Null;
    assert!(RealmFile::from_json(&one.to_string()).is_err());
    assert!(RealmFile::from_json("[\"example.org\"]").is_err());
}
