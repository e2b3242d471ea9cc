//! The protocol's Ed25519 rule (docs/protocol.md section 1): cofactored verification with
//! canonical encodings. Each rejection has its own test; signatures with a torsion component
//! in R or A, which verify_strict (version 1's first rule) refused, are accepted; batch and
//! single verification agree on every signature; no byte of a valid signature can change
//! without it failing.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use curve25519_dalek::constants::EIGHT_TORSION;
use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::traits::IsIdentity;
use keyraft_core::ed25519::{verify, verify_batch, Rejection};
use keyraft_core::{PublicKey, Signature};
use proptest::prelude::*;
use support::*;

const MESSAGE: &[u8] = b"keyraft/v1 test message";

fn honest() -> (Signer, Signature) {
    let signer = Signer::new("alice", EdwardsPoint::default());
    let signature = signer.sign(MESSAGE, "nonce", EdwardsPoint::default());
    (signer, signature)
}

/// `[8]([S]B - R - [k]A)` computed here, to show a refused signature would pass the equation:
/// only the encoding rule refuses it.
fn equation_holds(public: &[u8; 32], message: &[u8], signature: &Signature) -> bool {
    let a = point(public);
    let r = point(&signature.0[..32].try_into().unwrap());
    let s = curve25519_dalek::Scalar::from_canonical_bytes(signature.0[32..].try_into().unwrap()).unwrap();
    let k = challenge(&signature.0[..32].try_into().unwrap(), public, message);
    (EdwardsPoint::mul_base(&s) - r - k * a).mul_by_cofactor().is_identity()
}

fn point(bytes: &[u8; 32]) -> EdwardsPoint {
    curve25519_dalek::edwards::CompressedEdwardsY(*bytes).decompress().unwrap()
}

fn single_and_batch(public: &[u8; 32], message: &[u8], signature: &Signature) -> Result<(), Rejection> {
    let single = verify(public, message, signature);
    let (other, other_signature) = honest();
    let batch = verify_batch(&[(other.public, MESSAGE, other_signature), (*public, message, *signature)]);
    assert_eq!(batch, single.is_ok(), "batch and single disagree on {signature:?}");
    single
}

#[test]
fn honest_signatures_verify_as_under_verify_strict() {
    let (signer, signature) = honest();
    assert_eq!(single_and_batch(&signer.public, MESSAGE, &signature), Ok(()));
    assert!(strict_accepts(&signer.public, MESSAGE, &signature));
    // A signature made by ed25519-dalek (RFC 8032 signing) verifies, through the PublicKey API.
    use ed25519_dalek::Signer as _;
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let dalek = Signature(key.sign(MESSAGE).to_bytes());
    let public = PublicKey::from_verifying_key(&key.verifying_key()).unwrap();
    assert!(public.verify(MESSAGE, &dalek));
    assert_eq!(single_and_batch(public.as_bytes(), MESSAGE, &dalek), Ok(()));
}

#[test]
fn s_at_least_l_is_refused() {
    let (signer, signature) = honest();
    for s in [add_l(s_of(&signature)), L_BYTES] {
        let forged = with_s(&signature, s);
        assert_eq!(single_and_batch(&signer.public, MESSAGE, &forged), Err(Rejection::SNonCanonical));
    }
}

#[test]
fn s_with_the_high_bit_set_is_refused() {
    let (signer, signature) = honest();
    let mut s = s_of(&signature);
    s[31] |= 0x80;
    assert_eq!(single_and_batch(&signer.public, MESSAGE, &with_s(&signature, s)), Err(Rejection::SNonCanonical));
}

