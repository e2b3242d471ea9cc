//! The CLI as a newcomer uses it against a dev realm whose realm file requires the verifier:
//! register and update waiting for the ratification, a shared policy (2 of 2 keys), history,
//! watch, saved proofs verified offline, and the verifier in the status.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use keyraft_tests::{keyraft_bin, serial, wait_for, Realm};
use std::process::Output;

fn run(realm: &Realm, args: &[&str]) -> Output {
    std::process::Command::new(keyraft_bin())
        .args(args)
        .env("KEYRAFT_STATE_FILE", realm.path().join("client-state.json"))
        .current_dir(realm.path())
        .output()
        .unwrap()
}

/// `args` with `--realm realm.json` after the subcommand.
fn with_realm<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![args[0], "--realm", "realm.json"];
    v.extend_from_slice(&args[1..]);
    v
}

fn ok(realm: &Realm, args: &[&str]) -> String {
    let out = run(realm, args);
    assert!(out.status.success(), "keyraft {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_newcomer_registers_updates_and_follows_an_identity_with_verified_answers() {
    let _s = serial();
    let mut realm = Realm::start(|_| {});
    realm.start_verifier();
    assert_eq!(realm.realm_file().verifier_threshold, 1);
    ok(&realm, &["keygen", "--out", "alice.key"]);
    let bob = ok(&realm, &["keygen", "--out", "bob.key"]);
    assert!(bob.contains("bob.key.pub"), "{bob}");

    let out =
        ok(&realm, &with_realm(&["register", "--user", "alice", "--key", "alice.key", "--set", "pgp=one", "--wait"]));
    assert!(out.contains("accepted") && out.contains("VERIFIED") && out.contains("1 verifier(s)"), "{out}");
    let out = ok(&realm, &with_realm(&["lookup", "alice"]));
    assert!(out.contains("version 0") && out.contains("pgp = one") && out.contains("1 verifier(s)"), "{out}");

    // Alice shares the identity with Bob: from now on both must sign.
    let shared = [
        "update",
        "--user",
        "alice",
        "--key",
        "alice.key",
        "--key",
        "bob.key",
        "--policy-key",
        "alice.key.pub",
        "--policy-key",
        "bob.key.pub",
        "--policy-threshold",
        "2",
        "--set",
        "pgp=two",
        "--wait",
    ];
    let out = ok(&realm, &with_realm(&shared));
    assert!(out.contains("updated") && out.contains("VERIFIED"), "{out}");
    let alone = run(&realm, &with_realm(&["update", "--user", "alice", "--key", "alice.key", "--set", "pgp=three"]));
    let stderr = String::from_utf8_lossy(&alone.stderr);
    assert!(!alone.status.success() && stderr.contains("polic"), "one signature passed a 2-of-2 policy: {stderr}");
    let both = ["update", "--user", "alice", "--key", "alice.key", "--key", "bob.key", "--set", "pgp=three", "--wait"];
    ok(&realm, &with_realm(&both));

    // Every version, newest first, each proven at its epoch.
    let history = ok(&realm, &with_realm(&["history", "alice"]));
    let versions: Vec<&str> = history.lines().filter(|l| l.starts_with("version ")).collect();
    assert_eq!(versions.len(), 3, "{history}");
    assert!(versions[0].starts_with("version 2") && versions[2].starts_with("version 0"), "{history}");
    assert!(versions.iter().all(|v| v.contains("VERIFIED") && v.contains("1 verifier(s)")), "{history}");
    let page = ok(&realm, &with_realm(&["history", "alice", "--page-size", "2"]));
    let token = page.lines().find_map(|l| l.strip_prefix("more: --page-token ")).expect("a next page").to_owned();
    let rest = ok(&realm, &with_realm(&["history", "alice", "--page-size", "2", "--page-token", &token]));
    assert!(rest.lines().any(|l| l.starts_with("version 0")), "{rest}");

    // Watch: the current value, then a heartbeat of a later epoch.
    let watch = ok(&realm, &with_realm(&["watch", "alice", "--count", "2"]));
    let lines: Vec<&str> = watch.lines().filter(|l| !l.starts_with("  ")).collect();
    assert!(lines[0].starts_with("CHANGED") && lines[0].contains("version 2"), "{watch}");
    assert!(lines[1].starts_with("unchanged in epoch") && lines[1].contains("version 2"), "{watch}");

    // A saved proof verifies offline, now and later as a statement about its epoch.
    ok(&realm, &with_realm(&["lookup", "alice", "--save-proof", "alice.proof"]));
    assert!(ok(&realm, &["verify-proof", "--realm", "realm.json", "alice.proof"]).contains("VERIFIED"));
    let later = (keyraft_client::now_ms() + 3_600_000).to_string();
    let expired = run(&realm, &["verify-proof", "--realm", "realm.json", "--at-ms", &later, "alice.proof"]);
    assert!(!expired.status.success() && String::from_utf8_lossy(&expired.stderr).contains("TTL"));
    assert!(ok(&realm, &["verify-proof", "--realm", "realm.json", "--past", "alice.proof"]).contains("version 2"));

    // Rotation: the identity is handed over to Carol's key alone; the old keys lose it.
    ok(&realm, &["keygen", "--out", "carol.key"]);
    let handover = ["update", "--user", "alice", "--key", "alice.key", "--key", "bob.key", "--new-key", "carol.key"];
    ok(&realm, &with_realm(&[&handover[..], &["--set", "pgp=four", "--wait"]].concat()));
    let old = run(&realm, &with_realm(&["update", "--user", "alice", "--key", "alice.key", "--set", "pgp=five"]));
    assert!(!old.status.success(), "a key handed over still signs");
    ok(&realm, &with_realm(&["update", "--user", "alice", "--key", "carol.key", "--set", "pgp=five", "--wait"]));
    let out = ok(&realm, &with_realm(&["lookup", "alice"]));
    assert!(out.contains("version 4") && out.contains("pgp = five"), "{out}");

    // Operators see the verifier's progress.
    let token_file = realm.path().join("keys/cluster.token");
    wait_for("the verifier in the status", || {
        let status = ok(
            &realm,
            &["admin", "--peer", &realm.peer_addr(0), "--token-file", token_file.to_str().unwrap(), "status"],
        );
        status.contains("verifier").then_some(())
    });
}
