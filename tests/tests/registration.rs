//! Who may claim an identity (issue 13), with real replicas and the CLI: a realm whose
//! policy admits `*@example.com` by registrar attestation only, `*@open.example` first come,
//! first served, and nothing else; canonical user ids (case, NFC, bidi controls) applied alike
//! by the client and the edge; a realm of protocol version 1 keeps its raw ids.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use keyraft_tests::{keyraft_bin, serial, Realm};
use std::process::Command;

fn keygen(path: &std::path::Path) {
    let out = Command::new(keyraft_bin()).arg("keygen").arg("--out").arg(path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn registrations_need_the_method_their_namespace_names_and_ids_are_canonical() {
    let _s = serial();
    let keys = tempfile::tempdir().unwrap();
    let registrar = keys.path().join("registrar.key");
    keygen(&registrar);
    let stranger = keys.path().join("stranger.key");
    keygen(&stranger);
    let registrar_pub = format!("{}.pub", registrar.display());
    let realm = Realm::start_with(
        &[
            "--verifier-count",
            "0",
            "--registration",
            "*@example.com=registrar",
            "--registration",
            "*@open.example=open",
            "--registrar-key",
            &registrar_pub,
        ],
        |_| {},
    );
    let registrar = registrar.to_str().unwrap();
    let stranger = stranger.to_str().unwrap();
    let file = realm.realm_file();
    assert_eq!(file.protocol_version, 2);
    realm.cli_ok(&["keygen", "--out", "alice.key"]);

    // No proof: refused, naming the method the namespace wants.
    let e = realm.cli_fails(&["register", "--user", "Alice@Example.com", "--key", "alice.key"]);
    assert!(e.contains("needs a proof") && e.contains("registrar"), "{e}");

    // Prepare, attest, send.
    let out =
        realm.cli_ok(&["register", "--user", "Alice@Example.com", "--key", "alice.key", "--prepare", "alice.json"]);
    assert!(out.contains("\"alice@example.com\"") && out.contains("update id"), "{out}");
    realm.cli_ok(&["register", "--user", "bob@example.com", "--key", "alice.key", "--prepare", "bob.json"]);
    realm.cli_ok(&["registrar", "attest", "--key", registrar, "--prepared", "alice.json", "--out", "alice.att"]);
    realm.cli_ok(&["registrar", "attest", "--key", registrar, "--prepared", "bob.json", "--out", "bob.att"]);
    // A key the realm does not list cannot attest (refused before anything is sent).
    let e = realm.cli(&["registrar", "attest", "--key", stranger, "--prepared", "alice.json"]);
    assert!(String::from_utf8_lossy(&e.stderr).contains("not one of realm"), "{e:?}");
    // Bob's attestation does not register alice's update.
    let e = realm.cli_fails(&["register", "--prepared", "alice.json", "--attestation", "bob.att"]);
    assert!(e.contains("permission denied") || e.contains("PermissionDenied") || e.contains("not this update"), "{e}");
    assert!(e.contains("user id") || e.contains("update"), "{e}");
    let out = realm.cli_ok(&["register", "--prepared", "alice.json", "--attestation", "alice.att", "--wait"]);
    assert!(out.contains("registered \"alice@example.com\""), "{out}");
    // Sent again: the same update, answered as applied.
    realm.cli_ok(&["register", "--prepared", "alice.json", "--attestation", "alice.att"]);

    // Every spelling of alice is alice.
    for spelling in ["alice@example.com", "ALICE@EXAMPLE.COM", "Alice@Example.Com"] {
        let out = realm.cli_ok(&["lookup", spelling]);
        assert!(out.contains("alice@example.com") && out.contains("version 0"), "{spelling}: {out}");
    }
    // Changing alice needs only her own key.
    realm.cli_ok(&["update", "--user", "ALICE@example.com", "--key", "alice.key", "--set", "pgp=new", "--wait"]);

    // An open namespace registers anyone; NFD and NFC are one identity there.
    realm.cli_ok(&["register", "--user", "zoe\u{308}@open.example", "--key", "alice.key", "--wait"]);
    let out = realm.cli_ok(&["lookup", "zo\u{eb}@open.example"]);
    assert!(out.contains("version 0"), "{out}");
    let e = realm.cli_fails(&["register", "--user", "zo\u{eb}@open.example", "--key", "alice.key"]);
    assert!(e.contains("already registered"), "{e}");
    // A bidi override is refused before anything is sent.
    let e = realm.cli_fails(&["register", "--user", "b\u{202e}ob@open.example", "--key", "alice.key"]);
    assert!(e.contains("right-to-left override"), "{e}");
    // Outside every namespace: closed.
    let e = realm.cli_fails(&["register", "--user", "carol@elsewhere.org", "--key", "alice.key"]);
    assert!(e.contains("closed"), "{e}");
}

#[test]
fn a_version_1_realm_keeps_raw_ids_and_first_come_first_served() {
    let _s = serial();
    let realm = Realm::start_with(&["--verifier-count", "0", "--protocol-version", "1"], |_| {});
    assert_eq!(realm.realm_file().protocol_version, 1);
    realm.cli_ok(&["keygen", "--out", "alice.key"]);
    realm.cli_ok(&["register", "--user", "Alice@Example.com", "--key", "alice.key", "--wait"]);
    // Under version 1 the lower-case spelling is another identity, still free.
    let out = realm.cli_ok(&["lookup", "alice@example.com"]);
    assert!(out.contains("not registered") || out.contains("no entry"), "{out}");
    realm.cli_ok(&["register", "--user", "alice@example.com", "--key", "alice.key", "--wait"]);
    let out = realm.cli_ok(&["lookup", "Alice@Example.com"]);
    assert!(out.contains("version 0"), "{out}");
}