#[test]
fn non_canonical_r_is_refused() {
    let (signer, signature) = honest();
    let forged = with_r(&signature, NON_CANONICAL_Y3);
    assert_eq!(single_and_batch(&signer.public, MESSAGE, &forged), Err(Rejection::RNonCanonical));
    // Negative zero x: the identity's canonical encoding with the sign bit set.
    let mut negative_zero = EdwardsPoint::default().compress().to_bytes();
    negative_zero[31] |= 0x80;
    let forged = with_r(&signature, negative_zero);
    assert_eq!(single_and_batch(&signer.public, MESSAGE, &forged), Err(Rejection::RNonCanonical));
    let forged = with_r(&signature, not_a_point());
    assert_eq!(single_and_batch(&signer.public, MESSAGE, &forged), Err(Rejection::RNotAPoint));
}

#[test]
fn non_canonical_key_is_refused() {
    let (_, signature) = honest();
    assert_eq!(single_and_batch(&NON_CANONICAL_Y3, MESSAGE, &signature), Err(Rejection::KeyNonCanonical));
    assert!(PublicKey::from_bytes(&NON_CANONICAL_Y3).is_err());
    assert_eq!(single_and_batch(&not_a_point(), MESSAGE, &signature), Err(Rejection::KeyNotAPoint));
    assert!(PublicKey::from_bytes(&not_a_point()).is_err());
}

#[test]
fn small_order_key_is_refused_though_the_equation_holds() {
    for (i, t) in EIGHT_TORSION.iter().enumerate() {
        // A = T, R = [r]B, S = r: [S]B - R - [k]T = -[k]T, which the factor 8 removes.
        let public = t.compress().to_bytes();
        let r = scalar(&format!("nonce {i}"));
        let big_r = EdwardsPoint::mul_base(&r).compress().to_bytes();
        let signature = signature_of(big_r, r.to_bytes());
        assert!(equation_holds(&public, MESSAGE, &signature), "torsion point {i}");
        assert_eq!(single_and_batch(&public, MESSAGE, &signature), Err(Rejection::KeySmallOrder), "torsion point {i}");
        assert!(PublicKey::from_bytes(&public).is_err());
    }
}

#[test]
fn small_order_r_is_refused_though_the_equation_holds() {
    let (signer, _) = honest();
    for (i, t) in EIGHT_TORSION.iter().enumerate() {
        // R = T, S = k*a: [S]B - T - [k]A = -T, which the factor 8 removes.
        let big_r = t.compress().to_bytes();
        let k = challenge(&big_r, &signer.public, MESSAGE);
        let signature = signature_of(big_r, (k * signer.a).to_bytes());
        assert!(equation_holds(&signer.public, MESSAGE, &signature), "torsion point {i}");
        assert_eq!(
            single_and_batch(&signer.public, MESSAGE, &signature),
            Err(Rejection::RSmallOrder),
            "torsion point {i}"
        );
    }
}

#[test]
fn wrong_message_or_key_fails_the_equation() {
    let (signer, signature) = honest();
    assert_eq!(single_and_batch(&signer.public, b"another message", &signature), Err(Rejection::Equation));
    let other = Signer::new("bob", EdwardsPoint::default());
    assert_eq!(single_and_batch(&other.public, MESSAGE, &signature), Err(Rejection::Equation));
    // R + T (order 2) with the same S: k changes with R, so this is not a second encoding of
    // the signature, and nobody without the key can add torsion to a signature.
    let moved = with_r(&signature, (point(&r_of(&signature)) + EIGHT_TORSION[4]).compress().to_bytes());
    assert_eq!(single_and_batch(&signer.public, MESSAGE, &moved), Err(Rejection::Equation));
}

#[test]
fn torsioned_r_is_accepted_where_verify_strict_refused_it() {
    let (signer, _) = honest();
    for (i, t) in EIGHT_TORSION.iter().enumerate().skip(1) {
        let signature = signer.sign(MESSAGE, &format!("nonce {i}"), *t);
        assert!(!strict_accepts(&signer.public, MESSAGE, &signature), "torsion point {i}");
        assert_eq!(single_and_batch(&signer.public, MESSAGE, &signature), Ok(()), "torsion point {i}");
        assert!(PublicKey::from_bytes(&signer.public).unwrap().verify(MESSAGE, &signature));
    }
}

