//! The signatures over heads: a replica's (the head signing message) and a verifier's (the
//! ratification message). The messages themselves are defined in `keyraft_core::lookup`,
//! because a client checks both with nothing but the core crate; this module signs them, for
//! the replicas' signature proposer and for verifiers.

use ed25519_dalek::{Signer as _, SigningKey};
pub use keyraft_core::lookup::{head_signing_message, ratification_message};
use keyraft_core::{Command, EpochHead, PublicKey, Signature};

/// The command carrying a replica's signature over `head`.
pub fn sign_head(key: &SigningKey, head: &EpochHead) -> Result<Command, keyraft_core::DecodeError> {
    let signature = Signature(key.sign(&head_signing_message(head)).to_bytes());
    Ok(Command::ReplicaSignature {
        epoch: head.epoch,
        signer: PublicKey::from_verifying_key(&key.verifying_key())?,
        signature,
    })
}

/// A verifier's signature ratifying `head`.
pub fn ratification_signature(key: &SigningKey, head: &EpochHead) -> Signature {
    Signature(key.sign(&ratification_message(head)).to_bytes())
}

/// The command carrying a verifier's ratification of `head`.
pub fn ratify_head(key: &SigningKey, head: &EpochHead) -> Result<Command, keyraft_core::DecodeError> {
    let signature = ratification_signature(key, head);
    Ok(Command::VerifierSignature {
        epoch: head.epoch,
        verifier: PublicKey::from_verifying_key(&key.verifying_key())?,
        signature,
    })
}
