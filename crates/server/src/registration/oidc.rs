//! Registration method `oidc`: an OpenID Connect ID token from a configured issuer proves that
//! whoever registers an identity controls it at that issuer (issue 13, section 1).
//!
//! # What is checked
//! [`verify_id_token`] checks, in this order, and refuses with its own [`OidcError`] variant
//! at the first failure:
//! 1. the token's size ([`ID_TOKEN_MAX_BYTES`]) and its JWS compact form (jsonwebtoken parses it;
//!    nothing here parses a JWT itself);
//! 2. the header's `alg`: only RS256, ES256 and EdDSA (Ed25519). `none` is refused, and so is
//!    every HS* algorithm: an issuer's keys are public, and a token "signed" with a public key
//!    used as an HMAC secret is the classic key-confusion forgery;
//! 3. the header's `kid` names a key of the issuer's JWKS ([`JwkKeys`]), and that key is of the
//!    type the `alg` needs (RSA for RS256, EC P-256 for ES256, OKP Ed25519 for EdDSA; a JWK's own
//!    `alg`, when present, must agree);
//! 4. the signature (jsonwebtoken, on its pure-Rust `rust_crypto` backend). No claim is read
//!    before the signature is verified;
//! 5. `iss` equals the rule's issuer, `aud` (a string or an array) contains the rule's audience;
//! 6. `exp` is present and not past, `nbf` and `iat` (optional) not in the future, each with the
//!    caller's skew;
//! 7. the identity claim (`email` by default) is present, and equals the registered user id once
//!    run through [`canonical_user_id`] with the realm's local-part rule; for `email`,
//!    `email_verified` must be the JSON boolean `true`;
//! 8. `nonce` equals [`nonce_for_update`]: base64url (no padding) of the 32-byte update id, so a
//!    token registers one exact update and cannot be replayed for another key.
//!
//! # Time comes from the caller, never from the host
//! jsonwebtoken's `Validation` reads `SystemTime` for `exp` and `nbf`. Its time checks are all
//! switched off here (`validate_exp`, `validate_nbf`, `validate_aud` false, no required claims,
//! no `iss`): with those off it never reads the clock, and it only verifies the signature. Every
//! claim is then checked by this module against `now_ms`, which the replica takes from its
//! injected [`keyraft_core::clock::Clock`], so a simulation's clock decides expiry, and each
//! failure gets its own error. The key source ([`Jwks`]) takes the same `now_ms` to decide when
//! to re-read its file or URL.
//!
//! Boundaries are RFC 7519's: a token is valid while `now < exp + skew`, usable from
//! `nbf - skew` on, and `iat` may be at most `skew` ahead of `now`. NumericDates are seconds and
//! may carry a fraction; they are compared in milliseconds.
//!
//! # Ed25519 here is not the protocol's Ed25519
//! The protocol checks its own Ed25519 signatures with `keyraft_core::ed25519` so that every
//! replica and verifier agrees on edge cases (clippy.toml forbids the other checks). EdDSA ID
//! tokens are checked by jsonwebtoken's ed25519-dalek instead: the issuer's signature is judged
//! only here, at the edge, before the update is proposed, and is neither logged nor replayed by
//! verifiers, so no two parties need to agree on it.
//!
//! # What is not checked
//! `azp`, `at_hash`, `auth_time` and `acr`: a registration needs to know who the issuer says
//! this is and that the token was minted for this update, not how the user signed in. `iat` is
//! optional here (OIDC Core requires it, but some issuers' test tokens omit it and nothing here
//! depends on it besides the future check).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use keyraft_core::identity::{canonical_user_id, IdentityError, LocalPartRule};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::Mutex as AsyncMutex;

#[doc(hidden)]
#[path = "oidc_testing.rs"]
pub mod testing;

/// Longest ID token accepted, in bytes. Real ones are one to two kilobytes; the limit keeps a
/// hostile caller from making the edge base64-decode and parse megabytes.
pub const ID_TOKEN_MAX_BYTES: usize = 16 * 1024;
/// Largest JWKS document accepted from a file or a URL, in bytes.
pub const JWKS_MAX_BYTES: usize = 1024 * 1024;
/// Most keys one JWKS may hold. Issuers publish two or three (current and next).
pub const JWKS_KEYS_MAX: usize = 64;
/// Smallest RSA modulus accepted, in bits (NIST SP 800-57: 2048 is the floor today).
pub const RSA_MODULUS_MIN_BITS: usize = 2048;
/// Largest RSA modulus accepted, in bits: the most the `rsa` crate verifies with.
pub const RSA_MODULUS_MAX_BITS: usize = 4096;
/// The identity claim when a rule names none.
pub const DEFAULT_IDENTITY_CLAIM: &str = "email";

/// What the realm configuration says about one issuer whose ID tokens may register identities.
/// It is public, part of the realm: every replica checks a token against the same rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcRule {
    /// The issuer's identifier, compared byte for byte with the token's `iss`
    /// (e.g. `https://accounts.example.com`).
    pub issuer: String,
    /// The client id the realm registered at the issuer; the token's `aud` must contain it.
    pub audience: String,
    /// The claim that holds the identity. Default `email`, which also requires
    /// `email_verified: true`.
    #[serde(default = "default_claim")]
    pub claim: String,
}

fn default_claim() -> String {
    DEFAULT_IDENTITY_CLAIM.to_owned()
}

/// What a token must be bound to: the registration being checked.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The canonical user id being registered (already through `canonical_user_id`).
    pub user_id: &'a str,
    /// The realm's local-part rule, applied to the identity claim before comparing.
    pub local_part_rule: LocalPartRule,
    /// The id of the update being registered; the token's `nonce` must be
    /// [`nonce_for_update`] of it.
    pub update_id: &'a [u8; 32],
}

/// The `nonce` a token must carry to register the update `update_id`: base64url without
/// padding of its 32 bytes, by the one rule clients use too
/// ([`keyraft_core::registration::oidc_nonce`]).
pub fn nonce_for_update(update_id: &[u8; 32]) -> String {
    keyraft_core::registration::oidc_nonce(update_id)
}

/// The signature algorithms an ID token may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IdTokenAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256, over an RSA key of 2048 to 4096 bits.
    Rs256,
    /// ECDSA over P-256 with SHA-256.
    Es256,
    /// Ed25519 (`alg: EdDSA`, `kty: OKP`, `crv: Ed25519`).
    EdDsa,
}

impl IdTokenAlgorithm {
    /// The JOSE name, as in a header's `alg`.
    pub fn jose_name(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
        }
    }

    fn jwt(self) -> Algorithm {
        match self {
            Self::Rs256 => Algorithm::RS256,
            Self::Es256 => Algorithm::ES256,
            Self::EdDsa => Algorithm::EdDSA,
        }
    }
}

