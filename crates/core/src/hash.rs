//! Domain-separated SHA-256 and the labels of every hash and signature in the protocol.
//!
//! Every hash is `SHA-256(len(label) as u8 || label || data)`. Prefixing the label with its
//! length makes the set of labels prefix-free, so no input of one kind can be read as an input
//! of another. Every signed message is framed the same way (`len(label) || label || data`),
//! with its own label, so a signature made for one purpose is useless for any other.

use sha2::{Digest as _, Sha256};

/// A SHA-256 output.
pub type Digest = [u8; 32];

/// Labels for hashes.
pub mod label {
    /// The hash of an empty subtree.
    pub const TREE_EMPTY: &str = "keyraft/v1/tree-empty";
    /// The hash of a leaf: `depth (u16) || index || value`.
    pub const TREE_LEAF: &str = "keyraft/v1/tree-leaf";
    /// The hash of an interior node: `left || right`.
    pub const TREE_NODE: &str = "keyraft/v1/tree-node";
    /// The hash of an entry's canonical bytes: the value stored in its leaf.
    pub const ENTRY: &str = "keyraft/v1/entry";
    /// The commitment to a profile's canonical bytes (nonce included, so it hides).
    pub const PROFILE_COMMITMENT: &str = "keyraft/v1/profile-commitment";
    /// The hash of an epoch head, chaining each head to the previous one.
    pub const EPOCH_HEAD: &str = "keyraft/v1/epoch-head-hash";
    /// The hash of the realm configuration in force (keys of replicas, verifiers, VRF).
    pub const REALM_CONFIG: &str = "keyraft/v1/realm-config";
    /// The VRF input for an identity.
    pub const VRF_INDEX: &str = "keyraft/v1/vrf-index";
    /// The value of a leaf whose identity has a pending recovery (protocol version 2):
    /// `entry bytes || pending recovery bytes`.
    pub const ENTRY_PENDING_RECOVERY: &str = "keyraft/v2/entry-pending-recovery";
}

/// Labels (signing contexts) for signatures.
pub mod context {
    /// A user's signature over an entry update.
    pub const ENTRY_UPDATE: &str = "keyraft/v1/entry-update";
    /// A replica's signature over an epoch head.
    pub const EPOCH_HEAD: &str = "keyraft/v1/epoch-head";
    /// A third-party verifier's signature over an epoch head it recomputed.
    pub const VERIFIER_RATIFICATION: &str = "keyraft/v1/verifier-ratification";
    /// A replica's approval of a realm configuration change (protocol version 2).
    pub const CONFIG_CHANGE: &str = "keyraft/v2/config-change";
    /// A verifier's request to read the verifier stream (protocol version 2, section 7.1).
    pub const VERIFIER_STREAM: &str = "keyraft/v2/verifier-stream";
}

/// `len(label) || label`, the framing shared by hashes and signed messages.
pub fn framed_label(label: &str) -> Vec<u8> {
    let len = u8::try_from(label.len()).expect("labels are compile-time constants shorter than 256 bytes");
    let mut out = Vec::with_capacity(1 + label.len());
    out.push(len);
    out.extend_from_slice(label.as_bytes());
    out
}

/// `SHA-256(len(label) || label || parts[0] || parts[1] || ...)`.
///
/// Callers only pass fixed-size parts or canonical encodings, with at most the last part of
/// variable length, so the concatenation is unambiguous.
pub fn hash(label: &str, parts: &[&[u8]]) -> Digest {
    let mut h = Sha256::new();
    h.update([label.len() as u8]);
    h.update(label.as_bytes());
    for part in parts {
        h.update(part);
    }
    h.finalize().into()
}

/// The message a signer signs: `len(label) || label || payload`.
pub fn signed_message(context: &str, payload: &[&[u8]]) -> Vec<u8> {
    let mut out = framed_label(context);
    for p in payload {
        out.extend_from_slice(p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct_and_short() {
        let all = [
            label::TREE_EMPTY,
            label::TREE_LEAF,
            label::TREE_NODE,
            label::ENTRY,
            label::PROFILE_COMMITMENT,
            label::EPOCH_HEAD,
            label::REALM_CONFIG,
            label::VRF_INDEX,
            label::ENTRY_PENDING_RECOVERY,
            context::ENTRY_UPDATE,
            context::EPOCH_HEAD,
            context::VERIFIER_RATIFICATION,
            context::CONFIG_CHANGE,
        ];
        for (i, a) in all.iter().enumerate() {
            assert!(a.len() < 256);
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn hash_frames_the_label() {
        let mut h = Sha256::new();
        h.update([3u8]);
        h.update(b"abc");
        h.update(b"xyz");
        let expected: Digest = h.finalize().into();
        assert_eq!(hash("abc", &[b"x", b"yz"]), expected);
        assert_ne!(hash("abc", &[b"xyz"]), hash("abcx", &[b"yz"]));
    }
}
