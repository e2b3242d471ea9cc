//! docs/protocol.md is enough to verify a proof: `scripts/verify_proof.py`, written from the
//! document alone in another language (no shared code, its own Ed25519 and ECVRF), reaches
//! the verdict of every test vector in docs/vectors/ (refusing each tampered one by the same
//! named check as the reference verifier), accepts the proofs this implementation makes and
//! rejects tampered ones.
#![allow(clippy::unwrap_used, missing_docs)]

use keyraft_core::Canonical;
use keyraft_state::harness::{derive_signing_key, Harness};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/verify_proof.py")
}

fn run(h: &Harness, dir: &Path, user: &str, proof: &[u8], extra: &[&str]) -> (bool, String) {
    let config = dir.join("realm.hex");
    std::fs::write(&config, hex::encode(h.config().encode())).unwrap();
    let proof_file = dir.join("proof.bin");
    std::fs::write(&proof_file, proof).unwrap();
    let out = Command::new("python3")
        .arg(script())
        .arg(&config)
        .arg(&proof_file)
        .arg(user)
        .arg(h.now_ms.to_string())
        .args(extra)
        .output()
        .expect("python3 is needed to run the independent verifier (it is on every CI machine)");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn an_implementation_from_the_spec_alone_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::new("example.org", 3, 2, 21);
    let alice = derive_signing_key(21, "alice");
    h.register("alice@example.org", &alice, &[("mail", b"alice-key")]).unwrap();
    for i in 0..30 {
        h.register(&format!("u{i}@example.org"), &derive_signing_key(21, &format!("u{i}")), &[("mail", b"k")]).unwrap();
    }
    h.publish_epoch().unwrap();

    let present = h.lookup_proof("alice@example.org", None, 2).unwrap().encode();
    let (ok, out) = run(&h, dir.path(), "alice@example.org", &present, &["--verifier-threshold", "2"]);
    assert!(ok && out.contains("present"), "{out}");

    let absent = h.lookup_proof("nobody@example.org", None, 1).unwrap().encode();
    let (ok, out) = run(&h, dir.path(), "nobody@example.org", &absent, &["--verifier-threshold", "1"]);
    assert!(ok && out.contains("absent"), "{out}");

    // The same checks fail in the same places.
    let (ok, out) = run(&h, dir.path(), "nobody@example.org", &absent, &["--verifier-threshold", "2"]);
    assert!(!ok && out.contains("REJECTED (quorum)"), "{out}");
    let (ok, out) = run(&h, dir.path(), "bob@example.org", &present, &[]);
    assert!(!ok && out.contains("REJECTED (user_id)"), "{out}");
    let (ok, out) = run(&h, dir.path(), "alice@example.org", &present, &["--last-seen-epoch", "2"]);
    assert!(!ok && out.contains("REJECTED (rollback)"), "{out}");
    // The realm is checked, before the VRF: a proof from another realm is named as such.
    let mut other = Harness::new("other.org", 3, 2, 22);
    other.publish_epoch().unwrap();
    let foreign = other.lookup_proof("nobody@example.org", None, 2).unwrap().encode();
    let (ok, out) = run(&h, dir.path(), "nobody@example.org", &foreign, &[]);
    assert!(!ok && out.contains("REJECTED (realm): the proof is for a different realm"), "{out}");
    let mut bad_vrf = h.lookup_proof("alice@example.org", None, 2).unwrap();
    bad_vrf.user_id = "bob@example.org".into();
    let (ok, out) = run(&h, dir.path(), "bob@example.org", &bad_vrf.encode(), &[]);
    assert!(!ok && out.contains("REJECTED (vrf)"), "{out}");
    for at in [30, present.len() - 20, present.len() / 2] {
        let mut tampered = present.clone();
        tampered[at] ^= 1;
        let (ok, out) = run(&h, dir.path(), "alice@example.org", &tampered, &[]);
        assert!(!ok, "byte {at} flipped still verifies: {out}");
    }
}

/// One field of each vector in the generated (one field per line) vector file.
fn vector_fields(file: &str, field: &str) -> Vec<String> {
    let prefix = format!("\"{field}\": ");
    file.lines()
        .filter_map(|line| line.trim().strip_prefix(&prefix))
        .map(|value| value.trim_end_matches(',').trim_matches('"').to_owned())
        .collect()
}

