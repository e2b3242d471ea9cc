//! The CLI as a newcomer uses it against a dev realm whose realm file requires the verifier:
//! register and update waiting for the ratification, a shared policy (2 of 2 keys), history,
//! watch, saved proofs verified offline, and the verifier in the status. Then the rough
//! edges: an update whose answer was lost (resubmitted, reported as applied), an update right
//! after a registration made without waiting (it waits for the registration), an update of an
//! identity no ratified epoch holds (a clear message), a watch from an epoch that does not
//! exist (refused at once).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use keyraft_proto::pb;
use keyraft_proto::pb::keyraft_client::KeyraftClient;
use keyraft_tests::fake::FakeReplica;
use keyraft_tests::{keyraft_bin, serial, wait_for, Realm};
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn run(realm: &Realm, args: &[&str]) -> Output {
    realm.run_cli(args)
}

/// `args` with `--realm realm.json` after the subcommand.
fn with_realm<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![args[0], "--realm", "realm.json"];
    v.extend_from_slice(&args[1..]);
    v
}

/// The epoch in a `lookup` or `verify-proof` answer ("... in epoch N ...").
fn epoch_in(out: &str) -> u64 {
    let rest = &out[out.find("in epoch ").unwrap_or_else(|| panic!("no epoch in {out}")) + "in epoch ".len()..];
    rest.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

/// A realm with its verifier running and one epoch it ratified (a CLI lookup succeeds), and
/// alice's key pair in `alice.key`.
fn realm_whose_verifier_ratified_an_epoch() -> Realm {
    let mut realm = Realm::start(|_| {});
    realm.start_verifier();
    ok(&realm, &["keygen", "--out", "alice.key"]);
    wait_for("the verifier to ratify an epoch", || {
        run(&realm, &with_realm(&["lookup", "nobody"])).status.success().then_some(())
    });
    realm
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
    // The realm's directory holds secret keys: git must never pick it up, wherever it is.
    let ignore = std::fs::read_to_string(realm.path().join(".gitignore")).unwrap_or_default();
    assert_eq!(ignore.lines().find(|l| !l.starts_with('#')), Some("*"), "{ignore:?}");
    ok(&realm, &["keygen", "--out", "alice.key"]);
    let bob = ok(&realm, &["keygen", "--out", "bob.key"]);
    assert!(bob.contains("bob.key.pub"), "{bob}");

    let out =
        ok(&realm, &with_realm(&["register", "--user", "alice", "--key", "alice.key", "--set", "pgp=one", "--wait"]));
    assert!(out.contains("accepted") && out.contains("VERIFIED") && out.contains("and 1 verifier\n"), "{out}");
    let out = ok(&realm, &with_realm(&["lookup", "alice"]));
    assert!(out.contains("version 0") && out.contains("pgp = one") && out.contains("and 1 verifier\n"), "{out}");

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
    assert!(versions.iter().all(|v| v.contains("VERIFIED") && v.contains("1 verifier,")), "{history}");
    let page = ok(&realm, &with_realm(&["history", "alice", "--page-size", "2"]));
    let token = page.lines().find_map(|l| l.strip_prefix("more: --page-token ")).expect("a next page").to_owned();
    let rest = ok(&realm, &with_realm(&["history", "alice", "--page-size", "2", "--page-token", &token]));
    assert!(rest.lines().any(|l| l.starts_with("version 0")), "{rest}");

    // Watch: the current value, then a heartbeat of a later epoch.
    let watch = ok(&realm, &with_realm(&["watch", "alice", "--count", "2"]));
    let lines: Vec<&str> = watch.lines().filter(|l| !l.starts_with("  ")).collect();
    assert!(lines[0].starts_with("CHANGED") && lines[0].contains("version 2"), "{watch}");
    // A change is printed as `lookup` prints an answer: policy, quorum, head, replica.
    for detail in ["  policy ", "  ratified by a replica majority", "  head issued at ", "  answered by "] {
        assert!(watch.contains(detail), "{detail:?} not in {watch}");
    }
    assert!(
        lines[1].starts_with("unchanged in epoch")
            && lines[1].contains("version 2")
            && lines[1].contains("Z (")
            && lines[1].contains(" ago)"),
        "{watch}"
    );

    // A saved proof verifies offline, now and later as a statement about its epoch.
    let saved = ok(&realm, &with_realm(&["lookup", "alice", "--save-proof", "alice.proof"]));
    assert!(ok(&realm, &["verify-proof", "--realm", "realm.json", "alice.proof"]).contains("VERIFIED"));
    let later = (keyraft_client::now_ms() + 3_600_000).to_string();
    let expired = run(&realm, &["verify-proof", "--realm", "realm.json", "--at-ms", &later, "alice.proof"]);
    assert!(!expired.status.success() && String::from_utf8_lossy(&expired.stderr).contains("TTL"));
    let epoch = epoch_in(&saved).to_string();
    let past = ok(&realm, &["verify-proof", "--realm", "realm.json", "--past", &epoch, "alice.proof"]);
    assert!(past.contains("version 2") && past.contains("HISTORICAL"), "{past}");

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
    let token_file = realm.path().join("keys/admin.token");
    wait_for("the verifier in the status", || {
        let status = ok(
            &realm,
            &["admin", "--peer", &realm.peer_addr(0), "--token-file", token_file.to_str().unwrap(), "status"],
        );
        status.contains("verifier").then_some(())
    });
}

/// A replica that relays every update to replica 1 and answers the first one "try again"
/// (as when its forward to a leader that changed failed after the leader applied it), and the
/// later ones as `later` says given the real answer.
fn losing_the_first_answer(
    realm: &Realm,
    later: fn(pb::UpdateResponse) -> Result<pb::UpdateResponse, tonic::Status>,
) -> (String, Arc<AtomicUsize>) {
    let upstream = {
        let _g = realm.runtime.enter();
        KeyraftClient::new(realm.public_channel(0))
    };
    let updates = Arc::new(AtomicUsize::new(0));
    let seen = updates.clone();
    let addr = FakeReplica::default()
        .relay_to(&realm.public_addr(0))
        .update(move |request| {
            let mut upstream = upstream.clone();
            let first = seen.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                let answer = upstream.update(request).await?.into_inner();
                if first {
                    return Err(tonic::Status::unavailable("forwarding to the leader failed; try again"));
                }
                later(answer)
            }
        })
        .serve(realm);
    (addr, updates)
}

