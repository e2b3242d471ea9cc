//! The `oidc` registration method: ID tokens signed by keys made here (Ed25519 fresh, RSA and
//! P-256 from committed test-only PEMs), every refusal its own error, and the JWKS key source
//! from a file and from a URL on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use keyraft_core::identity::LocalPartRule;
use keyraft_server::registration::oidc::testing::{JwksServer, TestIssuer, TEST_AUDIENCE, TEST_ISSUER};
use keyraft_server::registration::oidc::{
    nonce_for_update, verify_id_token, Expected, IdTokenAlgorithm, JwkKeys, Jwks, JwksError, OidcConfigError,
    OidcError, OidcIssuerConfig, OidcIssuers, OidcRule,
};
use proptest::prelude::*;
use serde_json::{json, Value};

const NOW_MS: u64 = 1_800_000_000_000;
const SKEW_MS: u64 = 60_000;
const USER: &str = "alice@example.com";
const UPDATE_ID: [u8; 32] = [7; 32];
const RSA_PEM: &[u8] = include_bytes!("data/oidc_rs256_test_key.pem");
const EC_PEM: &[u8] = include_bytes!("data/oidc_es256_test_key.pem");
const RSA_KID: &str = "rsa-1";
const EC_KID: &str = "ec-1";

fn rule() -> OidcRule {
    OidcRule { issuer: TEST_ISSUER.to_owned(), audience: TEST_AUDIENCE.to_owned(), claim: "email".to_owned() }
}

fn expected() -> Expected<'static> {
    Expected { user_id: USER, local_part_rule: LocalPartRule::CaseInsensitive, update_id: &UPDATE_ID }
}

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_PEM).unwrap()
}

fn ec_key() -> EncodingKey {
    EncodingKey::from_ec_pem(EC_PEM).unwrap()
}

fn public_jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> Value {
    let mut jwk = Jwk::from_encoding_key(key, alg).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    serde_json::to_value(jwk).unwrap()
}

/// The test issuer's Ed25519 key plus the RSA and P-256 keys, in one JWKS.
fn jwks(issuer: &TestIssuer) -> Value {
    json!({ "keys": [
        issuer.jwk(),
        public_jwk(&rsa_key(), Algorithm::RS256, RSA_KID),
        public_jwk(&ec_key(), Algorithm::ES256, EC_KID),
    ]})
}

fn keys(issuer: &TestIssuer) -> JwkKeys {
    JwkKeys::from_json(jwks(issuer).to_string().as_bytes()).unwrap()
}

