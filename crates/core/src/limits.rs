//! Every bound keyraft enforces, in one place, with units in the names.
//!
//! Decoders check these before allocating, so that input from clients, peers or disk can
//! never make a replica allocate without bound.

/// Largest realm name, in bytes.
pub const REALM_NAME_BYTES_MAX: usize = 64;
/// Largest user identifier (an e-mail address or similar), in bytes.
pub const USER_ID_BYTES_MAX: usize = 256;
/// Smallest profile nonce, in bytes: the commitment must hide the profile.
pub const PROFILE_NONCE_BYTES_MIN: usize = 16;
/// Largest profile nonce, in bytes.
pub const PROFILE_NONCE_BYTES_MAX: usize = 64;
/// Largest application identifier inside a profile, in bytes.
pub const PROFILE_APP_ID_BYTES_MAX: usize = 64;
/// Largest key stored for one application in a profile, in bytes.
pub const PROFILE_KEY_BYTES_MAX: usize = 4096;
/// Most application keys in one profile.
pub const PROFILE_KEYS_MAX: usize = 32;
/// Largest encoded profile, in bytes.
pub const PROFILE_BYTES_MAX: usize = 16 * 1024;
/// Most public keys in one update policy.
pub const POLICY_KEYS_MAX: usize = 16;
/// Deepest nesting of quorum expressions in an update policy.
pub const POLICY_DEPTH_MAX: usize = 4;
/// Most members of one quorum expression.
pub const POLICY_MEMBERS_MAX: usize = 16;
/// Largest encoded entry, in bytes.
pub const ENTRY_BYTES_MAX: usize = 2048;
/// Most signatures attached to one update.
pub const UPDATE_SIGNATURES_MAX: usize = 2 * POLICY_KEYS_MAX;
/// Largest encoded update (entry, profile and signatures), in bytes.
pub const UPDATE_BYTES_MAX: usize = 24 * 1024;
/// Most replicas in one realm.
pub const REPLICAS_MAX: usize = 9;
/// Most third-party verifiers registered in one realm.
pub const VERIFIERS_MAX: usize = 32;
/// Largest encoded signed entry (entry and signatures), in bytes.
pub const SIGNED_ENTRY_BYTES_MAX: usize = 2 + ENTRY_BYTES_MAX + 2 + UPDATE_SIGNATURES_MAX * 96;
/// Largest encoded pending recovery (its signed entry, requested epoch and effective time).
pub const PENDING_RECOVERY_BYTES_MAX: usize = SIGNED_ENTRY_BYTES_MAX + 16;
/// Largest encoded lookup proof, in bytes: 32 KiB held the largest proof of protocol
/// version 1 (about 29.3 KiB with a full-depth tree proof, 32 verifiers and the largest
/// entry and profile); version 2 adds a pending recovery (about 5 KiB).
pub const LOOKUP_PROOF_BYTES_MAX: usize = 36 * 1024;
/// Depth of the prefix tree: one level per bit of the index.
pub const TREE_DEPTH_MAX: usize = 256;

const _: () = assert!(ENTRY_BYTES_MAX + PROFILE_BYTES_MAX + UPDATE_SIGNATURES_MAX * 96 + 64 <= UPDATE_BYTES_MAX);
const _: () = assert!(UPDATE_BYTES_MAX < u16::MAX as usize * 2);
/// The largest proof fits: user id, VRF proof, head (2 + 186 bytes), signatures, a tree proof
/// of depth 256 with its terminal, the entry and profile, and a pending recovery.
const _: () = assert!(
    (2 + USER_ID_BYTES_MAX)
        + 80
        + (2 + 186)
        + (2 + REPLICAS_MAX * 65)
        + (2 + VERIFIERS_MAX * 65)
        + (65 + 2 + 32 + TREE_DEPTH_MAX * 32)
        + (1 + 2 + ENTRY_BYTES_MAX + 2 + PROFILE_BYTES_MAX)
        + (1 + 2 + PENDING_RECOVERY_BYTES_MAX)
        <= LOOKUP_PROOF_BYTES_MAX
);
const _: () = assert!(PROFILE_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(PROFILE_NONCE_BYTES_MIN <= PROFILE_NONCE_BYTES_MAX);