/// docs/protocol.md section 1's Ed25519 rule, implemented in Python from the document, gives
/// the same verdict and reason as keyraft_core::ed25519 on every vector of
/// docs/vectors/ed25519.json (torsioned signatures accepted, each encoding rule refusing).
#[test]
fn the_independent_ed25519_agrees_on_every_vector() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let vectors_path = root.join("docs/vectors/ed25519.json");
    let out = Command::new("python3")
        .arg(root.join("scripts/verify_proof.py"))
        .arg("--ed25519-vectors")
        .arg(&vectors_path)
        .output()
        .expect("python3 is needed to run the independent verifier (it is on every CI machine)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));

    let file = std::fs::read_to_string(&vectors_path).unwrap();
    let (keys, messages, signatures) =
        (vector_fields(&file, "public_key"), vector_fields(&file, "message"), vector_fields(&file, "signature"));
    assert!(keys.len() > 20 && keys.len() == messages.len() && keys.len() == signatures.len());
    let python: Vec<&str> = stdout.lines().take(keys.len()).collect();
    for (i, ((key, message), signature)) in keys.iter().zip(&messages).zip(&signatures).enumerate() {
        let key: [u8; 32] = hex::decode(key).unwrap().try_into().unwrap();
        let signature = keyraft_core::Signature::from_slice(&hex::decode(signature).unwrap()).unwrap();
        let ours = match keyraft_core::ed25519::verify(&key, &hex::decode(message).unwrap(), &signature) {
            Ok(()) => format!("{i} accept"),
            Err(rejection) => format!("{i} reject {}", rejection.code()),
        };
        assert_eq!(python.get(i).copied(), Some(ours.as_str()), "vector {i}");
    }
}

/// The script's verdict on every vector of docs/vectors/lookup-v1.json is the file's (which the
/// golden test checks is the reference verifier's): the same accepts with the same epoch,
/// index and presence, the same rejecting check names, the same refused realm files.
#[test]
fn the_independent_verifier_agrees_on_every_vector() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/vectors/lookup-v1.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let out = Command::new("python3")
        .arg(script())
        .arg("--vectors")
        .arg(&file)
        .output()
        .expect("python3 is needed to run the independent verifier (it is on every CI machine)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    // "VECTOR <name>: accept epoch <e> <present|absent> index <hex>" or
    // "VECTOR <name>: reject <check>: <why>", and the same with "REALM-FILE".
    let verdicts: BTreeMap<(&str, &str), Vec<&str>> = stdout
        .lines()
        .filter_map(|l| {
            let (kind, rest) = l.split_once(' ')?;
            let (name, verdict) = rest.split_once(": ")?;
            Some(((kind, name), verdict.split([' ', ':']).filter(|w| !w.is_empty()).collect()))
        })
        .collect();
    let vectors = doc["vectors"].as_array().unwrap();
    for v in vectors {
        let name = v["name"].as_str().unwrap();
        let got = verdicts.get(&("VECTOR", name)).unwrap_or_else(|| panic!("no verdict on {name}:\n{report}"));
        if v["expected"] == "accept" {
            let present = if v["present"] == true { "present" } else { "absent" };
            let epoch = v["epoch"].to_string();
            let expected = ["accept", "epoch", &epoch, present, "index", v["index"].as_str().unwrap()];
            assert_eq!(got[..got.len().min(6)], expected, "{name}:\n{report}");
        } else {
            assert_eq!(got[..2], ["reject", v["check"].as_str().unwrap()], "{name}:\n{report}");
        }
    }
    for v in doc["realm_files_refused"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        let got = verdicts.get(&("REALM-FILE", name)).unwrap_or_else(|| panic!("no verdict on {name}:\n{report}"));
        assert_eq!(got[..2], ["reject", v["field"].as_str().unwrap()], "realm file {name}:\n{report}");
    }
    assert_eq!(verdicts.len(), vectors.len() + doc["realm_files_refused"].as_array().unwrap().len(), "{report}");
    assert!(out.status.success() && stdout.contains("all vectors agree"), "{report}");
}