fn sign(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn check(issuer: &TestIssuer, token: &str) -> Result<keyraft_server::registration::oidc::VerifiedIdToken, OidcError> {
    verify_id_token(token, &rule(), &keys(issuer), &expected(), NOW_MS, SKEW_MS)
}

/// Good claims with `edit` applied, signed by the Ed25519 test issuer.
fn eddsa_with(issuer: &TestIssuer, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> String {
    let mut claims = issuer.claims(USER, &UPDATE_ID, NOW_MS);
    edit(claims.as_object_mut().unwrap());
    issuer.mint(&claims)
}

fn b64(json: &Value) -> String {
    URL_SAFE_NO_PAD.encode(json.to_string())
}

// --- Good tokens -------------------------------------------------------------------------------

#[test]
fn eddsa_token_is_accepted_and_the_witness_names_what_was_checked() {
    let issuer = TestIssuer::new();
    let verified = check(&issuer, &eddsa_with(&issuer, |_| {})).unwrap();
    assert_eq!(verified.algorithm(), IdTokenAlgorithm::EdDsa);
    assert_eq!(verified.kid(), issuer.kid());
    assert_eq!(verified.issuer(), TEST_ISSUER);
    assert_eq!(verified.user_id(), USER);
    assert_eq!(verified.subject(), Some("subject-alice@example.com"));
    assert_eq!(verified.expires_at_ms(), (NOW_MS / 1000 + 600) * 1000);
}

#[test]
fn rs256_token_is_accepted() {
    let issuer = TestIssuer::new();
    let token = sign(Algorithm::RS256, RSA_KID, &rsa_key(), &issuer.claims(USER, &UPDATE_ID, NOW_MS));
    assert_eq!(check(&issuer, &token).unwrap().algorithm(), IdTokenAlgorithm::Rs256);
}

#[test]
fn es256_token_is_accepted() {
    let issuer = TestIssuer::new();
    let token = sign(Algorithm::ES256, EC_KID, &ec_key(), &issuer.claims(USER, &UPDATE_ID, NOW_MS));
    assert_eq!(check(&issuer, &token).unwrap().algorithm(), IdTokenAlgorithm::Es256);
}

#[test]
fn audience_may_be_an_array_containing_the_realm() {
    let issuer = TestIssuer::new();
    let token = eddsa_with(&issuer, |c| {
        c.insert("aud".into(), json!(["other-client", TEST_AUDIENCE]));
    });
    check(&issuer, &token).unwrap();
}

#[test]
fn identity_claim_is_compared_in_canonical_form() {
    let issuer = TestIssuer::new();
    let token = eddsa_with(&issuer, |c| {
        c.insert("email".into(), json!("Alice@Example.COM"));
    });
    check(&issuer, &token).unwrap();
}

#[test]
fn another_identity_claim_needs_no_email_verified() {
    let issuer = TestIssuer::new();
    let rule = OidcRule { claim: "preferred_username".to_owned(), ..rule() };
    let token = eddsa_with(&issuer, |c| {
        c.remove("email_verified");
        c.insert("email".into(), json!("mallory@example.com"));
        c.insert("preferred_username".into(), json!(USER));
    });
    verify_id_token(&token, &rule, &keys(&issuer), &expected(), NOW_MS, SKEW_MS).unwrap();
}

#[test]
fn skew_tolerates_a_recently_expired_token_and_a_slightly_early_nbf() {
    let issuer = TestIssuer::new();
    let now_s = NOW_MS / 1000;
    let token = eddsa_with(&issuer, |c| {
        c.insert("exp".into(), json!(now_s - 30));
        c.insert("nbf".into(), json!(now_s + 30));
        c.insert("iat".into(), json!(now_s + 30));
    });
    check(&issuer, &token).unwrap();
    // Exactly at exp + skew the token is expired (RFC 7519: now must be before exp).
    let at_edge = verify_id_token(&token, &rule(), &keys(&issuer), &expected(), (now_s - 30) * 1000 + SKEW_MS, SKEW_MS);
    assert!(matches!(at_edge, Err(OidcError::Expired { .. })), "{at_edge:?}");
}

// --- Header and key attacks -------------------------------------------------------------------

#[test]
fn alg_none_is_refused() {
    let issuer = TestIssuer::new();
    let claims = issuer.claims(USER, &UPDATE_ID, NOW_MS);
    for alg in ["none", "None", "NONE"] {
        let token = format!("{}.{}.", b64(&json!({"alg": alg, "kid": issuer.kid()})), b64(&claims));
        assert_eq!(check(&issuer, &token), Err(OidcError::AlgNone), "alg {alg}");
    }
}

#[test]
fn hs256_signed_with_the_rsa_public_key_as_secret_is_refused() {
    let issuer = TestIssuer::new();
    let claims = issuer.claims(USER, &UPDATE_ID, NOW_MS);
    let jwk = public_jwk(&rsa_key(), Algorithm::RS256, RSA_KID);
    // The classic confusion: the public modulus (or its PEM) used as the HMAC secret.
    let secret = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let token = sign(alg, RSA_KID, &EncodingKey::from_secret(&secret).unwrap(), &claims);
        let refused = check(&issuer, &token);
        assert!(matches!(&refused, Err(OidcError::HmacRefused { alg: a }) if a == &format!("{alg:?}")), "{refused:?}");
    }
}

#[test]
fn hmac_key_in_the_jwks_is_unusable() {
    let issuer = TestIssuer::new();
    let mut set = jwks(&issuer);
    set["keys"].as_array_mut().unwrap().push(json!({"kty": "oct", "kid": "shared", "k": "c2VjcmV0LXNlY3JldA"}));
    let keys = JwkKeys::from_json(set.to_string().as_bytes()).unwrap();
    // Even a token claiming an allowed algorithm cannot use it.
    let token = sign(Algorithm::ES256, "shared", &ec_key(), &issuer.claims(USER, &UPDATE_ID, NOW_MS));
    let refused = verify_id_token(&token, &rule(), &keys, &expected(), NOW_MS, SKEW_MS);
    assert!(matches!(&refused, Err(OidcError::KeyUnusable { kid, .. }) if kid == "shared"), "{refused:?}");
}

#[test]
fn algorithm_outside_the_allowed_three_is_refused() {
    let issuer = TestIssuer::new();
    let claims = issuer.claims(USER, &UPDATE_ID, NOW_MS);
    let token = sign(Algorithm::RS384, RSA_KID, &rsa_key(), &claims);
    assert_eq!(check(&issuer, &token), Err(OidcError::AlgorithmNotAllowed { alg: "RS384".to_owned() }));
    let token = sign(Algorithm::PS256, RSA_KID, &rsa_key(), &claims);
    assert_eq!(check(&issuer, &token), Err(OidcError::AlgorithmNotAllowed { alg: "PS256".to_owned() }));
    // An algorithm jsonwebtoken does not even know.
    let token = format!("{}.{}.AAAA", b64(&json!({"alg": "ES512", "kid": EC_KID})), b64(&claims));
    assert_eq!(check(&issuer, &token), Err(OidcError::AlgorithmNotAllowed { alg: "ES512".to_owned() }));
}

#[test]
fn algorithm_not_matching_the_key_type_is_refused() {
    let issuer = TestIssuer::new();
    // An ES256 signature presented under the Ed25519 key's kid.
    let token = sign(Algorithm::ES256, issuer.kid(), &ec_key(), &issuer.claims(USER, &UPDATE_ID, NOW_MS));
    assert_eq!(
        check(&issuer, &token),
        Err(OidcError::KeyAlgorithmMismatch {
            kid: issuer.kid().to_owned(),
            token_alg: IdTokenAlgorithm::Es256,
            key_alg: IdTokenAlgorithm::EdDsa,
        })
    );
}

#[test]
fn jwk_alg_disagreeing_with_its_key_type_makes_the_key_unusable() {
    let issuer = TestIssuer::new();
    let mut set = jwks(&issuer);
    set["keys"][1]["alg"] = json!("RS512");
    let keys = JwkKeys::from_json(set.to_string().as_bytes()).unwrap();
    let token = sign(Algorithm::RS256, RSA_KID, &rsa_key(), &issuer.claims(USER, &UPDATE_ID, NOW_MS));
    let refused = verify_id_token(&token, &rule(), &keys, &expected(), NOW_MS, SKEW_MS);
    assert!(matches!(&refused, Err(OidcError::KeyUnusable { reason, .. }) if reason.contains("RS512")), "{refused:?}");
}

#[test]
fn unknown_kid_is_refused_and_names_the_kid_and_a_refresh() {
    let issuer = TestIssuer::new();
    let stranger = TestIssuer::new();
    let token = stranger.mint(&issuer.claims(USER, &UPDATE_ID, NOW_MS));
    let refused = check(&issuer, &token).unwrap_err();
    assert_eq!(refused, OidcError::UnknownKid { kid: stranger.kid().to_owned(), issuer: TEST_ISSUER.to_owned() });
    assert!(refused.to_string().contains(stranger.kid()) && refused.to_string().contains("refresh"), "{refused}");
    assert!(!refused.is_malformed());
}

#[test]
fn missing_kid_is_refused() {
    let issuer = TestIssuer::new();
    let token =
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &issuer.claims(USER, &UPDATE_ID, NOW_MS), &ec_key())
            .unwrap();
    assert_eq!(check(&issuer, &token), Err(OidcError::MissingKid));
}

