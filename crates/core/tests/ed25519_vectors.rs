//! The Ed25519 vectors of docs/vectors/ed25519.json: the rule's verdict (and the first check
//! that refuses) for honest, torsioned and malformed signatures. This test makes them from
//! fixed inputs, checks the file is exactly what it makes, and that the code gives every
//! expected verdict; crates/state/tests/independent_verifier.rs checks the Python verifier
//! gives the same ones.
//!
//! Regenerate with `KEYRAFT_REGEN_FIXTURES=1 cargo test -p keyraft-core --test ed25519_vectors`
//! and review the diff: a changed verdict is a protocol change.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use curve25519_dalek::constants::EIGHT_TORSION;
use curve25519_dalek::edwards::EdwardsPoint;
use keyraft_core::ed25519::{verify, verify_batch};
use keyraft_core::Signature;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use support::*;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct VectorFile {
    description: String,
    vectors: Vec<Vector>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Vector {
    name: String,
    public_key: String,
    message: String,
    signature: String,
    /// The verdict of the protocol's rule.
    valid: bool,
    /// For an invalid signature, the first check that refuses it; null when valid.
    reason: Option<String>,
    /// What ed25519-dalek's verify_strict (cofactorless) says: where the rule differs from it.
    verify_strict: bool,
}

fn vector(name: &str, public: &[u8; 32], message: &[u8], signature: &Signature, reason: Option<&str>) -> Vector {
    Vector {
        name: name.to_owned(),
        public_key: hex::encode(public),
        message: hex::encode(message),
        signature: hex::encode(signature.0),
        valid: reason.is_none(),
        reason: reason.map(str::to_owned),
        verify_strict: strict_accepts(public, message, signature),
    }
}

/// Adds one vector: name, key, message, signature, the reason it is refused (None: valid).
type Add<'a> = dyn FnMut(&str, &[u8; 32], &[u8], &Signature, Option<&str>) + 'a;

const M: &[u8] = b"keyraft/v1 vector";

/// Valid signatures: honest ones and ones with torsion in R, A or both.
fn accepted(add: &mut Add<'_>) {
    let none = EdwardsPoint::default();
    let alice = Signer::new("alice", none);
    let honest = alice.sign(M, "nonce", none);
    let m = M;
    add("honest signature", &alice.public, m, &honest, None);
    add("honest signature, empty message", &alice.public, b"", &alice.sign(b"", "nonce 2", none), None);
    {
        use ed25519_dalek::Signer as _;
        let key = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
        let sig = Signature(key.sign(m).to_bytes());
        add("RFC 8032 signing (ed25519-dalek, secret 42^32)", key.verifying_key().as_bytes(), m, &sig, None);
    }
    for (i, name) in [(1, "order 8"), (2, "order 4"), (4, "order 2")] {
        let sig = alice.sign(m, &format!("torsion nonce {i}"), EIGHT_TORSION[i]);
        add(&format!("R = [r]B + T, T of {name} (verify_strict refuses)"), &alice.public, m, &sig, None);
    }
    let mixed = Signer::new("mixed-order", EIGHT_TORSION[1]);
    let (mixed_message, mixed_sig) = (0u32..)
        .map(|n| {
            let message = format!("keyraft/v1 vector {n}").into_bytes();
            let sig = mixed.sign(&message, "nonce", none);
            (message, sig)
        })
        .find(|(message, sig)| !strict_accepts(&mixed.public, message, sig))
        .unwrap();
    add("A = [a]B + T, T of order 8 (verify_strict refuses)", &mixed.public, &mixed_message, &mixed_sig, None);
    let both = mixed.sign(m, "nonce 3", EIGHT_TORSION[6]);
    add("torsion in both A and R", &mixed.public, m, &both, None);
}

/// Signatures refused by an encoding or small-order check.
fn refused_encodings(add: &mut Add<'_>) {
    let none = EdwardsPoint::default();
    let alice = Signer::new("alice", none);
    let honest = alice.sign(M, "nonce", none);
    let m = M;
    add("S + L", &alice.public, m, &with_s(&honest, add_l(s_of(&honest))), Some("s-non-canonical"));
    add("S = L", &alice.public, m, &with_s(&honest, L_BYTES), Some("s-non-canonical"));
    let mut high = s_of(&honest);
    high[31] |= 0x80;
    add("S with its high bit set", &alice.public, m, &with_s(&honest, high), Some("s-non-canonical"));

    add("R encoded with y >= p", &alice.public, m, &with_r(&honest, NON_CANONICAL_Y3), Some("r-encoding"));
    let mut negative_zero = none.compress().to_bytes();
    negative_zero[31] |= 0x80;
    add("R the identity with negative zero x", &alice.public, m, &with_r(&honest, negative_zero), Some("r-encoding"));
    add("R not a curve point", &alice.public, m, &with_r(&honest, not_a_point()), Some("r-encoding"));
    for (i, name) in [(0, "the identity"), (1, "of order 8"), (4, "of order 2")] {
        // S = k*a satisfies the cofactored equation: only the small-order rule refuses it.
        let big_r = EIGHT_TORSION[i].compress().to_bytes();
        let k = challenge(&big_r, &alice.public, m);
        let sig = signature_of(big_r, (k * alice.a).to_bytes());
        add(&format!("R {name} (equation holds)"), &alice.public, m, &sig, Some("r-small-order"));
    }

    add("A encoded with y >= p", &NON_CANONICAL_Y3, m, &honest, Some("key-encoding"));
    add("A the identity with negative zero x", &negative_zero, m, &honest, Some("key-encoding"));
    add("A not a curve point", &not_a_point(), m, &honest, Some("key-encoding"));
    for (i, name) in [(0, "the identity"), (1, "of order 8"), (4, "of order 2")] {
        // R = [r]B, S = r satisfies the cofactored equation: only the small-order rule refuses.
        let r = scalar(&format!("small-order key nonce {i}"));
        let sig = signature_of(EdwardsPoint::mul_base(&r).compress().to_bytes(), r.to_bytes());
        add(
            &format!("A {name} (equation holds)"),
            &EIGHT_TORSION[i].compress().to_bytes(),
            m,
            &sig,
            Some("key-small-order"),
        );
    }
    add(
        "A small order and R small order",
        &EIGHT_TORSION[1].compress().to_bytes(),
        m,
        &with_r(&honest, EIGHT_TORSION[2].compress().to_bytes()),
        Some("key-small-order"),
    );
}

/// Well-encoded signatures refused by the equation.
fn refused_equation(add: &mut Add<'_>) {
    let none = EdwardsPoint::default();
    let alice = Signer::new("alice", none);
    let honest = alice.sign(M, "nonce", none);
    let m = M;
    add("wrong message", &alice.public, b"keyraft/v1 other", &honest, Some("equation"));
    add("wrong key", &Signer::new("bob", none).public, m, &honest, Some("equation"));
    add(
        "torsioned R, wrong message",
        &alice.public,
        b"keyraft/v1 other",
        &alice.sign(m, "torsion nonce 1", EIGHT_TORSION[1]),
        Some("equation"),
    );
    let moved = (EdwardsPoint::mul_base(&scalar("nonce")) + EIGHT_TORSION[4]).compress().to_bytes();
    add(
        "honest signature with T (order 2) added to R by a third party",
        &alice.public,
        m,
        &with_r(&honest, moved),
        Some("equation"),
    );
    let moved_key = (EdwardsPoint::mul_base(&alice.a) + EIGHT_TORSION[1]).compress().to_bytes();
    add("honest signature checked under A + T", &moved_key, m, &honest, Some("equation"));
    let mut flipped = honest;
    flipped.0[0] ^= 1;
    add("honest signature, bit 0 of R flipped", &alice.public, m, &flipped, Some("r-encoding"));
    let mut negated = honest;
    negated.0[31] ^= 0x80;
    add("honest signature, R negated (its sign bit flipped)", &alice.public, m, &negated, Some("equation"));
    let mut flipped = honest;
    flipped.0[32] ^= 1;
    add("honest signature, a bit of S flipped", &alice.public, m, &flipped, Some("equation"));
}

/// The vectors, each with the verdict it is *meant* to have (the test then checks the code
/// agrees, so a wrong construction here fails instead of being recorded).
fn vectors() -> VectorFile {
    let mut out = Vec::new();
    let mut add = |name: &str, public: &[u8; 32], message: &[u8], signature: &Signature, reason: Option<&str>| {
        out.push(vector(name, public, message, signature, reason));
    };
    accepted(&mut add);
    refused_encodings(&mut add);
    refused_equation(&mut add);
    VectorFile {
        description: "Ed25519 verification vectors for keyraft protocol version 1 (docs/protocol.md section 1): \
            cofactored verification, A and R canonical and not of small order, S < L. Fields are hex; reason is \
            the first failed check in the order key-encoding, key-small-order, r-encoding, r-small-order, \
            s-non-canonical, equation. verify_strict is the cofactorless rule's verdict, for comparison. \
            @generated by crates/core/tests/ed25519_vectors.rs; see its header before editing."
            .to_owned(),
        vectors: out,
    }
}

fn path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/vectors/ed25519.json")
}

