//! The protocol's one Ed25519 verification rule (docs/protocol.md section 1), for single
//! signatures and for batches. Every signature a replica, verifier or client checks goes
//! through [`verify`] (via [`PublicKey::verify`]) or [`verify_batch`]; nothing calls
//! ed25519-dalek's verification (clippy.toml forbids it).
//!
//! The rule is *cofactored* Ed25519 with canonical encodings: A and R must be the canonical
//! encodings of curve points that are not of small order, S must be below L, and with
//! `k = SHA-512(R_b || A_b || M) mod L` the signature is accepted iff
//! `[8]([S]B - R - [k]A)` is the identity.
//!
//! Why cofactored: a batch check combines many equations with random coefficients, and only
//! the cofactored equation gives the same verdict in a batch as alone. Cofactorless
//! verification (`verify_strict`) rejects `R = [r]B + T` for a small-order `T`, but a batch
//! without the factor 8 accepts it whenever the coefficient of `T` happens to be a multiple of
//! its order, so the verdict would depend on the batch a signature is checked in. Multiplying
//! by 8 removes every torsion component from both sides, so single and batch agree on every
//! signature (up to the batch's 2^-128 soundness error).

use crate::keys::{decode_point, PublicKey, Signature};
use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use sha2::{Digest as _, Sha512};

/// Why a signature (or a key) is refused. The order of the variants is the order of the
/// checks, so a signature failing several gets the first one's reason, the same in every
/// implementation of the rule (the vectors in `docs/vectors/ed25519.json` pin it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The signer's key does not decode to a curve point.
    #[error("ed25519 public key is not a curve point")]
    KeyNotAPoint,
    /// The signer's key is a point but these bytes are not its canonical encoding.
    #[error("ed25519 public key is not canonically encoded (y >= p or negative zero x)")]
    KeyNonCanonical,
    /// The signer's key has small order: it would "sign" nearly every message.
    #[error("ed25519 public key has small order")]
    KeySmallOrder,
    /// The signature's R does not decode to a curve point.
    #[error("signature's R is not a curve point")]
    RNotAPoint,
    /// The signature's R is a point but not canonically encoded.
    #[error("signature's R is not canonically encoded (y >= p or negative zero x)")]
    RNonCanonical,
    /// The signature's R has small order.
    #[error("signature's R has small order")]
    RSmallOrder,
    /// The signature's S is not a canonical scalar (S >= L, high bits included).
    #[error("signature's S is not a canonical scalar (S >= L)")]
    SNonCanonical,
    /// Everything decodes, but `[8]([S]B - R - [k]A)` is not the identity: the signature is
    /// not this key's over this message.
    #[error("signature does not verify for this key and message")]
    Equation,
}

impl Rejection {
    /// The reason as written in the vector file: encoding failures of a point share one code,
    /// since an implementation may find `y >= p` before or after trying to decompress.
    pub fn code(&self) -> &'static str {
        match self {
            Self::KeyNotAPoint | Self::KeyNonCanonical => "key-encoding",
            Self::KeySmallOrder => "key-small-order",
            Self::RNotAPoint | Self::RNonCanonical => "r-encoding",
            Self::RSmallOrder => "r-small-order",
            Self::SNonCanonical => "s-non-canonical",
            Self::Equation => "equation",
        }
    }
}

/// What makes 32 bytes a valid Ed25519 key in the protocol (policy, replica, verifier and
/// signer keys, the VRF key): the canonical encoding of a curve point not of small order.
/// Mixed-order points (a full-order point plus torsion) are valid: the cofactored equation
/// ignores their torsion.
pub(crate) fn decode_key(bytes: &[u8; 32]) -> Result<EdwardsPoint, Rejection> {
    let (point, canonical) = decode_point(bytes).ok_or(Rejection::KeyNotAPoint)?;
    if !canonical {
        return Err(Rejection::KeyNonCanonical);
    }
    if point.is_small_order() {
        return Err(Rejection::KeySmallOrder);
    }
    Ok(point)
}

/// A key to verify with: either an already validated [`PublicKey`] (not decoded again) or
/// raw bytes, which get exactly the checks [`PublicKey::from_bytes`] makes.
pub trait VerificationKey {
    /// The key's encoding, hashed into the challenge.
    fn encoding(&self) -> &[u8; 32];
    /// The key's point, after the checks of [`decode_key`].
    fn point(&self) -> Result<EdwardsPoint, Rejection>;
}

impl VerificationKey for PublicKey {
    fn encoding(&self) -> &[u8; 32] {
        self.as_bytes()
    }
    fn point(&self) -> Result<EdwardsPoint, Rejection> {
        Ok(self.point())
    }
}

impl VerificationKey for [u8; 32] {
    fn encoding(&self) -> &[u8; 32] {
        self
    }
    fn point(&self) -> Result<EdwardsPoint, Rejection> {
        decode_key(self)
    }
}

impl<K: VerificationKey + ?Sized> VerificationKey for &K {
    fn encoding(&self) -> &[u8; 32] {
        (**self).encoding()
    }
    fn point(&self) -> Result<EdwardsPoint, Rejection> {
        (**self).point()
    }
}

