//! ECVRF-EDWARDS25519-SHA512-TAI (RFC 9381, suite string `0x03`).
//!
//! A VRF maps a user id to an index that only the key holder can compute but anyone can check.
//! What makes it a VRF rather than a signature is *uniqueness*: for a given public key and
//! input there is exactly one output a valid proof can lead to, so a server cannot give one
//! user id two indexes. coname's homemade VRF lacked that property; this module follows the
//! RFC step by step and is checked against its test vectors (RFC 9381 appendix B.3).
//!
//! | function | RFC 9381 section |
//! |---|---|
//! | [`VrfSecretKey::prove`] | 5.1 (nonce: 5.4.2.2, challenge: 5.4.3) |
//! | [`VrfPublicKey::verify`] | 5.3, with key validation (5.4.5) |
//! | proof to output | 5.2 |
//! | `encode_to_curve` | 5.4.1.1 (try-and-increment) |

use crate::ed25519::Rejection;
use crate::keys::decode_point;
use curve25519_dalek::constants::ED25519_BASEPOINT_TABLE;
use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::VartimeMultiscalarMul;
use sha2::{Digest, Sha512};
use std::fmt;
use subtle::ConstantTimeEq;
use thiserror::Error;

/// Size of a proof: `Gamma (32) || c (16) || s (32)`.
pub const VRF_PROOF_BYTES: usize = 80;
/// Size of a VRF output (beta).
pub const VRF_OUTPUT_BYTES: usize = 64;
/// Size of a VRF public key.
pub const VRF_PUBLIC_KEY_BYTES: usize = 32;

const SUITE: u8 = 0x03;
const CHALLENGE_BYTES: usize = 16;

/// Why a VRF key or proof was refused. Keys come from configuration (the operator's fault if
/// bad); proofs come from a server (its fault).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum VrfError {
    /// A key or proof has the wrong size.
    #[error("{what} must be {expected} bytes, got {got}")]
    WrongLength {
        /// What was decoded.
        what: &'static str,
        /// The required size.
        expected: usize,
        /// The size given.
        got: usize,
    },
    /// The public key's encoding is not canonical (y >= p, or a negative zero x).
    #[error("VRF public key is not canonically encoded")]
    NonCanonicalPublicKey,
    /// The public key is not a curve point.
    #[error("VRF public key is not a point on edwards25519")]
    InvalidPublicKey,
    /// The public key has small order, so proofs under it would prove nothing.
    #[error("VRF public key has small order")]
    LowOrderPublicKey,
    /// The proof's Gamma is not canonically encoded.
    #[error("VRF proof: Gamma is not canonically encoded")]
    NonCanonicalGamma,
    /// The proof's Gamma is not a curve point.
    #[error("VRF proof: Gamma is not a point on edwards25519")]
    InvalidGamma,
    /// The proof's s is not below the group order.
    #[error("VRF proof: s is not a canonical scalar")]
    NonCanonicalScalar,
    /// The proof is well formed but does not verify for this key and input.
    #[error("VRF proof does not verify for this key and input")]
    ProofRejected,
    /// No counter value gave a curve point (probability about 2^-256).
    #[error("VRF encode-to-curve found no point in 256 attempts")]
    EncodeToCurveExhausted,
}

/// Section 5.4.1.1: `H = cofactor * string_to_point(SHA-512(suite || 0x01 || PK || alpha || ctr || 0x00)[..32])`.
fn encode_to_curve(public_key: &[u8; 32], alpha: &[u8]) -> Result<EdwardsPoint, VrfError> {
    for ctr in 0..=255u8 {
        let hash = Sha512::new()
            .chain_update([SUITE, 0x01])
            .chain_update(public_key)
            .chain_update(alpha)
            .chain_update([ctr, 0x00])
            .finalize();
        let mut candidate = [0u8; 32];
        candidate.copy_from_slice(&hash[..32]);
        if let Some((point, true)) = decode_point(&candidate) {
            return Ok(point.mul_by_cofactor());
        }
    }
    Err(VrfError::EncodeToCurveExhausted)
}

