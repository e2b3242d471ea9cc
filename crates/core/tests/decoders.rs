//! Every decoder returns a typed error for malformed input and never panics; valid values
//! round-trip; policies satisfiable by zero signatures are refused.
#![allow(clippy::unwrap_used, missing_docs)]

use keyraft_core::encoding::DecodeError;
use keyraft_core::policy::{Quorum, QuorumMember};
use keyraft_core::tree::TreeProof;
use keyraft_core::update::{check_signed_entry, SignedEntry};
use keyraft_core::{
    decode_canonical, Canonical, Entry, EpochHead, Index, LookupProof, Policy, Profile, PublicKey, RealmConfig, Update,
};
use keyraft_core::{KeySignature, Signature};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

fn key(n: u8) -> PublicKey {
    let sk = ed25519_dalek::SigningKey::from_bytes(&[n; 32]);
    PublicKey::from_verifying_key(&sk.verifying_key()).unwrap()
}

fn profile() -> Profile {
    Profile {
        nonce: vec![7; 16],
        keys: BTreeMap::from([("chat".to_owned(), vec![1, 2]), ("mail".to_owned(), vec![3])]),
    }
}

fn entry() -> Entry {
    Entry {
        index: Index([5; 32]),
        version: 3,
        update_policy: Policy::threshold(2, vec![key(1), key(2), key(3)]).unwrap(),
        profile_commitment: profile().commitment(),
    }
}

fn head() -> EpochHead {
    EpochHead {
        realm: "example.org".into(),
        epoch: 4,
        root: [1; 32],
        previous_head_hash: [2; 32],
        issue_time_ms: 5,
        update_count: 6,
        config_hash: [7; 32],
    }
}

#[test]
fn values_round_trip() {
    let p = profile();
    assert_eq!(decode_canonical::<Profile>(&p.encode()).unwrap(), p);
    let e = entry();
    assert_eq!(decode_canonical::<Entry>(&e.encode()).unwrap(), e);
    let h = head();
    assert_eq!(decode_canonical::<EpochHead>(&h.encode()).unwrap(), h);
    let u = Update { signed: SignedEntry { entry: e, signatures: vec![] }, profile: p };
    assert_eq!(decode_canonical::<Update>(&u.encode()).unwrap(), u);
}

fn signed_update() -> Update {
    let mut signatures: Vec<KeySignature> =
        [1, 2].iter().map(|&n| KeySignature { signer: key(n), signature: Signature([n; 64]) }).collect();
    signatures.sort_by_key(|s| s.signer);
    Update { signed: SignedEntry { entry: entry(), signatures }, profile: profile() }
}

/// The signed entry an update's bytes begin with is found from the lengths alone, and is the
/// signed entry's own encoding (so are its entry and profile); bytes that are not an update's lengths are refused.
#[test]
fn an_updates_signed_entry_bytes_are_its_prefix() {
    for u in
        [signed_update(), Update { signed: SignedEntry { entry: entry(), signatures: vec![] }, profile: profile() }]
    {
        let bytes = u.encode();
        assert_eq!(Update::signed_entry_bytes(&bytes).unwrap(), u.signed.encode().as_slice());
        assert!(Update::signed_entry_bytes(&bytes[..bytes.len() - 1]).is_err(), "truncated");
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Update::signed_entry_bytes(&longer).is_err(), "trailing bytes");
        assert!(Update::signed_entry_bytes(&u.signed.encode()).is_err(), "no profile");
        let parts = Update::split_bytes(&bytes).unwrap();
        assert_eq!(parts.entry, u.signed.entry.encode().as_slice());
        assert_eq!(parts.profile, u.profile.encode().as_slice());
    }
}

#[test]
fn zero_and_impossible_thresholds_are_refused() {
    let zero = Policy::new(vec![key(1)], Quorum { threshold: 0, members: vec![QuorumMember::Key(0)] });
    assert!(matches!(zero, Err(DecodeError::Invalid { why, .. }) if why.contains("threshold 0")));
    let nested_zero = Policy::new(
        vec![key(1), key(2)],
        Quorum {
            threshold: 1,
            members: vec![
                QuorumMember::Key(0),
                QuorumMember::Quorum(Quorum { threshold: 0, members: vec![QuorumMember::Key(1)] }),
            ],
        },
    );
    assert!(nested_zero.is_err(), "a nested threshold of 0 would let anyone satisfy that branch");
    assert!(Policy::threshold(3, vec![key(1), key(2)]).is_err());
    let dup =
        Policy::new(vec![key(1)], Quorum { threshold: 1, members: vec![QuorumMember::Key(0), QuorumMember::Key(0)] });
    assert!(dup.is_err());
    let unreferenced = Policy::new(vec![key(1), key(2)], Quorum { threshold: 1, members: vec![QuorumMember::Key(0)] });
    assert!(unreferenced.is_err());
    // The empty signer set never satisfies a valid policy.
    let p = Policy::threshold(1, vec![key(1), key(2)]).unwrap();
    assert!(!p.is_satisfied_by(&BTreeSet::new()));
    assert!(p.is_satisfied_by(&BTreeSet::from([1])));
}