#[test]
fn tampered_payload_is_refused_as_a_bad_signature() {
    let issuer = TestIssuer::new();
    let good = issuer.mint(&issuer.claims("mallory@example.com", &UPDATE_ID, NOW_MS));
    let parts: Vec<&str> = good.split('.').collect();
    let forged = format!("{}.{}.{}", parts[0], b64(&issuer.claims(USER, &UPDATE_ID, NOW_MS)), parts[2]);
    assert_eq!(check(&issuer, &forged), Err(OidcError::BadSignature { kid: issuer.kid().to_owned() }));
    // The same for RSA and P-256.
    for (alg, kid, key) in [(Algorithm::RS256, RSA_KID, rsa_key()), (Algorithm::ES256, EC_KID, ec_key())] {
        let good = sign(alg, kid, &key, &issuer.claims("mallory@example.com", &UPDATE_ID, NOW_MS));
        let parts: Vec<&str> = good.split('.').collect();
        let forged = format!("{}.{}.{}", parts[0], b64(&issuer.claims(USER, &UPDATE_ID, NOW_MS)), parts[2]);
        assert_eq!(check(&issuer, &forged), Err(OidcError::BadSignature { kid: kid.to_owned() }));
    }
}

#[test]
fn signature_by_another_key_under_a_known_kid_is_refused() {
    let issuer = TestIssuer::new();
    let impostor = TestIssuer::new();
    // The impostor's token, relabelled with the real issuer's kid.
    let token = impostor.mint(&issuer.claims(USER, &UPDATE_ID, NOW_MS));
    let parts: Vec<&str> = token.split('.').collect();
    let header = b64(&json!({"alg": "EdDSA", "kid": issuer.kid()}));
    let token = format!("{header}.{}.{}", parts[1], parts[2]);
    assert_eq!(check(&issuer, &token), Err(OidcError::BadSignature { kid: issuer.kid().to_owned() }));
}