impl fmt::Display for IdTokenAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.jose_name())
    }
}

/// Proof that an ID token passed [`verify_id_token`] for one registration. Only this module can
/// make one, so code that takes a `VerifiedIdToken` cannot be handed an unchecked token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedIdToken {
    issuer: String,
    subject: Option<String>,
    user_id: String,
    kid: String,
    algorithm: IdTokenAlgorithm,
    expires_at_ms: u64,
}

impl VerifiedIdToken {
    /// The issuer that vouched for the identity.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }
    /// The issuer's stable subject id (`sub`), when the token has one: for logs.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }
    /// The canonical user id the token was checked against.
    pub fn user_id(&self) -> &str {
        &self.user_id
    }
    /// The JWKS key that signed the token.
    pub fn kid(&self) -> &str {
        &self.kid
    }
    /// The signature algorithm.
    pub fn algorithm(&self) -> IdTokenAlgorithm {
        self.algorithm
    }
    /// When the token expires (its `exp`), in milliseconds since the Unix epoch.
    pub fn expires_at_ms(&self) -> u64 {
        self.expires_at_ms
    }
}

/// Why an ID token does not register this identity. Every variant is the fault of whoever sent
/// the token, except [`OidcError::IssuerNotConfigured`] and [`OidcError::KeyUnusable`], which
/// name a configuration problem of the realm or the issuer but are still answered as a refusal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OidcError {
    /// The token is longer than [`ID_TOKEN_MAX_BYTES`].
    #[error("ID token is {len_bytes} bytes, more than the {max_bytes} accepted")]
    TooLong {
        /// The token's length.
        len_bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// Not a JWS compact serialization (three base64url parts with a JSON header and payload),
    /// or a claim the checks need is not of its JSON type.
    #[error("ID token is malformed: {reason}")]
    Malformed {
        /// What jsonwebtoken or the claim check found.
        reason: String,
    },
    /// A claim has the wrong JSON type (e.g. `exp` a string).
    #[error("ID token claim `{claim}` must be {expected}")]
    ClaimType {
        /// The claim.
        claim: String,
        /// What it must be.
        expected: &'static str,
    },
    /// `alg: none`: an unsigned token.
    #[error("ID token header has alg \"none\": unsigned tokens are refused")]
    AlgNone,
    /// An HMAC algorithm: refused, since an issuer's keys are public and an HMAC over a public
    /// key proves nothing (key confusion).
    #[error("ID token header has alg {alg}: HMAC-signed ID tokens are refused (the issuer's keys are public, so an HMAC proves nothing)")]
    HmacRefused {
        /// The header's `alg`.
        alg: String,
    },
    /// Any other algorithm than RS256, ES256 and EdDSA.
    #[error("ID token header has alg {alg}, which is not allowed (allowed: RS256, ES256, EdDSA)")]
    AlgorithmNotAllowed {
        /// The header's `alg`.
        alg: String,
    },
    /// The header has no `kid`, so the key cannot be chosen.
    #[error("ID token header has no kid: the issuer's key cannot be chosen")]
    MissingKid,
    /// The header's `kid` is not in the issuer's JWKS.
    #[error("ID token kid \"{kid}\" is not in the JWKS of issuer {issuer}: the token was not signed by a known key of the issuer, or the issuer rotated its keys and this replica's JWKS needs a refresh")]
    UnknownKid {
        /// The header's `kid`.
        kid: String,
        /// The issuer whose JWKS was searched.
        issuer: String,
    },
    /// The JWKS has this `kid`, but the key cannot verify ID tokens.
    #[error("the JWKS key \"{kid}\" cannot verify ID tokens: {reason}")]
    KeyUnusable {
        /// The key's `kid`.
        kid: String,
        /// Why (e.g. a symmetric key, an unsupported curve, `use: enc`).
        reason: String,
    },
    /// The header's `alg` does not fit the key's type or its JWK `alg`.
    #[error("ID token header has alg {token_alg} but JWKS key \"{kid}\" is for {key_alg}")]
    KeyAlgorithmMismatch {
        /// The key's `kid`.
        kid: String,
        /// The header's `alg`.
        token_alg: IdTokenAlgorithm,
        /// The one algorithm the key verifies.
        key_alg: IdTokenAlgorithm,
    },
    /// The signature does not verify under the named key (a forged or altered token).
    #[error("ID token signature does not verify under JWKS key \"{kid}\"")]
    BadSignature {
        /// The key's `kid`.
        kid: String,
    },
    /// No `iss` claim.
    #[error("ID token has no iss claim")]
    MissingIssuer,
    /// `iss` is another issuer than the rule's.
    #[error("ID token iss is \"{found}\", expected \"{expected}\"")]
    WrongIssuer {
        /// The rule's issuer.
        expected: String,
        /// The token's `iss`.
        found: String,
    },
    /// No `aud` claim.
    #[error("ID token has no aud claim")]
    MissingAudience,
    /// `aud` does not contain the rule's audience.
    #[error("ID token aud {found} does not contain the realm's client id \"{expected}\"")]
    WrongAudience {
        /// The rule's audience.
        expected: String,
        /// The token's `aud`, as JSON.
        found: String,
    },
    /// No `exp` claim: a token that never expires is refused.
    #[error("ID token has no exp claim")]
    MissingExpiry,
    /// `exp` plus the skew is not after now.
    #[error("ID token expired at {exp_ms} ms (now {now_ms} ms, skew {skew_ms} ms)")]
    Expired {
        /// The token's `exp`, in milliseconds.
        exp_ms: u64,
        /// The replica's clock.
        now_ms: u64,
        /// The realm's allowed clock skew.
        skew_ms: u64,
    },
    /// `nbf` minus the skew is after now.
    #[error("ID token is not valid before {nbf_ms} ms (now {now_ms} ms, skew {skew_ms} ms)")]
    NotYetValid {
        /// The token's `nbf`, in milliseconds.
        nbf_ms: u64,
        /// The replica's clock.
        now_ms: u64,
        /// The realm's allowed clock skew.
        skew_ms: u64,
    },
    /// `iat` is more than the skew ahead of now.
    #[error("ID token was issued in the future, at {iat_ms} ms (now {now_ms} ms, skew {skew_ms} ms)")]
    IssuedInFuture {
        /// The token's `iat`, in milliseconds.
        iat_ms: u64,
        /// The replica's clock.
        now_ms: u64,
        /// The realm's allowed clock skew.
        skew_ms: u64,
    },
    /// The identity claim is absent.
    #[error("ID token has no {claim} claim, which holds the identity")]
    MissingIdentityClaim {
        /// The rule's identity claim.
        claim: String,
    },
    /// The identity claim has no canonical form.
    #[error("ID token {claim} claim is not a valid user id: {source}")]
    IdentityClaimInvalid {
        /// The rule's identity claim.
        claim: String,
        /// Why it has no canonical form.
        #[source]
        source: IdentityError,
    },
    /// The identity claim names another identity than the one being registered.
    #[error("ID token {claim} claim is \"{found}\" (canonical form), but the registration is for \"{expected}\"")]
    IdentityMismatch {
        /// The rule's identity claim.
        claim: String,
        /// The claim's canonical form.
        found: String,
        /// The user id being registered.
        expected: String,
    },
    /// `email` is the identity claim but `email_verified` is absent.
    #[error("ID token has no email_verified claim: the issuer does not say it verified the address")]
    MissingEmailVerified,
    /// `email_verified` is present but not the JSON boolean `true`.
    #[error("ID token email_verified is {found}, not true: the issuer did not verify the address")]
    EmailNotVerified {
        /// The claim's value, as JSON.
        found: String,
    },
    /// No `nonce`: the token is not bound to an update.
    #[error("ID token has no nonce claim: it must be base64url of the update id")]
    MissingNonce,
    /// The `nonce` is not that of this update: a token minted for another registration.
    #[error("ID token nonce \"{found}\" is not this update's \"{expected}\" (base64url of the update id)")]
    NonceMismatch {
        /// `nonce_for_update` of the update being registered.
        expected: String,
        /// The token's nonce.
        found: String,
    },
    /// No key source is configured on this replica for the rule's issuer.
    #[error("no JWKS is configured on this replica for issuer {issuer}")]
    IssuerNotConfigured {
        /// The rule's issuer.
        issuer: String,
    },
}

