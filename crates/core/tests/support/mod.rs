//! Making Ed25519 signatures by hand (with torsion where a test wants it), for the rule's
//! tests and vectors. Each test binary uses part of it.
#![allow(dead_code)]

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use keyraft_core::Signature;
use sha2::{Digest as _, Sha512};

/// L, the order of the base point, little-endian.
pub(crate) const L_BYTES: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// y = 3 + p: a non-canonical encoding of the full-order point with y = 3
/// (docs/protocol.md section 1).
pub(crate) const NON_CANONICAL_Y3: [u8; 32] = {
    let mut b = [0xff; 32];
    b[0] = 0xf0;
    b[31] = 0x7f;
    b
};

/// A scalar derived from a label: fixed inputs give fixed signatures (no RNG).
pub(crate) fn scalar(label: &str) -> Scalar {
    Scalar::from_hash(Sha512::new().chain_update(b"keyraft ed25519 test scalar/").chain_update(label.as_bytes()))
}

/// k = SHA-512(R || A || M) mod L.
pub(crate) fn challenge(r: &[u8; 32], a: &[u8; 32], message: &[u8]) -> Scalar {
    Scalar::from_hash(Sha512::new().chain_update(r).chain_update(a).chain_update(message))
}

/// A secret scalar and its public key `[a]B + T`, T a torsion point (the identity for an
/// honest key). Only the holder of `a` can sign for it, torsion or not.
pub(crate) struct Signer {
    pub(crate) a: Scalar,
    pub(crate) public: [u8; 32],
}

impl Signer {
    pub(crate) fn new(label: &str, key_torsion: EdwardsPoint) -> Self {
        let a = scalar(label);
        Self { a, public: (EdwardsPoint::mul_base(&a) + key_torsion).compress().to_bytes() }
    }

    /// `R = [r]B + T`, `S = r + k*a`.
    pub(crate) fn sign(&self, message: &[u8], nonce_label: &str, r_torsion: EdwardsPoint) -> Signature {
        let r = scalar(nonce_label);
        let big_r = (EdwardsPoint::mul_base(&r) + r_torsion).compress().to_bytes();
        let k = challenge(&big_r, &self.public, message);
        signature_of(big_r, (r + k * self.a).to_bytes())
    }
}

pub(crate) fn signature_of(r: [u8; 32], s: [u8; 32]) -> Signature {
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&r);
    out[32..].copy_from_slice(&s);
    Signature(out)
}

pub(crate) fn r_of(signature: &Signature) -> [u8; 32] {
    signature.0[..32].try_into().unwrap()
}

pub(crate) fn s_of(signature: &Signature) -> [u8; 32] {
    signature.0[32..].try_into().unwrap()
}

pub(crate) fn with_r(signature: &Signature, r: [u8; 32]) -> Signature {
    signature_of(r, s_of(signature))
}

pub(crate) fn with_s(signature: &Signature, s: [u8; 32]) -> Signature {
    signature_of(r_of(signature), s)
}

/// `s + L` as a 256-bit little-endian integer (s < L, so it fits).
pub(crate) fn add_l(s: [u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut carry = 0u16;
    for i in 0..32 {
        let sum = u16::from(s[i]) + u16::from(L_BYTES[i]) + carry;
        out[i] = sum as u8;
        carry = sum >> 8;
    }
    assert_eq!(carry, 0);
    out
}

/// The smallest y whose encoding decodes to no curve point.
pub(crate) fn not_a_point() -> [u8; 32] {
    (2u8..)
        .map(|y| {
            let mut b = [0u8; 32];
            b[0] = y;
            b
        })
        .find(|b| CompressedEdwardsY(*b).decompress().is_none())
        .unwrap()
}

/// What ed25519-dalek's verify_strict (the rule before this one) says.
#[allow(clippy::disallowed_methods)] // to show where the protocol's rule differs from it
pub(crate) fn strict_accepts(public: &[u8; 32], message: &[u8], signature: &Signature) -> bool {
    let sig = ed25519_dalek::Signature::from_bytes(&signature.0);
    ed25519_dalek::VerifyingKey::from_bytes(public).is_ok_and(|key| key.verify_strict(message, &sig).is_ok())
}