#[test]
fn malformed_tokens_are_invalid_arguments() {
    let issuer = TestIssuer::new();
    for token in ["", "abc", "a.b", "a.b.c", "a.b.c.d", "..", "e30.e30.e30"] {
        let refused = check(&issuer, token).unwrap_err();
        assert!(refused.is_malformed(), "{token:?}: {refused:?}");
    }
    // Signed properly, but the payload is not a JSON object.
    let header = b64(&json!({"alg": "ES256", "kid": EC_KID}));
    for payload in ["not json", "[1, 2]", "\"a string\""] {
        let message = format!("{header}.{}", URL_SAFE_NO_PAD.encode(payload));
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &ec_key(), Algorithm::ES256).unwrap();
        let refused = check(&issuer, &format!("{message}.{signature}")).unwrap_err();
        assert!(matches!(refused, OidcError::Malformed { .. }), "{payload}: {refused:?}");
    }
    let long = "a".repeat(keyraft_server::registration::oidc::ID_TOKEN_MAX_BYTES + 1);
    assert!(matches!(check(&issuer, &long), Err(OidcError::TooLong { .. })));
}

// --- Claims ------------------------------------------------------------------------------------

#[test]
fn expired_token_is_refused() {
    let issuer = TestIssuer::new();
    let token = eddsa_with(&issuer, |c| {
        c.insert("exp".into(), json!(NOW_MS / 1000 - 61));
    });
    let refused = check(&issuer, &token);
    assert!(matches!(refused, Err(OidcError::Expired { now_ms: NOW_MS, skew_ms: SKEW_MS, .. })), "{refused:?}");
}

#[test]
fn missing_exp_is_refused() {
    let issuer = TestIssuer::new();
    let token = eddsa_with(&issuer, |c| {
        c.remove("exp");
    });
    assert_eq!(check(&issuer, &token), Err(OidcError::MissingExpiry));
}

#[test]
fn nbf_in_the_future_is_refused() {
    let issuer = TestIssuer::new();
    let token = eddsa_with(&issuer, |c| {
        c.insert("nbf".into(), json!(NOW_MS / 1000 + 61));
    });
    assert!(matches!(check(&issuer, &token), Err(OidcError::NotYetValid { .. })));
}

#[test]
fn iat_in_the_future_is_refused() {
    let issuer = TestIssuer::new();
    let token = eddsa_with(&issuer, |c| {
        c.insert("iat".into(), json!(NOW_MS / 1000 + 61));
    });
    assert!(matches!(check(&issuer, &token), Err(OidcError::IssuedInFuture { .. })));
}

#[test]
fn claims_of_the_wrong_type_are_malformed() {
    let issuer = TestIssuer::new();
    for (claim, value) in [
        ("exp", json!("tomorrow")),
        ("nbf", json!(-1)),
        ("iat", json!([1])),
        ("iss", json!(5)),
        ("aud", json!([1])),
        ("aud", json!({"a": 1})),
        ("email", json!(5)),
        ("nonce", json!(true)),
    ] {
        let token = eddsa_with(&issuer, |c| {
            c.insert(claim.into(), value);
        });
        let refused = check(&issuer, &token).unwrap_err();
        assert!(matches!(&refused, OidcError::ClaimType { claim: c, .. } if c == claim), "{refused:?}");
        assert!(refused.is_malformed());
    }
}

#[test]
fn wrong_audience_is_refused() {
    let issuer = TestIssuer::new();
    for aud in [json!("other-client"), json!(["other-client", "third"]), json!([])] {
        let token = eddsa_with(&issuer, |c| {
            c.insert("aud".into(), aud.clone());
        });
        let refused = check(&issuer, &token);
        assert!(matches!(refused, Err(OidcError::WrongAudience { .. })), "{aud}: {refused:?}");
    }
    let token = eddsa_with(&issuer, |c| {
        c.remove("aud");
    });
    assert_eq!(check(&issuer, &token), Err(OidcError::MissingAudience));
}

#[test]
fn wrong_issuer_is_refused() {
    let issuer = TestIssuer::new();
    let token = eddsa_with(&issuer, |c| {
        c.insert("iss".into(), json!("https://evil.example"));
    });
    assert_eq!(
        check(&issuer, &token),
        Err(OidcError::WrongIssuer { expected: TEST_ISSUER.to_owned(), found: "https://evil.example".to_owned() })
    );
    let token = eddsa_with(&issuer, |c| {
        c.remove("iss");
    });
    assert_eq!(check(&issuer, &token), Err(OidcError::MissingIssuer));
}

#[test]
fn email_verified_false_or_missing_is_refused() {
    let issuer = TestIssuer::new();
    for value in [json!(false), json!("true"), json!(1)] {
        let token = eddsa_with(&issuer, |c| {
            c.insert("email_verified".into(), value.clone());
        });
        assert_eq!(check(&issuer, &token), Err(OidcError::EmailNotVerified { found: value.to_string() }));
    }
    let token = eddsa_with(&issuer, |c| {
        c.remove("email_verified");
    });
    assert_eq!(check(&issuer, &token), Err(OidcError::MissingEmailVerified));
}