impl OidcError {
    /// True when the token could not even be read: answered with INVALID_ARGUMENT. Every other
    /// refusal (a readable token that is forged, expired or for someone else) is
    /// PERMISSION_DENIED.
    pub fn is_malformed(&self) -> bool {
        matches!(self, Self::TooLong { .. } | Self::Malformed { .. } | Self::ClaimType { .. })
    }
}

/// One usable verification key.
#[derive(Debug, Clone)]
struct UsableKey {
    algorithm: IdTokenAlgorithm,
    key: DecodingKey,
}

/// The keys of one issuer's JWKS, by `kid`. Keys that cannot verify ID tokens (symmetric keys,
/// other curves, `use: enc`, bad material) are kept with the reason, so a token naming one is
/// refused with that reason rather than as an unknown kid.
#[derive(Debug, Clone, Default)]
pub struct JwkKeys {
    keys: BTreeMap<String, Result<UsableKey, String>>,
}

impl JwkKeys {
    /// Parses a JWKS document (`{"keys": [...]}`).
    ///
    /// # Errors
    /// The document is too large, not JSON, has no `keys` array, too many keys, a duplicate
    /// `kid`, or no key that can verify ID tokens.
    pub fn from_json(bytes: &[u8]) -> Result<Self, JwksError> {
        if jsonwebtoken::crypto::CryptoProvider::try_get_default().is_none() {
            // Only a build that enables two jsonwebtoken backends gets here; refusing keys
            // beats jsonwebtoken's panic on the first token.
            return Err(JwksError::NoCryptoProvider);
        }
        if bytes.len() > JWKS_MAX_BYTES {
            return Err(JwksError::TooLarge { len_bytes: bytes.len(), max_bytes: JWKS_MAX_BYTES });
        }
        let document: Value =
            serde_json::from_slice(bytes).map_err(|e| JwksError::NotJson { reason: e.to_string() })?;
        let Some(entries) = document.get("keys").and_then(Value::as_array) else {
            return Err(JwksError::NoKeysArray);
        };
        if entries.len() > JWKS_KEYS_MAX {
            return Err(JwksError::TooManyKeys { count: entries.len(), max: JWKS_KEYS_MAX });
        }
        let mut keys = BTreeMap::new();
        for (index, entry) in entries.iter().enumerate() {
            // A key without a kid cannot be named by a token: skipped, not an error, since
            // issuers publish keys for other uses too.
            let Some(kid) = entry.get("kid").and_then(Value::as_str) else {
                tracing::debug!(index, "JWKS key without a kid skipped");
                continue;
            };
            if keys.insert(kid.to_owned(), classify_jwk(entry)).is_some() {
                return Err(JwksError::DuplicateKid { kid: kid.to_owned() });
            }
        }
        let parsed = Self { keys };
        if parsed.usable_kids().next().is_none() {
            return Err(JwksError::NoUsableKey { unusable: parsed.unusable_reasons() });
        }
        Ok(parsed)
    }

    /// The kids of the keys that can verify ID tokens.
    pub fn usable_kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().filter(|(_, k)| k.is_ok()).map(|(kid, _)| kid.as_str())
    }

    /// Whether the set has no usable key (only before a first successful load).
    pub fn is_empty(&self) -> bool {
        self.usable_kids().next().is_none()
    }

    fn unusable_reasons(&self) -> String {
        let reasons: Vec<String> =
            self.keys.iter().filter_map(|(kid, k)| k.as_ref().err().map(|r| format!("\"{kid}\": {r}"))).collect();
        if reasons.is_empty() {
            "no key has a kid".to_owned()
        } else {
            reasons.join("; ")
        }
    }
}

/// What a JWK can verify, or why it cannot.
fn classify_jwk(entry: &Value) -> Result<UsableKey, String> {
    let jwk: Jwk = serde_json::from_value(entry.clone()).map_err(|e| format!("not a valid JWK: {e}"))?;
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(other) => return Err(format!("its use is {other:?}, not sig")),
    }
    let algorithm = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            check_rsa_material(&p.n, &p.e)?;
            IdTokenAlgorithm::Rs256
        }
        AlgorithmParameters::EllipticCurve(p) => {
            if p.curve != EllipticCurve::P256 {
                return Err(format!("curve {:?} is not supported (only P-256, for ES256)", p.curve));
            }
            check_length("x", &p.x, 32)?;
            check_length("y", &p.y, 32)?;
            IdTokenAlgorithm::Es256
        }
        AlgorithmParameters::OctetKeyPair(p) => {
            if p.curve != EllipticCurve::Ed25519 {
                return Err(format!("curve {:?} is not supported (only Ed25519, for EdDSA)", p.curve));
            }
            check_length("x", &p.x, 32)?;
            IdTokenAlgorithm::EdDsa
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err("it is a symmetric (oct) key, and HMAC-signed ID tokens are refused".to_owned())
        }
        _ => return Err("its kty is not supported (only RSA, EC P-256, OKP Ed25519)".to_owned()),
    };
    if let Some(declared) = &jwk.common.key_algorithm {
        let declared = declared.to_string();
        if declared != algorithm.jose_name() {
            return Err(format!("its alg is {declared}, but only {algorithm} fits its key type"));
        }
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("its key material is invalid: {e}"))?;
    // Building a verifier checks the point (EC, Ed25519) before any token needs it; an empty
    // signature fails to verify, which is the expected answer. RSA keys are only checked by
    // size above: the rsa crate's checks happen inside verification.
    if jsonwebtoken::crypto::verify("", b"", &key, algorithm.jwt()).is_err() {
        return Err(format!("its public key is not a valid {algorithm} key"));
    }
    Ok(UsableKey { algorithm, key })
}

