//! Page tokens of the list calls (`ListEpochs`, `History`).
//!
//! A token is opaque to clients and carries where a listing goes on: a position and the epoch
//! the listing is pinned to. Clients move between replicas mid-listing, so every replica must
//! accept every replica's tokens; and a token must not let anyone choose the work a replica
//! does. So a token is authenticated with HMAC-SHA-256 under one realm-wide key that every
//! replica derives, at start, from the realm's VRF secret key under its own label
//! ([`KEY_LABEL`]); the raw VRF key is never used as a MAC key. The tag covers the token's
//! version, the realm's name, the call, the identity (for `History`, the VRF index), the
//! pinned epoch and the position, so a token forged, altered, issued by another realm, for
//! the other call or for another identity is refused.
//!
//! Layout (docs/protocol.md calls it opaque; only replicas read it):
//! `version (1) || position (8, big-endian) || pinned (8, big-endian) || tag (32)`, the tag
//! over `realm name length (8) || realm name || version || call (1) || identity || position ||
//! pinned`.

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use keyraft_core::vrf::VrfSecretKey;
use keyraft_core::Index;
use sha2::Sha256;
use tonic::Status;

/// The label the token key is derived under; a new label means a new, independent key.
pub(crate) const KEY_LABEL: &str = "keyraft page-token key v1";
/// Version 1 was the unauthenticated `version || position || pinned`.
const VERSION: u8 = 2;
const TAG_BYTES: usize = 32;
const TOKEN_BYTES: usize = 1 + 8 + 8 + TAG_BYTES;

type HmacSha256 = Hmac<Sha256>;

/// The listing a token continues.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Listing {
    /// `ListEpochs`.
    Epochs,
    /// `History` of the identity with this VRF index.
    History(Index),
}

impl Listing {
    fn absorb(self, mac: &mut HmacSha256) {
        match self {
            Listing::Epochs => mac.update(&[1]),
            Listing::History(index) => {
                mac.update(&[2]);
                mac.update(&index.0);
            }
        }
    }
}

/// Where a listing goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// The call's position (`ListEpochs`: the next epoch to list; `History`: list versions in
    /// epochs before this one).
    pub(crate) position: u64,
    /// The epoch the listing is pinned to.
    pub(crate) pinned: u64,
}

/// Issues and checks one realm's page tokens.
#[derive(Clone)]
pub(crate) struct PageTokens {
    /// Keyed, with the realm's name absorbed.
    mac: HmacSha256,
}

impl std::fmt::Debug for PageTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageTokens")
    }
}

impl PageTokens {
    /// The tokens of realm `realm`, keyed from its VRF secret key.
    pub(crate) fn new(vrf: &VrfSecretKey, realm: &str) -> Self {
        // 64 bytes: one SHA-256 block, HMAC's natural key size.
        let key = vrf.derive_secret(KEY_LABEL);
        let mut mac = <HmacSha256 as KeyInit>::new(&key.into());
        mac.update(&(realm.len() as u64).to_be_bytes());
        mac.update(realm.as_bytes());
        Self { mac }
    }

    fn tag(&self, listing: Listing, version: u8, position: &[u8], pinned: &[u8]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(&[version]);
        listing.absorb(&mut mac);
        mac.update(position);
        mac.update(pinned);
        mac
    }

    /// The token continuing `listing` at `cursor`.
    pub(crate) fn issue(&self, listing: Listing, cursor: Cursor) -> Vec<u8> {
        let (position, pinned) = (cursor.position.to_be_bytes(), cursor.pinned.to_be_bytes());
        let tag = self.tag(listing, VERSION, &position, &pinned).finalize().into_bytes();
        let mut token = Vec::with_capacity(TOKEN_BYTES);
        token.push(VERSION);
        token.extend_from_slice(&position);
        token.extend_from_slice(&pinned);
        token.extend_from_slice(&tag);
        token
    }

