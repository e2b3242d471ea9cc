//! Recovery with a veto window (issue 14 part 2), with real replicas, a verifier and the CLI:
//! a realm whose `*@example.com` identities are registered by registrar attestation, with a
//! 3 s window. A recovery shows as pending, then its keys take over after the window; another
//! is vetoed by the owner while `keyraft watch` shows it pending, then cancelled. Every answer
//! needs the verifier's ratification, so the verifier replays both.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use keyraft_tests::{keyraft_bin, serial, wait_for, Realm};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const WINDOW_MS: &str = "3000";

fn keygen(realm: &Realm, name: &str) -> String {
    realm.cli_ok(&["keygen", "--out", name]);
    name.to_owned()
}

/// The public key of a key file, hex (the 64-hex-digit word of its `.pub` file).
fn public_hex(realm: &Realm, key: &str) -> String {
    let text = std::fs::read_to_string(realm.path().join(format!("{key}.pub"))).unwrap();
    let word = text.split_whitespace().find(|w| w.len() == 64 && w.bytes().all(|b| b.is_ascii_hexdigit()));
    word.unwrap_or_else(|| panic!("no key in {key}.pub: {text}")).to_owned()
}

/// Prepares an update with `verb` (`register` or `recover`), has the registrar attest it and
/// sends it, waiting for its ratification.
fn attested(realm: &Realm, verb: &str, user: &str, key: &str, registrar: &str) -> String {
    let prepared = format!("{verb}-{key}.json");
    let attestation = format!("{verb}-{key}.att");
    realm.cli_ok(&[verb, "--user", user, "--key", key, "--prepare", &prepared]);
    realm.cli_ok(&["registrar", "attest", "--key", registrar, "--prepared", &prepared, "--out", &attestation]);
    realm.cli_ok(&[verb, "--prepared", &prepared, "--attestation", &attestation, "--wait"])
}

fn lookup_json(realm: &Realm, user: &str) -> serde_json::Value {
    serde_json::from_str(&realm.cli_ok(&["lookup", user, "--json"])).unwrap()
}

/// The owner key (hex) and version of `user`'s entry, and whether a recovery is pending.
fn state(realm: &Realm, user: &str) -> (String, u64, bool) {
    let j = lookup_json(realm, user);
    let entry = &j["entry"];
    (
        entry["policy"]["keys"][0].as_str().unwrap().to_owned(),
        entry["version"].as_u64().unwrap(),
        !j["pending_recovery"].is_null(),
    )
}

/// A `keyraft watch` of `user`, and its output lines as they come.
fn spawn_watch(realm: &Realm, user: &str) -> (std::process::Child, WatchLines) {
    let mut watch = Command::new(keyraft_bin())
        .args(["watch", "--realm", "realm.json", user])
        .env("KEYRAFT_STATE_FILE", realm.path().join("watch-state.json"))
        .current_dir(realm.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    (watch, WatchLines { rx, seen: String::new() })
}

struct WatchLines {
    rx: mpsc::Receiver<String>,
    seen: String,
}

impl WatchLines {
    /// Waits (30 s at most) for a line containing `needle`.
    fn expect(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    self.seen.push_str(&line);
                    self.seen.push('\n');
                    if line.contains(needle) {
                        return;
                    }
                }
                Err(_) => panic!("the watch printed no {needle:?} line:\n{}", self.seen),
            }
        }
    }
}