/// A signature's decoded parts and its challenge, after every encoding check.
struct Decoded {
    a: EdwardsPoint,
    r: EdwardsPoint,
    s: Scalar,
    k: Scalar,
}

/// The checks single and batch verification share, in the order of [`Rejection`].
fn decode<K: VerificationKey + ?Sized>(key: &K, message: &[u8], signature: &Signature) -> Result<Decoded, Rejection> {
    let a = key.point()?;
    let (r_bytes, s_bytes) = split(signature);
    let (r, canonical) = decode_point(&r_bytes).ok_or(Rejection::RNotAPoint)?;
    if !canonical {
        return Err(Rejection::RNonCanonical);
    }
    // The cofactored equation alone would accept a small-order R with S = k*a. No honest
    // signer makes one (R = [r]B has full order), and verify_strict refused it, so it stays
    // refused: the rule only widens where a key holder adds torsion on purpose.
    if r.is_small_order() {
        return Err(Rejection::RSmallOrder);
    }
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes)).ok_or(Rejection::SNonCanonical)?;
    let k = Scalar::from_hash(Sha512::new().chain_update(r_bytes).chain_update(key.encoding()).chain_update(message));
    Ok(Decoded { a, r, s, k })
}

fn split(signature: &Signature) -> ([u8; 32], [u8; 32]) {
    let mut r = [0u8; 32];
    let mut s = [0u8; 32];
    r.copy_from_slice(&signature.0[..32]);
    s.copy_from_slice(&signature.0[32..]);
    (r, s)
}

/// Checks `signature` over `message` under `key` with the protocol's rule.
pub fn verify<K: VerificationKey + ?Sized>(key: &K, message: &[u8], signature: &Signature) -> Result<(), Rejection> {
    let d = decode(key, message, signature)?;
    // [k](-A) + [S]B - R; variable time is fine, every input is public.
    let residue = EdwardsPoint::vartime_double_scalar_mul_basepoint(&d.k, &-d.a, &d.s) - d.r;
    if residue.mul_by_cofactor().is_identity() {
        Ok(())
    } else {
        Err(Rejection::Equation)
    }
}

/// Label of the batch coefficients' hash; never signed, so it cannot collide with a context.
const BATCH_LABEL: &[u8] = b"keyraft/v1/ed25519-batch-coefficients";

/// Checks many signatures at once; true iff [`verify`] accepts every one of them (an empty
/// batch is true). Each item gets the single checks' encoding checks, then one combined
/// cofactored equation
/// `[8](-(sum z_i S_i) B + sum z_i R_i + sum (z_i k_i) A_i) == identity`
/// with 128-bit coefficients `z_i`.
///
/// The coefficients are derived from the items instead of drawn at random, so the step
/// function (which may not use an RNG) can batch too. This is sound because every `z_i` is a
/// hash of *all* the items: whoever makes the signatures has committed to every A, R, S and
/// message before any coefficient exists, and changing any byte changes every coefficient.
/// For an invalid item `j`, the prime-order part `P_j = [8]([S_j]B - R_j - [k_j]A_j)` is not
/// zero; for any fixed other coefficients at most one value of `z_j` mod L cancels it, and
/// `z_j` is a 128-bit hash output, so each attempt succeeds with probability at most 2^-128
/// and forging a passing batch costs about 2^128 hashes, the same as with random coefficients
/// (Fiat-Shamir). Torsion components do not enter: the factor 8 removes them, as in single
/// verification.
pub fn verify_batch<K: VerificationKey>(items: &[(K, &[u8], Signature)]) -> bool {
    let mut decoded = Vec::with_capacity(items.len());
    for (key, message, signature) in items {
        match decode(key, message, signature) {
            Ok(d) => decoded.push(d),
            Err(_) => return false,
        }
    }
    let coefficients = batch_coefficients(items);
    let mut b_coefficient = Scalar::ZERO;
    let mut scalars = Vec::with_capacity(1 + 2 * items.len());
    let mut points = Vec::with_capacity(1 + 2 * items.len());
    for (d, z) in decoded.iter().zip(&coefficients) {
        b_coefficient -= z * d.s;
        scalars.push(*z);
        points.push(d.r);
        scalars.push(z * d.k);
        points.push(d.a);
    }
    scalars.push(b_coefficient);
    points.push(ED25519_BASEPOINT_POINT);
    EdwardsPoint::vartime_multiscalar_mul(&scalars, &points).mul_by_cofactor().is_identity()
}

/// `z_i = first 16 bytes of SHA-512(T || u64(i))`, little-endian, where
/// `T = u8(len(label)) || label || u64(n) || (A_b || R_b || S_b || SHA-512(M))` for every item.
fn batch_coefficients<K: VerificationKey>(items: &[(K, &[u8], Signature)]) -> Vec<Scalar> {
    let mut transcript = Sha512::new();
    transcript.update([BATCH_LABEL.len() as u8]);
    transcript.update(BATCH_LABEL);
    transcript.update((items.len() as u64).to_be_bytes());
    for (key, message, signature) in items {
        transcript.update(key.encoding());
        transcript.update(signature.0);
        transcript.update(Sha512::digest(message));
    }
    (0..items.len() as u64)
        .map(|i| {
            let digest = transcript.clone().chain_update(i.to_be_bytes()).finalize();
            let mut z = [0u8; 32];
            z[..16].copy_from_slice(&digest[..16]);
            Scalar::from_bytes_mod_order(z)
        })
        .collect()
}