    /// The cursor of `token` (`None` for the empty token, which starts a listing), if this
    /// realm issued it for `listing`. The tag is compared in constant time.
    pub(crate) fn open(&self, listing: Listing, token: &[u8]) -> Result<Option<Cursor>, Status> {
        if token.is_empty() {
            return Ok(None);
        }
        let refused = || {
            Status::invalid_argument(
                "page_token: not issued by this realm for this call (a token continues one listing: same realm, \
                 same call, same user id); start the listing again without a token",
            )
        };
        if token.len() != TOKEN_BYTES || token[0] != VERSION {
            return Err(refused());
        }
        let (position, rest) = token[1..].split_at(8);
        let (pinned, tag) = rest.split_at(8);
        self.tag(listing, VERSION, position, pinned).verify_slice(tag).map_err(|_| refused())?;
        let number = |b: &[u8]| b.try_into().map(u64::from_be_bytes).map_err(|_| refused());
        Ok(Some(Cursor { position: number(position)?, pinned: number(pinned)? }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tokens(seed: u8, realm: &str) -> PageTokens {
        PageTokens::new(&VrfSecretKey::from_seed(&[seed; 32]), realm)
    }

    const CURSOR: Cursor = Cursor { position: 7, pinned: 1_000 };

    #[test]
    fn a_token_opens_only_for_its_realm_call_and_identity() {
        let realm = tokens(1, "dev");
        let alice = Listing::History(Index([0xa1; 32]));
        let bob = Listing::History(Index([0xb0; 32]));
        for listing in [Listing::Epochs, alice] {
            let token = realm.issue(listing, CURSOR);
            assert_eq!(token.len(), TOKEN_BYTES);
            assert_eq!(realm.open(listing, &token).unwrap(), Some(CURSOR));
            // Another replica of the realm derives the same key.
            assert_eq!(tokens(1, "dev").open(listing, &token).unwrap(), Some(CURSOR));
            // Another realm: another VRF key, or the same key under another name.
            assert!(tokens(2, "dev").open(listing, &token).is_err());
            assert!(tokens(1, "dev2").open(listing, &token).is_err());
        }
        let token = realm.issue(alice, CURSOR);
        assert!(realm.open(bob, &token).is_err(), "another identity");
        assert!(realm.open(Listing::Epochs, &token).is_err(), "another call");
        assert!(realm.open(alice, &realm.issue(Listing::Epochs, CURSOR)).is_err(), "another call");
        assert_eq!(realm.open(alice, &[]).unwrap(), None, "the empty token starts a listing");
    }

    #[test]
    fn every_changed_byte_and_every_other_length_is_refused() {
        let realm = tokens(1, "dev");
        for listing in [Listing::Epochs, Listing::History(Index([3; 32]))] {
            let token = realm.issue(listing, CURSOR);
            for i in 0..token.len() {
                for bit in 0..8 {
                    let mut changed = token.clone();
                    changed[i] ^= 1 << bit;
                    let e = realm.open(listing, &changed).unwrap_err();
                    assert_eq!(e.code(), tonic::Code::InvalidArgument);
                    assert!(e.message().contains("not issued by this realm for this call"), "{e}");
                }
            }
            for len in 1..token.len() {
                assert!(realm.open(listing, &token[..len]).is_err());
            }
            let mut longer = token.clone();
            longer.push(0);
            assert!(realm.open(listing, &longer).is_err());
        }
    }

    #[test]
    fn the_old_unauthenticated_format_is_refused() {
        let realm = tokens(1, "dev");
        let mut old = vec![1u8];
        old.extend_from_slice(&1u64.to_be_bytes());
        old.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(realm.open(Listing::Epochs, &old).is_err());
    }

    #[test]
    fn the_key_is_not_the_vrf_key_and_depends_on_the_label() {
        let vrf = VrfSecretKey::from_seed(&[1; 32]);
        let key = vrf.derive_secret(KEY_LABEL);
        assert_ne!(key, vrf.derive_secret("another purpose"));
        assert_ne!(key, VrfSecretKey::from_seed(&[2; 32]).derive_secret(KEY_LABEL));
    }
}