#[test]
fn torsioned_key_is_accepted_where_verify_strict_refused_it() {
    for (i, t) in EIGHT_TORSION.iter().enumerate().skip(1) {
        let signer = Signer::new(&format!("mixed-order {i}"), *t);
        // verify_strict accepts when [k]T happens to vanish; take the first message where it
        // does not, to show the rule changed.
        let (message, signature) = (0u32..)
            .map(|n| {
                let message = format!("message {n}").into_bytes();
                let signature = signer.sign(&message, "nonce", EdwardsPoint::default());
                (message, signature)
            })
            .find(|(m, s)| !strict_accepts(&signer.public, m, s))
            .unwrap();
        let key = PublicKey::from_bytes(&signer.public).expect("mixed-order keys are valid keys");
        assert!(key.verify(&message, &signature), "torsion point {i}");
        assert_eq!(single_and_batch(&signer.public, &message, &signature), Ok(()), "torsion point {i}");
        // And with torsion in R too.
        let both = signer.sign(&message, "other nonce", EIGHT_TORSION[(i + 1) % 8]);
        assert!(key.verify(&message, &both), "torsion point {i}");
    }
}

/// The three kinds of valid signature: honest, torsion in R, torsion in A.
fn valid_signatures() -> Vec<([u8; 32], Signature)> {
    let (signer, signature) = honest();
    let torsioned_r = signer.sign(MESSAGE, "nonce r", EIGHT_TORSION[1]);
    let mixed = Signer::new("mixed", EIGHT_TORSION[3]);
    let torsioned_a = mixed.sign(MESSAGE, "nonce a", EIGHT_TORSION[0]);
    vec![(signer.public, signature), (signer.public, torsioned_r), (mixed.public, torsioned_a)]
}

/// Flips `mask` into byte `at` of `A || R || S`.
fn flipped(public: &[u8; 32], signature: &Signature, at: usize, mask: u8) -> ([u8; 32], Signature) {
    let (mut public, mut signature) = (*public, *signature);
    if at < 32 {
        public[at] ^= mask;
    } else {
        signature.0[at - 32] ^= mask;
    }
    (public, signature)
}

/// No byte of a valid (key, signature) can change and still verify, torsion or not. It cannot:
/// a changed S is either >= L or a different scalar mod L, so `[S]B` moves by a non-zero
/// multiple of the prime-order B that the factor 8 does not remove; a changed R or A changes
/// k = SHA-512(R || A || M) as well, so the equation would need the new point to hit one
/// specific value up to torsion. Only the 8 torsion translates of R (or A) are equal up to
/// torsion, and the test also checks that none of them is within one byte of the original.
#[test]
fn every_single_byte_change_fails_single_and_batch() {
    for (public, signature) in valid_signatures() {
        for original in [public, r_of(&signature)] {
            for t in &EIGHT_TORSION[1..] {
                let translate = (point(&original) + t).compress().to_bytes();
                let differing = original.iter().zip(&translate).filter(|(a, b)| a != b).count();
                assert!(differing > 1, "a torsion translate is one byte away from {}", hex::encode(original));
            }
        }
        for at in 0..96 {
            for mask in 1..=255u8 {
                let (public, signature) = flipped(&public, &signature, at, mask);
                assert!(verify(&public, MESSAGE, &signature).is_err(), "byte {at} ^ {mask:#04x} still verifies");
                if mask.is_power_of_two() {
                    assert!(single_and_batch(&public, MESSAGE, &signature).is_err());
                }
            }
        }
    }
}

