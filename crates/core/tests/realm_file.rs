//! The realm file is read strictly (docs/protocol.md section 5.3): key lists must already be
//! sorted strictly ascending, keys are lower-case hex, and unknown fields are refused, so
//! every implementation reads one file as the same realm or refuses it.
#![allow(clippy::unwrap_used, missing_docs)]

use keyraft_core::vrf::VrfSecretKey;
use keyraft_core::{PublicKey, RealmConfig, RealmFile};

fn key(n: u8) -> PublicKey {
    PublicKey::from_verifying_key(&ed25519_dalek::SigningKey::from_bytes(&[n; 32]).verifying_key()).unwrap()
}

fn file() -> RealmFile {
    let vrf = VrfSecretKey::from_seed(&[4; 32]).public_key();
    let config = RealmConfig::new("example.org", vrf, vec![key(1), key(2), key(3)], vec![key(5), key(6)]).unwrap();
    RealmFile::new(&config, 60_000, 5_000, vec!["127.0.0.1:7001".into()])
}

fn refused(file: &RealmFile) -> String {
    match RealmFile::from_json(&file.to_json()) {
        Ok(_) => panic!("realm file accepted: {}", file.to_json()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn written_realm_files_have_sorted_key_lists_and_read_back() {
    let f = file();
    for list in [&f.replica_keys, &f.verifier_keys] {
        assert!(list.windows(2).all(|w| w[0] < w[1]), "{list:?}");
    }
    assert_eq!(RealmFile::from_json(&f.to_json()).unwrap(), f);
}

#[test]
fn unsorted_key_lists_are_refused_naming_field_and_position() {
    let mut f = file();
    f.replica_keys.swap(1, 2);
    let e = refused(&f);
    assert!(e.contains("replica_keys[2]") && e.contains("sorted"), "{e}");

    let mut f = file();
    f.verifier_keys.reverse();
    let e = refused(&f);
    assert!(e.contains("verifier_keys[1]") && e.contains("sorted"), "{e}");
}

#[test]
fn duplicate_keys_are_refused_naming_field_and_position() {
    let mut f = file();
    f.verifier_keys[1] = f.verifier_keys[0].clone();
    let e = refused(&f);
    assert!(e.contains("verifier_keys[1]") && e.contains("duplicate"), "{e}");

    let mut f = file();
    f.replica_keys.insert(1, f.replica_keys[0].clone());
    let e = refused(&f);
    assert!(e.contains("replica_keys[1]") && e.contains("duplicate"), "{e}");
}

#[test]
fn keys_are_lower_case_hex() {
    let mut f = file();
    f.replica_keys[0] = f.replica_keys[0].to_uppercase();
    let e = refused(&f);
    assert!(e.contains("replica_keys[0]") && e.contains("lower-case"), "{e}");

    let mut f = file();
    f.vrf_public_key = f.vrf_public_key.to_uppercase();
    let e = refused(&f);
    assert!(e.contains("vrf_public_key") && e.contains("lower-case"), "{e}");
}

#[test]
fn unknown_and_duplicate_fields_are_refused() {
    let json = file().to_json();
    let extra = json.replacen('{', "{\n  \"replica_key\": [],", 1);
    let e = RealmFile::from_json(&extra).unwrap_err().to_string();
    assert!(e.contains("unknown field") && e.contains("replica_key"), "{e}");
    let twice = json.replacen('{', "{\n  \"clock_skew_ms\": 1,", 1);
    let e = RealmFile::from_json(&twice).unwrap_err().to_string();
    assert!(e.contains("duplicate field") && e.contains("clock_skew_ms"), "{e}");
}

#[test]
fn the_tls_object_names_a_ca_and_nothing_else() {
    let mut f = file();
    f.tls = Some(keyraft_core::realm_file::TlsFile {
        ca_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
    });
    let read = RealmFile::from_json(&f.to_json()).unwrap();
    assert_eq!(read, f);
    assert_eq!(read.config().unwrap(), file().config().unwrap(), "TLS is no part of the configuration");

    f.tls = Some(keyraft_core::realm_file::TlsFile { ca_pem: "a CA".into() });
    let e = refused(&f);
    assert!(e.contains("tls.ca_pem") && e.contains("PEM"), "{e}");

    let text = file().to_json();
    for (bad, field) in [
        (r#""tls": "ca.crt","#, "tls"),
        (r#""tls": {"ca_pem": "-----BEGIN CERTIFICATE-----", "pins": []},"#, "pins"),
        (r#""tls": {},"#, "ca_pem"),
    ] {
        let e = RealmFile::from_json(&text.replacen('{', &format!("{{\n  {bad}"), 1)).unwrap_err().to_string();
        assert!(e.contains(field), "{bad}: {e}");
    }
}
