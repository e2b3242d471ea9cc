//! Key files: secret and public key files have distinct, self-describing formats, and every
//! option that reads one refuses the other kind (a public key file given as `--key` would make
//! an identity anyone can control; a secret key file given as `--policy-key` would publish the
//! secret). Key files written before the formats existed (headerless hex) keep working where
//! they are unambiguous.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use keyraft_tests::{serial, Realm};
use std::process::Output;

fn run(realm: &Realm, args: &[&str]) -> Output {
    realm.run_cli(args)
}

fn ok(realm: &Realm, args: &[&str]) -> Output {
    let out = run(realm, args);
    assert!(out.status.success(), "keyraft {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused(realm: &Realm, args: &[&str]) -> String {
    let out = run(realm, args);
    assert!(!out.status.success(), "keyraft {args:?} succeeded: {}", stdout(&out));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn register<'a>(user: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["register", "--realm", "realm.json", "--verifiers", "0", "--user", user];
    v.extend_from_slice(extra);
    v
}

/// Rewrites `path` (a key file written by this version) in the headerless hex form of earlier
/// versions.
fn to_legacy(path: &std::path::Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let hex = text.lines().last().unwrap().trim().to_owned();
    assert_eq!(hex.len(), 64, "{text}");
    std::fs::write(path, format!("{hex}\n")).unwrap();
}

#[test]
fn the_wrong_kind_of_key_file_is_refused_by_every_option_and_nothing_is_registered() {
    let _s = serial();
    let realm = Realm::start(|_| {});
    ok(&realm, &["keygen", "--out", "alice.key"]);
    ok(&realm, &["keygen", "--out", "bob.key"]);
    let secret = std::fs::read_to_string(realm.path().join("alice.key")).unwrap();
    let public = std::fs::read_to_string(realm.path().join("alice.key.pub")).unwrap();
    assert!(secret.starts_with("keyraft-ed25519-secret-v1\n"), "{secret}");
    assert!(public.starts_with("keyraft-ed25519-public-v1\n"), "{public}");
    // keygen overwrites nothing and leaves no half pair.
    refused(&realm, &["keygen", "--out", "alice.key"]);
    assert_eq!(std::fs::read_to_string(realm.path().join("alice.key")).unwrap(), secret);
    std::fs::write(realm.path().join("stray.key.pub"), "x").unwrap();
    refused(&realm, &["keygen", "--out", "stray.key"]);
    assert!(!realm.path().join("stray.key").exists());

    let err = refused(&realm, &register("alice", &["--key", "alice.key.pub"]));
    assert!(
        err.contains("alice.key.pub is a public key file; --key needs a secret key file (made by `keyraft keygen`)"),
        "{err}"
    );
    let err = refused(&realm, &register("alice", &["--key", "bob.key", "--new-key", "alice.key.pub"]));
    assert!(err.contains("alice.key.pub is a public key file; --new-key needs a secret key file"), "{err}");
    let policy = ["--key", "bob.key", "--policy-key", "alice.key", "--policy-threshold", "1"];
    let err = refused(&realm, &register("alice", &policy));
    assert!(err.contains("alice.key is a secret key file; --policy-key needs a public key file"), "{err}");

    // A headerless file named .pub is a public key of an earlier version: never a secret.
    std::fs::copy(realm.path().join("alice.key"), realm.path().join("old.key.pub")).unwrap();
    to_legacy(&realm.path().join("old.key.pub"));
    let err = refused(&realm, &register("alice", &["--key", "old.key.pub"]));
    assert!(
        err.contains("old.key.pub is a public key file (") && err.contains("; --key needs a secret key file"),
        "{err}"
    );
    // A headerless file not named .pub may be an earlier version's secret key: never published.
    std::fs::copy(realm.path().join("alice.key.pub"), realm.path().join("old-secret.key")).unwrap();
    to_legacy(&realm.path().join("old-secret.key"));
    let policy = ["--key", "bob.key", "--policy-key", "old-secret.key", "--policy-threshold", "1"];
    let err = refused(&realm, &register("alice", &policy));
    assert!(
        err.contains("old-secret.key is a secret key file (") && err.contains("--policy-key needs a public key file"),
        "{err}"
    );

    // Nothing was registered: a proper registration afterwards is version 0 of a new identity.
    let out = ok(&realm, &register("alice", &["--key", "alice.key", "--wait"]));
    assert!(stdout(&out).contains("accepted") && stdout(&out).contains("VERIFIED"), "{}", stdout(&out));
}

#[test]
fn key_files_of_an_earlier_version_keep_working() {
    let _s = serial();
    // A dev realm made before the formats existed: every secret key file headerless.
    let mut realm = Realm::create_with(&[], |_| {});
    for name in ["vrf.key", "replica-1.key", "replica-2.key", "replica-3.key", "verifier-1.key"] {
        to_legacy(&realm.path().join("keys").join(name));
    }
    for i in 0..3 {
        realm.start_replica(i);
    }
    realm.start_verifier();

    // A user's keys from an earlier `keyraft keygen`.
    ok(&realm, &["keygen", "--out", "alice.key"]);
    ok(&realm, &["keygen", "--out", "bob.key"]);
    for name in ["alice.key", "alice.key.pub", "bob.key", "bob.key.pub"] {
        to_legacy(&realm.path().join(name));
    }
    let shared = ["--key", "alice.key", "--policy-key", "alice.key.pub", "--policy-key", "bob.key.pub"];
    let mut args = vec!["register", "--realm", "realm.json", "--user", "alice"];
    args.extend_from_slice(&shared);
    args.extend_from_slice(&["--policy-threshold", "1", "--wait"]);
    let out = ok(&realm, &args);
    assert!(
        stdout(&out).contains("VERIFIED")
            && stdout(&out).contains("1 verifier")
            && !stdout(&out).contains("verifier(s)"),
        "{}",
        stdout(&out)
    );
    let warning = String::from_utf8_lossy(&out.stderr);
    assert!(warning.contains("alice.key") && warning.contains("keyraft key migrate"), "{warning}");

    // `keyraft key migrate` rewrites them in the new forms, keeping the keys.
    let before = std::fs::read_to_string(realm.path().join("bob.key")).unwrap();
    ok(&realm, &["key", "migrate", "bob.key", "bob.key.pub"]);
    let after = std::fs::read_to_string(realm.path().join("bob.key")).unwrap();
    assert_eq!(after, format!("keyraft-ed25519-secret-v1\n{before}"));
    let public = std::fs::read_to_string(realm.path().join("bob.key.pub")).unwrap();
    assert!(public.starts_with("keyraft-ed25519-public-v1\n"), "{public}");
    let out =
        ok(&realm, &["update", "--realm", "realm.json", "--user", "alice", "--key", "bob.key", "--set", "pgp=two"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("migrate"), "{stderr}");
}

/// Secrets at rest: a replica refuses to start on a key file or cluster token that others can
/// read or write, naming the file and the fix; the CLI refuses such a token file too; a
/// running realm's logs (at debug level) and `admin status` hold none of its secrets.
#[test]
#[cfg(unix)]
fn secret_files_others_can_read_are_refused_and_no_secret_reaches_the_logs() {
    use std::os::unix::fs::PermissionsExt as _;
    use std::time::{Duration, Instant};
    let _s = serial();
    let mut realm = Realm::create_with(&[], |_| {});
    let dir = realm.path().to_owned();
    let set_mode = |file: &str, mode: u32| {
        std::fs::set_permissions(dir.join(file), std::fs::Permissions::from_mode(mode)).unwrap();
    };
    for (file, setting, mode) in [
        ("keys/replica-1.key", "signing_key_file", 0o644),
        ("keys/vrf.key", "vrf_secret_key_file", 0o640),
        ("keys/cluster.token", "cluster_token_file", 0o606),
    ] {
        set_mode(file, mode);
        let mut child = std::process::Command::new(keyraft_tests::keyraft_bin())
            .args(["server", "--config", "node-1.toml"])
            .current_dir(realm.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                child.kill().unwrap();
                panic!("a replica started with {file} at mode {mode:o}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains(setting) && stderr.contains("chmod 600") && stderr.contains(file), "{file}: {stderr}");
        set_mode(file, 0o600);
    }

    // At debug level, with traffic: no secret appears in any log or in `admin status`.
    std::env::set_var("RUST_LOG", "debug,h2=info,hyper=info,tower=info");
    for i in 0..3 {
        realm.start_replica(i);
    }
    std::env::remove_var("RUST_LOG");
    realm.wait_leader();
    ok(&realm, &["keygen", "--out", "alice.key"]);
    ok(&realm, &register("alice@example.com", &["--key", "alice.key", "--wait"]));
    let peer = realm.peer_addr(0);
    let status = stdout(&ok(&realm, &["admin", "--peer", &peer, "--token-file", "keys/admin.token", "status"]));
    set_mode("keys/admin.token", 0o644);
    let e = refused(&realm, &["admin", "--peer", &peer, "--token-file", "keys/admin.token", "status"]);
    assert!(e.contains("--token-file") && e.contains("chmod 600"), "{e}");
    set_mode("keys/admin.token", 0o600);

    let token = |name: &str| std::fs::read_to_string(realm.path().join(name)).unwrap().trim().to_owned();
    let mut secrets = vec![token("keys/cluster.token"), token("keys/admin.token")];
    for entry in std::fs::read_dir(realm.path().join("keys")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "key") {
            let seed = keyraft_core::key_file::read_secret(&path, "test").unwrap();
            secrets.push(hex::encode(*seed.key));
        }
    }
    secrets
        .push(hex::encode(*keyraft_core::key_file::read_secret(&realm.path().join("alice.key"), "test").unwrap().key));
    let mut logs = vec![("admin status".to_owned(), status)];
    for entry in std::fs::read_dir(realm.path().join("logs")).unwrap() {
        let path = entry.unwrap().path();
        logs.push((path.display().to_string(), std::fs::read_to_string(&path).unwrap()));
    }
    assert!(logs.iter().any(|(_, text)| text.contains("DEBUG")), "the replicas logged at debug level");
    for (name, text) in &logs {
        for secret in &secrets {
            // Half a secret is as good as a whole one to a patient attacker.
            assert!(!text.contains(&secret[..32]) && !text.contains(&secret[32..]), "{name} holds a secret");
        }
    }
}

/// The admin credential is not the replicas' (issue 15 part 3): the cluster token makes no
/// admin call, the admin token sends no Raft message and forwards nothing but configuration
/// changes, and every admin call is logged with where it came from.
#[test]
fn the_cluster_token_is_no_admin_credential_and_the_admin_token_no_replicas() {
    let _s = serial();
    let realm = Realm::start(|_| {});
    let peer = realm.peer_addr(0);
    // Over TLS the operator's certificate goes with the operator's token only.
    let e = refused(
        &realm,
        &["admin", "--peer", &peer, "--token-file", "keys/cluster.token", "change-voters", "--voter", "1,2,3"],
    );
    assert!(
        e.contains("permission denied") && e.contains("the cluster token came with the operator certificate"),
        "{e}"
    );
    ok(&realm, &["admin", "--peer", &peer, "--token-file", "keys/admin.token", "status"]);
    // A replica (its certificate and the cluster token) makes no admin call.
    let mut as_replica = realm.replica_peer(0);
    let change = keyraft_proto::peer::ChangeVotersRequest { voters: vec![1, 2, 3] };
    let e = realm.runtime.block_on(as_replica.change_voters(change)).unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("needs the admin token"), "{e}");
    let mut as_admin = realm.peer(0);
    let raft = keyraft_proto::peer::RaftMessage { target: 1, payload: vec![] };
    let e = realm.runtime.block_on(as_admin.append_entries(raft)).unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("for replicas"), "{e}");
    let update = keyraft_proto::peer::ForwardRequest {
        payload: keyraft_proto::convert::encode_log_entry(&keyraft_core::Command::EpochDelimiter {
            epoch: 9,
            timestamp_ms: 1,
        }),
    };
    let e = realm.runtime.block_on(as_admin.forward(update)).unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    // The CLI takes a membership change to the leader: every node's log counts (written by a
    // background writer, so polled).
    keyraft_tests::wait_for("the refused and the admin calls in the logs", || {
        let log: String = (1..=3)
            .map(|n| std::fs::read_to_string(realm.path().join(format!("logs/node-{n}.log"))).unwrap_or_default())
            .collect();
        let admin = log.lines().any(|l| l.contains("admin call") && l.contains("append-entries"));
        let refused =
            log.lines().any(|l| l.contains("an admin call by a replica refused") && l.contains("change-voters"));
        (admin && refused).then_some(())
    });
}