/// Label of the memo's keys (never signed: a local cache key, not a protocol hash).
const MEMO_LABEL: &[u8] = b"keyraft/v1/verified-signature-memo";

/// Signatures this process has already found valid, so that a replica verifies an update's
/// signatures once although it checks the update twice: when a client sends it (a bad one
/// must never reach the log) and when the step function applies it from the log.
///
/// Only acceptances are remembered, each under the SHA-256 of the key, the signature and the
/// whole message, so a hit stands for a [`verify`] of exactly those bytes and answers what
/// [`verify`] would answer: a replica with a cold, a warm or no memo reaches the same state
/// (the step function stays a function of the log). Finding a second input with a remembered
/// key hash is a SHA-256 second preimage. The order of lookups and inserts does not matter
/// either, so the memo may be shared by request handlers and the step function.
///
/// Bounded: two generations of at most `per_generation` keys (32 bytes each); when the newer
/// fills, the older is dropped. Updates are applied within a second of being checked, far
/// fewer than a generation apart.
#[derive(Debug)]
pub struct VerifiedSignatures {
    per_generation: usize,
    generations: std::sync::Mutex<[std::collections::BTreeSet<[u8; 32]>; 2]>,
}

impl VerifiedSignatures {
    /// Keys per generation by default: 65,536 (2 MiB each).
    pub const PER_GENERATION_DEFAULT: usize = 1 << 16;

    /// A memo of at most `2 * per_generation` signatures.
    pub fn new(per_generation: usize) -> Self {
        assert!(per_generation > 0, "a memo generation must hold at least one signature");
        Self { per_generation, generations: std::sync::Mutex::new(Default::default()) }
    }

    /// [`verify`] through the memo: true iff `signature` is valid over `message` under `key`.
    pub fn verify(&self, key: &PublicKey, message: &[u8], signature: &Signature) -> bool {
        let memo_key = Self::key(key, message, signature);
        if self.lock().iter().any(|g| g.contains(&memo_key)) {
            return true;
        }
        // Verified outside the lock: handlers and the step function verify in parallel.
        if verify(key, message, signature).is_err() {
            return false;
        }
        let mut generations = self.lock();
        if generations[0].len() >= self.per_generation {
            generations[1] = std::mem::take(&mut generations[0]);
        }
        generations[0].insert(memo_key);
        true
    }

    /// [`verify_batch`] through the memo: true iff every signature is valid over its message
    /// under its key. The signatures not remembered yet are checked together in one batch and
    /// all remembered if it passes; if it fails, none is (the single checks that follow find
    /// the bad ones). A signature remembered this way stands for an acceptance by [`verify`]
    /// as one remembered singly does: the batch passes with an invalid member with probability
    /// at most 2^-128 per attempt, its coefficients being hashes of every item (see
    /// [`verify_batch`]).
    pub fn verify_batch(&self, items: &[(&PublicKey, &[u8], &Signature)]) -> bool {
        let memo_keys: Vec<[u8; 32]> = items.iter().map(|(k, m, s)| Self::key(k, m, s)).collect();
        let unknown: Vec<usize> = {
            let generations = self.lock();
            (0..items.len()).filter(|&i| !generations.iter().any(|g| g.contains(&memo_keys[i]))).collect()
        };
        if unknown.is_empty() {
            return true;
        }
        let batch: Vec<(&PublicKey, &[u8], Signature)> =
            unknown.iter().map(|&i| (items[i].0, items[i].1, *items[i].2)).collect();
        // Verified outside the lock, as in `verify`.
        if !verify_batch(&batch) {
            return false;
        }
        let mut generations = self.lock();
        for i in unknown {
            if generations[0].len() >= self.per_generation {
                generations[1] = std::mem::take(&mut generations[0]);
            }
            generations[0].insert(memo_keys[i]);
        }
        true
    }

    /// Signatures remembered now.
    pub fn len(&self) -> usize {
        self.lock().iter().map(std::collections::BTreeSet::len).sum()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [std::collections::BTreeSet<[u8; 32]>; 2]> {
        // The sets are valid whatever a panicking holder left half done (an insert is atomic).
        self.generations.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn key(key: &PublicKey, message: &[u8], signature: &Signature) -> [u8; 32] {
        use sha2::Sha256;
        let mut h = Sha256::new();
        h.update(MEMO_LABEL);
        h.update(key.as_bytes());
        h.update(signature.0);
        h.update((message.len() as u64).to_be_bytes());
        h.update(message);
        h.finalize().into()
    }
}

impl Default for VerifiedSignatures {
    fn default() -> Self {
        Self::new(Self::PER_GENERATION_DEFAULT)
    }
}