fn check_length(field: &str, value: &str, bytes: usize) -> Result<(), String> {
    let decoded = URL_SAFE_NO_PAD.decode(value).map_err(|e| format!("its {field} is not base64url: {e}"))?;
    if decoded.len() != bytes {
        return Err(format!("its {field} is {} bytes, expected {bytes}", decoded.len()));
    }
    Ok(())
}

fn check_rsa_material(n: &str, e: &str) -> Result<(), String> {
    let n = URL_SAFE_NO_PAD.decode(n).map_err(|err| format!("its n is not base64url: {err}"))?;
    let e = URL_SAFE_NO_PAD.decode(e).map_err(|err| format!("its e is not base64url: {err}"))?;
    let n_bits = match n.iter().position(|b| *b != 0) {
        Some(first) => (n.len() - first) * 8 - n[first].leading_zeros() as usize,
        None => 0,
    };
    if !(RSA_MODULUS_MIN_BITS..=RSA_MODULUS_MAX_BITS).contains(&n_bits) {
        return Err(format!("its modulus is {n_bits} bits, outside {RSA_MODULUS_MIN_BITS}..={RSA_MODULUS_MAX_BITS}"));
    }
    if e.is_empty() || e.len() > 8 {
        return Err(format!("its exponent is {} bytes, expected 1 to 8", e.len()));
    }
    Ok(())
}

/// Checks an ID token for one registration against one issuer's keys. See the module docs
/// for the checks and their order. `now_ms` is the replica's clock (not the host's), `skew_ms`
/// the realm's allowed clock difference with the issuer.
///
/// # Errors
/// The first check that fails, each with its own [`OidcError`] variant.
pub fn verify_id_token(
    token: &str,
    rule: &OidcRule,
    keys: &JwkKeys,
    expected: &Expected<'_>,
    now_ms: u64,
    skew_ms: u64,
) -> Result<VerifiedIdToken, OidcError> {
    if token.len() > ID_TOKEN_MAX_BYTES {
        return Err(OidcError::TooLong { len_bytes: token.len(), max_bytes: ID_TOKEN_MAX_BYTES });
    }
    let (kid, algorithm, claims) = verify_signature(token, rule, keys)?;
    let claims = Claims(&claims);
    claims.check_issuer(rule)?;
    claims.check_audience(rule)?;
    let expires_at_ms = claims.check_times(now_ms, skew_ms)?;
    claims.check_identity(rule, expected)?;
    claims.check_nonce(expected)?;
    Ok(VerifiedIdToken {
        issuer: rule.issuer.clone(),
        subject: claims.0.get("sub").and_then(Value::as_str).map(str::to_owned),
        user_id: expected.user_id.to_owned(),
        kid,
        algorithm,
        expires_at_ms,
    })
}

/// Steps 1 to 4: the header, the key, the signature. Returns the verified claims.
fn verify_signature(
    token: &str,
    rule: &OidcRule,
    keys: &JwkKeys,
) -> Result<(String, IdTokenAlgorithm, Map<String, Value>), OidcError> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| header_refusal(token, &e))?;
    let algorithm = match header.alg {
        Algorithm::RS256 => IdTokenAlgorithm::Rs256,
        Algorithm::ES256 => IdTokenAlgorithm::Es256,
        Algorithm::EdDSA => IdTokenAlgorithm::EdDsa,
        alg @ (Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) => {
            return Err(OidcError::HmacRefused { alg: format!("{alg:?}") })
        }
        alg => return Err(OidcError::AlgorithmNotAllowed { alg: format!("{alg:?}") }),
    };
    let kid = header.kid.ok_or(OidcError::MissingKid)?;
    let key = match keys.keys.get(&kid) {
        None => return Err(OidcError::UnknownKid { kid, issuer: rule.issuer.clone() }),
        Some(Err(reason)) => return Err(OidcError::KeyUnusable { kid, reason: reason.clone() }),
        Some(Ok(key)) => key,
    };
    if key.algorithm != algorithm {
        return Err(OidcError::KeyAlgorithmMismatch { kid, token_alg: algorithm, key_alg: key.algorithm });
    }
    // Only the signature: with every claim check off, jsonwebtoken never reads the host clock.
    let mut validation = Validation::new(algorithm.jwt());
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data =
        jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation).map_err(|e| match e.kind() {
            JwtErrorKind::InvalidSignature => OidcError::BadSignature { kid: kid.clone() },
            JwtErrorKind::InvalidEcdsaKey
            | JwtErrorKind::InvalidEddsaKey
            | JwtErrorKind::InvalidRsaKey(_)
            | JwtErrorKind::InvalidKeyFormat => OidcError::KeyUnusable { kid: kid.clone(), reason: e.to_string() },
            _ => OidcError::Malformed { reason: e.to_string() },
        })?;
    Ok((kid, algorithm, data.claims))
}

/// Names the refusal of a header jsonwebtoken could not read. `alg: none` and algorithms it
/// does not know do not deserialize into its `Header`, so the header's JSON is read once more,
/// only to say which it was; nothing read here is trusted.
fn header_refusal(token: &str, error: &jsonwebtoken::errors::Error) -> OidcError {
    let alg = token
        .split('.')
        .next()
        .and_then(|part| URL_SAFE_NO_PAD.decode(part).ok())
        .and_then(|json| serde_json::from_slice::<Value>(&json).ok())
        .and_then(|header| header.get("alg").and_then(Value::as_str).map(str::to_owned));
    match alg {
        Some(alg) if alg.eq_ignore_ascii_case("none") => OidcError::AlgNone,
        Some(alg) if alg.parse::<Algorithm>().is_err() => OidcError::AlgorithmNotAllowed { alg },
        _ => OidcError::Malformed { reason: format!("header: {error}") },
    }
}