#[test]
fn an_update_answered_try_again_is_resubmitted_and_reported_as_already_applied() {
    let _s = serial();
    let realm = Realm::start(|_| {});
    ok(&realm, &["keygen", "--out", "alice.key"]);
    let register = ["register", "--verifiers", "0", "--user", "alice", "--key", "alice.key", "--set", "pgp=one"];
    assert!(ok(&realm, &with_realm(&[&register[..], &["--wait"]].concat())).contains("accepted"));
    let update = |endpoint: &str, value: &str| {
        let set = format!("pgp={value}");
        let args = ["update", "--verifiers", "0", "--endpoint", endpoint, "--user", "alice", "--key", "alice.key"];
        ok(&realm, &with_realm(&[&args[..], &["--set", &set]].concat()))
    };
    let shows = |version: &str, value: &str| {
        let out = ok(&realm, &with_realm(&["lookup", "--verifiers", "0", "alice"]));
        (out.contains(version) && out.contains(&format!("pgp = {value}"))).then_some(())
    };

    // The same update is resubmitted and answered as a duplicate.
    let (lossy, updates) = losing_the_first_answer(&realm, Ok);
    let out = update(&lossy, "two");
    assert!(out.contains("the update was already applied in epoch"), "{out}");
    assert_eq!(updates.load(Ordering::SeqCst), 2, "the same update is resubmitted once");
    wait_for("version 1 in a ratified epoch", || shows("version 1", "two"));

    // The resubmission is refused (another update followed the first): the update's status
    // shows the first attempt applied.
    let (conflicting, updates) = losing_the_first_answer(&realm, |_| {
        Err(tonic::Status::failed_precondition("update refused: version 2 does not follow the current version 3"))
    });
    let out = update(&conflicting, "three");
    assert!(out.contains("the update was already applied in epoch"), "{out}");
    assert_eq!(updates.load(Ordering::SeqCst), 2);
    wait_for("version 2 in a ratified epoch", || shows("version 2", "three"));
}

