//! Who may register an identity: the realm's registration policy (protocol version 2) and
//! registrar attestations.
//!
//! An identity that has no entry yet is *registered* by its first update. Under protocol
//! version 1 anyone may register any identity (first come, first served). Under version 2 the
//! realm configuration carries a [`RegistrationPolicy`]: an ordered list of
//! [`NamespaceRule`]s, each a glob on the canonical user id and the [`Method`]s that may
//! register an identity it matches. The first rule whose namespace matches decides; an id no
//! rule matches cannot be registered. The policy is part of the realm configuration, so its
//! hash is in every epoch head: a realm cannot quietly open registration to anyone.
//!
//! The methods are checked by every replica at its edge (docs/protocol.md section 6.1);
//! registration proofs are not kept in the log, so verifiers cannot re-check them. The one
//! method whose proof is defined here, because a registrar (outside the replicas) makes it
//! and a client carries it, is the [`Attestation`]: a registrar key of the realm signs
//!
//! ```text
//! u8(32) || "keyraft/v1/registrar-attestation" || bytes(realm) || bytes(user_id)
//!        || [32] update_id || u64 expires_ms
//! ```
//!
//! binding the canonical user id to the one update (by its id, which commits to the entry and
//! the profile) it may register, until `expires_ms` (milliseconds since the Unix epoch).

use crate::encoding::{put_count, put_u64, put_var_bytes, Canonical, DecodeError, Reader};
use crate::hash::signed_message;
use crate::identity::LocalPartRule;
use crate::keys::{PublicKey, Signature};
use crate::limits::USER_ID_BYTES_MAX;
use crate::types::validate_user_id;
use crate::verified::Verified;
use std::fmt;

/// Signing context of registrar attestations.
pub const ATTESTATION_CONTEXT: &str = "keyraft/v1/registrar-attestation";
/// Most namespace rules in a realm's policy.
pub const NAMESPACE_RULES_MAX: usize = 64;
/// Longest namespace glob, in bytes.
pub const NAMESPACE_BYTES_MAX: usize = 256;
/// Most methods in one namespace rule.
pub const METHODS_PER_RULE_MAX: usize = 8;
/// Most registrar keys in a realm.
pub const REGISTRAR_KEYS_MAX: usize = 32;
/// Longest OIDC issuer or audience, in bytes.
pub const OIDC_FIELD_BYTES_MAX: usize = 255;
/// Longest OIDC identity claim name, in bytes.
pub const OIDC_CLAIM_BYTES_MAX: usize = 64;
/// The OIDC claim that holds the identity unless the realm names another. With this claim,
/// `email_verified` must be `true`.
pub const OIDC_CLAIM_DEFAULT: &str = "email";
/// Bytes of an encoded [`Attestation`] at most.
pub const ATTESTATION_BYTES_MAX: usize = 32 + 2 + USER_ID_BYTES_MAX + 32 + 8 + 64;

/// A way of proving the right to register an identity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Method {
    /// First come, first served.
    Open,
    /// An [`Attestation`] signed by one of the realm's registrar keys.
    Registrar,
    /// A code mailed to the address by a replica (e-mail-form ids only).
    Email,
    /// An OpenID Connect ID token from this issuer for this audience, whose `claim` is the
    /// canonical user id and whose `nonce` is the base64url update id.
    Oidc {
        /// The `iss` the token must carry.
        issuer: String,
        /// A value the token's `aud` must hold.
        audience: String,
        /// The claim holding the identity ([`OIDC_CLAIM_DEFAULT`]: `email`).
        claim: String,
    },
}

impl Method {
    const TAG_OPEN: u8 = 1;
    const TAG_REGISTRAR: u8 = 2;
    const TAG_EMAIL: u8 = 3;
    const TAG_OIDC: u8 = 4;