fn render(file: &VectorFile) -> String {
    serde_json::to_string_pretty(file).unwrap() + "\n"
}

#[test]
fn the_code_gives_every_expected_verdict() {
    let file = vectors();
    for v in &file.vectors {
        let public: [u8; 32] = hex::decode(&v.public_key).unwrap().try_into().unwrap();
        let message = hex::decode(&v.message).unwrap();
        let signature = Signature::from_slice(&hex::decode(&v.signature).unwrap()).unwrap();
        let verdict = verify(&public, &message, &signature);
        assert_eq!(verdict.err().map(|r| r.code().to_owned()), v.reason, "vector {:?}", v.name);
        assert_eq!(verify_batch(&[(public, message.as_slice(), signature)]), v.valid, "vector {:?}", v.name);
    }
    // Every valid vector together, in one batch.
    let valid: Vec<([u8; 32], Vec<u8>, Signature)> = file
        .vectors
        .iter()
        .filter(|v| v.valid)
        .map(|v| {
            let public = hex::decode(&v.public_key).unwrap().try_into().unwrap();
            let signature = Signature::from_slice(&hex::decode(&v.signature).unwrap()).unwrap();
            (public, hex::decode(&v.message).unwrap(), signature)
        })
        .collect();
    let batch: Vec<([u8; 32], &[u8], Signature)> = valid.iter().map(|(p, m, s)| (*p, m.as_slice(), *s)).collect();
    assert!(verify_batch(&batch));
    // The rule really differs from verify_strict, and only by accepting more.
    assert!(file.vectors.iter().any(|v| v.valid && !v.verify_strict));
    assert!(file.vectors.iter().all(|v| v.valid || !v.verify_strict));
}

#[test]
fn the_vector_file_is_what_the_fixed_inputs_make() {
    let actual = render(&vectors());
    if std::env::var_os("KEYRAFT_REGEN_FIXTURES").is_some() {
        std::fs::create_dir_all(path().parent().unwrap()).unwrap();
        std::fs::write(path(), &actual).unwrap();
    }
    let expected = std::fs::read_to_string(path()).expect("vector file present (see this file's header to regenerate)");
    assert_eq!(actual, expected, "Ed25519 vectors changed: if deliberate, regenerate and update docs/protocol.md");
    // And the file parses back to the same vectors.
    assert_eq!(serde_json::from_str::<VectorFile>(&expected).unwrap(), vectors());
}