/// One item of a random mix: valid (honest, torsioned R, torsioned A, both) or corrupted.
fn item(kind: u8, seed: u64, extra: u8) -> ([u8; 32], Vec<u8>, Signature) {
    let torsion = EIGHT_TORSION[usize::from(extra % 8)];
    let none = EdwardsPoint::default();
    let message = format!("message {seed}").into_bytes();
    let key_torsion = if kind == 2 || kind == 3 { torsion } else { none };
    let signer = Signer::new(&format!("signer {seed}"), key_torsion);
    let r_torsion = if kind == 1 || kind == 3 { torsion } else { none };
    let signature = signer.sign(&message, &format!("nonce {seed}"), r_torsion);
    match kind {
        0..=3 => (signer.public, message, signature),
        4 => (signer.public, b"another message".to_vec(), signature),
        5 => (signer.public, message, with_s(&signature, add_l(s_of(&signature)))),
        6 => {
            let (public, signature) = flipped(&signer.public, &signature, usize::from(extra) % 96, 1 << (seed % 8));
            (public, message, signature)
        }
        7 => {
            let big_r = torsion.compress().to_bytes();
            let k = challenge(&big_r, &signer.public, &message);
            (signer.public, message, signature_of(big_r, (k * signer.a).to_bytes()))
        }
        8 => (torsion.compress().to_bytes(), message, signature),
        _ => (signer.public, message, with_r(&signature, NON_CANONICAL_Y3)),
    }
}

