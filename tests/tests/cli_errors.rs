//! The CLI's errors and names, run through the real binary: an unreachable realm names every
//! endpoint tried and why; a proof from another realm says so (both realms, both
//! configuration hashes), not "VRF"; admin failures read as words, never tonic's `Debug`
//! structures; no `--help` points at Rust paths; `keyraft dev --verifier-count` (processes) is
//! told apart from a client's `--verifiers` (the minimum number of ratifications); a client
//! state file this machine cannot read is its disk's fault, exit code 4.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use keyraft_core::vrf::VrfSecretKey;
use keyraft_core::{RealmConfig, RealmFile};
use keyraft_tests::{keyraft_bin, serial, wait_for, Realm};
use std::path::Path;
use std::process::{Command, Output};

/// What tonic's `Debug` and `Display` of a status look like: none of it may reach a user.
const TONIC_INTERNALS: [&str; 6] = ["Status {", "metadata", "MetadataMap", "source:", "code: '", "tonic::"];

fn keyraft(dir: &Path, args: &[&str]) -> Output {
    Command::new(keyraft_bin()).args(args).current_dir(dir).output().expect("run keyraft")
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_no_tonic_internals(stderr: &str) {
    for internal in TONIC_INTERNALS {
        assert!(!stderr.contains(internal), "{internal:?} in {stderr}");
    }
}

/// A loopback port nothing listens on: bound by the OS, then released, so connecting to it is
/// refused.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A realm file (fresh keys, no verifier) whose endpoints are `endpoints`.
fn realm_file_with(dir: &Path, endpoints: Vec<String>) {
    let key = |n: u8| keyraft_client::public_key(&ed25519_dalek::SigningKey::from_bytes(&[n; 32]));
    let config = RealmConfig::new(
        "unreachable.example",
        VrfSecretKey::from_seed(&[9; 32]).public_key(),
        vec![key(1), key(2), key(3)],
        vec![],
    )
    .unwrap();
    std::fs::write(dir.join("realm.json"), RealmFile::new(&config, 60_000, 5_000, endpoints).to_json()).unwrap();
}

#[test]
fn an_unreachable_realm_names_every_endpoint_tried_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let endpoints: Vec<String> = (0..2).map(|_| format!("127.0.0.1:{}", closed_port())).collect();
    realm_file_with(dir.path(), endpoints.clone());
    let out = keyraft(dir.path(), &["lookup", "--realm", "realm.json", "--no-state", "alice"]);
    assert!(!out.status.success());
    let stderr = stderr_of(&out);
    let expected = format!(
        "could not reach the realm: tried {} (connection refused), {} (connection refused)",
        endpoints[0], endpoints[1]
    );
    assert!(stderr.contains(&expected), "expected {expected:?} in {stderr}");
    assert_no_tonic_internals(&stderr);

    // The same for an admin call.
    keyraft_core::key_file::write_secret_text(&dir.path().join("token"), "0123\n").unwrap();
    let peer = &endpoints[0];
    let out = keyraft(dir.path(), &["admin", "--peer", peer, "--token-file", "token", "status"]);
    assert!(!out.status.success());
    let stderr = stderr_of(&out);
    assert!(stderr.contains(&format!("error: admin status on {peer}: connection refused")), "{stderr}");
    assert_no_tonic_internals(&stderr);
}

#[test]
fn a_state_file_the_client_cannot_use_is_this_machines_fault_with_its_own_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    realm_file_with(dir.path(), vec![format!("127.0.0.1:{}", closed_port())]);
    std::fs::write(dir.path().join("garbled.json"), b"{not json").unwrap();
    std::fs::write(dir.path().join("blocker"), b"a file, not a directory").unwrap();
    for (state, what) in [("garbled.json", "corrupt"), ("blocker/state.json", "reading it")] {
        for command in ["lookup", "history", "watch"] {
            let out = keyraft(dir.path(), &[command, "--realm", "realm.json", "--state", state, "alice"]);
            let stderr = stderr_of(&out);
            assert_eq!(out.status.code(), Some(4), "keyraft {command} --state {state}: {stderr}");
            assert!(stderr.contains(state) && stderr.contains(what), "{stderr}");
            assert!(stderr.contains("this machine") && stderr.contains("not the realm"), "{stderr}");
            assert!(!stderr.contains("invalid request") && !stderr.contains("misbehaved"), "{stderr}");
        }
    }
}

/// The short form of a configuration hash that error messages show.
fn short_config_hash(realm: &Realm) -> String {
    hex::encode(&realm.realm_file().config().unwrap().hash()[..8])
}

