//! What the CLI prints about verified answers: a lookup whose quorum's newest epoch is behind
//! the realm's says so, historical answers say they are, every answer names the replica that
//! gave it, times are UTC and ages, `history` states each policy's threshold, and the `--json`
//! outputs follow the schema docs/cli-json.md documents (every field they hold is documented
//! there), with every version's proof exported.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use keyraft_tests::{serial, wait_for, Realm};
use serde_json::Value;
use std::collections::BTreeSet;
use std::process::Output;

/// `args` with `--realm realm.json` after the subcommand.
fn with_realm<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![args[0], "--realm", "realm.json"];
    v.extend_from_slice(&args[1..]);
    v
}

fn ok(realm: &Realm, args: &[&str]) -> String {
    let out: Output = realm.run_cli(args);
    assert!(out.status.success(), "keyraft {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn json(realm: &Realm, args: &[&str]) -> Value {
    let out = ok(realm, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("keyraft {args:?} printed no JSON ({e}): {out}"))
}

/// The number after `prefix` in `out`.
fn number_after(out: &str, prefix: &str) -> u64 {
    let rest = &out[out.find(prefix).unwrap_or_else(|| panic!("no {prefix:?} in {out}")) + prefix.len()..];
    rest.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

/// Whether `s` starts with an RFC 3339 UTC time to the second (`2026-11-30T02:14:05Z`).
fn starts_with_utc_time(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 20
        && b[..20].iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// Whether every occurrence of `marker` in `out` is followed by a UTC time and its age.
fn times_are_human(out: &str, marker: &str) -> bool {
    let mut found = false;
    for (i, _) in out.match_indices(marker) {
        let rest = &out[i + marker.len()..];
        if !starts_with_utc_time(rest)
            || !rest[20..].starts_with(" (")
            || !rest[..rest.find(')').unwrap()].ends_with("ago")
        {
            return false;
        }
        found = true;
    }
    found
}

fn public_addrs(realm: &Realm) -> Vec<String> {
    (0..3).map(|i| realm.public_addr(i)).collect()
}

fn pause(realm: &Realm, signal: nix::sys::signal::Signal) {
    let verifier = nix::unistd::Pid::from_raw(i32::try_from(realm.verifiers[&1].id()).unwrap());
    nix::sys::signal::kill(verifier, signal).unwrap();
}

#[test]
fn a_lookup_whose_quorum_is_behind_the_realm_says_so_and_names_the_replica_that_answered() {
    let _s = serial();
    let mut realm = Realm::start(|_| {});
    realm.start_verifier();
    ok(&realm, &["keygen", "--out", "alice.key"]);
    ok(&realm, &with_realm(&["register", "--user", "alice", "--key", "alice.key", "--set", "pgp=one", "--wait"]));
    // The verifier stops ratifying; the replicas go on closing epochs.
    pause(&realm, nix::sys::signal::Signal::SIGSTOP);
    let ratified = json(&realm, &with_realm(&["lookup", "alice", "--json"]))["verification"]["epoch"].as_u64().unwrap();
    ok(&realm, &with_realm(&["register", "--verifiers", "0", "--user", "bob", "--key", "alice.key", "--wait"]));
    realm.wait_ratified(0, ratified + 1);
    realm.wait_ratified(1, ratified + 1);
    realm.wait_ratified(2, ratified + 1);

    let out = ok(&realm, &with_realm(&["lookup", "alice"]));
    let said = format!("newest ratified epoch with your quorum is {ratified}; epochs up to ");
    assert!(out.contains(&said), "{out}");
    assert!(number_after(&out, &said) > ratified, "{out}");
    let answered = number_after(&out, "answered by 127.0.0.1:");
    assert!(public_addrs(&realm).contains(&format!("127.0.0.1:{answered}")), "{out}");
    assert!(times_are_human(&out, "head issued at "), "{out}");

    let doc = json(&realm, &with_realm(&["lookup", "alice", "--json"]));
    let v = &doc["verification"];
    assert_eq!(
        (v["result"].as_str(), v["epoch"].as_u64(), v["behind"].as_bool()),
        (Some("verified"), Some(ratified), Some(true))
    );
    assert!(v["newest_epoch_hint"].as_u64().unwrap() > ratified, "{doc}");
    assert!(public_addrs(&realm).contains(&doc["answered_by"].as_str().unwrap().to_owned()), "{doc}");

    // Requiring no verifier, the newest epoch answers: nothing is behind (bar an epoch closing
    // between the proof and the hint).
    wait_for("a lookup requiring no verifier not behind", || {
        let out = ok(&realm, &with_realm(&["lookup", "--verifiers", "0", "alice"]));
        (!out.contains("BEHIND")).then_some(())
    });

    // An answer about a given epoch is historical: nothing about today, so nothing behind.
    let out = ok(&realm, &with_realm(&["lookup", "alice", "--epoch", &ratified.to_string()]));
    let about_today = format!("HISTORICAL: what \"alice\" was in epoch {ratified}, nothing about today");
    assert!(out.contains(&about_today) && !out.contains("BEHIND"), "{out}");
    let doc = json(&realm, &with_realm(&["lookup", "alice", "--epoch", &ratified.to_string(), "--json"]));
    assert_eq!(doc["verification"]["result"], "historical", "{doc}");
    pause(&realm, nix::sys::signal::Signal::SIGCONT);
}

#[test]
fn history_states_each_policy_s_threshold_and_every_time_is_utc_with_an_age() {
    let _s = serial();
    let realm = Realm::start(|_| {});
    ok(&realm, &["keygen", "--out", "alice.key"]);
    ok(&realm, &["keygen", "--out", "bob.key"]);
    let zero = ["--verifiers", "0"];
    let register = ["register", "--user", "alice", "--key", "alice.key", "--set", "pgp=one", "--wait"];
    ok(&realm, &with_realm(&[&register[..], &zero].concat()));
    let shared =
        ["update", "--user", "alice", "--key", "alice.key", "--key", "bob.key", "--policy-key", "alice.key.pub"];
    let shared = [&shared[..], &["--policy-key", "bob.key.pub", "--policy-threshold", "2", "--wait"], &zero].concat();
    ok(&realm, &with_realm(&shared));

    let history = ok(&realm, &with_realm(&["history", "--verifiers", "0", "alice", "--all", "--page-size", "1"]));
    assert!(
        history.starts_with("HISTORICAL: what \"alice\" was at each version's epoch, nothing about today"),
        "{history}"
    );
    let versions: Vec<&str> = history.lines().filter(|l| l.starts_with("version ")).collect();
    assert_eq!(versions.len(), 2, "{history}");
    assert!(times_are_human(&history, "head issued at "), "{history}");
    assert!(!history.contains(" ms,") && !history.contains(" ms)"), "raw milliseconds in {history}");
    let policies: Vec<&str> = history.lines().filter(|l| l.starts_with("  policy ")).collect();
    assert!(
        policies[0].starts_with("  policy 2 of 2 keys: ") && policies[1].starts_with("  policy 1 of 1 key: "),
        "{history}"
    );

    let lookup = ok(&realm, &with_realm(&["lookup", "--verifiers", "0", "alice", "--save-proof", "alice.proof"]));
    assert!(lookup.contains("  policy 2 of 2 keys\n") && times_are_human(&lookup, "head issued at "), "{lookup}");

    let verify = ["verify-proof", "--realm", "realm.json", "--verifiers", "0", "--no-state", "alice.proof"];
    let out = ok(&realm, &verify);
    assert!(times_are_human(&out, "head issued at "), "{out}");
    let at = (keyraft_client::now_ms() + 1_000).to_string();
    let out = ok(&realm, &[&verify[..], &["--at-ms", &at]].concat());
    let as_of = &out[out.find("as of ").unwrap_or_else(|| panic!("{out}")) + "as of ".len()..];
    assert!(
        starts_with_utc_time(as_of) && starts_with_utc_time(&as_of[as_of.find("issued at ").unwrap() + 10..]),
        "{out}"
    );
}

/// Every object key in `v`, but application names, which are data: those of a verified
/// answer's `profile` (app to `{"encoding", "value"}`) and of the raw proof's profile `keys`.
fn field_names(v: &Value, names: &mut BTreeSet<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                names.insert(k.clone());
                match (k.as_str(), child) {
                    ("profile", Value::Object(fields)) if fields.values().all(|f| f.get("encoding").is_some()) => {
                        fields.values().for_each(|value| field_names(value, names));
                    }
                    ("profile", Value::Object(fields)) => names.extend(fields.keys().cloned()),
                    _ => field_names(child, names),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| field_names(i, names)),
        _ => {}
    }
}

#[test]
fn json_outputs_follow_the_documented_schema_and_history_exports_every_version_s_proof() {
    let _s = serial();
    let mut realm = Realm::start(|_| {});
    realm.start_verifier();
    ok(&realm, &["keygen", "--out", "alice.key"]);
    let register = ["register", "--user", "alice", "--key", "alice.key", "--set", "pgp=one", "--set", "bin=hex:00ff"];
    ok(&realm, &with_realm(&[&register[..], &["--wait"]].concat()));
    let update =
        ok(&realm, &with_realm(&["update", "--user", "alice", "--key", "alice.key", "--set", "pgp=two", "--wait"]));
    let update_id = &update[update.find("update id ").unwrap() + 10..][..64];

    let lookup = json(&realm, &with_realm(&["lookup", "alice", "--json", "--save-proof", "alice.proof"]));
    assert_eq!((lookup["schema"].as_str(), lookup["version"].as_u64()), (Some("keyraft.lookup"), Some(1)), "{lookup}");
    assert_eq!(lookup["user_id"], "alice");
    assert!(public_addrs(&realm).contains(&lookup["answered_by"].as_str().unwrap().to_owned()), "{lookup}");
    let v = &lookup["verification"];
    assert_eq!(v["result"], "verified");
    assert_eq!(v["epoch"], lookup["head"]["epoch"]);
    assert_eq!((v["replica_majority"].as_u64(), v["verifier_threshold"].as_u64()), (Some(2), Some(1)), "{v}");
    assert!(v["replica_signatures"].as_u64().unwrap() >= 2 && v["verifier_signatures"].as_u64().unwrap() >= 1, "{v}");
    assert!(v["newest_epoch_hint"].as_u64().unwrap() >= v["epoch"].as_u64().unwrap(), "{v}");
    let head = &lookup["head"];
    assert!(head["issue_time_ms"].is_u64() && starts_with_utc_time(head["issue_time"].as_str().unwrap()), "{head}");
    let entry = &lookup["entry"];
    assert_eq!((lookup["registered"].as_bool(), entry["version"].as_u64()), (Some(true), Some(1)), "{entry}");
    assert_eq!(entry["policy"]["threshold"], 1);
    assert_eq!(entry["policy"]["keys"].as_array().unwrap().len(), 1);
    assert_eq!(entry["profile"]["pgp"], serde_json::json!({ "encoding": "utf8", "value": "two" }));
    assert_eq!(entry["profile"]["bin"], serde_json::json!({ "encoding": "hex", "value": "00ff" }));
    assert_eq!(
        hex::decode(lookup["proof_hex"].as_str().unwrap()).unwrap(),
        std::fs::read(realm.path().join("alice.proof")).unwrap()
    );
    assert_eq!(lookup["proof"]["head"]["epoch"], head["epoch"], "the whole proof, field by field");

    // History: every version with its proof, in the JSON and as files verify-proof reads.
    let history = json(&realm, &with_realm(&["history", "alice", "--json", "--save-proofs", "proofs"]));
    assert_eq!((history["schema"].as_str(), history["version"].as_u64()), (Some("keyraft.history"), Some(1)));
    assert!(history["next_page_token"].is_null(), "{history}");
    let versions = history["versions"].as_array().unwrap();
    assert_eq!(versions.iter().map(|v| v["entry"]["version"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 0]);
    for version in versions {
        assert_eq!(version["verification"]["result"], "historical", "{version}");
        let epoch = version["verification"]["epoch"].as_u64().unwrap().to_string();
        let number = version["entry"]["version"].as_u64().unwrap();
        let file = format!("proofs/version-{number}-epoch-{epoch}.proof");
        let bytes = std::fs::read(realm.path().join(&file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(hex::decode(version["proof_hex"].as_str().unwrap()).unwrap(), bytes);
        let out = ok(&realm, &["verify-proof", "--realm", "realm.json", "--past", &epoch, &file]);
        assert!(out.contains(&format!("had version {number} in epoch {epoch}")), "{out}");
    }
    let text = ok(&realm, &with_realm(&["history", "alice", "--save-proofs", "proofs-again"]));
    assert!(text.contains("2 proofs saved in proofs-again"), "{text}");
    assert_eq!(text.matches("HISTORICAL").count(), 1, "{text}");

    let status = json(&realm, &with_realm(&["status", update_id, "--user", "alice", "--json"]));
    assert_eq!((status["schema"].as_str(), status["version"].as_u64()), (Some("keyraft.update-status"), Some(1)));
    assert_eq!(
        (status["state"].as_str(), status["update_id"].as_str()),
        (Some("in_epoch"), Some(update_id)),
        "{status}"
    );
    assert!(status["epoch"].as_u64().unwrap() > 0, "{status}");

    let token = realm.path().join("keys/admin.token");
    let admin = ["admin", "--peer", &realm.peer_addr(0), "--token-file", token.to_str().unwrap(), "status", "--json"];
    let admin = json(&realm, &admin);
    assert_eq!((admin["schema"].as_str(), admin["version"].as_u64()), (Some("keyraft.admin-status"), Some(1)));
    assert_eq!(admin["nodes"].as_array().unwrap().len(), 3, "{admin}");

    // Every field printed is documented.
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/cli-json.md")).unwrap();
    let mut names = BTreeSet::new();
    for value in [&lookup, &history, &status, &admin] {
        field_names(value, &mut names);
    }
    let undocumented: Vec<&String> = names.iter().filter(|n| !doc.contains(&format!("`{n}`"))).collect();
    assert!(undocumented.is_empty(), "fields missing from docs/cli-json.md: {undocumented:?}");
}
