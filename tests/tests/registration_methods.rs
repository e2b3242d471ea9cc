//! The `email` and `oidc` registration methods with real replicas, the CLI, an SMTP sink and
//! an ID-token issuer (its JWKS in a file) started by the test on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use keyraft_server::registration::email::extract_code;
use keyraft_server::registration::email::testing::SmtpSink;
use keyraft_server::registration::oidc::testing::{TestIssuer, TEST_AUDIENCE, TEST_ISSUER};
use keyraft_tests::{serial, wait_for, Realm};
use std::time::Duration;

/// The update id written by `register --prepare`.
fn update_id(realm: &Realm, prepared: &str) -> [u8; 32] {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(realm.path().join(prepared)).unwrap()).unwrap();
    hex::decode(json["update_id"].as_str().unwrap()).unwrap().try_into().unwrap()
}

#[test]
fn an_email_code_mailed_by_one_replica_registers_exactly_its_update() {
    let _s = serial();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sink = rt.block_on(SmtpSink::start()).unwrap();
    let relay = sink.addr().to_string();
    let realm = Realm::start_with(
        &["--verifier-count", "0", "--registration", "*@example.com=email", "--smtp-relay", &relay],
        |_| {},
    );
    realm.cli_ok(&["keygen", "--out", "alice.key"]);
    realm.cli_ok(&["register", "--user", "Alice@Example.com", "--key", "alice.key", "--prepare", "alice.json"]);
    realm.cli_ok(&["register", "--user", "bob@example.com", "--key", "alice.key", "--prepare", "bob.json"]);

    let out = realm.cli_ok(&["register", "--prepared", "alice.json", "--send-email-code"]);
    assert!(out.contains("mailed to alice@example.com"), "{out}");
    let mail = rt.block_on(sink.wait_for_message("alice@example.com", Duration::from_secs(60))).expect("a mail");
    let code = extract_code(&mail.data).expect("a code in the mail");
    realm.cli_ok(&["register", "--prepared", "bob.json", "--send-email-code"]);
    let bob_mail = rt.block_on(sink.wait_for_message("bob@example.com", Duration::from_secs(60))).expect("a mail");
    let bob_code = extract_code(&bob_mail.data).unwrap();

    // A wrong code, bob's code, a malformed code: refused, nothing stored.
    let e = realm.cli_fails(&["register", "--prepared", "alice.json", "--email-code", &bob_code]);
    assert!(e.contains("e-mail code"), "{e}");
    let e = realm.cli_fails(&["register", "--prepared", "alice.json", "--email-code", "not a code"]);
    assert!(e.contains("registration.email_code"), "{e}");
    let e = realm.cli_fails(&["register", "--prepared", "alice.json"]);
    assert!(e.contains("needs a proof") && e.contains("email"), "{e}");
    let out = realm.cli_ok(&["lookup", "alice@example.com"]);
    assert!(!out.contains("version 0"), "a refused registration stored something: {out}");

    // The right code, typed in lower case (any replica checks it).
    let out = realm.cli_ok(&["register", "--prepared", "alice.json", "--email-code", &code.to_lowercase(), "--wait"]);
    assert!(out.contains("registered \"alice@example.com\""), "{out}");
    // Registered: no more codes for it.
    let e = realm.cli_fails(&["register", "--prepared", "alice.json", "--send-email-code"]);
    assert!(e.contains("already registered"), "{e}");
    // Bob's code still registers bob's own update.
    realm.cli_ok(&["register", "--prepared", "bob.json", "--email-code", &bob_code, "--wait"]);
    // Alice loses her key: a recovery proven with a fresh e-mail code, which her old code
    // (for another update) does not prove; it is pending for the realm's window (a day).
    let mailed = sink.messages().len();
    realm.cli_ok(&["keygen", "--out", "alice-new.key"]);
    realm.cli_ok(&["recover", "--user", "alice@example.com", "--key", "alice-new.key", "--prepare", "recovery.json"]);
    let out = realm.cli_ok(&["recover", "--prepared", "recovery.json", "--send-email-code"]);
    assert!(out.contains("mailed to alice@example.com"), "{out}");
    let mail = wait_for("the recovery code's mail", || sink.messages().get(mailed).cloned());
    assert!(mail.to.iter().any(|t| t == "alice@example.com"), "{:?}", mail.to);
    let recovery_code = extract_code(&mail.data).expect("a code in the mail");
    let e = realm.cli_fails(&["recover", "--prepared", "recovery.json", "--email-code", &code]);
    assert!(e.contains("e-mail code"), "{e}");
    let out = realm.cli_ok(&["recover", "--prepared", "recovery.json", "--email-code", &recovery_code, "--wait"]);
    assert!(out.contains("recovery requested for \"alice@example.com\""), "{out}");
    let shown = realm.cli_ok(&["lookup", "alice@example.com"]);
    assert!(shown.contains("RECOVERY PENDING") && shown.contains("version 0"), "{shown}");
    // Codes cannot be asked for outside the namespace.
    realm.cli_ok(&["register", "--user", "carol@else.example", "--key", "alice.key", "--prepare", "carol.json"]);
    let e = realm.cli_fails(&["register", "--prepared", "carol.json", "--send-email-code"]);
    assert!(e.contains("closed"), "{e}");
}