/// Section 5.4.3: the first 16 bytes of SHA-512 over the five points.
fn challenge(points: [&EdwardsPoint; 5]) -> [u8; CHALLENGE_BYTES] {
    let mut h = Sha512::new().chain_update([SUITE, 0x02]);
    for p in points {
        h.update(p.compress().as_bytes());
    }
    let digest = h.chain_update([0x00]).finalize();
    let mut c = [0u8; CHALLENGE_BYTES];
    c.copy_from_slice(&digest[..CHALLENGE_BYTES]);
    c
}

fn challenge_scalar(c: &[u8; CHALLENGE_BYTES]) -> Scalar {
    let mut wide = [0u8; 32];
    wide[..CHALLENGE_BYTES].copy_from_slice(c);
    Scalar::from_bytes_mod_order(wide)
}

/// Section 5.2: `beta = SHA-512(suite || 0x03 || cofactor * Gamma || 0x00)`.
fn gamma_to_output(gamma: &EdwardsPoint) -> VrfOutput {
    let digest = Sha512::new()
        .chain_update([SUITE, 0x03])
        .chain_update(gamma.mul_by_cofactor().compress().as_bytes())
        .chain_update([0x00])
        .finalize();
    let mut out = [0u8; VRF_OUTPUT_BYTES];
    out.copy_from_slice(&digest);
    VrfOutput(out)
}

/// A VRF secret key: an RFC 8032 seed.
#[derive(Clone)]
pub struct VrfSecretKey {
    scalar: Scalar,
    nonce_prefix: [u8; 32],
    public: VrfPublicKey,
}

impl VrfSecretKey {
    /// Expands a 32-byte seed as RFC 8032 does for Ed25519.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let mut h = Sha512::digest(seed);
        let mut a = zeroize::Zeroizing::new([0u8; 32]);
        a.copy_from_slice(&h[..32]);
        a[0] &= 248;
        a[31] &= 127;
        a[31] |= 64;
        let mut nonce_prefix = [0u8; 32];
        nonce_prefix.copy_from_slice(&h[32..]);
        zeroize::Zeroize::zeroize(h.as_mut_slice());
        // The clamped integer times B equals its reduction mod L times B (B has order L).
        let scalar = Scalar::from_bytes_mod_order(*a);
        let public = VrfPublicKey((&scalar * ED25519_BASEPOINT_TABLE).compress().to_bytes());
        Self { scalar, nonce_prefix, public }
    }

    /// The public key.
    pub fn public_key(&self) -> VrfPublicKey {
        self.public
    }

    /// A 64-byte secret for another purpose than the VRF, derived from this key under `label`:
    /// SHA-512 over the label (length-prefixed) and the expanded secret key. Each label gives
    /// an independent secret, and none reveals the VRF key, so replicas that share the VRF key
    /// share these secrets without using the VRF key itself for anything else.
    pub fn derive_secret(&self, label: &str) -> [u8; 64] {
        Sha512::new()
            .chain_update((label.len() as u64).to_be_bytes())
            .chain_update(label.as_bytes())
            .chain_update(self.scalar.as_bytes())
            .chain_update(self.nonce_prefix)
            .finalize()
            .into()
    }

    /// Section 5.1: the proof for `alpha`.
    pub fn prove(&self, alpha: &[u8]) -> Result<VrfProof, VrfError> {
        self.prove_with_output(alpha).map(|(proof, _)| proof)
    }

    /// The proof for `alpha` and the VRF output it proves (section 5.2's proof_to_hash of
    /// this proof), without the cost of verifying the proof again.
    pub fn prove_with_output(&self, alpha: &[u8]) -> Result<(VrfProof, VrfOutput), VrfError> {
        let h = encode_to_curve(&self.public.0, alpha)?;
        let gamma = h * self.scalar;
        // Section 5.4.2.2: k = SHA-512(nonce prefix || encode(H)) mod L.
        let k = Scalar::from_bytes_mod_order_wide(
            &Sha512::new().chain_update(self.nonce_prefix).chain_update(h.compress().as_bytes()).finalize().into(),
        );
        let u = &k * ED25519_BASEPOINT_TABLE;
        let v = h * k;
        let y = self.public.point()?;
        let c = challenge([&y, &h, &gamma, &u, &v]);
        let s = k + challenge_scalar(&c) * self.scalar;
        let mut pi = [0u8; VRF_PROOF_BYTES];
        pi[..32].copy_from_slice(gamma.compress().as_bytes());
        pi[32..48].copy_from_slice(&c);
        pi[48..].copy_from_slice(s.as_bytes());
        Ok((VrfProof(pi), gamma_to_output(&gamma)))
    }
}