/// The claims of a token whose signature verified.
struct Claims<'a>(&'a Map<String, Value>);

impl Claims<'_> {
    fn string(&self, claim: &'static str) -> Result<Option<&str>, OidcError> {
        match self.0.get(claim) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(OidcError::ClaimType { claim: claim.to_owned(), expected: "a string" }),
        }
    }

    /// A NumericDate (seconds since the epoch, maybe with a fraction) in milliseconds.
    fn time_ms(&self, claim: &'static str) -> Result<Option<u64>, OidcError> {
        const EXPECTED: &str = "a non-negative number of seconds";
        match self.0.get(claim) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => {
                if let Some(seconds) = n.as_u64() {
                    return Ok(Some(seconds.saturating_mul(1000)));
                }
                match n.as_f64() {
                    // `as` saturates for floats beyond u64, and the range check keeps out NaN.
                    Some(seconds) if seconds >= 0.0 && seconds.is_finite() => Ok(Some((seconds * 1000.0) as u64)),
                    _ => Err(OidcError::ClaimType { claim: claim.to_owned(), expected: EXPECTED }),
                }
            }
            Some(_) => Err(OidcError::ClaimType { claim: claim.to_owned(), expected: EXPECTED }),
        }
    }

    fn check_issuer(&self, rule: &OidcRule) -> Result<(), OidcError> {
        match self.string("iss")? {
            None => Err(OidcError::MissingIssuer),
            Some(iss) if iss == rule.issuer => Ok(()),
            Some(iss) => Err(OidcError::WrongIssuer { expected: rule.issuer.clone(), found: iss.to_owned() }),
        }
    }

    fn check_audience(&self, rule: &OidcRule) -> Result<(), OidcError> {
        const EXPECTED: &str = "a string or an array of strings";
        let Some(aud) = self.0.get("aud") else {
            return Err(OidcError::MissingAudience);
        };
        let contains = match aud {
            Value::String(one) => one == &rule.audience,
            Value::Array(many) => {
                let mut found = false;
                for entry in many {
                    let Value::String(one) = entry else {
                        return Err(OidcError::ClaimType { claim: "aud".to_owned(), expected: EXPECTED });
                    };
                    found |= one == &rule.audience;
                }
                found
            }
            Value::Null => return Err(OidcError::MissingAudience),
            _ => return Err(OidcError::ClaimType { claim: "aud".to_owned(), expected: EXPECTED }),
        };
        if contains {
            Ok(())
        } else {
            Err(OidcError::WrongAudience { expected: rule.audience.clone(), found: aud.to_string() })
        }
    }

    /// Returns `exp` in milliseconds.
    fn check_times(&self, now_ms: u64, skew_ms: u64) -> Result<u64, OidcError> {
        let exp_ms = self.time_ms("exp")?.ok_or(OidcError::MissingExpiry)?;
        if now_ms >= exp_ms.saturating_add(skew_ms) {
            return Err(OidcError::Expired { exp_ms, now_ms, skew_ms });
        }
        if let Some(nbf_ms) = self.time_ms("nbf")? {
            if nbf_ms > now_ms.saturating_add(skew_ms) {
                return Err(OidcError::NotYetValid { nbf_ms, now_ms, skew_ms });
            }
        }
        if let Some(iat_ms) = self.time_ms("iat")? {
            if iat_ms > now_ms.saturating_add(skew_ms) {
                return Err(OidcError::IssuedInFuture { iat_ms, now_ms, skew_ms });
            }
        }
        Ok(exp_ms)
    }

    fn check_identity(&self, rule: &OidcRule, expected: &Expected<'_>) -> Result<(), OidcError> {
        let claim = rule.claim.as_str();
        let raw = match self.0.get(claim) {
            None | Some(Value::Null) => return Err(OidcError::MissingIdentityClaim { claim: rule.claim.clone() }),
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(OidcError::ClaimType { claim: rule.claim.clone(), expected: "a string" }),
        };
        let canonical = canonical_user_id(raw, expected.local_part_rule)
            .map_err(|source| OidcError::IdentityClaimInvalid { claim: rule.claim.clone(), source })?;
        if canonical.as_str() != expected.user_id {
            return Err(OidcError::IdentityMismatch {
                claim: rule.claim.clone(),
                found: canonical.as_str().to_owned(),
                expected: expected.user_id.to_owned(),
            });
        }
        if claim == "email" {
            match self.0.get("email_verified") {
                None | Some(Value::Null) => return Err(OidcError::MissingEmailVerified),
                Some(Value::Bool(true)) => {}
                Some(other) => return Err(OidcError::EmailNotVerified { found: other.to_string() }),
            }
        }
        Ok(())
    }

    fn check_nonce(&self, expected: &Expected<'_>) -> Result<(), OidcError> {
        let want = nonce_for_update(expected.update_id);
        match self.string("nonce")? {
            None => Err(OidcError::MissingNonce),
            Some(nonce) if nonce == want => Ok(()),
            Some(nonce) => Err(OidcError::NonceMismatch { expected: want, found: nonce.to_owned() }),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Key sources.

/// Default interval between reads of a JWKS file (a metadata check; the file is read only when
/// it changed), in milliseconds.
pub const DEFAULT_FILE_REFRESH_MS: u64 = 1_000;
/// Default interval between fetches of a JWKS URL, in milliseconds (an hour: issuers announce
/// new keys well ahead, and an unknown kid triggers an early fetch anyway).
pub const DEFAULT_URL_REFRESH_MS: u64 = 3_600_000;
/// Default least interval between early re-reads triggered by an unknown kid, in milliseconds.
pub const DEFAULT_MIN_REFETCH_MS: u64 = 30_000;
/// Default timeout of one JWKS fetch, in milliseconds.
pub const DEFAULT_FETCH_TIMEOUT_MS: u64 = 5_000;

/// Where one replica gets the keys of one issuer: `[[registration.oidc]]` in the replica
/// configuration. Exactly one of `jwks_file` and `jwks_url`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcIssuerConfig {
    /// The issuer, as in the realm's rule and the tokens' `iss`.
    pub issuer: String,
    /// A JWKS file, re-read when its size, modification time or inode changes. A new file that
    /// does not parse keeps the old keys (and is logged once).
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL (the issuer's `jwks_uri`), fetched every `refresh_ms`. `https://`, or
    /// `http://` to a loopback address only. Redirects are not followed.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// How often the source is re-read, in milliseconds. Default 1 000 for a file (a metadata
    /// check), 3 600 000 for a URL.
    #[serde(default)]
    pub refresh_ms: Option<u64>,
    /// Least time between two early re-reads caused by a token naming an unknown kid, and
    /// between retries after a failed fetch, in milliseconds. Default 30 000.
    #[serde(default = "default_min_refetch_ms")]
    pub min_refetch_ms: u64,
    /// Timeout of one fetch of `jwks_url`, in milliseconds. Default 5 000.
    #[serde(default = "default_fetch_timeout_ms")]
    pub fetch_timeout_ms: u64,
}

fn default_min_refetch_ms() -> u64 {
    DEFAULT_MIN_REFETCH_MS
}

fn default_fetch_timeout_ms() -> u64 {
    DEFAULT_FETCH_TIMEOUT_MS
}

impl OidcIssuerConfig {
    /// A configuration reading `path`, with the defaults.
    pub fn file(issuer: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        Self {
            issuer: issuer.into(),
            jwks_file: Some(path.into()),
            jwks_url: None,
            refresh_ms: None,
            min_refetch_ms: DEFAULT_MIN_REFETCH_MS,
            fetch_timeout_ms: DEFAULT_FETCH_TIMEOUT_MS,
        }
    }

    /// A configuration fetching `url`, with the defaults.
    pub fn url(issuer: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            jwks_file: None,
            jwks_url: Some(url.into()),
            refresh_ms: None,
            min_refetch_ms: DEFAULT_MIN_REFETCH_MS,
            fetch_timeout_ms: DEFAULT_FETCH_TIMEOUT_MS,
        }
    }

    /// The refresh interval in force, defaults applied.
    pub fn effective_refresh_ms(&self) -> u64 {
        self.refresh_ms.unwrap_or(if self.jwks_url.is_some() {
            DEFAULT_URL_REFRESH_MS
        } else {
            DEFAULT_FILE_REFRESH_MS
        })
    }

    /// Checks the configuration on its own (no file is read, no URL fetched).
    ///
    /// # Errors
    /// The first field that is wrong.
    pub fn validate(&self) -> Result<(), OidcConfigError> {
        if self.issuer.is_empty() {
            return Err(OidcConfigError::EmptyIssuer);
        }
        match (&self.jwks_file, &self.jwks_url) {
            (None, None) => return Err(OidcConfigError::NoSource { issuer: self.issuer.clone() }),
            (Some(_), Some(_)) => return Err(OidcConfigError::BothSources { issuer: self.issuer.clone() }),
            (None, Some(url)) => {
                parse_jwks_url(url)?;
            }
            (Some(_), None) => {}
        }
        for (field, value) in [
            ("refresh_ms", self.effective_refresh_ms()),
            ("min_refetch_ms", self.min_refetch_ms),
            ("fetch_timeout_ms", self.fetch_timeout_ms),
        ] {
            if value == 0 {
                return Err(OidcConfigError::Zero { issuer: self.issuer.clone(), field });
            }
        }
        Ok(())
    }
}

fn parse_jwks_url(url: &str) -> Result<reqwest::Url, OidcConfigError> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| OidcConfigError::BadUrl { url: url.to_owned(), reason: e.to_string() })?;
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" => {
            let loopback = parsed.host_str().is_some_and(|host| {
                host.eq_ignore_ascii_case("localhost")
                    || host
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            });
            if loopback {
                Ok(parsed)
            } else {
                Err(OidcConfigError::PlainHttp { url: url.to_owned() })
            }
        }
        other => {
            Err(OidcConfigError::BadUrl { url: url.to_owned(), reason: format!("scheme {other} is not https or http") })
        }
    }
}