#[test]
fn an_id_token_registers_the_update_its_nonce_names_and_forged_ones_are_refused() {
    let _s = serial();
    let keys = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new();
    let jwks = keys.path().join("jwks.json");
    std::fs::write(&jwks, issuer.jwks_json()).unwrap();
    let realm = Realm::start_with(
        &[
            "--verifier-count",
            "0",
            "--registration",
            "*@example.com=oidc",
            "--oidc-issuer",
            TEST_ISSUER,
            "--oidc-audience",
            TEST_AUDIENCE,
            "--oidc-jwks-file",
            jwks.to_str().unwrap(),
        ],
        |_| {},
    );
    realm.cli_ok(&["keygen", "--out", "alice.key"]);
    let out = realm.cli_ok(&["register", "--user", "alice@example.com", "--key", "alice.key", "--prepare", "a.json"]);
    assert!(out.contains("OIDC nonce"), "{out}");
    realm.cli_ok(&["register", "--user", "bob@example.com", "--key", "alice.key", "--prepare", "b.json"]);
    let id = update_id(&realm, "a.json");
    let now_ms = keyraft_client::now_ms();

    let refused = |claims: serde_json::Value, what: &str| {
        let token = issuer.mint(&claims);
        let e = realm.cli_fails(&["register", "--prepared", "a.json", "--id-token", &token]);
        assert!(e.contains(what), "expected {what:?} in: {e}");
    };
    // A token for bob's update (its nonce), for bob, expired, for another audience.
    refused(issuer.claims("alice@example.com", &update_id(&realm, "b.json"), now_ms), "nonce");
    refused(issuer.claims("bob@example.com", &id, now_ms), "bob@example.com");
    let mut expired = issuer.claims("alice@example.com", &id, now_ms);
    expired["exp"] = (now_ms / 1000 - 3600).into();
    refused(expired, "expired");
    let mut other_audience = issuer.claims("alice@example.com", &id, now_ms);
    other_audience["aud"] = "someone-else".into();
    refused(other_audience, "aud");
    let mut unverified = issuer.claims("alice@example.com", &id, now_ms);
    unverified["email_verified"] = false.into();
    refused(unverified, "email_verified");
    // Signed by a key the issuer's JWKS does not hold.
    let impostor = TestIssuer::new();
    let token = impostor.mint(&issuer.claims("alice@example.com", &id, now_ms));
    let e = realm.cli_fails(&["register", "--prepared", "a.json", "--id-token", &token]);
    assert!(e.contains("kid"), "{e}");
    // `alg: none`.
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(issuer.claims("alice@example.com", &id, now_ms).to_string().as_bytes())
    );
    let e = realm.cli_fails(&["register", "--prepared", "a.json", "--id-token", &none]);
    assert!(e.contains("none"), "{e}");

    // The real thing, from a file.
    let token = issuer.mint(&issuer.claims("alice@example.com", &id, now_ms));
    std::fs::write(realm.path().join("token.jwt"), &token).unwrap();
    let out = realm.cli_ok(&["register", "--prepared", "a.json", "--id-token", "@token.jwt", "--wait"]);
    assert!(out.contains("registered \"alice@example.com\""), "{out}");
}

fn b64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}