// The expanded secret is wiped when the key goes (a seed's copies are the caller's).
impl Drop for VrfSecretKey {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        self.scalar.zeroize();
        self.nonce_prefix.zeroize();
    }
}

impl fmt::Debug for VrfSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VrfSecretKey(public: {:?})", self.public)
    }
}

/// A validated VRF public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VrfPublicKey([u8; 32]);

impl VrfPublicKey {
    /// Decodes and validates (section 5.4.5): canonical, on the curve, not of small order.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, VrfError> {
        let arr: [u8; 32] = bytes.try_into().map_err(|_| VrfError::WrongLength {
            what: "VRF public key",
            expected: VRF_PUBLIC_KEY_BYTES,
            got: bytes.len(),
        })?;
        // The same key validity rule as every Ed25519 key in the protocol.
        crate::ed25519::decode_key(&arr).map_err(|rejection| match rejection {
            Rejection::KeyNonCanonical => VrfError::NonCanonicalPublicKey,
            Rejection::KeySmallOrder => VrfError::LowOrderPublicKey,
            _ => VrfError::InvalidPublicKey,
        })?;
        Ok(Self(arr))
    }

    /// The encoding.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn point(&self) -> Result<EdwardsPoint, VrfError> {
        decode_point(&self.0).map(|(p, _)| p).ok_or(VrfError::InvalidPublicKey)
    }

    /// Section 5.3: checks `proof` for `alpha` and returns the VRF output.
    pub fn verify(&self, alpha: &[u8], proof: &VrfProof) -> Result<VrfOutput, VrfError> {
        let y = self.point()?;
        let mut gamma_bytes = [0u8; 32];
        gamma_bytes.copy_from_slice(&proof.0[..32]);
        let (gamma, canonical) = decode_point(&gamma_bytes).ok_or(VrfError::InvalidGamma)?;
        if !canonical {
            return Err(VrfError::NonCanonicalGamma);
        }
        let mut c = [0u8; CHALLENGE_BYTES];
        c.copy_from_slice(&proof.0[32..48]);
        let mut s_bytes = [0u8; 32];
        s_bytes.copy_from_slice(&proof.0[48..]);
        let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes)).ok_or(VrfError::NonCanonicalScalar)?;
        let h = encode_to_curve(&self.0, alpha)?;
        let neg_c = -challenge_scalar(&c);
        let u = EdwardsPoint::vartime_double_scalar_mul_basepoint(&neg_c, &y, &s);
        let v = EdwardsPoint::vartime_multiscalar_mul([s, neg_c], [h, gamma]);
        let expected = challenge([&y, &h, &gamma, &u, &v]);
        if bool::from(expected.ct_eq(&c)) {
            Ok(gamma_to_output(&gamma))
        } else {
            Err(VrfError::ProofRejected)
        }
    }
}

impl fmt::Debug for VrfPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VrfPublicKey({})", hex::encode(self.0))
    }
}

/// An 80-byte VRF proof (only its length is checked until [`VrfPublicKey::verify`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct VrfProof([u8; VRF_PROOF_BYTES]);

impl VrfProof {
    /// From exactly 80 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, VrfError> {
        let arr: [u8; VRF_PROOF_BYTES] = bytes.try_into().map_err(|_| VrfError::WrongLength {
            what: "VRF proof",
            expected: VRF_PROOF_BYTES,
            got: bytes.len(),
        })?;
        Ok(Self(arr))
    }

    /// The bytes.
    pub fn to_bytes(&self) -> [u8; VRF_PROOF_BYTES] {
        self.0
    }

    /// The bytes, borrowed.
    pub fn as_bytes(&self) -> &[u8; VRF_PROOF_BYTES] {
        &self.0
    }
}

impl fmt::Debug for VrfProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VrfProof({})", hex::encode(self.0))
    }
}

/// A 64-byte VRF output (beta).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct VrfOutput([u8; VRF_OUTPUT_BYTES]);

impl VrfOutput {
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8; VRF_OUTPUT_BYTES] {
        &self.0
    }
}

impl fmt::Debug for VrfOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VrfOutput({})", hex::encode(self.0))
    }
}