#[test]
fn identity_claim_mismatch_is_refused() {
    let issuer = TestIssuer::new();
    let token = eddsa_with(&issuer, |c| {
        c.insert("email".into(), json!("Mallory@example.com"));
    });
    assert_eq!(
        check(&issuer, &token),
        Err(OidcError::IdentityMismatch {
            claim: "email".to_owned(),
            found: "mallory@example.com".to_owned(),
            expected: USER.to_owned(),
        })
    );
    // Case-sensitive realms keep the local part as typed.
    let token = eddsa_with(&issuer, |c| {
        c.insert("email".into(), json!("Alice@example.com"));
    });
    let strict = Expected { local_part_rule: LocalPartRule::CaseSensitive, ..expected() };
    let refused = verify_id_token(&token, &rule(), &keys(&issuer), &strict, NOW_MS, SKEW_MS);
    assert!(matches!(refused, Err(OidcError::IdentityMismatch { .. })), "{refused:?}");
}

#[test]
fn identity_claim_missing_or_not_a_user_id_is_refused() {
    let issuer = TestIssuer::new();
    let token = eddsa_with(&issuer, |c| {
        c.remove("email");
    });
    assert_eq!(check(&issuer, &token), Err(OidcError::MissingIdentityClaim { claim: "email".to_owned() }));
    // A right-to-left override has no canonical form.
    let token = eddsa_with(&issuer, |c| {
        c.insert("email".into(), json!("alice\u{202e}@example.com"));
    });
    assert!(matches!(check(&issuer, &token), Err(OidcError::IdentityClaimInvalid { .. })));
}

#[test]
fn nonce_mismatch_or_missing_is_refused() {
    let issuer = TestIssuer::new();
    let other_update = [8u8; 32];
    let token = eddsa_with(&issuer, |c| {
        c.insert("nonce".into(), json!(nonce_for_update(&other_update)));
    });
    assert_eq!(
        check(&issuer, &token),
        Err(OidcError::NonceMismatch {
            expected: nonce_for_update(&UPDATE_ID),
            found: nonce_for_update(&other_update),
        })
    );
    let token = eddsa_with(&issuer, |c| {
        c.remove("nonce");
    });
    assert_eq!(check(&issuer, &token), Err(OidcError::MissingNonce));
}

#[test]
fn nonce_is_unpadded_base64url_of_the_update_id() {
    assert_eq!(nonce_for_update(&[0xff; 32]), "_".repeat(42) + "8");
    assert_eq!(nonce_for_update(&[0; 32]).len(), 43);
}

// --- JWKS documents ----------------------------------------------------------------------------

#[test]
fn jwks_documents_that_cannot_be_used_are_refused() {
    let issuer = TestIssuer::new();
    let parse = |v: Value| JwkKeys::from_json(v.to_string().as_bytes());
    assert!(matches!(JwkKeys::from_json(b"not json"), Err(JwksError::NotJson { .. })));
    assert_eq!(parse(json!({"keys": {}})).unwrap_err(), JwksError::NoKeysArray);
    assert_eq!(
        parse(json!({"keys": [issuer.jwk(), issuer.jwk()]})).unwrap_err(),
        JwksError::DuplicateKid { kid: issuer.kid().to_owned() }
    );
    assert!(matches!(parse(json!({"keys": []})), Err(JwksError::NoUsableKey { .. })));
    let many: Vec<Value> = (0..65).map(|i| json!({"kty": "oct", "kid": i.to_string(), "k": "AA"})).collect();
    assert!(matches!(parse(json!({ "keys": many })), Err(JwksError::TooManyKeys { count: 65, .. })));
}

