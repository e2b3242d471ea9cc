//! `keyraft verify-proof` reads a proof file as docs/protocol.md section 5.2 says (the raw
//! canonical bytes, nothing else) and reaches every verdict of docs/vectors/lookup-v1.json
//! that it can be asked for offline: each vector's proof bytes, saved as a file, checked with
//! the vector's realm file, user id, threshold, TTL, skew and clock (`--at-ms`) or past epoch
//! (`--past`). Vectors with a rollback floor need a client memory and are left to the golden
//! test in keyraft-state.
#![allow(clippy::unwrap_used, missing_docs)]

use serde_json::Value;
use std::path::Path;
use std::process::Command;

#[test]
fn verify_proof_reaches_every_offline_verdict_of_the_vectors() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/vectors/lookup-v1.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, realm) in doc["realm_files"].as_object().unwrap() {
        std::fs::write(dir.path().join(format!("{name}.json")), realm.to_string()).unwrap();
    }
    let mut checked = 0;
    for v in doc["vectors"].as_array().unwrap() {
        if !v["rollback_floor"].is_null() {
            continue;
        }
        let name = v["name"].as_str().unwrap();
        let proof = dir.path().join(format!("{name}.proof"));
        std::fs::write(&proof, hex::decode(v["proof"].as_str().unwrap()).unwrap()).unwrap();
        let realm = dir.path().join(format!("{}.json", v["realm_file"].as_str().unwrap()));
        let number = |field: &str| v[field].as_u64().unwrap().to_string();
        let mut args = vec![
            "verify-proof".to_owned(),
            "--realm".to_owned(),
            realm.display().to_string(),
            "--no-state".to_owned(),
            "--user".to_owned(),
            v["user_id"].as_str().unwrap().to_owned(),
            "--verifiers".to_owned(),
            number("verifier_threshold"),
        ];
        match v["mode"].as_str().unwrap() {
            "past" => args.extend(["--past".to_owned(), number("past_epoch")]),
            _ => args.extend([
                "--at-ms".to_owned(),
                number("now_ms"),
                "--ttl-ms".to_owned(),
                number("epoch_ttl_ms"),
                "--skew-ms".to_owned(),
                number("clock_skew_ms"),
            ]),
        }
        args.push(proof.display().to_string());
        let out = Command::new(env!("CARGO_BIN_EXE_keyraft")).args(&args).output().unwrap();
        let report = format!(
            "{name}: keyraft {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if v["expected"] == "accept" {
            assert!(out.status.success(), "{report}");
            let epoch = v["epoch"].as_u64().unwrap();
            let said = match v["version"].as_u64() {
                Some(version) => format!("had version {version} in epoch {epoch}"),
                None => format!("was not registered in epoch {epoch}"),
            };
            assert!(report.contains(&said), "{report}");
        } else {
            assert!(!out.status.success(), "{report}");
            assert!(report.contains("REJECTED") || report.contains("is not a lookup proof"), "{report}");
            assert!(!report.contains("VERIFIED"), "{report}");
        }
        checked += 1;
    }
    assert!(checked >= 30, "only {checked} vectors checked");
}