#[test]
fn a_proof_from_another_realm_is_named_as_such_and_admin_refusals_read_as_words() {
    let _s = serial();
    let ours = Realm::start_with(&["--verifier-count", "0"], |_| {});
    let theirs = Realm::start_with(&["--verifier-count", "2"], |_| {});
    // `--verifier-count` is the number of verifier processes `keyraft dev` writes.
    assert_eq!(theirs.realm_file().verifier_keys.len(), 2);
    assert_eq!(ours.realm_file().verifier_keys.len(), 0);

    let proof = theirs.path().join("theirs.proof");
    let proof = proof.to_str().unwrap();
    wait_for("a lookup in the other realm", || {
        let lookup = ["lookup", "--realm", "realm.json", "--verifiers", "0", "nobody", "--save-proof", proof];
        theirs.run_cli(&lookup).status.success().then_some(())
    });
    let out = ours.run_cli(&["verify-proof", "--realm", "realm.json", "--verifiers", "0", proof]);
    assert!(!out.status.success());
    let stderr = stderr_of(&out);
    assert!(stderr.contains("this proof is for a different realm"), "{stderr}");
    assert!(!stderr.contains("VRF"), "{stderr}");
    for named in [theirs.name(), ours.name(), short_config_hash(&theirs), short_config_hash(&ours)] {
        assert!(stderr.contains(&named), "{named:?} not in {stderr}");
    }
    // Checked as a statement about an epoch, the realm still comes first: not "proof is of
    // epoch N, not the epoch asked for".
    let out = ours.run_cli(&["verify-proof", "--realm", "realm.json", "--verifiers", "0", "--past", "999999", proof]);
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("this proof is for a different realm"), "{}", stderr_of(&out));

    // A refusal by the node: what failed, the code in words, the node's message.
    let peer = ours.peer_addr(0);
    let init = ["admin", "--peer", &peer, "--token-file", "keys/admin.token", "init", "--voter", "1=a:1,b:1"];
    let out = ours.run_cli(&init);
    assert!(!out.status.success());
    let stderr = stderr_of(&out);
    assert!(stderr.starts_with(&format!("error: admin init on {peer}: ")), "{stderr}");
    assert_no_tonic_internals(&stderr);
    keyraft_core::key_file::write_secret_text(&ours.path().join("wrong.token"), "not-the-token\n").unwrap();
    let out = ours.run_cli(&["admin", "--peer", &peer, "--token-file", "wrong.token", "status"]);
    assert!(!out.status.success());
    let stderr = stderr_of(&out);
    assert!(stderr.starts_with(&format!("error: admin status on {peer}: unauthenticated: ")), "{stderr}");
    assert_no_tonic_internals(&stderr);
}

/// The subcommands `keyraft <path> --help` lists, each as its path of names.
fn subcommands(path: &[String]) -> Vec<Vec<String>> {
    let dir = std::env::temp_dir();
    let args: Vec<&str> = path.iter().map(String::as_str).chain(["--help"]).collect();
    let out = keyraft(&dir, &args);
    assert!(out.status.success(), "keyraft {args:?}: {}", stderr_of(&out));
    let help = String::from_utf8(out.stdout).unwrap();
    let Some(commands) = help.split("Commands:\n").nth(1) else { return Vec::new() };
    commands
        .lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(|name| path.iter().cloned().chain([name.to_owned()]).collect())
        .collect()
}

#[test]
fn no_help_text_points_at_rust_code() {
    let mut todo = vec![Vec::new()];
    let mut checked = 0;
    while let Some(path) = todo.pop() {
        todo.extend(subcommands(&path));
        let args: Vec<&str> = path.iter().map(String::as_str).chain(["--help"]).collect();
        let help = String::from_utf8(keyraft(&std::env::temp_dir(), &args).stdout).unwrap();
        for rust in ["crates/", "::", "src/"] {
            assert!(!help.contains(rust), "`keyraft {}` mentions {rust:?}:\n{help}", args.join(" "));
        }
        checked += 1;
    }
    // Every top-level command, `key migrate` and the four admin actions.
    assert!(checked >= 20, "only {checked} help texts found");
}

#[test]
fn dev_counts_verifier_processes_and_clients_require_a_minimum_of_ratifications() {
    let dir = std::env::temp_dir();
    let dev = String::from_utf8(keyraft(&dir, &["dev", "--help"]).stdout).unwrap();
    assert!(dev.contains("--verifier-count <VERIFIER_COUNT>"), "{dev}");
    assert!(!dev.contains("--verifiers <"), "{dev}");
    for command in ["lookup", "register", "update", "history", "watch", "status", "verify-proof", "bench"] {
        let help = String::from_utf8(keyraft(&dir, &[command, "--help"]).stdout).unwrap();
        assert!(help.contains("--verifiers <MIN_RATIFICATIONS>"), "{command}: {help}");
        assert!(help.contains("minimum number of verifier ratifications"), "{command}: {help}");
    }
}
