//! Ed25519 public keys and signatures as they appear in the protocol.

use crate::ed25519::{self, Rejection};
use crate::encoding::{DecodeError, Reader};
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use ed25519_dalek::VerifyingKey;
use std::cmp::Ordering;
use std::fmt;

/// A valid Ed25519 public key: the canonical encoding of a curve point not of small order
/// (docs/protocol.md section 1). Mixed-order keys are valid: the cofactored verification rule
/// makes their torsion component irrelevant.
///
/// Weak keys are refused when decoded, so no policy, replica or verifier key can be one that
/// "signs" everything; signatures are checked with the rule of [`crate::ed25519`].
#[derive(Clone, Copy)]
pub struct PublicKey {
    bytes: [u8; 32],
    point: EdwardsPoint,
}

impl PublicKey {
    /// Encoded size, in bytes.
    pub const BYTES: usize = 32;

    /// Validates a 32-byte encoding: a curve point (RFC 8032 section 5.1.3), canonically
    /// encoded (y < p, no negative zero x), not of small order.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, DecodeError> {
        const WHAT: &str = "ed25519 public key";
        let point = ed25519::decode_key(bytes).map_err(|rejection| match rejection {
            Rejection::KeyNonCanonical => DecodeError::NonCanonical {
                what: WHAT,
                why: "non-canonical point encoding (y >= p or negative zero x)",
            },
            Rejection::KeySmallOrder => DecodeError::Invalid { what: WHAT, why: "small-order (weak) key" },
            _ => DecodeError::Invalid { what: WHAT, why: "not a curve point" },
        })?;
        Ok(Self { bytes: *bytes, point })
    }

    /// From a slice that must be exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, DecodeError> {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| DecodeError::Invalid { what: "ed25519 public key", why: "must be 32 bytes" })?;
        Self::from_bytes(&arr)
    }

    /// From a dalek verifying key.
    pub fn from_verifying_key(key: &VerifyingKey) -> Result<Self, DecodeError> {
        Self::from_bytes(key.as_bytes())
    }

    /// Reads 32 bytes and validates them.
    pub fn decode_from(r: &mut Reader<'_>, what: &'static str) -> Result<Self, DecodeError> {
        let bytes = r.array::<32>(what)?;
        Self::from_bytes(&bytes)
    }

    /// The encoding.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// The decoded point (validated when the key was decoded).
    pub(crate) fn point(&self) -> EdwardsPoint {
        self.point
    }

    /// Checks `signature` over `message` with the protocol's rule ([`ed25519::verify`]):
    /// replicas, verifiers and clients must agree on acceptance bit for bit.
    pub fn verify(&self, message: &[u8], signature: &Signature) -> bool {
        ed25519::verify(self, message, signature).is_ok()
    }
}

/// Decodes a point per RFC 8032 section 5.1.3 and says whether `bytes` is its canonical
/// encoding (the one re-encoding the point gives): one rule for every key and point in the
/// protocol (Ed25519 keys here, VRF keys and Gamma in [`crate::vrf`]).
pub(crate) fn decode_point(bytes: &[u8; 32]) -> Option<(EdwardsPoint, bool)> {
    let point = CompressedEdwardsY(*bytes).decompress()?;
    Some((point, is_canonical_encoding(bytes)))
}

/// Whether a decompressible `bytes` is the canonical encoding of its point, decided from the
/// bytes alone. Decompression reduces y mod p and gives x the sign bit asked for, except that
/// x = 0 has no negative; so re-encoding changes exactly the encodings with y >= p, and those
/// of the two points with x = 0 (y = 1 and y = p - 1) with the sign bit set. Re-encoding would
/// say the same at the price of a field inversion, as much as the decompression itself (a
/// quarter of the CPU of checking an update); `tests::canonical_rule_matches_reencoding`
/// holds the two rules together.
fn is_canonical_encoding(bytes: &[u8; 32]) -> bool {
    // p = 2^255 - 19, little-endian: ed ff .. ff 7f.
    const P: [u8; 32] = {
        let mut p = [0xff; 32];
        p[0] = 0xed;
        p[31] = 0x7f;
        p
    };
    let sign = bytes[31] >> 7;
    let mut y = *bytes;
    y[31] &= 0x7f;
    // y < p, compared from the most significant byte down.
    let below_p = y.iter().rev().cmp(P.iter().rev()) == Ordering::Less;
    if !below_p {
        return false;
    }
    let mut one = [0u8; 32];
    one[0] = 1;
    let mut p_minus_one = P;
    p_minus_one[0] = 0xec;
    let x_is_zero = y == one || y == p_minus_one;
    !(x_is_zero && sign == 1)
}

/// The public key of a signing key.
pub fn public_key_of(key: &ed25519_dalek::SigningKey) -> PublicKey {
    // ed25519-dalek derives only canonical, full-order public keys from secret keys.
    PublicKey::from_verifying_key(&key.verifying_key()).unwrap_or_else(|e| unreachable!("derived key rejected: {e}"))
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}
impl Eq for PublicKey {}
impl PartialOrd for PublicKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for PublicKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.bytes.cmp(&other.bytes)
    }
}
impl std::hash::Hash for PublicKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bytes.hash(state);
    }
}
/// Serialized as its 32 canonical bytes and validated again when deserialized, so a key read
/// from a peer's message is as checked as one read from the protocol's own encoding.
impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&self.bytes, serializer)
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes = <[u8; 32]>::deserialize(deserializer)?;
        Self::from_bytes(&bytes).map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", hex::encode(self.bytes))
    }
}
impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.bytes))
    }
}