/// A `[[registration.oidc]]` entry that cannot be used. The operator's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OidcConfigError {
    /// `issuer` is empty.
    #[error("registration.oidc: issuer is empty")]
    EmptyIssuer,
    /// Neither `jwks_file` nor `jwks_url`.
    #[error("registration.oidc for issuer {issuer}: set one of jwks_file and jwks_url")]
    NoSource {
        /// The entry's issuer.
        issuer: String,
    },
    /// Both `jwks_file` and `jwks_url`.
    #[error("registration.oidc for issuer {issuer}: set only one of jwks_file and jwks_url")]
    BothSources {
        /// The entry's issuer.
        issuer: String,
    },
    /// Two entries for one issuer.
    #[error("registration.oidc: issuer {issuer} is configured twice")]
    DuplicateIssuer {
        /// The issuer.
        issuer: String,
    },
    /// `jwks_url` does not parse or has another scheme.
    #[error("registration.oidc: jwks_url {url} is not usable: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// A plain-http `jwks_url` to another host than loopback: anyone on the path could
    /// replace the keys.
    #[error("registration.oidc: jwks_url {url} is plain http to a host that is not loopback; use https")]
    PlainHttp {
        /// The URL.
        url: String,
    },
    /// An interval or timeout of zero.
    #[error("registration.oidc for issuer {issuer}: {field} must be more than 0")]
    Zero {
        /// The entry's issuer.
        issuer: String,
        /// The field.
        field: &'static str,
    },
    /// The HTTP client could not be built (e.g. the platform's root certificates).
    #[error("registration.oidc: cannot build the HTTP client for jwks_url: {reason}")]
    HttpClient {
        /// Why.
        reason: String,
    },
    /// The JWKS file could not be loaded at start.
    #[error("registration.oidc for issuer {issuer}: {source}")]
    Jwks {
        /// The entry's issuer.
        issuer: String,
        /// Why.
        #[source]
        source: JwksError,
    },
}