#[test]
fn nested_quorums_evaluate() {
    // (k0 AND k1) OR k2
    let p = Policy::new(
        vec![key(1), key(2), key(3)],
        Quorum {
            threshold: 1,
            members: vec![
                QuorumMember::Quorum(Quorum {
                    threshold: 2,
                    members: vec![QuorumMember::Key(0), QuorumMember::Key(1)],
                }),
                QuorumMember::Key(2),
            ],
        },
    )
    .unwrap();
    assert!(p.is_satisfied_by(&BTreeSet::from([0, 1])));
    assert!(p.is_satisfied_by(&BTreeSet::from([2])));
    assert!(!p.is_satisfied_by(&BTreeSet::from([0])));
    assert_eq!(decode_canonical::<Policy>(&p.encode()).unwrap(), p);
}

#[test]
fn non_canonical_inputs_are_refused() {
    // Profile keys out of order.
    let mut bytes = Vec::new();
    keyraft_core::encoding::put_var_bytes(&mut bytes, &[7; 16]);
    keyraft_core::encoding::put_count(&mut bytes, 2);
    for app in ["mail", "chat"] {
        keyraft_core::encoding::put_var_bytes(&mut bytes, app.as_bytes());
        keyraft_core::encoding::put_var_bytes(&mut bytes, b"k");
    }
    assert!(matches!(decode_canonical::<Profile>(&bytes), Err(DecodeError::NonCanonical { .. })));
    // A nonce below 16 bytes.
    let short = Profile { nonce: vec![1; 15], keys: BTreeMap::new() };
    assert!(matches!(decode_canonical::<Profile>(&short.encode()), Err(DecodeError::TooShort { .. })));
    assert!(short.validate().is_err());
    // Trailing bytes.
    let mut e = entry().encode();
    e.push(0);
    assert!(matches!(decode_canonical::<Entry>(&e), Err(DecodeError::TrailingBytes { .. })));
    // A weak (small-order) policy key.
    let mut e = entry().encode();
    let key_at = 32 + 8 + 32 + 2;
    e[key_at..key_at + 32].copy_from_slice(&[0; 32]);
    assert!(decode_canonical::<Entry>(&e).is_err());
    // Epoch 0 is not an epoch.
    let mut h = head();
    h.epoch = 0;
    assert!(decode_canonical::<EpochHead>(&h.encode()).is_err());
}

#[test]
fn epoch_heads_decode_within_their_bounds() {
    // Epoch 1 has no predecessor: its previous head hash is all zero, and nothing else.
    let first = EpochHead { epoch: 1, previous_head_hash: [0; 32], ..head() };
    assert_eq!(decode_canonical::<EpochHead>(&first.encode()).unwrap(), first);
    let mut chained = first.clone();
    chained.previous_head_hash[31] = 1;
    assert!(matches!(
        decode_canonical::<EpochHead>(&chained.encode()),
        Err(DecodeError::Invalid { what: "head previous hash", .. })
    ));
    // Later epochs chain to any hash (all zero included: only a chain check can tell).
    let later = EpochHead { epoch: 2, previous_head_hash: [0; 32], ..head() };
    assert_eq!(decode_canonical::<EpochHead>(&later.encode()).unwrap(), later);
    // Epoch numbers, issue times and update counts take any u64 from 1 (epoch) or 0 (the
    // others): the decoder bounds none of them beyond their width.
    let extreme = EpochHead { epoch: u64::MAX, issue_time_ms: u64::MAX, update_count: u64::MAX, ..head() };
    assert_eq!(decode_canonical::<EpochHead>(&extreme.encode()).unwrap(), extreme);
    let empty = EpochHead { issue_time_ms: 0, update_count: 0, ..head() };
    assert_eq!(decode_canonical::<EpochHead>(&empty.encode()).unwrap(), empty);
    let mut zero = head();
    zero.epoch = 0;
    assert!(matches!(
        decode_canonical::<EpochHead>(&zero.encode()),
        Err(DecodeError::Invalid { what: "head epoch", .. })
    ));
}