/// A 64-byte Ed25519 signature (`R || S`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

impl Signature {
    /// Encoded size, in bytes.
    pub const BYTES: usize = 64;

    /// From a slice that must be exactly 64 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, DecodeError> {
        let arr: [u8; 64] = bytes
            .try_into()
            .map_err(|_| DecodeError::Invalid { what: "ed25519 signature", why: "must be 64 bytes" })?;
        Ok(Self(arr))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", hex::encode(self.0))
    }
}

/// A signature together with the key that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySignature {
    /// The signer's public key.
    pub signer: PublicKey,
    /// The signature.
    pub signature: Signature,
}

impl KeySignature {
    /// Encoded size, in bytes.
    pub const BYTES: usize = 96;

    /// Appends `signer || signature`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.signer.as_bytes());
        out.extend_from_slice(&self.signature.0);
    }

    /// Reads `signer || signature`.
    pub fn decode_from(r: &mut Reader<'_>, what: &'static str) -> Result<Self, DecodeError> {
        Self::decode_with_known(r, what, &[])
    }

    /// Reads `signer || signature`, reusing the decoded key when the signer is one of `known`
    /// (already checked): decompressing a point is a fifth of the cost of checking an update.
    fn decode_with_known(r: &mut Reader<'_>, what: &'static str, known: &[PublicKey]) -> Result<Self, DecodeError> {
        let bytes = r.array::<32>(what)?;
        let signer = match known.iter().find(|k| k.as_bytes() == &bytes) {
            Some(k) => *k,
            None => PublicKey::from_bytes(&bytes)?,
        };
        let signature = Signature(r.array::<64>(what)?);
        Ok(Self { signer, signature })
    }
}

/// Decodes a list of signatures sorted strictly by signer (so no signer appears twice);
/// signers among `known` keys (already decoded and checked) are not decompressed again.
pub fn decode_signature_set(
    r: &mut Reader<'_>,
    max: usize,
    what: &'static str,
    known: &[PublicKey],
) -> Result<Vec<KeySignature>, DecodeError> {
    let n = r.count(0, max, what)?;
    let mut out: Vec<KeySignature> = Vec::with_capacity(n);
    for _ in 0..n {
        let s = KeySignature::decode_with_known(r, what, known)?;
        if let Some(prev) = out.last() {
            if prev.signer >= s.signer {
                return Err(DecodeError::NonCanonical { what, why: "signers not sorted strictly ascending" });
            }
        }
        out.push(s);
    }
    Ok(out)
}

/// Appends a signature set (which must already be sorted by signer).
pub fn encode_signature_set(out: &mut Vec<u8>, set: &[KeySignature]) {
    debug_assert!(set.windows(2).all(|w| w[0].signer < w[1].signer), "signature set not sorted");
    crate::encoding::put_count(out, set.len());
    for s in set {
        s.encode_into(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
    use curve25519_dalek::Scalar;
    use proptest::prelude::*;

    /// The rule by definition: the encoding re-encoding the decompressed point gives.
    fn canonical_by_reencoding(bytes: &[u8; 32]) -> Option<bool> {
        CompressedEdwardsY(*bytes).decompress().map(|p| p.compress().as_bytes() == bytes)
    }

    fn check(bytes: [u8; 32]) {
        assert_eq!(
            decode_point(&bytes).map(|(_, canonical)| canonical),
            canonical_by_reencoding(&bytes),
            "{}",
            hex::encode(bytes)
        );
    }

    /// y as a little-endian integer, sign bit set or not.
    fn encoding(y_le: [u8; 32], sign: bool) -> [u8; 32] {
        let mut b = y_le;
        b[31] |= u8::from(sign) << 7;
        b
    }

    #[test]
    fn canonical_rule_matches_reencoding() {
        // Every y from p - 40 to 2^255 - 1 (all 19 non-canonical y and p - 1), y below 40
        // (y = 0, y = 1), each with either sign bit.
        for low in 0u8..=255 {
            let mut high = [0xff; 32];
            high[31] = 0x7f;
            high[0] = low;
            let mut small = [0u8; 32];
            small[0] = low;
            for sign in [false, true] {
                check(encoding(high, sign));
                check(encoding(small, sign));
            }
        }
        // The small-order points (y = 0 and y = 1 among them; their y + p are above).
        for t in EIGHT_TORSION {
            let b = t.compress().to_bytes();
            check(b);
            check(encoding(b, true));
        }
        // Multiples of the base point, either sign.
        let mut point = ED25519_BASEPOINT_POINT;
        for _ in 0..200 {
            let b = point.compress().to_bytes();
            check(b);
            let mut flipped = b;
            flipped[31] ^= 0x80;
            check(flipped);
            point += ED25519_BASEPOINT_POINT * Scalar::from(7u8);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        #[test]
        fn canonical_rule_matches_reencoding_on_any_bytes(bytes in any::<[u8; 32]>()) {
            check(bytes);
        }
    }
}