    /// The method's name in the realm file and in messages.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Registrar => "registrar",
            Self::Email => "email",
            Self::Oidc { .. } => "oidc",
        }
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Self::Open => out.push(Self::TAG_OPEN),
            Self::Registrar => out.push(Self::TAG_REGISTRAR),
            Self::Email => out.push(Self::TAG_EMAIL),
            Self::Oidc { issuer, audience, claim } => {
                out.push(Self::TAG_OIDC);
                put_var_bytes(out, issuer.as_bytes());
                put_var_bytes(out, audience.as_bytes());
                put_var_bytes(out, claim.as_bytes());
            }
        }
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let text = |r: &mut Reader<'_>, max: usize, what: &'static str| -> Result<String, DecodeError> {
            let raw = r.var_bytes(1, max, what)?;
            let s = std::str::from_utf8(raw).map_err(|_| DecodeError::Invalid { what, why: "not UTF-8" })?;
            Ok(s.to_owned())
        };
        let method = match r.u8("registration method")? {
            Self::TAG_OPEN => Self::Open,
            Self::TAG_REGISTRAR => Self::Registrar,
            Self::TAG_EMAIL => Self::Email,
            Self::TAG_OIDC => Self::Oidc {
                issuer: text(r, OIDC_FIELD_BYTES_MAX, "oidc issuer")?,
                audience: text(r, OIDC_FIELD_BYTES_MAX, "oidc audience")?,
                claim: text(r, OIDC_CLAIM_BYTES_MAX, "oidc claim")?,
            },
            _ => return Err(DecodeError::Invalid { what: "registration method", why: "unknown method tag" }),
        };
        method.validate()?;
        Ok(method)
    }

    fn validate(&self) -> Result<(), DecodeError> {
        if let Self::Oidc { issuer, audience, claim } = self {
            for (value, max, what) in [
                (issuer, OIDC_FIELD_BYTES_MAX, "oidc issuer"),
                (audience, OIDC_FIELD_BYTES_MAX, "oidc audience"),
                (claim, OIDC_CLAIM_BYTES_MAX, "oidc claim"),
            ] {
                if value.is_empty() || value.len() > max || value.chars().any(char::is_control) {
                    return Err(DecodeError::Invalid {
                        what,
                        why: "must be 1 to its limit of bytes, no control character",
                    });
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Oidc { issuer, audience, claim } => {
                write!(f, "oidc (issuer {issuer:?}, audience {audience:?}, claim {claim:?})")
            }
            other => f.write_str(other.name()),
        }
    }
}

/// A namespace and the methods that may register identities in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceRule {
    /// A glob on canonical user ids: `*` matches any run of characters (the empty one too);
    /// every other character matches itself.
    pub namespace: String,
    /// The methods, sorted strictly ascending by their encoding (no duplicate).
    pub methods: Vec<Method>,
}

impl NamespaceRule {
    /// Whether `user_id` (canonical) is in this namespace.
    pub fn matches(&self, user_id: &str) -> bool {
        glob_matches(&self.namespace, user_id)
    }

    /// Whether registration here is first come, first served.
    pub fn is_open(&self) -> bool {
        self.methods.contains(&Method::Open)
    }
}

/// `*`-only glob matching over characters, linear in practice: the classic backtracking to
/// the last star, which never revisits more than one star's choice.
fn glob_matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Who may register identities in a realm of protocol version 2.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RegistrationPolicy {
    /// How the local part of e-mail-form ids is compared.
    pub local_part_rule: LocalPartRule,
    /// Keys that sign [`Attestation`]s, sorted strictly ascending.
    pub registrar_keys: Vec<PublicKey>,
    /// The rules, in order: the first whose namespace matches decides.
    pub rules: Vec<NamespaceRule>,
    /// How long a recovery waits for its owner's veto before it takes effect, in milliseconds
    /// of epoch issue time (docs/protocol.md section 6.3); 0 disables recovery in the realm.
    pub recovery_window_ms: u64,
}

/// The veto window of a realm file that does not name one: a day, long enough for an owner
/// whose devices are offline overnight to see a pending recovery and veto it.
pub const RECOVERY_WINDOW_MS_DEFAULT: u64 = 86_400_000;

impl RegistrationPolicy {
    /// A policy letting anyone register anything (the dev realm's).
    pub fn open() -> Self {
        Self {
            local_part_rule: LocalPartRule::CaseInsensitive,
            registrar_keys: Vec::new(),
            rules: vec![NamespaceRule { namespace: "*".into(), methods: vec![Method::Open] }],
            recovery_window_ms: RECOVERY_WINDOW_MS_DEFAULT,
        }
    }

