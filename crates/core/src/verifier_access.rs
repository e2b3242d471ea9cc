//! Who may read the verifier stream (docs/protocol.md section 7.1).
//!
//! `VerifierStream` carries every update's signed entry: owner public keys in clear, which
//! link all updates of an identity. It is served to the realm's registered verifiers only:
//! the request carries a verifier key of the configuration in force, a time, and that key's
//! signature over
//!
//! ```text
//! u8(26) || "keyraft/v2/verifier-stream" || bytes(realm) || [32] verifier_key || u64 time_ms
//! ```
//!
//! The replica answers only if the key is a verifier key of the configuration in force, the
//! time is within the realm's clock skew of its own clock (a captured request is useless once
//! that window has passed), and the signature verifies. One function decides
//! ([`check_stream_access`]); the verifier signs with [`stream_access`].

use crate::encoding::put_u64;
use crate::hash::{context, signed_message};
use crate::keys::{PublicKey, Signature};
use crate::types::RealmConfig;
use ed25519_dalek::{Signer as _, SigningKey};
use thiserror::Error;

/// A verifier's signed request to read the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAccess {
    /// The verifier key.
    pub verifier: PublicKey,
    /// When the verifier signed, in ms since the Unix epoch.
    pub time_ms: u64,
    /// The verifier key's signature over [`stream_access_message`].
    pub signature: Signature,
}

/// The bytes a verifier signs to read `realm`'s stream at `time_ms`.
pub fn stream_access_message(realm: &str, verifier: &PublicKey, time_ms: u64) -> Vec<u8> {
    let mut realm_field = Vec::with_capacity(2 + realm.len());
    crate::encoding::put_var_bytes(&mut realm_field, realm.as_bytes());
    let mut time = Vec::with_capacity(8);
    put_u64(&mut time, time_ms);
    signed_message(context::VERIFIER_STREAM, &[&realm_field, verifier.as_bytes(), &time])
}

/// The access `key` signs for `realm` at `time_ms`.
pub fn stream_access(key: &SigningKey, realm: &str, time_ms: u64) -> Result<StreamAccess, crate::DecodeError> {
    let verifier = PublicKey::from_verifying_key(&key.verifying_key())?;
    let signature = Signature(key.sign(&stream_access_message(realm, &verifier, time_ms)).to_bytes());
    Ok(StreamAccess { verifier, time_ms, signature })
}

/// Why a stream request was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StreamAccessError {
    /// The key (hex) is not a verifier key of the configuration in force.
    #[error(
        "{0} is not a verifier key of the realm's configuration in force (only registered verifiers read the stream)"
    )]
    NotAVerifier(String),
    /// The signed time is too far from the replica's clock.
    #[error(
        "the request was signed at {time_ms} ms, {distance_ms} ms from this replica's clock ({now_ms}); the realm \
         allows {skew_ms} ms (sign each request afresh, and check the verifier's clock)"
    )]
    Stale {
        /// The signed time.
        time_ms: u64,
        /// The replica's clock.
        now_ms: u64,
        /// How far apart they are.
        distance_ms: u64,
        /// The realm's clock skew.
        skew_ms: u64,
    },
    /// The signature does not verify for the key (hex).
    #[error("the signature does not verify for verifier key {0}")]
    BadSignature(String),
}

/// Checks `access` against `config` (the configuration in force) at `now_ms`, allowing
/// `skew_ms` between clocks.
pub fn check_stream_access(
    config: &RealmConfig,
    access: &StreamAccess,
    now_ms: u64,
    skew_ms: u64,
) -> Result<(), StreamAccessError> {
    if config.verifier_keys.binary_search(&access.verifier).is_err() {
        return Err(StreamAccessError::NotAVerifier(access.verifier.to_string()));
    }
    let distance_ms = now_ms.abs_diff(access.time_ms);
    if distance_ms > skew_ms {
        return Err(StreamAccessError::Stale { time_ms: access.time_ms, now_ms, distance_ms, skew_ms });
    }
    let message = stream_access_message(&config.realm, &access.verifier, access.time_ms);
    if !access.verifier.verify(&message, &access.signature) {
        return Err(StreamAccessError::BadSignature(access.verifier.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config(verifier: &SigningKey) -> RealmConfig {
        let replica = PublicKey::from_verifying_key(&SigningKey::from_bytes(&[1; 32]).verifying_key()).unwrap();
        let vrf = crate::vrf::VrfSecretKey::from_seed(&[2; 32]).public_key();
        let v = PublicKey::from_verifying_key(&verifier.verifying_key()).unwrap();
        RealmConfig::new("access.example", vrf, vec![replica], vec![v]).unwrap()
    }

    #[test]
    fn a_registered_verifier_reads_and_nothing_else_does() {
        let verifier = SigningKey::from_bytes(&[3; 32]);
        let config = config(&verifier);
        let now = 1_700_000_000_000;
        let access = stream_access(&verifier, "access.example", now - 4_000).unwrap();
        assert_eq!(check_stream_access(&config, &access, now, 5_000), Ok(()));
        // Too old, from the future, another realm's, another key's, a flipped signature.
        let old = stream_access(&verifier, "access.example", now - 5_001).unwrap();
        assert!(matches!(check_stream_access(&config, &old, now, 5_000), Err(StreamAccessError::Stale { .. })));
        let ahead = stream_access(&verifier, "access.example", now + 5_001).unwrap();
        assert!(matches!(check_stream_access(&config, &ahead, now, 5_000), Err(StreamAccessError::Stale { .. })));
        let other_realm = stream_access(&verifier, "other.example", now).unwrap();
        assert_eq!(
            check_stream_access(&config, &other_realm, now, 5_000),
            Err(StreamAccessError::BadSignature(access.verifier.to_string()))
        );
        let stranger = stream_access(&SigningKey::from_bytes(&[4; 32]), "access.example", now).unwrap();
        assert_eq!(
            check_stream_access(&config, &stranger, now, 5_000),
            Err(StreamAccessError::NotAVerifier(stranger.verifier.to_string()))
        );
        for i in 0..64 {
            let mut flipped = access.clone();
            flipped.signature.0[i] ^= 1;
            assert!(check_stream_access(&config, &flipped, now, 5_000).is_err(), "byte {i}");
        }
        let mut retimed = access.clone();
        retimed.time_ms += 1;
        assert_eq!(
            check_stream_access(&config, &retimed, now, 5_000),
            Err(StreamAccessError::BadSignature(access.verifier.to_string()))
        );
    }
}