#[test]
fn signed_entry_rules_without_a_profile() {
    let e = Entry { version: 0, ..entry() };
    let unsigned = SignedEntry { entry: e, signatures: vec![] };
    let vrf = keyraft_core::vrf::VrfSecretKey::from_seed(&[4; 32]).public_key();
    let config = RealmConfig::new("example.org", vrf, vec![key(8)], vec![]).unwrap();
    assert!(check_signed_entry(&config, None, &unsigned).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode_canonical::<Entry>(&bytes);
        let _ = decode_canonical::<Profile>(&bytes);
        let _ = decode_canonical::<Policy>(&bytes);
        let _ = decode_canonical::<SignedEntry>(&bytes);
        let _ = decode_canonical::<Update>(&bytes);
        let _ = decode_canonical::<EpochHead>(&bytes);
        let _ = decode_canonical::<RealmConfig>(&bytes);
        let _ = decode_canonical::<TreeProof>(&bytes);
        let _ = decode_canonical::<LookupProof>(&bytes);
    }

    #[test]
    fn mutated_valid_encodings_never_panic(pos in any::<prop::sample::Index>(), byte in any::<u8>(), which in 0usize..4) {
        let mut bytes = match which {
            0 => entry().encode(),
            1 => profile().encode(),
            2 => head().encode(),
            _ => Update { signed: SignedEntry { entry: entry(), signatures: vec![] }, profile: profile() }.encode(),
        };
        let i = pos.index(bytes.len());
        bytes[i] = byte;
        let _ = decode_canonical::<Entry>(&bytes);
        let _ = decode_canonical::<Profile>(&bytes);
        let _ = decode_canonical::<EpochHead>(&bytes);
        let _ = decode_canonical::<Update>(&bytes);
        // Whatever decodes re-encodes to the same bytes.
        if let Ok(e) = decode_canonical::<Entry>(&bytes) { prop_assert_eq!(e.encode(), bytes.clone()); }
        if let Ok(p) = decode_canonical::<Profile>(&bytes) { prop_assert_eq!(p.encode(), bytes.clone()); }
    }

    /// Whatever decodes as an update has its signed entry's bytes where the lengths say.
    #[test]
    fn signed_entry_bytes_agree_with_decoding(pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = signed_update().encode();
        let i = pos.index(bytes.len());
        bytes[i] = byte;
        let found = Update::signed_entry_bytes(&bytes);
        if let Ok(u) = decode_canonical::<Update>(&bytes) {
            let signed = u.signed.encode();
            prop_assert_eq!(found.unwrap(), signed.as_slice());
            let parts = Update::split_bytes(&bytes).unwrap();
            prop_assert_eq!(parts.entry.to_vec(), u.signed.entry.encode());
            prop_assert_eq!(parts.profile.to_vec(), u.profile.encode());
        }
    }
}

/// Non-canonical point encodings (RFC 8032 section 5.1.3): y >= p, reduced mod p by plain
/// decompression, and x with its sign bit set. Each pair is `(canonical, non-canonical)` of
/// one full-order point; a verifier written from docs/protocol.md refuses the second, so every
/// decoder here must too (or an outsider could publish a key that halts such verifiers).
const NON_CANONICAL_KEYS: &[(&str, &str)] = &[
    // y = 3, encoded as y + p.
    (
        "0300000000000000000000000000000000000000000000000000000000000000",
        "f0ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    ),
    // y = 3 with the sign bit of x set, encoded as y + p.
    (
        "0300000000000000000000000000000000000000000000000000000000000080",
        "f0ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    ),
    // y = 18, encoded as y + p.
    (
        "1200000000000000000000000000000000000000000000000000000000000000",
        "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    ),
];

fn bytes32(s: &str) -> [u8; 32] {
    hex::decode(s).unwrap().try_into().unwrap()
}

#[test]
fn non_canonical_public_keys_are_refused_everywhere() {
    for (canonical, non_canonical) in NON_CANONICAL_KEYS {
        let good = PublicKey::from_bytes(&bytes32(canonical)).unwrap();
        let bad = bytes32(non_canonical);
        assert!(
            matches!(PublicKey::from_bytes(&bad), Err(DecodeError::NonCanonical { .. })),
            "{non_canonical} accepted as a public key"
        );
        assert!(PublicKey::from_slice(&bad).is_err());

        // Inside a policy, as a registration carries it (decode_canonical re-encodes, which
        // must not paper over a key that kept its input bytes).
        let policy = Policy::single(good);
        let mut encoded = policy.encode();
        let at = encoded.windows(32).position(|w| w == good.as_bytes()).unwrap();
        encoded[at..at + 32].copy_from_slice(&bad);
        assert!(decode_canonical::<Policy>(&encoded).is_err(), "a policy with {non_canonical} decoded");

        // In a realm's configuration (replica and verifier keys), as heads commit to it.
        let vrf = keyraft_core::vrf::VrfSecretKey::from_seed(&[4; 32]).public_key();
        let config = RealmConfig::new("example.org", vrf, vec![good, key(8)], vec![key(9)]).unwrap();
        let mut encoded = config.encode();
        let at = encoded.windows(32).position(|w| w == good.as_bytes()).unwrap();
        encoded[at..at + 32].copy_from_slice(&bad);
        assert!(decode_canonical::<RealmConfig>(&encoded).is_err(), "a realm config with {non_canonical} decoded");

        // In a realm file, as clients and verifiers read it.
        let mut file = keyraft_core::RealmFile::new(&config, 60_000, 1_000, vec!["127.0.0.1:1".into()]);
        assert!(keyraft_core::RealmFile::from_json(&file.to_json()).is_ok());
        for k in &mut file.replica_keys {
            if *k == *canonical {
                (*non_canonical).clone_into(k);
            }
        }
        let refused = keyraft_core::RealmFile::from_json(&file.to_json());
        assert!(refused.is_err(), "a realm file with replica key {non_canonical} parsed");
    }
}