#[test]
fn jwks_keys_with_bad_material_are_unusable_without_panicking() {
    let issuer = TestIssuer::new();
    let mut short_ed = issuer.jwk();
    short_ed["kid"] = json!("short-ed");
    short_ed["x"] = json!("AAAA");
    let mut bad_point = public_jwk(&ec_key(), Algorithm::ES256, "bad-point");
    bad_point["y"] = bad_point["x"].clone();
    let mut small_rsa = public_jwk(&rsa_key(), Algorithm::RS256, "small-rsa");
    small_rsa["n"] = json!(URL_SAFE_NO_PAD.encode([0xffu8; 128]));
    let mut enc = issuer.jwk();
    enc["kid"] = json!("enc");
    enc["use"] = json!("enc");
    let p384 = json!({"kty": "EC", "crv": "P-384", "kid": "p384", "x": "AA", "y": "AA"});
    let keys = JwkKeys::from_json(
        json!({"keys": [issuer.jwk(), short_ed, bad_point, small_rsa, enc, p384]}).to_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(keys.usable_kids().collect::<Vec<_>>(), vec![issuer.kid()]);
    let claims = issuer.claims(USER, &UPDATE_ID, NOW_MS);
    for (alg, kid, key) in [
        (Algorithm::EdDSA, "short-ed", None),
        (Algorithm::ES256, "bad-point", Some(ec_key())),
        (Algorithm::RS256, "small-rsa", Some(rsa_key())),
        (Algorithm::EdDSA, "enc", None),
        (Algorithm::ES256, "p384", Some(ec_key())),
    ] {
        let token = match key {
            Some(key) => sign(alg, kid, &key, &claims),
            None => {
                let t = issuer.mint(&claims);
                let parts: Vec<&str> = t.split('.').collect();
                format!("{}.{}.{}", b64(&json!({"alg": "EdDSA", "kid": kid})), parts[1], parts[2])
            }
        };
        let refused = verify_id_token(&token, &rule(), &keys, &expected(), NOW_MS, SKEW_MS);
        assert!(matches!(&refused, Err(OidcError::KeyUnusable { kid: k, .. }) if k == kid), "{kid}: {refused:?}");
    }
}

// --- Configuration -----------------------------------------------------------------------------

#[test]
fn issuer_config_parses_with_defaults_and_refuses_unknown_fields() {
    let config: OidcIssuerConfig = toml::from_str("issuer = \"https://a\"\njwks_file = \"/etc/a.json\"\n").unwrap();
    assert_eq!(config, OidcIssuerConfig::file("https://a", "/etc/a.json"));
    assert_eq!(config.effective_refresh_ms(), 1_000);
    assert_eq!(OidcIssuerConfig::url("https://a", "https://a/jwks").effective_refresh_ms(), 3_600_000);
    assert!(toml::from_str::<OidcIssuerConfig>("issuer = \"a\"\njwks_file = \"x\"\nrefresh = 1\n").is_err());
    let rule: OidcRule = toml::from_str("issuer = \"https://a\"\naudience = \"c\"\n").unwrap();
    assert_eq!(rule.claim, "email");
    assert!(toml::from_str::<OidcRule>("issuer = \"a\"\naudience = \"c\"\nclaims = \"x\"\n").is_err());
}

#[test]
fn issuer_config_needs_exactly_one_safe_source() {
    let none = OidcIssuerConfig { jwks_file: None, ..OidcIssuerConfig::file("https://a", "/x") };
    assert!(matches!(none.validate(), Err(OidcConfigError::NoSource { .. })));
    let both =
        OidcIssuerConfig { jwks_url: Some("https://a/jwks".into()), ..OidcIssuerConfig::file("https://a", "/x") };
    assert!(matches!(both.validate(), Err(OidcConfigError::BothSources { .. })));
    assert!(matches!(
        OidcIssuerConfig::url("https://a", "http://issuer.example/jwks").validate(),
        Err(OidcConfigError::PlainHttp { .. })
    ));
    assert!(matches!(
        OidcIssuerConfig::url("https://a", "ftp://a/jwks").validate(),
        Err(OidcConfigError::BadUrl { .. })
    ));
    for ok in ["http://127.0.0.1:1/jwks", "http://[::1]:1/jwks", "http://localhost/jwks", "https://issuer.example/jwks"]
    {
        OidcIssuerConfig::url("https://a", ok).validate().unwrap();
    }
    let zero = OidcIssuerConfig { refresh_ms: Some(0), ..OidcIssuerConfig::file("https://a", "/x") };
    assert!(matches!(zero.validate(), Err(OidcConfigError::Zero { field: "refresh_ms", .. })));
}

// --- Key sources -------------------------------------------------------------------------------

fn write_atomically(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn jwks_file_is_reloaded_when_replaced_and_a_bad_file_keeps_the_old_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let old = TestIssuer::new();
    let new = TestIssuer::new();
    write_atomically(&path, &old.jwks_json());
    let config = OidcIssuerConfig { min_refetch_ms: 3_600_000, ..OidcIssuerConfig::file(TEST_ISSUER, &path) };
    let jwks = Jwks::open(&config, NOW_MS).await.unwrap();
    let old_token = old.mint(&old.claims(USER, &UPDATE_ID, NOW_MS));
    let new_token = new.mint(&new.claims(USER, &UPDATE_ID, NOW_MS));
    jwks.verify(&old_token, &rule(), &expected(), NOW_MS, SKEW_MS).await.unwrap();

    // A file that does not parse: the old keys stay.
    write_atomically(&path, "{\"keys\": [");
    let later = NOW_MS + 1_000;
    jwks.verify(&old_token, &rule(), &expected(), later, SKEW_MS).await.unwrap();

    // The new key set: picked up at the next check.
    write_atomically(&path, &new.jwks_json());
    let later = later + 1_000;
    let verified = jwks.verify(&new_token, &rule(), &expected(), later, SKEW_MS).await.unwrap();
    assert_eq!(verified.kid(), new.kid());
    let refused = jwks.verify(&old_token, &rule(), &expected(), later, SKEW_MS).await;
    assert!(matches!(refused, Err(OidcError::UnknownKid { .. })), "{refused:?}");
}

/// Log lines, captured for one test's thread.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap()).matches(needle).count()
    }
}

