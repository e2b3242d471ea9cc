//! RFC 9381 ECVRF-EDWARDS25519-SHA512-TAI: the RFC's vectors, and rejection of everything else.
#![allow(clippy::unwrap_used, missing_docs)]

use keyraft_core::vrf::{VrfError, VrfProof, VrfPublicKey, VrfSecretKey};
use proptest::prelude::*;

struct Vector {
    sk: [u8; 32],
    pk: Vec<u8>,
    alpha: Vec<u8>,
    pi: Vec<u8>,
    beta: Vec<u8>,
}

fn vectors() -> Vec<Vector> {
    let text = include_str!("../testdata/rfc9381-ecvrf-edwards25519-sha512-tai.json");
    let json: serde_json::Value = serde_json::from_str(text).unwrap();
    assert_eq!(json["suite"], "ECVRF-EDWARDS25519-SHA512-TAI");
    let field = |v: &serde_json::Value, name: &str| hex::decode(v[name].as_str().unwrap()).unwrap();
    json["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| Vector {
            sk: field(v, "sk").try_into().unwrap(),
            pk: field(v, "pk"),
            alpha: field(v, "alpha"),
            pi: field(v, "pi"),
            beta: field(v, "beta"),
        })
        .collect()
}

#[test]
fn rfc_9381_vectors() {
    let vectors = vectors();
    assert_eq!(vectors.len(), 3);
    for v in vectors {
        let sk = VrfSecretKey::from_seed(&v.sk);
        assert_eq!(sk.public_key().as_bytes().as_slice(), v.pk);
        let pi = sk.prove(&v.alpha).unwrap();
        assert_eq!(pi.as_bytes().as_slice(), v.pi);
        let pk = VrfPublicKey::from_bytes(&v.pk).unwrap();
        let beta = pk.verify(&v.alpha, &VrfProof::from_bytes(&v.pi).unwrap()).unwrap();
        assert_eq!(beta.as_bytes().as_slice(), v.beta);
        let (pi2, beta2) = sk.prove_with_output(&v.alpha).unwrap();
        assert_eq!((pi2, beta2.as_bytes().as_slice()), (pi, v.beta.as_slice()));
    }
}

#[test]
fn every_bit_flip_of_a_proof_is_rejected() {
    for v in vectors() {
        let pk = VrfPublicKey::from_bytes(&v.pk).unwrap();
        for bit in 0..80 * 8 {
            let mut pi = v.pi.clone();
            pi[bit / 8] ^= 1 << (bit % 8);
            let proof = VrfProof::from_bytes(&pi).unwrap();
            assert!(pk.verify(&v.alpha, &proof).is_err(), "bit {bit} flipped still verifies");
        }
    }
}

#[test]
fn wrong_input_and_wrong_key_are_rejected() {
    let v = &vectors()[1];
    let pk = VrfPublicKey::from_bytes(&v.pk).unwrap();
    let proof = VrfProof::from_bytes(&v.pi).unwrap();
    assert_eq!(pk.verify(b"r2", &proof), Err(VrfError::ProofRejected));
    let other = VrfPublicKey::from_bytes(&vectors()[0].pk).unwrap();
    assert_eq!(other.verify(&v.alpha, &proof), Err(VrfError::ProofRejected));
}

#[test]
fn low_order_and_malformed_keys_are_rejected() {
    // The identity, and the point of order 2 (y = -1).
    let identity = {
        let mut b = [0u8; 32];
        b[0] = 1;
        b
    };
    assert_eq!(VrfPublicKey::from_bytes(&identity), Err(VrfError::LowOrderPublicKey));
    let order_two = hex::decode("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f").unwrap();
    assert_eq!(VrfPublicKey::from_bytes(&order_two), Err(VrfError::LowOrderPublicKey));
    // An order-8 point (from the standard list of small-order encodings).
    let order_eight = hex::decode("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a").unwrap();
    assert_eq!(VrfPublicKey::from_bytes(&order_eight), Err(VrfError::LowOrderPublicKey));
    // y = 1 + p encodes the identity non-canonically.
    let non_canonical = hex::decode("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f").unwrap();
    assert!(matches!(
        VrfPublicKey::from_bytes(&non_canonical),
        Err(VrfError::NonCanonicalPublicKey | VrfError::LowOrderPublicKey)
    ));
    // A point with a small y (< 19) also has the encoding y + p < 2^255, which must be refused.
    let mut found = 0;
    for y in 2u8..19 {
        let mut canonical = [0u8; 32];
        canonical[0] = y;
        if VrfPublicKey::from_bytes(&canonical).is_ok() {
            let mut alias = [0xffu8; 32];
            alias[0] = 237 + y;
            alias[31] = 0x7f;
            assert_eq!(VrfPublicKey::from_bytes(&alias), Err(VrfError::NonCanonicalPublicKey), "y = {y}");
            found += 1;
        }
    }
    assert!(found > 0, "no small-y point found to test non-canonical encodings with");
    assert!(matches!(VrfPublicKey::from_bytes(&[1; 31]), Err(VrfError::WrongLength { got: 31, .. })));
    assert!(matches!(VrfProof::from_bytes(&[0; 79]), Err(VrfError::WrongLength { got: 79, .. })));
}

#[test]
fn non_canonical_scalar_and_gamma_are_rejected() {
    let v = &vectors()[0];
    let pk = VrfPublicKey::from_bytes(&v.pk).unwrap();
    // s = L (the group order) is not canonical, and neither is s = 2^256 - 1.
    let l = hex::decode("edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010").unwrap();
    let mut pi = v.pi.clone();
    pi[48..].copy_from_slice(&l);
    assert_eq!(pk.verify(&v.alpha, &VrfProof::from_bytes(&pi).unwrap()), Err(VrfError::NonCanonicalScalar));
    pi[48..].copy_from_slice(&[0xff; 32]);
    assert_eq!(pk.verify(&v.alpha, &VrfProof::from_bytes(&pi).unwrap()), Err(VrfError::NonCanonicalScalar));
    // Gamma = the identity encoded with y = 1 + p.
    let mut pi = v.pi.clone();
    pi[..32].copy_from_slice(&hex::decode("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f").unwrap());
    assert!(matches!(
        pk.verify(&v.alpha, &VrfProof::from_bytes(&pi).unwrap()),
        Err(VrfError::NonCanonicalGamma | VrfError::InvalidGamma)
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn prove_then_verify(seed in any::<[u8; 32]>(), alpha in prop::collection::vec(any::<u8>(), 0..64)) {
        let sk = VrfSecretKey::from_seed(&seed);
        let proof = sk.prove(&alpha).unwrap();
        let out = sk.public_key().verify(&alpha, &proof).unwrap();
        // Uniqueness in practice: proving again gives the same proof and output.
        prop_assert_eq!(sk.prove(&alpha).unwrap(), proof);
        prop_assert_eq!(sk.public_key().verify(&alpha, &proof).unwrap(), out);
    }

    #[test]
    fn random_keys_and_proofs_never_panic(key in any::<[u8; 32]>(), pi in prop::collection::vec(any::<u8>(), 80)) {
        if let Ok(pk) = VrfPublicKey::from_bytes(&key) {
            let _ = pk.verify(b"alpha", &VrfProof::from_bytes(&pi).unwrap());
        }
    }
}