fn mix() -> impl Strategy<Value = Vec<([u8; 32], Vec<u8>, Signature)>> {
    // Valid kinds (0..=3) twice as likely, so many mixes are entirely valid.
    let kind = prop_oneof![2 => 0u8..=3, 1 => 4u8..=9];
    prop::collection::vec((kind, any::<u64>(), any::<u8>()), 0..6)
        .prop_map(|items| items.into_iter().map(|(k, s, e)| item(k, s, e)).collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn batch_agrees_with_every_single_check(items in mix()) {
        let all_single = items.iter().all(|(public, message, signature)| verify(public, message, signature).is_ok());
        let batch: Vec<([u8; 32], &[u8], Signature)> = items.iter().map(|(p, m, s)| (*p, m.as_slice(), *s)).collect();
        prop_assert_eq!(verify_batch(&batch), all_single);
        // The same through validated keys, when every key is one.
        let keys: Option<Vec<PublicKey>> = items.iter().map(|(p, _, _)| PublicKey::from_bytes(p).ok()).collect();
        if let Some(keys) = keys {
            let batch: Vec<(&PublicKey, &[u8], Signature)> =
                keys.iter().zip(&items).map(|(k, (_, m, s))| (k, m.as_slice(), *s)).collect();
            prop_assert_eq!(verify_batch(&batch), all_single);
        }
    }

    #[test]
    fn flipping_any_byte_of_a_valid_signature_fails_both(
        kind in 0u8..=3, seed in any::<u64>(), extra in any::<u8>(), at in 0usize..96, mask in 1u8..=255,
    ) {
        let (public, message, signature) = item(kind, seed, extra);
        prop_assert!(verify(&public, &message, &signature).is_ok());
        let (public, signature) = flipped(&public, &signature, at, mask);
        prop_assert!(verify(&public, &message, &signature).is_err());
        let (other, other_message, other_signature) = item(0, seed ^ 1, 0);
        prop_assert!(!verify_batch(&[(other, other_message.as_slice(), other_signature), (public, &message, signature)]));
    }
}

/// The memo answers as `verify` does: after a valid signature is remembered, no changed
/// byte of key, signature or message is accepted on its strength, and refusals are never
/// remembered.
#[test]
fn the_memo_answers_as_verify_does() {
    use keyraft_core::ed25519::VerifiedSignatures;
    let memo = VerifiedSignatures::new(1 << 10);
    for (public, signature) in valid_signatures() {
        let key = PublicKey::from_bytes(&public).unwrap();
        assert!(memo.verify(&key, MESSAGE, &signature));
        assert!(memo.verify(&key, MESSAGE, &signature), "a remembered signature still verifies");
        let remembered = memo.len();
        for at in 0..96 {
            let (public, signature) = flipped(&public, &signature, at, 1);
            if let Ok(key) = PublicKey::from_bytes(&public) {
                assert!(!memo.verify(&key, MESSAGE, &signature), "byte {at} flipped accepted through the memo");
            }
        }
        let mut message = MESSAGE.to_vec();
        for at in 0..message.len() {
            message[at] ^= 1;
            assert!(!memo.verify(&key, &message, &signature), "message byte {at} flipped accepted through the memo");
            message[at] ^= 1;
        }
        assert!(!memo.verify(&key, b"", &signature));
        assert_eq!(memo.len(), remembered, "a refusal was remembered");
    }
}

/// A batch through the memo: remembered whole when every signature is valid, not at all when
/// one is not; what it remembered then verifies singly, what it did not is still checked.
#[test]
fn the_memo_remembers_passing_batches_only() {
    use keyraft_core::ed25519::VerifiedSignatures;
    let (signer, _) = honest();
    let key = PublicKey::from_bytes(&signer.public).unwrap();
    let signed: Vec<(Vec<u8>, Signature)> = (0..9u8)
        .map(|i| {
            let message = vec![i; 12];
            let signature = signer.sign(&message, &format!("batch nonce {i}"), EdwardsPoint::default());
            (message, signature)
        })
        .collect();
    let items = |signed: &[(Vec<u8>, Signature)]| -> Vec<(PublicKey, Vec<u8>, Signature)> {
        signed.iter().map(|(m, s)| (key, m.clone(), *s)).collect()
    };
    let check = |memo: &VerifiedSignatures, v: &[(PublicKey, Vec<u8>, Signature)]| {
        let refs: Vec<(&PublicKey, &[u8], &Signature)> = v.iter().map(|(k, m, s)| (k, m.as_slice(), s)).collect();
        memo.verify_batch(&refs)
    };

    // One bad signature among them: nothing is remembered.
    let memo = VerifiedSignatures::new(64);
    for bad in [0usize, 4, 8] {
        let mut v = items(&signed);
        v[bad].2 .0[33] ^= 1;
        assert!(!check(&memo, &v), "a batch with signature {bad} flipped passed");
        let mut v = items(&signed);
        v[bad].1[0] ^= 1;
        assert!(!check(&memo, &v), "a batch with message {bad} flipped passed");
        assert!(memo.is_empty(), "a failing batch left {} signatures remembered", memo.len());
    }
    // All valid: all remembered, and the batch of them passes again without new entries.
    assert!(check(&memo, &items(&signed[..5])));
    assert_eq!(memo.len(), 5);
    assert!(check(&memo, &items(&signed)), "remembered and new valid signatures together");
    assert_eq!(memo.len(), 9);
    assert!(check(&memo, &[]), "an empty batch");
    for (message, signature) in &signed {
        assert!(memo.verify(&key, message, signature));
    }
    // A forgery beside remembered signatures is still caught, in a batch and alone.
    let mut v = items(&signed);
    v[3].2 .0[50] ^= 1;
    assert!(!check(&memo, &v));
    assert!(!memo.verify(&key, &v[3].1, &v[3].2));
    assert_eq!(memo.len(), 9, "a refusal was remembered");
}

/// At most two generations are kept; what falls out is verified again, with the same answer.
#[test]
fn the_memo_is_bounded() {
    use keyraft_core::ed25519::VerifiedSignatures;
    let memo = VerifiedSignatures::new(2);
    let (signer, _) = honest();
    let key = PublicKey::from_bytes(&signer.public).unwrap();
    let signed: Vec<(Vec<u8>, Signature)> = (0..7u8)
        .map(|i| {
            let message = vec![i; 10];
            let signature = signer.sign(&message, &format!("nonce {i}"), EdwardsPoint::default());
            (message, signature)
        })
        .collect();
    for (message, signature) in &signed {
        assert!(memo.verify(&key, message, signature));
        assert!(memo.len() <= 4, "{} remembered, above two generations of 2", memo.len());
    }
    for (message, signature) in &signed {
        assert!(memo.verify(&key, message, signature), "a signature dropped from the memo no longer verifies");
    }
}