#[test]
fn a_recovery_completes_after_the_window_and_another_is_vetoed_by_the_watching_owner() {
    let _s = serial();
    let keys = tempfile::tempdir().unwrap();
    let registrar_key = keys.path().join("registrar.key");
    let out = Command::new(keyraft_bin()).arg("keygen").arg("--out").arg(&registrar_key).output().unwrap();
    assert!(out.status.success());
    let registrar_pub = format!("{}.pub", registrar_key.display());
    let mut realm = Realm::start_with(
        &[
            "--registration",
            "*@example.com=registrar",
            "--registration",
            "*@open.example=open",
            "--registrar-key",
            &registrar_pub,
            "--recovery-window-ms",
            WINDOW_MS,
        ],
        |_| {},
    );
    realm.start_verifier();
    let file = realm.realm_file();
    assert_eq!(file.registration.as_ref().unwrap().recovery_window_ms, 3000);
    let registrar = registrar_key.to_str().unwrap();
    let old = keygen(&realm, "alice-old.key");
    let new = keygen(&realm, "alice-new.key");
    let carol = keygen(&realm, "carol.key");
    let thief = keygen(&realm, "thief.key");

    // Alice registers, loses her key and recovers with the registrar's attestation.
    attested(&realm, "register", "alice@example.com", &old, registrar);
    // Without a proof, a recovery is refused like a registration.
    let e = realm.cli_fails(&["recover", "--user", "alice@example.com", "--key", &new]);
    assert!(e.contains("needs a proof") && e.contains("registrar"), "{e}");
    let out = attested(&realm, "recover", "alice@example.com", &new, registrar);
    assert!(out.contains("recovery requested for \"alice@example.com\""), "{out}");
    // The history shows the pending recovery before the versions; it is not a version yet.
    let history = realm.cli_ok(&["history", "alice@example.com", "--all"]);
    assert!(history.contains("RECOVERY PENDING") && history.contains(&public_hex(&realm, &new)), "{history}");
    assert!(history.contains("complete:"), "{history}");
    let shown = realm.cli_ok(&["lookup", "alice@example.com"]);
    assert!(shown.contains("RECOVERY PENDING") && shown.contains(&public_hex(&realm, &new)), "{shown}");
    assert!(shown.contains("version 0"), "the old entry stays until the window passes: {shown}");
    let j = lookup_json(&realm, "alice@example.com");
    let effective_ms = j["pending_recovery"]["effective_ms"].as_u64().unwrap();
    assert_eq!(j["pending_recovery"]["version"], 1);
    // After the window, the new key owns the identity and nothing is pending.
    let started = Instant::now();
    let (owner, version, pending) = wait_for("alice's recovery to take effect", || {
        let s = state(&realm, "alice@example.com");
        (s.1 == 1).then_some(s)
    });
    assert_eq!((owner, version, pending), (public_hex(&realm, &new), 1, false));
    assert!(keyraft_client::now_ms() + 1_000 >= effective_ms, "took effect before its window ended");
    assert!(started.elapsed() < Duration::from_secs(20));
    // The recovered key works; the lost one no longer does.
    realm.cli_ok(&["update", "--user", "alice@example.com", "--key", &new, "--set", "pgp=after", "--wait"]);
    realm.cli_fails(&["update", "--user", "alice@example.com", "--key", &old, "--set", "pgp=stolen"]);

    // An open namespace cannot be recovered: anyone could claim it.
    realm.cli_ok(&["register", "--user", "dave@open.example", "--key", &carol, "--wait"]);
    let e = realm.cli_fails(&["recover", "--user", "dave@open.example", "--key", &thief]);
    assert!(e.contains("open namespace"), "{e}");

    // Carol registers and watches her identity; a thief who fooled the registrar asks to
    // recover it, and Carol's watch shows it pending; she vetoes it.
    attested(&realm, "register", "carol@example.com", &carol, registrar);
    let (mut watch, mut lines) = spawn_watch(&realm, "carol@example.com");
    lines.expect("CHANGED");
    attested(&realm, "recover", "carol@example.com", &thief, registrar);
    lines.expect("RECOVERY PENDING");
    let out = realm.cli_ok(&["veto", "carol@example.com", "--key", &carol, "--wait"]);
    assert!(out.contains("vetoed recovery of \"carol@example.com\""), "{out}");
    lines.expect("RECOVERY CANCELLED");
    watch.kill().unwrap();
    let _ = watch.wait();
    let (owner, version, pending) = state(&realm, "carol@example.com");
    assert_eq!((owner.as_str(), version, pending), (public_hex(&realm, &carol).as_str(), 1, false));
    // Long after the thief's window, Carol still owns her identity.
    let j = lookup_json(&realm, "carol@example.com");
    let vetoed_at = j["head"]["issue_time_ms"].as_u64().unwrap();
    wait_for("an epoch past the vetoed recovery's window", || {
        let j = lookup_json(&realm, "carol@example.com");
        (j["head"]["issue_time_ms"].as_u64().unwrap() > vetoed_at + 3_500).then_some(())
    });
    assert_eq!(state(&realm, "carol@example.com").0, public_hex(&realm, &carol));
    // Every answer above needed the verifier's ratification: it replayed the recoveries, the
    // one that took effect and the one vetoed, and ratified every epoch.
    assert!(file.verifier_threshold >= 1);
    realm.kill_verifier();
}