#[tokio::test]
async fn a_bad_jwks_file_is_warned_about_once_per_change() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
    // The default current-thread runtime keeps every read on this thread.
    let _guard = tracing::subscriber::set_default(subscriber);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let issuer = TestIssuer::new();
    write_atomically(&path, &issuer.jwks_json());
    let jwks = Jwks::open(&OidcIssuerConfig::file(TEST_ISSUER, &path), NOW_MS).await.unwrap();
    const WARNING: &str = "JWKS file not usable";

    write_atomically(&path, "{\"keys\": 5}");
    for step in 1..=3 {
        assert!(jwks.keys(NOW_MS + step * 1_000).await.usable_kids().eq([issuer.kid()]));
    }
    assert_eq!(logs.count(WARNING), 1);

    write_atomically(&path, "not json, another change");
    for step in 4..=6 {
        assert!(jwks.keys(NOW_MS + step * 1_000).await.usable_kids().eq([issuer.kid()]));
    }
    assert_eq!(logs.count(WARNING), 2);
}

#[tokio::test]
async fn unknown_kid_rereads_the_file_early_before_its_interval() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let old = TestIssuer::new();
    let new = TestIssuer::new();
    write_atomically(&path, &old.jwks_json());
    let config = OidcIssuerConfig { refresh_ms: Some(3_600_000), ..OidcIssuerConfig::file(TEST_ISSUER, &path) };
    let jwks = Jwks::open(&config, NOW_MS).await.unwrap();
    write_atomically(&path, &new.jwks_json());
    let new_token = new.mint(&new.claims(USER, &UPDATE_ID, NOW_MS));
    // Same instant as the open: only the unknown kid makes it look again.
    jwks.verify(&new_token, &rule(), &expected(), NOW_MS, SKEW_MS).await.unwrap();
}

#[tokio::test]
async fn an_issuer_is_configured_once_and_its_keys_serve_only_its_rule() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let issuer = TestIssuer::new();
    write_atomically(&path, &issuer.jwks_json());
    let config = OidcIssuerConfig::file(TEST_ISSUER, &path);
    let twice = OidcIssuers::open(&[config.clone(), config.clone()], NOW_MS).await;
    assert_eq!(twice.unwrap_err(), OidcConfigError::DuplicateIssuer { issuer: TEST_ISSUER.to_owned() });
    let jwks = Jwks::open(&config, NOW_MS).await.unwrap();
    let token = issuer.mint(&issuer.claims(USER, &UPDATE_ID, NOW_MS));
    let other = OidcRule { issuer: "https://other.example".to_owned(), ..rule() };
    assert_eq!(
        jwks.verify(&token, &other, &expected(), NOW_MS, SKEW_MS).await,
        Err(OidcError::IssuerNotConfigured { issuer: "https://other.example".to_owned() })
    );
}

#[tokio::test]
async fn jwks_file_that_cannot_be_loaded_fails_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let missing = OidcIssuerConfig::file(TEST_ISSUER, dir.path().join("absent.json"));
    assert!(matches!(
        Jwks::open(&missing, NOW_MS).await,
        Err(OidcConfigError::Jwks { source: JwksError::Read { .. }, .. })
    ));
}