/// Why a JWKS document could not be read or used. The old keys stay in force.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// Larger than [`JWKS_MAX_BYTES`].
    #[error("JWKS is {len_bytes} bytes, more than the {max_bytes} accepted")]
    TooLarge {
        /// Its size (or the size reached when reading stopped).
        len_bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// Not JSON.
    #[error("JWKS is not JSON: {reason}")]
    NotJson {
        /// The parser's message.
        reason: String,
    },
    /// No `keys` array.
    #[error("JWKS has no \"keys\" array")]
    NoKeysArray,
    /// More than [`JWKS_KEYS_MAX`] keys.
    #[error("JWKS has {count} keys, more than the {max} accepted")]
    TooManyKeys {
        /// How many.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Two keys with one `kid`: a token naming it would be ambiguous.
    #[error("JWKS has two keys with kid \"{kid}\"")]
    DuplicateKid {
        /// The kid.
        kid: String,
    },
    /// No key can verify ID tokens.
    #[error("JWKS has no key that can verify ID tokens ({unusable})")]
    NoUsableKey {
        /// Each key and why it is unusable.
        unusable: String,
    },
    /// jsonwebtoken has no crypto backend (a build enabling both or neither of its backends).
    #[error("jsonwebtoken has no crypto provider in this build")]
    NoCryptoProvider,
    /// The file could not be read.
    #[error("cannot read JWKS file {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// The URL could not be fetched.
    #[error("cannot fetch JWKS from {url}: {reason}")]
    Fetch {
        /// The URL.
        url: String,
        /// The transport error.
        reason: String,
    },
    /// The URL answered with another status than 2xx.
    #[error("JWKS URL {url} answered HTTP {status}")]
    HttpStatus {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
}

/// What identifies one version of a file: a replaced or rewritten file changes at least one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    inode: u64,
}

impl FileStamp {
    fn of(metadata: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(metadata);
        #[cfg(not(unix))]
        let inode = 0;
        Self { len: metadata.len(), modified: metadata.modified().ok(), inode }
    }
}

enum Source {
    File(PathBuf),
    Url { url: reqwest::Url, client: reqwest::Client },
}

/// Bookkeeping of re-reads; behind an async mutex so that one read runs at a time and
/// callers that find one running wait for its keys instead of starting another.
#[derive(Default)]
struct RefreshState {
    /// When the source was last read (successfully or not).
    last_read_ms: Option<u64>,
    /// When an unknown kid last caused an early read.
    last_early_ms: Option<u64>,
    /// Whether the last scheduled read failed (a URL is then retried after `min_refetch_ms`).
    last_failed: bool,
    /// The file version the current keys came from.
    loaded: Option<FileStamp>,
    /// The file version (or error) already warned about, so a bad file is logged once.
    warned: Option<String>,
}

/// One issuer's keys, from a JWKS file or URL, re-read as configured, lazily: on use, when the
/// interval has passed (no task of its own, so nothing to stop at shutdown). Shared behind an
/// `Arc`; at most one re-read runs at a time, and scheduled re-reads never make other callers
/// wait.
pub struct Jwks {
    issuer: String,
    source: Source,
    refresh_ms: u64,
    min_refetch_ms: u64,
    // A std lock: held only to clone or swap the Arc, never across an await.
    current: RwLock<Arc<JwkKeys>>,
    refresh: AsyncMutex<RefreshState>,
}

impl fmt::Debug for Jwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match &self.source {
            Source::File(path) => format!("file {}", path.display()),
            Source::Url { url, .. } => format!("url {url}"),
        };
        f.debug_struct("Jwks").field("issuer", &self.issuer).field("source", &source).finish_non_exhaustive()
    }
}

fn elapsed_at_least(now_ms: u64, since_ms: Option<u64>, interval_ms: u64) -> bool {
    // A clock stepped back counts as time passed: waiting for it to catch up could block
    // re-reads for as long as the step.
    since_ms.is_none_or(|since| now_ms < since || now_ms - since >= interval_ms)
}

impl Jwks {
    /// Opens a key source. A file is read now and must hold a usable JWKS (a configuration
    /// error is better found at start). A URL is fetched now; if that fails the source starts
    /// empty, logs a warning and retries after `min_refetch_ms`, since an issuer's outage
    /// should not keep a replica from starting.
    ///
    /// # Errors
    /// The configuration is invalid, or the file cannot be loaded.
    pub async fn open(config: &OidcIssuerConfig, now_ms: u64) -> Result<Self, OidcConfigError> {
        config.validate()?;
        let source = match (&config.jwks_file, &config.jwks_url) {
            (Some(path), _) => Source::File(path.clone()),
            (None, Some(url)) => {
                Source::Url { url: parse_jwks_url(url)?, client: http_client(config.fetch_timeout_ms)? }
            }
            (None, None) => return Err(OidcConfigError::NoSource { issuer: config.issuer.clone() }),
        };
        let jwks = Self {
            issuer: config.issuer.clone(),
            source,
            refresh_ms: config.effective_refresh_ms(),
            min_refetch_ms: config.min_refetch_ms,
            current: RwLock::new(Arc::new(JwkKeys::default())),
            refresh: AsyncMutex::new(RefreshState::default()),
        };
        {
            let mut state = jwks.refresh.lock().await;
            let result = jwks.read(&mut state, now_ms).await;
            if let (Source::File(_), Err(source)) = (&jwks.source, result) {
                return Err(OidcConfigError::Jwks { issuer: config.issuer.clone(), source });
            }
        }
        Ok(jwks)
    }

    /// The issuer these keys belong to.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The keys in force now, re-reading the source first when `refresh_ms` has passed (or,
    /// after a failed fetch, `min_refetch_ms`). While another caller re-reads, the keys in
    /// force are returned at once: a slow issuer delays one registration per interval, not all
    /// of them (a token with a new kid still waits, in [`Jwks::refresh_early`]).
    pub async fn keys(&self, now_ms: u64) -> Arc<JwkKeys> {
        let Ok(mut state) = self.refresh.try_lock() else {
            return self.current();
        };
        let interval_ms = if state.last_failed { self.min_refetch_ms.min(self.refresh_ms) } else { self.refresh_ms };
        if elapsed_at_least(now_ms, state.last_read_ms, interval_ms) {
            // Failures are logged by `read` and leave the old keys in force.
            let _ = self.read(&mut state, now_ms).await;
        }
        drop(state);
        self.current()
    }

    /// Re-reads the source now, unless an early re-read happened less than `min_refetch_ms`
    /// ago. Returns whether it re-read. For a token whose kid is unknown: the issuer may have
    /// rotated its keys since the last read.
    pub async fn refresh_early(&self, now_ms: u64) -> bool {
        let mut state = self.refresh.lock().await;
        if !elapsed_at_least(now_ms, state.last_early_ms, self.min_refetch_ms) {
            return false;
        }
        state.last_early_ms = Some(now_ms);
        let _ = self.read(&mut state, now_ms).await;
        true
    }

    /// Verifies `token` against these keys; when its kid is unknown, re-reads the source
    /// early (at most once per `min_refetch_ms`) and tries once more.
    ///
    /// # Errors
    /// As [`verify_id_token`]; [`OidcError::IssuerNotConfigured`] if `rule` names another issuer.
    pub async fn verify(
        &self,
        token: &str,
        rule: &OidcRule,
        expected: &Expected<'_>,
        now_ms: u64,
        skew_ms: u64,
    ) -> Result<VerifiedIdToken, OidcError> {
        if rule.issuer != self.issuer {
            return Err(OidcError::IssuerNotConfigured { issuer: rule.issuer.clone() });
        }
        let keys = self.keys(now_ms).await;
        match verify_id_token(token, rule, &keys, expected, now_ms, skew_ms) {
            Err(OidcError::UnknownKid { .. }) if self.refresh_early(now_ms).await => {
                verify_id_token(token, rule, &self.current(), expected, now_ms, skew_ms)
            }
            other => other,
        }
    }