    /// Whether identities of this realm can be recovered at all (a window of 0 disables it).
    pub fn recovery_enabled(&self) -> bool {
        self.recovery_window_ms > 0
    }

    /// The rule deciding registrations of `user_id` (canonical), if any.
    pub fn rule_for(&self, user_id: &str) -> Option<&NamespaceRule> {
        self.rules.iter().find(|r| r.matches(user_id))
    }

    /// Checks the rules a decoder and the realm file enforce.
    pub fn validate(&self) -> Result<(), DecodeError> {
        if self.rules.is_empty() || self.rules.len() > NAMESPACE_RULES_MAX {
            return Err(DecodeError::Invalid { what: "registration rules", why: "need between 1 and 64 rules" });
        }
        if self.registrar_keys.len() > REGISTRAR_KEYS_MAX {
            return Err(DecodeError::TooLong {
                what: "registrar keys",
                max: REGISTRAR_KEYS_MAX,
                got: self.registrar_keys.len(),
            });
        }
        if self.registrar_keys.windows(2).any(|w| w[0] >= w[1]) {
            return Err(DecodeError::NonCanonical { what: "registrar keys", why: "not sorted strictly ascending" });
        }
        for rule in &self.rules {
            let ns = &rule.namespace;
            if ns.is_empty() || ns.len() > NAMESPACE_BYTES_MAX || ns.chars().any(char::is_control) {
                return Err(DecodeError::Invalid {
                    what: "registration namespace",
                    why: "must be 1 to 256 bytes of UTF-8 without control characters",
                });
            }
            if rule.methods.is_empty() || rule.methods.len() > METHODS_PER_RULE_MAX {
                return Err(DecodeError::Invalid { what: "registration methods", why: "need between 1 and 8 methods" });
            }
            let encoded: Vec<Vec<u8>> = rule
                .methods
                .iter()
                .map(|m| {
                    let mut out = Vec::new();
                    m.encode_into(&mut out);
                    out
                })
                .collect();
            if encoded.windows(2).any(|w| w[0] >= w[1]) {
                return Err(DecodeError::NonCanonical {
                    what: "registration methods",
                    why: "not sorted strictly ascending by encoding",
                });
            }
            for m in &rule.methods {
                m.validate()?;
            }
            if rule.methods.contains(&Method::Registrar) && self.registrar_keys.is_empty() {
                return Err(DecodeError::Invalid {
                    what: "registration methods",
                    why: "a namespace allows `registrar` but the realm has no registrar key",
                });
            }
        }
        Ok(())
    }

    /// Sorts each rule's methods into their canonical order (what a realm-file writer
    /// calls; a decoder refuses an unsorted list).
    pub fn sort_methods(&mut self) {
        for rule in &mut self.rules {
            rule.methods.sort_by_key(|m| {
                let mut out = Vec::new();
                m.encode_into(&mut out);
                out
            });
        }
    }

    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(match self.local_part_rule {
            LocalPartRule::CaseInsensitive => 0,
            LocalPartRule::CaseSensitive => 1,
        });
        put_count(out, self.registrar_keys.len());
        for k in &self.registrar_keys {
            out.extend_from_slice(k.as_bytes());
        }
        put_count(out, self.rules.len());
        for rule in &self.rules {
            put_var_bytes(out, rule.namespace.as_bytes());
            put_count(out, rule.methods.len());
            for m in &rule.methods {
                m.encode_into(out);
            }
        }
        put_u64(out, self.recovery_window_ms);
    }

    pub(crate) fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let local_part_rule = match r.u8("local part rule")? {
            0 => LocalPartRule::CaseInsensitive,
            1 => LocalPartRule::CaseSensitive,
            _ => return Err(DecodeError::Invalid { what: "local part rule", why: "unknown rule" }),
        };
        let n = r.count(0, REGISTRAR_KEYS_MAX, "registrar keys")?;
        let mut registrar_keys = Vec::with_capacity(n);
        for _ in 0..n {
            registrar_keys.push(PublicKey::decode_from(r, "registrar keys")?);
        }
        let n = r.count(1, NAMESPACE_RULES_MAX, "registration rules")?;
        let mut rules = Vec::with_capacity(n);
        for _ in 0..n {
            let raw = r.var_bytes(1, NAMESPACE_BYTES_MAX, "registration namespace")?;
            let namespace = std::str::from_utf8(raw)
                .map_err(|_| DecodeError::Invalid { what: "registration namespace", why: "not UTF-8" })?
                .to_owned();
            let m = r.count(1, METHODS_PER_RULE_MAX, "registration methods")?;
            let mut methods = Vec::with_capacity(m);
            for _ in 0..m {
                methods.push(Method::decode_from(r)?);
            }
            rules.push(NamespaceRule { namespace, methods });
        }
        let recovery_window_ms = r.u64("recovery window")?;
        let policy = Self { local_part_rule, registrar_keys, rules, recovery_window_ms };
        policy.validate()?;
        Ok(policy)
    }
}