#[tokio::test]
async fn jwks_url_is_fetched_and_an_unknown_kid_refetches_at_most_once_per_interval() {
    let old = TestIssuer::new();
    let new = TestIssuer::new();
    let server = JwksServer::start(old.jwks_json()).await.unwrap();
    let config = OidcIssuerConfig { min_refetch_ms: 10_000, ..OidcIssuerConfig::url(TEST_ISSUER, server.url()) };
    let issuers = OidcIssuers::open(std::slice::from_ref(&config), NOW_MS).await.unwrap();
    assert_eq!(server.requests(), 1);
    let old_token = old.mint(&old.claims(USER, &UPDATE_ID, NOW_MS));
    issuers.verify(&old_token, &rule(), &expected(), NOW_MS, SKEW_MS).await.unwrap();
    assert_eq!(server.requests(), 1, "a known kid needs no fetch");

    // The issuer rotates: the first token with the new kid fetches once, early.
    server.set_body(new.jwks_json());
    let new_token = new.mint(&new.claims(USER, &UPDATE_ID, NOW_MS));
    issuers.verify(&new_token, &rule(), &expected(), NOW_MS + 1, SKEW_MS).await.unwrap();
    assert_eq!(server.requests(), 2);

    // Unknown kids within min_refetch_ms do not fetch again; after it, one more fetch.
    let stranger = TestIssuer::new();
    let stranger_token = stranger.mint(&stranger.claims(USER, &UPDATE_ID, NOW_MS));
    let refused = issuers.verify(&stranger_token, &rule(), &expected(), NOW_MS + 2, SKEW_MS).await;
    assert!(matches!(refused, Err(OidcError::UnknownKid { .. })), "{refused:?}");
    assert_eq!(server.requests(), 2);
    let refused = issuers.verify(&stranger_token, &rule(), &expected(), NOW_MS + 10_002, SKEW_MS).await;
    assert!(matches!(refused, Err(OidcError::UnknownKid { .. })), "{refused:?}");
    assert_eq!(server.requests(), 3);

    // Another issuer's rule finds no key source.
    let other = OidcRule { issuer: "https://other.example".to_owned(), ..rule() };
    assert!(matches!(
        issuers.verify(&new_token, &other, &expected(), NOW_MS, SKEW_MS).await,
        Err(OidcError::IssuerNotConfigured { .. })
    ));
}

#[tokio::test]
async fn jwks_url_is_refetched_every_refresh_interval() {
    let old = TestIssuer::new();
    let new = TestIssuer::new();
    let server = JwksServer::start(old.jwks_json()).await.unwrap();
    let config = OidcIssuerConfig {
        refresh_ms: Some(60_000),
        min_refetch_ms: 3_600_000,
        ..OidcIssuerConfig::url(TEST_ISSUER, server.url())
    };
    let jwks = Jwks::open(&config, NOW_MS).await.unwrap();
    server.set_body(new.jwks_json());
    assert!(jwks.keys(NOW_MS + 59_999).await.usable_kids().eq([old.kid()]));
    assert!(jwks.keys(NOW_MS + 60_000).await.usable_kids().eq([new.kid()]));
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn jwks_url_down_at_start_starts_empty_and_recovers() {
    // A port that was bound and released: nothing listens there.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let config = OidcIssuerConfig {
        min_refetch_ms: 1_000,
        ..OidcIssuerConfig::url(TEST_ISSUER, format!("http://127.0.0.1:{port}/jwks.json"))
    };
    let jwks = Jwks::open(&config, NOW_MS).await.unwrap();
    assert!(jwks.keys(NOW_MS).await.is_empty());
    let issuer = TestIssuer::new();
    let token = issuer.mint(&issuer.claims(USER, &UPDATE_ID, NOW_MS));
    assert!(matches!(
        jwks.verify(&token, &rule(), &expected(), NOW_MS, SKEW_MS).await,
        Err(OidcError::UnknownKid { .. })
    ));
}

// --- No panics ---------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_strings_are_refused_without_panic(token in ".{0,400}") {
        let issuer = TestIssuer::new();
        prop_assert!(check(&issuer, &token).is_err());
    }

    #[test]
    fn random_three_part_tokens_are_refused_without_panic(
        header in "[A-Za-z0-9_-]{0,60}", payload in "[A-Za-z0-9_-]{0,200}", signature in "[A-Za-z0-9_-]{0,100}",
    ) {
        let issuer = TestIssuer::new();
        let token = format!("{header}.{payload}.{signature}");
        prop_assert!(check(&issuer, &token).is_err());
    }

    #[test]
    fn bit_flipped_valid_tokens_are_refused_without_panic(which in 0usize..3, index in any::<prop::sample::Index>(), bit in 0u8..7) {
        let issuer = TestIssuer::new();
        let claims = issuer.claims(USER, &UPDATE_ID, NOW_MS);
        let token = match which {
            0 => issuer.mint(&claims),
            1 => sign(Algorithm::ES256, EC_KID, &ec_key(), &claims),
            _ => sign(Algorithm::RS256, RSA_KID, &rsa_key(), &claims),
        };
        prop_assert!(check(&issuer, &token).is_ok());
        let mut bytes = token.into_bytes();
        let at = index.index(bytes.len());
        // Below bit 7, an ASCII byte stays ASCII: the token stays a string.
        bytes[at] ^= 1 << bit;
        let flipped = String::from_utf8(bytes).unwrap();
        prop_assert!(check(&issuer, &flipped).is_err(), "flipped byte {} bit {}", at, bit);
    }
}