    fn current(&self) -> Arc<JwkKeys> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn install(&self, keys: JwkKeys) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
    }

    /// Reads the source once, installs what it holds if usable, and logs what went wrong.
    async fn read(&self, state: &mut RefreshState, now_ms: u64) -> Result<(), JwksError> {
        state.last_read_ms = Some(now_ms);
        let result = match &self.source {
            Source::File(path) => self.read_file(path, state).await,
            Source::Url { url, client } => match fetch(client, url).await {
                Ok(keys) => {
                    tracing::debug!(issuer = %self.issuer, %url, kids = ?keys.usable_kids().collect::<Vec<_>>(), "JWKS fetched");
                    self.install(keys);
                    Ok(())
                }
                Err(e) => {
                    tracing::warn!(issuer = %self.issuer, error = %e, "JWKS fetch failed; the previous keys stay in force");
                    Err(e)
                }
            },
        };
        state.last_failed = result.is_err();
        result
    }

    async fn read_file(&self, path: &Path, state: &mut RefreshState) -> Result<(), JwksError> {
        match load_file(path, state.loaded).await {
            FileRead::Unchanged => Ok(()),
            FileRead::Loaded(stamp, keys) => {
                tracing::info!(issuer = %self.issuer, path = %path.display(), kids = ?keys.usable_kids().collect::<Vec<_>>(), "JWKS file loaded");
                self.install(keys);
                state.loaded = Some(stamp);
                state.warned = None;
                Ok(())
            }
            FileRead::Failed { seen, error } => {
                if state.warned.as_deref() != Some(seen.as_str()) {
                    tracing::warn!(issuer = %self.issuer, path = %path.display(), %error, "JWKS file not usable; the previous keys stay in force");
                    state.warned = Some(seen);
                }
                Err(error)
            }
        }
    }
}

enum FileRead {
    Unchanged,
    Loaded(FileStamp, JwkKeys),
    /// `seen` names the file version (or the error, when there is no file to stamp), so one
    /// bad version is warned about once.
    Failed {
        seen: String,
        error: JwksError,
    },
}

async fn load_file(path: &Path, loaded: Option<FileStamp>) -> FileRead {
    let read_error = |e: std::io::Error| JwksError::Read { path: path.to_owned(), reason: e.to_string() };
    let metadata = match tokio::fs::metadata(path).await {
        Ok(metadata) => metadata,
        Err(e) => {
            let error = read_error(e);
            return FileRead::Failed { seen: error.to_string(), error };
        }
    };
    let stamp = FileStamp::of(&metadata);
    if loaded == Some(stamp) {
        return FileRead::Unchanged;
    }
    let failed = |error| FileRead::Failed { seen: format!("{stamp:?}"), error };
    if metadata.len() > JWKS_MAX_BYTES as u64 {
        let len_bytes = usize::try_from(metadata.len()).unwrap_or(usize::MAX);
        return failed(JwksError::TooLarge { len_bytes, max_bytes: JWKS_MAX_BYTES });
    }
    match tokio::fs::read(path).await {
        Err(e) => failed(read_error(e)),
        Ok(bytes) => match JwkKeys::from_json(&bytes) {
            Ok(keys) => FileRead::Loaded(stamp, keys),
            Err(e) => failed(e),
        },
    }
}

fn http_client(timeout_ms: u64) -> Result<reqwest::Client, OidcConfigError> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let client_error = |reason: String| OidcConfigError::HttpClient { reason };
    // The provider is passed explicitly: nothing here depends on a process-wide default.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| client_error(e.to_string()))?
        .with_platform_verifier()
        .map_err(|e| client_error(e.to_string()))?
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(Duration::from_millis(timeout_ms))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .map_err(|e| client_error(e.to_string()))
}

async fn fetch(client: &reqwest::Client, url: &reqwest::Url) -> Result<JwkKeys, JwksError> {
    let fetch_error = |e: reqwest::Error| JwksError::Fetch { url: url.to_string(), reason: e.to_string() };
    let mut response =
        client.get(url.clone()).header(http::header::ACCEPT, "application/json").send().await.map_err(fetch_error)?;
    if !response.status().is_success() {
        return Err(JwksError::HttpStatus { url: url.to_string(), status: response.status().as_u16() });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(fetch_error)? {
        if body.len() + chunk.len() > JWKS_MAX_BYTES {
            return Err(JwksError::TooLarge { len_bytes: body.len() + chunk.len(), max_bytes: JWKS_MAX_BYTES });
        }
        body.extend_from_slice(&chunk);
    }
    JwkKeys::from_json(&body)
}

/// The key sources of every configured issuer.
#[derive(Debug, Default)]
pub struct OidcIssuers {
    by_issuer: BTreeMap<String, Arc<Jwks>>,
}

impl OidcIssuers {
    /// Opens every `[[registration.oidc]]` entry (see [`Jwks::open`]).
    ///
    /// # Errors
    /// An entry is invalid, an issuer appears twice, or a JWKS file cannot be loaded.
    pub async fn open(configs: &[OidcIssuerConfig], now_ms: u64) -> Result<Self, OidcConfigError> {
        let mut by_issuer = BTreeMap::new();
        for config in configs {
            if by_issuer.contains_key(&config.issuer) {
                return Err(OidcConfigError::DuplicateIssuer { issuer: config.issuer.clone() });
            }
            let jwks = Jwks::open(config, now_ms).await?;
            by_issuer.insert(config.issuer.clone(), Arc::new(jwks));
        }
        Ok(Self { by_issuer })
    }

    /// The key source of `issuer`.
    pub fn get(&self, issuer: &str) -> Option<&Arc<Jwks>> {
        self.by_issuer.get(issuer)
    }

    /// Verifies `token` with the keys of the rule's issuer (see [`Jwks::verify`]).
    ///
    /// # Errors
    /// [`OidcError::IssuerNotConfigured`] when this replica has no key source for the rule's
    /// issuer; otherwise as [`Jwks::verify`].
    pub async fn verify(
        &self,
        token: &str,
        rule: &OidcRule,
        expected: &Expected<'_>,
        now_ms: u64,
        skew_ms: u64,
    ) -> Result<VerifiedIdToken, OidcError> {
        let Some(jwks) = self.get(&rule.issuer) else {
            return Err(OidcError::IssuerNotConfigured { issuer: rule.issuer.clone() });
        };
        jwks.verify(token, rule, expected, now_ms, skew_ms).await
    }
}