/// The `nonce` an OIDC ID token registering the update `update_id` carries: the id in
/// base64url without padding (RFC 4648 section 5), 43 characters.
pub fn oidc_nonce(update_id: &[u8; 32]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(43);
    for chunk in update_id.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// A registrar's statement that `user_id` may be registered with the update `update_id`,
/// until `expires_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attestation {
    /// The registrar key that signed it (one of the realm's).
    pub registrar_key: PublicKey,
    /// The canonical user id.
    pub user_id: String,
    /// The id of the update it registers (docs/protocol.md section 2.5).
    pub update_id: [u8; 32],
    /// Last moment it is good for, in milliseconds since the Unix epoch.
    pub expires_ms: u64,
    /// The registrar's signature over [`attestation_message`].
    pub signature: Signature,
}

/// The bytes a registrar signs.
pub fn attestation_message(realm: &str, user_id: &str, update_id: &[u8; 32], expires_ms: u64) -> Vec<u8> {
    let mut payload = Vec::with_capacity(2 + realm.len() + 2 + user_id.len() + 40);
    put_var_bytes(&mut payload, realm.as_bytes());
    put_var_bytes(&mut payload, user_id.as_bytes());
    payload.extend_from_slice(update_id);
    put_u64(&mut payload, expires_ms);
    signed_message(ATTESTATION_CONTEXT, &[&payload])
}

impl Attestation {
    /// Signs an attestation with a registrar's key.
    pub fn sign(
        registrar: &ed25519_dalek::SigningKey,
        realm: &str,
        user_id: &str,
        update_id: [u8; 32],
        expires_ms: u64,
    ) -> Self {
        use ed25519_dalek::Signer as _;
        let message = attestation_message(realm, user_id, &update_id, expires_ms);
        Self {
            registrar_key: crate::keys::public_key_of(registrar),
            user_id: user_id.to_owned(),
            update_id,
            expires_ms,
            signature: Signature(registrar.sign(&message).to_bytes()),
        }
    }
}

impl Canonical for Attestation {
    const NAME: &'static str = "registrar attestation";

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.registrar_key.as_bytes());
        put_var_bytes(out, self.user_id.as_bytes());
        out.extend_from_slice(&self.update_id);
        put_u64(out, self.expires_ms);
        out.extend_from_slice(&self.signature.0);
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let registrar_key = PublicKey::decode_from(r, "attestation registrar key")?;
        let raw = r.var_bytes(1, USER_ID_BYTES_MAX, "attestation user id")?;
        let user_id = std::str::from_utf8(raw)
            .map_err(|_| DecodeError::Invalid { what: "attestation user id", why: "not UTF-8" })?
            .to_owned();
        validate_user_id(&user_id)?;
        let update_id = r.array("attestation update id")?;
        let expires_ms = r.u64("attestation expiry")?;
        let signature = Signature(r.array("attestation signature")?);
        Ok(Self { registrar_key, user_id, update_id, expires_ms, signature })
    }
}