#[test]
fn an_update_right_after_a_registration_without_wait_waits_for_the_registration() {
    let _s = serial();
    let realm = realm_whose_verifier_ratified_an_epoch();
    // The verifier pauses: the registration's epoch cannot be ratified until it resumes.
    let verifier = nix::unistd::Pid::from_raw(i32::try_from(realm.verifiers[&1].id()).unwrap());
    nix::sys::signal::kill(verifier, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let out = ok(&realm, &with_realm(&["register", "--user", "alice", "--key", "alice.key", "--set", "pgp=one"]));
    assert!(out.contains("accepted"), "{out}");
    let mut update = std::process::Command::new(keyraft_bin())
        .args(with_realm(&["update", "--user", "alice", "--key", "alice.key", "--set", "pgp=two"]))
        .env("KEYRAFT_STATE_FILE", realm.path().join("client-state.json"))
        .env("RUST_LOG", "keyraft_client=info")
        .current_dir(realm.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(update.stderr.take().unwrap());
    let mut log = String::new();
    loop {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
        log.push_str(&line);
        assert!(n > 0, "the update ended without waiting for the registration:\n{log}");
        if line.contains("waiting for the epoch of this client's last update") {
            break;
        }
    }
    nix::sys::signal::kill(verifier, nix::sys::signal::Signal::SIGCONT).unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let out = update.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{log}{rest}");
    assert!(stdout.contains("updated \"alice\": accepted"), "{stdout}");
    wait_for("version 1 in a ratified epoch", || {
        let out = ok(&realm, &with_realm(&["lookup", "alice"]));
        (out.contains("version 1") && out.contains("pgp = two")).then_some(())
    });
}

#[test]
fn an_update_of_an_identity_not_in_a_ratified_epoch_says_why() {
    let _s = serial();
    let realm = Realm::start(|_| {});
    ok(&realm, &["keygen", "--out", "bob.key"]);
    let out = run(&realm, &with_realm(&["update", "--verifiers", "0", "--user", "bob", "--key", "bob.key"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("not registered in epoch") && stderr.contains("retry in a few seconds"), "{stderr}");
}

#[test]
fn a_watch_from_an_epoch_the_realm_has_not_reached_is_refused_at_once() {
    let _s = serial();
    let realm = Realm::start(|_| {});
    ok(&realm, &["keygen", "--out", "alice.key"]);
    ok(&realm, &with_realm(&["register", "--verifiers", "0", "--user", "alice", "--key", "alice.key", "--wait"]));
    let newest = realm.status(0).unwrap().ratified_epoch;
    for from in [u64::MAX, newest + 1_000] {
        let from = from.to_string();
        let started = std::time::Instant::now();
        let mut watch = std::process::Command::new(keyraft_bin())
            .args(with_realm(&["watch", "--verifiers", "0", "alice", "--from-epoch", &from]))
            .env("KEYRAFT_STATE_FILE", realm.path().join("client-state.json"))
            .current_dir(realm.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let status = loop {
            if let Some(status) = watch.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > std::time::Duration::from_secs(20) {
                watch.kill().unwrap();
                panic!("watch --from-epoch {from} still runs after 20 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let out = watch.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!status.success(), "{stderr}");
        assert!(stderr.contains(&from) && stderr.contains("newest epoch"), "{stderr}");
    }
}

/// `verify-proof` with `--realm realm.json --verifiers 0`, then `args`.
fn verify_proof(realm: &Realm, args: &[&str]) -> Output {
    run(realm, &[&["verify-proof", "--realm", "realm.json", "--verifiers", "0"], args].concat())
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_saved_proof_older_than_an_epoch_seen_is_refused_as_current_and_verified_as_historical() {
    let _s = serial();
    let realm = Realm::start(|_| {});
    ok(&realm, &["keygen", "--out", "alice.key"]);
    ok(&realm, &["keygen", "--out", "bob.key"]);
    ok(&realm, &with_realm(&["register", "--verifiers", "0", "--user", "alice", "--key", "alice.key", "--wait"]));
    let saved = ok(&realm, &with_realm(&["lookup", "--verifiers", "0", "alice", "--save-proof", "old.proof"]));
    let old = epoch_in(&saved);
    // The realm moves on (well within the TTL) and this client sees it.
    ok(&realm, &with_realm(&["register", "--verifiers", "0", "--user", "bob", "--key", "bob.key", "--wait"]));
    let newer = ok(&realm, &with_realm(&["lookup", "--verifiers", "0", "alice"]));
    assert!(epoch_in(&newer) > old, "{saved}{newer}");

    // As the current answer, the old proof is a rollback: the same memory as lookup's.
    let out = verify_proof(&realm, &["old.proof"]);
    let stderr = stderr_of(&out);
    assert!(!out.status.success(), "an old proof verified as current: {}", String::from_utf8_lossy(&out.stdout));
    assert!(stderr.contains("rollback") && stderr.contains(&format!("--past {old}")), "{stderr}");
    // The state file given explicitly is the same memory.
    let state = realm.path().join("client-state.json");
    let out = verify_proof(&realm, &["--state", state.to_str().unwrap(), "old.proof"]);
    assert!(!out.status.success() && stderr_of(&out).contains("rollback"), "{}", stderr_of(&out));

    // As a statement about its epoch, it verifies and says so.
    let old_s = old.to_string();
    let out = verify_proof(&realm, &["--past", &old_s, "old.proof"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("HISTORICAL: what \"alice\" was in epoch {old}, nothing about today")),
        "{stdout}"
    );

    // A client that has seen nothing newer accepts it as current, and remembers its epoch as
    // lookup does: a proof of an older epoch is then a rollback.
    let fresh = realm.path().join("fresh-state.json");
    let fresh = fresh.to_str().unwrap();
    let lookup = ["lookup", "--state", "another-client.json", "--verifiers", "0", "alice", "--save-proof"];
    let first = ok(&realm, &with_realm(&[&lookup[..], &["first.proof"]].concat()));
    let first_epoch = epoch_in(&first);
    ok(&realm, &with_realm(&["register", "--verifiers", "0", "--user", "carol", "--key", "bob.key", "--wait"]));
    let second = ok(&realm, &with_realm(&[&lookup[..], &["second.proof"]].concat()));
    assert!(epoch_in(&second) > first_epoch, "{first}{second}");
    let out = verify_proof(&realm, &["--state", fresh, "second.proof"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("VERIFIED") && !stdout.contains("HISTORICAL"),
        "{stdout}{}",
        stderr_of(&out)
    );
    let out = verify_proof(&realm, &["--state", fresh, "first.proof"]);
    assert!(!out.status.success() && stderr_of(&out).contains("rollback"), "{}", stderr_of(&out));
}

#[test]
fn verify_proof_checks_a_saved_proof_about_a_given_epoch_or_as_of_a_time_with_the_ttl_and_skew_given() {
    let _s = serial();
    let realm = Realm::start(|_| {});
    ok(&realm, &["keygen", "--out", "alice.key"]);
    ok(&realm, &with_realm(&["register", "--verifiers", "0", "--user", "alice", "--key", "alice.key", "--wait"]));
    let json = ok(&realm, &with_realm(&["lookup", "--verifiers", "0", "--json", "alice", "--save-proof", "p.proof"]));
    let head = &serde_json::from_str::<serde_json::Value>(&json).unwrap()["head"];
    let (epoch, issued) = (head["epoch"].as_u64().unwrap(), head["issue_time_ms"].as_u64().unwrap());
    // Historical checks neither read nor update the memory of the present.
    let state = realm.path().join("historical-state.json");
    let historical = |args: &[&str]| {
        let out = verify_proof(&realm, &[&["--state", state.to_str().unwrap()], args, &["p.proof"]].concat());
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), stderr_of(&out))
    };
    let about_today = format!("HISTORICAL: what \"alice\" was in epoch {epoch}, nothing about today");

    // --past EPOCH: the epoch the proof must be about.
    let (success, stdout, stderr) = historical(&["--past", &epoch.to_string()]);
    assert!(success && stdout.contains(&about_today), "{stdout}{stderr}");
    let (success, _, stderr) = historical(&["--past", &(epoch + 1).to_string()]);
    assert!(
        !success && stderr.contains(&format!("proof is of epoch {epoch}, not the epoch {}", epoch + 1)),
        "{stderr}"
    );

    // --at-ms: fresh as of that time, by the realm file's TTL (60 s) and skew (5 s) or those given.
    let at = |offset_ms: i64| issued.checked_add_signed(offset_ms).unwrap().to_string();
    let (success, stdout, stderr) = historical(&["--at-ms", &at(1_000)]);
    assert!(success && stdout.contains(&about_today) && stdout.contains("as of"), "{stdout}{stderr}");
    let (success, _, stderr) = historical(&["--at-ms", &at(61_000)]);
    assert!(!success && stderr.contains("TTL"), "{stderr}");
    let (success, stdout, stderr) = historical(&["--at-ms", &at(61_000), "--ttl-ms", "120000"]);
    assert!(success && stdout.contains(&about_today), "{stdout}{stderr}");
    let (success, _, stderr) = historical(&["--at-ms", &at(-10_000)]);
    assert!(!success && stderr.contains("ahead of the client's clock"), "{stderr}");
    let (success, stdout, stderr) = historical(&["--at-ms", &at(-10_000), "--skew-ms", "20000"]);
    assert!(success && stdout.contains(&about_today), "{stdout}{stderr}");
    let (success, _, stderr) = historical(&["--past", &epoch.to_string(), "--at-ms", &at(0)]);
    assert!(!success && stderr.contains("cannot be used with"), "{stderr}");
    assert!(!state.exists(), "a historical check wrote the epoch memory");

    // As the current answer, with the skew given (the head is not from the future).
    let out = verify_proof(&realm, &["--state", state.to_str().unwrap(), "--skew-ms", "0", "p.proof"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("the current answer"), "{stdout}{}", stderr_of(&out));
    assert!(!stdout.contains("HISTORICAL") && state.exists(), "{stdout}");
}

/// The profile lines of a `lookup` answer ("  app = value"), sorted.
fn profile_lines(out: &str) -> Vec<String> {
    out.lines().filter(|l| l.starts_with("  ") && l.contains(" = ")).map(|l| l.trim().to_owned()).collect()
}

#[test]
fn an_update_changes_only_the_profile_keys_it_names_unless_told_to_replace_the_profile() {
    let _s = serial();
    let mut realm = Realm::start(|_| {});
    realm.start_verifier();
    ok(&realm, &["keygen", "--out", "alice.key"]);
    let register = ["register", "--user", "alice", "--key", "alice.key", "--set", "pgp=a", "--set", "chat=b", "--wait"];
    ok(&realm, &with_realm(&register));

    // Only pgp named: chat is kept, and the output says so.
    let out = ok(&realm, &with_realm(&["update", "--user", "alice", "--key", "alice.key", "--set", "pgp=c", "--wait"]));
    let looked = ok(&realm, &with_realm(&["lookup", "alice"]));
    assert_eq!(profile_lines(&looked), ["chat = b", "pgp = c"], "{looked}");
    assert!(out.contains("pgp: changed") && out.contains("chat: kept"), "{out}");

    // --unset removes one key and keeps the others.
    let out =
        ok(&realm, &with_realm(&["update", "--user", "alice", "--key", "alice.key", "--unset", "chat", "--wait"]));
    assert!(out.contains("chat: removed") && out.contains("pgp: kept"), "{out}");
    let looked = ok(&realm, &with_realm(&["lookup", "alice"]));
    assert_eq!(profile_lines(&looked), ["pgp = c"], "{looked}");

    // Unsetting a key the profile does not hold is the caller's mistake, said before sending.
    let bad = run(&realm, &with_realm(&["update", "--user", "alice", "--key", "alice.key", "--unset", "chat"]));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && stderr.contains("chat"), "{stderr}");

    // --replace-profile starts from an empty profile.
    let replace = ["update", "--user", "alice", "--key", "alice.key", "--replace-profile", "--set", "x=y", "--wait"];
    let out = ok(&realm, &with_realm(&replace));
    assert!(out.contains("x: added") && out.contains("pgp: removed"), "{out}");
    let looked = ok(&realm, &with_realm(&["lookup", "alice"]));
    assert_eq!(profile_lines(&looked), ["x = y"], "{looked}");
}

#[test]
fn a_wait_that_times_out_reports_the_update_accepted_with_its_own_exit_code_and_status_finds_it() {
    let _s = serial();
    let mut realm = realm_whose_verifier_ratified_an_epoch();
    // A ratified epoch for the registration's lookup, then no verifier ratifies any more.
    realm.kill_verifier();

    let register =
        ["register", "--user", "alice", "--key", "alice.key", "--set", "pgp=a", "--wait", "--wait-ms", "300"];
    let out = run(&realm, &with_realm(&register));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("not yet ratified by 1 verifier within"), "{stdout}");
    let epoch = epoch_in(&stdout);
    assert!(stdout.contains(&format!("accepted in epoch {epoch};")), "{stdout}");
    let id = stdout
        .split("update id ")
        .nth(1)
        .expect("the update id")
        .split(|c: char| !c.is_ascii_hexdigit())
        .next()
        .unwrap();
    assert_eq!(id.len(), 64, "{stdout}");

    let status = ok(&realm, &with_realm(&["status", id, "--user", "alice"]));
    assert!(status.contains(&format!("IN_EPOCH {epoch}")), "{status}");
    // Without the identity, a replica finds only updates still pending or rejected.
    let unknown = ok(&realm, &with_realm(&["status", &"00".repeat(32)]));
    assert!(unknown.contains("UNKNOWN"), "{unknown}");
}

/// `keyraft bench` end to end on a small scale: every phase runs without errors, and the
/// lookups of registered identities find them present (the bench verifies each answer here and
/// counts an absent one as an error).
#[test]
fn bench_runs_its_phases_and_reads_the_identities_it_registered() {
    let _s = serial();
    let realm = realm_whose_verifier_ratified_an_epoch();
    let out = ok(
        &realm,
        &with_realm(&[
            "bench",
            "--clients",
            "4",
            "--updates",
            "12",
            "--lookups",
            "12",
            "--reads",
            "30",
            "--verify-every",
            "1",
        ]),
    );
    for phase in ["lookups: 12 in", "updates (applied): 12 in", "lookups of 12 registered identities: 30 in"] {
        let line = out.lines().find(|l| l.starts_with(phase)).unwrap_or_else(|| panic!("no {phase:?} in {out}"));
        assert!(line.contains("(0 errors)"), "{line}");
    }
    assert!(out.contains("ratified by a replica majority"), "{out}");
}