/// Why an attestation does not register this update. The checks run in this order
/// (docs/protocol.md section 6.1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestationError {
    /// 1. Signed by a key that is not one of the realm's registrar keys.
    #[error("attestation: signed by {key}, which is not a registrar key of the realm")]
    UnknownRegistrar {
        /// The key, hex.
        key: String,
    },
    /// 2. About another identity.
    #[error("attestation: it is for user id {attested:?}, not {registering:?}")]
    WrongUser {
        /// The id the attestation names.
        attested: String,
        /// The canonical id being registered.
        registering: String,
    },
    /// 3. For another update.
    #[error(
        "attestation: it is for update {attested}, not this update {registering} (attest the exact update being sent)"
    )]
    WrongUpdate {
        /// The update id it names, hex.
        attested: String,
        /// The id of the update sent, hex.
        registering: String,
    },
    /// 4. Expired (allowing the realm's clock skew).
    #[error("attestation: expired at {expires_ms} ms, the replica's clock is {now_ms} ms (skew allowed {skew_ms} ms)")]
    Expired {
        /// Its expiry.
        expires_ms: u64,
        /// The replica's time.
        now_ms: u64,
        /// Skew allowed.
        skew_ms: u64,
    },
    /// 5. The signature does not verify.
    #[error("attestation: the registrar's signature does not verify")]
    BadSignature,
}

/// Checks that `attestation` lets `user_id` (canonical) be registered with `update_id` in
/// `realm` at `now_ms`.
pub fn verify_attestation(
    realm: &str,
    policy: &RegistrationPolicy,
    attestation: &Attestation,
    user_id: &str,
    update_id: &[u8; 32],
    now_ms: u64,
    skew_ms: u64,
) -> Result<Verified<Attestation>, AttestationError> {
    if policy.registrar_keys.binary_search(&attestation.registrar_key).is_err() {
        return Err(AttestationError::UnknownRegistrar { key: hex::encode(attestation.registrar_key.as_bytes()) });
    }
    if attestation.user_id != user_id {
        return Err(AttestationError::WrongUser {
            attested: attestation.user_id.clone(),
            registering: user_id.to_owned(),
        });
    }
    if &attestation.update_id != update_id {
        return Err(AttestationError::WrongUpdate {
            attested: hex::encode(attestation.update_id),
            registering: hex::encode(update_id),
        });
    }
    if now_ms > attestation.expires_ms.saturating_add(skew_ms) {
        return Err(AttestationError::Expired { expires_ms: attestation.expires_ms, now_ms, skew_ms });
    }
    let message = attestation_message(realm, &attestation.user_id, &attestation.update_id, attestation.expires_ms);
    if !attestation.registrar_key.verify(&message, &attestation.signature) {
        return Err(AttestationError::BadSignature);
    }
    Ok(Verified::new(attestation.clone()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn oidc_nonce_is_unpadded_base64url() {
        assert_eq!(oidc_nonce(&[0; 32]), "A".repeat(43));
        let mut id = [0u8; 32];
        id[0] = 0xfb;
        id[1] = 0xff;
        id[31] = 0xff;
        let nonce = oidc_nonce(&id);
        assert_eq!(nonce.len(), 43);
        assert!(nonce.starts_with("-_8"), "{nonce}");
        assert!(nonce.ends_with("AP8"), "{nonce}");
    }

    #[test]
    fn glob_matching() {
        for (pattern, text, expected) in [
            ("*", "anything", true),
            ("*", "", true),
            ("*@example.com", "alice@example.com", true),
            ("*@example.com", "alice@example.org", false),
            ("*@example.com", "alice@sub.example.com", false),
            ("*@*.example.com", "alice@sub.example.com", true),
            ("alice@example.com", "alice@example.com", true),
            ("alice@example.com", "alice@example.comx", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("*zoë", "über-zoë", true),
            ("**", "x", true),
        ] {
            assert_eq!(glob_matches(pattern, text), expected, "{pattern:?} on {text:?}");
        }
    }

    #[test]
    fn first_matching_rule_decides() {
        let policy = RegistrationPolicy {
            local_part_rule: LocalPartRule::CaseInsensitive,
            registrar_keys: vec![],
            rules: vec![
                NamespaceRule { namespace: "*@example.com".into(), methods: vec![Method::Email] },
                NamespaceRule { namespace: "*".into(), methods: vec![Method::Open] },
            ],
            recovery_window_ms: RECOVERY_WINDOW_MS_DEFAULT,
        };
        assert_eq!(policy.rule_for("a@example.com").unwrap().methods, vec![Method::Email]);
        assert!(policy.rule_for("bob").unwrap().is_open());
    }
}
